"""diffusers pipelines: which components are denoisers, and a new generation at every pipeline call.

Every denoiser a pipeline holds is optimized (Wan 2.2 has ``transformer`` and ``transformer_2``, Kandinsky a
``prior`` and a ``decoder`` pipeline, ...), each with its own state. The pipeline's ``__call__`` starts a new
generation in all of them first, so an img2img run that starts at a lower timestep, a run after an
interrupted one, or a run with another step count never continues an old cache.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from graphcache.errors import GraphcacheError

DENOISER_NAME = re.compile(r"(transformer|unet|prior|decoder)(_\d+)?")


def _modules(pipe: Any) -> dict[str, torch.nn.Module]:
    return {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}


def denoiser_names(pipe: Any) -> list[str]:
    """The pipeline's denoiser components by name (``transformer``, ``transformer_2``, ``unet``, ...); a
    pipeline without such a name gets its largest module."""
    modules = _modules(pipe)
    names = [k for k in modules if DENOISER_NAME.fullmatch(k)]
    if names:
        return sorted(names, key=lambda k: (k.rstrip("_0123456789"), k))
    if not modules:
        raise GraphcacheError(f"{type(pipe).__name__} has no torch module component to optimize")
    return [max(modules, key=lambda k: sum(p.numel() for p in modules[k].parameters()))]


def optimize_pipeline(pipe: Any, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> Any:
    """Replace each denoiser of ``pipe`` by ``wrap(denoiser)`` and make every pipeline call start a new
    generation; ``pipe.graphcache_denoisers`` lists the names optimized."""
    names = denoiser_names(pipe)
    for name in names:
        denoiser = getattr(pipe, name)
        denoiser = getattr(denoiser, "model", denoiser) if type(denoiser).__name__ == "CachedModule" else denoiser
        setattr(pipe, name, wrap(denoiser.eval()))
    pipe.graphcache_denoisers = names
    _reset_on_call(pipe)
    return pipe


def reset_pipeline(pipe: Any) -> None:
    for name in getattr(pipe, "graphcache_denoisers", denoiser_names(pipe)):
        module = getattr(pipe, name)
        if hasattr(module, "contexts"):
            module.reset()


def _reset_on_call(pipe: Any) -> None:
    """Give ``pipe`` a ``__call__`` that resets its optimized denoisers first (a subclass made once per
    pipeline class: dunder methods are looked up on the type)."""
    cls = type(pipe)
    if getattr(cls, "_graphcache_resets", False):
        return

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        reset_pipeline(self)
        return cls.__call__(self, *args, **kwargs)

    __call__.__doc__ = cls.__call__.__doc__
    pipe.__class__ = type(cls.__name__, (cls,), {"__call__": __call__, "_graphcache_resets": True,
                                                 "__module__": cls.__module__, "__qualname__": cls.__qualname__})
