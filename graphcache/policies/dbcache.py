"""DBCache: Dual Block Cache (cache-dit), FBCache generalised to Fn probe and Bn tail blocks."""

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
    require_int,
)


@dataclasses.dataclass(frozen=True)
class DBCache(PolicyConfig):
    """The first ``fn`` blocks run every step as a probe, the last ``bn`` every step as a refiner; the middle
    is reused while the probe residual's relL1 change (vs the last computed step) is below ``threshold``.

    In-graph rule, per sample: compute iff ``i < warmup``, or the change >= threshold, or ``max_cached_steps``
    cached steps this generation, or ``max_continuous_cached_steps`` in a row (-1: no cap); the counters are
    per-sample buffers reset at a new generation and (the run length) on computed steps.
    """

    name = "dbcache"
    summary = "dynamic: Fn probe blocks + Bn always-run tail blocks, middle reused; warm-up and caps"
    paper = "https://github.com/vipshop/cache-dit"
    static = False

    fn: int = option(1, "probe blocks at the front (published 8 for large models, 1 for small ones)", minimum=1)
    bn: int = option(0, "blocks at the end that always run", minimum=0)
    threshold: float = option(0.08, "relative L1 change of the probe residual that forces a compute step",
                               minimum=0)
    warmup: int = option(8, "the first `warmup` steps are always computed", minimum=0)
    max_cached_steps: int = option(-1, "at most this many cached steps per generation (-1: no cap)")
    max_continuous_cached_steps: int = option(-1, "at most this many cached steps in a row (-1: no cap)")
    per_sample: bool = per_sample_option()
    buckets: int = buckets_option()
    pair_halves: bool = pair_halves_option()
    forecast: str = forecast_option()
    forecast_from: int = forecast_from_option()

    def validate(self) -> None:
        self.predictor()
        require_int(self, "max_cached_steps", -1)
        require_int(self, "max_continuous_cached_steps", -1)

    def rule(self, i: torch.Tensor, change: torch.Tensor | None = None, cached: torch.Tensor | None = None,
             run: torch.Tensor | None = None) -> Any:
        if change is None or cached is None or run is None:
            return i < max(self.warmup, 1)
        change = pooled(change, self.per_sample, self.pair_halves)
        fresh = (i == 0) | torch.zeros_like(cached, dtype=torch.bool)
        cached = torch.where(fresh, torch.zeros_like(cached), cached)
        run = torch.where(fresh, torch.zeros_like(run), run)
        compute = (i < max(self.warmup, 1)) | ~(change < self.threshold)
        if self.max_cached_steps >= 0:
            compute = compute | (cached >= self.max_cached_steps)
        if self.max_continuous_cached_steps >= 0:
            compute = compute | (run >= self.max_continuous_cached_steps)
        return (compute, torch.where(compute, cached, cached + 1), torch.where(compute, torch.zeros_like(run),
                                                                                 run + 1))

    def passes(self) -> list[Any]:
        from graphcache.passes import default_pipeline

        return default_pipeline("stack", self.predictor(), self.rule, probe_blocks=self.fn, tail_blocks=self.bn,
                                accumulators=(("cached", 0.0), ("run", 0.0)))
