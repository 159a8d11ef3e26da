"""HiCache: training-free acceleration with Hermite-polynomial feature forecasting (Feng et al., 2025)."""

from __future__ import annotations

import dataclasses

from graphcache.policies.base import option, require
from graphcache.policies.interval_forecast import IntervalForecast
from graphcache.predictors import Hermite, Predictor


@dataclasses.dataclass(frozen=True)
class HiCache(IntervalForecast):
    """TaylorSeer's schedule and differences; the forecast's terms are scaled Hermite polynomials."""

    name = "hicache"
    summary = "TaylorSeer's differences with Hermite-scaled forecast terms"
    paper = "https://arxiv.org/abs/2508.16984"

    order: int = option(4, "order m of the differences: m+1 tensors kept per cached unit")
    sigma: float = option(0.71, "Hermite scale: term j is D_j / j! * sigma^j * H_j(sigma * k)")

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.order, int) and 0 <= self.order <= 6, self.name, "order", self.order,
                "must be an integer in 0..6")
        require(isinstance(self.sigma, float | int) and 0 < self.sigma <= 2, self.name, "sigma", self.sigma,
                "must be in (0, 2]")

    def predictor(self) -> Predictor:
        return Hermite(order=self.order, sigma=float(self.sigma))
