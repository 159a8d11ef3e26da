"""CFG-Cache: a guided batch's unconditional half rebuilt from the conditional one and stored FFT deltas,
in one graph; against a NumPy reference of the published rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import graphcache
from graphcache.backend import make_backend
from graphcache.errors import PolicyConfigError, UnsupportedGraphError
from graphcache.policies.cfgcache import CFGCacheConfig

from helpers import timesteps
from models import hand_written_dit, tiny_dit, tiny_unet

STEPS = 12  # with the default window (0, 641): steps 4..10 inside


def numpy_low_pass(d):
    """Low frequencies of d over its last two axes: circle of radius min(H, W) // 5 on the shifted spectrum."""
    h, w = d.shape[-2:]
    y, x = np.mgrid[:h, :w]
    mask = ((x - w // 2) ** 2 + (y - h // 2) ** 2 <= (min(h, w) // 5) ** 2).astype(np.float64)
    spectrum = np.fft.fftshift(np.fft.fft2(d), axes=(-2, -1)) * mask
    return np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(-2, -1))).real


def reference(model, inputs, ts, interval, low_growth=1.15, high_growth=1.25, window=(0.0, 641.0)):
    """The rule written out: full steps keep d = eps_u - eps_c split by the low-pass; cached steps run the
    conditional half and add the scaled parts ([uncond; cond] batches)."""
    outputs, decisions, low, high, scales = [], [], None, None, [1.0, 1.0]
    for i, t in enumerate(ts):
        kw = inputs(t)
        full = i == 0 or not window[0] < t < window[1] or i % interval == 0
        with torch.no_grad():
            if full:
                eps = model(**kw).sample
                d = (eps.chunk(2)[0] - eps.chunk(2)[1]).double().numpy()
                low = numpy_low_pass(d)
                high, scales = d - low, [1.0, 1.0]
            else:
                half = {k: v.chunk(2)[1] if torch.is_tensor(v) and v.shape[:1] == eps.shape[:1] else v
                        for k, v in kw.items()}
                eps_c = model(**half).sample
                scales = [scales[0] * low_growth, scales[1]] if t >= 500 else [scales[0], scales[1] * high_growth]
                eps_u = eps_c.double().numpy() + scales[0] * low + scales[1] * high
                eps = torch.cat([torch.from_numpy(eps_u).float(), eps_c])
        outputs.append(eps)
        decisions.append("computed" if full else "cached")
    return outputs, decisions


def run(optimized, inputs, ts):
    with torch.no_grad():
        return [optimized(**inputs(t)).sample for t in ts]


def test_cached_steps_follow_the_rule():
    model, inputs = tiny_unet(batch=4)
    ts = timesteps(STEPS)
    optimized = graphcache.optimize(model, "cfgcache", backend="eager", interval=3)
    outputs = run(optimized, inputs, ts)
    want, decisions = reference(model, inputs, ts, interval=3)
    assert graphcache.decisions(optimized) == decisions
    assert decisions.count("cached") == 5
    for i, (out, ref) in enumerate(zip(outputs, want, strict=True)):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5, msg=f"step {i}")
        if decisions[i] == "computed":
            assert torch.equal(out, ref)


@pytest.mark.parametrize("maker, config", [
    (lambda: tiny_unet(batch=4), CFGCacheConfig(interval=3)),
    (lambda: tiny_dit(batch=4), CFGCacheConfig(interval=2, features="fastercache{window_high=1000,num_steps=12}")),
])
def test_fullgraph_inductor_one_graph_no_recompiles(maker, config):
    model, inputs = maker()
    ts = timesteps(STEPS)
    graphs = []

    def counting(gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        graphs.append(gm)
        return compile_fx(gm, example_inputs)

    optimized = graphcache.optimize(model, config, backend="eager")
    want = run(optimized, inputs, ts)
    compiled = torch.compile(optimized.__dict__["_compiled"], backend=counting, fullgraph=True, dynamic=False)
    optimized.reset()
    with torch._dynamo.config.patch(error_on_recompile=True), torch.no_grad():
        first = [compiled(**inputs(t)).sample for t in ts]
        second = [compiled(**inputs(t)).sample for t in ts]
    assert len(graphs) == 1
    assert "cached" in graphcache.decisions(optimized)
    for a, b, ref in zip(first, second, want, strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, ref, rtol=1e-4, atol=1e-4)


def test_fastercache_as_published_attention_extrapolation_inside_the_full_steps():
    """cfgcache{features=fastercache}: full steps run the attention-extrapolating graph (its own calls count
    its steps), cached steps the plain conditional half."""
    from graphcache.exported import optimize_exported

    model, inputs = tiny_dit(batch=4)
    ts = timesteps(STEPS)
    inner = "fastercache{window_low=0,window_high=1000,num_steps=12}"
    optimized = graphcache.optimize(model, CFGCacheConfig(interval=2, uncond_first=False, features=inner),
                                    backend="eager")
    outputs = run(optimized, inputs, ts)
    decisions = graphcache.decisions(optimized)
    guided = optimize_exported(model, inputs(ts[0]), inner)
    low = high = None
    scales = [1.0, 1.0]
    for i, t in enumerate(ts):
        kw = inputs(t)
        if decisions[i] == "computed":
            want = guided(**kw).sample
            d = (want.chunk(2)[1] - want.chunk(2)[0]).double().numpy()
            low = numpy_low_pass(d)
            high, scales = d - low, [1.0, 1.0]
        else:
            with torch.no_grad():
                eps_c = model(**{k: v[:2] for k, v in kw.items()}).sample
            scales = [scales[0] * 1.15, scales[1]] if t >= 500 else [scales[0], scales[1] * 1.25]
            want = torch.cat([eps_c, torch.from_numpy(eps_c.double().numpy() + scales[0] * low + scales[1] * high
                                                      ).float()])
        torch.testing.assert_close(outputs[i], want, rtol=1e-4, atol=1e-5, msg=f"step {i}")
    assert decisions.count("computed") == 9 and guided.state.decisions().count("cached") == 4
    assert optimized.cache_bytes() > 2 * outputs[0][:2].numel() * 4  # the deltas and the attention cache


def test_errors_are_named():
    model, inputs = tiny_unet(batch=3)
    with pytest.raises(UnsupportedGraphError, match=r"needs a guided batch .* batch 3"):
        graphcache.optimize(model, "cfgcache", backend="eager")(**inputs(999))
    dit, dit_inputs = hand_written_dit(batch=2)
    with pytest.raises(UnsupportedGraphError, match=r"one output shaped \[batch, channels, height, width\]"):
        graphcache.optimize(dit, "cfgcache", backend="eager")(**dit_inputs(999))
    with pytest.raises(PolicyConfigError, match=r"apply it with graphcache.optimize"):
        make_backend("cfgcache")
    with pytest.raises(PolicyConfigError, match=r"cfgcache.features='cfgcache' is invalid: must be a graph policy"):
        CFGCacheConfig(features="cfgcache")


def test_batch_and_resolution_changes_get_their_own_wrapper():
    """Guidance off (no CFG pair), another batch or resolution between pipeline calls: each input signature
    gets its own captured halves and state, equal to a fresh optimized model's, instead of failing."""
    model, inputs4 = tiny_dit(batch=4)
    _, inputs6 = tiny_dit(batch=6)
    ts = timesteps(6)
    optimized = graphcache.optimize(model, "cfgcache", backend="eager", interval=3)
    first = run(optimized, inputs4, ts)
    six = run(optimized, inputs6, ts)
    again = run(optimized, inputs4, ts)
    assert len(optimized.states) == 2
    fresh_model, _ = tiny_dit(batch=6)
    fresh = run(graphcache.optimize(fresh_model, "cfgcache", backend="eager", interval=3), inputs6, ts)
    assert all(torch.equal(a, b) for a, b in zip(six, fresh, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    decisions = graphcache.decisions(optimized)  # of the wrapper the last call used (batch 4)
    assert len(decisions) == len(ts) and "cached" in decisions


def test_streams_heun_stages_get_their_own_state_and_two_call_cfg_is_refused():
    """Heun's repeated timesteps (t0, t1, t1, t2, t2, ...): each stage's calls equal that stage run alone.
    Guidance as two calls in ``cache_context("cond")`` / ``("uncond")`` has no guided batch: refused by name
    (a batch of 2 there would be two images, not two guidance branches)."""
    model, inputs = tiny_dit(batch=4)
    ts = timesteps(STEPS)
    calls = [ts[0]] + [t for t in ts[1:] for _ in range(2)]
    optimized = graphcache.optimize(model, "cfgcache", backend="eager", interval=3)
    outs = run(optimized, inputs, calls)
    alone = run(graphcache.optimize(tiny_dit(batch=4)[0], "cfgcache", backend="eager", interval=3), inputs, ts)
    assert all(torch.equal(a, b) for a, b in zip([outs[0], *outs[1::2]], alone, strict=True))
    second = run(graphcache.optimize(tiny_dit(batch=4)[0], "cfgcache", backend="eager", interval=3), inputs, ts[1:])
    assert all(torch.equal(a, b) for a, b in zip(outs[2::2], second, strict=True))
    assert "cached" in graphcache.decisions(optimized)
    with optimized.cache_context("cond_uncond"):  # one call on the guided batch (LTX): allowed
        optimized(**inputs(ts[0]))
    with pytest.raises(UnsupportedGraphError, match=r"one call on the guided batch.*cache_context\('cond'\)"):
        with optimized.cache_context("cond"):
            optimized(**inputs(ts[0]))


def test_a_pipeline_call_after_an_abandoned_run_equals_a_fresh_one():
    """CFG-Cache through a pipeline: a 24-step run abandoned after 2 steps (t near 960), then a 6-step run whose
    first timestep (833) is below it: without the pipeline call's reset the wrapper would continue the old
    generation (interval 3: a step count off by two changes the schedule). It equals the 6-step run of a freshly
    optimized pipeline."""
    from helpers import digits_pipeline, generate_digits

    fresh = generate_digits(graphcache.optimize(digits_pipeline(), "cfgcache", backend="eager", interval=3),
                            steps=6)
    pipe = graphcache.optimize(digits_pipeline(), "cfgcache", backend="eager", interval=3)

    class Stop(Exception):
        pass

    def stop_after_two(step, _t, _x, calls=[]):  # noqa: B006 - counts the calls of this one run
        calls.append(step)
        if len(calls) == 2:
            raise Stop

    with pytest.raises(Stop):
        pipe(class_labels=[1, 7], num_inference_steps=24, guidance_scale=1.5,
             generator=torch.Generator().manual_seed(0), callback=stop_after_two)
    assert (generate_digits(pipe, steps=6) == fresh).all()
    assert "cached" in graphcache.decisions(pipe)
