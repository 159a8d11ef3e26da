"""FasterCache: Training-Free Video Diffusion Model Acceleration with High Quality (Lv et al., 2024)."""

from __future__ import annotations

import dataclasses
from typing import Any

from graphcache.policies.base import option
from graphcache.policies.pab import PAB


@dataclasses.dataclass(frozen=True)
class FasterCache(PAB):
    """FasterCache's dynamic feature reuse: PAB's attention units and timestep window, but a cached step
    extrapolates each attention output from its last two computed values,
    ``F_a + (F_a - F_b) * max(0.5, i / (T-1))``, instead of reusing it. Defaults: spatial and temporal
    attention recomputed every 2nd step below timestep 681 (the window of diffusers' ``FasterCacheConfig``).
    FasterCache's CFG-Cache is the ``cfgcache`` policy; ``cfgcache{features=fastercache}`` runs both, as
    published."""

    name = "fastercache"
    summary = "attention outputs extrapolated from their last two computed values inside a timestep window"
    paper = "https://arxiv.org/abs/2410.19355"

    spatial: int | None = option(2, "recompute spatial self-attention when step % spatial == 0 (None: always)")
    temporal: int | None = option(2, "recompute temporal self-attention every `temporal` steps (None: always)")
    cross: int | None = option(None, "recompute cross-attention every `cross` steps (None: always)")
    window_low: float = option(0.0, "the window's low timestep (exclusive), on a 1000 scale")
    window_high: float = option(681.0, "the window's high timestep (exclusive), on a 1000 scale")
    num_steps: int = option(50, "steps per generation T, for the extrapolation weight max(0.5, i / (T-1))", minimum=2)

    def validate(self) -> None:
        super().validate()

    def predictor(self) -> Any:
        from graphcache.predictors import Extrapolate

        return Extrapolate(num_steps=self.num_steps)
