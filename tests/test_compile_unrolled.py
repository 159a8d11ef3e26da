"""compile_unrolled: the step-unrolled schedule under torch.compile in this process (the GPU route without a
host sync per step) generates what the in-graph rewritten module generates, generation after generation and
stream by stream."""

from __future__ import annotations

import pytest
import torch

from graphcache.errors import ExportError
from graphcache.export import compile_unrolled
from graphcache.exported import optimize_exported
from graphcache.runner import first_tensor

from helpers import timesteps
from models import tiny_dit

STEPS = 8


@pytest.mark.parametrize("policy", ["fora", "taylorseer{order=2}"])
def test_unrolled_runner_generates_as_the_in_graph_module(policy):
    model, inputs = tiny_dit(num_layers=3, batch=2)
    runner = compile_unrolled(model, inputs(999.0), policy, steps=STEPS, backend="aot_eager")
    assert runner.plan.form == "unrolled" and set(runner.plan.graphs) == {"full", "cached"}
    reference = optimize_exported(model, inputs(999.0), policy)
    with torch.no_grad():
        for _ in range(2):  # the second generation starts when the timestep goes back up
            for t in timesteps(STEPS):
                kwargs = inputs(t)
                torch.testing.assert_close(runner(**kwargs), first_tensor(reference(**kwargs)), rtol=1e-5,
                                           atol=1e-5)
            assert runner.decisions() == reference.state.decisions()
    assert runner.decisions().count("computed") < STEPS


def test_two_calls_per_step_are_two_streams_each_as_if_alone():
    """CFG as two calls at one timestep: the second call is stream 1, with a cache of its own."""
    model, inputs = tiny_dit(num_layers=3, batch=2)
    runner = compile_unrolled(model, inputs(999.0), "fora", steps=STEPS, backend="aot_eager")
    alone = compile_unrolled(model, inputs(999.0), "fora", steps=STEPS, backend="aot_eager")
    other = {k: (v.flip(0) if k == "hidden_states" else v) for k, v in inputs(999.0).items()}
    with torch.no_grad():
        for t in timesteps(STEPS):
            kwargs = inputs(t)
            first = runner(**kwargs)
            runner(**{**kwargs, "hidden_states": other["hidden_states"]})
            assert torch.equal(first, alone(**kwargs))


def test_a_dynamic_policy_and_a_bad_mode_are_refused_by_name():
    model, inputs = tiny_dit(num_layers=3, batch=2)
    with pytest.raises(ExportError, match="decides at run time"):
        compile_unrolled(model, inputs(999.0), "fbcache", steps=STEPS, backend="aot_eager")
    with pytest.raises(ExportError, match=r"unknown torch\.compile mode"):
        compile_unrolled(model, inputs(999.0), "fora", steps=STEPS, mode="fast")
