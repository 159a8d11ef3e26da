"""Delta-DiT: block-range deltas with a stage boundary, checked against the model run with hooks."""

from __future__ import annotations

import pytest
import torch

from graphcache.errors import PolicyConfigError
from graphcache.exported import optimize_exported
from graphcache.passes.base import analysis

from helpers import assert_exact_iff_computed, generation, run_with_stream_hooks, timesteps
from models import tiny_dit


def test_cached_steps_skip_rear_blocks_early_and_front_blocks_late():
    model, inputs = tiny_dit(num_layers=4)
    ts = timesteps(10)
    cached = optimize_exported(model, inputs(ts[0]), "deltadit", interval=3, boundary=5, split=2)
    outputs, reference = generation(cached, inputs, ts), generation(model, inputs, ts)
    decisions = cached.state.decisions()
    assert decisions == ["computed" if i % 3 == 0 else "cached" for i in range(10)]
    assert_exact_iff_computed(outputs, reference, [decisions] * 2)
    last = {}
    for i, t in enumerate(ts):
        if decisions[i] == "computed":
            _, last = run_with_stream_hooks(model, inputs(t), 2, {})
            continue
        if i < 5:  # early: front blocks run, rear delta added
            replace = {"out": lambda seen, a=last: seen["mid"] + (a["out"] - a["mid"])}
        else:  # late: front delta added, rear blocks run on it
            replace = {"mid": lambda seen, a=last: seen["in"] + (a["mid"] - a["in"])}
        want, _ = run_with_stream_hooks(model, inputs(t), 2, replace)
        torch.testing.assert_close(outputs[i], want, rtol=1e-5, atol=1e-5)


def test_default_split_is_half_and_bad_split_is_named():
    model, inputs = tiny_dit(num_layers=4)
    cached = optimize_exported(model, inputs(999), "deltadit")
    plan = analysis(cached.module).cache_plan
    assert sorted(u.name for u in plan.units) == ["front0", "rear0"]
    blocks = cached.block_stack.stacks[0].blocks
    front = next(u for u in plan.units if u.name == "front0")
    assert front.node in blocks[2].inputs and front.node in blocks[1].nodes  # block 1's output enters block 2
    with pytest.raises(PolicyConfigError, match=r"deltadit.split=4 is invalid: this model has 4 blocks"):
        optimize_exported(model, inputs(999), "deltadit", split=4)
