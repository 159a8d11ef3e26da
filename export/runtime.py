"""Run an exported cache schedule for whole generations, on any backend (ONNX Runtime, AOTInductor, TensorRT).

A :class:`PlanRunner` is called like the denoiser (``runner(**inputs)``). It keeps the cache state in the
backend's own buffers between steps (OrtValues, device tensors): nothing goes through NumPy per step.
In-graph form: the one graph runs every step and decides inside. Step-unrolled form: the plan's schedule
names the graph of each step; a generation starts when the timestep repeats or moves against the model's
direction (as in the graph), or after ``reset()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from graphcache.errors import ExportError
from graphcache.streams import StreamRouter, starts_generation

from .functional import dtype_of
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


@dataclasses.dataclass
class _Stream:
    """One stream's state handles and, for the step-unrolled form, its place in the schedule."""

    state: dict[str, Any]
    step: int = -1
    last_t: float = float("-inf")
    direction: float = 0.0  # -1 / +1 once the first generation's first move is seen (as in the graph)


class PlanRunner:
    """A whole-generation runner of an exported plan.

    Streams as in the Python module: ``with runner.cache_context("uncond"):`` names one; without contexts the
    k-th call in a row at one timestep is stream k (CFG as two calls, Heun's stages), each with its own state.
    """

    def __init__(self, plan: Plan, backend: Backend) -> None:
        self.plan = plan
        self.backend = backend
        self.input_names = [s.name for s in plan.inputs]
        self.reset()

    def reset(self) -> None:
        """Forget every stream: fresh state, the next call is step 0."""
        self.streams: dict[str, _Stream] = {}
        self.active = ""
        self._explicit = 0
        self._router = StreamRouter()  # the module's rule: the k-th call in a row at one timestep is stream k
        self._router.get = lambda args, kwargs: kwargs.get(self.plan.timestep)

    def _stream(self, name: str) -> _Stream:
        if name not in self.streams:
            self.streams[name] = _Stream({s.name: self.backend.allocate(s.name) for s in self.plan.state})
        return self.streams[name]

    @property
    def state(self) -> dict[str, Any]:
        return self._stream(self.active).state

    @contextlib.contextmanager
    def cache_context(self, name: str, **fields: Any) -> Iterator[None]:
        """As the module's ``cache_context``: the stream named ``name``; ``step_index=0`` starts it over."""
        if starts_generation(name, fields):
            self.streams.pop(name, None)
        previous, self.active = self.active, name
        self._explicit += 1
        try:
            yield
        finally:
            self._explicit -= 1
            self.active = previous

    def _route(self, kwargs: dict[str, Any]) -> float | None:
        """Pick the stream of this call; the timestep value read for it (None inside a cache_context)."""
        stream = None if self._explicit else self._router.stream((), kwargs)
        if stream is not None:  # "" (the first stream) included
            self.active = stream
        return self._router.last if stream is not None else None

    def graph_for_step(self, kwargs: dict[str, Any], t_now: float | None = None) -> str:
        """The graph of this step in the unrolled schedule; ``t_now``: the timestep value when the caller has
        read it already (routing did: one host read per call)."""
        if self.plan.schedule is None:
            return next(iter(self.plan.graphs))
        stream = self._stream(self.active)
        if t_now is None:  # inside a cache_context: read as routing reads it (a host copy of the timesteps)
            t_now = self._router.reader.read(_as_tensor(kwargs[self.plan.timestep], self.plan.timestep))
        moving = 0.0 if stream.step < 0 else t_now - stream.last_t
        new_generation = stream.step < 0 or moving == 0 or moving * stream.direction < 0
        if not new_generation and stream.direction == 0:
            stream.direction = 1.0 if moving > 0 else -1.0
        stream.step = 0 if new_generation else stream.step + 1
        stream.last_t = t_now
        if stream.step >= len(self.plan.schedule):
            raise ExportError(f"step {stream.step} is past the exported schedule of {len(self.plan.schedule)} "
                              "steps; export with --steps matching the generation (the unrolled form is per step "
                              "count)")
        return self.plan.schedule[stream.step]

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Called like the model: keyword inputs, or positional ones in the plan's input order."""
        if args:
            if len(args) > len(self.input_names):
                raise ExportError(f"{len(args)} positional inputs; the exported graphs take {self.input_names}")
            twice = [n for n in self.input_names[: len(args)] if n in kwargs]
            if twice:
                raise ExportError(f"inputs {twice} given both by position and by name")
            kwargs = {**dict(zip(self.input_names, args, strict=False)), **kwargs}
        unknown = sorted(set(kwargs) - set(self.input_names))
        if unknown:
            raise ExportError(f"unknown inputs {unknown}; the exported graphs take {self.input_names}")
        missing = [n for n in self.input_names if n not in kwargs]
        if missing:
            raise ExportError(f"missing inputs {missing}; the exported graphs take {self.input_names}")
        inputs = [_as_tensor(kwargs[n], spec.name) for n, spec in zip(self.input_names, self.plan.inputs, strict=True)]
        for tensor, spec in zip(inputs, self.plan.inputs, strict=True):
            if tuple(tensor.shape) != spec.shape:
                raise ExportError(f"input '{spec.name}' has shape {tuple(tensor.shape)}; the export was traced with "
                                  f"{spec.shape} (static shapes: export again for this shape)")
            if tensor.dtype != dtype_of(spec.dtype):
                raise ExportError(f"input '{spec.name}' has dtype {tensor.dtype}; the export was traced with "
                                  f"{spec.dtype}: pass .to({dtype_of(spec.dtype)}) or export again in that dtype")
        t_now = self._route(kwargs)
        graph = self.graph_for_step(kwargs, t_now)
        stream = self._stream(self.active)
        outputs, written = self.backend.run(graph, inputs, stream.state)
        stream.state.update(written)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def decisions(self) -> list[str]:
        """``'computed'`` / ``'cached'`` per step of the active stream's current generation (the in-graph log)."""
        state = self.state
        step = int(self.backend.read(state["step"]).item())
        if torch.isinf(self.backend.read(state["last_t"])).item():
            return []
        log = self.backend.read(state["log"]).tolist()
        first = max(0, step + 1 - len(log))
        return ["computed" if log[i % len(log)] == 1 else "cached" for i in range(first, step + 1)]


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ExportError(f"input '{name}' is a {type(value).__name__}; exported graphs take tensors")
    return value


def load(directory: str | Path, device: str = "cpu", verify: bool = True) -> PlanRunner:
    """Load an export directory written by ``graphcache export`` and return its runner.

    ``device``: ``cpu`` or ``cuda`` (ONNX Runtime picks the CUDA / TensorRT providers when present).
    ``verify``: check every file against the plan's sha256 first (the default). AOTInductor ``.pt2`` packages
    and TensorRT engines are native code: load only exports you trust.
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
