"""Predictors: what the cached branch puts in place of a cached unit, and the state it keeps.

A predictor emits graph nodes in two places: in the compute branch (``on_compute``: the fresh value is
known; return the new state tensors) and in the cached branch (``on_cached``: return the predicted value
and the new state). Both get the :class:`Clock` (current step index, last computed step, number of
computed steps of this generation before the current one) as graph nodes, so step distances come from
actual step indices. Branch outputs must be new tensors (``torch.cond`` forbids returning an operand).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.fx as fx


@dataclasses.dataclass(frozen=True)
class Clock:
    """Branch-graph nodes (0-d int64): ``step`` i, ``last_compute`` a (the last computed step before i),
    ``n_computed`` (computed steps of this generation before i; 0 at a generation's first step)."""

    step: fx.Node
    last_compute: fx.Node
    n_computed: fx.Node


@dataclasses.dataclass(frozen=True)
class Predictor:
    name: ClassVar[str] = "predictor"

    def num_state(self) -> int:
        raise NotImplementedError

    def on_compute(self, g: fx.Graph, value: fx.Node, state: list[fx.Node], clock: Clock) -> list[fx.Node]:
        raise NotImplementedError

    def on_cached(self, g: fx.Graph, state: list[fx.Node], clock: Clock) -> tuple[fx.Node, list[fx.Node]]:
        raise NotImplementedError


def clone(g: fx.Graph, node: fx.Node) -> fx.Node:
    return g.call_function(torch.ops.aten.clone.default, (node,), {"memory_format": torch.contiguous_format})


@dataclasses.dataclass(frozen=True)
class Reuse(Predictor):
    """Plain reuse (FORA, FBCache, TeaCache...): the cached step uses the last computed value."""

    name = "reuse"

    def num_state(self) -> int:
        return 1

    def on_compute(self, g: fx.Graph, value: fx.Node, state: list[fx.Node], clock: Clock) -> list[fx.Node]:
        return [value]

    def on_cached(self, g: fx.Graph, state: list[fx.Node], clock: Clock) -> tuple[fx.Node, list[fx.Node]]:
        return state[0], [clone(g, state[0])]
