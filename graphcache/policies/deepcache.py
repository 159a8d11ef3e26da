"""DeepCache: Accelerating Diffusion Models for Free (Ma et al., 2024), for U-Net denoisers."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from graphcache.policies.base import PolicyConfig, forecast_from_option, forecast_option, option


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

    interval: int = option(3, "compute when step % interval == 0 (uniform 1:N)", minimum=1)
    skip: int = option(1, "skip connection whose deep side is cached, 0 = outermost (1: DeepCache's branch 0)",
                       minimum=0)
    warmup: int = option(0, "the first `warmup` steps are always computed", minimum=0)
    forecast: str = forecast_option()
    forecast_from: int = forecast_from_option()

    def validate(self) -> None:
        self.predictor()

    def rule(self, i: torch.Tensor) -> torch.Tensor:
        return (i % self.interval == 0) | (i < self.warmup)

    def passes(self) -> list[Any]:
        from graphcache.passes import FindUNetSkip, default_pipeline

        return default_pipeline("outputs", self.predictor(), self.rule, find=FindUNetSkip(skip=self.skip))
