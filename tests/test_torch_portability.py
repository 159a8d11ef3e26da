"""What a rewrite must not take from the machine it was written on: the CPU (state buffers go to the model's
device) and torch 2.13's branch writes (older torch keeps the state functional)."""

from __future__ import annotations

import warnings

import pytest
import torch

import graphcache
import graphcache.rewrite as rewrite
from graphcache.backend import make_backend
from graphcache.passes.base import analysis
from graphcache.policies import available, make_policy

from helpers import generation, timesteps
from models import tiny_dit, tiny_unet

CALIBRATED = ("teacache", "magcache")  # need the session's calibration file
WRAPPERS = ("cfgcache",)  # wraps the call, no graph rewrite


@pytest.mark.parametrize("name", [n for n in available() if n not in WRAPPERS])
def test_every_state_buffer_is_made_on_the_model_device(name, dit_calibration):
    """On a model that is not on the CPU (here the meta device, as fake as CUDA for device propagation), every
    buffer a pass adds lives there: a CPU buffer made the decision pass fail on CUDA ("found two different
    devices cuda:0, cpu"). The one exception is the host clock of a static schedule, on the CPU on purpose."""
    model, inputs = tiny_unet() if name in ("deepcache", "auto") else tiny_dit(num_layers=3, batch=2)
    policy = make_policy(name, calibration=str(dit_calibration)) if name in CALIBRATED else make_policy(name)
    model = model.to("meta").requires_grad_(False)
    kwargs = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in inputs(999.0).items()}
    states: list = []
    compiled = torch.compile(model, backend=make_backend(policy, "eager", sink=states, self_check=False),
                             fullgraph=True)
    with torch.no_grad(), pytest.raises(Exception, match="meta"):  # rewritten; the branch choice reads no data
        compiled(**kwargs)
    assert len(states) == 1
    placed = {name: str(b.device) for name, b in states[0].gm.named_buffers() if name.startswith("_gc")}
    host = {name: device for name, device in placed.items() if name.startswith("_gc_host_")}
    device = {name: d for name, d in placed.items() if name not in host}
    assert device and set(device.values()) == {"meta"}, placed
    # a static schedule decides on the host (passes/host_decision.py): its clock copy is on the CPU, by design
    assert set(host.values()) <= {"cpu"}, host
    moved = analysis(states[0].gm).host_decision
    assert moved is not None and bool(host) == (moved.conds > 0), (host, moved)
    assert moved.conds > 0 or not make_policy(name).static, moved  # every step-index schedule moves


def test_without_branch_writes_the_state_stays_functional_and_the_steps_are_the_same(monkeypatch):
    """Where torch refuses cond branches that write their operands (torch 2.11), the compile lowering keeps
    the branches functional, warns once, and generates the same outputs and decisions."""
    model, inputs = tiny_dit(num_layers=3, batch=2)
    ts = timesteps(8)
    policy = "taylorseer{order=2}"
    torch._dynamo.reset()
    in_place = graphcache.optimize(model, policy, backend="aot_eager")
    expected = generation(in_place, inputs, ts)
    expected_decisions = graphcache.decisions(in_place)
    monkeypatch.setattr(rewrite, "branch_writes_supported", lambda: False)
    assert not any(isinstance(p, rewrite.SinkStateWrites) for p in rewrite.compile_lowering("inductor"))
    rewrite._warn_functional_state.cache_clear()
    torch._dynamo.reset()
    functional = graphcache.optimize(model, policy, backend="aot_eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outputs = generation(functional, inputs, ts)
    assert any("written functionally" in str(w.message) for w in caught)
    assert graphcache.decisions(functional) == expected_decisions
    assert "cached" in expected_decisions and "computed" in expected_decisions
    for out, ref in zip(outputs, expected, strict=True):
        assert torch.equal(out, ref)
    rewrite._warn_functional_state.cache_clear()


def test_this_torch_lowers_branch_writes():
    """The probe itself, on the torch this project pins (2.13 writes in place)."""
    from graphcache.passes.sink_state_writes import branch_writes_supported

    assert branch_writes_supported()
