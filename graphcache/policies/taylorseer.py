"""TaylorSeer: From Reusing to Forecasting (Liu et al., 2025): cache, then forecast with a Taylor series."""

from __future__ import annotations

import dataclasses

from graphcache.policies.base import option, require
from graphcache.policies.interval_forecast import IntervalForecast
from graphcache.predictors import HISTORY, Newton, Predictor, Taylor


@dataclasses.dataclass(frozen=True)
class TaylorSeer(IntervalForecast):
    """Static schedule (warm-up, then every ``interval``-th step computed); cached steps are forecast.

    The schedule is TaylorSeer's released code: steps ``0 .. warmup-1`` and ``warmup + k * interval``.
    Moving from diffusers' ``TaylorSeerCacheConfig(cache_interval=N, disable_cache_before_step=W)``: diffusers
    computes ``0 .. W-1`` and ``W + 1 + k * N`` (its step ``W`` is forecast from ``W`` computed steps), which
    no (interval, warmup) pair reproduces; ``taylorseer{interval=N, warmup=W+1}`` computes the same steps
    plus step ``W`` (:func:`diffusers_schedule` gives diffusers' for comparison).
    """

    name = "taylorseer"
    summary = "Taylor forecast of per-block attention/MLP outputs (or of the stack output with lite=true)"
    paper = "https://arxiv.org/abs/2503.06923"

    interval: int = option(4, "after warm-up, compute when (step - warmup) % interval == 0 (DiT: 4, FLUX: 6)",
                           minimum=1)
    order: int = option(4, "Taylor order m: m+1 tensors kept per cached unit (DiT: 4, FLUX: 1)")
    newton: bool = option(False, "divided differences over the actual computed steps (exact for polynomials of "
                          "degree <= order) instead of the published last-gap differences (exact for lines)")

    def validate(self) -> None:
        super().validate()
        top = HISTORY - 1 if self.newton else 6
        require(isinstance(self.order, int) and 0 <= self.order <= top, self.name, "order", self.order,
                f"must be an integer in 0..{top} (0 is plain reuse)")

    def predictor(self) -> Predictor:
        return Newton(order=self.order) if self.newton else Taylor(order=self.order)


def diffusers_schedule(steps: int, cache_interval: int, disable_cache_before_step: int) -> list[bool]:
    """diffusers' TaylorSeer hook schedule (True = computed), written out to compare with ``expected()``."""
    w, n = disable_cache_before_step, cache_interval
    return [i < w or (i - w - 1) % n == 0 for i in range(steps)]
