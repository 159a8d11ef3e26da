"""Python entry points: ``optimize``, ``decisions``, ``reset``, ``cache_bytes``."""

from __future__ import annotations

from typing import Any

import torch

from graphcache.cached_module import CachedModule
from graphcache.errors import GraphcacheError, PolicyConfigError
from graphcache.pipelines import denoiser_names, optimize_pipeline, reset_pipeline
from graphcache.policies import PolicyConfig, make_policy
from graphcache.state import CacheState, compile_call_of, states_of


class _DefaultPolicy(str):
    """The default policy name, told apart (by identity) from a policy the caller gives."""


DEFAULT_POLICY = _DefaultPolicy("auto")


def _denoiser_name(pipe: Any) -> str:
    """The pipeline's first denoiser (``decisions(pipe)`` reports it)."""
    return denoiser_names(pipe)[0]


def optimize(model_or_pipeline: Any, policy: str | PolicyConfig = DEFAULT_POLICY,
             backend: str = "inductor", self_check: bool = True, config: str | None = None, **options: Any) -> Any:
    """Return the model with graphcache applied, or the pipeline with its denoiser replaced.

    ``policy`` is a registered name (``graphcache policies``), a spec string ``"fora{interval=4}"`` or a
    config object; ``options`` are the policy's fields. ``backend``: ``"inductor"`` (default),
    ``"aot_eager"`` or ``"eager"`` (the rewritten graph run op by op: compute steps bit-exact).
    ``self_check`` (default on): on the first call, the rewritten graph's computed step is compared exactly
    with the model on those inputs before anything is cached; a mismatch raises ``SelfCheckError``.
    The model is put in eval mode and runs under ``torch.no_grad`` (inference: outputs carry no gradient).
    ``config``: a file written by ``graphcache tune`` instead of ``policy`` (refused for another model).
    """
    if config is not None and (policy is not DEFAULT_POLICY or options):
        raise PolicyConfigError("give a policy (with options) or a tuned config file, not both")
    tuned = None
    if config is not None:
        from graphcache.tuning.tuned import read_tuned

        tuned = read_tuned(config)  # a missing or malformed file is refused before any model is touched
    policy_config = make_policy(policy, **options) if tuned is None else None

    def policy_for(denoiser: torch.nn.Module) -> PolicyConfig:
        if tuned is not None:
            from graphcache.tuning.tuned import tuned_policy

            return tuned_policy(tuned, str(config), denoiser)
        assert policy_config is not None, "a policy is made when no tuned file is given"
        return policy_config

    if isinstance(model_or_pipeline, torch.nn.Module):
        chosen = policy_for(model_or_pipeline)
        chosen.check_model(model_or_pipeline)
        return CachedModule(model_or_pipeline.eval(), chosen, backend, self_check)
    if hasattr(model_or_pipeline, "components"):
        policies = {}  # every denoiser's policy (a tuned file: checked) before any denoiser is replaced
        for name in denoiser_names(model_or_pipeline):
            denoiser = getattr(model_or_pipeline, name)
            denoiser = denoiser.model if isinstance(denoiser, CachedModule) else denoiser
            policies[id(denoiser)] = policy_for(denoiser)

        def wrap(denoiser: torch.nn.Module) -> torch.nn.Module:
            chosen = policies[id(denoiser)]
            chosen.check_model(denoiser)
            return CachedModule(denoiser, chosen, backend, self_check)

        return optimize_pipeline(model_or_pipeline, wrap)
    raise GraphcacheError(
        f"graphcache.optimize expects a torch.nn.Module or a diffusers pipeline, got {type(model_or_pipeline).__name__}"
    )


def _states(obj: Any) -> list[CacheState]:
    if isinstance(obj, CachedModule):
        return obj.states
    if hasattr(obj, "components") and not isinstance(obj, torch.nn.Module):
        return [s for name in denoiser_names(obj) for s in _states(getattr(obj, name))]
    if isinstance(obj, torch.nn.Module):
        return states_of(getattr(obj, "_orig_mod", obj), compile_call_of(obj))
    raise GraphcacheError(f"expected a module or pipeline optimized by graphcache, got {type(obj).__name__}")


def decisions(obj: Any, context: str | None = None) -> list[str]:
    """Per-call decisions (``'computed'`` / ``'cached'``) of the current generation of an optimized model
    (of a pipeline: of its first denoiser). ``context``: the cache context to report (default: the active
    one once it has run, else the first that ran; see ``CachedModule.decisions``)."""
    if hasattr(obj, "components") and not isinstance(obj, torch.nn.Module):
        obj = getattr(obj, _denoiser_name(obj))
    if isinstance(obj, CachedModule):
        return obj.decisions(context)
    states = _states(obj)
    return states[-1].decisions() if states else []


def reset(obj: Any) -> None:
    """Start a new generation on the next call, in every cache context (also detected in-graph when the
    timestep moves against the model's direction; a pipeline call does it for its denoisers)."""
    if isinstance(obj, CachedModule):
        obj.reset()
    elif hasattr(obj, "components") and not isinstance(obj, torch.nn.Module):
        reset_pipeline(obj)
    else:
        for state in _states(obj):
            state.reset()


def cache_bytes(obj: Any) -> int:
    """Bytes of cached features held by an optimized model."""
    return sum(s.cache_bytes() for s in _states(obj))
