"""FORA numerics: compute steps bit-exact, cached steps equal to an independent FORA implementation."""

from __future__ import annotations

import pytest
import torch

import graphcache
from graphcache.exported import optimize_exported
from graphcache.policies.fora import FORA

from helpers import generation, timesteps
from models import hand_written_dit, tiny_dit, tiny_flux
from reference_fora import dit_forward

STEPS = 10


@pytest.mark.parametrize("factory", [tiny_dit, tiny_flux, hand_written_dit])
@pytest.mark.parametrize("granularity", ["stack", "block"])
def test_compute_steps_bit_exact_export_route(factory, granularity):
    model, inputs = factory()
    ts = timesteps(STEPS)
    reference = generation(model, inputs, ts)
    cached = optimize_exported(model, inputs(ts[0]), "fora", granularity=granularity)
    outputs = generation(cached, inputs, ts)
    decisions = cached.state.decisions()
    assert decisions == ["computed" if c else "cached" for c in FORA(granularity=granularity).expected(STEPS)]
    for out, ref, decision in zip(outputs, reference, decisions, strict=True):
        if decision == "computed":
            assert torch.equal(out, ref)
        else:
            assert not torch.equal(out, ref), "a cached step must not run the blocks"


@pytest.mark.parametrize("granularity", ["stack", "block"])
def test_compute_steps_bit_exact_dynamo_eager(granularity):
    model, inputs = tiny_dit()
    ts = timesteps(STEPS)
    reference = generation(model, inputs, ts)
    cached = graphcache.optimize(model, "fora", backend="eager", interval=4, granularity=granularity)
    outputs = generation(cached, inputs, ts)
    decisions = graphcache.decisions(cached)
    assert decisions == ["computed" if c else "cached" for c in FORA(interval=4).expected(STEPS)]
    for out, ref, decision in zip(outputs, reference, decisions, strict=True):
        assert torch.equal(out, ref) == (decision == "computed")


@pytest.mark.parametrize("route", ["export", "dynamo"])
def test_policy_that_never_caches_is_bit_exact(route):
    model, inputs = tiny_flux()
    ts = timesteps(6)
    reference = generation(model, inputs, ts)
    if route == "export":
        cached = optimize_exported(model, inputs(ts[0]), "fora", interval=1)
    else:
        cached = graphcache.optimize(model, "fora", backend="eager", interval=1)
    outputs = generation(cached, inputs, ts)
    assert all(torch.equal(a, b) for a, b in zip(outputs, reference, strict=True))


@pytest.mark.parametrize("granularity", ["stack", "block"])
def test_cached_steps_match_independent_fora(granularity):
    """Reuse is not a forecast: the rewritten graph must give what FORA's definition gives (float
    reassociation aside: the same ops in the same order, so 1e-6 on outputs of magnitude ~1)."""
    model, inputs = tiny_dit(num_layers=4)
    policy = FORA(interval=3, granularity=granularity)
    ts = timesteps(STEPS)
    cached = optimize_exported(model, inputs(ts[0]), policy)
    outputs = generation(cached, inputs, ts)
    state: dict = {}
    with torch.no_grad():
        for out, t, compute in zip(outputs, ts, policy.expected(STEPS), strict=True):
            kw = inputs(t)
            ref = dit_forward(model, kw["hidden_states"], kw["timestep"], kw["class_labels"], state, compute,
                              granularity)
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_warmup_and_compute_last():
    model, inputs = tiny_dit()
    policy = FORA(interval=4, warmup=3, num_steps=STEPS, compute_last=True)
    cached = optimize_exported(model, inputs(999), policy)
    generation(cached, inputs, timesteps(STEPS))
    expected = [i < 3 or i % 4 == 0 or i == STEPS - 1 for i in range(STEPS)]
    assert [d == "computed" for d in cached.state.decisions()] == expected


def test_cache_memory_matches_units():
    model, inputs = tiny_dit(num_layers=3, batch=2)
    stack = optimize_exported(model, inputs(999), "fora")
    block = optimize_exported(model, inputs(999), "fora", granularity="block")
    hidden = 2 * 16 * 32 * 4  # batch x tokens x width x fp32
    assert stack.state.cache_bytes() == hidden
    assert block.state.cache_bytes() == 3 * 2 * hidden  # attention + MLP output per block
