"""FORA: Fast-Forward Caching in Diffusion Transformer Acceleration (Selvaraju et al., 2024)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from graphcache.policies.base import PolicyConfig, forecast_from_option, forecast_option, option, require


@dataclasses.dataclass(frozen=True)
class FORA(PolicyConfig):
    """Static reuse: compute every ``interval``-th step, reuse the cached features in between."""

    name = "fora"
    summary = "static reuse every N steps (stack residual, or per-block attention/MLP outputs)"
    paper = "https://arxiv.org/abs/2407.01425"

    interval: int = option(3, "compute when step % interval == 0; reuse otherwise",
                           minimum=1, note=' (1 computes every step)')
    warmup: int = option(0, "the first `warmup` steps are always computed", minimum=0)
    granularity: str = option("stack", "'stack': residual of the whole block stack; 'block': per-block "
                              "attention/MLP outputs before their gates (FORA as published)")
    num_steps: int | None = option(None, "steps per generation; only needed by compute_last")
    compute_last: bool = option(False, "always compute the last step (needs num_steps)")
    forecast: str = forecast_option()
    forecast_from: int = forecast_from_option()

    def validate(self) -> None:
        self.predictor()
        require(self.granularity in ("stack", "block"), self.name, "granularity", self.granularity,
                "must be 'stack' or 'block'")
        require(self.num_steps is None or self.num_steps >= 1, self.name, "num_steps", self.num_steps,
                "must be >= 1 or None")
        require(not self.compute_last or self.num_steps is not None, self.name, "compute_last",
                self.compute_last, "needs num_steps (e.g. --set num_steps=50)")

    def rule(self, i: torch.Tensor) -> torch.Tensor:
        compute = (i % self.interval == 0) | (i < self.warmup)
        if self.compute_last and self.num_steps is not None:
            compute = compute | (i == self.num_steps - 1)
        return compute

    def passes(self) -> list[Any]:
        from graphcache.passes import default_pipeline

        return default_pipeline(self.granularity, self.predictor(), self.rule)
