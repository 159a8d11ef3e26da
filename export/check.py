"""``graphcache export --check``: exported graphs against torch, graph by graph and over whole generations.

1. Per graph (polygraphy): each exported graph runs on the inputs and cache state it sees in a real
   generation (the first step it runs, and a later one), next to the torch functional graph; polygraphy's
   comparator checks every output (features and state) within ``atol``/``rtol``.
2. Per generation: the exported runner and the torch rewritten graph run the same timesteps twice (two
   generations, so the reset at a generation boundary is checked too): the decisions must be identical
   and each step's output within ``atol``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from graphcache.runner import first_tensor

from .build import Exported
from .deps import require
from .functional import FunctionalGraph, state_input
from .runtime import PlanRunner, load

Inputs = Callable[[float], dict[str, Any]]


@dataclasses.dataclass
class GraphCheck:
    graph: str
    step: int
    backend: str
    max_abs: float
    passed: bool


@dataclasses.dataclass
class StepCheck:
    generation: int
    step: int
    torch_decision: str
    export_decision: str
    max_abs: float


@dataclasses.dataclass
class CheckReport:
    atol: float
    graphs: list[GraphCheck]
    steps: list[StepCheck]

    @property
    def max_abs(self) -> float:
        return max([s.max_abs for s in self.steps] + [0.0])

    @property
    def decisions_match(self) -> bool:
        return all(s.torch_decision == s.export_decision for s in self.steps)

    @property
    def passed(self) -> bool:
        return self.decisions_match and self.max_abs <= self.atol and all(g.passed for g in self.graphs)

    def summary(self) -> str:
        lines = [f"graph {g.graph} (step {g.step}) vs torch on {g.backend}: max |diff| {g.max_abs:.2e} "
                 f"{'ok' if g.passed else 'FAILED'}" for g in self.graphs]
        computed = sum(s.export_decision == "computed" for s in self.steps)
        lines.append(f"generations: {len(self.steps)} steps ({computed} computed), decisions "
                     f"{'identical' if self.decisions_match else 'DIFFER'}, max |diff| {self.max_abs:.2e} "
                     f"(atol {self.atol:g}): {'PASSED' if self.passed else 'FAILED'}")
        return "\n".join(lines)


def _feeds(exported: Exported, inputs: Inputs, timesteps: list[float]) -> list[tuple[str, int, dict[str, Any]]]:
    """(graph, step, feed) for the first step each graph runs and for one later step, from a torch run."""
    plan = exported.plan
    state = {s.name: s.initial() for s in plan.state}
    seen: dict[str, int] = {}
    feeds = []
    with torch.no_grad():
        for step, t in enumerate(timesteps):
            name = plan.schedule[step] if plan.schedule else "step"
            graph = exported.graphs[name]
            kwargs = inputs(t)
            feed: dict[str, Any] = OrderedDict(zip([s.name for s in plan.inputs], graph.flat_inputs(kwargs),
                                                   strict=True))
            feed.update({state_input(k): v for k, v in state.items()})
            if seen.get(name, 0) < 2 and (step == 0 or seen.get(name, 0) == 0 or step >= len(timesteps) // 2):
                feeds.append((name, step, feed))
                seen[name] = seen.get(name, 0) + 1
            results = graph.module(*feed.values())
            state.update(zip(graph.writes, results[len(plan.outputs):], strict=True))
    return feeds


class _TorchRunner:
    """A polygraphy runner for a torch functional graph (CPU; polygraphy's own PytRunner assumes CUDA)."""

    def __new__(cls, graph: FunctionalGraph, full_feed: dict[str, Any]) -> Any:
        base = require("polygraphy.backend.base").BaseRunner

        class TorchRunner(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                super().__init__(name="torch", prefix="torch-runner")

            def activate_impl(self) -> None:
                pass

            def deactivate_impl(self) -> None:
                pass

            def get_input_metadata_impl(self) -> Any:
                meta = require("polygraphy.common").TensorMetadata()
                for name, value in full_feed.items():
                    meta.add(name, dtype=value.numpy().dtype, shape=tuple(value.shape))
                return meta

            def infer_impl(self, feed_dict: dict[str, Any]) -> Any:
                args = [torch.as_tensor(feed_dict[k]) if k in feed_dict else v for k, v in full_feed.items()]
                with torch.no_grad():
                    values = graph.module(*args)
                self.inference_time = 0.0
                return OrderedDict((n, v.numpy()) for n, v in zip(graph.output_names, values, strict=True))

        return TorchRunner()


def _polygraphy_onnx(path: Path, graph: FunctionalGraph, feed: dict[str, Any], atol: float, rtol: float
                     ) -> tuple[float, bool]:
    require("polygraphy")
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator
    from polygraphy.comparator.compare import SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    ort_runner = OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]))
    with ort_runner:
        wanted = set(ort_runner.get_input_metadata().keys())
    data = [OrderedDict((k, v.numpy()) for k, v in feed.items() if k in wanted)]
    with warnings.catch_warnings():  # polygraphy's relative error divides by exact zeros
        warnings.simplefilter("ignore", RuntimeWarning)
        results = Comparator.run([ort_runner, _TorchRunner(graph, feed)], data_loader=data)
        passed = bool(Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol)))
    (_, (ort_out,)), (_, (torch_out,)) = results
    return max(_diff(ort_out[k], torch_out[k]) for k in graph.output_names), passed


def _diff(a: Any, b: Any) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.is_floating_point():
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    return 0.0 if torch.equal(a, b) else float("inf")


def _direct(runner: PlanRunner, name: str, graph: FunctionalGraph, feed: dict[str, Any], atol: float) -> tuple[
        float, bool]:
    """Run one graph of a backend whose state handles are torch tensors (AOTInductor, TensorRT)."""
    device = runner.backend.allocate(runner.plan.state[0].name).device
    state = {k.removeprefix("gc_"): v.to(device).clone() for k, v in feed.items() if k.startswith("gc_")}
    outputs, written = runner.backend.run(name, [feed[s.name] for s in runner.plan.inputs], state)
    with torch.no_grad():
        expected = graph.module(*feed.values())
    got = [*outputs, *(runner.backend.read(written[w]) for w in graph.writes)]
    worst = max(_diff(g.cpu(), e) for g, e in zip(got, expected, strict=True))
    return worst, worst <= atol


def check_export(exported: Exported, inputs: Inputs, timesteps: list[float], atol: float = 1e-4,
                 rtol: float = 1e-3, runner: PlanRunner | None = None) -> CheckReport:
    """Compare ``exported`` with its torch graph; see the module docstring."""
    runner = runner or load(exported.directory)
    graphs = []
    for name, step, feed in _feeds(exported, inputs, timesteps):
        graph = exported.graphs[name]
        entry = exported.plan.graphs[name]
        if exported.plan.format == "onnx":
            worst, ok = _polygraphy_onnx(exported.directory / entry.file, graph, feed, atol, rtol)
            backend = "onnxruntime (polygraphy)"
        else:
            worst, ok = _direct(runner, name, graph, feed, atol)
            backend = exported.plan.format
        graphs.append(GraphCheck(name, step, backend, worst, ok))
    rows = []
    runner.reset()
    exported.cached.state.reset()
    for generation in range(2):  # no reset in between: both sides must see the new generation themselves
        with torch.no_grad():
            for step, t in enumerate(timesteps):
                kwargs = inputs(t)
                want = first_tensor(exported.cached(**kwargs))
                got = runner(**kwargs)
                got = got if isinstance(got, torch.Tensor) else got[0]
                rows.append(StepCheck(generation, step, exported.cached.state.decisions()[-1],
                                      runner.decisions()[-1], _diff(got.cpu(), want)))
    return CheckReport(atol, graphs, rows)

