"""HiCache: training-free acceleration with Hermite-polynomial feature forecasting (Feng et al., 2025)."""

from __future__ import annotations

import dataclasses

from graphcache.policies.base import option, require
from graphcache.policies.taylorseer import TaylorSeer
from graphcache.predictors import Hermite, Predictor


@dataclasses.dataclass(frozen=True)
class HiCache(TaylorSeer):
    """TaylorSeer's schedule and differences; the forecast's terms are scaled Hermite polynomials."""

    name = "hicache"
    summary = "TaylorSeer's differences with Hermite-scaled forecast terms"
    paper = "https://arxiv.org/abs/2508.16984"

    sigma: float = option(0.71, "Hermite scale: term j is D_j / j! * sigma^j * H_j(sigma * k)")

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.sigma, float | int) and 0 < self.sigma <= 2, self.name, "sigma", self.sigma,
                "must be in (0, 2]")

    def predictor(self) -> Predictor:
        return Hermite(order=self.order, sigma=float(self.sigma))
