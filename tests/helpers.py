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


def assert_exact_iff_computed(outputs, reference, per_sample_decisions, exact_only=False):
    """Each sample's output equals the uncached one exactly on the steps it computed (and, unless
    ``exact_only``, differs on the steps it cached)."""
    for b, sample in enumerate(per_sample_decisions):
        for out, ref, d in zip(outputs, reference, sample, strict=True):
            same = torch.equal(out[b], ref[b])
            assert same if d == "computed" else (exact_only or not same), (b, d)


def moving_latent(inputs):
    """``inputs`` with a latent that moves along the generation, as in a sampler (EasyCache reads its change)."""
    def moved(t):
        kw = inputs(t)
        return kw | {"hidden_states": kw["hidden_states"] * (0.5 + t / 1000) + (1 - t / 1000) * 0.3}

    return moved
