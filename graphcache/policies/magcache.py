"""MagCache: Magnitude-aware Cache (Ma et al., 2025)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from graphcache.errors import PolicyConfigError
from graphcache.policies.base import (
    PolicyConfig,
    buckets_option,
    forecast_from_option,
    forecast_option,
    option,
    require,
)


@dataclasses.dataclass(frozen=True)
class MagCache(PolicyConfig):
    """Skip while the accumulated error of the calibrated residual-magnitude ratios stays small.

    ``gamma(t)`` = calibrated ``mean ||r_i|| / ||r_{i-1}||`` of the stack residual, interpolated at the
    current timestep. After the first ``int(retention * T_cal + 0.5)`` calibrated steps (rounded as the
    published code and diffusers do; a timestep boundary, so any step count works): ``G *= gamma``,
    ``E += |1 - G|``, ``k += 1``; skip iff ``E <= threshold`` and ``k <= max_skips``, else compute and
    reset ``G = 1, E = 0, k = 0``. Cached steps reuse the residual.
    """

    name = "magcache"
    summary = "dynamic: accumulated error of calibrated residual magnitude ratios; reuse the stack while small"
    paper = "https://arxiv.org/abs/2506.09045"
    static = False

    threshold: float = option(0.24, "accumulated ratio error allowed before a compute step", minimum=0)
    max_skips: int = option(5, "K: at most this many consecutive cached steps", minimum=0)
    retention: float = option(0.1, "R: the first int(R*T + 0.5) steps (of the calibration run) are computed")
    calibration: str | None = option(None, "calibration file from `graphcache calibrate` (required)")
    buckets: int = buckets_option()
    forecast: str = forecast_option()
    forecast_from: int = forecast_from_option()

    def validate(self) -> None:
        self.predictor()
        require(isinstance(self.retention, float | int) and 0 <= self.retention <= 1, self.name, "retention",
                self.retention, "must be in [0, 1]")

    def table(self, model: torch.nn.Module | None = None) -> dict[str, Any]:
        if self.calibration is None:
            raise PolicyConfigError(
                "magcache needs calibrated magnitude ratios: make them with `graphcache calibrate model.py "
                "-o calibration.json` and pass calibration=calibration.json")
        from graphcache.calibration import load

        table = load(self.calibration, "magcache", model)
        if len(table["ratios"]) < 2:
            raise PolicyConfigError(f"{self.calibration}: magcache needs ratios at >= 2 timesteps (calibrate with "
                                    "more steps)")
        return table

    def check_model(self, model: torch.nn.Module) -> None:
        self.table(model)

    def boundary(self) -> float:
        """Timestep below which caching may start: the calibration run's step int(R*T + 0.5), rounded as the
        published MagCache code and diffusers' MagCacheConfig do."""
        table = self.table()
        first = int(self.retention * table["steps"] + 0.5)
        all_t = [max(table["timesteps"]) + 1.0, *table["timesteps"]]  # step 0's t is above every recorded ratio
        return float(all_t[min(first, len(all_t) - 1)]) + 1e-3 if first > 0 else float("inf")

    def rule(self, i: torch.Tensor, gamma: torch.Tensor | None = None, t: torch.Tensor | None = None,
             ratio: torch.Tensor | None = None, error: torch.Tensor | None = None, skips: torch.Tensor | None = None
             ) -> Any:
        if gamma is None or t is None or ratio is None or error is None or skips is None:
            return i < 1
        new_ratio = ratio * gamma
        new_error = error + (1.0 - new_ratio).abs()
        new_skips = skips + 1.0
        skip = (t < self.boundary()) & (new_error <= self.threshold) & (new_skips <= self.max_skips) & (i > 0)
        compute = ~skip
        return (compute, torch.where(skip, new_ratio, torch.ones_like(ratio)),
                torch.where(skip, new_error, torch.zeros_like(error)), torch.where(skip, new_skips,
                                                                                   torch.zeros_like(skips)))

    def passes(self) -> list[Any]:
        from graphcache.passes import InsertMagnitudeSignal, default_pipeline

        table = self.table()
        signal = InsertMagnitudeSignal(tuple(table["timesteps"]), tuple(table["ratios"]))
        return default_pipeline("stack", self.predictor(), self.rule, signals=[signal],
                                accumulators=(("ratio", 1.0), ("error", 0.0), ("skips", 0.0)))
