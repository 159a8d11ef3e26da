"""AdaCache: Adaptive Caching for faster video generation with diffusion transformers (Kahatapitiya et al.)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from graphcache.errors import PolicyConfigError
from graphcache.policies.base import PolicyConfig, buckets_option, forecast_from_option, forecast_option, option


def parse_codebook(text: str) -> list[tuple[float, int]]:
    """``'0.08:6,0.16:5'`` (or ``;``-separated, for CLI specs) -> ``[(0.08, 6), (0.16, 5)]`` by distance."""
    items = text.replace(" ", "").replace(";", ",").split(",")
    try:
        pairs = [(float(k), int(v)) for k, v in (item.split(":") for item in items if item)]
    except ValueError:
        raise PolicyConfigError(f"option adacache.codebook={text!r} must look like '0.08:6,0.16:5,...' "
                                "(distance:steps)") from None
    if not pairs or any(v < 1 for _, v in pairs):
        raise PolicyConfigError(f"option adacache.codebook={text!r} needs distance:steps pairs with steps >= 1")
    return sorted(pairs)


@dataclasses.dataclass(frozen=True)
class AdaCache(PolicyConfig):
    """At each computed step, the probe block's rate of change picks how many steps until the next one.

    In-graph rule, per sample: block 0 runs every step as a probe; at a computed step ``c = relL1(r_i,
    r_{i-k}) / k`` (``r`` its residual, ``k`` the steps since the last computed step), and the next compute
    comes ``codebook(c)`` steps later (the first entry whose distance >= c, else ``default_steps``).
    Cached steps reuse the rest of the stack.
    """

    name = "adacache"
    summary = "dynamic: probe block's change rate picks the distance to the next compute step from a codebook"
    paper = "https://arxiv.org/abs/2411.02397"
    static = False

    codebook: str = option("0.08:6,0.16:5,0.24:4,0.32:3,0.40:2", "distance:steps pairs, ',' or ';' between "
                           "them (published, 30 steps)")
    default_steps: int = option(1, "steps to the next compute when the distance is above every codebook entry",
                                minimum=1)
    buckets: int = buckets_option()
    forecast: str = forecast_option()
    forecast_from: int = forecast_from_option()

    def validate(self) -> None:
        self.predictor()
        parse_codebook(self.codebook)

    def rule(self, i: torch.Tensor, change: torch.Tensor | None = None, remaining: torch.Tensor | None = None,
             since: torch.Tensor | None = None) -> Any:
        if change is None or remaining is None or since is None:
            return i < 1
        first = (i == 0) | torch.zeros_like(remaining, dtype=torch.bool)
        since = torch.where(first, torch.zeros_like(since), since + 1)
        remaining = torch.where(first, torch.zeros_like(remaining), remaining)
        compute = first | (remaining <= 0)
        rate = change / since.clamp_min(1.0)
        steps = torch.full_like(rate, float(self.default_steps))
        for distance, n in reversed(parse_codebook(self.codebook)):  # the smallest matching distance wins
            steps = torch.where(rate <= distance, torch.full_like(rate, float(n)), steps)
        # a generation's first step has no earlier computed step (the reference is the last generation's)
        steps = torch.where(first, torch.full_like(rate, float(self.default_steps)), steps)
        return (compute, torch.where(compute, steps - 1.0, remaining - 1.0),
                torch.where(compute, torch.zeros_like(since), since))

    def passes(self) -> list[Any]:
        from graphcache.passes import default_pipeline

        return default_pipeline("stack", self.predictor(), self.rule, probe_blocks=1,
                                accumulators=(("remaining", 0.0), ("since", 0.0)))
