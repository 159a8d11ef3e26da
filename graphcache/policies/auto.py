"""The default policy: FORA on a stack of repeated blocks, DeepCache on a U-Net, chosen by the graph's structure."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from graphcache.policies.base import PolicyConfig, option
from graphcache.policies.deepcache import DeepCache
from graphcache.policies.fora import FORA


@dataclasses.dataclass(frozen=True)
class Auto(PolicyConfig):
    """Static reuse on the same schedule whatever the denoiser: FORA's stack residual where the repeated blocks
    hold the step's work (transformers); where there are none, or they hold too little, and the graph has
    U-Net skip connections, DeepCache behind the first down block's first layer (``skip=1``; the only skip
    when there is one). Between graph breaks (pieces of one model) FORA only.
    The policy applied is recorded on the compiled state (``graphcache.decisions`` / reports say which)."""

    name = "auto"
    summary = "the default: FORA on a stack of repeated blocks, DeepCache on a U-Net (chosen by structure)"
    paper = FORA.paper

    interval: int = option(3, "compute when step % interval == 0; reuse otherwise",
                           minimum=1, note=' (1 computes every step)')
    warmup: int = option(0, "the first `warmup` steps are always computed", minimum=0)

    def rule(self, i: torch.Tensor) -> torch.Tensor:
        return (i % self.interval == 0) | (i < self.warmup)

    def passes(self) -> list[Any]:
        return FORA(interval=self.interval, warmup=self.warmup).passes()

    def instead_of_no_stack(self, gm: Any) -> PolicyConfig | None:
        from graphcache.errors import UnsupportedGraphError
        from graphcache.passes.find_unet_skip import skip_concats

        try:
            skips = len(skip_concats(gm.graph))
        except UnsupportedGraphError:  # concats that do not nest: not a U-Net
            return None
        return DeepCache(interval=self.interval, warmup=self.warmup, skip=min(1, skips - 1)) if skips else None
