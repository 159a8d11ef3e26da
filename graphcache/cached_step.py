"""A static schedule's cached steps as a graph of their own, and every call after a generation's first,
called without dynamo's guard check.

The graph ``graphcache.optimize`` compiles holds the whole model, and a call pays for that on every step:
dynamo checks each tensor the graph takes (every block's weights) and Inductor's wrapper handles them all.
On the 512-wide 12-block DiT a FORA cached step took 2.0 ms that way against 0.44 ms for the model's
prologue and epilogue compiled alone (``python benchmarks/cached_step_call_cost.py``).

Where the schedule is static (``Decision.static_rule``), the host knows before a call whether the graph will
compute: the rule's own arithmetic on the clock's values, read from the state buffers
(:mod:`graphcache.host_schedule`). A call the host finds cached runs a second graph derived from the first
(:mod:`graphcache.cached_step_graph`): each cond on the decision replaced by its cached branch, an in-graph
assert that the device decision is "cached" (a host that disagreed raises; it never returns a wrong step), the
clock and every state write kept, and only the inputs that still feed something (the prologue's and
epilogue's weights, the cache). Both graphs read and write the same state buffers, so streams, contexts and
``reset()`` act on both.

The call goes around dynamo, so :class:`CachedStepGraph` checks instead what dynamo's guards would decide for
this graph, against the last computed call that ran the full graph (dynamo checked that one): the same
structure of arguments, equal non-tensor arguments (numbers, strings, None, dtypes, devices; any other object
turns the route off), the same dtype, device, shape and strides for every tensor argument and for every
parameter the cached graph reads (fetched from the module on every call, so weights replaced or changed in
place are the ones used), the module's training flag, and torch's global state (grad mode, autocast, ...).
A call that differs in any of these goes through dynamo as before. Changing what a module's ``forward`` does
without changing those (a new attention processor set between two steps of one generation) is not seen until
the next computed step.

**The full graph without dynamo.** Any other call after a generation's first (every step of a dynamic
policy, a static schedule's computed steps) runs the callable the backend handed dynamo
(``CacheState.compiled_call``) with the graph's inputs gathered the same way and after the same checks:
:meth:`CachedStepGraph.run_direct`. A generation's first call goes through dynamo, whose guards then see
anything changed between generations: the host reads the clock (where it lives on the CPU; on a device the
read would wait for it) and finds a generation starting as the graph would (after ``reset()``, a timestep
that repeats or moves against the generation's direction, each context's first call). The checks
(:mod:`graphcache.call_checks`) fetch the parameters along their module paths as one tree and compare them by
dynamo's own C++ tensor check: 0.2 ms for the 238 inputs of the 512-wide 12-block DiT, where dynamo took 1.1
ms. A TeaCache cached step there went from 2.09 to 1.17 ms, an FBCache one (which runs the first block) from
9.9 to 8.6 ms. ``CachedModule.direct_calls = False`` sends every call through dynamo.

``torch.compile(model, backend="graphcache")`` has no module around the call: there the callable the backend
hands to dynamo asks the host schedule and runs the same compiled graph after dynamo's guards
(``graphcache.backend._running_cached_steps``), as it does for the cached region of a model split by graph
breaks. A cache the cached branch hands back unchanged is not written back.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from graphcache.cached_step_graph import CompiledCachedStep, cached_step_graph, compile_cached_step
from graphcache.call_checks import (
    SIMPLE,
    GraphInputs,
    GraphOutput,
    RecordedCall,
    TensorCheck,
    exported_getter,
    meta,
    module_path,
)
from graphcache.errors import first_line
from graphcache.host_schedule import HostSchedule
from graphcache.passes.base import analysis
from graphcache.state import CacheState
from graphcache.streams import argument_getter

NOT_RUN = object()  # the call is not one for the cached-step graph: run it through dynamo
OFF = "turned off (cached_step_graph = False)"  # why_not where the caller turned the route off (not a note)
DIRECT_OFF = "turned off (direct_calls = False)"


def _from_source(source: str, name: str, forward: Callable[..., Any]) -> tuple[str, Any] | str:
    """How the graph input dynamo names ``source`` is found for a call: ("param", its path from the module)
    or ("user", a getter of (args, kwargs)); else why not."""
    path = module_path(source)
    if path is not None:
        return "param", path
    argument = argument_getter(forward, source)
    if argument is not None:
        return "user", argument
    return f"input {name} comes from {source or 'an unknown source'}"


class CachedStepGraph:
    """The cached-step graph of one rewritten graph's state, the full graph called directly, and the checks
    that stand in for dynamo's guards when either is called without dynamo (module docstring). ``why_not``
    says why the cached-step route is off, ``direct_why_not`` why the direct route is (None: on)."""

    def __init__(self, state: CacheState, model: torch.nn.Module, forward: Callable[..., Any], inner: str,
                 cached_steps: bool = True) -> None:
        self.state = state
        self._model = weakref.ref(model)  # the state outlives no model: graphcache.state keeps states by weight
        self.inner = inner
        self.runs = 0  # cached steps run through the cached-step graph
        self.direct_runs = 0  # calls run by the full graph without dynamo
        self.compiled: CompiledCachedStep | None = state.compiled_cached_step  # the backend's, when it made one
        self.call: RecordedCall | None = None
        self.full_check: TensorCheck | None = None  # the full graph's inputs at the recorded call
        self.cached_check: TensorCheck | None = None  # the cached-step graph's, as compiled
        self.training = model.training
        self.global_state = torch._C._dynamo.guards.GlobalStateGuard()
        self._getters: dict[int, tuple[str, Any] | str] = {}  # input k -> (kind, path or getter) or why not
        self._placeholders = [n.name for n in state.gm.graph.find_nodes(op="placeholder")]
        self.schedule = HostSchedule(state.gm)
        self.direct_why_not = self._direct_route(forward)
        self.why_not: str | None = self.schedule.why_not if cached_steps else OFF
        self._made: tuple[fx.GraphModule, list[int]] | None = None  # made here when the backend made none
        self.cached: GraphInputs | None = None
        if self.why_not is None:
            try:
                if self.compiled is not None:
                    kept = self.compiled.kept
                else:
                    self._made = cached_step_graph(state.gm)
                    kept = self._made[1]
                self.cached = self._plan(kept, forward)
            except ValueError as err:
                self.why_not = str(err)

    def _direct_route(self, forward: Callable[..., Any]) -> str | None:
        """Why the full graph cannot be called without dynamo (None: it can): its inputs found, the clock read
        on the host to tell a generation's first call (which goes through dynamo) from the others."""
        if self.state.compiled_call is None:
            return "the backend kept no callable for the graph"
        if self.state.spec.device.type != "cpu":
            return "the clock is on the device"  # reading it would wait for the device
        try:
            self.full: GraphInputs = self._plan(list(range(self.state.dynamo_inputs)), forward,
                                                self.state.dynamo_sources)
        except ValueError as err:
            return str(err)
        gm = self.state.gm
        self._clock = (gm.get_buffer(str(self.state.spec.last_t.target)), gm.get_buffer("_gc_direction"))
        return None

    def _getter(self, k: int, forward: Callable[..., Any]) -> tuple[str, Any]:
        """How the full graph's input ``k`` is found for a call: ("param", its path from the module) or
        ("user", a getter of (args, kwargs)). Raises ValueError where it cannot be. Not holding ``forward``
        (a bound method holds the model; graphcache.state keeps states by weight)."""
        found = self._getters.get(k)
        if found is None:
            found = self._getters[k] = self._find(k, forward)
        if isinstance(found, str):
            raise ValueError(found)
        return found

    def _find(self, k: int, forward: Callable[..., Any]) -> tuple[str, Any] | str:
        gm, placeholders = self.state.gm, self._placeholders
        analyses = analysis(gm)
        in_spec = getattr(gm, "_in_spec", None) if analyses.capture == "export" else None
        if in_spec is not None:  # torch.export's module: its inputs are the call's flattened leaves
            return "user", exported_getter(in_spec, k)
        return _from_source((analyses.input_sources or {}).get(placeholders[k], ""), placeholders[k], forward)

    def _plan(self, positions: list[int], forward: Callable[..., Any], sources: list[str] | None = None
              ) -> GraphInputs:
        """How to build the inputs at ``positions`` of this state's graph for a call, or (``sources``) of the
        graph dynamo made of it, each named by its dynamo source. Raises ValueError where one cannot be found."""
        params, user = [], []
        for position, k in enumerate(positions):
            if sources is None:
                kind, getter = self._getter(k, forward)
            else:
                found = _from_source(sources[k], f"input {k}", forward)
                if isinstance(found, str):
                    raise ValueError(found)
                kind, getter = found
                k = -1 - k  # the recorded call's ``where`` keeps this graph's inputs apart from this state's
            if kind == "param":
                params.append((position, getter))
            else:
                user.append((position, k, getter))
        return GraphInputs(positions, params, user)

    def record(self, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """After a call through dynamo ran this state's full graph (dynamo's guards passed): the call that
        calls around dynamo are checked against."""
        if self.why_not is not None and self.direct_why_not is not None:
            return
        self.call = self.full_check = self.cached_check = None
        leaves, spec = pytree.tree_flatten((args, kwargs))
        tensors, values = [], []
        for k, leaf in enumerate(leaves):
            if isinstance(leaf, torch.Tensor):
                tensors.append((k, meta(leaf)))
            elif isinstance(leaf, SIMPLE):
                values.append((k, leaf))
            else:
                self.why_not = self.direct_why_not = \
                    f"an argument is a {type(leaf).__name__}, which this route cannot compare"
                return
        where: dict[int, int] = {}
        for route, plan in (("cached", self.cached if self.why_not is None else None),
                            ("direct", self.full if self.direct_why_not is None else None)):
            for _, k, get in plan.user if plan is not None else ():
                value = get(args, kwargs)
                found = next((n for n, leaf in enumerate(leaves) if leaf is value), None)
                if not isinstance(value, torch.Tensor) or found is None:  # that route is off, the other stays
                    why = "an input of the graph is not one of the call's tensors"
                    if route == "cached":
                        self.why_not = why
                    else:
                        self.direct_why_not = why
                    break
                where[k] = found
        if self.why_not is not None and self.direct_why_not is not None:
            return
        ids = self.state.output_ids
        out_leaves, out_spec = pytree.tree_flatten(out)
        built: list[Any] = []
        for leaf in out_leaves:
            if not isinstance(leaf, torch.Tensor):
                built.append(leaf)
            elif id(leaf) in ids:
                built.append(GraphOutput(ids.index(id(leaf))))
            else:
                self.why_not = self.direct_why_not = "an output of the model is not one of the graph's outputs"
                return
        self.call = RecordedCall(spec, tensors, values, where, out_spec, built)
        model = self._model()
        self.training = bool(getattr(model, "training", False))
        self.global_state = torch._C._dynamo.guards.GlobalStateGuard()
        if model is None:
            return
        if self.direct_why_not is None:
            full = self.full.build(model, leaves, where)
            if all(isinstance(x, torch.Tensor) for x in full):
                self.full_check = TensorCheck(full)
            else:
                self.direct_why_not = "an input of the graph is not a tensor"
        if self.why_not is None:
            assert self.cached is not None
            taken = self.cached.build(model, leaves, where)
            if self.compiled is None:  # compiled with the full graph's first call
                self._compile(taken)
            if self.compiled is not None and all(isinstance(x, torch.Tensor) for x in taken) and \
                    [meta(x) for x in taken] == self.compiled.metas:
                self.cached_check = TensorCheck(taken)

    def will_cache(self, t: float) -> bool:
        return self.schedule.will_cache(t)

    def _checked(self, plan: GraphInputs, check: TensorCheck, args: tuple[Any, ...], kwargs: dict[str, Any]
                 ) -> list[Any] | None:
        """``plan``'s inputs for this call where it matches the recorded one (module, grad mode and the rest of
        torch's global state, arguments, every input's metadata), else None."""
        call, model = self.call, self._model()
        if call is None or model is None or model.training != self.training or not self.global_state.check():
            return None
        leaves = call.flat(args, kwargs)
        if leaves is None:
            return None
        inputs = plan.build(model, leaves, call.where)
        return inputs if check(inputs) else None

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any], t: float) -> Any:
        """The call's output from the cached-step graph, or :data:`NOT_RUN` when it is not one for it."""
        check = self.cached_check
        if self.why_not is not None or self.compiled is None or self.cached is None or check is None \
                or not self.will_cache(t):
            return NOT_RUN
        inputs = self._checked(self.cached, check, args, kwargs)
        if inputs is None:
            return NOT_RUN
        if self.schedule.host_t is not None:
            self.schedule.host_t.fill_(t)
        outputs = self.compiled(inputs)
        self.runs += 1
        assert self.call is not None
        return self.call.output(outputs)

    def run_around_dynamo(self, args: tuple[Any, ...], kwargs: dict[str, Any], t: float, cached: bool = True,
                          direct: bool = True) -> Any:
        """The call's output by the cached-step graph (``cached``), else by the full graph without dynamo
        (``direct``), or :data:`NOT_RUN` where it must go through dynamo."""
        out = self.run(args, kwargs, t) if cached else NOT_RUN
        return self.run_direct(args, kwargs, t) if out is NOT_RUN and direct else out

    def run_direct(self, args: tuple[Any, ...], kwargs: dict[str, Any], t: float) -> Any:
        """The call's output from the full graph called without dynamo, or :data:`NOT_RUN` where the call must
        go through dynamo: the first call of a generation (the clock says one starts: after ``reset()``, a
        timestep that repeats or moves against the generation's direction), or one that differs from the
        recorded call."""
        check = self.full_check
        if self.direct_why_not is not None or check is None or self._starts_generation(t):
            return NOT_RUN
        inputs = self._checked(self.full, check, args, kwargs)
        if inputs is None:
            return NOT_RUN
        outputs = self.state.compiled_call(*inputs)
        self.direct_runs += 1
        assert self.call is not None
        return self.call.output(outputs)

    def _starts_generation(self, t: float) -> bool:
        """:func:`graphcache.clock.next_step_directed`'s new generation, on the host, for timestep ``t``."""
        last_t, direction = (b.item() for b in self._clock)
        t32 = torch.tensor(t, dtype=torch.float32).item()  # the clock compares float32 timesteps
        moving = t32 - last_t
        return math.isinf(last_t) or moving == 0 or moving * direction < 0

    def _compile(self, inputs: list[Any]) -> None:
        try:
            self.compiled = compile_cached_step(self.state.gm, self.inner, lambda kept: inputs, self._made)
        except ValueError as err:  # an input that is not a tensor: the route is off, as a note says
            self.why_not = str(err)
        except Exception as err:  # any failure leaves the full graph in charge, said once
            self.why_not = f"compiling the cached-step graph failed ({type(err).__name__}: {first_line(err, 160)})"
            warnings.warn(f"graphcache: {self.why_not}; cached steps run the full graph", stacklevel=4)


def route_counts(full_calls: int, runners: Iterable[CachedStepGraph]) -> dict[str, int]:
    """Calls each way: through dynamo (``full_graph``), by the cached-step graph, by the compiled graph
    without dynamo (``direct``)."""
    runners = list(runners)
    return {"full_graph": full_calls, "cached_step_graph": sum(r.runs for r in runners),
            "direct": sum(r.direct_runs for r in runners)}


def routes_not_taken(runner: CachedStepGraph | None, cached_steps: bool, direct: bool, unrecorded: str
                     ) -> dict[str, str]:
    """Why each way around dynamo is not taken (absent: taken where it applies): turned off by the caller's
    ``cached_step_graph`` / ``direct_calls``, ``unrecorded`` before a call was recorded, else ``runner``'s
    reason."""
    off = {"cached_step_graph": OFF if not cached_steps else unrecorded if runner is None else runner.why_not,
           "direct": DIRECT_OFF if not direct else unrecorded if runner is None else runner.direct_why_not}
    return {route: why for route, why in off.items() if why is not None}
