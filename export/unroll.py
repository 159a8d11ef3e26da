"""Step-unrolled form: one graph per kind of step (full, cached) instead of one graph with a cond.

For a static schedule (FORA, TaylorSeer, HiCache) which steps compute is known before the run, so the
runtime can pick a graph per step: no conditional in the graph (TensorRT builds plain engines, CUDA graphs
can capture each one) and the cached graph reads and writes only the state it needs.

``specialize(graph, compute)`` fixes the decision to ``compute``: the cond is replaced by the chosen branch
inlined, ``where(pred, a, b)`` by ``a`` or ``b``, other uses of the decision by a constant, and dead code
goes. State outputs that come back unchanged (the input itself, or a clone of it) are dropped from the
outputs, so the runtime keeps those buffers where they are: the cached graph of FORA writes only the clock.
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx

from graphcache.errors import ExportError
from graphcache.passes.dead_code import eliminate_dead_code
from graphcache.passes.graph_utils import inline_branch

from .functional import FunctionalGraph, state_input

_WHERE = (torch.where, torch.ops.aten.where.self)
_CLONES = (torch.ops.aten.clone.default, torch.ops.aten.alias.default, torch.ops.aten.contiguous.default)


def _the_cond(graph: fx.Graph) -> fx.Node:
    conds = list(graph.find_nodes(op="call_function", target=torch.ops.higher_order.cond))
    if len(conds) != 1:
        raise ExportError(f"the step-unrolled form needs exactly one cache cond in the graph, found {len(conds)}")
    return conds[0]


def _origin(node: fx.Node) -> fx.Node:
    while node.op == "call_function" and node.target in _CLONES:
        node = node.args[0]  # type: ignore[assignment]
    return node


def specialize(fg: FunctionalGraph, compute: bool) -> FunctionalGraph:
    """The graph of a step whose decision is ``compute`` (True: full step, False: cached step)."""
    gm = fx.GraphModule(fg.module, copy.deepcopy(fg.module.graph))
    graph = gm.graph
    cond = _the_cond(graph)
    pred = cond.args[0]
    assert isinstance(pred, fx.Node)
    branches = [str(cond.args[k].target) for k in (1, 2)]  # type: ignore[union-attr]
    branch = getattr(gm, branches[0 if compute else 1])
    inline_branch(gm, cond, branch)
    for user in list(pred.users):
        if user.target in _WHERE and user.args[0] is pred:
            user.replace_all_uses_with(user.args[1 if compute else 2])  # type: ignore[arg-type]
            graph.erase_node(user)
    with graph.inserting_after(pred):
        constant = graph.call_function(torch.ops.aten.scalar_tensor.default, (float(compute),), {"dtype": torch.bool})
    pred.replace_all_uses_with(constant)
    output = next(n for n in graph.nodes if n.op == "output")
    values = list(output.args[0])  # type: ignore[arg-type]
    n_out = len(fg.outputs)
    placeholders = {n.name: n for n in graph.nodes if n.op == "placeholder"}
    writes, new_state = [], []
    for name, value in zip(fg.writes, values[n_out:], strict=True):
        if _origin(value) is not placeholders[state_input(name)]:
            writes.append(name)
            new_state.append(value)
    output.args = ((*values[:n_out], *new_state),)
    eliminate_dead_code(graph)
    graph.lint()
    gm.recompile()
    for name in branches:
        delattr(gm, name)
    return FunctionalGraph(gm, fg.inputs, fg.outputs, fg.state, writes)
