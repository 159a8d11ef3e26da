"""FoCa: Forecast then Calibrate, feature caching as an ODE (Zheng et al., 2025)."""

from __future__ import annotations

import dataclasses

from graphcache.policies.base import option, require
from graphcache.policies.interval_forecast import IntervalForecast
from graphcache.predictors import FoCa as FoCaPredictor
from graphcache.predictors import Predictor


@dataclasses.dataclass(frozen=True)
class FoCa(IntervalForecast):
    """TaylorSeer's schedule; cached steps use a BDF2 forecast calibrated with a Heun (trapezoid) step.

    graphcache's reading of the rule (``graphcache.predictors.FoCa``): ``P = F_a + e dF_a`` with the BDF2
    derivative of the last three computed steps, ``F_hat = P + min(e, damp_after)/2 (dF_i - dF_a)`` with
    ``dF_i`` the BDF2 derivative at the cached step through ``P``. 3 tensors per cached unit.
    """

    name = "foca"
    summary = "BDF2 forecast + Heun calibration of per-block outputs (or the stack output with lite=true)"
    paper = "https://arxiv.org/abs/2508.16211"

    damp_after: float = option(3.0, "the calibration's step is capped at this many steps (damping far forecasts)")

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.damp_after, float | int) and self.damp_after > 0, self.name, "damp_after",
                self.damp_after, "must be a number > 0")

    def predictor(self) -> Predictor:
        return FoCaPredictor(damp_after=float(self.damp_after))
