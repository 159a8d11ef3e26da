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
