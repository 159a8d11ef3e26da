"""Results of the structural analysis: the repeated blocks of a denoiser graph and the cached region."""

from __future__ import annotations

import dataclasses

import torch.fx as fx


@dataclasses.dataclass(frozen=True)
class Block:
    """One call of a repeated submodule: a contiguous run of graph nodes."""

    nodes: list[fx.Node]
    inputs: list[fx.Node]  # external values the block reads, in first-use order (its "slots")
    outputs: list[fx.Node]  # block nodes read after the block
    path: str  # module path, for reports only (analysis never matches on it)

    @property
    def first(self) -> fx.Node:
        return self.nodes[0]

    @property
    def last(self) -> fx.Node:
        return self.nodes[-1]


@dataclasses.dataclass(frozen=True)
class Stack:
    """A chain of structurally identical blocks, block i's outputs feeding block i+1."""

    blocks: list[Block]
    class_name: str
    stream_slots: list[int]  # input slots fed by the previous block (hidden streams)
    shared_slots: list[int]  # input slots every block reads from the same node (conditioning)

    @property
    def num_nodes(self) -> int:
        return sum(len(b.nodes) for b in self.blocks)

    def describe(self) -> str:
        paths = f"{self.blocks[0].path} .. {self.blocks[-1].path}"
        return (
            f"{len(self.blocks)} x {self.class_name} ({paths}; {len(self.blocks[0].nodes)} nodes each, "
            f"{len(self.stream_slots)} stream(s))"
        )


@dataclasses.dataclass(frozen=True)
class BlockStack:
    """What the analysis found: the stacks, the region spanning them, and the denoiser's interface.

    ``region`` holds every node from the first block's first node to the last block's last node (graph
    order); ``prologue`` the compute nodes before it and ``epilogue`` those after. ``stream_inputs`` are the
    hidden streams entering the first block, ``region_outputs`` the region values the epilogue reads.
    Frozen: a pass that narrows the region (``split_probe_blocks``, ``split_tail_blocks``) records a new one
    (``dataclasses.replace``) and declares ``block_stack`` in its ``updates``.
    """

    stacks: list[Stack]
    region: list[fx.Node]
    region_inputs: list[fx.Node]
    region_outputs: list[fx.Node]
    stream_inputs: list[fx.Node]
    prologue: list[fx.Node]
    epilogue: list[fx.Node]
    timestep: fx.Node
    modulation: list[fx.Node]

    @property
    def num_blocks(self) -> int:
        return sum(len(s.blocks) for s in self.stacks)

    def describe(self) -> str:
        lines = [f"stack {i}: {s.describe()}" for i, s in enumerate(self.stacks)]
        lines.append(
            f"prologue {len(self.prologue)} nodes, region {len(self.region)} nodes, epilogue {len(self.epilogue)} "
            f"nodes; timestep input '{self.timestep.name}'"
        )
        return "\n".join(lines)
