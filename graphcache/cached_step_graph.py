"""A static schedule's cached step as a graph of its own, derived from the rewritten graph
(:func:`cached_step_graph`) and compiled by the inner backend (:func:`compile_cached_step`); when it runs and
what stands in for dynamo's guards: :mod:`graphcache.cached_step`."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from graphcache.analyses import Decision
from graphcache.call_checks import meta
from graphcache.passes.base import analysis
from graphcache.passes.graph_utils import inline_branch


def cached_step_graph(gm: fx.GraphModule) -> tuple[fx.GraphModule, list[int]]:
    """``gm``'s cached step as a graph of its own (sharing ``gm``'s state buffers and branch modules): every
    cond on the decision replaced by its cached branch, an assert that the device decision is "cached", then
    only the nodes that feed an output or write (the clock, the log, the state a cached step changes).
    Returns the graph and the positions, among ``gm``'s inputs, of those it still takes."""
    found = analysis(gm)
    decision = found.require(Decision)
    preds = {decision.pred.name}
    if found.host_decision is not None and found.host_decision.pred:
        preds.add(found.host_decision.pred)
    new = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    graph = new.graph
    conds = [n for n in graph.find_nodes(op="call_function", target=torch.ops.higher_order.cond)
             if isinstance(n.args[0], fx.Node) and n.args[0].name in preds]
    if not conds:
        raise ValueError("no cond reads the decision")
    device_pred = next(n for n in graph.nodes if n.name == decision.pred.name)
    with graph.inserting_before(conds[0]):
        cached = graph.call_function(torch.ops.aten.logical_not.default, (device_pred,))
        graph.call_function(torch.ops.aten._assert_async.msg, (
            cached, "graphcache: the host found this step cached and the graph's clock did not"))
    for cond in conds:
        inline_branch(new, cond, getattr(new, str(cond.args[2].target)))  # type: ignore[union-attr]
    _drop_unchanged_writes(graph)
    graph.eliminate_dead_code()  # torch.fx's: writes (mutable ops) and asserts stay
    placeholders = list(graph.find_nodes(op="placeholder"))
    kept = [k for k, node in enumerate(placeholders) if node.users]
    for node in placeholders:
        if not node.users:
            graph.erase_node(node)
    graph.lint()
    new.recompile()
    return new, kept


def _drop_unchanged_writes(graph: fx.Graph) -> None:
    """Erase ``copy_(buffer, clone(buffer))`` where nothing else in the graph writes that buffer (through any
    view of it): the cached branch handed the cache back unchanged (state kept out of the branch because a
    compute step shifts it along a ring: FoCa, AB-Cache), and writing it back would move twice its bytes for
    nothing."""
    def base(node: object) -> str | None:
        """The buffer ``node`` is, or is a view of (None: something else)."""
        while isinstance(node, fx.Node) and node.op == "call_function":
            schema = getattr(node.target, "_schema", None)
            if schema is None or not any(r.alias_info is not None for r in schema.returns) or not node.args:
                return None
            node = node.args[0]
        return str(node.target) if isinstance(node, fx.Node) and node.op == "get_attr" else None

    writes: dict[str | None, list[fx.Node]] = {}
    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None)
        mutates = (node.op == "call_function" and schema is not None and schema.is_mutable) or (
            node.op == "call_method" and str(node.target).endswith("_"))
        if mutates and node.args:
            writes.setdefault(base(node.args[0]), []).append(node)
    for name, nodes in writes.items():
        write, *others = nodes
        if name is None or others or write.target is not torch.ops.aten.copy_.default or write.users:
            continue
        dst, source = write.args[0], write.args[1]
        if not isinstance(source, fx.Node) or source.target is not torch.ops.aten.clone.default:
            continue
        read = source.args[0]
        if all(isinstance(x, fx.Node) and x.op == "get_attr" and str(x.target) == name for x in (dst, read)):
            graph.erase_node(write)


@dataclasses.dataclass
class CompiledCachedStep:
    """The cached-step graph as compiled by the inner backend, the positions of its inputs among the full
    graph's, their metadata when compiled, and how many calls it ran (through either route)."""

    fn: Callable[..., Any]
    kept: list[int]
    metas: list[tuple[Any, ...]]
    runs: int = 0

    def __call__(self, inputs: list[Any]) -> Any:
        self.runs += 1
        return self.fn(*inputs)  # what lower() returns takes the inputs as arguments (aot_autograd's forward)


def compile_cached_step(gm: fx.GraphModule, inner: str, select: Callable[[list[int]], list[Any]],
                        made: tuple[fx.GraphModule, list[int]] | None = None) -> CompiledCachedStep:
    """:func:`cached_step_graph` of ``gm`` (``made``: already made) compiled by ``inner``, for the inputs
    ``select(kept)`` returns (kept: the positions of those the graph takes among ``gm``'s), timed in ``gm``'s
    analysis timings. Raises ValueError where an input is not a tensor."""
    from graphcache.backend import lower

    start = time.perf_counter()
    graph, kept = made or cached_step_graph(gm)
    taken = select(kept)
    if not all(isinstance(x, torch.Tensor) for x in taken):
        raise ValueError("an input of the cached-step graph is not a tensor")
    compiled = CompiledCachedStep(lower(graph, taken, inner), kept, [meta(x) for x in taken])
    analysis(gm).timings.append(("cached-step graph", time.perf_counter() - start, 0.0))
    return compiled

