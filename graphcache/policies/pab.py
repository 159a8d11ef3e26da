"""PAB: Real-Time Video Generation with Pyramid Attention Broadcast (Zhao et al., 2024)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from graphcache.errors import PassError
from graphcache.policies.base import PolicyConfig, in_window, option, require, require_window

if TYPE_CHECKING:
    from graphcache.analyses import Analyses


@dataclasses.dataclass(frozen=True)
class WindowRule:
    """PAB's decision: compute outside the timestep window, and inside it at the steps where every
    attention kind the model has is due (``i % range == 0``); bound to the kinds the plan found."""

    low: float
    high: float
    scale: float

    def bind(self, found: Analyses) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        present = found.attention_kinds
        if not present:
            raise PassError("PAB's rule is bound to the attention kinds plan_attention_units found; none are recorded "
                            "(run plan_attention_units first)")
        period = math.lcm(*present.values())
        low, high, scale = self.low, self.high, self.scale

        def rule(i: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return (~in_window(t, low, high, scale)) | (i % period == 0)

        return rule


@dataclasses.dataclass(frozen=True)
class PAB(PolicyConfig):
    """Pyramid Attention Broadcast: inside the timestep window, each attention kind's output is reused and
    recomputed every ``range`` steps (spatial most often, cross-attention least); MLPs always run. Kinds
    are found by structure: cross-attention reads keys that do not come from the hidden stream, temporal
    attention runs over a shorter sequence than spatial. Outside the window every step computes."""

    name = "pab"
    summary = "attention outputs per kind (spatial/temporal/cross) reused inside a timestep window"
    paper = "https://arxiv.org/abs/2408.12588"
    static = False  # the window is on timestep values, not step indices

    spatial: int | None = option(2, "recompute spatial self-attention when step % spatial == 0 (None: always)")
    temporal: int | None = option(4, "recompute temporal self-attention every `temporal` steps (None: always)")
    cross: int | None = option(6, "recompute cross-attention every `cross` steps (None: always)")
    window_low: float = option(450.0, "the window's low timestep (exclusive), on a 1000 scale")
    window_high: float = option(930.0, "the window's high timestep (exclusive), on a 1000 scale")
    timestep_scale: float = option(1.0, "multiplies the model's timestep input onto the 1000 scale (Flux: 1000)")

    def validate(self) -> None:
        for kind in ("spatial", "temporal", "cross"):
            value = getattr(self, kind)
            require(value is None or (isinstance(value, int) and value >= 1), self.name, kind, value,
                    "must be an integer >= 1 or None")
        require(any(getattr(self, k) is not None for k in ("spatial", "temporal", "cross")), self.name, "spatial",
                self.spatial, "at least one of spatial/temporal/cross needs a range")
        require_window(self)

    def rule(self, i: torch.Tensor) -> torch.Tensor:
        """The schedule of a generation that lies inside the window, on a model with every kind."""
        ranges = [getattr(self, k) for k in ("spatial", "temporal", "cross") if getattr(self, k) is not None]
        return i % math.lcm(*ranges) == 0

    def passes(self) -> list[Any]:
        from graphcache.passes import PlanAttentionUnits, default_pipeline

        plan = PlanAttentionUnits(spatial=self.spatial, temporal=self.temporal, cross=self.cross)
        rule = WindowRule(self.window_low, self.window_high, self.timestep_scale)
        return default_pipeline("attention", self.predictor(), rule, plan=plan, reads_timestep=True)
