"""Delta-DiT: a training-free acceleration method tailored for diffusion transformers (Chen et al., 2024)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from graphcache.policies.base import PolicyConfig, option, require_int


@dataclasses.dataclass(frozen=True)
class DeltaDiT(PolicyConfig):
    """Cache the delta (out - in) of a contiguous block range: before step ``boundary`` the rear blocks
    (from block ``split`` on) are skipped, ``x_out = x_mid + delta_rear``; from ``boundary`` on the front
    blocks are skipped, ``x_mid = x_in + delta_front``, and the rear blocks run. Early steps shape the
    outline (rear blocks vary little), late steps the details (front blocks vary little). Compute every
    ``interval``-th step; the deltas are refreshed there."""

    name = "deltadit"
    summary = "block-range deltas: skip the rear blocks before the stage boundary, the front blocks after it"
    paper = "https://arxiv.org/abs/2406.01125"

    interval: int = option(2, "compute when step % interval == 0; cached steps skip one block range", minimum=1)
    split: int | None = option(None, "first rear block (None: half of the blocks)")
    boundary: int = option(10, "stage boundary: steps before it skip the rear blocks, later ones the front blocks",
                           minimum=0)
    warmup: int = option(0, "the first `warmup` steps are always computed", minimum=0)

    def validate(self) -> None:
        if self.split is not None:
            require_int(self, "split", 1)

    def rule(self, i: torch.Tensor) -> torch.Tensor:
        return (i % self.interval == 0) | (i < self.warmup)

    def passes(self) -> list[Any]:
        from graphcache.passes import FindBlockStack, PlanDeltaUnits, default_pipeline
        from graphcache.predictors import Reuse

        return default_pipeline("delta", Reuse(), self.rule,
                                plan=PlanDeltaUnits(split=self.split, boundary=self.boundary),
                                find=FindBlockStack())
