"""Capture a denoiser as an FX GraphModule with ``meta["val"]`` and module-stack metadata.

Two routes: ``torch.export`` (CLI, ONNX, AOTInductor) and the dynamo backend (``torch.compile``), whose
graphs differ (export: aten ops, parameters as ``get_attr``; dynamo: torch-level ops, parameters lifted
to placeholders). Both record which placeholders are user inputs in ``gm.meta["graphcache"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch.fx import _pytree as fx_pytree

from graphcache.errors import UnsupportedGraphError
from graphcache.passes.base import analysis, propagate_meta


def capture_export(model: torch.nn.Module, kwargs: Mapping[str, Any]) -> tuple[fx.GraphModule, list[Any]]:
    """``torch.export`` the model called with ``kwargs``; return the graph and its flat example inputs."""
    try:
        with torch.no_grad():
            program = torch.export.export(model, (), dict(kwargs), strict=False)
    except Exception as err:  # export errors are long; keep the first line and say what to change
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsupportedGraphError(
            f"torch.export could not capture {type(model).__name__}: {first}. graphcache needs a denoiser "
            "that torch.export can trace with tensor inputs (no data-dependent Python control flow)"
        ) from err
    gm = program.module()
    flat = fx_pytree.tree_flatten_spec(((), dict(kwargs)), gm._in_spec)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    analysis(gm)["user_inputs"] = [n.name for n in placeholders]
    analysis(gm)["capture"] = "export"
    propagate_meta(gm, flat)
    return gm, list(flat)


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


def prepare_dynamo_graph(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> fx.GraphModule:
    """A copy of dynamo's graph (dynamo's own must stay untouched) with meta vals and user inputs recorded."""
    import copy

    graph = copy.deepcopy(gm.graph)
    new = fx.GraphModule(gm, graph)
    analysis(new)["user_inputs"] = dynamo_user_inputs(gm, example_inputs)
    analysis(new)["capture"] = "dynamo"
    propagate_meta(new, example_inputs)
    return new
