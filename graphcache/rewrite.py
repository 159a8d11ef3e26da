"""Run a policy's passes over a captured graph, check a computed step against the model, then lower."""

from __future__ import annotations

import functools
import operator
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx

from graphcache.errors import GraphcacheError, NoStackError, UnsupportedGraphError
from graphcache.passes.base import Pass, PassManager, analysis
from graphcache.passes.dense_cond_operands import DenseCondOperands
from graphcache.passes.host_decision import MoveDecisionToHost
from graphcache.passes.matvec_reductions import MatvecReductions
from graphcache.passes.narrow_linear_outputs import NarrowLinearOutputs
from graphcache.passes.sink_state_writes import SinkStateWrites, branch_writes_supported
from graphcache.policies import PolicyConfig
from graphcache.self_check import check_compute_step, snapshot
from graphcache.state import CacheState

# Inductor settings for a rewritten graph (``torch.compile(..., options=INDUCTOR_OPTIONS)``; graphcache's own
# routes pass them). A per-block forecast's cached step is one long chain of elementwise work (the residual
# stream plus each unit's gated forecast): by default Inductor fuses it into one loop reading every cached
# tensor at once (120 streams for TaylorSeer order 4 on 12 blocks), which the hardware prefetchers cannot
# follow: 6.45 ms for 60 MiB on this project's CPU, 2.02 ms as kernels of at most 8 buffers each
# (``python benchmarks/cached_step_kernels.py``). Measured neutral on the uncached DiT (bit-identical output,
# same time), so compute steps keep their kernels' results.
INDUCTOR_OPTIONS: dict[str, Any] = {"max_fusion_unique_io_buffers": 8}

# A static schedule on an accelerator decides on the host (no device sync for the cond's predicate); tests
# replace it with ``MoveDecisionToHost(force=True, check=True)`` to run that lowering on the CPU.
HOST_DECISION: Pass = MoveDecisionToHost()


def compile_lowering(backend: str, host_timestep: bool = False) -> tuple[Pass, ...]:
    """The lowering passes for a rewritten graph that runs under ``backend`` (``"inductor"``, ``"aot_eager"``,
    ``"eager"``: torch.compile's or op by op), not exported: state written in place inside the branch that
    changes it, cached steps computing only the linear rows they read, and for Inductor dense cond operands
    and few-row linears as reductions (on CPU). Where this torch's functionalization refuses branches that
    write their operands (:func:`branch_writes_supported`; ``eager`` runs branches as they are), the state
    stays functional, and a warning says so once.
    ``host_timestep``: the caller writes each call's timestep into the graph's host clock buffer before the
    call (the graphcache backend does: ``backend._writing_host_timestep``), so a static schedule on an
    accelerator may decide on the host (:class:`MoveDecisionToHost`); a caller that runs the module as it is
    (the torch.export route) leaves it off, and the predicate stays on the device."""
    sink: tuple[Pass, ...] = (SinkStateWrites(),)
    if backend != "eager" and not branch_writes_supported():
        _warn_functional_state()
        sink = ()
    host = (HOST_DECISION,) if host_timestep else ()
    if backend == "inductor":
        return (DenseCondOperands(), NarrowLinearOutputs(), MatvecReductions(), *sink, *host)
    return (NarrowLinearOutputs(), *sink, *host)


@functools.cache
def _warn_functional_state() -> None:
    import warnings

    warnings.warn(f"graphcache: torch {torch.__version__} cannot compile cond branches that write their operands; "
                  "cache state is written functionally (cached steps copy the unchanged cache; torch 2.13 writes "
                  "it in place). Per-block forecasts pay most; for a static schedule, "
                  "graphcache.export.compile_unrolled runs graphs whose cached steps write no state",
                  stacklevel=3)


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
    if found.matvec_reductions is not None:
        fields["matvec_reductions"] = found.matvec_reductions.linears
    if found.state_writes is not None and found.cache_branch is not None:
        fields["cached_step_read_bytes"] = read_bytes(getattr(gm, found.cache_branch["cached"]))
    if found.host_decision is not None and found.host_decision.conds:
        fields["host_decided_conds"] = found.host_decision.conds
    return fields


def read_bytes(branch: fx.GraphModule) -> int:
    """Bytes of the tensors ``branch`` takes in and uses (weights, cache state, activations): what a step
    through it must read at least once; of a weight only sliced (a narrowed linear's rows), the slices. An
    upper bound where a nested branch uses only some of them."""
    total = 0
    for node in branch.graph.nodes:
        if node.op not in ("placeholder", "get_attr"):
            continue
        val = node.meta.get("val")
        if node.op == "get_attr" and not isinstance(val, torch.Tensor):  # a parameter or buffer of the module
            val = operator.attrgetter(str(node.target))(branch)
        if not node.users or not isinstance(val, torch.Tensor):
            continue
        if all(user.target is torch.ops.aten.slice.Tensor for user in node.users):
            parts = [user.meta.get("val") for user in node.users]
            if all(isinstance(part, torch.Tensor) for part in parts):
                total += sum(part.numel() * part.element_size() for part in parts)  # type: ignore[union-attr]
                continue
        total += val.numel() * val.element_size()
    return total


def describe_lowering(fields: dict[str, int]) -> str | None:
    """:func:`lowering_fields` in words (None when there are none)."""
    if "cached_step_state_bytes" not in fields:
        return None
    text = (f"writes {fields['cached_step_state_bytes']:,} bytes of state (functional branches: "
            f"{fields['cached_step_state_bytes_functional']:,})")
    if fields.get("narrowed_linears"):
        text += (f"; {fields['narrowed_linears']} linears narrowed, {fields['weight_bytes_not_read']:,} weight "
                 "bytes not read")
    if fields.get("matvec_reductions"):
        text += f"; {fields['matvec_reductions']} few-row linears as reductions"
    if "cached_step_read_bytes" in fields:
        text += f"; reads at most {fields['cached_step_read_bytes'] / 2**20:.1f} MiB"
    if fields.get("host_decided_conds"):
        text += f"; {fields['host_decided_conds']} cond(s) decided on the host"
    return text


def rewrite(
    gm: fx.GraphModule, example_inputs: Sequence[Any], policy: PolicyConfig, lowering: Sequence[Any] = (),
    self_check: bool = True, choose: bool = True,
) -> CacheState:
    """Apply ``policy``'s passes, then the ``lowering`` passes, to ``gm`` (captured with meta) in place.

    With ``self_check`` (the default) the rewritten graph's first, computed, step is run on
    ``example_inputs`` (when they are real tensors) and must equal the captured graph's outputs exactly:
    :class:`graphcache.self_check.SelfCheckError` otherwise, naming the first diverging node. ``choose``: the
    policy may apply another where its passes find no stack (``auto``: DeepCache on a U-Net); off for a piece of
    a model split by graph breaks.
    """
    original = snapshot(gm) if self_check else None
    policy = _apply_policy(gm, example_inputs, policy, choose)
    if original is not None:
        start = time.perf_counter()
        check_compute_step(original, gm, example_inputs)
        analysis(gm).timings.append(("self-check", time.perf_counter() - start, 0.0))
    if lowering:
        PassManager(list(lowering), example_inputs)(gm)
    warn_unused_buckets(gm, policy)
    return CacheState(gm, policy.name)


def _apply_policy(gm: fx.GraphModule, example_inputs: Sequence[Any], policy: PolicyConfig,
                  choose: bool) -> PolicyConfig:
    """Run ``policy``'s passes on ``gm``. Where they find no stack of blocks worth caching and ``choose`` is on
    (one graph, not a piece between graph breaks), the policy the given one names instead (``auto``: DeepCache
    on a U-Net) is applied. Returns the policy applied."""
    try:
        new = PassManager(list(policy.passes()), example_inputs)(gm)
    except NoStackError as refusal:  # raised by the pass that finds the region, before any edit
        other = policy.instead_of_no_stack(gm) if choose else None
        if other is None:
            raise
        try:
            new = PassManager(list(other.passes()), example_inputs)(gm)
        except GraphcacheError as err:
            raise UnsupportedGraphError(f"{refusal}. Policy '{policy.name}' then tried {other.describe()}, which "
                                        f"refused: {err}") from err
        analysis(gm).policy_choice = f"policy '{policy.name}' applied {other.describe()}: {refusal.short}"
        policy = other
    assert new is gm, "graphcache passes edit the GraphModule in place"
    return policy


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
