"""SpeCa: Accelerating Diffusion Transformers with Speculative Feature Caching (Liu et al., 2025)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from graphcache.policies.base import (
    PolicyConfig,
    buckets_option,
    forecast_option,
    option,
    pair_halves_option,
    per_sample_option,
    pooled,
    require,
)


@dataclasses.dataclass(frozen=True)
class SpeCa(PolicyConfig):
    """Forecast, then verify: every step a draft (TaylorSeer's by default; any ``forecast``) forecasts the
    stream entering the last block and the stack output; the real last block runs on the forecast input and
    ``e = ||real - forecast||_2 / ||real||_2`` is checked against ``tau = max(tau0 * decay^(i/T), tau_min)``.
    Accepted: the step uses the forecast (the blocks do not run); rejected, after ``max_forecasts``
    forecasts in a row, or in warm-up: the step computes. Costs one block per step for the verification."""

    name = "speca"
    summary = "dynamic: Taylor forecast of the stack, verified by running the last block on the forecast input"
    paper = "https://arxiv.org/abs/2509.11628"
    static = False

    forecast: str = forecast_option(default="taylor:1")
    tau0: float = option(7.0, "error threshold at step 0")
    decay: float = option(0.3, "the threshold is tau0 * decay^(i/T) at step i (T = num_steps)")
    tau_min: float = option(0.1, "lowest threshold")
    max_forecasts: int = option(8, "forecasts in a row before a compute step is forced", minimum=1)
    warmup: int = option(3, "the first `warmup` steps are computed (they seed the draft)",
                         minimum=1, note=' (step 0 seeds the draft)')
    num_steps: int = option(50, "steps per generation T, for the threshold schedule", minimum=1)
    per_sample: bool = per_sample_option()
    buckets: int = buckets_option()
    pair_halves: bool = pair_halves_option()

    def validate(self) -> None:
        self.predictor()
        for key in ("tau0", "tau_min"):
            require(isinstance(getattr(self, key), float | int) and getattr(self, key) >= 0, self.name, key,
                    getattr(self, key), "must be a number >= 0")
        require(isinstance(self.decay, float | int) and 0 < self.decay <= 1, self.name, "decay", self.decay,
                "must be in (0, 1]")

    def threshold(self, i: torch.Tensor) -> torch.Tensor:
        return (self.tau0 * self.decay ** (i.to(torch.float32) / self.num_steps)).clamp_min(self.tau_min)

    def rule(self, i: torch.Tensor, error: torch.Tensor | None = None, since: torch.Tensor | None = None
             ) -> torch.Tensor:
        if error is None or since is None:  # the static part only (graphcache policies, expected())
            return i < self.warmup
        # NaN (no draft yet) is rejected
        rejected = ~(pooled(error, self.per_sample, self.pair_halves) <= self.threshold(i))
        return (i < self.warmup) | rejected | (since > self.max_forecasts)

    def passes(self) -> list[Any]:
        from graphcache.passes import InsertVerificationSignal, PlanDeltaUnits, default_pipeline

        predictor = self.predictor()
        return default_pipeline("delta", predictor, self.rule, plan=PlanDeltaUnits(split=-1, boundary=None),
                                signals=[InsertVerificationSignal(predictor=predictor)])
