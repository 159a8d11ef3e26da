"""PAB: attention outputs per kind, found by structure, against the model run with forward hooks."""

from __future__ import annotations

import pytest
import torch

from graphcache.errors import PolicyConfigError, UnsupportedGraphError
from graphcache.exported import optimize_exported
from graphcache.passes.base import analysis

from helpers import assert_exact_iff_computed, generation, timesteps
from models import hand_written_video_dit, tiny_dit, tiny_pixart

WINDOW = (300.0, 950.0)  # with 12 steps from 999: steps 1..7 inside


def reuse(computed, _i):
    return computed[-1]


def extrapolate(steps):
    """FasterCache's F_a + (F_a - F_b) * max(0.5, i / (T-1)) from a module's computed outputs."""
    def predict(computed, i):
        a, b = computed[-1], computed[-2] if len(computed) > 1 else computed[-1]
        return a + (a - b) * max(0.5, i / (steps - 1))
    return predict


def pab_with_hooks(model, inputs, ts, modules, ranges, predict=reuse):
    """Reference PAB, written against the modules: inside the window a kind's module output is replaced by
    ``predict`` (its last computed one for PAB) unless step % range == 0."""
    computed, now, handles = {}, {}, []

    def hook_for(kind):
        def hook(module, _args, output):
            inside = WINDOW[0] < now["t"] < WINDOW[1]
            if inside and now["i"] % ranges[kind] != 0 and module in computed:
                return predict(computed[module], now["i"])
            computed.setdefault(module, []).append(output)
            return output
        return hook

    for kind, mods in modules.items():
        handles += [m.register_forward_hook(hook_for(kind)) for m in mods]
    outputs = []
    try:
        with torch.no_grad():
            for i, t in enumerate(ts):
                now.update(i=i, t=t)
                out = model(**inputs(t))
                outputs.append(out if isinstance(out, torch.Tensor) else out.sample)
    finally:
        for h in handles:
            h.remove()
    return outputs


def expected_decisions(ts, period):
    return ["computed" if not WINDOW[0] < t < WINDOW[1] or i % period == 0 else "cached" for i, t in enumerate(ts)]


@pytest.mark.parametrize("maker, modules, ranges, period", [
    (hand_written_video_dit, lambda m: {k: [getattr(layer, k) for layer in m.layers]
                                        for k in ("spatial", "temporal", "cross")},
     {"spatial": 2, "temporal": 4, "cross": 6}, 12),
    (tiny_pixart, lambda m: {"spatial": [b.attn1 for b in m.transformer_blocks],
                             "cross": [b.attn2 for b in m.transformer_blocks]},
     {"spatial": 2, "temporal": 4, "cross": 6}, 6),
    (tiny_pixart, lambda m: {"spatial": [b.attn1 for b in m.transformer_blocks]},
     {"spatial": 3, "temporal": None, "cross": None}, 3),
])
def test_matches_pab_written_with_hooks(maker, modules, ranges, period):
    model, inputs = maker()
    ts = timesteps(12)
    cached = optimize_exported(model, inputs(ts[0]), "pab", window_low=WINDOW[0], window_high=WINDOW[1], **ranges)
    outputs, uncached = generation(cached, inputs, ts), generation(model, inputs, ts)
    decisions = cached.state.decisions()
    assert decisions == expected_decisions(ts, period)
    used = {k: r for k, r in ranges.items() if k in modules(model) and r is not None}
    assert analysis(cached.module).attention_kinds == used
    reference = pab_with_hooks(model, inputs, ts, modules(model), used)
    assert_exact_iff_computed(outputs, uncached, [decisions] * 2 if outputs[0].shape[0] == 2 else [decisions])
    for i, (out, ref) in enumerate(zip(outputs, reference, strict=True)):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, msg=f"step {i}")


def test_fastercache_extrapolates_attention_outputs_like_hooks():
    model, inputs = hand_written_video_dit()
    ts = timesteps(12)
    cached = optimize_exported(model, inputs(ts[0]), "fastercache", window_low=WINDOW[0], window_high=WINDOW[1],
                               num_steps=12)
    outputs = generation(cached, inputs, ts)
    assert cached.state.decisions() == expected_decisions(ts, 2)
    modules = {k: [getattr(layer, k) for layer in model.layers] for k in ("spatial", "temporal")}
    reference = pab_with_hooks(model, inputs, ts, modules, {"spatial": 2, "temporal": 2}, extrapolate(12))
    for i, (out, ref) in enumerate(zip(outputs, reference, strict=True)):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, msg=f"step {i}")
    plain = generation(optimize_exported(model, inputs(ts[0]), "pab", window_low=WINDOW[0], window_high=WINDOW[1],
                                         spatial=2, temporal=2, cross=None), inputs, ts)
    assert not torch.allclose(outputs[3], plain[3])  # step 3 extrapolates (w = 0.5) rather than reuses


@pytest.mark.parametrize("manual", [False, True])
def test_kinds_found_by_structure_and_mlps_not_cached(manual):
    model, inputs = hand_written_video_dit(manual=manual)
    cached = optimize_exported(model, inputs(999), "pab")
    plan = analysis(cached.module).cache_plan
    names = [u.name for u in plan.units]
    assert names == [f"s0b{b}_{k}{j}" for b in range(3) for j, k in enumerate(("spatial", "temporal", "cross"))]
    blocks = cached.block_stack.stacks[0].blocks
    assert all(u.node in blocks[int(u.name[3])].nodes for u in plan.units)
    assert plan.phases is not None and [sorted({n.split("_")[1][:-1] for n in p.units}) for p in plan.phases] == [
        ["cross", "spatial", "temporal"], ["cross", "temporal"], ["cross"], ["temporal"]]


def test_bad_options_and_no_kind_left_are_named():
    with pytest.raises(PolicyConfigError, match=r"pab.spatial=0 is invalid: must be an integer >= 1 or None"):
        optimize_exported(*_dit_at(999), "pab", spatial=0)
    with pytest.raises(PolicyConfigError, match=r"pab.window_low=900.0 is invalid: must be >= 0 and below"):
        optimize_exported(*_dit_at(999), "pab", window_low=900.0, window_high=100.0)
    with pytest.raises(UnsupportedGraphError, match=r"every attention kind found \(self\) has range None"):
        optimize_exported(*_dit_at(999), "pab", spatial=None)


def _dit_at(t):
    model, inputs = tiny_dit()
    return model, inputs(t)
