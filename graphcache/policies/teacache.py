"""TeaCache: Timestep Embedding Aware Cache (Liu et al., 2024)."""

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
    pair_halves_option,
    per_sample_option,
    pooled,
)


def parse_coefficients(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise PolicyConfigError(f"option teacache.coefficients={text!r} must be comma-separated numbers, highest "
                                "power first, e.g. '498.65,-283.78,55.855,-3.8202,0.26423'") from None
    if not values:
        raise PolicyConfigError("option teacache.coefficients is empty")
    return values


@dataclasses.dataclass(frozen=True)
class TeaCache(PolicyConfig):
    """Skip the block stack while the accumulated, polynomial-rescaled change of block 0's modulated input
    stays below ``threshold``.

    In-graph rule, per sample: ``d = relL1(m_i, m_{i-1})`` (``m`` = block 0's AdaLN-modulated input, found by
    structure), ``A += poly(d)``; compute iff ``A >= threshold`` (then ``A = 0``); the first step (and the
    last with ``num_steps``) always computes. Cached steps reuse the stack residual. ``poly`` comes from
    ``coefficients`` or a ``calibration`` file (``graphcache calibrate``); with a calibration, ``d`` is
    clamped to the fitted range and ``poly(d)`` to >= 0 (a degree-4 fit swings negative outside its data).
    """

    name = "teacache"
    summary = "dynamic: accumulated rescaled change of block 0's modulated input; reuse the stack below threshold"
    paper = "https://arxiv.org/abs/2411.19108"
    static = False

    threshold: float = option(0.25, "accumulated rescaled distance that forces a compute step", minimum=0,
                               note=" (0 computes every step)")
    coefficients: str | None = option(None, "polynomial, highest power first, comma-separated (FLUX: "
                                      "'498.65,-283.78,55.855,-3.8202,0.26423')")
    calibration: str | None = option(None, "calibration file from `graphcache calibrate` (instead of coefficients)")
    warmup: int = option(1, "the first `warmup` steps are always computed", minimum=0)
    num_steps: int | None = option(None, "steps per generation: the last step is always computed when given")
    per_sample: bool = per_sample_option()
    buckets: int = buckets_option()
    pair_halves: bool = pair_halves_option()
    forecast: str = forecast_option()
    forecast_from: int = forecast_from_option()

    def validate(self) -> None:
        self.predictor()
        if self.coefficients is not None:
            parse_coefficients(self.coefficients)

    def polynomial(self, model: torch.nn.Module | None = None) -> tuple[tuple[float, ...], tuple[float, float] | None]:
        """The coefficients (highest power first) and, from a calibration, the indicator range they were fitted on."""
        if self.coefficients is not None:
            return parse_coefficients(self.coefficients), None
        if self.calibration is None:
            raise PolicyConfigError(
                "teacache needs its indicator polynomial: make a calibration with `graphcache calibrate model.py "
                "-o calibration.json` and pass calibration=calibration.json (or give coefficients=...)")
        from graphcache.calibration import load

        fit = load(self.calibration, "teacache", model)
        low, high = fit["indicator_range"]
        return tuple(fit["coefficients"]), (float(low), float(high))

    def check_model(self, model: torch.nn.Module) -> None:
        self.polynomial(model)

    def rescale(self, distance: torch.Tensor) -> torch.Tensor:
        """``poly(d)``, with ``d`` clamped to the calibrated range (a degree-4 fit swings outside it) and the
        result to >= 0 (a distance): graphcache's guard, not in the published rule."""
        coefficients, fitted = self.polynomial()
        if fitted is not None:
            distance = distance.clamp(fitted[0], fitted[1])
        rescaled = torch.zeros_like(distance)
        for c in coefficients:  # Horner
            rescaled = rescaled * distance + c
        return rescaled.clamp_min(0.0)

    def rule(self, i: torch.Tensor, distance: torch.Tensor | None = None, accumulated: torch.Tensor | None = None
             ) -> Any:
        forced = i < max(self.warmup, 1)
        if self.num_steps is not None:
            forced = forced | (i >= self.num_steps - 1)
        if distance is None or accumulated is None:  # the static part only (graphcache policies, expected())
            return forced
        total = accumulated + self.rescale(pooled(distance, self.per_sample, self.pair_halves))
        compute = forced | ~(total < self.threshold)  # NaN (no previous input) computes
        return compute, torch.where(compute, torch.zeros_like(total), total)

    def passes(self) -> list[Any]:
        from graphcache.passes import InsertModulatedIndicator, default_pipeline

        self.polynomial()  # a missing calibration fails here, before any graph work
        return default_pipeline("stack", self.predictor(), self.rule, signals=[InsertModulatedIndicator()],
                                accumulators=(("accumulated", 0.0),))
