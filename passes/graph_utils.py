"""Small helpers over FX graphs shared by the passes: module stacks, op names, dataflow sets, a region's
boundary, the timestep input, the residual structure of a block (queries, not passes), and the walk that
rewrites nodes of a graph and of the cond branches nested in it."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx

from graphcache.blockstack import Block
from graphcache.errors import NoStackError, UnsupportedGraphError

from .base import analysis
from .dead_code import eliminate_dead_code

COMPUTE_OPS = ("call_function", "call_method")
LINEAR_TARGETS = (torch._C._nn.linear, torch.nn.functional.linear, torch.ops.aten.linear.default)  # dynamo, export

# Ops that move or reshape values without computing on them.
STRUCTURAL_OPS = frozenset(
    "cat concat view reshape _unsafe_view slice getitem squeeze unsqueeze clone contiguous to _to_copy clip clamp "
    "split chunk narrow select permute transpose flatten unflatten alias expand".split()
)


def is_compute(node: fx.Node) -> bool:
    return node.op in COMPUTE_OPS


def op_name(node: fx.Node) -> str:
    """A short op name independent of the capture level: 'sin' for aten.sin.default, torch.sin, Tensor.sin."""
    target = node.target
    if isinstance(target, str):
        return target
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name.split("::")[-1]
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name.split("::")[-1]
    return getattr(target, "__name__", str(target))


def module_stack(node: fx.Node) -> list[tuple[str, str, str]]:
    """``[(key, path, class name), ...]`` outermost first, from export or dynamo metadata alike."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return []
    entries = []
    for key, value in stack.items():
        path, cls = value if isinstance(value, tuple) else (str(value), "")
        cls_name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
        entries.append((str(key), str(path), cls_name))
    return entries


def clean_path(path: str) -> str:
    """Dynamo paths (``L['self'].__dict__['_modules']['blocks'].1``) to dotted ones (``blocks.1``)."""
    path = path.replace("L['self']", "").replace(".__dict__['_modules']", "").replace("._modules", "")
    for a, b in (("['", "."), ("']", ""), ("__dict__", "")):
        path = path.replace(a, b)
    return path.strip(".")


def node_inputs(node: fx.Node) -> list[fx.Node]:
    return list(node.all_input_nodes)


def descendants(sources: Iterable[fx.Node], within: set[fx.Node] | None = None) -> set[fx.Node]:
    """Nodes reachable from ``sources`` through users (optionally only inside ``within``); sources included."""
    seen = set(sources)
    todo = list(seen)
    while todo:
        for user in todo.pop().users:
            if user not in seen and (within is None or user in within):
                seen.add(user)
                todo.append(user)
    return seen


def ancestors(node: fx.Node) -> set[fx.Node]:
    """Nodes ``node`` reads, directly or through others (``node`` itself excluded)."""
    seen: set[fx.Node] = set()
    todo = [node]
    while todo:
        for inp in todo.pop().all_input_nodes:
            if inp not in seen:
                seen.add(inp)
                todo.append(inp)
    return seen


def emit_traced(graph: fx.Graph, fn: Callable[..., Any], args: list[fx.Node]) -> Any:
    """``fn`` (plain tensor code) traced with torch.fx and copied into ``graph`` on ``args`` at the current
    insertion point; returns the copied output node (or tuple of nodes)."""
    traced = fx.symbolic_trace(fn)
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    return graph.graph_copy(traced.graph, dict(zip(placeholders, args, strict=True)))


def rewrite_nested(gm: fx.GraphModule, rewrite: Callable[[fx.GraphModule, fx.Node], int | None]) -> tuple[int, int]:
    """Call ``rewrite(owner, node)`` on every node of ``gm`` and of the cond branches nested in it; it returns
    None where it left the node, else a byte count. Each changed graph loses its dead nodes and is recompiled.
    Returns (nodes rewritten, their bytes summed)."""
    count = total = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.higher_order.cond:
            for branch in node.args[1:3]:
                inner_count, inner_total = rewrite_nested(getattr(gm, str(branch.target)), rewrite)
                count, total = count + inner_count, total + inner_total
        done = rewrite(gm, node)
        if done is not None:
            count, total = count + 1, total + done
    if count:
        eliminate_dead_code(gm.graph)
        gm.graph.lint()
        gm.recompile()
    return count, total


def tensor_val(node: fx.Node) -> torch.Tensor | None:
    val = node.meta.get("val", node.meta.get("example_value"))
    return val if isinstance(val, torch.Tensor) else None


def same_tensor_type(a: fx.Node, b: fx.Node) -> bool:
    va, vb = tensor_val(a), tensor_val(b)
    return va is not None and vb is not None and va.shape == vb.shape and va.dtype == vb.dtype


def batched_val(node: fx.Node, what: str) -> torch.Tensor:
    """``node``'s value, which ``what`` needs with a batch dimension (else an UnsupportedGraphError)."""
    val = tensor_val(node)
    if val is None or val.dim() == 0:
        raise UnsupportedGraphError(f"{what} needs a batch dimension on '{node.name}'")
    return val


def per_sample_where(graph: fx.Graph, mask: fx.Node, fresh: fx.Node, old: fx.Node, like: fx.Node) -> fx.Node:
    """``where(mask[b], fresh[b], old[b])`` for each sample b: the [B] mask viewed to broadcast over the other
    dimensions of ``like`` (an outer-graph node of the same shape, which carries ``meta["val"]``). A value
    whose first dimension is not the batch is taken fresh: every sample gets the model's own value."""
    val = tensor_val(like)
    samples = tensor_val(mask)
    if val is not None and samples is not None and (val.dim() == 0 or val.shape[0] != samples.shape[0]):
        return fresh  # not laid out by sample (packed tokens of the whole batch): the fresh value is the model's
    val = batched_val(like, "per-sample caching")
    view = graph.call_function(torch.ops.aten.view.default, (mask, [-1] + [1] * (val.dim() - 1)))
    return graph.call_function(torch.ops.aten.where.self, (view, fresh, old))


TIMESTEP_NAME_HINTS = ("timestep", "time", "sigma", "t")
ADD_OPS = frozenset({"add", "add_", "iadd"})
MUL_OPS = frozenset({"mul", "mul_", "imul"})


def relative_l1(r: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sample ``mean|r - ref| / mean|ref|`` over all but the batch dimension."""
    num = (r - ref).abs().flatten(1).mean(1)
    den = ref.abs().flatten(1).mean(1)
    return num / den


def boundary(members: list[fx.Node]) -> tuple[list[fx.Node], list[fx.Node]]:
    """External values ``members`` read (first-use order) and member values read outside."""
    member_set = set(members)
    inputs: dict[fx.Node, None] = {}
    for n in members:
        inputs.update((inp, None) for inp in n.all_input_nodes if inp not in member_set)
    outputs = [n for n in members if any(u not in member_set for u in n.users)]
    return list(inputs), outputs


def find_timestep(gm: fx.GraphModule, user_inputs: list[str]) -> fx.Node:
    """The user input that feeds a sinusoidal embedding (sin/cos); names only break ties."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    candidates = []
    for ph in placeholders:
        val = tensor_val(ph)
        named = any(h in ph.name.lower() for h in ("timestep", "time", "sigma"))
        if val is None or val.dim() > 2 or (val.dim() == 2 and not named):  # (batch, frames) when named so
            continue
        if any(op_name(n) in ("sin", "cos") for n in descendants([ph]) if is_compute(n)):
            candidates.append(ph)
    side = analysis(gm).side_timestep
    if not candidates and side is not None:  # given by the caller (a graph after a graph break)
        return next(p for p in placeholders if p.name == side)
    if not candidates:
        names = [p.name for p in placeholders]
        raise NoStackError(
            f"no timestep input found among the user inputs {names}: graphcache needs a scalar or per-sample "
            "(batch,) timestep input that feeds a sinusoidal embedding (sin/cos); pass the timestep as a tensor",
            f"no timestep input among {len(names)} inputs",
        )

    def rank(node: fx.Node) -> tuple[int, int]:
        name = node.name.lower().strip("_").removeprefix("l_")
        hint = next((i for i, h in enumerate(TIMESTEP_NAME_HINTS) if h in name), len(TIMESTEP_NAME_HINTS))
        return hint, placeholders.index(node)

    return min(candidates, key=rank)


def residual_branches(block: Block, streams: list[fx.Node]) -> list[fx.Node]:
    """The ungated branch outputs F(x) of the residual adds ``x + gate * F(x)`` inside one block."""
    return residual_structure(block, streams)[0]


# what moves the residual stream without computing on it: the structural ops and dtype casts (Wan-style blocks
# add in float32, ``(x.float() + gate * F(x)).type_as(x)``)
_CARRY_OPS = STRUCTURAL_OPS | {"float", "type_as", "type"}


def residual_structure(block: Block, streams: list[fx.Node]) -> tuple[list[fx.Node], set[fx.Node]]:
    """``(branches, carried)``: the ungated branch outputs and the residual stream's own values (the streams,
    their moves and the residual sums) inside one block."""
    members = set(block.nodes)
    dependent = descendants(streams, within=members)
    carried = set(streams)
    branches = []
    for node in block.nodes:
        inputs = [a for a in node.all_input_nodes if a in dependent]
        name = op_name(node)
        if name in _CARRY_OPS and inputs and all(a in carried for a in inputs):
            carried.add(node)
        elif name in ADD_OPS and len(node.args) >= 2 and all(isinstance(a, fx.Node) for a in node.args[:2]):
            a, b = node.args[0], node.args[1]
            assert isinstance(a, fx.Node) and isinstance(b, fx.Node)
            if (a in carried and b not in dependent) or (b in carried and a not in dependent):
                carried.add(node)  # the stream plus a value that does not depend on it (Cosmos' position embedding)
            elif a in carried and b in dependent and b not in carried:
                branches.append(_ungate(b, dependent))
                carried.add(node)
            elif b in carried and a in dependent and a not in carried:
                branches.append(_ungate(a, dependent))
                carried.add(node)
    return branches, carried


def _ungate(contribution: fx.Node, dependent: set[fx.Node]) -> fx.Node:
    if op_name(contribution) in MUL_OPS and len(contribution.args) >= 2:
        x, y = contribution.args[0], contribution.args[1]
        if isinstance(x, fx.Node) and isinstance(y, fx.Node):
            if x not in dependent:
                return y
            if y not in dependent:
                return x
    return contribution


def refuse_unbranchable(nodes: Iterable[fx.Node]) -> None:
    """Refuse, naming it, a region node that a ``torch.cond`` branch (or a copy of the blocks) cannot hold: a
    module call, or a higher-order op such as flex attention (its ``score_mod`` subgraph does not follow)."""
    for node in nodes:
        if node.op == "call_module":
            raise UnsupportedGraphError(f"call_module node '{node.name}' inside the block region")
        if isinstance(node.target, torch._ops.HigherOrderOperator):
            raise UnsupportedGraphError(
                f"the blocks call {node.target.name()} ('{node.name}'), a higher-order op that torch.cond "
                "cannot hold in a branch here (flex attention inside a cond fails in torch's tracing); use "
                "scaled_dot_product_attention in the blocks to cache them")


def _lookup(module: torch.nn.Module, target: str) -> torch.Tensor | None:
    for part in target.split("."):
        module = getattr(module, part, None)  # type: ignore[assignment]
        if module is None:
            return None
    return module  # type: ignore[return-value]


def inline_branch(gm: fx.GraphModule, cond: fx.Node, branch: fx.GraphModule) -> None:
    """Replace ``cond`` (a ``higher_order.cond`` in ``gm``) by ``branch``'s nodes on its operands; a ``get_attr``
    the branch reads is the root's own when it has one of that name, else registered on the root."""
    graph = gm.graph
    operands = list(cond.args[3])  # type: ignore[arg-type]
    placeholders = [n for n in branch.graph.nodes if n.op == "placeholder"]
    env: dict[fx.Node, fx.Node] = dict(zip(placeholders, operands, strict=True))
    with graph.inserting_before(cond):
        for node in branch.graph.nodes:
            if node.op == "get_attr":  # parameters the branch reads: the root's own when it has them
                target = str(node.target)
                if _lookup(gm, target) is None:
                    target = "_gc_inlined_" + target.replace(".", "_")
                    value = _lookup(branch, str(node.target))
                    if isinstance(value, torch.nn.Module):  # a nested cond's branch (Delta-DiT's phases)
                        gm.add_submodule(target, value)
                    else:
                        gm.register_buffer(target, value)
                env[node] = graph.get_attr(target)
            elif node.op == "output":
                results = [env[r] for r in node.args[0]]  # type: ignore[union-attr]
            elif node.op != "placeholder":
                env[node] = graph.node_copy(node, lambda a: env[a])
    for user in list(cond.users):
        assert user.target is operator.getitem, f"cond output used by {user.format_node()}"
        user.replace_all_uses_with(results[user.args[1]])  # type: ignore[index]
        graph.erase_node(user)
    graph.erase_node(cond)
