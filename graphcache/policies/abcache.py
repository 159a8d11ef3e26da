"""AB-Cache: training-free acceleration with Adams-Bashforth cached feature reuse (Yu et al., 2025)."""

from __future__ import annotations

import dataclasses

from graphcache.policies.base import option, require
from graphcache.policies.interval_forecast import IntervalForecast
from graphcache.predictors import HISTORY, AdamsBashforth, Predictor


@dataclasses.dataclass(frozen=True)
class ABCache(IntervalForecast):
    """TaylorSeer's schedule; cached steps use the k-th order Adams-Bashforth combination of the last k
    computed values, weights from actual step distances (``graphcache.predictors.AdamsBashforth``)."""

    name = "abcache"
    summary = "k-th order Adams-Bashforth combination of the last k computed outputs, in step distance"
    paper = "https://arxiv.org/abs/2504.10540"

    interval: int = option(3, "after warm-up, compute when (step - warmup) % interval == 0", minimum=1)
    order: int = option(2, f"Adams-Bashforth order k (1..{HISTORY}; 1 is plain reuse): k tensors per unit")

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.order, int) and 1 <= self.order <= HISTORY, self.name, "order", self.order,
                f"must be an integer in 1..{HISTORY}")

    def predictor(self) -> Predictor:
        return AdamsBashforth(order=self.order)
