"""Analysis pass: take the first ``n`` blocks out of the cached region so they run on every step (a probe).

Precondition: ``block_stack``. Postcondition: ``block_stack`` narrowed (the probe blocks join the prologue;
region inputs / outputs and stream inputs recomputed) and ``probe`` recorded: the hidden streams entering
the first probe block and leaving the last one, paired by shape. Used by dynamic policies (FBCache's first
block, DBCache's Fn blocks) whose decision reads the probe's residual.
"""

from __future__ import annotations

import dataclasses

import torch.fx as fx

from graphcache.blockstack import BlockStack
from graphcache.errors import PolicyConfigError

from .base import Pass, PassResult, analysis
from .find_block_stack import boundary
from .graph_utils import same_tensor_type


@dataclasses.dataclass
class Probe:
    inputs: list[fx.Node]  # hidden streams entering the probe
    outputs: list[fx.Node]  # the same streams leaving it (= stream inputs of the cached region)


@dataclasses.dataclass(frozen=True)
class SplitProbeBlocks(Pass):
    blocks: int = 1
    name = "split_probe_blocks"
    requires = ("block_stack",)
    provides = ("probe",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        stack: BlockStack = analysis(gm)["block_stack"]
        first = stack.stacks[0]
        if not 1 <= self.blocks < len(first.blocks):
            raise PolicyConfigError(
                f"probe blocks={self.blocks} must leave at least one cached block: the first stack has "
                f"{len(first.blocks)} blocks"
            )
        after = first.blocks[self.blocks]
        cut = stack.region.index(after.first)  # glue between probe and cached blocks runs with the probe
        moved, region = stack.region[:cut], stack.region[cut:]
        streams_in = [after.inputs[k] for k in first.stream_slots]
        pairs = [(s, o) for s in stack.stream_inputs for o in streams_in if same_tensor_type(s, o)]
        if not pairs:
            raise PolicyConfigError("the probe's input and output streams have no matching shapes")
        stack.region = region
        stack.region_inputs, stack.region_outputs = boundary(region)
        stack.prologue = stack.prologue + moved
        first.blocks = first.blocks[self.blocks :]  # the stack that is cached
        analysis(gm)["probe"] = Probe([s for s, _ in pairs[:1]], [o for _, o in pairs[:1]])
        stack.stream_inputs = streams_in
        return PassResult(gm, modified=False)
