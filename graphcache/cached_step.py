"""A static schedule's cached steps as a graph of their own, called without dynamo's guard check.

The graph ``graphcache.optimize`` compiles holds the whole model, and a call pays for that on every step:
dynamo checks each tensor the graph takes (every block's weights) and Inductor's wrapper handles them all.
On the 512-wide 12-block DiT a FORA cached step took 2.0 ms that way against 0.44 ms for the model's
prologue and epilogue compiled alone (``python benchmarks/cached_step_call_cost.py``).

Where the schedule is static (``Decision.static_rule``), the host knows before a call whether the graph will
compute: the rule's own arithmetic (:func:`graphcache.clock.scheduled_step`) on the clock's values, read from
the state buffers. A call the host finds cached runs a second graph derived from the first
(:func:`cached_step_graph`): each cond on the decision replaced by its cached branch, an in-graph assert that
the device decision is "cached" (a host that disagreed raises; it never returns a wrong step), the clock and
every state write kept, and only the inputs that still feed something (the prologue's and epilogue's weights,
the cache). Both graphs read and write the same state buffers, so streams, contexts and ``reset()`` act on
both.

The call goes around dynamo, so :class:`CachedStepGraph` checks instead what dynamo's guards would decide for
this graph, against the last computed call that ran the full graph (dynamo checked that one): the same
structure of arguments, equal non-tensor arguments (numbers, strings, None, dtypes, devices; any other object
turns the route off), the same dtype, device, shape and strides for every tensor argument and for every
parameter the cached graph reads (fetched from the module on every call, so weights replaced or changed in
place are the ones used), the module's training flag, and torch's global state (grad mode, autocast, ...).
A call that differs in any of these goes through dynamo as before. Changing what a module's ``forward`` does
without changing those (a new attention processor set between two steps of one generation) is not seen until
the next computed step.

``torch.compile(model, backend="graphcache")`` has no module around the call: there the callable the backend
hands to dynamo asks :class:`HostSchedule` and runs the same compiled graph after dynamo's guards
(``graphcache.backend._running_cached_steps``), as it does for the cached region of a model split by graph
breaks. A cache the cached branch hands back unchanged is not written back (:func:`_drop_unchanged_writes`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from graphcache.analyses import Decision, StateSpec
from graphcache.clock import scheduled_step
from graphcache.errors import first_line
from graphcache.passes.base import analysis
from graphcache.passes.graph_utils import inline_branch
from graphcache.state import CacheState
from graphcache.streams import argument_getter, source_path

NOT_RUN = object()  # the call is not one for the cached-step graph: run it through dynamo
DYNAMIC = "the decision reads values computed in the graph"  # why_not of a dynamic policy (not a note)
MEMO_LIMIT = 4096  # host decisions remembered by (timestep, clock): generations repeat their schedule
_SIMPLE = (type(None), bool, int, float, str, torch.dtype, torch.device)


def cached_step_graph(gm: fx.GraphModule) -> tuple[fx.GraphModule, list[int]]:
    """``gm``'s cached step as a graph of its own (sharing ``gm``'s state buffers and branch modules): every
    cond on the decision replaced by its cached branch, an assert that the device decision is "cached", then
    only the nodes that feed an output or write (the clock, the log, the state a cached step changes).
    Returns the graph and the positions, among ``gm``'s inputs, of those it still takes."""
    found = analysis(gm)
    decision = found.require(Decision)
    preds = {decision.pred.name}
    if found.host_decision is not None and found.host_decision.pred:
        preds.add(found.host_decision.pred)
    new = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    graph = new.graph
    conds = [n for n in graph.find_nodes(op="call_function", target=torch.ops.higher_order.cond)
             if isinstance(n.args[0], fx.Node) and n.args[0].name in preds]
    if not conds:
        raise ValueError("no cond reads the decision")
    device_pred = next(n for n in graph.nodes if n.name == decision.pred.name)
    with graph.inserting_before(conds[0]):
        cached = graph.call_function(torch.ops.aten.logical_not.default, (device_pred,))
        graph.call_function(torch.ops.aten._assert_async.msg, (
            cached, "graphcache: the host found this step cached and the graph's clock did not"))
    for cond in conds:
        inline_branch(new, cond, getattr(new, str(cond.args[2].target)))  # type: ignore[union-attr]
    _drop_unchanged_writes(graph)
    graph.eliminate_dead_code()  # torch.fx's: writes (mutable ops) and asserts stay
    placeholders = list(graph.find_nodes(op="placeholder"))
    kept = [k for k, node in enumerate(placeholders) if node.users]
    for node in placeholders:
        if not node.users:
            graph.erase_node(node)
    graph.lint()
    new.recompile()
    return new, kept


def _drop_unchanged_writes(graph: fx.Graph) -> None:
    """Erase ``copy_(buffer, clone(buffer))`` where nothing else in the graph writes that buffer (through any
    view of it): the cached branch handed the cache back unchanged (state kept out of the branch because a
    compute step shifts it along a ring: FoCa, AB-Cache), and writing it back would move twice its bytes for
    nothing."""
    def base(node: object) -> str | None:
        """The buffer ``node`` is, or is a view of (None: something else)."""
        while isinstance(node, fx.Node) and node.op == "call_function":
            schema = getattr(node.target, "_schema", None)
            if schema is None or not any(r.alias_info is not None for r in schema.returns) or not node.args:
                return None
            node = node.args[0]
        return str(node.target) if isinstance(node, fx.Node) and node.op == "get_attr" else None

    writes: dict[str | None, list[fx.Node]] = {}
    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None)
        mutates = (node.op == "call_function" and schema is not None and schema.is_mutable) or (
            node.op == "call_method" and str(node.target).endswith("_"))
        if mutates and node.args:
            writes.setdefault(base(node.args[0]), []).append(node)
    for name, nodes in writes.items():
        write, *others = nodes
        if name is None or others or write.target is not torch.ops.aten.copy_.default or write.users:
            continue
        dst, source = write.args[0], write.args[1]
        if not isinstance(source, fx.Node) or source.target is not torch.ops.aten.clone.default:
            continue
        read = source.args[0]
        if all(isinstance(x, fx.Node) and x.op == "get_attr" and str(x.target) == name for x in (dst, read)):
            graph.erase_node(write)


def module_getter(source: str) -> Callable[[torch.nn.Module], Any] | None:
    """A function of the traced module returning what dynamo names ``source`` (``L['self'].__dict__['_modules']
    ['proj']._parameters['weight']``); None for a source of another form."""
    parsed = source_path(source)
    if parsed is None or parsed[0] != "self":
        return None
    path = parsed[1]

    def get(module: torch.nn.Module) -> Any:
        value: Any = module
        for attribute, key in path:
            value = getattr(value, key) if attribute else value[key]  # type: ignore[arg-type]
        return value

    return get


def _exported_getter(in_spec: pytree.TreeSpec, k: int) -> Callable[..., Any]:
    """The ``k``-th input of a ``torch.export`` module for a call's ``(args, kwargs)``."""
    import torch.fx._pytree as fx_pytree

    def get(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return fx_pytree.tree_flatten_spec((args, kwargs), in_spec)[k]

    return get


def _meta(t: torch.Tensor) -> tuple[Any, ...]:
    return t.dtype, t.device, t.shape, t.stride()


class _Out(int):
    """Among a model output's leaves: the index of the graph output that is this leaf."""


@dataclasses.dataclass
class _Call:
    """The computed call the cached graph is checked against: its arguments' structure, each leaf's tensor
    metadata or value, where each user input of the graph sits among the leaves, and how the model's output
    is built from the graph's outputs."""

    spec: pytree.TreeSpec
    tensors: list[tuple[int, tuple[Any, ...]]]  # (leaf position, metadata) of each tensor leaf
    values: list[tuple[int, Any]]  # (leaf position, value) of each other leaf
    inputs: list[int]  # for each user input the cached graph takes, its leaf position
    out_spec: pytree.TreeSpec
    out_leaves: list[Any]  # an _Out for a tensor, else the constant

    def flat(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any] | None:
        """The call's leaves when it matches this one, else None."""
        leaves, spec = pytree.tree_flatten((args, kwargs))
        if spec != self.spec:
            return None
        for k, meta in self.tensors:
            if not isinstance(leaves[k], torch.Tensor) or _meta(leaves[k]) != meta:
                return None
        for k, value in self.values:
            if type(leaves[k]) is not type(value) or leaves[k] != value:
                return None
        return leaves

    def output(self, outputs: Sequence[torch.Tensor]) -> Any:
        return pytree.tree_unflatten([outputs[v] if isinstance(v, _Out) else v for v in self.out_leaves],
                                     self.out_spec)


class HostSchedule:
    """A static schedule's decision evaluated on the host, before the call: the rule's own arithmetic
    (:func:`graphcache.clock.scheduled_step`) on the clock's values read from the state buffers (the host clock
    where ``host_decision`` moved the decision there), memoized by (timestep, clock). ``why_not`` says why
    the host cannot decide for this graph (None: it can)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.why_not: str | None = None
        self.memo: dict[tuple[float, ...], bool] = {}
        found = analysis(gm)
        decision = found.decision
        if decision is None or decision.static_rule is None:
            self.why_not = DYNAMIC
            return
        host = found.host_decision
        on_host = host is not None and host.conds > 0
        spec = found.require(StateSpec)
        if not on_host and spec.device.type != "cpu":
            self.why_not = "the clock is on the device and the decision is not moved to the host"
            return
        names = ("_gc_host_step", "_gc_host_last_t", "_gc_host_direction") if on_host else (
            str(spec.step.target), str(spec.last_t.target), "_gc_direction")
        self.clock = [gm.get_buffer(n) for n in names]
        self.host_t = gm.get_buffer(host.buffer) if on_host and host is not None else None
        self.rule, self.reads_timestep = decision.static_rule, decision.reads_timestep

    def will_cache(self, t: float) -> bool:
        """Whether the graph's decision for a call at timestep ``t`` (read on the host) is "cached"."""
        step, last_t, direction = (b.item() for b in self.clock)
        key = (t, step, last_t, direction)
        compute = self.memo.get(key)
        if compute is None:
            if len(self.memo) >= MEMO_LIMIT:
                self.memo.clear()
            value = torch.tensor([t], dtype=torch.float32)
            clock = [b.detach().to("cpu", copy=True) for b in self.clock]
            mask = scheduled_step(self.rule, value, clock[1], clock[0], clock[2], self.reads_timestep)[0]
            compute = self.memo[key] = bool(mask.reshape(-1).any())
        return not compute


@dataclasses.dataclass
class CompiledCachedStep:
    """The cached-step graph as compiled by the inner backend, the positions of its inputs among the full
    graph's, their metadata when compiled, and how many calls it ran (through either route)."""

    fn: Callable[..., Any]
    kept: list[int]
    metas: list[tuple[Any, ...]]
    runs: int = 0

    def __call__(self, inputs: list[Any]) -> Any:
        self.runs += 1
        return self.fn(*inputs)  # what lower() returns takes the inputs as arguments (aot_autograd's forward)


def compile_cached_step(gm: fx.GraphModule, inner: str, select: Callable[[list[int]], list[Any]],
                        made: tuple[fx.GraphModule, list[int]] | None = None) -> CompiledCachedStep:
    """:func:`cached_step_graph` of ``gm`` (``made``: already made) compiled by ``inner``, for the inputs
    ``select(kept)`` returns (kept: the positions of those the graph takes among ``gm``'s), timed in ``gm``'s
    analysis timings. Raises ValueError where an input is not a tensor."""
    from graphcache.backend import lower

    start = time.perf_counter()
    graph, kept = made or cached_step_graph(gm)
    taken = select(kept)
    if not all(isinstance(x, torch.Tensor) for x in taken):
        raise ValueError("an input of the cached-step graph is not a tensor")
    compiled = CompiledCachedStep(lower(graph, taken, inner), kept, [_meta(x) for x in taken])
    analysis(gm).timings.append(("cached-step graph", time.perf_counter() - start, 0.0))
    return compiled


class CachedStepGraph:
    """The cached-step graph of one rewritten graph's state, and the checks that stand in for dynamo's
    guards when it is called directly (module docstring). ``why_not`` says why the route is off (None: on)."""

    def __init__(self, state: CacheState, model: torch.nn.Module, forward: Callable[..., Any], inner: str) -> None:
        self.state = state
        self._model = weakref.ref(model)  # the state outlives no model: graphcache.state keeps states by weight
        self.inner = inner
        self.runs = 0  # cached steps run through this graph
        self.compiled: CompiledCachedStep | None = state.compiled_cached_step  # the backend's, when it made one
        self.call: _Call | None = None
        gm = state.gm
        found = analysis(gm)
        self.schedule = HostSchedule(gm)
        self.why_not: str | None = self.schedule.why_not
        if self.why_not is not None:
            return
        self._made: tuple[fx.GraphModule, list[int]] | None = None  # made here when the backend made none
        try:
            if self.compiled is not None:
                kept = self.compiled.kept
            else:
                self._made = cached_step_graph(gm)
                kept = self._made[1]
        except ValueError as err:
            self.why_not = str(err)
            return
        placeholders = [n.name for n in gm.graph.find_nodes(op="placeholder")]
        sources = found.input_sources or {}
        in_spec = getattr(gm, "_in_spec", None) if found.capture == "export" else None
        self.params: list[tuple[int, Callable[[torch.nn.Module], Any]]] = []  # (input position, getter)
        self.user: list[tuple[int, Callable[..., Any]]] = []  # (input position, getter of (args, kwargs))
        for position, k in enumerate(kept):
            if in_spec is not None:  # torch.export's module: its inputs are the call's flattened leaves
                self.user.append((position, _exported_getter(in_spec, k)))
                continue
            source = sources.get(placeholders[k], "")
            get = module_getter(source)
            argument = None if get is not None else argument_getter(forward, source)
            if get is not None:
                self.params.append((position, get))
            elif argument is not None:
                self.user.append((position, argument))
            else:
                self.why_not = f"input {placeholders[k]} comes from {source or 'an unknown source'}"
                return
        self.n_inputs = len(kept)
        self.training = model.training
        self.global_state = torch._C._dynamo.guards.GlobalStateGuard()

    def record(self, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """After a call through dynamo ran this state's full graph (dynamo's guards passed): the call that
        cached calls are checked against."""
        if self.why_not is not None:
            return
        self.call = None
        leaves, spec = pytree.tree_flatten((args, kwargs))
        tensors, values = [], []
        for k, leaf in enumerate(leaves):
            if isinstance(leaf, torch.Tensor):
                tensors.append((k, _meta(leaf)))
            elif isinstance(leaf, _SIMPLE):
                values.append((k, leaf))
            else:
                self.why_not = f"an argument is a {type(leaf).__name__}, which this route cannot compare"
                return
        inputs = []
        for _, get in self.user:
            value = get(args, kwargs)
            where = next((k for k, leaf in enumerate(leaves) if leaf is value), None)
            if not isinstance(value, torch.Tensor) or where is None:
                self.why_not = "an input of the graph is not one of the call's tensors"
                return
            inputs.append(where)
        ids = self.state.output_ids
        out_leaves, out_spec = pytree.tree_flatten(out)
        built: list[Any] = []
        for leaf in out_leaves:
            if not isinstance(leaf, torch.Tensor):
                built.append(leaf)
            elif id(leaf) in ids:
                built.append(_Out(ids.index(id(leaf))))
            else:
                self.why_not = "an output of the model is not one of the graph's outputs"
                return
        self.call = _Call(spec, tensors, values, inputs, out_spec, built)
        self.training = bool(getattr(self._model(), "training", False))
        self.global_state = torch._C._dynamo.guards.GlobalStateGuard()
        if self.compiled is None:  # compiled with the full graph's first call, not in the middle of a generation
            self._compile(self._inputs(leaves))

    def will_cache(self, t: float) -> bool:
        return self.schedule.will_cache(t)

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any], t: float) -> Any:
        """The call's output from the cached-step graph, or :data:`NOT_RUN` when it is not one for it."""
        call = self.call
        if call is None or self.why_not is not None or self.compiled is None or not self.will_cache(t):
            return NOT_RUN
        model = self._model()
        if model is None or model.training != self.training or not self.global_state.check():
            return NOT_RUN
        leaves = call.flat(args, kwargs)
        if leaves is None:
            return NOT_RUN
        inputs = self._inputs(leaves)
        if any(not isinstance(x, torch.Tensor) or _meta(x) != m for x, m in zip(inputs, self.compiled.metas,
                                                                               strict=True)):
            return NOT_RUN
        if self.schedule.host_t is not None:
            self.schedule.host_t.fill_(t)
        outputs = self.compiled(inputs)
        self.runs += 1
        return call.output(outputs)

    def _inputs(self, leaves: list[Any]) -> list[Any]:
        """The cached-step graph's inputs for a call with these leaves: its arguments from the leaves, the
        parameters it reads fetched from the module now."""
        assert self.call is not None
        inputs: list[Any] = [None] * self.n_inputs
        for (position, _), where in zip(self.user, self.call.inputs, strict=True):
            inputs[position] = leaves[where]
        model = self._model()
        assert model is not None, "called from a call of the model"
        for position, get in self.params:
            inputs[position] = get(model)
        return inputs

    def _compile(self, inputs: list[Any]) -> None:
        try:
            self.compiled = compile_cached_step(self.state.gm, self.inner, lambda kept: inputs, self._made)
        except ValueError as err:  # an input that is not a tensor: the route is off, as a note says
            self.why_not = str(err)
        except Exception as err:  # any failure leaves the full graph in charge, said once
            self.why_not = f"compiling the cached-step graph failed ({type(err).__name__}: {first_line(err, 160)})"
            warnings.warn(f"graphcache: {self.why_not}; cached steps run the full graph", stacklevel=4)
