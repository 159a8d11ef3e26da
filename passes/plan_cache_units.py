"""Analysis pass: choose the cached units inside the block region.

Precondition: ``block_stack`` recorded. Postcondition: ``cache_plan`` recorded; graph unchanged.

Granularities:
- ``stack`` (default): for each region output that depends on the hidden streams, the residual
  ``out - in`` against the stream input of the same shape (or the output itself when no input matches).
  Cached step: ``out = in + residual``; the blocks do not run.
- ``outputs``: each region output as it is (DeepCache's feature entering the up path's concat).
- ``block`` (FORA as published): in every block, the branch outputs added to the residual stream
  (``x = x + gate * F(x)``), cached before the gate. Cached step: gates, norms' modulation and the adds run
  from the current timestep; attention and MLP do not.
"""

from __future__ import annotations

import dataclasses

import torch.fx as fx

from graphcache.analyses import CachePlan, CacheUnit
from graphcache.blockstack import BlockStack
from graphcache.errors import PolicyConfigError, UnsupportedGraphError

from .base import Pass, PassResult, analysis
from .graph_utils import descendants, residual_branches, same_tensor_type


def plan_stack_units(stack: BlockStack) -> list[CacheUnit]:
    region = set(stack.region)
    dependent = descendants(stack.stream_inputs, within=region)
    units, used = [], set()
    for k, out in enumerate(o for o in stack.region_outputs if o in dependent):
        base = next((s for s in stack.stream_inputs if s not in used and same_tensor_type(s, out)), None)
        if base is not None:
            used.add(base)
        units.append(CacheUnit(f"stack_out{k}", out, base))
    return units


def plan_block_units(stack: BlockStack) -> list[CacheUnit]:
    units: list[CacheUnit] = []
    for s, st in enumerate(stack.stacks):
        for b, block in enumerate(st.blocks):
            streams = [block.inputs[k] for k in st.stream_slots]
            branches = residual_branches(block, streams)
            if not branches:
                raise UnsupportedGraphError(
                    f"granularity='block' needs residual adds x + gate * F(x) in every block; found none in "
                    f"block {b} of stack {s} ({block.path}); use granularity='stack'"
                )
            units.extend(CacheUnit(f"s{s}b{b}_branch{j}", node) for j, node in enumerate(branches))
    return units


GRANULARITIES = ("stack", "block", "outputs")


@dataclasses.dataclass(frozen=True)
class PlanCacheUnits(Pass):
    """Record the :class:`CachePlan` (which tensors the cache holds) for the chosen granularity."""

    granularity: str = "stack"
    name = "plan_cache_units"
    requires = ("block_stack",)
    provides = ("cache_plan",)

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise PolicyConfigError(f"granularity={self.granularity!r} is not one of {', '.join(GRANULARITIES)}")

    def call(self, gm: fx.GraphModule) -> PassResult:
        stack = analysis(gm).require(BlockStack)
        if self.granularity == "block":
            units = plan_block_units(stack)
        elif self.granularity == "outputs":
            units = [CacheUnit(f"out{k}", node) for k, node in enumerate(stack.region_outputs)]
        else:
            units = plan_stack_units(stack)
        analysis(gm).cache_plan = CachePlan(self.granularity, units)
        return PassResult(gm, modified=False)
