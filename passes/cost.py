"""A static cost model: multiply-accumulate FLOPs of a node from the shapes in ``meta["val"]``.

Only the ops that dominate a denoiser count (linear / matmul / convolution / attention); elementwise ops are
free here. Used to say how much of a step the cached region covers (a region that holds little of the work
is refused: caching it would not pay) and, in reports, what a cached step costs next to a computed one.
Both capture levels are understood: torch functions (dynamo) and aten overloads (torch.export).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F

from .graph_utils import op_name, tensor_val

_MATMUL = frozenset({"matmul", "mm", "bmm", "addmm", "baddbmm", "addbmm", "__matmul__"})
_ATTENTION = frozenset({
    "scaled_dot_product_attention", "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_cudnn_attention",
})
_CONV = frozenset({"conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
                   "conv_transpose2d", "conv_transpose3d"})


def _val(arg: object) -> torch.Tensor | None:
    return tensor_val(arg) if isinstance(arg, fx.Node) else None


def _arg(node: fx.Node, index: int, *names: str) -> torch.Tensor | None:
    """The value of argument ``index`` of ``node``, passed by position or under one of ``names``."""
    if index < len(node.args):
        return _val(node.args[index])
    return next((_val(node.kwargs[n]) for n in names if n in node.kwargs), None)


def _numel(t: torch.Tensor) -> int:
    try:
        return int(math.prod(int(s) for s in t.shape))
    except (TypeError, ValueError):  # symbolic sizes
        return 0


def node_flops(node: fx.Node) -> float:
    """2 x multiply-accumulates of ``node`` (0 for ops outside the cost model or without shapes)."""
    if node.op not in ("call_function", "call_method"):
        return 0.0
    name = op_name(node)
    out = tensor_val(node)
    if node.target is operator.matmul:
        name = "matmul"
    if name == "linear" or node.target is F.linear:
        weight = _arg(node, 1, "weight")
        return 2.0 * _numel(out) * int(weight.shape[-1]) if out is not None and weight is not None else 0.0
    if name in _MATMUL:
        a = _arg(node, 1, "mat1", "batch1") if name in ("addmm", "baddbmm", "addbmm") else _arg(node, 0, "input")
        return 2.0 * _numel(out) * int(a.shape[-1]) if out is not None and a is not None and a.dim() else 0.0
    if name in _ATTENTION:
        q, k = _arg(node, 0, "query"), _arg(node, 1, "key")
        if q is None or k is None or q.dim() < 2:
            return 0.0
        return 4.0 * _numel(q) * int(k.shape[-2])
    if name in _CONV:
        weight = _arg(node, 1, "weight")
        if out is None or weight is None:
            return 0.0
        return 2.0 * _numel(out) * _numel(weight) / max(int(weight.shape[0]), 1)
    return 0.0


def flops(nodes: Iterable[fx.Node]) -> float:
    return sum(node_flops(n) for n in nodes)


def graph_flops(gm: fx.GraphModule, branch: str | None = None) -> float:
    """FLOPs of ``gm``'s graph, entering the named cond branch (a ``get_attr`` submodule) where a cond is."""
    total = 0.0
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.higher_order.cond and branch is not None:
            index = 1 if branch == "compute" else 2
            sub = getattr(gm, str(node.args[index].target))  # type: ignore[union-attr]
            total += graph_flops(sub, branch)
        else:
            total += node_flops(node)
    return total
