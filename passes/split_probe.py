"""Analysis pass: take the first ``n`` blocks out of the cached region so they run on every step (a probe).

Precondition: ``block_stack``. Postcondition: ``block_stack`` replaced by one narrowed (the probe blocks
join the prologue; region inputs / outputs and stream inputs recomputed) and ``probe`` recorded: the hidden
streams entering the first probe block and leaving the last one, paired by shape. Used by dynamic policies
(FBCache's first block, DBCache's Fn blocks) whose decision reads the probe's residual.
"""

from __future__ import annotations

import dataclasses

import torch.fx as fx

from graphcache.analyses import Probe
from graphcache.blockstack import BlockStack
from graphcache.errors import PolicyConfigError

from .base import Pass, PassResult, analysis
from .graph_utils import ancestors, boundary, same_tensor_type, tensor_val


@dataclasses.dataclass(frozen=True)
class SplitProbeBlocks(Pass):
    blocks: int = 1
    name = "split_probe_blocks"
    requires = ("block_stack",)
    provides = ("probe",)
    updates = ("block_stack",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        stack = analysis(gm).require(BlockStack)
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
        latent = latent_input(gm)
        if latent is not None:  # the published probe reads the latent's stream (Flux: hidden_states, not text)
            pairs.sort(key=lambda pair: _not_the_latent_stream(pair[0], latent))
        region_inputs, region_outputs = boundary(region)
        cached_first = dataclasses.replace(first, blocks=first.blocks[self.blocks :])  # the stack that is cached
        found = analysis(gm)
        found.block_stack = dataclasses.replace(
            stack, stacks=[cached_first, *stack.stacks[1:]], region=region, region_inputs=region_inputs,
            region_outputs=region_outputs, prologue=stack.prologue + moved, stream_inputs=streams_in)
        found.probe = Probe([s for s, _ in pairs[:1]], [o for _, o in pairs[:1]])
        return PassResult(gm, modified=False)


def _not_the_latent_stream(stream: fx.Node, latent: fx.Node) -> tuple[bool, bool]:
    """Sort key, the latent's own stream first: its tokens are the latent's (batch and token count of a
    sequence-shaped latent: Flux), else it is computed from the latent (a text stream entering the first joint
    block comes from the prompt alone: SD3, Flux's dual blocks)."""
    val, lat = tensor_val(stream), tensor_val(latent)
    same_tokens = val is not None and lat is not None and lat.dim() == 3 and tuple(val.shape[:2]) == tuple(
        lat.shape[:2])
    return not same_tokens, latent not in ancestors(stream)


def latent_input(gm: fx.GraphModule) -> fx.Node | None:
    """The noisy latent among the user inputs: the one shaped like the prediction (the graph's first tensor
    output). None when no input or several inputs have that shape."""
    found: list[fx.Node] = []
    fx.node.map_arg(gm.graph.output_node().args[0], found.append)
    prediction = tensor_val(found[0]) if found else None
    if prediction is None:
        return None
    names = set(analysis(gm).user_inputs or [])
    shaped = []
    for node in gm.graph.find_nodes(op="placeholder"):
        val = tensor_val(node)
        if node.name in names and val is not None and val.shape == prediction.shape:
            shaped.append(node)
    return shaped[0] if len(shaped) == 1 else None
