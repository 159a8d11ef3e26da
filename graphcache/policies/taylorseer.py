"""TaylorSeer: From Reusing to Forecasting (Liu et al., 2025): cache, then forecast with a Taylor series."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from graphcache.policies.base import PolicyConfig, option, require, require_int
from graphcache.predictors import Predictor, Taylor


@dataclasses.dataclass(frozen=True)
class TaylorSeer(PolicyConfig):
    """Static schedule (warm-up, then every ``interval``-th step computed); cached steps are forecast."""

    name = "taylorseer"
    summary = "Taylor forecast of per-block attention/MLP outputs (or of the stack output with lite=true)"
    paper = "https://arxiv.org/abs/2503.06923"

    interval: int = option(4, "after warm-up, compute when (step - warmup) % interval == 0 (DiT: 4, FLUX: 6)")
    order: int = option(4, "Taylor order m: m+1 tensors kept per cached unit (DiT: 4, FLUX: 1)")
    warmup: int = option(3, "the first `warmup` steps are computed (they also seed the differences)")
    lite: bool = option(False, "forecast only the residual of the whole stack: memory O(1) in depth")

    def validate(self) -> None:
        require_int(self, "interval", 1)
        require(isinstance(self.order, int) and 0 <= self.order <= 6, self.name, "order", self.order,
                "must be an integer in 0..6 (0 is plain reuse)")
        require_int(self, "warmup", 0)

    def rule(self, i: torch.Tensor) -> torch.Tensor:
        return (i < self.warmup) | ((i - self.warmup) % self.interval == 0)

    def predictor(self) -> Predictor:
        return Taylor(order=self.order)

    def passes(self) -> list[Any]:
        from graphcache.passes import default_pipeline

        return default_pipeline("stack" if self.lite else "block", self.predictor(), self.rule)
