"""Python entry points: ``optimize``, ``decisions``, ``reset``, ``cache_bytes``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from graphcache.backend import make_backend
from graphcache.errors import GraphcacheError, UnsupportedGraphError
from graphcache.pipelines import denoiser_names, optimize_pipeline, reset_pipeline
from graphcache.policies import PolicyConfig, make_policy
from graphcache.state import CacheState, states_of
from graphcache.streams import StateSets, StreamRouter, argument_getter, cache_context

# Graphs one optimized module may compile for one frame (each input shape is a graph; every optimize() of the
# same model class adds entries to its forward): dynamo's default of 8 would fail the 9th resolution.
RECOMPILE_LIMIT = 256


def _unwrapped(compiled: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call ``compiled``; graphcache's own refusal raised inside the backend surfaces as itself, not wrapped
    in dynamo's BackendCompilerFailed (``except GraphcacheError`` catches it)."""
    try:
        return compiled(*args, **kwargs)
    except torch._dynamo.exc.BackendCompilerFailed as err:
        inner = getattr(err, "inner_exception", None)
        if isinstance(inner, GraphcacheError):
            raise inner.with_traceback(None) from None
        raise


class CachedModule(torch.nn.Module):
    """A denoiser whose forward runs the graphcache-rewritten graph (compiled fullgraph, no recompiles).

    Attribute access falls through to the wrapped model (``config``, ``dtype``, ...), so diffusers pipelines
    keep working. State lives in the compiled graph's buffers, one set per stream of calls (``cache_context``,
    or the k-th call at one timestep); ``reset()`` starts over, ``decisions()`` gives the computed/cached
    record. See the README's "Generations and streams".
    """

    def __init__(self, model: torch.nn.Module, policy: PolicyConfig, backend: str = "inductor",
                 self_check: bool = True) -> None:
        super().__init__()
        self.model = model
        self.policy = policy
        self.backend = backend
        self.self_check = self_check
        self.states: list[Any] = []  # one per graph compiled (a new input shape compiles another)
        self.used: list[Any] = []  # the state of the graph the last call ran
        self.pieces: list[str] = []  # with graph breaks: what each graph torch.compile produced holds
        self.contexts = StateSets()  # one cache state per named stream of calls
        self.router = StreamRouter()  # without contexts: the k-th call at one timestep is stream k
        self._explicit = 0  # depth of cache_context blocks the caller opened
        self._learned = False  # where the timestep is among the arguments: looked up after the first call
        compiled = None if getattr(policy, "wraps_model", False) else self._compile(fullgraph=True)
        self.__dict__["_compiled"] = compiled  # not a submodule: parameters stay listed once

    def _compile(self, fullgraph: bool) -> Any:
        backend = make_backend(self.policy, self.backend, self.states, self.self_check,
                               None if fullgraph else self.pieces, self.used)
        return torch.compile(self._modules["model"], backend=backend, fullgraph=fullgraph, dynamic=False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            if getattr(self.policy, "wraps_model", False):  # a policy around the call (CFG-Cache)
                self.__dict__["_compiled"] = self._wrapper_for(args, kwargs)
            routed = self._explicit == 0 and self.router.get is not None
            if routed:
                stream = self.router.stream(args, kwargs)
                if stream is not None:
                    self.contexts.switch(self.states, stream)
            try:
                with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                    out = _unwrapped(self.__dict__["_compiled"], args, kwargs)
                if not self._learned and self.states:
                    self._learned = True
                    self._learn_timestep(args, kwargs)
                return out
            except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError) as err:
                if self.states or self.pieces or getattr(self.policy, "wraps_model", False):
                    raise
                return self._with_graph_breaks(err, args, kwargs)

    def _with_graph_breaks(self, first: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The model does not fit one graph: compile it with graph breaks; the graph that holds the block
        stack is rewritten, the others run as torch.compile makes them. Refused when no graph holds it."""
        import warnings

        from torch._dynamo.utils import counters

        before = dict(counters["graph_break"])
        self.__dict__["_compiled"] = self._compile(fullgraph=False)
        out = _unwrapped(self.__dict__["_compiled"], args, kwargs)
        breaks = [f"{reason.splitlines()[0][:160]} (x{n - before.get(reason, 0)})"
                  for reason, n in counters["graph_break"].items() if n > before.get(reason, 0)]
        name = type(self._modules["model"]).__name__
        reason = str(first).strip().splitlines()[0][:200] if str(first).strip() else type(first).__name__
        if not self.states:
            raise UnsupportedGraphError(
                f"{name} does not fit one graph ({reason}) and none of the {len(self.pieces)} graphs torch.compile "
                f"made of it holds the stack of repeated blocks: {'; '.join(self.pieces)}. The cached region (the "
                "blocks) must be one graph: data-dependent Python inside the blocks (.item(), if on a tensor, "
                f"nonzero) breaks it. Graph breaks: {'; '.join(breaks) or reason}"
            )
        warnings.warn(
            f"graphcache: {name} does not fit one graph; torch.compile made {len(self.pieces)} graphs "
            f"({'; '.join(self.pieces)}). Graph breaks outside the cached region are allowed: "
            f"{'; '.join(breaks) or reason}", stacklevel=3,
        )
        return out

    def _wrapper_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The call-wrapping policy's module for these input shapes, built on their first call: it captures
        the model at those shapes, so another batch (guidance on or off), resolution or dtype gets its own
        wrapper and state instead of failing inside the old one."""
        import torch.utils._pytree as pytree

        from graphcache.cfg_cache import CFGState

        key = tuple((tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x)
                    for x in pytree.tree_leaves((args, kwargs)))
        wrappers = self.__dict__.setdefault("_wrappers", {})
        if key not in wrappers:
            wrapper = self.policy.wrap(self._modules["model"], args, kwargs)  # type: ignore[attr-defined]
            state = CFGState(wrapper)
            self.states.append(state)
            compiled = wrapper if self.backend == "eager" else torch.compile(
                wrapper, backend=self.backend, fullgraph=True, dynamic=False)
            wrappers[key] = (compiled, state)
        compiled, state = wrappers[key]
        self.used[:] = [state]
        return compiled

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    def _learn_timestep(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """After the first compiled call: where the timestep is among the call's arguments (for routing
        streams), and the first call's value."""
        from graphcache.passes.base import analysis

        found = analysis(self.states[0].gm) if hasattr(self.states[0], "gm") else {}
        stack, sources = found.get("block_stack"), found.get("input_sources", {})
        source = sources.get(stack.timestep.name) if stack is not None else None
        if source is None:
            return
        self.router.get = argument_getter(self.model.forward, source)
        if self.router.get is not None and self._explicit == 0:
            self.router.stream(args, kwargs)

    def reset(self) -> None:
        """Start a new generation in every cache context (the next call of each is computed)."""
        self.contexts.reset(self.states)
        self.router.reset()

    @contextlib.contextmanager
    def cache_context(self, name: str) -> Iterator[None]:
        """``with model.cache_context("cond"): ...``: calls inside use the cache state of context ``name``
        (its own generations and decisions), as diffusers' ``CacheMixin.cache_context`` does; automatic
        stream routing by repeated timesteps is off inside."""
        self._explicit += 1
        try:
            with cache_context(self.contexts, self.states, name):
                yield
        finally:
            self._explicit -= 1

    def decisions(self) -> list[str]:
        """The decisions of the current generation of the active cache context, in the graph the last call
        ran (each input shape has its own)."""
        state = self.used[0] if self.used else (self.states[-1] if self.states else None)
        return state.decisions() if state is not None else []

    def cache_bytes(self) -> int:
        return sum(s.cache_bytes() for s in self.states)


def _denoiser_name(pipe: Any) -> str:
    """The pipeline's first denoiser (``decisions(pipe)`` reports it)."""
    return denoiser_names(pipe)[0]


def optimize(model_or_pipeline: Any, policy: str | PolicyConfig = "fora", backend: str = "inductor",
             self_check: bool = True, **options: Any) -> Any:
    """Return the model with graphcache applied, or the pipeline with its denoiser replaced.

    ``policy`` is a registered name (``graphcache policies``), a spec string ``"fora{interval=4}"`` or a
    config object; ``options`` are the policy's fields. ``backend``: ``"inductor"`` (default),
    ``"aot_eager"`` or ``"eager"`` (the rewritten graph run op by op: compute steps bit-exact).
    ``self_check`` (default on): on the first call, the rewritten graph's computed step is compared exactly
    with the model on those inputs before anything is cached; a mismatch raises ``SelfCheckError``.
    """
    config = make_policy(policy, **options)
    if isinstance(model_or_pipeline, torch.nn.Module):
        config.check_model(model_or_pipeline)
        return CachedModule(model_or_pipeline.eval(), config, backend, self_check)
    if hasattr(model_or_pipeline, "components"):
        def wrap(denoiser: torch.nn.Module) -> torch.nn.Module:
            config.check_model(denoiser)
            return CachedModule(denoiser, config, backend, self_check)

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
        return states_of(getattr(obj, "_orig_mod", obj))
    raise GraphcacheError(f"expected a module or pipeline optimized by graphcache, got {type(obj).__name__}")


def decisions(obj: Any) -> list[str]:
    """Per-call decisions (``'computed'`` / ``'cached'``) of the current generation of an optimized model
    (of a pipeline: of its first denoiser, in the active cache context)."""
    if hasattr(obj, "components") and not isinstance(obj, torch.nn.Module):
        obj = getattr(obj, _denoiser_name(obj))
    if isinstance(obj, CachedModule):
        return obj.decisions()
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
