"""The ``graphcache`` torch.compile backend: capture -> rewrite -> Inductor (or eager / aot_eager).

``torch.compile(model, backend="graphcache", options={"policy": "fora", "interval": 3})`` (default policy
``auto``: FORA, DeepCache on a U-Net); the name is
registered through the ``torch_dynamo_backends`` entry point, so no import is needed. Extra option
``backend``: ``"inductor"`` (default), ``"aot_eager"`` or ``"eager"`` (run the rewritten graph as is).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

from graphcache.backend_model import check_calibration
from graphcache.blockstack import BlockStack
from graphcache.capture import add_side_timestep, has_timestep, prepare_dynamo_graph, refuse_if_it_fails_plainly
from graphcache.errors import (
    DataDependentShapeError,
    GraphcacheError,
    NoStackError,
    PolicyConfigError,
    UnsupportedGraphError,
    first_line,
)
from graphcache.host_timestep import HostTimestep
from graphcache.passes.base import analysis
from graphcache.policies import make_policy
from graphcache.rewrite import INDUCTOR_OPTIONS, compile_lowering, rewrite
from graphcache.state import CacheState, register
from graphcache.streams import GraphStreams

INNER_BACKENDS = ("inductor", "aot_eager", "eager")


def make_backend(
    policy: Any = "auto", inner: str = "inductor", sink: list[CacheState] | None = None, self_check: bool = True,
    pieces: list[str] | None = None, used: list[CacheState] | None = None, owner: object = None,
    side_timestep: torch.Tensor | None = None, root: torch.nn.Module | None = None,
    bucket_graphs: list[tuple[dict[int, tuple[fx.GraphModule, list[Any]]], str]] | None = None,
    host_reader: HostTimestep | None = None, route_streams: bool = False, cached_steps: bool = True,
    **policy_options: Any,
) -> Callable[[fx.GraphModule, Sequence[Any]], Callable[..., Any]]:
    """A dynamo backend applying ``policy``; created states are appended to ``sink`` when given.
    ``self_check``: compare the rewritten graph's first (computed) step with the captured graph on the real
    inputs of the call being compiled, and refuse a mismatch (:mod:`graphcache.self_check`).
    ``pieces``: when given, the model may come in several graphs (graph breaks): a graph without a block stack
    is lowered as it is and the reason is appended there; otherwise such a graph raises :class:`NoStackError`.
    ``used``: when given, each call of a rewritten graph puts its state there first (``used[0]``: the state of
    the graph in use, when several shapes have their own graphs). ``owner``: the ``torch.compile`` call the
    states are registered under (``graphcache.decisions(compiled)`` reports that compilation's only).
    ``side_timestep``: a ``(1,)`` tensor the caller writes the call's timestep into before each call: a graph
    after a graph break that gets only the timestep's embedding from the graph before it reads this instead
    (an extra input, appended to those dynamo passes). ``root``: the module ``torch.compile`` was given; a
    one-graph compile that received another function's graph instead (dynamo skipping the root's ``forward``)
    is refused by name (:func:`_refuse_a_nested_frame`). ``bucket_graphs``: where the caller puts the model's
    captures at the policy's bucket batch sizes before a call that may compile (:mod:`graphcache.buckets`);
    a policy with ``buckets`` and no such captures runs whole batches, with a warning that says why.
    ``host_reader``: where a graph decides on the host (``host_decision``), the reader of the call's timestep,
    shared with the caller's stream router so that one call's timestep is read once. ``route_streams``: the
    graph routes its own calls to streams (:class:`graphcache.streams.GraphStreams`), where no module around
    it does (``torch.compile(model, backend="graphcache")``; :class:`graphcache.CachedModule` routes its calls
    itself). ``cached_steps``: a call the host finds cached under a static schedule runs the graph's cached-step
    graph (:func:`_running_cached_steps`)."""
    if inner not in INNER_BACKENDS:
        raise PolicyConfigError(f"backend={inner!r} is not supported; use one of {INNER_BACKENDS}")
    config = make_policy(policy, **policy_options)
    if getattr(config, "wraps_model", False):
        config.passes()  # raises: such a policy wraps the call, it has no passes for a captured graph

    def graphcache_backend(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        lowering = compile_lowering(inner, host_timestep=True)  # _writing_host_timestep feeds the host clock
        inputs = list(example_inputs)
        if root is not None and pieces is None:
            _refuse_a_nested_frame(gm, root)
        try:
            new = prepare_dynamo_graph(gm, example_inputs)
            if side_timestep is not None and not has_timestep(new):
                inputs.append(side_timestep)
                add_side_timestep(new, inputs)
            if bucket_graphs:
                _attach_buckets(new, *bucket_graphs[0])
            elif getattr(config, "buckets", 0):
                _attach_buckets(new, {}, "torch.compile(backend='graphcache') hands over one graph and cannot "
                                "capture the model at other batch sizes; graphcache.optimize does")
            state = rewrite(new, inputs, config, lowering, self_check, choose=pieces is None)
        except (RuntimeError, TypeError, ValueError) as err:
            if isinstance(err, GraphcacheError):
                raise
            refuse_if_it_fails_plainly(gm, example_inputs, {}, "the model", err)  # the inputs do not fit
            raise
        except (NoStackError, DataDependentShapeError) as err:
            if pieces is None:
                raise
            n_compute = sum(1 for n in gm.graph.nodes if n.op in ("call_function", "call_method"))
            short = err.short if isinstance(err, NoStackError) else "shapes computed from values"
            pieces.append(f"graph {len(pieces) + 1} ({n_compute} compute nodes): {short}")
            return lower(gm, example_inputs, inner)
        register(state, [x for x in example_inputs if isinstance(x, torch.nn.Parameter)], owner)
        if sink is not None:
            sink.append(state)
        if pieces is not None:
            pieces.append(f"graph {len(pieces) + 1}: the cached region ({analysis(new).require(BlockStack).num_blocks} "
                          "blocks)")
        compiled = lower(new, inputs, inner)
        reader = host_reader or HostTimestep()
        if cached_steps:
            compiled = _running_cached_steps(compiled, new, state, inner, reader)
        host = analysis(new).host_decision
        if host is not None and host.conds:
            compiled = _writing_host_timestep(compiled, new, reader)
        if route_streams:
            compiled = _routing(compiled, new, state, reader, example_inputs, owner)
        if len(inputs) > len(example_inputs):
            compiled = _appending(compiled, inputs[len(example_inputs):])
        if used is not None:
            compiled = _recording(compiled, state, used)
        state.compiled_call, state.dynamo_inputs = compiled, len(example_inputs)
        return compiled

    return graphcache_backend


def _attach_buckets(gm: fx.GraphModule, graphs: dict[int, tuple[fx.GraphModule, list[Any]]], reason: str) -> None:
    """Record the captures at the bucket sizes (copies with meta vals) for ``insert_cache_branch``, or why
    there are none."""
    from graphcache.analyses import SampleBuckets

    analysis(gm).sample_buckets = SampleBuckets({size: prepare_dynamo_graph(small, inputs)
                                                 for size, (small, inputs) in graphs.items()}, reason=reason)


def _refuse_a_nested_frame(gm: fx.GraphModule, root: torch.nn.Module) -> None:
    """With ``fullgraph=True`` dynamo hands over the root module's ``forward``, unless that code is marked to be
    skipped: then a function it calls is compiled on its own (its parameters are named from its module, not
    from the root). Caching such a fragment would be wrong, and "no stack found" would not say why."""
    names = set((gm.meta.get("dynamo_flat_name_to_original_fqn") or {}).values())
    if not names:
        return
    own = {name for name, _ in root.named_parameters()} | {name for name, _ in root.named_buffers()}
    if names & own:
        return
    cls = type(root).__name__
    raise UnsupportedGraphError(
        f"torch.compile did not trace {cls}.forward but a function it calls (parameters {sorted(names)[:3]}...): "
        f"dynamo is skipping {cls}.forward, as it does after another torch.compile of this class broke the "
        "graph inside a loop (diffusers' compiled cache hooks do). Call torch._dynamo.reset() before "
        "graphcache.optimize, or do not compile the other copy")


def _running_cached_steps(compiled: Callable[..., Any], gm: fx.GraphModule, state: CacheState, inner: str,
                          reader: HostTimestep) -> Callable[..., Any]:
    """``compiled``, running a call that the host finds cached (a static schedule, :class:`HostSchedule`) by
    the graph's cached-step graph instead (:mod:`graphcache.cached_step`): only the prologue and the epilogue,
    with the inputs they read. Dynamo's guards have passed for the call, so nothing else is checked; the
    cached-step graph asserts that its own clock agrees. It is compiled at the first call (not inside
    dynamo's compilation of the full graph, whose context would claim it) and kept in
    ``state.compiled_cached_step`` for ``graphcache.optimize``'s calls around dynamo. Where the host cannot
    decide, or the graph cannot be made, ``compiled`` as it is."""
    from graphcache.cached_step_graph import compile_cached_step
    from graphcache.host_schedule import HostSchedule

    schedule = HostSchedule(gm)
    timestep = analysis(gm).require(BlockStack).timestep
    if schedule.why_not is not None or timestep is None or timestep.op != "placeholder":
        return compiled
    index = _input_position(gm, timestep.name)
    boxed = getattr(compiled, "_boxed_call", False)
    tried = False

    def run(*args: Any) -> Any:
        nonlocal tried
        one_list = len(args) == 1 and isinstance(args[0], list)  # boxed
        flat = args[0] if one_list else args
        if not tried:
            tried = True
            try:
                state.compiled_cached_step = compile_cached_step(gm, inner, lambda kept: [flat[k] for k in kept])
            except Exception as err:  # any failure leaves the full graph in charge, said once
                warnings.warn(f"graphcache: compiling the cached-step graph failed ({type(err).__name__}: "
                              f"{first_line(err, 160)}); cached steps run the full graph", stacklevel=2)
        cached = state.compiled_cached_step
        if cached is not None and schedule.will_cache(reader.read(flat[index])):
            taken = [flat[k] for k in cached.kept]
            if one_list:
                args[0].clear()  # the boxed convention: the callee frees what it was given
            return cached(taken)
        return compiled(*args)

    run._boxed_call = boxed  # type: ignore[attr-defined]
    return run


def _input_position(gm: fx.GraphModule, name: str) -> int:
    """Where the placeholder ``name`` sits among ``gm``'s inputs (ValueError if it is not one)."""
    return [n.name for n in gm.graph.find_nodes(op="placeholder")].index(name)


def _recording(compiled: Callable[..., Any], state: CacheState, used: list[CacheState]) -> Callable[..., Any]:
    """``compiled``, noting ``state`` as the one in use at each call (dynamo's boxed convention kept)."""
    boxed = getattr(compiled, "_boxed_call", False)

    def run(*args: Any) -> Any:
        used[:] = [state]
        outputs = compiled(*args)
        state.output_ids = [id(x) for x in outputs]  # how graphcache.cached_step rebuilds the model's output
        return outputs

    run._boxed_call = boxed  # type: ignore[attr-defined]
    return run


def _writing_host_timestep(compiled: Callable[..., Any], gm: fx.GraphModule, reader: HostTimestep
                           ) -> Callable[..., Any]:
    """``compiled``, writing the call's timestep, read on the host, into the host clock's CPU buffer before
    each call (``host_decision``: the cond's predicate is computed on the host; called boxed, one list, or
    with the inputs as arguments; they are read before the call may free them)."""
    found = analysis(gm).host_decision
    assert found is not None
    index = _input_position(gm, found.timestep)
    buffer = gm.get_buffer(found.buffer)
    boxed = getattr(compiled, "_boxed_call", False)

    def run(*args: Any) -> Any:
        inputs = args[0] if len(args) == 1 and isinstance(args[0], list) else args  # boxed: one list
        buffer.fill_(reader.read(inputs[index]))
        return compiled(*args)

    run._boxed_call = boxed  # type: ignore[attr-defined]
    return run


def _routing(compiled: Callable[..., Any], gm: fx.GraphModule, state: CacheState, reader: HostTimestep,
             example_inputs: Sequence[Any], owner: object) -> Callable[..., Any]:
    """``compiled``, switching ``state`` to the calling model's state and the call's stream first
    (:class:`GraphStreams`): dynamo reuses this graph for every model of the class compiled with equal options,
    so a model seen for the first time is registered for ``graphcache.decisions`` too. Called boxed (one
    list) or with the inputs as arguments."""
    timestep = analysis(gm).require(BlockStack).timestep
    index = _input_position(gm, timestep.name)
    params = [k for k, x in enumerate(example_inputs) if isinstance(x, torch.nn.Parameter)]
    if not params:
        raise UnsupportedGraphError("the captured graph takes no parameters as inputs, so the models sharing it "
                                    "cannot be told apart; use graphcache.optimize(model)")
    streams = state.streams = GraphStreams(reader, index, params[0])
    streams.model_of(example_inputs[params[0]])
    boxed = getattr(compiled, "_boxed_call", False)

    def run(*args: Any) -> Any:
        inputs = args[0] if len(args) == 1 and isinstance(args[0], list) else args  # boxed: one list
        known = len(streams.models)
        if streams.before_call(state, inputs) == known:  # a model this graph has not served yet
            register(state, [inputs[k] for k in params], owner)
        return compiled(*args)

    run._boxed_call = boxed  # type: ignore[attr-defined]
    return run


def _appending(compiled: Callable[..., Any], extra: list[Any]) -> Callable[..., Any]:
    """``compiled`` called with ``extra`` after the inputs dynamo passes (dynamo's boxed convention kept)."""
    boxed = getattr(compiled, "_boxed_call", False)

    def run(*args: Any) -> Any:
        return compiled([*args[0], *extra]) if boxed else compiled(*args, *extra)

    run._boxed_call = boxed  # type: ignore[attr-defined]
    return run


def lower(gm: fx.GraphModule, example_inputs: Sequence[Any], inner: str) -> Callable[..., Any]:
    """Hand a (rewritten or untouched) graph to the inner backend."""
    if inner == "eager":
        return gm
    if inner == "aot_eager":
        from torch._dynamo.backends.common import aot_autograd
        from torch._functorch.aot_autograd import make_boxed_compiler

        return aot_autograd(fw_compiler=make_boxed_compiler(lambda g, _: g))(gm, example_inputs)  # type: ignore[no-any-return]
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, list(example_inputs), config_patches=INDUCTOR_OPTIONS)  # type: ignore[return-value]


def backend(gm: fx.GraphModule, example_inputs: Sequence[Any], options: dict[str, Any] | None = None,
            **_: Any) -> Callable[..., Any]:
    """Entry point of ``torch.compile(..., backend="graphcache", options={...})``."""
    options = dict(options or {})
    policy = options.pop("policy", "auto")
    inner = options.pop("backend", "inductor")
    self_check = options.pop("self_check", True)
    cached_steps = options.pop("cached_step_graph", True)
    owner = _compile_call()
    config = make_policy(policy, **options)
    check_calibration(config, owner)
    return make_backend(config, inner, self_check=self_check, owner=owner, route_streams=True,
                        cached_steps=cached_steps)(gm, example_inputs)


def _compile_call() -> object:
    """The ``torch.compile`` call compiling now: dynamo calls a named backend from that call's wrapper
    (``_TorchCompileWrapper.__call__``), so it is the caller's ``self``; None if torch changes that."""
    import sys

    caller = sys._getframe(2).f_locals.get("self")
    return caller if isinstance(caller, torch._TorchCompileWrapper) else None
