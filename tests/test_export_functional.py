"""Functional-state form and step-unrolled graphs, in torch (no ONNX): exact equality with the rewritten graph."""

from __future__ import annotations

import pytest
import torch

from graphcache.errors import ExportError
from graphcache.export.functional import functionalize, state_input
from graphcache.export.unroll import specialize
from graphcache.exported import optimize_exported
from graphcache.runner import first_tensor

from helpers import timesteps
from models import tiny_dit

CLOCK = ["step", "last_t", "direction", "log", "n_computed"]  # the scalars every step writes


def _setup(policy: str, **options):
    model, inputs = tiny_dit()
    cached = optimize_exported(model, inputs(999.0), policy, **options)
    return cached, inputs, functionalize(cached, inputs(999.0))


@pytest.mark.parametrize("policy", ["fora", "taylorseer", "fbcache"])
def test_functional_graph_equals_rewritten_graph_over_two_generations(policy):
    cached, inputs, fg = _setup(policy)
    assert fg.input_names[:3] == ["hidden_states", "timestep", "class_labels"]
    assert all(name.startswith("gc_") for name in fg.input_names[3:])
    assert not [n for n in fg.module.graph.nodes if n.target is torch.ops.aten.copy_.default]
    cached.state.reset()
    state = fg.initial_state()
    with torch.no_grad():
        for t in timesteps(7) * 2:
            kwargs = inputs(t)
            want = first_tensor(cached(**kwargs))
            out = fg.module(*fg.flat_inputs(kwargs), *state)
            state = list(out[1:])
            assert torch.equal(out[0], want)
    log = dict(zip([s.name for s in fg.state], state, strict=True))["log"]
    assert log[:7].tolist() == [1 if d == "computed" else 0 for d in cached.state.decisions()]


@pytest.mark.parametrize("policy", ["fora", "taylorseer"])
def test_unrolled_graphs_follow_the_schedule_exactly(policy):
    cached, inputs, fg = _setup(policy)
    full, lite = specialize(fg, True), specialize(fg, False)
    for graph in (full, lite):
        assert not list(graph.module.graph.find_nodes(op="call_function", target=torch.ops.higher_order.cond))
    schedule = cached.policy.expected(9)
    cached.state.reset()
    state = {s.name: s.initial() for s in fg.state}
    with torch.no_grad():
        for t, compute in zip(timesteps(9), schedule, strict=True):
            kwargs = inputs(t)
            want = first_tensor(cached(**kwargs))
            graph = full if compute else lite
            out = graph.module(*graph.flat_inputs(kwargs), *[state[s.name] for s in fg.state])
            state.update(zip(graph.writes, out[1:], strict=True))
            assert torch.equal(out[0], want)
    assert cached.state.decisions() == ["computed" if c else "cached" for c in schedule]


def test_cached_fora_graph_leaves_the_cache_in_place():
    _, _, fg = _setup("fora")
    lite = specialize(fg, False)
    caches = [s.name for s in fg.state if s.name not in [*CLOCK, "history"]]
    assert caches and not set(caches) & set(lite.writes)
    assert set(lite.writes) == set(CLOCK)
    assert set(caches) <= set(lite.reads())
    full = specialize(fg, True)
    assert set(caches) <= set(full.writes) and not set(caches) & set(full.reads())


def test_missing_input_is_named():
    _, inputs, fg = _setup("fora")
    kwargs = inputs(999.0)
    del kwargs["class_labels"]
    with pytest.raises(ExportError, match=r"inputs \['class_labels'\] are missing"):
        fg.flat_inputs(kwargs)


def test_state_inputs_and_fills():
    _, _, fg = _setup("fora")
    fills = {s.name: s.fill for s in fg.state}
    assert fills["last_t"] == float("-inf") and fills["log"] == -1 and fills["step"] == 0
    assert state_input("step") in fg.input_names
