"""Run a policy's passes over a captured graph, check a computed step against the model, then lower."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch.fx as fx

from graphcache.passes.base import Pass, PassManager, analysis
from graphcache.passes.dense_cond_operands import DenseCondOperands
from graphcache.passes.narrow_linear_outputs import NarrowLinearOutputs
from graphcache.passes.sink_state_writes import SinkStateWrites
from graphcache.policies import PolicyConfig
from graphcache.self_check import check_compute_step, snapshot
from graphcache.state import CacheState


def compile_lowering(backend: str) -> tuple[Pass, ...]:
    """The lowering passes for a rewritten graph that runs under ``backend`` (``"inductor"``, ``"aot_eager"``,
    ``"eager"``: torch.compile's or op by op), not exported: state written in place inside the branch that
    changes it, cached steps computing only the linear rows they read, and for Inductor dense cond operands."""
    dense: tuple[Pass, ...] = (DenseCondOperands(),) if backend == "inductor" else ()
    return (*dense, NarrowLinearOutputs(), SinkStateWrites())


def lowering_fields(gm: fx.GraphModule) -> dict[str, int]:
    """What the torch.compile lowering changed in a cached step of ``gm``, as report fields (empty when it was not
    lowered: an export route)."""
    found = analysis(gm)
    fields: dict[str, int] = {}
    if found.state_writes is not None:
        fields["cached_step_state_bytes"] = found.state_writes.cached_step_bytes_after
        fields["cached_step_state_bytes_functional"] = found.state_writes.cached_step_bytes_before
    if found.narrowed_linears is not None:
        fields["narrowed_linears"] = found.narrowed_linears.linears
        fields["weight_bytes_not_read"] = found.narrowed_linears.weight_bytes_saved
    return fields


def describe_lowering(fields: dict[str, int]) -> str | None:
    """:func:`lowering_fields` in words (None when there are none)."""
    if "cached_step_state_bytes" not in fields:
        return None
    text = (f"writes {fields['cached_step_state_bytes']:,} bytes of state (functional branches: "
            f"{fields['cached_step_state_bytes_functional']:,})")
    if fields.get("narrowed_linears"):
        text += (f"; {fields['narrowed_linears']} linears narrowed, {fields['weight_bytes_not_read']:,} weight "
                 "bytes not read")
    return text


def rewrite(
    gm: fx.GraphModule, example_inputs: Sequence[Any], policy: PolicyConfig, lowering: Sequence[Any] = (),
    self_check: bool = True,
) -> CacheState:
    """Apply ``policy``'s passes, then the ``lowering`` passes, to ``gm`` (captured with meta) in place.

    With ``self_check`` (the default) the rewritten graph's first, computed, step is run on
    ``example_inputs`` (when they are real tensors) and must equal the captured graph's outputs exactly:
    :class:`graphcache.self_check.SelfCheckError` otherwise, naming the first diverging node.
    """
    original = snapshot(gm) if self_check else None
    new = PassManager(list(policy.passes()), example_inputs)(gm)
    assert new is gm, "graphcache passes edit the GraphModule in place"
    if original is not None:
        start = time.perf_counter()
        check_compute_step(original, gm, example_inputs)
        analysis(gm).timings.append(("self-check", time.perf_counter() - start, 0.0))
    if lowering:
        PassManager(list(lowering), example_inputs)(gm)
    warn_unused_buckets(gm, policy)
    return CacheState(gm, policy.name)


def warn_unused_buckets(gm: fx.GraphModule, policy: PolicyConfig) -> None:
    """A policy asked for buckets (:mod:`graphcache.buckets`) that the compute branch did not get: say why, so
    that whole-batch compute steps are never a silent surprise."""
    import warnings

    count = getattr(policy, "buckets", 0)
    found = analysis(gm)
    if not count or found.decision is None or found.decision.sample_mask is None:
        return
    buckets = found.sample_buckets
    if buckets is not None and buckets.used:
        return
    reason = buckets.reason if buckets is not None else "this route captured the model at one batch size only"
    warnings.warn(f"graphcache: {policy.name}.buckets={count} not used, compute steps run the whole batch: {reason}",
                  stacklevel=3)
