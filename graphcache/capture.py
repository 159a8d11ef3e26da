"""Capture a denoiser as an FX GraphModule with ``meta["val"]`` and module-stack metadata.

Two routes: ``torch.export`` (CLI, ONNX, AOTInductor) and the dynamo backend (``torch.compile``), whose
graphs differ (export: aten ops, parameters as ``get_attr``; dynamo: torch-level ops, parameters lifted
to placeholders). Both record which placeholders are user inputs in ``gm.meta["graphcache"]``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch.fx import _pytree as fx_pytree

from graphcache.errors import DataDependentShapeError, UnsupportedGraphError, first_line
from graphcache.passes.base import analysis, propagate_meta

# ``GRAPHCACHE_CAPTURE_CACHE=1`` (the test suite sets it): captures of a model already captured in this process
# (same class, module tree, weights, input shapes / dtypes and non-tensor inputs) are copies of the first.
_CAPTURES: dict[tuple[Any, ...], fx.GraphModule] = {}
_REUSE = [0]  # depth of reuse_captures() blocks


@contextlib.contextmanager
def reuse_captures() -> Iterator[None]:
    """Inside the block, captures are reused as under ``GRAPHCACHE_CAPTURE_CACHE=1`` (``graphcache tune``
    rewrites one model many times); the copies kept are dropped when the outermost block ends."""
    _REUSE[0] += 1
    try:
        yield
    finally:
        _REUSE[0] -= 1
        if _REUSE[0] == 0 and os.environ.get("GRAPHCACHE_CAPTURE_CACHE") != "1":
            _CAPTURES.clear()


def _capture_key(model: torch.nn.Module, kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    from graphcache.calibration import fingerprint

    leaves = tuple((k, (tuple(v.shape), v.dtype, v.device.type) if isinstance(v, torch.Tensor) else repr(v))
                   for k, v in sorted(kwargs.items()))
    cls = type(model)
    return (cls, repr(model), model.training, fingerprint(model), leaves)


def capture_export(model: torch.nn.Module, kwargs: Mapping[str, Any]) -> tuple[fx.GraphModule, list[Any]]:
    """``torch.export`` the model called with ``kwargs``; return the graph and its flat example inputs."""
    import copy
    import time

    start = time.perf_counter()
    reuse = _REUSE[0] > 0 or os.environ.get("GRAPHCACHE_CAPTURE_CACHE") == "1"
    key = _capture_key(model, kwargs) if reuse else None
    if key is not None and key in _CAPTURES:
        return _prepared(copy.deepcopy(_CAPTURES[key]), model, kwargs, "capture (torch.export, cached)", start)
    try:
        with torch.no_grad():
            program = torch.export.export(model, (), dict(kwargs), strict=False)
    except Exception as err:  # export errors are long; keep the first line and say what to change
        refuse_if_it_fails_plainly(model, (), kwargs, type(model).__name__, err)  # the inputs do not fit
        raise UnsupportedGraphError(
            f"torch.export could not capture {type(model).__name__}: {first_line(err)}. graphcache needs a denoiser "
            "that torch.export can trace with tensor inputs (no data-dependent Python control flow)"
        ) from err
    gm = program.module()
    if key is not None:
        _CAPTURES[key] = copy.deepcopy(gm)
    return _prepared(gm, model, kwargs, "capture (torch.export)", start)


def _prepared(gm: fx.GraphModule, model: torch.nn.Module, kwargs: Mapping[str, Any], what: str,
              start: float) -> tuple[fx.GraphModule, list[Any]]:
    """An exported graph with its user inputs, meta vals and capture time recorded; its flat inputs."""
    import time

    flat = fx_pytree.tree_flatten_spec(((), dict(kwargs)), gm._in_spec)
    analysis(gm).user_inputs = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    analysis(gm).capture = "export"
    propagate_shapes(gm, flat, type(model).__name__)
    analysis(gm).timings = [(what, time.perf_counter() - start, 0.0)]
    return gm, list(flat)


def refuse_if_it_fails_plainly(fn: Any, args: Sequence[Any], kwargs: Mapping[str, Any], what: str,
                               cause: Exception) -> None:
    """After graphcache failed on a call: run ``fn`` plainly on the same inputs; when that fails too, the inputs
    do not fit the model (a float64 latent into float32 weights, a missing argument): say so, not the trace."""
    try:
        with torch.no_grad():
            fn(*args, **kwargs)
    except Exception as plain:
        raise UnsupportedGraphError(
            f"{what} fails on these inputs even without graphcache ({type(plain).__name__}: "
            f"{first_line(plain, 200)}); check the inputs' names, shapes and dtypes against the model's forward"
        ) from cause


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[Any], what: str) -> None:
    """:func:`propagate_meta`, with data-dependent shapes (``nonzero``, ``.item()`` feeding a shape, boolean
    masks) refused by name: graphcache's passes need every value's shape at capture time. An operation that
    fails on the inputs (a dtype or shape that does not fit the model) is refused as such."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    try:
        propagate_meta(gm, example_inputs)
    except (DynamicOutputShapeException, DataDependentOutputException, GuardOnDataDependentSymNode) as err:
        where = next((line.strip() for line in str(err).splitlines() if line.strip().startswith("While executing")),
                     "")
        raise DataDependentShapeError(
            f"{what} computes a shape from tensor values ({type(err).__name__}: "
            f"{first_line(err, 120)}; {where[:200]}): graphcache's passes need static shapes in "
            "the captured graph. Build such masks / indices outside the denoiser, or from sizes, not values"
        ) from err
    except (RuntimeError, TypeError, ValueError) as err:
        raise UnsupportedGraphError(
            f"{what}'s operations fail on these inputs ({type(err).__name__}: {first_line(err, 200)}); check the "
            "inputs' names, shapes and dtypes against the model's forward (a float64 latent into float32 weights, ...)"
        ) from err


def dynamo_user_inputs(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> list[str]:
    """Placeholders of a dynamo graph that are user inputs, not the module's lifted parameters/buffers."""
    names = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, example_inputs, strict=False):
        grapharg = node.meta.get("grapharg")
        source = grapharg.source.name if grapharg is not None else ""
        if isinstance(value, torch.nn.Parameter) or source.startswith("L['self']"):
            continue
        names.append(node.name)
    return names


def input_sources(gm: fx.GraphModule) -> dict[str, str]:
    """Each placeholder's dynamo source (``L['timestep']``): where in the call its value comes from."""
    sources = {}
    for node in gm.graph.find_nodes(op="placeholder"):
        grapharg = node.meta.get("grapharg")
        if grapharg is not None and getattr(grapharg, "source", None) is not None:
            sources[node.name] = grapharg.source.name
    return sources


def prepare_dynamo_graph(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> fx.GraphModule:
    """A copy of dynamo's graph (dynamo's own must stay untouched) with meta vals and user inputs recorded."""
    import copy

    graph = copy.deepcopy(gm.graph)
    new = fx.GraphModule(gm, graph)
    analysis(new).user_inputs = dynamo_user_inputs(gm, example_inputs)
    analysis(new).input_sources = input_sources(gm)
    analysis(new).capture = "dynamo"
    propagate_shapes(new, example_inputs, "the model")
    return new


SIDE_TIMESTEP = "gc_side_timestep"


def has_timestep(gm: fx.GraphModule) -> bool:
    """Whether one of the graph's user inputs can be its timestep (:func:`passes.find_block_stack.find_timestep`)."""
    from graphcache.errors import NoStackError
    from graphcache.passes.graph_utils import find_timestep

    try:
        find_timestep(gm, analysis(gm).user_inputs or [])
    except NoStackError:
        return False
    return True


def add_side_timestep(gm: fx.GraphModule, inputs: Sequence[Any]) -> None:
    """A last input ``gc_side_timestep`` (``inputs[-1]``: the call's timestep, written by the caller): the
    timestep of a graph that only receives its embedding from the graph before a graph break."""
    placeholders = list(gm.graph.find_nodes(op="placeholder"))
    where = gm.graph.inserting_after(placeholders[-1]) if placeholders else gm.graph.inserting_before(None)
    with where:
        gm.graph.placeholder(SIDE_TIMESTEP)
    gm.recompile()
    analysis(gm).user_inputs = [*(analysis(gm).user_inputs or []), SIDE_TIMESTEP]
    analysis(gm).side_timestep = SIDE_TIMESTEP
    propagate_shapes(gm, inputs, "the model")
