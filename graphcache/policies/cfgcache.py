"""FasterCache's CFG-Cache (Lv et al., 2024): the unconditional half of a guided batch from stored deltas."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from graphcache.errors import PolicyConfigError
from graphcache.policies.base import PolicyConfig, option, require, require_window


@dataclasses.dataclass(frozen=True)
class CFGCacheConfig(PolicyConfig):
    """Inside the timestep window, a guided call runs the conditional half only, except every ``interval``-th
    step; the unconditional output is the conditional one plus the low/high-frequency parts of the last full
    step's difference, scaled up per cached step (``graphcache/cfg_cache.py``). It wraps the denoiser's call
    (two captures: the guided batch and its half, in one graph), so it is applied with ``graphcache.optimize``
    on a pipeline or module, not through the ``graphcache`` dynamo backend or the exports."""

    name = "cfgcache"
    summary = "guided batches: the unconditional half rebuilt from the conditional one and stored FFT deltas"
    paper = "https://arxiv.org/abs/2410.19355"
    static = False
    wraps_model: ClassVar[bool] = True

    interval: int = option(5, "inside the window, run the whole guided batch when step % interval == 0", minimum=1)
    window_low: float = option(0.0, "the window's low timestep (exclusive), on a 1000 scale")
    window_high: float = option(641.0, "the window's high timestep (exclusive), on a 1000 scale")
    uncond_first: bool = option(True, "the batch is [unconditional; conditional] (diffusers); False: cond first")
    low_growth: float = option(1.15, "the low-frequency delta's scale grows by this per cached step, early")
    high_growth: float = option(1.25, "the high-frequency delta's scale grows by this per cached step, late")
    split_timestep: float = option(500.0, "early = timestep >= this (on the 1000 scale)")
    timestep_scale: float = option(1.0, "multiplies the model's timestep input onto the 1000 scale (Flux: 1000)")
    features: str | None = option(None, "a policy applied to the guided batch's graph on full steps, e.g. "
                                  "'fastercache' (FasterCache as published: attention extrapolation + CFG-Cache)")

    def validate(self) -> None:
        require_window(self)
        for key in ("low_growth", "high_growth"):
            require(getattr(self, key) > 0, self.name, key, getattr(self, key), "must be > 0")
        if self.features is not None:
            from graphcache.policies import make_policy

            inner = make_policy(self.features)
            require(not getattr(inner, "wraps_model", False), self.name, "features", self.features,
                    "must be a graph policy (fastercache, fora, ...), not another wrapper")

    def rule(self, i: torch.Tensor) -> torch.Tensor:
        """The schedule of a generation inside the window."""
        return i % self.interval == 0

    def passes(self) -> list[Any]:
        raise PolicyConfigError("policy 'cfgcache' wraps the denoiser's call (a guided batch and its half in one "
                                "graph): apply it with graphcache.optimize(pipe_or_model, 'cfgcache')")

    def wrap(self, model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        from graphcache.cfg_cache import wrap

        return wrap(model, self, args, kwargs)
