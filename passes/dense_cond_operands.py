"""Lowering pass for Inductor: give the cache ``cond`` dense operands.

Precondition: ``cache_branch`` (a ``higher_order.cond`` built by insert_cache_branch).
Postcondition: every cond operand whose ``meta["val"]`` is a view or not contiguous is replaced by a
contiguous clone made before the cond.

Why: Inductor compiles each branch with the operand strides seen at trace time, but may lay out a
strided prologue output (e.g. the patch embedding's ``flatten(2).transpose(1, 2)``) differently in the
outer kernel, and the branch's ``assert_size_stride`` then fails. Values are unchanged (a clone), so eager
and export paths, where strides are exact, do not need this pass.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx

from .base import Pass, PassResult, analysis, mark
from .graph_utils import tensor_val


@dataclasses.dataclass(frozen=True)
class DenseCondOperands(Pass):
    name = "dense_cond_operands"
    requires = ("cache_branch",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in gm.graph.find_nodes(op="call_function", target=torch.ops.higher_order.cond):
            operands = list(node.args[3])
            for k, op in enumerate(operands):
                val = tensor_val(op)
                if val is None or op.op == "get_attr" or (val.is_contiguous() and val.storage_offset() == 0):
                    continue
                with gm.graph.inserting_before(node):
                    operands[k] = mark(
                        gm.graph.call_function(
                            torch.ops.aten.clone.default, (op,), {"memory_format": torch.contiguous_format}
                        ),
                        self.name,
                        "layout",
                    )
                modified = True
            node.args = (*node.args[:3], tuple(operands))
        analysis(gm)["dense_cond_operands"] = modified
        return PassResult(gm, modified)
