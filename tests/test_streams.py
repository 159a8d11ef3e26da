"""Streams and generations as pipelines drive a denoiser: CFG as two calls (with diffusers' cache contexts or
without), Heun's repeated timesteps, a pipeline call after an abandoned run, several denoisers in one pipeline.
Each stream must get exactly what it would get run alone through a fresh optimized model."""

from __future__ import annotations

import copy
import functools
import types

import pytest
import torch

import graphcache

from helpers import digits_pipeline, generate_digits, timesteps
from models import HandWrittenDiT, hand_written_dit


def _stream_inputs(seed: int):
    x = torch.randn(2, 10, 4, generator=torch.Generator().manual_seed(seed))
    return lambda t: {"latent": x, "noise_level": torch.full((2,), t)}


def _alone(inputs, ts, policy="fora"):
    model, _ = hand_written_dit()
    fast = graphcache.optimize(model, policy, backend="eager")
    with torch.no_grad():
        outs = [fast(**inputs(t)) for t in ts]
    return outs, graphcache.decisions(fast)


def _two_calls(fast, cond, uncond, ts, contexts: bool):
    outs_c, outs_u = [], []
    with torch.no_grad():
        for t in ts:
            if contexts:
                with fast.cache_context("cond"):
                    outs_c.append(fast(**cond(t)))
                with fast.cache_context("uncond"):
                    outs_u.append(fast(**uncond(t)))
            else:
                outs_c.append(fast(**cond(t)))
                outs_u.append(fast(**uncond(t)))
    return outs_c, outs_u


def _assert_same(a, b):
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_cfg_as_two_calls_with_cache_contexts_gives_each_stream_its_own_cache():
    cond, uncond, ts = _stream_inputs(1), _stream_inputs(2), timesteps(7)
    model, _ = hand_written_dit()
    fast = graphcache.optimize(model, "fora", backend="eager")
    outs_c, outs_u = _two_calls(fast, cond, uncond, ts, contexts=True)
    alone_c, decisions_c = _alone(cond, ts)
    alone_u, _ = _alone(uncond, ts)
    _assert_same(outs_c, alone_c)
    _assert_same(outs_u, alone_u)
    assert decisions_c == ["computed", "cached", "cached"] * 2 + ["computed"]
    with fast.cache_context("cond"):
        assert graphcache.decisions(fast) == decisions_c  # each context keeps its own log
    assert fast.contexts.contexts() == ["", "cond", "uncond"]


def test_cfg_as_two_calls_without_contexts_is_routed_by_the_repeated_timestep():
    """A hand-written loop (cond then uncond at the same timestep, no contexts): the second call at a timestep
    belongs to a second stream, never to a new generation of the first."""
    cond, uncond, ts = _stream_inputs(1), _stream_inputs(2), timesteps(7)
    model, _ = hand_written_dit()
    fast = graphcache.optimize(model, "fora", backend="eager")
    for _ in range(2):  # a second generation too
        outs_c, outs_u = _two_calls(fast, cond, uncond, ts, contexts=False)
        _assert_same(outs_c, _alone(cond, ts)[0])
        _assert_same(outs_u, _alone(uncond, ts)[0])


def _decorated(forward):
    """As diffusers decorates its models' forward (``apply_lora_scale``): dynamo traces the wrapper, whose
    locals name the timestep ``L['kwargs']['noise_level']`` or ``L['args'][1]``."""
    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        return forward(self, *args, **kwargs)

    return wrapper


class _DecoratedDiT(HandWrittenDiT):
    forward = _decorated(HandWrittenDiT.forward)


@pytest.mark.parametrize("positional", [False, True], ids=["keywords", "positional"])
def test_cfg_as_two_calls_without_contexts_behind_a_decorated_forward(positional):
    """The stream router once bound the call to the wrapped signature, found no timestep and routed nothing:
    cond and uncond took turns in one stream, each cached step reusing the other's features (Flux, Wan,
    SD3, ... in a hand-written CFG loop)."""
    cond, uncond, ts = _stream_inputs(1), _stream_inputs(2), timesteps(7)
    torch.manual_seed(0)
    model = _DecoratedDiT().eval()
    reference = copy.deepcopy(model)
    fast = graphcache.optimize(model, "fora", backend="eager")

    def call(fn, inputs):
        return fn(inputs["latent"], inputs["noise_level"]) if positional else fn(**inputs)

    outs_c, outs_u = [], []
    with torch.no_grad():
        for t in ts:
            outs_c.append(call(fast, cond(t)))
            outs_u.append(call(fast, uncond(t)))
    assert fast.notes == []
    for outs, inputs in ((outs_c, cond), (outs_u, uncond)):
        alone = graphcache.optimize(copy.deepcopy(reference), "fora", backend="eager")
        with torch.no_grad():
            _assert_same(outs, [call(alone, inputs(t)) for t in ts])
        assert graphcache.decisions(alone) == ["computed", "cached", "cached"] * 2 + ["computed"]


@pytest.mark.parametrize("source", ["L['kwargs']['noise_level']", "L['args'][1]", "L['noise_level']"])
def test_the_timestep_getter_follows_the_frame_dynamo_traced(source):
    """The wrapper's locals (``kwargs`` / ``args``), or the wrapped function's where dynamo skipped the
    wrapper's frame (it does, for every model sharing the decorator, once a graph broke in it: the zoo's
    streams sweep met it after HiDream)."""
    model = _DecoratedDiT()
    get = graphcache.streams.argument_getter(model.forward, source)
    latent, t = torch.zeros(2, 10, 4), torch.full((2,), 7.0)
    by_keyword = get((), {"latent": latent, "noise_level": t})
    positional = get((latent, t), {})
    if source == "L['kwargs']['noise_level']":
        assert by_keyword is t and positional is None  # positional calls put it in L['args'] instead
    elif source == "L['args'][1]":
        assert positional is t and by_keyword is None
    else:
        assert by_keyword is t and positional is t
    assert graphcache.streams.argument_getter(model.forward, "L['nothing']") is None


class _TimestepInAnObject(HandWrittenDiT):
    def forward(self, latent: torch.Tensor, level: types.SimpleNamespace) -> torch.Tensor:  # type: ignore[override]
        return super().forward(latent, level.t)


def test_a_timestep_the_router_cannot_read_is_said_not_silent():
    """Where the timestep cannot be read from a call, calls without contexts cannot be routed: a warning and a
    note say so, and point to cache_context."""
    torch.manual_seed(0)
    fast = graphcache.optimize(_TimestepInAnObject().eval(), "fora", backend="eager")
    with pytest.warns(UserWarning, match="cannot be read from a call.*cache_context"), torch.no_grad():
        fast(torch.randn(2, 10, 4), types.SimpleNamespace(t=torch.full((2,), 999.0)))
    assert len(fast.notes) == 1 and "cache_context('cond')" in fast.notes[0]


def test_the_torch_compile_backend_routes_two_calls_and_heun_itself():
    """``torch.compile(model, backend="graphcache")`` has no module around the graph to route calls: the graph
    does it (each call at the timestep of the one before is the next stream). Before, the uncond call started a
    new generation and the next cond call cached from the uncond features. ``reset`` forgets every stream."""
    cond, uncond, ts = _stream_inputs(1), _stream_inputs(2), timesteps(7)
    model, _ = hand_written_dit()

    def compiled():
        return torch.compile(copy.deepcopy(model), backend="graphcache", options={"policy": "fora",
                                                                                 "backend": "eager"})

    with torch.no_grad():
        alone = compiled()
        alone_c = [alone(**cond(t)) for t in ts]
        graphcache.reset(alone)
        alone_u = [alone(**uncond(t)) for t in ts]
        graphcache.reset(alone)
        heun_2 = [alone(**uncond(t)) for t in ts[1:]]
        fast = compiled()
        for _ in range(2):  # a second generation right after the first
            outs_c, outs_u = _two_calls(fast, cond, uncond, ts, contexts=False)
            _assert_same(outs_c, alone_c)
            _assert_same(outs_u, alone_u)
            assert graphcache.decisions(fast) == ["computed", "cached", "cached"] * 2 + ["computed"]
        fast(**cond(ts[0]))
        fast(**uncond(ts[0]))  # stream 1 has a generation under way...
        graphcache.reset(fast)  # ...which reset() forgets too
        outs = [fast(**cond(ts[0]))] + [fast(**s(t)) for t in ts[1:] for s in (cond, uncond)]  # Heun's order
    _assert_same([outs[0], *outs[1::2]], alone_c)
    _assert_same(outs[2::2], heun_2)


def test_heun_repeated_timesteps_keep_one_trajectory_per_stage():
    """Heun's scheduler calls t0, t1, t1, t2, t2, ...: the second call at a timestep is the other stage's
    stream, so each stage's FORA schedule is its own (not 'computed' at every repeated timestep)."""
    inputs = _stream_inputs(1)
    ts = timesteps(6)
    calls = [ts[0]] + [t for t in ts[1:] for _ in range(2)]
    model, _ = hand_written_dit()
    fast = graphcache.optimize(model, "fora", backend="eager")
    with torch.no_grad():
        outs = [fast(**inputs(t)) for t in calls]
    first_stage = [outs[0], *outs[1::2]]
    second_stage = outs[2::2]
    _assert_same(first_stage, _alone(inputs, ts)[0])
    _assert_same(second_stage, _alone(inputs, ts[1:])[0])
    assert graphcache.decisions(fast) == ["computed", "cached", "cached", "computed", "cached"]


def _generate(pipe):
    return generate_digits(pipe, steps=6)


def test_a_pipeline_call_starts_a_new_generation_after_an_abandoned_run():
    """An abandoned run left the cache at a timestep above the next run's first one (img2img starts lower):
    without a reset at the pipeline call, that run would continue the old cache."""
    fresh = _generate(graphcache.optimize(digits_pipeline(), "fora", backend="eager"))
    torch._dynamo.reset()
    pipe = graphcache.optimize(digits_pipeline(), "fora", backend="eager")
    with torch.no_grad():
        pipe.transformer(torch.randn(4, 1, 16, 16), timestep=torch.full((4,), 999.9),
                         class_labels=torch.tensor([1, 7, 10, 10]))
    assert (_generate(pipe) == fresh).all()
    assert graphcache.decisions(pipe) == ["computed", "cached", "cached"] * 2


def test_every_denoiser_of_a_pipeline_is_optimized():
    """Wan 2.2 holds ``transformer`` and ``transformer_2``: both are optimized, each with its own state."""
    from diffusers import DDIMScheduler, DiffusionPipeline

    from graphcache.reference.model import SCHEDULER_CONFIG, build_denoiser
    from graphcache.reference.pipeline import DigitsPipeline

    class TwoDenoisers(DigitsPipeline):
        def __init__(self, transformer, transformer_2, scheduler) -> None:
            DiffusionPipeline.__init__(self)
            self.register_modules(transformer=transformer, transformer_2=transformer_2, scheduler=scheduler)

    torch.manual_seed(1)
    two = TwoDenoisers(build_denoiser().eval(), build_denoiser().eval(), DDIMScheduler(**SCHEDULER_CONFIG))
    pipe = graphcache.optimize(two, "fora", backend="eager")
    assert pipe.graphcache_denoisers == ["transformer", "transformer_2"]
    assert isinstance(pipe.transformer, graphcache.CachedModule)
    assert isinstance(pipe.transformer_2, graphcache.CachedModule)
    assert pipe.transformer_2.model is not pipe.transformer.model


def _latent_inputs(tokens: int):
    x = torch.randn(2, tokens, 4, generator=torch.Generator().manual_seed(tokens))
    return lambda t: {"latent": x, "noise_level": torch.full((2,), t)}


def test_twenty_resolutions_and_twenty_optimizations_in_one_process():
    """Each input shape compiles a graph of its own (dynamo's default of 8 per frame would fail the 9th);
    decisions() follows the graph the last call ran, not the last one created."""
    model, _ = hand_written_dit()
    fast = graphcache.optimize(model, "fora", backend="eager")
    with torch.no_grad():
        for tokens in range(3, 23):  # distinct timesteps: calls at one timestep would be streams
            fast(**_latent_inputs(tokens)(999.0 - tokens))
        assert len(fast.states) == 20
        small, large = _latent_inputs(3), _latent_inputs(22)
        for t in (800.0, 600.0):
            fast(**small(t))
        fast(**large(800.0))
        assert graphcache.decisions(fast) == ["computed", "cached"]
        fast(**small(400.0))
        assert graphcache.decisions(fast) == ["computed", "cached", "cached", "computed"]
        for _ in range(20):  # a notebook trying policies on one model
            again = graphcache.optimize(model, "fora", backend="eager")
            again(**small(999.0))
        assert graphcache.decisions(again) == ["computed"]


def test_pipeline_calls_with_other_steps_guidance_and_batch_each_equal_a_fresh_pipeline():
    """Back to back through one optimized pipeline: 6 steps, 9 steps, guidance off (no CFG pair: another batch),
    three prompts: each call equals that call on a freshly optimized pipeline."""
    calls = [dict(steps=6), dict(steps=9), dict(steps=6, guidance_scale=1.0), dict(steps=6, labels=[2, 3, 4])]

    def call(pipe, steps, guidance_scale=1.5, labels=(1, 7)):
        return pipe(class_labels=list(labels), num_inference_steps=steps, guidance_scale=guidance_scale,
                    generator=torch.Generator().manual_seed(0))

    wanted = [call(graphcache.optimize(digits_pipeline(), "fora", backend="eager"), **kwargs) for kwargs in calls]
    pipe = graphcache.optimize(digits_pipeline(), "fora", backend="eager")
    for kwargs, want in zip(calls, wanted, strict=True):
        assert (call(pipe, **kwargs) == want).all(), kwargs


def test_cache_context_fields_as_diffusers_passes_them_and_step_index_0_starts_over():
    """Wan passes ``cache_context("cond", step_index=i, sigma=..., num_inference_steps=n)``. ``step_index=0``
    starts that context over: a run abandoned after two steps, then one starting lower (img2img) on a raw
    module (no pipeline reset), equals that run alone."""
    import pytest

    inputs, ts = _stream_inputs(1), timesteps(9)
    model, _ = hand_written_dit()
    fast = graphcache.optimize(model, "fora", backend="eager")

    def run(steps):
        outs = []
        with torch.no_grad():
            for i, t in enumerate(steps):
                with fast.cache_context("cond", step_index=i, sigma=t / 1000, num_inference_steps=len(steps)):
                    outs.append(fast(**inputs(t)))
        return outs

    run(ts[:2])
    _assert_same(run(ts[3:]), _alone(inputs, ts[3:])[0])
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['stepindex'\].*step_index"):
        with fast.cache_context("cond", stepindex=1):
            pass
