"""Run an exported cache schedule for whole generations, on any backend (ONNX Runtime, AOTInductor, TensorRT).

A :class:`PlanRunner` is called like the denoiser (``runner(**inputs)``). It keeps the cache state in the
backend's own buffers between steps (OrtValues, device tensors): nothing goes through NumPy per step.
In-graph form: the one graph runs every step and decides inside. Step-unrolled form: the plan's schedule
names the graph of each step; a generation starts when the timestep does not decrease (as in the graph),
or after ``reset()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from graphcache.errors import ExportError

from .plan import Plan, load_plan


class Backend(Protocol):
    """What a runtime provides: state buffers it owns and a way to run one graph of the plan."""

    def allocate(self, name: str) -> Any:
        """A new state buffer ``name`` holding its initial fill."""

    def run(self, graph: str, inputs: Sequence[torch.Tensor], state: dict[str, Any]) -> tuple[
            list[torch.Tensor], dict[str, Any]]:
        """Run ``graph``: model outputs as torch tensors, and the new handles of the state it writes."""

    def read(self, handle: Any) -> torch.Tensor:
        """A state buffer's value as a CPU tensor (for decisions(); not used per step)."""


class PlanRunner:
    """A whole-generation runner of an exported plan."""

    def __init__(self, plan: Plan, backend: Backend) -> None:
        self.plan = plan
        self.backend = backend
        self.input_names = [s.name for s in plan.inputs]
        self.reset()

    def reset(self) -> None:
        """Forget the current generation: fresh state, the next call is step 0."""
        self.state = {s.name: self.backend.allocate(s.name) for s in self.plan.state}
        self.step = -1
        self.last_t = float("-inf")

    def graph_for_step(self, kwargs: dict[str, Any]) -> str:
        if self.plan.schedule is None:
            return next(iter(self.plan.graphs))
        timestep = _as_tensor(kwargs[self.plan.timestep], self.plan.timestep)
        t_now = float(timestep.detach().reshape(-1).to(torch.float32).max())
        self.step = 0 if t_now >= self.last_t else self.step + 1
        self.last_t = t_now
        if self.step >= len(self.plan.schedule):
            raise ExportError(f"step {self.step} is past the exported schedule of {len(self.plan.schedule)} steps; "
                              "export with --steps matching the generation (the unrolled form is per step count)")
        return self.plan.schedule[self.step]

    def __call__(self, **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
        missing = [n for n in self.input_names if n not in kwargs]
        if missing:
            raise ExportError(f"missing inputs {missing}; the exported graphs take {self.input_names}")
        inputs = [_as_tensor(kwargs[n], spec.name) for n, spec in zip(self.input_names, self.plan.inputs, strict=True)]
        for tensor, spec in zip(inputs, self.plan.inputs, strict=True):
            if tuple(tensor.shape) != spec.shape:
                raise ExportError(f"input '{spec.name}' has shape {tuple(tensor.shape)}; the export was traced with "
                                  f"{spec.shape} (static shapes: export again for this shape)")
        graph = self.graph_for_step(kwargs)
        outputs, written = self.backend.run(graph, inputs, self.state)
        self.state.update(written)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def decisions(self) -> list[str]:
        """``'computed'`` / ``'cached'`` per step of the current generation (read from the in-graph log)."""
        step = int(self.backend.read(self.state["step"]).item())
        if torch.isinf(self.backend.read(self.state["last_t"])).item():
            return []
        log = self.backend.read(self.state["log"]).tolist()
        first = max(0, step + 1 - len(log))
        return ["computed" if log[i % len(log)] == 1 else "cached" for i in range(first, step + 1)]


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ExportError(f"input '{name}' is a {type(value).__name__}; exported graphs take tensors")
    return value


def load(directory: str | Path, device: str = "cpu", verify: bool = True) -> PlanRunner:
    """Load an export directory written by ``graphcache export`` and return its runner.

    ``device``: ``cpu`` or ``cuda`` (ONNX Runtime picks the CUDA / TensorRT providers when present).
    """
    directory = Path(directory)
    plan = load_plan(directory, verify=verify)
    backend: Backend
    if plan.format == "onnx":
        from .ort_backend import OrtBackend

        backend = OrtBackend(plan, directory, device)
    elif plan.format == "aoti":
        from .aoti import AotiBackend

        backend = AotiBackend(plan, directory, device)
    else:
        from .tensorrt import TensorRTBackend

        backend = TensorRTBackend(plan, directory)
    return PlanRunner(plan, backend)
