"""Lowering pass for Inductor on CPU: in the cached branch, a linear layer applied to a few rows is written as a
multiply-and-sum, which Inductor generates as a vectorized reduction and fuses with its neighbours.

Precondition: ``cache_branch``. Postcondition: in ``_gc_cached`` (and the cond branches nested in it), every
``linear(x, W, b)`` on CPU whose input has at most :data:`MAX_ROWS` rows (the product of its leading
dimensions) and a floating dtype is replaced by ``sum(x.unsqueeze(-2) * W, -1) + b`` (computed in float32 for
narrower dtypes, then cast back). ``matvec_reductions`` records how many and the weight bytes they read.

Why: a per-block cached step keeps each block's modulation (the gates are recomputed from the current
timestep), so at batch 1 it is dozens of matrix-vector products on small weights: the timestep embedders and
the gate rows, 36 of them on a 12-block DiT. Each is a BLAS call that packs its operand and runs a general
matrix-matrix kernel on one row. Measured on this project's 2-core CPU (MKL; 12 x three DiT weights of
512x256, 512x512 and 1024x512, 42 MiB; ``python benchmarks/cached_step_kernels.py``): 5.3 ms as BLAS calls,
1.2 ms as Inductor reductions; 2.45x faster for 2 rows, 1.81x for 4, 1.30x for 8. The compute branch is
untouched (compute steps stay bit-exact); a cached step's gates are the same dot products summed in another
order (a difference in the last bits, as any change of kernel).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.fx as fx

from graphcache.analyses import MatvecRewrite

from .base import Pass, PassResult, analysis, mark
from .graph_utils import LINEAR_TARGETS, rewrite_nested, tensor_val

MAX_ROWS = 4  # measured above: by 8 rows BLAS nearly catches up
aten = torch.ops.aten


def _operands(node: fx.Node) -> tuple[fx.Node, fx.Node, fx.Node | None] | None:
    """``(x, W, b)`` of a linear this pass rewrites, None for any other node."""
    if node.op != "call_function" or node.target not in LINEAR_TARGETS:
        return None
    x, weight = node.args[0], node.args[1]
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    if not isinstance(x, fx.Node) or not isinstance(weight, fx.Node) or not (bias is None or isinstance(bias, fx.Node)):
        return None
    x_val, w_val, out = tensor_val(x), tensor_val(weight), tensor_val(node)
    if x_val is None or w_val is None or out is None or w_val.dim() != 2 or x_val.dim() < 1:
        return None
    if w_val.device.type != "cpu" or not w_val.dtype.is_floating_point or x_val.dtype != w_val.dtype:
        return None
    if math.prod(int(s) for s in x_val.shape[:-1]) > MAX_ROWS:
        return None
    return x, weight, bias


def _reduce(graph: fx.Graph, linear: fx.Node, x: fx.Node, weight: fx.Node, bias: fx.Node | None) -> None:
    """Replace ``linear`` by its multiply-and-sum, with meta values in x's fake mode."""
    out_val = tensor_val(linear)
    assert out_val is not None
    wide = out_val.dtype in (torch.float32, torch.float64)
    steps: list[fx.Node] = []

    def emit(target: object, *args: object, **kwargs: object) -> fx.Node:
        node = graph.call_function(target, args, kwargs)  # type: ignore[arg-type]
        steps.append(node)
        return node

    def f32(node: fx.Node) -> fx.Node:  # a narrow dtype's products are summed in float32, as BLAS accumulates
        return node if wide else emit(aten._to_copy.default, node, dtype=torch.float32)

    with graph.inserting_before(linear):
        total = emit(aten.sum.dim_IntList, emit(aten.mul.Tensor, emit(aten.unsqueeze.default, f32(x), -2),
                                                f32(weight)), [-1])
        if bias is not None:
            total = emit(aten.add.Tensor, total, f32(bias))
        if not wide:
            total = emit(aten._to_copy.default, total, dtype=out_val.dtype)
    mode = getattr(tensor_val(x), "fake_mode", None)
    if mode is not None:  # values in x's fake mode (the weight's may be another capture's)
        env: dict[fx.Node, torch.Tensor] = {}

        def value(arg: object) -> object:
            if not isinstance(arg, fx.Node):
                return arg
            if arg in env:
                return env[arg]
            val = tensor_val(arg)
            assert val is not None
            return torch.empty_strided(val.shape, val.stride(), dtype=val.dtype, device=val.device)

        with mode:
            for node in steps:
                env[node] = node.target(*(value(a) for a in node.args), **node.kwargs)  # type: ignore[operator]
                node.meta["val"] = env[node]
    for node in steps:
        mark(node, MatvecReductions.name, "matvec")
    linear.replace_all_uses_with(total)


def _reduce_node(gm: fx.GraphModule, node: fx.Node) -> int | None:
    """Rewrite ``node`` when it is a few-row linear: its weight's bytes (None: left)."""
    operands = _operands(node)
    if operands is None:
        return None
    _reduce(gm.graph, node, *operands)
    w_val = tensor_val(operands[1])
    assert w_val is not None
    return w_val.numel() * w_val.element_size()


def reduce_graph(gm: fx.GraphModule) -> tuple[int, int]:
    """Rewrite every few-row linear in ``gm`` and the cond branches nested in it: (linears, weight bytes)."""
    return rewrite_nested(gm, _reduce_node)


@dataclasses.dataclass(frozen=True)
class MatvecReductions(Pass):
    name = "matvec_reductions"
    requires = ("cache_branch",)
    provides = ("matvec_reductions",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        found = analysis(gm)
        assert found.cache_branch is not None
        count, weight_bytes = reduce_graph(getattr(gm, found.cache_branch["cached"]))
        found.matvec_reductions = MatvecRewrite(count, weight_bytes)
        return PassResult(gm, modified=count > 0, values_kept=True)  # the outer graph is as it was
