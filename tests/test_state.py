"""Cache state semantics: generations, reset, isolation between optimized models."""

from __future__ import annotations

import torch

import graphcache
from graphcache.exported import optimize_exported

from helpers import generation, timesteps
from models import tiny_dit


def test_second_generation_equals_fresh_model():
    model, inputs = tiny_dit()
    ts = timesteps(8)
    cached = graphcache.optimize(model, "fora", backend="eager")
    first = generation(cached, inputs, ts)
    second = generation(cached, inputs, ts)  # timestep goes back up: new generation detected in the graph
    fresh_model, _ = tiny_dit()
    fresh = generation(graphcache.optimize(fresh_model, "fora", backend="eager"), inputs, ts)
    assert all(torch.equal(a, b) for a, b in zip(second, fresh, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert graphcache.decisions(cached) == ["computed", "cached", "cached"] * 2 + ["computed", "cached"]


def test_new_generation_with_different_inputs_does_not_reuse_old_features():
    model, inputs = tiny_dit()
    ts = timesteps(4)
    cached = optimize_exported(model, inputs(999), "fora")
    generation(cached, inputs, ts)
    other = {**inputs(999), "hidden_states": torch.randn(2, 4, 8, 8)}
    with torch.no_grad():
        out = cached(**other).sample
        ref = model(**other).sample
    assert torch.equal(out, ref)
    assert cached.state.decisions() == ["computed"]


def test_reset_forces_compute_and_clears_log():
    model, inputs = tiny_dit()
    cached = optimize_exported(model, inputs(999), "fora")
    generation(cached, inputs, [999.0, 800.0])
    assert cached.state.decisions() == ["computed", "cached"]
    cached.state.reset()
    assert cached.state.decisions() == []
    # same timestep as the next step of the old generation: only reset() makes it a compute step
    with torch.no_grad():
        out = cached(**inputs(700.0)).sample
        ref = model(**inputs(700.0)).sample
    assert torch.equal(out, ref)
    assert cached.state.decisions() == ["computed"]


def test_graphcache_reset_on_optimized_module():
    model, inputs = tiny_dit()
    cached = graphcache.optimize(model, "fora", backend="eager")
    generation(cached, inputs, [999.0, 800.0])
    graphcache.reset(cached)
    assert graphcache.decisions(cached) == []
    generation(cached, inputs, [700.0, 600.0])
    assert graphcache.decisions(cached) == ["computed", "cached"]


def test_two_optimized_models_do_not_share_state():
    ts = timesteps(6)
    model_a, inputs_a = tiny_dit(seed=0)
    model_b, inputs_b = tiny_dit(seed=5)
    alone_a = generation(graphcache.optimize(tiny_dit(seed=0)[0], "fora", backend="eager"), inputs_a, ts)
    alone_b = generation(graphcache.optimize(tiny_dit(seed=5)[0], "fora", backend="eager", interval=2), inputs_b, ts)
    a = graphcache.optimize(model_a, "fora", backend="eager")
    b = graphcache.optimize(model_b, "fora", backend="eager", interval=2)
    out_a, out_b = [], []
    with torch.no_grad():
        for t in ts:  # interleaved calls
            out_a.append(a(**inputs_a(t)).sample)
            out_b.append(b(**inputs_b(t)).sample)
    assert all(torch.equal(x, y) for x, y in zip(out_a, alone_a, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(out_b, alone_b, strict=True))
    assert graphcache.decisions(a) != graphcache.decisions(b)


def test_same_model_optimized_twice_keeps_separate_state():
    model, inputs = tiny_dit()
    a = graphcache.optimize(model, "fora", backend="eager", interval=2)
    b = graphcache.optimize(model, "fora", backend="eager", interval=3)
    generation(a, inputs, timesteps(4))
    generation(b, inputs, timesteps(5))
    assert graphcache.decisions(a) == ["computed", "cached"] * 2
    assert graphcache.decisions(b) == ["computed", "cached", "cached", "computed", "cached"]


def test_timesteps_that_increase_cache_and_start_generations_when_they_fall():
    """Lumina-Next / Z-Image run t from 0 up: the direction is learned from the first move, so those models
    cache, and a timestep that falls back starts a new generation."""
    from models import hand_written_dit

    model, inputs = hand_written_dit()
    ts = torch.linspace(0.0, 900.0, 7).tolist()
    reference = generation(model, inputs, ts)
    fast = graphcache.optimize(model, "fora", backend="eager")
    for _ in range(2):
        outputs = generation(fast, inputs, ts)
        decisions = graphcache.decisions(fast)
        assert decisions == ["computed", "cached", "cached"] * 2 + ["computed"]
        assert [torch.equal(o, r) for o, r in zip(outputs, reference, strict=True)] == [
            d == "computed" for d in decisions]
    graphcache.reset(fast)  # forgets the direction too: a decreasing run is learned afresh
    generation(fast, inputs, list(reversed(ts)))
    assert graphcache.decisions(fast) == ["computed", "cached", "cached"] * 2 + ["computed"]


def test_repeated_timestep_is_another_stream_not_the_next_step():
    """The second call at a timestep (CFG's second call, Heun's second stage) goes to a stream of its own,
    which starts computed; the first stream's generation goes on."""
    model, inputs = tiny_dit()
    fast = graphcache.optimize(model, "fora", backend="eager")
    generation(fast, inputs, [999.0, 800.0, 800.0])
    assert graphcache.decisions(fast) == ["computed"]
    generation(fast, inputs, [600.0])
    assert graphcache.decisions(fast) == ["computed", "cached", "cached"]
