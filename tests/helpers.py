"""Shared test helpers: run a generation, compare outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from graphcache.runner import first_tensor


def generation(fn: Callable[..., Any], inputs: Callable[[float], dict[str, Any]], timesteps: list[float]
               ) -> list[torch.Tensor]:
    with torch.no_grad():
        return [first_tensor(fn(**inputs(t))).clone() for t in timesteps]


def timesteps(steps: int) -> list[float]:
    return torch.linspace(999, 0, steps).tolist()
