"""Small helpers over FX graphs shared by the passes: module stacks, op names, dataflow sets."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx

COMPUTE_OPS = ("call_function", "call_method")

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


def tensor_val(node: fx.Node) -> torch.Tensor | None:
    val = node.meta.get("val", node.meta.get("example_value"))
    return val if isinstance(val, torch.Tensor) else None


def same_tensor_type(a: fx.Node, b: fx.Node) -> bool:
    va, vb = tensor_val(a), tensor_val(b)
    return va is not None and vb is not None and va.shape == vb.shape and va.dtype == vb.dtype


def batched_val(node: fx.Node, what: str) -> torch.Tensor:
    """``node``'s value, which ``what`` needs with a batch dimension (else an UnsupportedGraphError)."""
    from graphcache.errors import UnsupportedGraphError

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
