"""Transform pass: TeaCache's indicator, the timestep-modulated input of block 0, as a per-sample signal.

Precondition: ``block_stack`` and ``state``. The modulated input is found by structure: in block 0, the
first node with the hidden stream's shape that depends on both the stream and the block's conditioning
inputs (its shared slots: timestep / label embedding), followed through single-use elementwise nodes of
that shape (``norm(x) * (1 + scale) + shift``). That node and its ancestors inside the block are copied
in front of the cached region (the compute branch still has its own copy), so the decision sees it on
every step. Postcondition: ``signals`` gets ``relL1(m_i, m_{i-1})`` per sample (``m`` at the previous step,
computed or not, in buffer ``_gc_modulated_prev``: ``refresh_always``); ``indicator`` records the node.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx

from graphcache.analyses import StateSpec
from graphcache.blockstack import BlockStack
from graphcache.errors import UnsupportedGraphError

from .base import Pass, PassResult, analysis, mark_new
from .graph_utils import emit_traced, relative_l1, tensor_val


def _depends(nodes: list[fx.Node], roots: set[fx.Node]) -> set[fx.Node]:
    found: set[fx.Node] = set()
    for node in nodes:
        if any(a in roots or a in found for a in node.all_input_nodes):
            found.add(node)
    return found


def find_modulated_input(block_nodes: list[fx.Node], stream: fx.Node, conditioning: list[fx.Node]) -> fx.Node:
    """The first node of block 0 shaped like ``stream`` that mixes ``stream`` with the conditioning."""
    shape = tensor_val(stream).shape  # type: ignore[union-attr]
    on_stream = _depends(block_nodes, {stream})
    on_cond = _depends(block_nodes, set(conditioning))
    inside = set(block_nodes)

    def shaped(n: fx.Node) -> bool:
        val = tensor_val(n)
        return val is not None and val.shape == shape

    for node in block_nodes:
        if node in on_stream and node in on_cond and shaped(node):
            while len(node.users) == 1:
                (user,) = node.users
                if user not in inside or user not in on_cond or not shaped(user) or user.target not in (
                        torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor, torch.ops.aten.sub.Tensor):
                    break
                node = user
            return node
    raise UnsupportedGraphError(
        f"no timestep-modulated input found in the first block ({len(block_nodes)} nodes): TeaCache needs a block "
        "that mixes its hidden input with the conditioning (AdaLN); use fbcache for this model")


@dataclasses.dataclass(frozen=True)
class InsertModulatedIndicator(Pass):
    name = "insert_modulated_indicator"
    requires = ("block_stack", "state")
    provides = ("signals", "refresh_always", "indicator")

    def call(self, gm: fx.GraphModule) -> PassResult:
        found = analysis(gm)
        stack = found.require(BlockStack)
        first = stack.stacks[0]
        block = first.blocks[0]
        stream = block.inputs[first.stream_slots[0]]
        conditioning = [block.inputs[k] for k in first.shared_slots]
        if not conditioning:
            raise UnsupportedGraphError("the first block reads no conditioning input shared by the stack")
        target = find_modulated_input(block.nodes, stream, conditioning)
        inside = set(block.nodes)
        needed: set[fx.Node] = set()
        todo = [target]
        while todo:
            node = todo.pop()
            if node in inside and node not in needed:
                needed.add(node)
                todo.extend(node.all_input_nodes)
        graph = gm.graph
        env: dict[fx.Node, fx.Node] = {}
        before = set(graph.nodes)
        val = tensor_val(target)
        assert val is not None
        prev = found.require(StateSpec).add(gm, "_gc_modulated_prev", torch.empty(val.shape, dtype=val.dtype,
                                                                           device=val.device), stack.region[0],
                                  self.name)
        with graph.inserting_before(stack.region[0]):
            for node in block.nodes:
                if node in needed:
                    env[node] = graph.node_copy(node, lambda a: env.get(a, a))
            rel = emit_traced(graph, relative_l1, [env[target], prev])
        mark_new(graph, before, self.name, "decision")
        found.add_signal("distance", rel, self.name)
        found.refresh_always.append((prev, env[target]))
        found.indicator = target.name
        return PassResult(gm, modified=True)
