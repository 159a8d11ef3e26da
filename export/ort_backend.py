"""ONNX Runtime backend: one session per graph, cache state in OrtValues bound with IO binding.

Each state buffer has two OrtValues on the session's device. A graph reads the current one and writes
the other (ping-pong); buffers a graph does not write stay bound as they are. Per step only the user inputs
(bound from the caller's tensors without a copy on CPU) and the model outputs cross the boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graphcache.errors import ExportError

from .deps import require
from .functional import dtype_of, state_input, state_output
from .plan import Plan


def providers_for(device: str) -> list[str]:
    ort = require("onnxruntime")
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if not wanted:
        raise ExportError(f"device '{device}' asked for, but ONNX Runtime has only {available}; install "
                          "onnxruntime-gpu or use device='cpu'")
    return [*wanted, "CPUExecutionProvider"]


class OrtBackend:
    def __init__(self, plan: Plan, directory: Path, device: str = "cpu", threads: int = 0) -> None:
        ort = require("onnxruntime")
        self.ort = ort
        self.plan = plan
        self.device = "cuda" if device.startswith("cuda") else "cpu"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        if len(plan.graphs) > 1:  # idle sessions' threads must not spin while another session runs
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = providers_for(self.device)
        self.sessions = {name: ort.InferenceSession(str(directory / entry.file), options, providers=providers)
                         for name, entry in plan.graphs.items()}
        self.bindings = {name: s.io_binding() for name, s in self.sessions.items()}
        self.session_inputs = {name: {i.name for i in s.get_inputs()} for name, s in self.sessions.items()}
        self.specs = {s.name: s for s in plan.state}
        self.spare = {s.name: self.allocate(s.name) for s in plan.state}
        self.outputs = {name: [self._ortvalue(np.zeros(o.shape, dtype=_np(o.dtype)), "cpu") for o in plan.outputs]
                        for name in plan.graphs}

    def _ortvalue(self, array: np.ndarray, device: str | None = None) -> Any:
        return self.ort.OrtValue.ortvalue_from_numpy(array, device or self.device, 0)

    def allocate(self, name: str) -> Any:
        return self._ortvalue(self.specs[name].initial().numpy())

    def run(self, graph: str, inputs: Sequence[torch.Tensor], state: dict[str, Any]) -> tuple[
            list[torch.Tensor], dict[str, Any]]:
        binding, wanted = self.bindings[graph], self.session_inputs[graph]
        entry = self.plan.graphs[graph]
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        arrays = [t.detach().cpu().contiguous().numpy() for t in inputs]  # kept alive until the run ends
        for spec, array in zip(self.plan.inputs, arrays, strict=True):
            if spec.name in wanted:
                binding.bind_ortvalue_input(spec.name, self._ortvalue(array, "cpu"))
        for name, handle in state.items():
            if state_input(name) in wanted:
                binding.bind_ortvalue_input(state_input(name), handle)
        for spec, value in zip(self.plan.outputs, self.outputs[graph], strict=True):
            binding.bind_ortvalue_output(spec.name, value)
        for name in entry.writes:
            binding.bind_ortvalue_output(state_output(name), self.spare[name])
        self.sessions[graph].run_with_iobinding(binding)
        written = {name: self.spare[name] for name in entry.writes}
        for name in entry.writes:
            self.spare[name] = state[name]
        outputs = [torch.from_numpy(v.numpy().copy()) for v in self.outputs[graph]]
        return outputs, written

    def read(self, handle: Any) -> torch.Tensor:
        return torch.from_numpy(np.array(handle.numpy()))


def _np(dtype: str) -> Any:
    return torch.empty((), dtype=dtype_of(dtype)).numpy().dtype
