"""The checks that stand in for dynamo's guards where graphcache calls a compiled graph itself
(:mod:`graphcache.cached_step`): the recorded call's argument structure and values, the graph's inputs
gathered from the call and the module (parameters fetched along their module paths, every call), and their
tensor metadata compared by dynamo's own C++ check."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from graphcache.streams import source_path

SIMPLE = (type(None), bool, int, float, str, torch.dtype, torch.device)  # argument values compared by ==

Path = list[tuple[bool, str | int]]  # steps from the module: (True, attribute) or (False, key or index)


def module_path(source: str) -> Path | None:
    """The steps from the traced module to what dynamo names ``source`` (``L['self'].__dict__['_modules']
    ['proj']._parameters['weight']``); None for a source of another form."""
    parsed = source_path(source)
    return parsed[1] if parsed is not None and parsed[0] == "self" else None


class PathFetcher:
    """The values at several paths from one module, fetched on every call (weights replaced or reassigned are
    the ones returned), each step the paths share taken once: the 235 parameters of the 12-block DiT of
    ``benchmarks/dit_cpu.py`` take 2,979 attribute and key steps one path at a time, 728 as a tree."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.ops: list[tuple[int, bool, str | int]] = []  # (slot of the parent value, attribute?, key)
        slots: dict[tuple[tuple[bool, str | int], ...], int] = {(): 0}  # a prefix -> its value's slot
        self.leaves: list[int] = []
        for path in paths:
            prefix: tuple[tuple[bool, str | int], ...] = ()
            for attribute, key in path:
                longer = (*prefix, (attribute, key))
                if longer not in slots:
                    slots[longer] = len(self.ops) + 1  # slot 0 is the module
                    self.ops.append((slots[prefix], attribute, key))
                prefix = longer
            self.leaves.append(slots[prefix])

    def __call__(self, module: torch.nn.Module) -> list[Any]:
        values: list[Any] = [module]
        append = values.append
        for parent, attribute, key in self.ops:
            value = values[parent]
            append(getattr(value, key) if attribute else value[key])  # type: ignore[arg-type]
        return [values[k] for k in self.leaves]


class TensorCheck:
    """Whether tensors have the dtype, device, shape, strides, ``requires_grad`` and dispatch keys of the ones
    it was made from: dynamo's own tensor check (C++) where this torch has it, else the same compared in
    Python (about 6x slower: 177 against 30 microseconds for 238 tensors on this project's CPU)."""

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.metas = [meta(x) for x in tensors]
        try:
            self._native: Any = torch._C._dynamo.guards.TensorGuards(
                *tensors, dynamic_dims_sizes=[list(x.shape) for x in tensors],  # type: ignore[misc]
                dynamic_dims_strides=[list(x.stride()) for x in tensors])  # type: ignore[misc]
            ok = self._native.check(*tensors)
        except Exception:  # another torch
            ok = False
        if not ok:
            self._native = None

    def __call__(self, values: Sequence[Any]) -> bool:
        if len(values) != len(self.metas):
            return False
        if self._native is not None:  # False for a value that is not a tensor
            return bool(self._native.check(*values))
        return all(isinstance(x, torch.Tensor) and meta(x) == m for x, m in zip(values, self.metas, strict=True))


def exported_getter(in_spec: pytree.TreeSpec, k: int) -> Callable[..., Any]:
    """The ``k``-th input of a ``torch.export`` module for a call's ``(args, kwargs)``."""
    import torch.fx._pytree as fx_pytree

    def get(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return fx_pytree.tree_flatten_spec((args, kwargs), in_spec)[k]

    return get


def meta(t: torch.Tensor) -> tuple[Any, ...]:
    return t.dtype, t.device, t.shape, t.stride(), t.requires_grad


class GraphOutput(int):
    """Among a model output's leaves: the index of the graph output that is this leaf."""


@dataclasses.dataclass
class RecordedCall:
    """The computed call the cached graph is checked against: its arguments' structure, each leaf's tensor
    metadata or value, where each user input of the graph sits among the leaves (by the input's position
    among the full graph's inputs), and how the model's output is built from the graph's outputs."""

    spec: pytree.TreeSpec
    tensors: list[tuple[int, tuple[Any, ...]]]  # (leaf position, metadata) of each tensor leaf
    values: list[tuple[int, Any]]  # (leaf position, value) of each other leaf
    where: dict[int, int]  # for each user input of the full graph (its position; -1 - k: input k of the graph
    # dynamo made of it, where that is another graph), its leaf position
    out_spec: pytree.TreeSpec
    out_leaves: list[Any]  # a GraphOutput for a tensor, else the constant

    def flat(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any] | None:
        """The call's leaves when it matches this one, else None."""
        leaves, spec = pytree.tree_flatten((args, kwargs))
        if spec != self.spec:
            return None
        for k, expected in self.tensors:
            if not isinstance(leaves[k], torch.Tensor) or meta(leaves[k]) != expected:
                return None
        for k, value in self.values:
            if type(leaves[k]) is not type(value) or leaves[k] != value:
                return None
        return leaves

    def output(self, outputs: Sequence[torch.Tensor]) -> Any:
        return pytree.tree_unflatten([outputs[v] if isinstance(v, GraphOutput) else v for v in self.out_leaves],
                                     self.out_spec)


class GraphInputs:
    """How to build a graph's inputs for a call: each (its position here, the full graph's input ``k``) a
    parameter or buffer fetched from the module now, or a user input taken from the call's leaves."""

    def __init__(self, positions: list[int], params: list[tuple[int, Path]],
                 user: list[tuple[int, int, Callable[..., Any]]]) -> None:
        self.positions = positions  # the full graph's inputs this graph takes, in its order
        self.user = user  # (position here, the full graph's input k, getter of the call's (args, kwargs))
        self.param_positions = [position for position, _ in params]
        self.fetch = PathFetcher([path for _, path in params])

    def build(self, model: torch.nn.Module, leaves: list[Any], where: dict[int, int]) -> list[Any]:
        inputs: list[Any] = [None] * len(self.positions)
        for position, k, _ in self.user:
            inputs[position] = leaves[where[k]]
        for position, value in zip(self.param_positions, self.fetch(model), strict=True):
            inputs[position] = value
        return inputs
