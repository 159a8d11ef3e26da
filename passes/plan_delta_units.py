"""Analysis pass: Delta-DiT's cached units, the deltas of the blocks before and after a split block.

Precondition: ``block_stack``. Postcondition: ``cache_plan`` with two kinds of units and their phases:
``front*`` = (stream entering block ``split``) - (stream entering the region), ``rear*`` = (region output)
- (stream entering block ``split``), per hidden stream (matched by shape; a stream without a match is
cached as is). Cached steps before step ``boundary`` run the front blocks and add the rear delta; from
``boundary`` on they add the front delta and run the rear blocks (``boundary=None``: no phases, cached steps
replace both). Graph unchanged.
"""

from __future__ import annotations

import dataclasses

import torch.fx as fx

from graphcache.analyses import CachePlan, CacheUnit, Phase, StepBelow
from graphcache.blockstack import BlockStack
from graphcache.errors import PolicyConfigError

from .base import Pass, PassResult, analysis
from .graph_utils import descendants, same_tensor_type


def _match(values: list[fx.Node], bases: list[fx.Node]) -> list[tuple[fx.Node, fx.Node | None]]:
    used: set[fx.Node] = set()
    pairs = []
    for value in values:
        base = next((b for b in bases if b not in used and same_tensor_type(b, value)), None)
        if base is not None:
            used.add(base)
        pairs.append((value, base))
    return pairs


def plan_delta_units(stack: BlockStack, split: int | None) -> list[CacheUnit]:
    """Front and rear units around block ``split`` (None: half of the blocks; negative: from the end)."""
    blocks = [(st, block) for st in stack.stacks for block in st.blocks]
    split = len(blocks) // 2 if split is None else split + len(blocks) if split < 0 else split
    if not 1 <= split < len(blocks):
        raise PolicyConfigError(f"option deltadit.split={split} is invalid: this model has {len(blocks)} blocks; "
                                f"split must be in 1..{len(blocks) - 1}")
    st, block = blocks[split]
    mid = [block.inputs[k] for k in st.stream_slots]
    region = set(stack.region)
    # the rear values: region outputs computed from the split streams, not those streams themselves (a stream
    # that also leaves the region, HunyuanDiT's, is the front blocks' value: its front unit covers it)
    outputs = [o for o in stack.region_outputs if o in descendants(mid, within=region) and o not in mid]
    front = [CacheUnit(f"front{k}", v, b) for k, (v, b) in enumerate(_match(mid, stack.stream_inputs))]
    rear = [CacheUnit(f"rear{k}", v, b) for k, (v, b) in enumerate(_match(outputs, mid))]
    return front + rear


@dataclasses.dataclass(frozen=True)
class PlanDeltaUnits(Pass):
    """Record Delta-DiT's :class:`CachePlan`: front and rear block-range deltas with a stage boundary."""

    split: int | None = None  # first rear block; None: half of the blocks; negative: counted from the end
    boundary: int | None = 0  # None: no phases, a cached step replaces both (SpeCa's split before the last block)
    name = "plan_delta_units"
    requires = ("block_stack",)
    provides = ("cache_plan",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        units = plan_delta_units(analysis(gm).require(BlockStack), self.split)
        early = frozenset(u.name for u in units if u.name.startswith("rear"))
        late = frozenset(u.name for u in units if u.name.startswith("front"))
        phases = None if self.boundary is None else (Phase(early, StepBelow(self.boundary)), Phase(late))
        analysis(gm).cache_plan = CachePlan("delta", units, phases)
        return PassResult(gm, modified=False)
