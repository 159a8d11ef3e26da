"""Analysis pass: take the last ``n`` blocks out of the cached region so they run on every step (DBCache's Bn).

Precondition: ``block_stack``. Postcondition: ``block_stack`` replaced by one narrowed at the end: the tail blocks (and
the glue after the last cached block) join the epilogue; region inputs / outputs recomputed; ``tail``
records how many blocks left. The cached unit is then the residual of the middle blocks only, and the tail
refines it from the current step's inputs on cached steps too.
"""

from __future__ import annotations

import dataclasses

import torch.fx as fx

from graphcache.blockstack import BlockStack
from graphcache.errors import PolicyConfigError

from .base import Pass, PassResult, analysis
from .graph_utils import boundary


@dataclasses.dataclass(frozen=True)
class SplitTailBlocks(Pass):
    blocks: int = 1
    name = "split_tail_blocks"
    requires = ("block_stack",)
    provides = ("tail",)
    updates = ("block_stack",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        stack = analysis(gm).require(BlockStack)
        last = stack.stacks[-1]
        cached = sum(len(s.blocks) for s in stack.stacks)
        if not 1 <= self.blocks < len(last.blocks) or self.blocks >= cached:
            raise PolicyConfigError(
                f"tail blocks={self.blocks} must leave at least one cached block: the last stack has "
                f"{len(last.blocks)} blocks here")
        cut = stack.region.index(last.blocks[-self.blocks].first)
        region, moved = stack.region[:cut], stack.region[cut:]
        region_inputs, region_outputs = boundary(region)
        cached_last = dataclasses.replace(last, blocks=last.blocks[: -self.blocks])
        found = analysis(gm)
        found.block_stack = dataclasses.replace(
            stack, stacks=[*stack.stacks[:-1], cached_last], region=region, region_inputs=region_inputs,
            region_outputs=region_outputs, epilogue=moved + stack.epilogue)
        found.tail = self.blocks
        return PassResult(gm, modified=False)
