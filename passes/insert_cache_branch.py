"""Transform pass: replace the block region by ``torch.cond(pred, compute, cached, operands)``.

Preconditions: ``block_stack``, ``cache_plan``, ``state``, ``decision``.
Postconditions: the region's nodes are gone; one ``higher_order.cond`` node reads the region inputs and
the cache state; its outputs replace the region outputs for the epilogue; every state buffer is written
with ``aten.copy_`` *after* the cond (never inside a branch: branches stay functional, as torch.export and
``run_decompositions`` require); both branch graphs are submodules ``_gc_compute`` / ``_gc_cached``.

- compute branch: the original region nodes, unchanged (so compute steps are bit-exact), plus the new
  predictor state from each unit's fresh value (``out - in`` for stack residuals).
- cached branch: the region with each cached unit replaced by the predictor's value, then dead code
  elimination: what does not feed an output (the blocks' attention and MLP) disappears, what does (gates
  recomputed from the current timestep, glue the epilogue needs) stays.
Branch outputs are dense new tensors (cond rejects outputs aliasing operands or with view strides).
A plan with phases (Delta-DiT, PAB) gets a cached branch that is itself a chain of conds on the step
index, each phase replacing only its own units.
"""

from __future__ import annotations

import dataclasses
import operator

import torch
import torch.fx as fx

from graphcache.analyses import CachePlan, CacheUnit, Decision, Phase, StateSpec
from graphcache.blockstack import BlockStack
from graphcache.errors import UnsupportedGraphError
from graphcache.predictors import Clock, Predictor, Reuse, clone

from .base import Pass, PassResult, analysis, mark
from .dead_code import eliminate_dead_code, storage_key
from .graph_utils import batched_val, per_sample_where, refuse_unbranchable, tensor_val


def _dense(g: fx.Graph, node: fx.Node, placeholders: set[fx.Node], taken: set[int]) -> fx.Node:
    """``node`` itself when it is a dense tensor computed in this branch that shares no storage with an
    operand or an earlier output (``taken``: those storages), else a contiguous clone of it. No-op ops
    (``.contiguous()``, ``.to()`` of the same dtype) return their input itself: only storage tells."""
    if node.target is torch.ops.aten.clone.default:
        return node
    val = tensor_val(node)
    key = storage_key(node)
    if (node in placeholders or val is None or key is None or key in taken or val._is_view()
            or val.storage_offset() != 0 or not _canonical(val)):
        return clone(g, node)
    taken.add(key)
    return node


def _dense_outputs(g: fx.Graph, results: list[fx.Node], placeholders: set[fx.Node],
                   outputs: list[fx.Node]) -> list[fx.Node]:
    """Branch outputs as the cond needs them; the region outputs (the first ``len(outputs)``) keep the layout
    the captured graph gave them, so the epilogue reads the same strides as in the model (a reduction over
    another layout sums in another order: not bit-exact)."""
    taken = {k for k in (storage_key(p) for p in placeholders) if k is not None}
    dense = []
    for k, r in enumerate(results):
        order = _stride_order(tensor_val(outputs[k])) if k < len(outputs) else None
        dense.append(_dense(g, r, placeholders, taken) if order is None else _laid_out(g, r, order))
    return dense


def _stride_order(val: torch.Tensor | None) -> list[int] | None:
    """Dimensions from outermost to innermost of a dense layout that is not row-major (None otherwise)."""
    from torch._prims_common import is_non_overlapping_and_dense_or_false as is_non_overlapping_and_dense

    if val is None or val.dim() < 2 or _canonical(val) or not is_non_overlapping_and_dense(val):
        return None
    return sorted(range(val.dim()), key=lambda d: (-val.stride()[d], d))


def _laid_out(g: fx.Graph, node: fx.Node, order: list[int]) -> fx.Node:
    """``node`` as a new dense tensor with the strides of dimension ``order``: permute, contiguous copy,
    permute back (the result views a tensor made here, aliasing no operand). Always copied, in both branches:
    a layout that follows the operands' (an elementwise add) may change when a lowering re-lays them out."""
    inverse = sorted(range(len(order)), key=lambda d: order[d])
    permuted = g.call_function(torch.ops.aten.permute.default, (node, order))
    copied = g.call_function(torch.ops.aten.clone.default, (permuted,), {"memory_format": torch.contiguous_format})
    return g.call_function(torch.ops.aten.permute.default, (copied, inverse))


def _canonical(val: torch.Tensor) -> bool:
    """Row-major strides exactly, size-1 dimensions included: ``is_contiguous()`` ignores their strides, but
    torch.cond compares them between its branches (batch 1 through ``nn.MultiheadAttention`` differs)."""
    from torch._prims_common import make_contiguous_strides_for

    return tuple(val.stride()) == tuple(make_contiguous_strides_for(val.shape)) if val.dim() else True


def _new_branch(operands: list[fx.Node]) -> tuple[fx.Graph, dict[fx.Node, fx.Node], set[fx.Node], Clock]:
    """A branch graph: one placeholder per operand, then the three clock placeholders."""
    g = fx.Graph()
    env = {op: g.placeholder(op.name) for op in operands}
    for op, ph in env.items():  # the branch's inputs carry the outer values' meta (shapes for the cost model)
        if "val" in op.meta:
            ph.meta["val"] = op.meta["val"]
    ticks = Clock(g.placeholder("clock_step"), g.placeholder("clock_history"), g.placeholder("clock_n_computed"))
    return g, env, {*env.values(), ticks.step, ticks.history, ticks.n_computed}, ticks


def _unit_clock(g: fx.Graph, ticks: Clock, unit: CacheUnit, per_sample: bool) -> Clock:
    """The clock as a unit's predictor sees it: per-sample clocks broadcast over the unit's sample dim."""
    if not per_sample or tensor_val(unit.node) is None:
        return ticks
    val = batched_val(unit.node, f"per-sample caching of unit '{unit.name}'")
    return ticks.shaped(g, val.dim(), val.dtype)


def _finish(root: fx.GraphModule, g: fx.Graph, outputs: list[fx.Node]) -> fx.GraphModule:
    seen: set[fx.Node] = set()
    for k, node in enumerate(outputs):  # one tensor returned twice would alias two cond outputs
        if node in seen:
            outputs[k] = clone(g, node)
        seen.add(node)
    g.output(tuple(outputs))
    eliminate_dead_code(g)
    g.lint()
    return fx.GraphModule(root, g)


def build_compute_branch(
    root: fx.GraphModule, region: list[fx.Node], outputs: list[fx.Node], operands: list[fx.Node],
    plan: CachePlan, state: StateSpec, predictor: Predictor, sample_mask: fx.Node | None = None,
) -> fx.GraphModule:
    """The real blocks. With a per-sample mask, samples that did not ask for the step get the cached
    branch's values and keep their state: each sample sees what it would see alone."""
    g, env, phs, ticks = _new_branch(operands)
    for node in region:
        env[node] = g.node_copy(node, lambda a: env[a])
    results = [env[o] for o in outputs]
    for unit in plan.units:
        clock = _unit_clock(g, ticks, unit, sample_mask is not None)
        states = [env[s] for s in state.caches[unit.name]]
        results.extend(predictor.on_compute(g, _fresh_value(g, env, unit), states, clock))
    if sample_mask is not None:
        cached = _cached_values(g, dict(env), region, outputs, plan, state, predictor, ticks, per_sample=True)
        mask = env[sample_mask]
        results = [per_sample_where(g, mask, fresh, old, ref) for fresh, old, ref in zip(
            results, cached, [*outputs, *state.cache_nodes()], strict=True)]
    return _finish(root, g, _dense_outputs(g, results, phs, outputs))


def _fresh_value(g: fx.Graph, env: dict[fx.Node, fx.Node], unit: CacheUnit) -> fx.Node:
    """A unit's value as the cache holds it: the region value, minus its base for residual units."""
    value = env[unit.node]
    return value if unit.base is None else g.call_function(torch.ops.aten.sub.Tensor, (value, env[unit.base]))


def _cached_values(
    g: fx.Graph, env: dict[fx.Node, fx.Node], region: list[fx.Node], outputs: list[fx.Node], plan: CachePlan,
    state: StateSpec, predictor: Predictor, ticks: Clock, per_sample: bool, cached_units: frozenset[str] | None = None,
) -> list[fx.Node]:
    """Region outputs and new predictor state of a cached step, emitted into ``g`` (operands in ``env``).
    Units outside ``cached_units`` (when given) are not replaced: their blocks run, and their state is kept
    (or refreshed from the fresh value when the plan says ``refresh_running``: PAB)."""
    replaced: dict[fx.Node, tuple[fx.Node, fx.Node | None]] = {}
    new_states: dict[str, list[fx.Node]] = {}
    for unit in plan.units:
        if cached_units is not None and unit.name not in cached_units:
            continue
        clock = _unit_clock(g, ticks, unit, per_sample)
        value, new_states[unit.name] = predictor.on_cached(g, [env[s] for s in state.caches[unit.name]], clock)
        replaced[unit.node] = (value, unit.base)
    for node in region:  # a unit's base may be a region value itself (Delta-DiT's rear delta)
        if node in replaced:
            value, base = replaced[node]
            env[node] = value if base is None else g.call_function(torch.ops.aten.add.Tensor, (env[base], value))
        else:
            env[node] = g.node_copy(node, lambda a: env[a])
    for unit in plan.units:
        if unit.name not in new_states:
            states = [env[s] for s in state.caches[unit.name]]
            new_states[unit.name] = (predictor.on_compute(g, _fresh_value(g, env, unit), states, ticks)
                                     if plan.refresh_running else [clone(g, s) for s in states])
    return [env[o] for o in outputs] + [s for unit in plan.units for s in new_states[unit.name]]


def build_cached_branch(
    root: fx.GraphModule, region: list[fx.Node], outputs: list[fx.Node], operands: list[fx.Node],
    plan: CachePlan, state: StateSpec, predictor: Predictor, per_sample: bool = False,
    cached_units: frozenset[str] | None = None,
) -> fx.GraphModule:
    g, env, phs, ticks = _new_branch(operands)
    results = _cached_values(g, env, region, outputs, plan, state, predictor, ticks, per_sample, cached_units)
    return _finish(root, g, _dense_outputs(g, results, phs, outputs))


def build_phased_branch(
    root: fx.GraphModule, region: list[fx.Node], outputs: list[fx.Node], operands: list[fx.Node],
    plan: CachePlan, state: StateSpec, predictor: Predictor, phases: tuple[Phase, ...],
) -> fx.GraphModule:
    """The cached branch of a plan with phases: ``cond(first.when(step), first, <the other phases>)``, each
    phase a cached branch that replaces only its units (Delta-DiT: rear deltas early, front deltas late;
    PAB: the attention kinds that skip this step)."""
    first, rest = phases[0], phases[1:]
    here = build_cached_branch(root, region, outputs, operands, plan, state, predictor, False, first.units)
    if not rest:
        return here
    other = build_phased_branch(root, region, outputs, operands, plan, state, predictor, rest)
    assert first.when is not None, "only the last phase of a plan may have no step test"
    g, env, _, ticks = _new_branch(operands)
    args = (*[env[op] for op in operands], ticks.step, ticks.history, ticks.n_computed)
    cond = g.call_function(torch.ops.higher_order.cond, (first.when.emit(g, ticks.step), g.get_attr("here"),
                                                         g.get_attr("other"), args))
    count = len(outputs) + len(state.cache_nodes())
    g.output(tuple(g.call_function(operator.getitem, (cond, k)) for k in range(count)))
    return fx.GraphModule({"here": here, "other": other}, g)


def _distinct_storages(graph: fx.Graph, operands: list[fx.Node]) -> list[fx.Node]:
    """The cond's operands, each on a storage of its own: torch.cond refuses operands that alias each other
    (CogVideoX hands its blocks two slices of one concatenated tensor), so a later operand that shares an
    earlier one's storage is passed as a clone (one copy per step, of that operand only)."""
    seen: set[int] = set()
    distinct = []
    for op in operands:
        key = storage_key(op)
        if key is not None and key in seen:
            op = graph.call_function(torch.ops.aten.clone.default, (op,),
                                     {"memory_format": torch.contiguous_format})
        elif key is not None:
            seen.add(key)
        distinct.append(op)
    return distinct


@dataclasses.dataclass(frozen=True)
class InsertCacheBranch(Pass):
    predictor: Predictor = dataclasses.field(default_factory=Reuse)
    name = "insert_cache_branch"
    requires = ("block_stack", "cache_plan", "state", "decision")
    provides = ("cache_branch",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        found = analysis(gm)
        stack, plan = found.require(BlockStack), found.require(CachePlan)
        state: StateSpec = found.require(StateSpec)
        decision: Decision = found.require(Decision)
        region, outputs = stack.region, stack.region_outputs
        region_set = set(region)
        refuse_unbranchable(n for n in gm.graph.nodes if n in region_set)
        operands = list(stack.region_inputs) + state.cache_nodes()
        if decision.sample_mask is not None:
            operands.append(decision.sample_mask)
        compute = build_compute_branch(gm, region, outputs, operands, plan, state, self.predictor,
                                       decision.sample_mask)
        if decision.sample_mask is not None and found.sample_buckets is not None:
            from .bucket_branch import bucketed_compute

            compute = bucketed_compute(gm, region, list(stack.region_inputs), outputs, operands, plan, state,
                                       self.predictor, decision.sample_mask, found.sample_buckets, compute)
        if plan.phases is None:
            cached = build_cached_branch(gm, region, outputs, operands, plan, state, self.predictor,
                                         decision.sample_mask is not None)
        elif decision.sample_mask is None:
            cached = build_phased_branch(gm, region, outputs, operands, plan, state, self.predictor, plan.phases)
        else:
            raise UnsupportedGraphError("cache plans with phases (Delta-DiT, PAB) take batch decisions, not per sample")
        gm.add_submodule("_gc_compute", compute)
        gm.add_submodule("_gc_cached", cached)
        graph = gm.graph
        with graph.inserting_before(region[0]):
            distinct = _distinct_storages(graph, operands)
            true_fn, false_fn = graph.get_attr("_gc_compute"), graph.get_attr("_gc_cached")
            cond = graph.call_function(
                torch.ops.higher_order.cond, (decision.pred, true_fn, false_fn, (*distinct, *decision.clock))
            )
            results = [graph.call_function(operator.getitem, (cond, k)) for k in range(len(outputs) + len(
                state.cache_nodes()))]
            new_outputs, new_caches = results[: len(outputs)], results[len(outputs) :]
            writes = list(decision.updates) + list(zip(state.cache_nodes(), new_caches, strict=True))
            copies = [graph.call_function(torch.ops.aten.copy_.default, (buf, new)) for buf, new in writes]
        for node in (true_fn, false_fn, cond, *results, *copies, *(d for d in distinct if d not in operands)):
            mark(node, self.name, "cache_branch")
        for old, new in zip(outputs, new_outputs, strict=True):
            old.replace_all_uses_with(new, delete_user_cb=lambda user: user not in region_set)
        for node in reversed(region):
            graph.erase_node(node)
        found.cache_branch = {"compute": "_gc_compute", "cached": "_gc_cached",
                                 "num_operands": len(distinct) + len(decision.clock)}
        return PassResult(gm, modified=True)
