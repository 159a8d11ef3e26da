"""Predictors: what the cached branch puts in place of a cached unit, and the state it keeps.

A predictor emits graph nodes in two places: in the compute branch (``on_compute``: the fresh value is
known; return the new state tensors) and in the cached branch (``on_cached``: return the predicted value
and the new state). Both get the :class:`Clock` (current step index, last computed step, number of
computed steps of this generation before the current one) as graph nodes, so step distances come from
actual step indices. Branch outputs must be new tensors (``torch.cond`` forbids returning an operand).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

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


def _call(g: fx.Graph, op: Any, *args: Any) -> fx.Node:
    return g.call_function(op, args)


@dataclasses.dataclass(frozen=True)
class Taylor(Predictor):
    """TaylorSeer's forecast: finite differences kept at computed steps, Taylor series at cached steps.

    Compute step a (previous computed step a'): ``D_0 = F(a)``, ``D_{j+1} = (D_j(a) - D_j(a')) / (a - a')``
    while enough computed steps exist (fewer: the higher differences are 0). Cached step a + k:
    ``F_hat = sum_j D_j k^j / j!``. State: ``order + 1`` tensors per unit.
    """

    order: int = 1
    name = "taylor"

    def num_state(self) -> int:
        return self.order + 1

    def on_compute(self, g: fx.Graph, value: fx.Node, state: list[fx.Node], clock: Clock) -> list[fx.Node]:
        aten = torch.ops.aten
        distance = _call(g, aten.sub.Tensor, clock.step, clock.last_compute)
        new = [value]
        for j in range(self.order):
            diff = _call(g, aten.div.Tensor, _call(g, aten.sub.Tensor, new[j], state[j]), distance)
            known = _call(g, aten.gt.Scalar, clock.n_computed, j)
            zero = _call(g, aten.zeros_like.default, value)
            new.append(_call(g, aten.where.self, known, diff, zero))
        return new

    def on_cached(self, g: fx.Graph, state: list[fx.Node], clock: Clock) -> tuple[fx.Node, list[fx.Node]]:
        aten = torch.ops.aten
        k = _call(g, aten.sub.Tensor, clock.step, clock.last_compute)
        forecast = state[0]
        for j in range(1, self.order + 1):
            # k^j stays an integer tensor so the products keep the state's dtype (no float32 coefficient)
            term = _call(g, aten.mul.Tensor, state[j], _call(g, aten.pow.Tensor_Scalar, k, j))
            term = _call(g, aten.div.Scalar, term, float(math.factorial(j)))
            forecast = _call(g, aten.add.Tensor, forecast, term)
        if forecast is state[0]:
            forecast = clone(g, forecast)
        return forecast, [clone(g, s) for s in state]
