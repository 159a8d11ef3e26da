"""Lowering pass for torch.compile on an accelerator: a static schedule's cond reads a predicate from the host.

Precondition: ``decision`` with a static rule (``Decision.static_rule``: no signals, no accumulators) and the
timestep a graph input. Postcondition: every ``cond`` on the decision's ``pred`` reads ``host_pred``
instead: the same arithmetic (:func:`graphcache.clock.scheduled_step`, the decision pass's too) traced onto a host
copy of the clock, CPU buffers ``_gc_host_step`` / ``_gc_host_last_t`` / ``_gc_host_direction`` with the
device clock's fills, fed by CPU buffer ``_gc_host_t`` that the backend writes with the call's timestep
before every call (read on the host by :class:`graphcache.host_timestep.HostTimestep`: a view of the
scheduler's timesteps costs one copy per generation). ``host_decision`` records the timestep input and the
buffer.

Why: Inductor lowers a cond to ``if pred.item():``; a predicate on the GPU stalls the host every step until
the device has run everything queued (measured on an H200: one of the two syncs of every FORA step, and the
host's per-step work exposed behind it). A static schedule needs nothing from the device to decide.

The device clock stays as it is (the decision log, the computed-step history, predictors' step distances,
writes selected by ``pred``). The two clocks agree at every step: the same code runs on the same timestep
values (the host copy is the value bit for bit; the largest of a batch rounds to float32 as each element
does), and both are state buffers, so ``reset()``, a new generation and a cache context's switch move them
together. ``check=True`` (tests, any device) also asserts in the graph at every step that the two
predicates are equal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from graphcache.analyses import Decision, HostDecision, StateSpec
from graphcache.blockstack import BlockStack
from graphcache.clock import scheduled_step

from .base import Pass, PassResult, analysis, mark_new
from .graph_utils import tensor_val

CPU = torch.device("cpu")
HOST_T = "_gc_host_t"


def _host_decide(rule: Callable[..., Any], reads_timestep: bool) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The device decision of a static rule (insert_decision's ``compute``), with its clock's new values."""

    def decide(t: torch.Tensor, step: torch.Tensor, last_t: torch.Tensor, direction: torch.Tensor
               ) -> tuple[torch.Tensor, ...]:
        compute, i, t_now, new_direction, _, _ = scheduled_step(rule, t, last_t, step, direction, reads_timestep)
        return compute, i, t_now, new_direction

    return decide


def applies(gm: fx.GraphModule) -> str | None:
    """Why the pass leaves ``gm`` as it is (None: it applies)."""
    import torch._inductor.config as inductor

    if inductor.triton.cudagraphs:  # its graph partitions hand the host clock's CPU buffers to a GPU kernel
        return "Inductor's CUDA graphs (mode='reduce-overhead') are on"
    found = analysis(gm)
    decision, stack = found.decision, found.block_stack
    if decision is None or stack is None or decision.static_rule is None:
        return "the decision reads values computed on the device"
    if stack.timestep.op != "placeholder":
        return "the timestep is computed in the graph"
    val = tensor_val(decision.pred)
    if val is None or val.dim() != 0:
        return "the predicate is not one value"
    if not _conds_on(decision.pred):
        return "no cond reads the predicate"
    return None


def _conds_on(pred: fx.Node) -> list[fx.Node]:
    """The conds whose predicate is ``pred``, in graph order."""
    users = set(pred.users)
    return [n for n in pred.graph.nodes if n in users and n.target is torch.ops.higher_order.cond
            and n.args[0] is pred]


@dataclasses.dataclass(frozen=True)
class MoveDecisionToHost(Pass):
    force: bool = False  # also on a CPU model (tests: the CPU is the host and the device)
    check: bool = False  # assert in the graph that host and device predicates agree, every step
    name = "host_decision"
    requires = ("decision", "state", "block_stack")
    provides = ("host_decision",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        state = analysis(gm).require(StateSpec)
        decision = analysis(gm).require(Decision)
        stack = analysis(gm).require(BlockStack)
        why_not = "the model runs on the CPU (the predicate is on the host)" if (
            state.device.type == "cpu" and not self.force) else applies(gm)
        if why_not is not None:
            analysis(gm).host_decision = HostDecision(why_not=why_not)
            return PassResult(gm, modified=False)
        assert decision.static_rule is not None
        graph, pred = gm.graph, decision.pred
        conds = _conds_on(pred)
        first = conds[0]
        before = set(graph.nodes)
        clock = [state.step, state.last_t, _direction(gm)]
        host = [state.add(gm, f"_gc_host_{name}", torch.empty_like(gm.get_buffer(str(node.target)), device=CPU),
                          first, self.name, state.fills[str(node.target)], device=CPU)
                for name, node in zip(("step", "last_t", "direction"), clock, strict=True)]
        t = state.add(gm, HOST_T, torch.zeros(1), first, self.name, 0.0, device=CPU)
        traced = fx.symbolic_trace(_host_decide(decision.static_rule, decision.reads_timestep))
        placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
        with graph.inserting_before(first):
            out = graph.graph_copy(traced.graph, dict(zip(placeholders, [t, *host], strict=True)))
            assert isinstance(out, tuple)
            host_pred, i, t_now, direction = out
            for buffer, new in zip(host, (i, t_now, direction), strict=True):
                graph.call_function(torch.ops.aten.copy_.default, (buffer, new))
            if self.check:
                for host_value, device_value in ((host_pred, pred), (i, decision.clock[0])):
                    same = graph.call_function(torch.ops.aten.eq.Tensor, (host_value, device_value))
                    graph.call_function(torch.ops.aten._assert_async.msg, (same, "graphcache: the host clock "
                                        f"differs from the device clock ({device_value.name})"))
        nested = 0
        for cond in conds:
            cond.args = (host_pred, *cond.args[1:])
            if _step_tests(gm, cond):
                nested += _host_step_into(gm, cond, i)
        mark_new(graph, before, self.name, "decision")
        analysis(gm).host_decision = HostDecision(len(conds) + nested, stack.timestep.name, HOST_T,
                                                    pred=host_pred.name)
        return PassResult(gm, modified=True)


def _branches(owner: fx.GraphModule, cond: fx.Node) -> list[fx.GraphModule]:
    branches = [owner.get_submodule(str(b.target)) for b in cond.args[1:3]]  # type: ignore[union-attr]
    assert all(isinstance(b, fx.GraphModule) for b in branches)
    return branches  # type: ignore[return-value]


def _step_cone(branch: fx.GraphModule, pred: fx.Node, step: fx.Node) -> list[fx.Node] | None:
    """The nodes computing a nested cond's predicate, in graph order, when they read nothing but the branch's
    step index (a phase's step test); None otherwise."""
    cone: set[fx.Node] = set()
    todo = [pred]
    while todo:
        node = todo.pop()
        if node is step or node in cone:
            continue
        if node.op != "call_function":
            return None
        cone.add(node)
        todo.extend(node.all_input_nodes)
    return [n for n in branch.graph.nodes if n in cone]


def _step_tests(owner: fx.GraphModule, cond: fx.Node) -> bool:
    """Whether a branch of ``cond`` (at any depth) holds a cond whose predicate is a step test."""
    for branch in _branches(owner, cond):
        placeholders = list(branch.graph.find_nodes(op="placeholder"))
        for inner in branch.graph.find_nodes(op="call_function", target=torch.ops.higher_order.cond):
            if _step_cone(branch, inner.args[0], placeholders[-3]) is not None or _step_tests(branch, inner):
                return True
    return False


def _host_step_into(owner: fx.GraphModule, cond: fx.Node, host_step: fx.Node) -> int:
    """Pass the host's step index to ``cond``'s branches as a last operand, and compute every nested cond's
    step test (a phased plan's: Delta-DiT's stage, PAB's per-kind ranges) from it instead of the device's
    step operand (the branch's third placeholder from the end, ``clock_step``): the same integer, so the same
    phase, without a device read per nested cond. Returns the nested conds moved."""
    cond.args = (*cond.args[:3], (*cond.args[3], host_step))  # type: ignore[misc]
    moved = 0
    for branch in _branches(owner, cond):
        g = branch.graph
        placeholders = list(g.find_nodes(op="placeholder"))
        step = placeholders[-3]
        assert str(step.target).startswith("clock_step"), step.target
        with g.inserting_after(placeholders[-1]):
            host = g.placeholder("host_step")
        host.meta["val"] = host_step.meta.get("val")
        for inner in list(g.find_nodes(op="call_function", target=torch.ops.higher_order.cond)):
            cone = _step_cone(branch, inner.args[0], step)
            if cone is not None:
                copies: dict[fx.Node, fx.Node] = {step: host}
                with g.inserting_before(inner):
                    for node in cone:
                        copies[node] = g.node_copy(node, lambda n, c=copies: c[n])  # type: ignore[misc]
                inner.args = (copies[inner.args[0]], *inner.args[1:])  # type: ignore[index]
                moved += 1
            moved += _host_step_into(branch, inner, host)
        branch.recompile()
    return moved


def _direction(gm: fx.GraphModule) -> fx.Node:
    found = next((n for n in gm.graph.find_nodes(op="get_attr") if n.target == "_gc_direction"), None)
    if found is None:
        raise AssertionError("insert_decision registers _gc_direction")
    return found
