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
    return CacheState(gm, policy.name)
