"""The pass manager on small graphs: provenance for what a pass adds, invariant checks, typed analyses."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.fx as fx

from graphcache.analyses import Analyses, CachePlan, StateSpec
from graphcache.errors import PassError
from graphcache.passes.base import META_KEY, Pass, PassManager, PassResult, analysis


class _Tiny(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) + 1


def _gm() -> fx.GraphModule:
    return fx.symbolic_trace(_Tiny())


@dataclasses.dataclass(frozen=True)
class _AddsNeg(Pass):
    name = "adds_neg"
    report: bool = True

    def call(self, gm: fx.GraphModule) -> PassResult:
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            neg = gm.graph.call_function(torch.neg, (out.args[0],))
        out.args = (neg,)
        return PassResult(gm, modified=self.report)


@dataclasses.dataclass(frozen=True)
class _AddsBuffer(Pass):
    name = "adds_buffer"
    provides = ("state",)
    register: bool = False

    def call(self, gm: fx.GraphModule) -> PassResult:
        first = next(iter(gm.graph.nodes))
        spec = StateSpec(first, first, first, first, first, {}, [])
        analysis(gm).state = spec
        if self.register:
            spec.add(gm, "_gc_extra", torch.zeros(()), first, self.name)
        else:
            gm.register_buffer("_gc_extra", torch.zeros(()))
            with gm.graph.inserting_after(first):
                buffer = gm.graph.get_attr("_gc_extra")
            with gm.graph.inserting_after(buffer):
                gm.graph.call_function(torch.ops.aten.copy_.default, (buffer, buffer))
        return PassResult(gm, modified=True)


@dataclasses.dataclass(frozen=True)
class _NarrowsTheStack(Pass):
    """Replaces the tail result; declares it in ``updates`` only when asked."""

    declare: bool = False
    name = "narrows"

    @property
    def updates(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("tail",) if self.declare else ()

    def call(self, gm: fx.GraphModule) -> PassResult:
        analysis(gm).tail = 3
        return PassResult(gm, modified=False)


def test_a_pass_that_replaces_a_result_must_declare_it():
    gm = _gm()
    analysis(gm).tail = 1
    with pytest.raises(PassError, match=r"'narrows' replaced the analysis results \['tail'\] without declaring"):
        PassManager([_NarrowsTheStack()], [torch.randn(3)])(gm)
    assert analysis(PassManager([_NarrowsTheStack(declare=True)], [torch.randn(3)])(gm)).tail == 3


def test_manager_marks_what_a_pass_adds():
    gm = PassManager([_AddsNeg()], [torch.randn(3)])(_gm())
    added = [n for n in gm.graph.nodes if n.meta.get(META_KEY)]
    assert [(n.name, n.meta[META_KEY]) for n in added] == [("neg", {"pass": "adds_neg", "role": "added"})]
    assert gm(torch.tensor([-1.0, 2.0])).tolist() == [-1.0, -3.0]
    assert [name for name, _, _ in analysis(gm).timings] == ["adds_neg"]


def test_a_pass_that_changes_the_graph_must_say_so(monkeypatch):
    monkeypatch.setenv("GRAPHCACHE_CHECK", "1")
    with pytest.raises(PassError, match="'adds_neg' changed the graph but reported modified=False"):
        PassManager([_AddsNeg(report=False)], [torch.randn(3)])(_gm())


def test_every_state_buffer_is_registered(monkeypatch):
    monkeypatch.setenv("GRAPHCACHE_CHECK", "1")
    with pytest.raises(PassError, match=r"writes state buffer '_gc_extra' that is not registered"):
        PassManager([_AddsBuffer()], [torch.randn(3)])(_gm())
    gm = PassManager([_AddsBuffer(register=True)], [torch.randn(3)])(_gm())
    assert analysis(gm).state is not None and analysis(gm).state.buffers == ["_gc_extra"]


def test_analyses_are_typed_fields_not_a_blackboard():
    found = Analyses()
    assert "block_stack" not in found and "signals" not in found
    found.tail = 2
    assert "tail" in found and list(found) == ["tail"]
    with pytest.raises(PassError, match="not an analysis result"):
        _ = "stack" in found
    with pytest.raises(TypeError):
        _ = found["tail"]  # type: ignore[index]  # read as attributes, typed
    with pytest.raises(PassError, match=r"'cache_plan' \(CachePlan\) is not there yet"):
        found.require(CachePlan)
    with pytest.raises(PassError, match="no analysis result has type int"):
        found.require(int)


def test_an_empty_result_is_a_result():
    """A graph with no user input (a fragment after a graph break) has ``user_inputs == []``: found, not missing."""
    found = Analyses()
    found.user_inputs = []
    assert "user_inputs" in found and found.user_inputs == []
    assert "signals" not in found  # a dict field with nothing recorded is not a result yet


def test_requires_names_the_missing_result():
    @dataclasses.dataclass(frozen=True)
    class _NeedsPlan(Pass):
        name = "needs_plan"
        requires = ("cache_plan",)

        def call(self, gm: fx.GraphModule) -> PassResult:
            return PassResult(gm, modified=False)

    with pytest.raises(PassError, match=r"pass 'needs_plan' requires \['cache_plan'\]"):
        PassManager([_NeedsPlan()], [torch.randn(3)])(_gm())


@pytest.mark.parametrize("spec", ["fora", "fora{granularity=block}", "taylorseer", "fbcache", "pab",
                                  "fora{forecast=taylor:2}"])
def test_incremental_propagation_matches_a_full_one(spec):
    """After a policy's passes (each propagating only what it changed), every node's value has the shape,
    dtype and stride a full fake-tensor propagation from scratch gives it."""
    from graphcache.capture import capture_export
    from graphcache.passes.base import _same_meta, propagate_meta
    from graphcache.policies import make_policy
    from graphcache.rewrite import rewrite

    from models import tiny_dit

    model, inputs = tiny_dit(num_layers=3)
    gm, flat = capture_export(model, inputs(999))
    rewrite(gm, flat, make_policy(spec), self_check=False)
    assert any(ran < total for _, ran, total in analysis(gm).propagated)  # some pass kept values
    incremental = {n.name: n.meta.get("val") for n in gm.graph.nodes}
    ran = propagate_meta(gm, flat)  # no ``unchanged``: every node, in a fresh fake mode
    assert ran == len(gm.graph.nodes)
    differ = [n.name for n in gm.graph.nodes
              if n.op != "output" and not _same_meta(incremental[n.name], n.meta.get("val"))]
    assert not differ, f"{spec}: incremental propagation left stale values at {differ[:5]}"
