"""The compute branch of a per-sample decision with bucket batch sizes (see :mod:`graphcache.buckets`).

``insert_cache_branch`` builds it when the decision is per sample and ``sample_buckets`` holds captures of
the model at smaller batch sizes: the branch of the smallest size ``b >= count`` runs, ``count`` the samples
that need the step (chosen by a balanced tree of ``cond(count <= b, ...)``, see :func:`_tree`), the whole
batch above every bucket. A bucket branch of size ``b``:
- sorts the samples, needing ones first (stable), and takes the first ``b`` indices;
- gathers the region inputs laid out by sample (first dimension the batch in this graph and ``b`` in the
  capture at ``b``, the rest equal), passes the others (weights, shared tables) as they are;
- runs the blocks as the capture at ``b`` has them (its nodes, matched to this graph's region by name and
  target: the captures differ only in literal sizes), with the gathered samples' predictor state and clocks;
- computes the cached step's values for the whole batch and writes the gathered samples that need the step
  into them (``index_copy``): every other sample keeps what a cached step gives it.
Anything that does not match (a node missing or different in the capture, a region input or output or a
cache state not laid out by sample) is not bucketed: :class:`NoBuckets` says why and the whole batch runs.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from graphcache.analyses import CachePlan, SampleBuckets, StateSpec
from graphcache.predictors import Clock, Predictor, call

from .graph_utils import tensor_val
from .insert_cache_branch import _cached_values, _dense_outputs, _finish, _fresh_value, _new_branch, _unit_clock

_AT = torch.ops.aten


class NoBuckets(Exception):
    """Why the compute branch runs the whole batch instead of buckets."""


def _batched(node: fx.Node, batch: int) -> bool:
    val = tensor_val(node)
    return val is not None and val.dim() > 0 and val.shape[0] == batch


def _gathered_shape(full: fx.Node, small: fx.Node, batch: int, size: int) -> bool:
    """``small`` (in the capture at ``size``) is ``full`` (in this graph) with ``size`` samples instead of ``batch``."""
    a, b = tensor_val(full), tensor_val(small)
    return (a is not None and b is not None and a.dim() > 0 and a.shape[0] == batch and b.shape[0] == size
            and tuple(a.shape[1:]) == tuple(b.shape[1:]) and a.dtype == b.dtype)


def _same_value(full: fx.Node, small: fx.Node) -> bool:
    a, b = tensor_val(full), tensor_val(small)
    if a is None or b is None:
        return a is None and b is None and full.op == small.op
    return tuple(a.shape) == tuple(b.shape) and a.dtype == b.dtype


def bucket_branch(
    root: fx.GraphModule, region: list[fx.Node], region_inputs: list[fx.Node], outputs: list[fx.Node],
    operands: list[fx.Node], plan: CachePlan, state: StateSpec, predictor: Predictor, sample_mask: fx.Node,
    size: int, capture: fx.GraphModule,
) -> fx.GraphModule:
    """The compute branch that runs the blocks for ``size`` gathered samples (see the module docstring)."""
    batch = int(tensor_val(sample_mask).shape[0])  # type: ignore[union-attr]
    by_name = {n.name: n for n in capture.graph.nodes}
    g, env, phs, ticks = _new_branch(operands)
    cached = _cached_values(g, dict(env), region, outputs, plan, state, predictor, ticks, per_sample=True)
    mask = env[sample_mask]
    key = call(g, _AT._to_copy.default, mask, dtype=torch.int32)
    order = call(g, operator.getitem, call(g, _AT.sort.stable, key, stable=True, dim=0, descending=True), 1)
    index = call(g, _AT.slice.Tensor, order, 0, 0, size)

    def gather(node: fx.Node) -> fx.Node:
        return call(g, _AT.index_select.default, node, 0, index)

    small_env: dict[fx.Node, fx.Node] = {}  # capture node -> value in g
    fresh: dict[fx.Node, fx.Node] = {}  # this graph's region input or node -> its value at ``size``
    for x in region_inputs:
        small = by_name.get(x.name)
        if small is None:
            raise NoBuckets(f"region input '{x.name}' is not in the capture at batch {size}")
        if _gathered_shape(x, small, batch, size):
            small_env[small] = gather(env[x])
        elif _same_value(x, small):
            small_env[small] = env[x]
        else:
            raise NoBuckets(f"region input '{x.name}' is {tensor_val(x)} at batch {batch} and {tensor_val(small)} at "
                            f"batch {size}: not laid out by sample")
        fresh[x] = small_env[small]
    for node in region:
        small = by_name.get(node.name)
        if small is None or small.op != node.op or small.target != node.target:
            raise NoBuckets(f"the capture at batch {size} differs from this graph at '{node.name}'")
        if small.op == "get_attr":
            raise NoBuckets(f"the blocks read attribute '{small.target}' (a constant of the capture)")
        missing = [a.name for a in small.all_input_nodes if a not in small_env]
        if missing:
            raise NoBuckets(f"'{node.name}' at batch {size} reads {missing}, which the region does not give it")
        small_env[small] = g.node_copy(small, lambda a: small_env[a])
        fresh[node] = small_env[small]
    for out in outputs:
        if not _gathered_shape(out, by_name[out.name], batch, size):
            raise NoBuckets(f"region output '{out.name}' ({tensor_val(out)}) is not laid out by sample")
    clock = Clock(ticks.step, gather(ticks.history), gather(ticks.n_computed))
    results = [fresh[o] for o in outputs]
    for unit in plan.units:
        states = state.caches[unit.name]
        if not all(_batched(s, batch) for s in states):
            raise NoBuckets(f"the cache of unit '{unit.name}' is not laid out by sample")
        value = _fresh_value(g, fresh, unit)
        results.extend(predictor.on_compute(g, value, [gather(env[s]) for s in states],
                                            _unit_clock(g, clock, unit, True)))
    needs = gather(mask)
    written = []
    for value, old, like in zip(results, cached, [*outputs, *state.cache_nodes()], strict=True):
        rank = tensor_val(like).dim()  # type: ignore[union-attr]
        where = call(g, _AT.view.default, needs, [-1] + [1] * (rank - 1))
        kept = call(g, _AT.where.self, where, value, gather(old))
        written.append(call(g, _AT.index_copy.default, old, 0, index, kept))
    return _finish(root, g, _dense_outputs(g, written, phs, outputs))


def bucketed_compute(
    root: fx.GraphModule, region: list[fx.Node], region_inputs: list[fx.Node], outputs: list[fx.Node],
    operands: list[fx.Node], plan: CachePlan, state: StateSpec, predictor: Predictor, sample_mask: fx.Node,
    buckets: SampleBuckets, whole: fx.GraphModule,
) -> fx.GraphModule:
    """``whole`` (the compute branch over the whole batch) and one bucket branch per size in ``buckets`` below the
    batch, chosen by :func:`_tree`; ``whole`` itself with ``buckets.reason`` set when they cannot be built."""
    batch = int(tensor_val(sample_mask).shape[0])  # type: ignore[union-attr]
    sizes = sorted(s for s in buckets.graphs if s < batch)
    if not sizes:
        buckets.reason = buckets.reason or f"no bucket size below the batch of {batch}"
        return whole
    try:
        branches = [(s, bucket_branch(root, region, region_inputs, outputs, operands, plan, state, predictor,
                                      sample_mask, s, buckets.graphs[s])) for s in sizes]
    except NoBuckets as why:
        buckets.reason = str(why)
        return whole
    buckets.used = tuple(sizes)
    leaves = [*branches, (batch, whole)]
    return _tree(leaves, operands, sample_mask, len(outputs) + len(state.cache_nodes()))


def _tree(leaves: list[tuple[int, fx.GraphModule]], operands: list[fx.Node], sample_mask: fx.Node,
          count: int) -> fx.GraphModule:
    """A balanced tree of conds over ``leaves`` (bucket size, branch), sorted by size: each cond sends
    ``needing <= size`` to its left half. Balanced, not a chain: tracing a cond traces every cond nested in
    it again, so a chain of n buckets costs O(n^2) to compile and a tree O(n log n)."""
    if len(leaves) == 1:
        return leaves[0][1]
    half = len(leaves) // 2
    left, right = _tree(leaves[:half], operands, sample_mask, count), _tree(leaves[half:], operands, sample_mask,
                                                                            count)
    g, env, _, ticks = _new_branch(operands)
    needing = call(g, _AT.sum.default, call(g, _AT._to_copy.default, env[sample_mask], dtype=torch.int64))
    pred = call(g, _AT.le.Scalar, needing, leaves[half - 1][0])
    args = (*[env[op] for op in operands], ticks.step, ticks.history, ticks.n_computed)
    cond = call(g, torch.ops.higher_order.cond, pred, g.get_attr("left"), g.get_attr("right"), args)
    g.output(tuple(call(g, operator.getitem, cond, k) for k in range(count)))
    return fx.GraphModule({"left": left, "right": right}, g)
