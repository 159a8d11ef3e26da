"""A zoo of tiny, seeded, random-config instances of every denoiser class diffusers ships.

``ZOO`` (class name -> :class:`ZooModel`), ``NOT_DENOISERS`` and the helpers live in :mod:`.registry`; the entries in
the family modules. ``python -m tests.zoo.check_zoo`` (from the repository root) checks them all.
"""

from typing import Any

from .registry import NOT_DENOISERS, ZooModel, denoiser_classes, output_tensor

__all__ = ["NOT_DENOISERS", "ZOO", "ZooModel", "denoiser_classes", "output_tensor"]


def __getattr__(name: str) -> Any:
    if name == "ZOO":
        from . import registry

        return registry.ZOO
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
