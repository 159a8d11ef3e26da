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
import functools

import torch
import torch.fx as fx

from graphcache.blockstack import Block, BlockStack
from graphcache.errors import UnsupportedGraphError

from .base import Pass, PassResult, analysis
from .graph_utils import STRUCTURAL_OPS, descendants, op_name, same_tensor_type

ADD_OPS = frozenset({"add", "add_", "iadd"})
MUL_OPS = frozenset({"mul", "mul_", "imul"})


@dataclasses.dataclass
class CacheUnit:
    """One cached tensor: ``node`` is its value in the region; ``base`` the stream input it is a residual on."""

    name: str
    node: fx.Node
    base: fx.Node | None = None


@dataclasses.dataclass(frozen=True)
class StepBelow:
    """Step test ``step < boundary`` (Delta-DiT's stage boundary)."""

    boundary: int

    def emit(self, g: fx.Graph, step: fx.Node) -> fx.Node:
        return g.call_function(torch.ops.aten.lt.Scalar, (step, self.boundary))


@dataclasses.dataclass(frozen=True)
class StepResidue:
    """Step test ``step % modulus in residues`` (PAB's per-kind recompute ranges)."""

    modulus: int
    residues: tuple[int, ...]

    def emit(self, g: fx.Graph, step: fx.Node) -> fx.Node:
        phase = g.call_function(torch.ops.aten.remainder.Scalar, (step, self.modulus))
        hits = [g.call_function(torch.ops.aten.eq.Scalar, (phase, r)) for r in self.residues]
        return functools.reduce(lambda a, b: g.call_function(torch.ops.aten.logical_or.default, (a, b)), hits)


StepTest = StepBelow | StepResidue


@dataclasses.dataclass(frozen=True)
class Phase:
    """The units a cached step replaces while ``when`` holds (the other units' blocks run); the last phase
    of a plan has ``when=None`` and takes the remaining cached steps."""

    units: frozenset[str]
    when: StepTest | None = None


@dataclasses.dataclass
class CachePlan:
    granularity: str
    units: list[CacheUnit]
    phases: tuple[Phase, ...] | None = None  # None: a cached step uses every unit
    refresh_running: bool = False  # a cached step's running units refresh their state (else it is kept)


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


def residual_branches(block: Block, streams: list[fx.Node]) -> list[fx.Node]:
    """The ungated branch outputs F(x) of the residual adds ``x + gate * F(x)`` inside one block."""
    return residual_structure(block, streams)[0]


def residual_structure(block: Block, streams: list[fx.Node]) -> tuple[list[fx.Node], set[fx.Node]]:
    """``(branches, carried)``: the ungated branch outputs and the residual stream's own values (the streams,
    their moves and the residual sums) inside one block."""
    members = set(block.nodes)
    dependent = descendants(streams, within=members)
    carried = set(streams)
    branches = []
    for node in block.nodes:
        inputs = [a for a in node.all_input_nodes if a in dependent]
        name = op_name(node)
        if name in STRUCTURAL_OPS and inputs and all(a in carried for a in inputs):
            carried.add(node)
        elif name in ADD_OPS and len(node.args) >= 2 and all(isinstance(a, fx.Node) for a in node.args[:2]):
            a, b = node.args[0], node.args[1]
            assert isinstance(a, fx.Node) and isinstance(b, fx.Node)
            if a in carried and b in dependent and b not in carried:
                branches.append(_ungate(b, dependent))
                carried.add(node)
            elif b in carried and a in dependent and a not in carried:
                branches.append(_ungate(a, dependent))
                carried.add(node)
    return branches, carried


def _ungate(contribution: fx.Node, dependent: set[fx.Node]) -> fx.Node:
    if op_name(contribution) in MUL_OPS and len(contribution.args) >= 2:
        x, y = contribution.args[0], contribution.args[1]
        if isinstance(x, fx.Node) and isinstance(y, fx.Node):
            if x not in dependent:
                return y
            if y not in dependent:
                return x
    return contribution


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


@dataclasses.dataclass(frozen=True)
class PlanCacheUnits(Pass):
    """Record the :class:`CachePlan` (which tensors the cache holds) for the chosen granularity."""

    granularity: str = "stack"
    name = "plan_cache_units"
    requires = ("block_stack",)
    provides = ("cache_plan",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        stack: BlockStack = analysis(gm)["block_stack"]
        if self.granularity == "block":
            units = plan_block_units(stack)
        elif self.granularity == "outputs":
            units = [CacheUnit(f"out{k}", node) for k, node in enumerate(stack.region_outputs)]
        else:
            units = plan_stack_units(stack)
        analysis(gm)["cache_plan"] = CachePlan(self.granularity, units)
        return PassResult(gm, modified=False)
