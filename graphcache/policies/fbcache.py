"""First Block Cache (FBCache, ParaAttention / diffusers): the first block is a probe for the rest."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from graphcache.policies.base import (
    PolicyConfig,
    buckets_option,
    forecast_from_option,
    forecast_option,
    option,
    pair_halves_option,
    per_sample_option,
    pooled,
)


@dataclasses.dataclass(frozen=True)
class FBCache(PolicyConfig):
    """Block 0 always runs; the rest is reused while the first block's residual barely changes.

    In-graph rule: with ``r1 = out_0 - in`` and ``r1_ref`` its value at the last computed step, a sample
    wants a compute step when ``mean|r1 - r1_ref| / mean|r1_ref| >= threshold``. The blocks run for the
    whole batch when any sample wants it; a sample that did not want it keeps its cached value and its
    reference, so each sample gets exactly the decisions and outputs it would get alone. Cached steps:
    ``h = out_0 + r_rest`` (the residual of blocks 1..n-1 from the last computed step).
    """

    name = "fbcache"
    summary = "dynamic: first block as probe, reuse the rest while its residual changes < threshold"
    paper = "https://github.com/chengzeyi/ParaAttention"
    static = False

    threshold: float = option(0.08, "relative L1 change of the first block's residual that forces a compute step",
                               minimum=0, note=" (0 computes every step)")
    warmup: int = option(0, "the first `warmup` steps are always computed", minimum=0)
    per_sample: bool = per_sample_option()
    buckets: int = buckets_option()
    pair_halves: bool = pair_halves_option()
    forecast: str = forecast_option()
    forecast_from: int = forecast_from_option()

    def validate(self) -> None:
        self.predictor()

    def rule(self, i: torch.Tensor, change: torch.Tensor | None = None) -> torch.Tensor:
        if change is None:  # the static part of the schedule only (graphcache policies, expected())
            return i < self.warmup
        # NaN (no reference yet) counts as stale
        stale = ~(pooled(change, self.per_sample, self.pair_halves) < self.threshold)
        return (i < self.warmup) | stale  # per sample: the batch computes if any does, samples blend

    def passes(self) -> list[Any]:
        from graphcache.passes import default_pipeline

        return default_pipeline("stack", self.predictor(), self.rule, probe_blocks=1)
