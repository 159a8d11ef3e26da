"""Analysis pass (with one reordering): find a U-Net's skip connections and the deep part behind one of them.

Preconditions: ``user_inputs`` recorded; nodes carry ``meta["val"]``. Postcondition: ``block_stack`` is a
:class:`BlockStack` whose ``region`` is the deep part of the U-Net behind skip ``skip`` and whose only
region output is the feature ``F`` that enters the up path's concat with that skip; the region's nodes
are moved (order-preserving) to just before that concat so that they are contiguous.

Structure, not names: a *skip concat* is a ``cat`` along a non-batch dimension of two tensors ``(h, s)``
where ``h`` depends on ``s`` (the up path's feature was computed from the down path's skip). Skips are
ordered by where they are computed (0 = outermost, usually the input convolution's output); a U-Net
consumes them last-in, first-out. The region behind skip ``m`` is every node that depends on ``s_m`` and
that ``F`` depends on, plus the nodes only they use (e.g. the deep blocks' projections of the
conditioning). On a cached step the down path up to ``s_m`` and the up path from the concat on still run:
DeepCache's shallow path.
"""

from __future__ import annotations

import dataclasses

import torch.fx as fx

from graphcache.blockstack import BlockStack
from graphcache.errors import NoStackError, UnsupportedGraphError

from .base import Pass, PassResult, analysis
from .graph_utils import ancestors, boundary, descendants, find_timestep, is_compute, op_name, tensor_val


@dataclasses.dataclass(frozen=True)
class SkipConcat:
    concat: fx.Node
    feature: fx.Node  # h: the up path's value
    skip: fx.Node  # s: the down path's value


def skip_concats(graph: fx.Graph) -> list[SkipConcat]:
    """The skip concats of the graph, outermost skip first."""
    position = {n: i for i, n in enumerate(graph.nodes)}
    found = []
    for node in graph.nodes:
        if op_name(node) != "cat" or not isinstance(node.args[0], list | tuple) or len(node.args[0]) != 2:
            continue
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        val = tensor_val(node)
        if val is None or val.dim() < 3 or dim in (0, -val.dim()):
            continue
        h, s = node.args[0]
        if not isinstance(h, fx.Node) or not isinstance(s, fx.Node):
            continue
        if s in ancestors(h):
            found.append(SkipConcat(node, h, s))
        elif h in ancestors(s):
            found.append(SkipConcat(node, s, h))
    found.sort(key=lambda c: position[c.skip])
    concat_order = [position[c.concat] for c in found]
    if concat_order != sorted(concat_order, reverse=True):
        raise UnsupportedGraphError("the skip concats are not nested (last skip in, first out): not a U-Net shape")
    return found


def deep_region(graph: fx.Graph, chosen: SkipConcat) -> list[fx.Node]:
    """Nodes behind ``chosen``: depend on its skip, feed its feature; plus nodes only those use."""
    behind = ancestors(chosen.feature) | {chosen.feature}
    region = {n for n in descendants([chosen.skip]) if n in behind and n is not chosen.skip and is_compute(n)}
    for node in reversed(graph.nodes):  # users first: pulls in what only the region reads, chains included
        if node not in region and is_compute(node) and node.users and all(u in region for u in node.users):
            region.add(node)
    for node in graph.nodes:  # checks on region values (export's _assert_tensor_metadata) go with them
        if not node.users and is_compute(node) and node.all_input_nodes and set(node.all_input_nodes) <= region:
            region.add(node)
    return [n for n in graph.nodes if n in region]


def analyze_unet(gm: fx.GraphModule, user_inputs: list[str], skip: int) -> BlockStack:
    concats = skip_concats(gm.graph)
    if not concats:
        raise NoStackError(
            "no skip connections found: DeepCache needs a U-Net whose up path concatenates features computed "
            "from the down path's outputs (torch.cat along channels)"
        )
    if not 0 <= skip < len(concats):
        raise UnsupportedGraphError(f"skip={skip} is out of range: this U-Net has {len(concats)} skip connections "
                                    f"(0..{len(concats) - 1}, 0 = outermost)")
    chosen = concats[skip]
    region = deep_region(gm.graph, chosen)
    for node in region:  # contiguous, right before the concat: every input is defined earlier already
        chosen.concat.prepend(node)
    region_inputs, region_outputs = boundary(region)
    if region_outputs != [chosen.feature]:
        names = [n.name for n in region_outputs]
        raise UnsupportedGraphError(f"the deep part behind skip {skip} is read outside it through {names}; "
                                    f"expected only '{chosen.feature.name}'")
    nodes = list(gm.graph.nodes)
    start, end = nodes.index(region[0]), nodes.index(region[-1])
    return BlockStack(
        stacks=[], region=region, region_inputs=region_inputs, region_outputs=region_outputs, stream_inputs=[],
        prologue=[n for n in nodes[:start] if is_compute(n)], epilogue=[n for n in nodes[end + 1 :] if is_compute(n)],
        timestep=find_timestep(gm, user_inputs), modulation=[],
    )


@dataclasses.dataclass(frozen=True)
class FindUNetSkip(Pass):
    """Record the deep part behind skip connection ``skip`` (0 = outermost) as the cached region."""

    skip: int = 1
    name = "find_unet_skip"
    requires = ("user_inputs",)
    provides = ("block_stack",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        found = analysis(gm)
        found.block_stack = analyze_unet(gm, found.user_inputs or [], self.skip)
        gm.graph.lint()
        return PassResult(gm, modified=True)
