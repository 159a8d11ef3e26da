"""Functional-state form of a rewritten graph: cache state as explicit inputs and outputs.

ONNX, TensorRT and AOTInductor artifacts cannot own graphcache's state buffers (an ONNX export bakes
registered buffers in as constants, so every call would take the full path), so every lowering starts here:
``forward(*inputs, *state) -> (*outputs, *new_state)``. Each ``get_attr`` of a state buffer becomes a
placeholder ``gc_<name>`` and each ``aten.copy_(buffer, value)`` makes ``value`` the buffer's current
value, returned as ``gc_<name>_out``. The graph is otherwise the rewritten one (same cond, same branches).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch.fx import _pytree as fx_pytree

from graphcache.errors import ExportError
from graphcache.exported import ExportedCache
from graphcache.passes.base import analysis
from graphcache.passes.graph_utils import tensor_val

DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int8, torch.uint8,
    torch.bool)}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_of(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ExportError(f"unsupported dtype '{name}' in a graphcache plan; supported: {sorted(DTYPES)}")
    return DTYPES[name]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A named tensor of fixed shape and dtype (an input, an output, or a state buffer with its fill)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    fill: float | int | None = None  # state only: the value a new generation starts from

    def initial(self, device: torch.device | str = "cpu") -> torch.Tensor:
        assert self.fill is not None, f"{self.name} is not a state buffer"
        return torch.full(self.shape, self.fill, dtype=dtype_of(self.dtype), device=device)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.fill is not None:
            out["fill"] = self.fill
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), tuple(int(s) for s in data["shape"]), str(data["dtype"]), data.get("fill"))


def output_name(input_names: list[str]) -> str:
    """The name of a single output: ``sample``, unless an input has it (a U-Net's ``sample`` input)."""
    return "sample" if "sample" not in input_names else "denoised"


def state_input(name: str) -> str:
    return f"gc_{name}"


def state_output(name: str) -> str:
    return f"gc_{name}_out"


@dataclasses.dataclass
class FunctionalGraph:
    """``module(*inputs, *state) -> (*outputs, *[new value of each state in writes])``."""

    module: fx.GraphModule
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    state: list[TensorSpec]
    writes: list[str]  # names of the state buffers this graph returns, in output order

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs] + [state_input(s.name) for s in self.state]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs] + [state_output(w) for w in self.writes]

    def reads(self) -> list[str]:
        """State buffers the graph actually uses."""
        placeholders = {n.name: n for n in self.module.graph.nodes if n.op == "placeholder"}
        return [s.name for s in self.state if placeholders[state_input(s.name)].users]

    def initial_state(self, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        return [s.initial(device) for s in self.state]

    def flat_inputs(self, kwargs: Mapping[str, Any]) -> list[torch.Tensor]:
        missing = [s.name for s in self.inputs if s.name not in kwargs]
        if missing:
            raise ExportError(f"inputs {missing} are missing; the exported graph takes {[s.name for s in self.inputs]}")
        return [kwargs[s.name] for s in self.inputs]


def spec_of(name: str, value: Any, fill: float | int | None = None) -> TensorSpec:
    """The spec of a tensor ``value`` named ``name`` (``ExportError`` if it is not a tensor)."""
    if not isinstance(value, torch.Tensor):
        raise ExportError(f"'{name}' is a {type(value).__name__}; exported graphs take and return tensors only")
    return TensorSpec(name, tuple(int(s) for s in value.shape), dtype_name(value.dtype), fill)


def _fill_of(name: str, value: torch.Tensor) -> float | int:
    flat = value.reshape(-1)
    if flat.numel() == 0 or not bool((flat == flat[0]).all()):
        raise ExportError(f"state buffer {name} does not start from a constant fill; call reset() before export")
    item = flat[0].item()
    return item if isinstance(item, (int, float)) else float(item)


def functionalize(cached: ExportedCache, example_kwargs: Mapping[str, Any]) -> FunctionalGraph:
    """The functional-state form of ``cached`` (captured with ``torch.export``), traced on ``example_kwargs``."""
    gm = cached.module
    if analysis(gm).capture != "export":
        raise ExportError("functionalize needs a graph captured with torch.export (graphcache.optimize_exported)")
    cached.state.reset()
    buffers = list(cached.state.spec.buffers)
    flat = fx_pytree.tree_flatten_spec(((), dict(example_kwargs)), gm._in_spec)
    user = [n for n in gm.graph.nodes if n.op == "placeholder"]
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in user:
        env[node] = g.placeholder(node.name)
    current = {b: g.placeholder(state_input(b.removeprefix("_gc_"))) for b in buffers}
    reads: dict[fx.Node, str] = {}
    leaves: Sequence[Any] = ()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "get_attr" and node.target in current:
            reads[node] = str(node.target)
        elif node.op == "output":
            leaves = node.args[0]
        elif node.target is torch.ops.aten.copy_.default and node.args[0] in reads:
            current[reads[node.args[0]]] = env[node.args[1]]  # type: ignore[index]
            env[node] = current[reads[node.args[0]]]  # type: ignore[index]
        else:
            env[node] = g.node_copy(node, lambda a: current[reads[a]] if a in reads else env[a])
    g.output((*[env[leaf] for leaf in leaves], *current.values()))
    g.lint()
    module = fx.GraphModule(gm, g)
    state = [spec_of(b.removeprefix("_gc_"), gm.get_buffer(b), _fill_of(b, gm.get_buffer(b))) for b in buffers]
    inputs = [spec_of(n.name, v) for n, v in zip(user, flat, strict=True)]
    names = [output_name([s.name for s in inputs])] if len(leaves) == 1 else [f"output_{k}" for k in range(len(leaves))]
    outputs = [spec_of(name, tensor_val(leaf)) for name, leaf in zip(names, leaves, strict=True)]
    return FunctionalGraph(module, inputs, outputs, state, [s.name for s in state])
