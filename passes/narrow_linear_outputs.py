"""Transform pass: in the cached branch, a linear layer whose output is split and only partly read computes
only the rows of its weight that are read.

Precondition: ``cache_branch``. Postcondition: in ``_gc_cached`` (and the phase branches nested in it), every
``linear(x, W, b)`` whose only users split its last dimension (``chunk`` / ``split`` / ``split_with_sizes``)
and whose pieces are not all read is replaced by one ``linear(x, W[s:e], b[s:e])`` per piece read; the
pieces nobody reads are no longer computed. ``narrowed_linears`` records how many and the weight bytes a
cached step no longer reads.

Why: a cached step keeps the blocks' modulation (AdaLN gates are recomputed from the current timestep), but of
the six chunks ``linear(silu(emb)).chunk(6)`` produces (shift, scale, gate for attention and MLP) only the two
gates are read once the cached attention and MLP replace the blocks' work. At small batch a linear layer costs
the bytes of its weight: computing two of six chunks reads a third of it. The compute branch is untouched
(compute steps stay bit-exact); on cached steps each gate is the same dot products, possibly summed by another
kernel (a difference in the last bits, as any change of kernel).
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch
import torch.fx as fx

from graphcache.analyses import LinearNarrowing

from .base import Pass, PassResult, analysis, mark
from .graph_utils import LINEAR_TARGETS, rewrite_nested, tensor_val

_SPLIT_METHODS = ("chunk", "split", "split_with_sizes")
_SPLIT_FUNCTIONS = (torch.chunk, torch.split, torch.ops.aten.chunk.default, torch.ops.aten.split.Tensor,
                    torch.ops.aten.split_with_sizes.default)


def _split_dim(node: fx.Node) -> int | None:
    """The dimension ``node`` splits along, when it is a chunk / split of its first argument."""
    if not ((node.op == "call_method" and node.target in _SPLIT_METHODS)
            or (node.op == "call_function" and node.target in _SPLIT_FUNCTIONS)):
        return None
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
    return dim if isinstance(dim, int) else None


_UNSQUEEZE = ("unsqueeze", torch.unsqueeze, torch.ops.aten.unsqueeze.default)


def _unsqueeze_dim(node: fx.Node) -> int | None:
    """The (non-negative) dimension ``node`` inserts, when it is an ``unsqueeze`` before the last dimension."""
    if node.target not in _UNSQUEEZE or node.op not in ("call_method", "call_function"):
        return None
    dim, val = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"), tensor_val(node)
    if not isinstance(dim, int) or val is None or dim % val.dim() == val.dim() - 1:
        return None
    return dim % val.dim()


Piece = tuple[fx.Node, int, int, "int | None"]  # (getitem, start, end, the dim an unsqueeze inserted before it)


def _pieces(linear: fx.Node) -> list[Piece] | None:
    """``(getitem, start, end, unsqueezed)`` for each piece of ``linear``'s output that is read, when every use of
    the output is a split of its last dimension read through ``getitem`` (possibly after an ``unsqueeze`` of an
    earlier dimension: ``linear(c).unsqueeze(1).chunk(6, -1)``); None otherwise."""
    if tensor_val(linear) is None or not linear.users:
        return None
    pieces: list[Piece] = []
    for user in linear.users:
        unsqueezed = _unsqueeze_dim(user)
        splits = list(user.users) if unsqueezed is not None else [user]
        for split in splits:
            dim = _split_dim(split)
            if dim is None or not isinstance(split.args[0], fx.Node):  # any other use (``0.5 * linear(x)``)
                return None
            vals, out = split.meta.get("val"), tensor_val(split.args[0])
            if out is None or dim % out.dim() != out.dim() - 1 or not isinstance(vals, (list, tuple)):
                return None
            bounds = [0]
            for v in vals:
                bounds.append(bounds[-1] + int(v.shape[-1]))
            for item in split.users:
                if item.target is not operator.getitem or not isinstance(item.args[1], int):
                    return None
                k = item.args[1] % len(vals)
                if item.users:
                    pieces.append((item, bounds[k], bounds[k + 1], unsqueezed))
    return pieces


def _narrow(graph: fx.Graph, linear: fx.Node, pieces: list[Piece]) -> int:
    """Replace each read piece by a linear on the weight rows it covers; the weight bytes no longer read."""
    x, weight = linear.args[0], linear.args[1]
    bias = linear.args[2] if len(linear.args) > 2 else linear.kwargs.get("bias")
    assert isinstance(x, fx.Node) and isinstance(weight, fx.Node)
    w_val, x_val = tensor_val(weight), tensor_val(x)
    b_val = tensor_val(bias) if isinstance(bias, fx.Node) else None
    assert w_val is not None and x_val is not None
    mode = getattr(x_val, "fake_mode", None)
    kept = 0
    for item, start, end, unsqueezed in pieces:
        with graph.inserting_before(item):
            rows = graph.call_function(torch.ops.aten.slice.Tensor, (weight, 0, start, end))
            args: list[Any] = [x, rows]
            if isinstance(bias, fx.Node):
                args.append(graph.call_function(torch.ops.aten.slice.Tensor, (bias, 0, start, end)))
            piece = graph.call_function(linear.target, tuple(args))  # type: ignore[arg-type]
        if mode is not None:  # values in x's fake mode (the weight's may be another capture's)
            with mode:
                rows.meta["val"] = torch.empty(end - start, w_val.shape[1], dtype=w_val.dtype, device=w_val.device)
                if b_val is not None:
                    args[2].meta["val"] = torch.empty(end - start, dtype=b_val.dtype, device=b_val.device)
                piece.meta["val"] = torch.nn.functional.linear(
                    x_val, rows.meta["val"], args[2].meta["val"] if b_val is not None else None)
        added = [rows, piece, *args[2:]]
        if unsqueezed is not None:  # the piece as the split saw it
            with graph.inserting_before(item):
                piece = graph.call_function(torch.ops.aten.unsqueeze.default, (piece, unsqueezed))
            if mode is not None:
                with mode:
                    piece.meta["val"] = added[1].meta["val"].unsqueeze(unsqueezed)
            added.append(piece)
        for node in added:
            mark(node, NarrowLinearOutputs.name, "narrowed")
        item.replace_all_uses_with(piece)
        kept += (end - start) * w_val.shape[1]
    return (w_val.numel() - kept) * w_val.element_size()


def _narrow_node(gm: fx.GraphModule, node: fx.Node) -> int | None:
    """Narrow ``node`` when it is a partly read linear: the weight bytes no longer read (None: left)."""
    if node.op != "call_function" or node.target not in LINEAR_TARGETS:
        return None
    pieces = _pieces(node)
    width = tensor_val(node).shape[-1] if tensor_val(node) is not None else 0  # type: ignore[union-attr]
    if pieces is None or sum(end - start for _, start, end, _ in pieces) >= width:
        return None
    return _narrow(gm.graph, node, pieces)


def narrow_graph(gm: fx.GraphModule) -> tuple[int, int]:
    """Narrow every partly read linear in ``gm`` and the cond branches nested in it: (linears, weight bytes no
    longer read)."""
    return rewrite_nested(gm, _narrow_node)


@dataclasses.dataclass(frozen=True)
class NarrowLinearOutputs(Pass):
    name = "narrow_linear_outputs"
    requires = ("cache_branch",)
    provides = ("narrowed_linears",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        found = analysis(gm)
        assert found.cache_branch is not None
        count, saved = narrow_graph(getattr(gm, found.cache_branch["cached"]))
        found.narrowed_linears = LinearNarrowing(count, saved)
        return PassResult(gm, modified=count > 0, values_kept=True)  # the outer graph is as it was
