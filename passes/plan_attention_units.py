"""Analysis pass: PAB's cached units, the attention outputs of every block, by kind, with per-kind phases.

Precondition: ``block_stack``. Postcondition: ``cache_plan`` (granularity ``attention``) and
``attention_kinds`` (the kinds found, each with its recompute range) recorded; graph unchanged.

Found by structure, not names: in each block the residual branches ``x + gate * F(x)`` (as FORA's
``block`` granularity); a branch is an attention output when ``F`` itself (walking up from the branch
without entering the residual stream) holds an attention op (fused ``scaled_dot_product_attention`` or a
softmax over ``q @ k^T``). Its kind:
- ``cross``: the keys do not depend on the block's hidden streams (text / condition tokens);
- ``spatial``: self-attention over the longest key sequence of the stack's self-attentions;
- ``temporal``: self-attention over a shorter sequence (a video model's frame axis: this assumes more
  tokens per frame than frames).
MLP branches are not cached. A kind is recomputed at steps ``i % range == 0``; a cached step replaces the
kinds whose range does not divide ``i`` and runs (and refreshes) the others, one phase per distinct set.
"""

from __future__ import annotations

import dataclasses
import math

import torch.fx as fx

from graphcache.analyses import CachePlan, CacheUnit, Phase, StepResidue
from graphcache.blockstack import BlockStack
from graphcache.errors import UnsupportedGraphError

from .base import Pass, PassResult, analysis
from .graph_utils import descendants, op_name, residual_structure, tensor_val

KINDS = ("spatial", "temporal", "cross")
FUSED_ATTENTION = frozenset({
    "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
})
SOFTMAX = frozenset({"softmax", "_softmax", "_safe_softmax"})
MATMUL = frozenset({"bmm", "matmul", "baddbmm"})


def _own_nodes(branch: fx.Node, carried: set[fx.Node], block: list[fx.Node]) -> list[fx.Node]:
    """``F``'s nodes in graph order: ancestors of the branch inside the block, not entering the stream."""
    members = set(block)
    seen, todo = {branch}, [branch]
    while todo:
        for inp in todo.pop().all_input_nodes:
            if inp in members and inp not in carried and inp not in seen:
                seen.add(inp)
                todo.append(inp)
    return [n for n in block if n in seen]


def _keys(attention: fx.Node) -> tuple[fx.Node, int] | None:
    """The key tensor of an attention op and the key sequence length."""
    if op_name(attention) in FUSED_ATTENTION:
        key = attention.args[1] if len(attention.args) > 1 else attention.kwargs.get("key")  # Flux: by keyword
        val = tensor_val(key) if isinstance(key, fx.Node) else None
        return (key, int(val.shape[-2])) if isinstance(key, fx.Node) and val is not None else None
    node = attention.args[0]  # softmax(scale * q @ k^T + mask): walk up to the matmul
    while isinstance(node, fx.Node) and op_name(node) not in MATMUL:
        node = next(iter(node.all_input_nodes), None)  # type: ignore[assignment]
    val = tensor_val(attention)
    if not isinstance(node, fx.Node) or val is None:
        return None
    key = node.args[2 if op_name(node) == "baddbmm" else 1]
    return (key, int(val.shape[-1])) if isinstance(key, fx.Node) else None


@dataclasses.dataclass
class AttentionBranch:
    where: str  # s{stack}b{block}, then the branch index after the kind in the unit name
    index: int
    node: fx.Node
    self_attention: bool
    length: int


def attention_branches(stack: BlockStack) -> list[AttentionBranch]:
    found = []
    for s, st in enumerate(stack.stacks):
        for b, block in enumerate(st.blocks):
            streams = [block.inputs[k] for k in st.stream_slots]
            branches, carried = residual_structure(block, streams)
            members = set(block.nodes)
            from_streams = descendants(streams, within=members)
            for j, branch in enumerate(branches):
                ops = [n for n in _own_nodes(branch, carried, block.nodes) if op_name(n) in FUSED_ATTENTION | SOFTMAX]
                keys = [k for k in map(_keys, ops) if k is not None]
                if keys:
                    key, length = keys[0]
                    found.append(AttentionBranch(f"s{s}b{b}", j, branch, key in from_streams, length))
    return found


def step_phases(units: dict[str, list[str]], ranges: dict[str, int]) -> tuple[Phase, ...] | None:
    """One phase per distinct set of kinds a step skips (over one period of the ranges); None when every
    cached step skips every kind."""
    period = math.lcm(*(ranges[k] for k in units))
    patterns: dict[frozenset[str], list[int]] = {}
    for i in range(1, period):
        skipped = frozenset(k for k in units if i % ranges[k] != 0)
        patterns.setdefault(skipped, []).append(i)
    if len(patterns) <= 1:
        return None
    phases = [Phase(frozenset(u for k in kinds for u in units[k]), StepResidue(period, tuple(residues)))
              for kinds, residues in patterns.items()]
    return (*phases[:-1], Phase(phases[-1].units))


@dataclasses.dataclass(frozen=True)
class PlanAttentionUnits(Pass):
    """Record PAB's plan: attention outputs of the kinds with a range (``None``: that kind always runs)."""

    spatial: int | None = 2
    temporal: int | None = 4
    cross: int | None = 6
    name = "plan_attention_units"
    requires = ("block_stack",)
    provides = ("cache_plan", "attention_kinds")

    def call(self, gm: fx.GraphModule) -> PassResult:
        branches = attention_branches(analysis(gm).require(BlockStack))
        if not branches:
            raise UnsupportedGraphError("PAB found no attention in the repeated blocks' residual branches (no "
                                        "scaled_dot_product_attention or softmax(q @ k^T) feeding x + gate * F(x))")
        longest = max((a.length for a in branches if a.self_attention), default=0)
        ranges = {"spatial": self.spatial, "temporal": self.temporal, "cross": self.cross}
        units: dict[str, list[str]] = {}
        plan_units = []
        for a in branches:
            kind = "cross" if not a.self_attention else "spatial" if a.length == longest else "temporal"
            if ranges[kind] is not None:
                unit = CacheUnit(f"{a.where}_{kind}{a.index}", a.node)
                units.setdefault(kind, []).append(unit.name)
                plan_units.append(unit)
        if not plan_units:
            found = sorted({"cross" if not a.self_attention else "self" for a in branches})
            raise UnsupportedGraphError(f"PAB: every attention kind found ({', '.join(found)}) has range None")
        kinds = {k: int(ranges[k]) for k in KINDS if k in units}  # type: ignore[arg-type]
        analysis(gm).attention_kinds = kinds
        analysis(gm).cache_plan = CachePlan("attention", plan_units, step_phases(units, kinds),
                                               refresh_running=True)
        return PassResult(gm, modified=False)
