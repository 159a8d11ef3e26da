"""DeepCache: Accelerating Diffusion Models for Free (Ma et al., 2024), for U-Net denoisers."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import torch

from graphcache.errors import PolicyConfigError
from graphcache.policies.base import PolicyConfig, forecast_from_option, forecast_option, option, require

SCHEDULES = ("uniform", "power")


@functools.lru_cache(maxsize=64)
def power_schedule(num_steps: int, computed: int, center: int, power: float) -> tuple[int, ...]:
    """DeepCache's non-uniform 1:N schedule (``sample_from_quad_center`` in its Stable Diffusion pipeline): the
    ``computed`` step indices out of ``num_steps``, spaced as ``x ** power`` for ``x`` evenly spaced between
    ``-center ** (1 / power)`` and ``(num_steps - center) ** (1 / power)``, so they are densest around step
    ``center``; step 0 always, the last point dropped. Where rounding merges points, the power is lowered by 0.02
    until there are ``computed`` distinct steps, as the reference does. The reference raises ``-center`` to a
    fractional power in Python (a complex number) and casts to int32 (the real part, truncated): the same here,
    written out."""
    p = power
    while p > 1:
        ends = complex(-center) ** (1 / p), complex(num_steps - center) ** (1 / p)
        points = np.linspace(ends[0], ends[1], computed + 1) ** p
        steps = [0] + [int(k) + center for k in np.unique(np.trunc(points.real).astype(np.int64))[1:-1]]
        if len(steps) == computed and steps[-1] < num_steps:
            return tuple(steps)
        p -= 0.02
    raise PolicyConfigError(f"option deepcache.schedule='power' finds no spacing of {computed} computed steps out of "
                            f"{num_steps} around center={center}; lower center or use schedule='uniform'")


@dataclasses.dataclass(frozen=True)
class DeepCache(PolicyConfig):
    """Cache the deep feature entering the up path's concat with one skip connection; cached steps run
    only the shallow path (the down path up to that skip, the up path from the concat on).

    The U-Net is found by structure (``passes/find_unet_skip.py``): skip connections are concats of an
    up-path value with a down-path value it was computed from. ``skip`` counts them from the outermost
    (0: the input convolution's output). DeepCache's shallowest branch on diffusers'
    ``UNet2DConditionModel`` (the first down block's first layer) is ``skip=1``.
    """

    name = "deepcache"
    summary = "U-Nets: reuse the deep feature behind one skip connection; cached steps run the shallow path"
    paper = "https://arxiv.org/abs/2312.00858"

    interval: int = option(3, "compute 1 step in `interval` (uniform: when step % interval == 0)", minimum=1)
    skip: int = option(1, "skip connection whose deep side is cached, 0 = outermost (1: DeepCache's branch 0)",
                       minimum=0)
    warmup: int = option(0, "the first `warmup` steps are always computed", minimum=0)
    schedule: str = option("uniform", "'uniform': every interval-th step; 'power': DeepCache's non-uniform "
                           "spacing, ceil(num_steps / interval) computed steps densest around `center` "
                           "(needs num_steps)", choices=SCHEDULES)
    num_steps: int | None = option(None, "steps per generation; needed by schedule='power' (later steps "
                                   "are computed)", minimum=1)
    center: int = option(15, "schedule='power': the step the computed steps crowd around", minimum=0)
    power: float = option(1.4, "schedule='power': the spacing's exponent (lowered by 0.02 until the steps are "
                          "distinct, as DeepCache does)", minimum=1.0)
    forecast: str = forecast_option()
    forecast_from: int = forecast_from_option()

    def validate(self) -> None:
        self.predictor()
        if self.schedule == "power":
            require(self.num_steps is not None, self.name, "schedule", self.schedule,
                    "needs num_steps (e.g. --set num_steps=50)")
            self.computed_steps()

    def computed_steps(self) -> tuple[int, ...] | None:
        """The power schedule's computed steps (None for the uniform one)."""
        if self.schedule != "power" or self.num_steps is None:
            return None
        if self.interval == 1:  # as DeepCache's pipeline: every step
            return tuple(range(self.num_steps))
        return power_schedule(self.num_steps, -(-self.num_steps // self.interval), self.center, self.power)

    def rule(self, i: torch.Tensor) -> torch.Tensor:
        steps = self.computed_steps()
        if steps is None:
            return (i % self.interval == 0) | (i < self.warmup)
        assert self.num_steps is not None
        compute = (i < self.warmup) | (i >= self.num_steps)
        for k in steps:
            compute = compute | (i == k)
        return compute

    def passes(self) -> list[Any]:
        from graphcache.passes import FindUNetSkip, default_pipeline

        return default_pipeline("outputs", self.predictor(), self.rule, find=FindUNetSkip(skip=self.skip))
