"""``CachedModule``: a denoiser whose calls run the graphcache-rewritten graph, with one cache state per stream
of calls, cached steps by their own graph and calls around dynamo (what ``graphcache.optimize`` returns for a
module)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from graphcache.backend import make_backend
from graphcache.cached_step import NOT_RUN, OFF, CachedStepGraph, route_counts, routes_not_taken
from graphcache.errors import GraphcacheError, UnsupportedGraphError, first_line
from graphcache.host_schedule import DYNAMIC
from graphcache.policies import PolicyConfig
from graphcache.state import CacheState
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

    With a static schedule, a call the host finds cached runs a second graph holding only what a cached step
    reads (:mod:`graphcache.cached_step`); ``cached_step_graph = False``, set before the first call, runs every call
    through the one graph. After a generation's first call, which goes through dynamo, the others call the
    compiled graph directly after the same checks (``direct_calls = False``: every call through dynamo).
    """

    cached_step_graph = True
    direct_calls = True

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
        self._warmed = False  # one eager call made after a failed capture (see _after_capture_failed)
        self.notes: list[str] = []  # how the model was captured, when not plainly
        self._side_t: torch.Tensor | None = None  # with graph breaks: the call's timestep, written before each call
        self._buckets: list[Any] = []  # the policy's bucket captures for the call being compiled (graphcache.buckets)
        self._bucket_shapes: set[Any] = set()  # input signatures whose bucket captures were made
        self._cached_step_notes: set[str] = set()  # why a state's cached-step graph is off, each said once
        self.full_calls = 0  # calls through dynamo (the others: routes())
        compiled = None if getattr(policy, "wraps_model", False) else self._compile(fullgraph=True)
        self.__dict__["_compiled"] = compiled  # not a submodule: parameters stay listed once

    def _compile(self, fullgraph: bool) -> Any:
        backend = make_backend(self.policy, self.backend, self.states, self.self_check,
                               None if fullgraph else self.pieces, self.used,
                               side_timestep=None if fullgraph else self._side_t, root=self._modules["model"],
                               bucket_graphs=self._buckets, host_reader=self.router.reader,
                               cached_steps=self.cached_step_graph)
        return torch.compile(self._modules["model"], backend=backend, fullgraph=fullgraph, dynamic=False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            wraps = getattr(self.policy, "wraps_model", False)
            if wraps and self.router.get is None:
                self.router.get = _timestep_getter(self.model)
            stream = self.router.stream(args, kwargs) if self._explicit == 0 and self.router.get else None
            if wraps:  # a policy around the call (CFG-Cache): a wrapper per input signature and stream
                self.__dict__["_compiled"] = self._wrapper_for(args, kwargs, self._cfg_stream(stream))
            elif stream is not None:
                self.contexts.switch(self.states, stream)
            if not wraps:
                out = self._cached_step(args, kwargs)
                if out is not NOT_RUN:
                    self.contexts.note_call()
                    return out
            try:
                return self._call_compiled(args, kwargs)
            except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError) as err:
                if self.states or self.pieces or wraps:
                    raise
                return self._after_capture_failed(err, args, kwargs)

    def _call_compiled(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._side_t is not None:
            self._fill_side_timestep(args, kwargs)
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            self._capture_buckets(args, kwargs)
            try:
                out = _unwrapped(self.__dict__["_compiled"], args, kwargs)
            finally:
                self._buckets.clear()
        self.full_calls += 1
        self.contexts.note_call()
        if not self._learned and self.states:
            self._learned = True
            self._note_policy_choice()
            self._learn_timestep(args, kwargs)
        self._record_call(args, kwargs, out)
        return out

    def _cached_step(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A call the host finds cached, run by the cached-step graph of the state the last call used, or any
        other call after a generation's first, run by the full graph without dynamo
        (:mod:`graphcache.cached_step`); :data:`NOT_RUN` when the call must go through dynamo."""
        if not self.used or self.pieces or self._side_t is not None or self.router.get is None:
            return NOT_RUN
        runner = getattr(self.used[0], "cached_step", None)
        if runner is None or runner.call is None or not (self.cached_step_graph or self.direct_calls):
            return NOT_RUN
        t = self.router.get(args, kwargs)
        if not isinstance(t, torch.Tensor | int | float):
            return NOT_RUN
        value = self.router.reader.read(t)
        return runner.run_around_dynamo(args, kwargs, value, self.cached_step_graph, self.direct_calls)

    def _record_call(self, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """After a call through dynamo: the call its state's cached-step graph is checked against (none where
        the timestep cannot be read from a call: the host could not decide, and a note says so already)."""
        if (not (self.cached_step_graph or self.direct_calls) or not self.used or self.pieces
                or self._side_t is not None or self.router.get is None):
            return
        state = self.used[0]
        if not isinstance(state, CacheState):
            return
        if state.cached_step is None:
            state.cached_step = CachedStepGraph(state, self.model, self.model.forward, self.backend,
                                                cached_steps=self.cached_step_graph)
        runner = state.cached_step
        runner.record(args, kwargs, out)
        if runner.why_not is not None and runner.why_not not in self._cached_step_notes:
            self._cached_step_notes.add(runner.why_not)
            if runner.why_not not in (DYNAMIC, OFF):
                self.notes.append(f"cached steps run the full graph: {runner.why_not}")

    def _capture_buckets(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """On the first call of an input signature, with a policy that has ``buckets``: the model's captures at
        the bucket batch sizes, for the backend compiling this call (:mod:`graphcache.buckets`)."""
        from graphcache.buckets import capture_buckets

        count = getattr(self.policy, "buckets", 0)
        key = _signature(args, kwargs)
        if not count or key in self._bucket_shapes:
            return
        self._bucket_shapes.add(key)
        model = self._modules["model"]
        assert model is not None
        graphs, reason = capture_buckets(model, args, kwargs, count)
        if reason:
            self.notes.append(f"buckets not captured: {reason}")
        self._buckets[:] = [(graphs, reason)]

    def _after_capture_failed(self, err: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One graph failed. Models that fill a cache on their first call with Python the compiler cannot
        follow (Z-Image's rope table under ``with torch.device("cpu")``) fit one graph from their second call:
        one eager call, then the capture again. Otherwise graph breaks (:meth:`_with_graph_breaks`)."""
        if not self._warmed:
            self._warmed = True
            self.model(*args, **kwargs)
            try:
                out = self._call_compiled(args, kwargs)
                self.notes.append(f"one graph after a first eager call (the first capture failed: "
                                  f"{first_line(err, 160)})")
                return out
            except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError) as again:
                if self.states or self.pieces:
                    raise
                err = again
        return self._with_graph_breaks(err, args, kwargs)

    def _with_graph_breaks(self, first: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The model does not fit one graph: compile it with graph breaks; the graph that holds the block
        stack is rewritten, the others run as torch.compile makes them. Refused when no graph holds it."""
        import warnings

        from torch._dynamo.utils import counters

        before = dict(counters["graph_break"])
        self._offer_side_timestep(args, kwargs)
        self.__dict__["_compiled"] = self._compile(fullgraph=False)
        out = self._call_compiled(args, kwargs)
        breaks = [f"{reason.splitlines()[0][:160]} (x{n - before.get(reason, 0)})"
                  for reason, n in counters["graph_break"].items() if n > before.get(reason, 0)]
        name = type(self._modules["model"]).__name__
        reason = first_line(first, 200)
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

    def _cfg_stream(self, routed: str | None) -> str:
        """The stream of a call-wrapping policy's call: the k-th call at one timestep is stream k (Heun's
        stages), each with its own wrapper state. Inside a cache context other than ``"cond_uncond"`` the
        pipeline runs each guidance branch as a call of its own: there is no guided batch to split."""
        if self._explicit == 0:
            return routed or ""
        name = self.contexts.active
        if name != "cond_uncond":
            raise UnsupportedGraphError(
                f"policy {self.policy.name!r} needs classifier-free guidance as one call on the guided batch "
                f"(conditional and unconditional halves); this call runs in cache_context({name!r}): the pipeline "
                "calls the denoiser once per guidance branch. Use a graph policy (fora, fbcache, taylorseer, ...): "
                "each cache context gets its own cache.")
        return name

    def _offer_side_timestep(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """With graph breaks the graph holding the blocks may get only the timestep's embedding from the graph
        before it: the call's timestep argument (found by its name) is then written into a tensor that graph
        reads as an extra input, so its decisions still see the timestep."""
        get = _timestep_getter(self.model)
        t = get(args, kwargs) if get is not None else None
        if isinstance(t, torch.Tensor) and t.numel() > 0:
            self.router.get = get
            self._side_t = torch.zeros(1, dtype=torch.float32, device=t.device)
            if self._explicit == 0:
                self.router.stream(args, kwargs)  # this first call counts for the repeated-timestep rule

    def _fill_side_timestep(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        t = self.router.get(args, kwargs) if self.router.get is not None else None
        if not isinstance(t, torch.Tensor):
            raise UnsupportedGraphError("graphcache reads this model's timestep from its argument, which this call "
                                        f"does not pass as a tensor (got {type(t).__name__})")
        assert self._side_t is not None
        self._side_t.copy_(t.detach().reshape(-1).max().to(torch.float32))  # on the device: no host sync

    def _wrapper_for(self, args: tuple[Any, ...], kwargs: dict[str, Any], stream: str = "") -> Any:
        """The call-wrapping policy's module for these input shapes and this stream, built on their first
        call: it captures the model at those shapes, so another batch (guidance on or off), resolution or
        dtype gets its own wrapper and state instead of failing inside the old one."""
        from graphcache.cfg_cache import CFGState

        key = (stream, *_signature(args, kwargs))
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

    def _note_policy_choice(self) -> None:
        """A policy that chose another for the graph (``auto``: DeepCache on a U-Net) says so in ``notes``."""
        from graphcache.passes.base import analysis

        self.notes.extend(c for c in (analysis(s.gm).policy_choice for s in self.states if hasattr(s, "gm")) if c)

    def _learn_timestep(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """After the first compiled call: where the timestep is among the call's arguments (for routing
        streams), and the first call's value."""
        from graphcache.passes.base import analysis

        if self._side_t is not None:
            return  # the timestep is read from its argument by name (_offer_side_timestep)
        if not hasattr(self.states[0], "gm"):
            return
        found = analysis(self.states[0].gm)
        stack, sources = found.block_stack, found.input_sources or {}
        source = sources.get(stack.timestep.name) if stack is not None else None
        self.router.get = None if source is None else argument_getter(self.model.forward, source)
        if self.router.get is None:
            import warnings

            note = (f"the timestep ({source or 'not one of the arguments'}) cannot be read from a call, so calls "
                    "without cache_context are not told apart by their timestep: run CFG as two calls (and "
                    "Heun's stages) in cache_context('cond') / ('uncond')")
            self.notes.append(note)
            warnings.warn(f"graphcache: {note}", stacklevel=4)
        elif self._explicit == 0:
            self.router.stream(args, kwargs)

    def reset(self) -> None:
        """Start a new generation in every cache context (the next call of each is computed)."""
        self.contexts.reset(self.states)
        self.router.reset()

    @contextlib.contextmanager
    def cache_context(self, name: str, **fields: Any) -> Iterator[None]:
        """``with model.cache_context("cond"): ...``: calls inside use the cache state of context ``name``
        (its own generations and decisions), as diffusers' ``CacheMixin.cache_context`` does; automatic
        stream routing by repeated timesteps is off inside. ``fields``: those of diffusers' ``CacheContext``
        (``step_index``, ``num_inference_steps``, ``timestep``, ``sigma``); ``step_index=0`` starts a new
        generation in this context."""
        self._explicit += 1
        try:
            with cache_context(self.contexts, self.states, name, **fields):
                yield
        finally:
            self._explicit -= 1

    def decisions(self, context: str | None = None) -> list[str]:
        """The decisions of the current generation of cache context ``context`` (default: the active one once
        it has run a call, else the first context that ran), in the graph the last call ran (each input
        shape has its own)."""
        state = self.used[0] if self.used else (self.states[-1] if self.states else None)
        if state is None:
            return []
        name, active = self.contexts.reported(context), self.contexts.active
        if name == active:
            return state.decisions()
        self.contexts.switch(self.states, name)
        try:
            return state.decisions()
        finally:
            self.contexts.switch(self.states, active)

    def cache_bytes(self) -> int:
        return sum(s.cache_bytes() for s in self.states)

    def routes(self) -> dict[str, int]:
        """How many calls ran each way so far: through dynamo (``full_graph``), by a cached-step graph, by the
        compiled graph without dynamo (``direct``); every input signature's graph counted."""
        return route_counts(self.full_calls, (s.cached_step for s in self.states
                                              if getattr(s, "cached_step", None) is not None))

    def routes_off(self) -> dict[str, str]:
        """Why a way around dynamo is not taken by the graph the last call ran, by route (absent: taken)."""
        return routes_not_taken(getattr(self.used[0] if self.used else None, "cached_step", None),
                                self.cached_step_graph, self.direct_calls, "no call recorded (the timestep cannot "
                                "be read, graph breaks, or a policy around the call)")


def _signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """A call's input signature: each argument leaf's shape and dtype (its type when not a tensor)."""
    import torch.utils._pytree as pytree

    return tuple((tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x)
                 for x in pytree.tree_leaves((args, kwargs)))


def _timestep_getter(model: torch.nn.Module) -> Any:
    """For a call-wrapping policy (no graph to read it from): the timestep argument, found by its name."""
    import inspect

    from graphcache.cfg_cache import TIMESTEP_NAMES

    names = inspect.signature(model.forward).parameters  # the wrapped forward's, behind a decorator
    found = next((n for n in TIMESTEP_NAMES if n in names), None)
    return None if found is None else argument_getter(model.forward, f"L['{found}']")
