"""EasyCache: training-free video diffusion acceleration via runtime-adaptive caching (Zhou et al., 2025)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from graphcache.policies.base import PolicyConfig, buckets_option, forecast_from_option, forecast_option, option


@dataclasses.dataclass(frozen=True)
class EasyCache(PolicyConfig):
    """Reuse the stack's transform while its predicted accumulated change stays below ``tau``.

    Unit: the block stack's transform ``delta = v - x`` (``x`` its input, ``v`` its output). At step n, with
    a and a' the last two computed steps, ``k = mean|v_a - v_a'| / mean|x_a - x_a'|`` (transformation rate)
    and ``eps = k * mean|x_n - x_{n-1}| / mean|v_a|``; ``E += eps``; reuse (``v = x_n + delta_a``) iff
    ``E < tau``, else compute and reset ``E = 0``. Warm-up steps (and the last with ``num_steps``) compute.
    Per sample, all in the graph (``passes/insert_transform_rate.py``).
    """

    name = "easycache"
    summary = "dynamic: transformation-rate estimate of the stack's change from its input; reuse below tau"
    paper = "https://arxiv.org/abs/2507.02860"
    static = False

    tau: float = option(0.05, "accumulated predicted relative change that forces a compute step", minimum=0)
    warmup: int = option(10, "the first `warmup` steps are always computed (at least 2: k needs two)", minimum=0)
    num_steps: int | None = option(None, "steps per generation: the last step is always computed when given")
    buckets: int = buckets_option()
    forecast: str = forecast_option()
    forecast_from: int = forecast_from_option()

    def validate(self) -> None:
        self.predictor()

    def rule(self, i: torch.Tensor, change: torch.Tensor | None = None, error: torch.Tensor | None = None) -> Any:
        forced = i < max(self.warmup, 1)
        if self.num_steps is not None:
            forced = forced | (i >= self.num_steps - 1)
        if change is None or error is None:
            return forced
        total = error + change
        compute = forced | ~(total < self.tau)  # NaN (fewer than two computed steps) computes
        return compute, torch.where(compute, torch.zeros_like(total), total)

    def passes(self) -> list[Any]:
        from graphcache.passes import InsertTransformRate, default_pipeline

        return default_pipeline("stack", self.predictor(), self.rule, signals=[InsertTransformRate()],
                                accumulators=(("error", 0.0),))
