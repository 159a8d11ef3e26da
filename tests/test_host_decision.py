"""A static schedule decided on the host (``passes/host_decision.py``): on an accelerator the cond's predicate
is computed from a host copy of the clock, so Inductor's ``if pred.item()`` reads host memory instead of
waiting for the device. Here the CPU plays both parts (``force=True``), with the in-graph check that the two
clocks agree at every step (``check=True``)."""

from __future__ import annotations

import pytest
import torch

import graphcache
import graphcache.rewrite as rewrite
from graphcache.passes.base import analysis
from graphcache.passes.host_decision import MoveDecisionToHost

from helpers import generation, timesteps
from models import tiny_dit, tiny_pixart


@pytest.fixture
def host_decision(monkeypatch):
    monkeypatch.setattr(rewrite, "HOST_DECISION", MoveDecisionToHost(force=True, check=True))


def _calls(fast, inputs, schedule):
    """Run ``schedule``: a list of (timestep, context or None); returns the outputs."""
    outputs = []
    with torch.no_grad():
        for t, context in schedule:
            if context is None:
                outputs.append(fast(**inputs(t))[0])
            else:
                with fast.cache_context(context):
                    outputs.append(fast(**inputs(t))[0])
    return outputs


def _schedule():
    """Two-call guidance through cache contexts, then a generation without contexts whose timesteps repeat
    (Heun's stages: two streams by call order), then a reset()-free restart at the top."""
    ts = timesteps(7)
    contexts = [(t, c) for t in ts for c in ("cond", "uncond")]
    heun = [(ts[0], None)] + [(t, None) for t in ts[1:] for _ in range(2)]
    return contexts + heun + [(t, None) for t in ts]


@pytest.mark.parametrize(("policy", "make", "backend", "conds"), [
    ("fora", tiny_dit, "inductor", 1),
    ("taylorseer{order=2}", tiny_dit, "aot_eager", 1),
    ("deltadit", tiny_dit, "aot_eager", 2),  # the stage test nested in the cached branch
    ("pab{window_low=0,window_high=1000}", tiny_pixart, "inductor", 2),  # the self / cross attention phases
])
def test_host_decided_schedule_gives_the_same_steps_as_the_device_decision(policy, make, backend, conds,
                                                                          monkeypatch):
    """Same outputs bit for bit and same decisions as the device-side decision, through cache contexts,
    Heun's repeated timesteps, new generations and reset(); the graph asserts at every step that the host
    and device clocks give the same predicate and step index. Phased plans (Delta-DiT's stages, PAB's kinds)
    move their nested step tests too."""
    model, inputs = make(num_layers=3) if make is tiny_pixart else make(num_layers=3, batch=2)
    schedule = _schedule()
    torch._dynamo.reset()
    device_side = graphcache.optimize(model, policy, backend=backend)
    expected = _calls(device_side, inputs, schedule)
    expected_decisions = {c: graphcache.decisions(device_side, c) for c in ("cond", "uncond", "stream 1")}
    monkeypatch.setattr(rewrite, "HOST_DECISION", MoveDecisionToHost(force=True, check=True))
    torch._dynamo.reset()
    host_side = graphcache.optimize(model, policy, backend=backend)
    outputs = _calls(host_side, inputs, schedule)
    found = analysis(host_side.states[0].gm).host_decision
    assert found is not None and found.why_not is None and found.conds == conds
    fields = rewrite.lowering_fields(host_side.states[0].gm)
    assert fields["host_decided_conds"] == conds
    assert f"{conds} cond(s) decided on the host" in str(rewrite.describe_lowering(fields))
    for c, decisions in expected_decisions.items():
        assert graphcache.decisions(host_side, c) == decisions, c
        assert "cached" in decisions and "computed" in decisions
    assert all(torch.equal(a, b) for a, b in zip(outputs, expected, strict=True))
    graphcache.reset(host_side)
    again = _calls(host_side, inputs, schedule[:6])
    assert all(torch.equal(a, b) for a, b in zip(again, expected[:6], strict=True))


def test_the_check_catches_clocks_that_disagree(host_decision):
    """The in-graph check is live: a host clock moved behind the device's back fails the next call."""
    model, inputs = tiny_dit(num_layers=3, batch=2)
    torch._dynamo.reset()
    fast = graphcache.optimize(model, "fora", backend="aot_eager")
    ts = timesteps(6)
    generation(fast, inputs, ts[:2])
    fast.states[0].gm.get_buffer("_gc_host_step").fill_(5)  # the host now thinks it is at step 6
    with pytest.raises(RuntimeError, match="host clock differs from the device clock"):
        generation(fast, inputs, ts[2:3])


def test_decisions_read_from_the_features_stay_on_the_device(host_decision):
    """FBCache decides from the first block's change: a device value, so its predicate stays there and the
    record says why."""
    model, inputs = tiny_dit(num_layers=3, batch=2)
    torch._dynamo.reset()
    fast = graphcache.optimize(model, "fbcache", backend="aot_eager")
    generation(fast, inputs, timesteps(3))
    found = analysis(fast.states[0].gm).host_decision
    assert found is not None and found.conds == 0
    assert found.why_not == "the decision reads values computed on the device"


def test_on_the_cpu_the_predicate_is_already_on_the_host():
    """Without ``force`` nothing moves on a CPU model (no sync to save), and the record says so."""
    model, inputs = tiny_dit(num_layers=3, batch=2)
    torch._dynamo.reset()
    fast = graphcache.optimize(model, "fora", backend="aot_eager")
    generation(fast, inputs, timesteps(3))
    found = analysis(fast.states[0].gm).host_decision
    assert found is not None and found.conds == 0 and "CPU" in str(found.why_not)
    assert "_gc_host_t" not in dict(fast.states[0].gm.named_buffers())


def test_only_a_caller_that_writes_the_host_timestep_gets_the_pass():
    """The torch.export route runs its module as it is (nothing writes ``_gc_host_t`` before a call): its
    lowering never decides on the host; the graphcache backend, which writes it, does."""
    for backend in ("inductor", "aot_eager", "eager"):
        assert not any(isinstance(p, MoveDecisionToHost) for p in rewrite.compile_lowering(backend))
        assert isinstance(rewrite.compile_lowering(backend, host_timestep=True)[-1], MoveDecisionToHost)
