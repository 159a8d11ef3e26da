"""``graphcache export``: capture, rewrite, functionalize, lower to files, write the plan.

Forms: ``in-graph`` (one graph with the decision inside: ONNX ``If`` / ``torch.cond``; every policy) and
``unrolled`` (a full-step and a cached-step graph picked by the plan's schedule; static policies only).
Formats: ``onnx`` (ONNX Runtime), ``aoti`` (AOTInductor ``.pt2`` packages), ``tensorrt`` (engines built
from the ONNX files; needs the ``tensorrt`` package, so a GPU machine with TensorRT).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from graphcache.errors import ExportError
from graphcache.exported import ExportedCache, optimize_exported
from graphcache.passes.base import analysis
from graphcache.passes.dense_cond_operands import DenseCondOperands
from graphcache.policies import PolicyConfig, make_policy

from .deps import require
from .functional import FunctionalGraph, functionalize
from .plan import FORMATS, FORMS, GraphEntry, Plan
from .unroll import specialize

Log = Callable[[str], None]


@dataclasses.dataclass
class Exported:
    plan: Plan
    directory: Path
    cached: ExportedCache  # the torch rewritten graph the files were made from (the reference for --check)
    graphs: dict[str, FunctionalGraph]


def default_form(policy: PolicyConfig, fmt: str) -> str:
    """TensorRT gets plain engines when the schedule is static; everything else keeps the decision in-graph."""
    return "unrolled" if fmt == "tensorrt" and policy.static else "in-graph"


def schedule_graphs(fg: FunctionalGraph, policy: PolicyConfig, form: str, steps: int) -> tuple[
        dict[str, FunctionalGraph], list[str] | None]:
    if form == "in-graph":
        return {"step": fg}, None
    if not policy.static:
        raise ExportError(f"policy '{policy.name}' decides at run time from the features, so it has no step-unrolled "
                          "form; export it with --form in-graph")
    schedule = ["full" if c else "cached" for c in policy.expected(steps)]
    graphs: dict[str, FunctionalGraph] = {
        name: specialize(fg, name == "full") for name in ("full", "cached") if name in schedule}
    return graphs, schedule


def _write(fmt: str, name: str, graph: FunctionalGraph, example: Mapping[str, Any], directory: Path,
           log: Log) -> str:
    if fmt == "aoti":
        from .aoti import write_package

        log(f"AOTInductor: compiling {name}.pt2")
        return write_package(graph, example, directory / f"{name}.pt2").name
    from .onnx_export import write_onnx

    log(f"ONNX: exporting {name}.onnx")
    onnx_path = write_onnx(graph, example, directory / f"{name}.onnx")
    if fmt == "onnx":
        return onnx_path.name
    from .tensorrt import build_engine

    log(f"TensorRT: building {name}.engine")
    return build_engine(onnx_path, directory / f"{name}.engine").name


def check_exportable(config: PolicyConfig, steps: int) -> None:
    """Refuse, before any capture, a step count or policy option the functional graphs cannot carry."""
    if steps < 1:
        raise ExportError(f"steps must be >= 1, got {steps}")
    buckets = getattr(config, "buckets", 0)
    if buckets:
        raise ExportError(f"{config.name}.buckets={buckets} is not exported (the bucketed compute step gathers "
                          "samples with sort / index_copy inside nested conditionals, which the ONNX / AOTInductor "
                          f"forms do not carry); export {config.name} with buckets=0: compute steps run the whole "
                          "batch")


def plan_graphs(model: torch.nn.Module, example_kwargs: Mapping[str, Any], config: PolicyConfig, fmt: str,
                form: str, steps: int, dense: DenseCondOperands) -> tuple[
                    ExportedCache, dict[str, FunctionalGraph], Plan]:
    """Capture, rewrite, functionalize and (``unrolled``) specialize: the rewritten module, the graphs of the
    plan and the plan, whose entries name no file yet."""
    cached = optimize_exported(model, example_kwargs, config, lowering=(dense,))
    fg = functionalize(cached, example_kwargs)
    timestep = cached.block_stack.timestep.name
    if timestep not in [s.name for s in fg.inputs]:
        raise ExportError(f"the timestep '{timestep}' is not a graph input; the plan needs the input holding it")
    graphs, schedule = schedule_graphs(fg, config, form, steps)
    entries = {name: GraphEntry("", graph.reads(), list(graph.writes)) for name, graph in graphs.items()}
    n_params = sum(p.numel() for p in model.parameters())
    plan = Plan(fmt, form, config.spec(), f"{type(model).__name__} ({n_params} parameters)", timestep,
                fg.inputs, fg.outputs, fg.state, entries, schedule)
    return cached, graphs, plan


def export_model(
    model: torch.nn.Module, example_kwargs: Mapping[str, Any], directory: str | Path,
    policy: str | PolicyConfig = "auto", fmt: str = "onnx", form: str | None = None, steps: int = 50,
    log: Log = lambda _: None, **options: Any,
) -> Exported:
    """Export ``model`` (called with ``example_kwargs``) with ``policy`` to ``directory``; returns the plan."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    config = make_policy(policy, **options)
    form = form or default_form(config, fmt)
    if form not in FORMS:
        raise ExportError(f"unknown form '{form}'; choose one of {', '.join(FORMS)}")
    check_exportable(config, steps)
    for module in {"onnx": ["onnxscript"], "tensorrt": ["onnxscript", "tensorrt"]}.get(fmt, []):
        require(module)  # fail before the slow part when an extra is missing
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    log(f"capturing {type(model).__name__} with torch.export and applying {config.describe()}")
    dense = DenseCondOperands(freeze_concat_operands=fmt == "aoti")  # an Inductor prim: not for ONNX
    cached, graphs, plan = plan_graphs(model, example_kwargs, config, fmt, form, steps, dense)
    choice = analysis(cached.module).policy_choice
    if choice:
        log(choice)
    for name, graph in graphs.items():
        plan.graphs[name] = dataclasses.replace(plan.graphs[name],
                                                file=_write(fmt, name, graph, example_kwargs, directory, log))
    plan.save(directory)
    log(f"wrote {directory}/ ({', '.join(e.file for e in plan.graphs.values())}, graphcache-plan.json)")
    return Exported(plan, directory, cached, graphs)


class _Positional(torch.nn.Module):
    """``model(**kwargs)`` called with positional tensors, returning the prediction tensor only."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        from graphcache.runner import first_tensor

        return first_tensor(self.model(**dict(zip(self.names, args, strict=True))))


def export_uncached(model: torch.nn.Module, example_kwargs: Mapping[str, Any], directory: str | Path,
                    fmt: str = "onnx") -> Plan:
    """The model without caching as a one-graph plan (no state): the baseline of the export benchmarks."""
    from .functional import output_name, spec_of
    from .onnx_export import onnx_file

    if fmt not in ("onnx", "tensorrt"):
        raise ExportError(f"export_uncached writes onnx or tensorrt, not '{fmt}'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = list(example_kwargs)
    module = _Positional(model.eval(), names)
    args = tuple(example_kwargs.values())
    with torch.no_grad():
        sample = module(*args)
    out = output_name(names)
    file = onnx_file(module, args, names, [out], directory / "uncached.onnx").name
    if fmt == "tensorrt":
        from .tensorrt import build_engine

        file = build_engine(directory / file, directory / "uncached.engine").name
    plan = Plan(fmt, "in-graph", "none", type(model).__name__, "", [spec_of(k, v) for k, v in example_kwargs.items()],
                [spec_of(out, sample)], [], {"step": GraphEntry(file, [], [])})
    plan.save(directory)
    return plan
