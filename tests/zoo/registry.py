"""The zoo's registry: the ZooModel record, shared input/timestep helpers, the enumeration of diffusers denoisers.

Entries live in the family modules (image_transformers*.py, video_transformers*.py, unets.py, other.py); each
exports ``ENTRIES: list[ZooModel]``. ``ZOO`` is assembled lazily on first access (PEP 562 module ``__getattr__``) so
that the family modules may import this module without a cycle.

Import style: the zoo is a regular package under the ``tests`` namespace package, run from the repository root as
``python -m tests.zoo.check_zoo``; all imports inside the package are relative, so it also works as ``zoo`` when
``tests/`` itself is on ``sys.path`` (as tests/conftest.py arranges under pytest).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "NOT_DENOISERS",
    "ZOO",
    "ZooModel",
    "builder",
    "denoiser_classes",
    "flow_sigmas",
    "flow_steps",
    "increasing",
    "output_tensor",
    "randint",
    "randn",
    "reinit",
    "steps_1000",
    "tb",
]


@dataclasses.dataclass(frozen=True)
class ZooModel:
    name: str  # the diffusers class name, e.g. "WanTransformer3DModel"
    build: Callable[[], torch.nn.Module]  # torch.manual_seed(0) inside; returns model.eval(), float32, CPU
    inputs: Callable[[torch.Tensor], dict[str, Any]]  # forward() kwargs at timestep t; fixed seeds elsewhere
    timesteps: Callable[[int], list[torch.Tensor]]  # the model's own convention for n steps, in calling order
    batch: int = 2  # the batch size the inputs use
    family: str = "transformer"  # "transformer" or "unet"
    note: str = ""  # anything unusual


# --------------------------------------------------------------------------------------------------------------------
# helpers shared by the family modules

def randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """A float32 normal tensor from its own generator: the same seed always gives the same tensor."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def randint(low: int, high: int, *shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed))


def tb(t: torch.Tensor | float, batch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Timestep ``t`` (scalar, 1-element or batch-sized) as a batch-sized 1-D tensor."""
    t = torch.as_tensor(t, dtype=dtype).reshape(-1)
    return t.expand(batch).clone() if t.numel() == 1 else t.clone()


def reinit(model: torch.nn.Module, patterns: Sequence[str], std: float = 0.02, seed: int = 1234,
           only_zero: bool = True) -> None:
    """Redraw (seeded, N(0, std)) the parameters whose name contains one of ``patterns`` and, with ``only_zero``, whose
    values are all zero: zero-initialised output / modulation / gate layers would make the output constant or
    independent of t. ``only_zero=False`` also redraws ``torch.empty`` parameters (non-deterministic otherwise)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(p in name for p in patterns) and (not only_zero or not param.any()):
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def builder(cls_name: str, fill: Sequence[str] = (), fill_std: float = 0.02, fill_always: Sequence[str] = (),
            **config: Any):
    """A ``build`` for ``diffusers.<cls_name>(**config)``: seeded, eval, float32, CPU. ``fill``: name patterns of
    zero-initialised parameters to redraw; ``fill_always``: patterns to redraw whatever their values (see reinit)."""

    def build() -> torch.nn.Module:
        import diffusers

        torch.manual_seed(0)
        model = getattr(diffusers, cls_name)(**config)
        if fill:
            reinit(model, fill, std=fill_std)
        if fill_always:
            reinit(model, fill_always, std=fill_std, seed=4321, only_zero=False)
        return model.eval()

    return build


def _as_list(values: torch.Tensor) -> list[torch.Tensor]:
    return [v.reshape(1).clone() for v in values.to(torch.float32)]


def steps_1000(n: int) -> list[torch.Tensor]:
    """Discrete DDPM/DDIM-style timesteps on the 1000 scale, 999 -> 0 (U-Nets, DiT, PixArt, ...)."""
    return _as_list(torch.linspace(999.0, 0.0, n).round())


def flow_sigmas(n: int) -> list[torch.Tensor]:
    """Flow-matching sigmas 1 -> 1/n (FlowMatchEulerDiscreteScheduler, no shift): for models fed sigma in [0, 1]."""
    return _as_list(torch.linspace(1.0, 1.0 / n, n))


def flow_steps(n: int) -> list[torch.Tensor]:
    """The same flow-matching schedule on the 1000 scale, 1000 -> 1000/n: for models fed ``sigma * 1000``."""
    return _as_list(torch.linspace(1.0, 1.0 / n, n) * 1000.0)


def increasing(n: int) -> list[torch.Tensor]:
    """INCREASING time 0 -> 1 - 1/n (``1 - sigma``): Lumina-Next, Lumina 2, Z-Image pipelines run t upwards."""
    return _as_list(1.0 - torch.linspace(1.0, 1.0 / n, n))


def output_tensor(out: Any) -> torch.Tensor:
    """The main prediction of a forward result: tensor -> itself, tuple -> [0], BaseOutput -> ``.sample`` (else its
    first field), list of per-sample tensors (Z-Image, Wan-Animate 2) -> stacked (or flattened and concatenated when
    the samples differ in shape)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple):
        if not out:
            raise TypeError("empty forward output")
        return output_tensor(out[0])
    if isinstance(out, list):
        parts = [output_tensor(o) for o in out]
        if all(p.shape == parts[0].shape for p in parts):
            return torch.stack(parts)
        return torch.cat([p.flatten() for p in parts])
    if getattr(out, "sample", None) is not None:
        return output_tensor(out.sample)
    if isinstance(out, dict) and out:  # BaseOutput is an OrderedDict of its non-None fields
        return output_tensor(next(iter(out.values())))
    raise TypeError(f"cannot find the prediction in a {type(out).__name__}")


# --------------------------------------------------------------------------------------------------------------------
# enumeration

_PACKAGES = ("diffusers.models.transformers", "diffusers.models.unets")


def denoiser_classes() -> list[str]:
    """Every ModelMixin subclass defined in a module under diffusers.models.transformers / .unets that the top-level
    ``diffusers`` namespace exports, sorted by name."""
    import diffusers
    from diffusers import ModelMixin

    names: set[str] = set()
    for pkg_name in _PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if (inspect.isclass(obj) and obj.__module__ == module.__name__ and issubclass(obj, ModelMixin)
                        and getattr(diffusers, name, None) is obj):
                    names.add(name)
    return sorted(names)


NOT_DENOISERS: dict[str, str] = {
    "TransformerTemporalModel": "temporal-attention sub-module of the video U-Nets (UNet3DConditionModel, ...)",
    "DreamLiteTransformer2DModel": "spatial-transformer sub-module of DreamLiteUNetModel, which is the denoiser",
    "MotionAdapter": "container of AnimateDiff motion modules, merged into UNetMotionModel; it has no forward",
    "MiniMaxMusic3RVQDepthDecoder": "causal autoregressive decoder of residual-VQ codes (no timestep, no noise)",
}

_FAMILY_MODULES: Sequence[str] = (
    "image_transformers", "image_transformers_2", "video_transformers", "video_transformers_2", "unets", "other",
)
_zoo: dict[str, ZooModel] | None = None
ZOO: dict[str, ZooModel]  # every entry, keyed by class name: built on first access by __getattr__ below


def _collect() -> dict[str, ZooModel]:
    global _zoo
    if _zoo is None:
        zoo: dict[str, ZooModel] = {}
        for mod_name in _FAMILY_MODULES:
            module = importlib.import_module(f"{__package__}.{mod_name}")
            for entry in module.ENTRIES:
                if entry.name in zoo:
                    raise ValueError(f"duplicate zoo entry {entry.name}")
                zoo[entry.name] = entry
        _zoo = dict(sorted(zoo.items()))
    return _zoo


def __getattr__(name: str) -> Any:
    if name == "ZOO":
        return _collect()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
