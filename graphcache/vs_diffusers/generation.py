"""One DDIM generation of a :class:`Subject`, timed, telling computed calls by the modules that ran."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch

from graphcache.vs_diffusers.subjects import Clock, Subject


@dataclasses.dataclass
class Run:
    seconds: float
    out: torch.Tensor
    computed: list[bool] | None  # per call, where probes say (diffusers, eager)
    step_seconds: list[float] | None = None  # per call (CPU runs: a GPU run is not synchronized per step)


def generate(subj: Subject, fn: Callable[..., Any], steps: int, probes: list[torch.nn.Module] | None = None,
             hooked: torch.nn.Module | None = None, clock: Clock | None = None) -> Run:
    """One DDIM generation. A model with diffusers hooks (``hooked``) starts it with fresh hook state, as
    diffusers' pipelines do (``cache_context`` / reset). With ``probes``, a call counts as computed when every
    probe module ran in it. ``clock`` is kept at the current step and timestep."""
    from diffusers import DDIMScheduler
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    if hooked is not None:
        HookRegistry.check_if_exists_or_initialize(hooked).reset_stateful_hooks()
        _set_cache_context(hooked, CacheContext("cond", num_inference_steps=steps))
    ran: set[int] = set()
    handles = [p.register_forward_hook(lambda module, *_: ran.add(id(module))) for p in probes or []]
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    latent = subj.latent.clone()
    computed: list[bool] = []
    step_seconds: list[float] | None = None if latent.is_cuda else []
    try:
        _sync(latent)
        start = time.perf_counter()
        with torch.no_grad():
            for i, t in enumerate(scheduler.timesteps):
                if clock is not None:
                    clock.step, clock.t = i, float(t)
                ran.clear()
                begin = time.perf_counter()
                eps = subj.call(fn, latent, t)
                if step_seconds is not None:
                    step_seconds.append(time.perf_counter() - begin)
                if probes:
                    computed.append(len(ran) == len({id(p) for p in probes}))
                latent = scheduler.step(eps, t, latent).prev_sample
        _sync(latent)
        seconds = time.perf_counter() - start
    finally:
        for h in handles:
            h.remove()
    return Run(seconds, latent, computed if probes else None, step_seconds)


def _sync(tensor: torch.Tensor) -> None:
    """Wait for the device's queued work (a GPU run's wall time ends when its kernels do)."""
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)

