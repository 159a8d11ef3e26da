"""The static forecasting schedule TaylorSeer, HiCache, FoCa and AB-Cache share."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from graphcache.policies.base import PolicyConfig, forecast_from_option, option, require_int
from graphcache.predictors import FromStep


@dataclasses.dataclass(frozen=True)
class IntervalForecast(PolicyConfig):
    """Warm-up steps, then every ``interval``-th step computed; cached steps are forecast by ``predictor()``
    from per-block attention/MLP outputs, or (``lite``) from the residual of the whole stack."""

    interval: int = option(4, "after warm-up, compute when (step - warmup) % interval == 0", minimum=1)
    warmup: int = option(3, "the first `warmup` steps are computed (they also seed the forecast)", minimum=0)
    lite: bool = option(False, "forecast only the residual of the whole stack: memory O(1) in depth")
    forecast_from: int = forecast_from_option()

    def validate(self) -> None:
        require_int(self, "forecast_from", 0)

    def rule(self, i: torch.Tensor) -> torch.Tensor:
        return (i < self.warmup) | ((i - self.warmup) % self.interval == 0)

    def passes(self) -> list[Any]:
        from graphcache.passes import default_pipeline

        predictor = self.predictor()
        if self.forecast_from > 0:
            predictor = FromStep(predictor, self.forecast_from)
        return default_pipeline("stack" if self.lite else "block", predictor, self.rule)
