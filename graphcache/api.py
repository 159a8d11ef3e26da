"""Python entry points: ``optimize``, ``decisions``, ``reset``, ``cache_bytes``."""

from __future__ import annotations

from typing import Any

import torch

from graphcache.backend import make_backend
from graphcache.errors import GraphcacheError
from graphcache.policies import PolicyConfig, make_policy
from graphcache.state import CacheState, states_of

DENOISER_COMPONENTS = ("transformer", "unet", "prior", "decoder")


class CachedModule(torch.nn.Module):
    """A denoiser whose forward runs the graphcache-rewritten graph (compiled fullgraph, no recompiles).

    Attribute access falls through to the wrapped model (``config``, ``dtype``, ...), so diffusers pipelines
    keep working. State lives in the compiled graph's buffers: one generation per decreasing timestep run,
    ``reset()`` to start over explicitly, ``decisions()`` for the computed/cached record.
    """

    def __init__(self, model: torch.nn.Module, policy: PolicyConfig, backend: str = "inductor") -> None:
        super().__init__()
        self.model = model
        self.policy = policy
        self.backend = backend
        self.states: list[Any] = []
        compiled = None if getattr(policy, "wraps_model", False) else torch.compile(
            model, backend=make_backend(policy, backend, self.states), fullgraph=True, dynamic=False
        )
        self.__dict__["_compiled"] = compiled  # not a submodule: parameters stay listed once

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            if self.__dict__["_compiled"] is None:  # a policy around the call (CFG-Cache): built on the first one
                self.__dict__["_compiled"] = self._wrap(args, kwargs)
            return self.__dict__["_compiled"](*args, **kwargs)

    def _wrap(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        from graphcache.cfg_cache import CFGState

        wrapper = self.policy.wrap(self._modules["model"], args, kwargs)  # type: ignore[attr-defined]
        self.states.append(CFGState(wrapper))
        if self.backend == "eager":
            return wrapper
        return torch.compile(wrapper, backend=self.backend, fullgraph=True, dynamic=False)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    def reset(self) -> None:
        for state in self.states:
            state.reset()

    def decisions(self) -> list[str]:
        return self.states[-1].decisions() if self.states else []

    def cache_bytes(self) -> int:
        return sum(s.cache_bytes() for s in self.states)


def _denoiser_name(pipe: Any) -> str:
    components = {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
    for name in DENOISER_COMPONENTS:
        if name in components:
            return name
    if not components:
        raise GraphcacheError(f"{type(pipe).__name__} has no torch module component to optimize")
    return max(components, key=lambda k: sum(p.numel() for p in components[k].parameters()))


def optimize(model_or_pipeline: Any, policy: str | PolicyConfig = "fora", backend: str = "inductor",
             **options: Any) -> Any:
    """Return the model with graphcache applied, or the pipeline with its denoiser replaced.

    ``policy`` is a registered name (``graphcache policies``), a spec string ``"fora{interval=4}"`` or a
    config object; ``options`` are the policy's fields. ``backend``: ``"inductor"`` (default),
    ``"aot_eager"`` or ``"eager"`` (the rewritten graph run op by op: compute steps bit-exact).
    """
    config = make_policy(policy, **options)
    if isinstance(model_or_pipeline, torch.nn.Module):
        config.check_model(model_or_pipeline)
        return CachedModule(model_or_pipeline.eval(), config, backend)
    if hasattr(model_or_pipeline, "components"):
        name = _denoiser_name(model_or_pipeline)
        denoiser = getattr(model_or_pipeline, name)
        if isinstance(denoiser, CachedModule):
            denoiser = denoiser.model
        setattr(model_or_pipeline, name, CachedModule(denoiser.eval(), config, backend))
        return model_or_pipeline
    raise GraphcacheError(
        f"graphcache.optimize expects a torch.nn.Module or a diffusers pipeline, got {type(model_or_pipeline).__name__}"
    )


def _states(obj: Any) -> list[CacheState]:
    if isinstance(obj, CachedModule):
        return obj.states
    if hasattr(obj, "components") and not isinstance(obj, torch.nn.Module):
        return _states(getattr(obj, _denoiser_name(obj)))
    if isinstance(obj, torch.nn.Module):
        return states_of(getattr(obj, "_orig_mod", obj))
    raise GraphcacheError(f"expected a module or pipeline optimized by graphcache, got {type(obj).__name__}")


def decisions(obj: Any) -> list[str]:
    """Per-call decisions (``'computed'`` / ``'cached'``) of the current generation of an optimized model."""
    states = _states(obj)
    return states[-1].decisions() if states else []


def reset(obj: Any) -> None:
    """Start a new generation on the next call (also detected in-graph when the timestep goes up)."""
    for state in _states(obj):
        state.reset()


def cache_bytes(obj: Any) -> int:
    """Bytes of cached features held by an optimized model."""
    return sum(s.cache_bytes() for s in _states(obj))
