"""Shared test helpers: run a generation, compare outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from graphcache.runner import run_generation


def generation(fn: Callable[..., Any], inputs: Callable[[float], dict[str, Any]], timesteps: list[float]
               ) -> list[torch.Tensor]:
    return run_generation(fn, inputs, timesteps).outputs


def timesteps(steps: int) -> list[float]:
    return torch.linspace(999, 0, steps).tolist()


def first_block_residuals(model, inputs, ts):
    """r1 = block_0(x) - x at every step, from the model's own modules (no graphcache involved)."""
    out = []
    with torch.no_grad():
        for t in ts:
            kw = inputs(t)
            h = model.pos_embed(kw["hidden_states"])
            block = model.transformer_blocks[0]
            out.append(block(h, timestep=kw["timestep"], class_labels=kw["class_labels"]) - h)
    return out
