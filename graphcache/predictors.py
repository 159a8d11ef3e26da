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

    def coefficients(self, g: fx.Graph, k: fx.Node) -> list[fx.Node]:
        """0-d float64 nodes c_1..c_m with ``F_hat = D_0 + sum_j c_j D_j`` at distance ``k`` (float64)."""
        aten = torch.ops.aten
        return [_call(g, aten.div.Scalar, _call(g, aten.pow.Tensor_Scalar, k, j), float(math.factorial(j)))
                for j in range(1, self.order + 1)]

    def on_cached(self, g: fx.Graph, state: list[fx.Node], clock: Clock) -> tuple[fx.Node, list[fx.Node]]:
        aten = torch.ops.aten
        k = _call(g, aten.sub.Tensor, clock.step, clock.last_compute)
        # float64 0-d coefficients: a 0-d tensor does not promote the state's dtype (fp32 / bf16 stay so)
        k = g.call_function(aten._to_copy.default, (k,), {"dtype": torch.float64})
        forecast = state[0]
        for j, coeff in enumerate(self.coefficients(g, k), start=1):
            forecast = _call(g, aten.add.Tensor, forecast, _call(g, aten.mul.Tensor, state[j], coeff))
        if forecast is state[0]:
            forecast = clone(g, forecast)
        return forecast, [clone(g, s) for s in state]


@dataclasses.dataclass(frozen=True)
class Hermite(Taylor):
    """HiCache: TaylorSeer's differences with Hermite-scaled terms,
    ``F_hat = D_0 + sum_{j>=1} D_j / j! * sigma^j * H_j(sigma k)`` (physicists' Hermite polynomials,
    ``H_0 = 1, H_1 = 2x, H_{n+1} = 2x H_n - 2n H_{n-1}``)."""

    sigma: float = 0.71
    name = "hermite"

    def coefficients(self, g: fx.Graph, k: fx.Node) -> list[fx.Node]:
        aten = torch.ops.aten
        x = _call(g, aten.mul.Tensor, k, self.sigma)
        hermite = [_call(g, aten.ones_like.default, x), _call(g, aten.mul.Tensor, x, 2.0)]
        for n in range(1, self.order):
            two_x_h = _call(g, aten.mul.Tensor, _call(g, aten.mul.Tensor, x, 2.0), hermite[n])
            hermite.append(_call(g, aten.sub.Tensor, two_x_h, _call(g, aten.mul.Tensor, hermite[n - 1], 2.0 * n)))
        return [_call(g, aten.mul.Tensor, hermite[j], self.sigma**j / math.factorial(j))
                for j in range(1, self.order + 1)]
