"""TensorRT engines from the exported ONNX graphs, and a runtime with persistent cache buffers on the device.

Written against the documented TensorRT 10 Python API (``Builder``, ``OnnxParser``,
``build_serialized_network``, ``IExecutionContext.set_tensor_address`` / ``execute_async_v3``). Needs the
``tensorrt`` package and a CUDA GPU: ``pip install 'graphcache[tensorrt]'``. This module was not run where
graphcache is tested (no TensorRT there); ``benchmarks/tensorrt_check.py`` runs it where TensorRT exists.

Choices. Static policies use the step-unrolled form: a full-step and a cached-step engine, no conditional
in either, so TensorRT optimizes each as a plain network and the step choice costs nothing on the device.
Dynamic policies (FBCache) use the in-graph form: the ONNX ``If`` becomes a TensorRT ``IIfConditional``
inside one engine, so the decision is made on the device without a host round trip (a separate decision
engine would need the predicate on the host to pick the next engine). State tensors live in torch CUDA
tensors, two per buffer (read one, write the other), bound by address to every engine; the engines run on
torch's current stream so they order with the caller's torch work.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from graphcache.errors import ExportError

from .deps import require
from .functional import dtype_of, state_input, state_output
from .plan import Plan


def build_engine(onnx_path: Path, engine_path: Path, fp16: bool = False, workspace_gib: int = 8) -> Path:
    """Parse ``onnx_path`` and build a serialized engine at ``engine_path`` (static shapes: no profile)."""
    trt = require("tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)")
    engine_path.write_bytes(bytes(serialized))
    return engine_path


class TensorRTBackend:
    def __init__(self, plan: Plan, directory: Path) -> None:
        trt = require("tensorrt")
        if not torch.cuda.is_available():
            raise ExportError("TensorRT engines need a CUDA GPU; none is visible to torch")
        self.plan = plan
        self.device = torch.device("cuda")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {}
        for name, entry in plan.graphs.items():
            engine = runtime.deserialize_cuda_engine((directory / entry.file).read_bytes())
            if engine is None:
                raise ExportError(f"TensorRT could not load {entry.file} (built by another TensorRT version or "
                                  "GPU?); rebuild it with `graphcache export ... --format tensorrt`")
            self.engines[name] = engine
        self.contexts = {name: e.create_execution_context() for name, e in self.engines.items()}
        self.io = {name: {e.get_tensor_name(i) for i in range(e.num_io_tensors)} for name, e in self.engines.items()}
        self.specs = {s.name: s for s in plan.state}
        self.spare = {s.name: self.allocate(s.name) for s in plan.state}
        self.inputs = [torch.empty(s.shape, dtype=dtype_of(s.dtype), device=self.device) for s in plan.inputs]
        self.outputs = {name: [torch.empty(s.shape, dtype=dtype_of(s.dtype), device=self.device)
                               for s in plan.outputs] for name in plan.graphs}

    def allocate(self, name: str) -> torch.Tensor:
        return self.specs[name].initial(self.device)

    def run(self, graph: str, inputs: Sequence[torch.Tensor], state: dict[str, Any]) -> tuple[
            list[torch.Tensor], dict[str, Any]]:
        context, io = self.contexts[graph], self.io[graph]
        writes = self.plan.graphs[graph].writes

        def bind(name: str, tensor: torch.Tensor) -> None:
            if name in io:
                context.set_tensor_address(name, tensor.data_ptr())

        for spec, value, buffer in zip(self.plan.inputs, inputs, self.inputs, strict=True):
            buffer.copy_(value, non_blocking=True)
            bind(spec.name, buffer)
        for name, handle in state.items():
            bind(state_input(name), handle)
        for spec, buffer in zip(self.plan.outputs, self.outputs[graph], strict=True):
            bind(spec.name, buffer)
        for name in writes:
            bind(state_output(name), self.spare[name])
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise ExportError(f"TensorRT failed to run engine '{graph}'")
        written = {name: self.spare[name] for name in writes}
        for name in writes:
            self.spare[name] = state[name]
        return [o.clone() for o in self.outputs[graph]], written

    def read(self, handle: Any) -> torch.Tensor:
        return handle.detach().cpu()  # type: ignore[no-any-return]
