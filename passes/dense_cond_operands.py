"""Lowering pass for Inductor: give the cache ``cond`` dense operands.

Precondition: ``cache_branch`` (a ``higher_order.cond`` built by insert_cache_branch).
Postcondition: every cond operand whose ``meta["val"]`` is a view or not contiguous is replaced by a
contiguous clone made before the cond; every other operand computed in the graph has its layout frozen.

Why: Inductor compiles each branch with the operand strides seen at trace time, but may lay out a
strided prologue output (e.g. the patch embedding's ``flatten(2).transpose(1, 2)``) differently in the
outer kernel, and the branch's ``assert_size_stride`` then fails. A value a ``cat`` also reads (a U-Net's
skip) may be computed straight into a slice of the concat's buffer (stride 6144 where 2048 was traced):
its layout is frozen with ``prims.inductor_force_stride_order`` (Inductor removes a same-strides clone).
Values are unchanged (a clone), so eager and export paths, where strides are exact, do not need this pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.fx as fx
from torch._prims_common import make_contiguous_strides_for

from .base import Pass, PassResult, analysis, mark
from .graph_utils import op_name, tensor_val


def _force_stride_order() -> Any:
    """Inductor's prim that freezes a buffer's layout (registered when its module is imported)."""
    import torch._inductor.inductor_prims

    return torch.ops.prims.inductor_force_stride_order.default


@dataclasses.dataclass(frozen=True)
class DenseCondOperands(Pass):
    freeze_concat_operands: bool = True  # Inductor targets; ONNX has no such op and no in-place concat
    name = "dense_cond_operands"
    requires = ("cache_branch",)
    provides = ("dense_cond_operands",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in gm.graph.find_nodes(op="call_function", target=torch.ops.higher_order.cond):
            operands = list(node.args[3])
            for k, op in enumerate(operands):
                val = tensor_val(op)
                dense = val is not None and val.is_contiguous() and val.storage_offset() == 0
                # a value computed in the graph may be laid out by Inductor with other strides than traced
                # (WanVACE: a transposed layout for a contiguous value): freeze its layout; graph inputs
                # and buffers have theirs already
                computed = self.freeze_concat_operands and op.op in ("call_function", "call_method")
                concatenated = self.freeze_concat_operands and any(op_name(user) == "cat" for user in op.users)
                if val is None or op.op == "get_attr" or (dense and not (concatenated or computed)):
                    continue
                with gm.graph.inserting_before(node):
                    if dense:  # Inductor drops a same-strides clone; fixing the layout keeps the cat off it
                        fixed = gm.graph.call_function(_force_stride_order(), (op, list(val.stride())))
                    else:
                        fixed = gm.graph.call_function(
                            torch.ops.aten.clone.default, (op,), {"memory_format": torch.contiguous_format})
                        if self.freeze_concat_operands:  # Inductor may fuse the clone into a strided layout
                            fixed = gm.graph.call_function(_force_stride_order(), (
                                mark(fixed, self.name, "layout"), list(make_contiguous_strides_for(val.shape))))
                    operands[k] = mark(fixed, self.name, "layout")
                modified = True
            node.args = (*node.args[:3], tuple(operands))
        analysis(gm).dense_cond_operands = modified
        return PassResult(gm, modified)
