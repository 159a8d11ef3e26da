"""Forecasts that treat a cached feature as the solution of an ODE over steps: FoCa and Adams-Bashforth.

Positions are actual step indices from the :class:`Clock`, so uneven spacing (warm-up, then an interval;
dynamic decisions) is handled exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.fx as fx

from .base import HISTORY, Clock, Predictor, call, clone, weighted_sum

aten = torch.ops.aten


def _bdf2_weights(g: fx.Graph, h1: fx.Node, h2: fx.Node) -> list[fx.Node]:
    """Weights of the second-order backward difference for F'(x0) from F(x0), F(x1), F(x2) with
    ``h1 = x0 - x1``, ``h2 = x1 - x2`` (float64 nodes): exact for quadratics, any spacing."""
    h12 = call(g, aten.add.Tensor, h1, h2)
    w0 = call(g, aten.div.Tensor, call(g, aten.add.Tensor, call(g, aten.mul.Tensor, h1, 2.0), h2),
              call(g, aten.mul.Tensor, h1, h12))
    w1 = call(g, aten.neg.default, call(g, aten.div.Tensor, h12, call(g, aten.mul.Tensor, h1, h2)))
    w2 = call(g, aten.div.Tensor, h1, call(g, aten.mul.Tensor, h2, h12))
    return [w0, w1, w2]


@dataclasses.dataclass(frozen=True)
class FoCa(Predictor):
    """FoCa (forecast, then calibrate): a predictor-corrector on the feature trajectory.

    State per unit: ``F_a, F_b`` (the last two computed values) and ``dF_a``, the BDF2 derivative at ``a``
    (from the last three computed steps; with two, their slope; with one, 0). Cached step ``i = a + e``:

    - forecast ``P = F_a + e * dF_a``;
    - local derivative ``dF_i``: BDF2 at ``i`` through ``(i, P), (a, F_a), (b, F_b)`` (``dF_a`` until two
      steps were computed);
    - Heun (trapezoid) calibration ``F_hat = F_a + e/2 (dF_a + dF_i)`` = ``P + e/2 (dF_i - dF_a)``, the
      correction damped for ``e > damp_after``: its step is capped at ``damp_after``.

    Lines are forecast exactly once two steps were computed.
    """

    damp_after: float = 3.0
    name = "foca"

    def num_state(self) -> int:
        return 3

    def on_compute(self, g: fx.Graph, value: fx.Node, state: list[fx.Node], clock: Clock) -> list[fx.Node]:
        f_a, f_b = state[0], state[1]
        h1 = clock.real(g, clock.distance(g, 0))
        h2 = call(g, aten.sub.Tensor, clock.real(g, clock.distance(g, 1)), h1)
        slope = call(g, aten.div.Tensor, call(g, aten.sub.Tensor, value, f_a), clock.coefficient(g, h1))
        bdf = weighted_sum(g, clock, list(zip([value, f_a, f_b], _bdf2_weights(g, h1, h2), strict=True)))
        zero = call(g, aten.zeros_like.default, value)
        derivative = call(g, aten.where.self, clock.known(g, 2), bdf,
                          call(g, aten.where.self, clock.known(g, 1), slope, zero))
        return [value, f_a, derivative]

    def on_cached(self, g: fx.Graph, state: list[fx.Node], clock: Clock) -> tuple[fx.Node, list[fx.Node]]:
        f_a, f_b, d_a = state
        e = clock.real(g, clock.distance(g, 0))
        h2 = call(g, aten.sub.Tensor, clock.real(g, clock.distance(g, 1)), e)
        forecast = weighted_sum(g, clock, [(f_a, None), (d_a, e)])
        local = weighted_sum(g, clock, list(zip([forecast, f_a, f_b], _bdf2_weights(g, e, h2), strict=True)))
        local = call(g, aten.where.self, clock.known(g, 2), local, d_a)
        step = call(g, aten.mul.Tensor, call(g, aten.clamp_max.default, e, self.damp_after), 0.5)
        correction = call(g, aten.sub.Tensor, local, d_a)
        calibrated = weighted_sum(g, clock, [(forecast, None), (correction, step)])
        return calibrated, [clone(g, s) for s in state]


def _lagrange_means(g: fx.Graph, offsets: list[fx.Node], e: fx.Node) -> list[fx.Node]:
    """``b_j = integral over s in [e, e+1] of L_j(s)``: the Lagrange basis through nodes at ``s = -offsets[j]``
    (float64 nodes; the last computed step is ``s = 0``), averaged over the sampler step that follows step
    ``a + e``. With ``e = 0`` and unit spacing these are the classic Adams-Bashforth weights."""
    weights = []
    for j, d_j in enumerate(offsets):
        coeffs: list[fx.Node | float] = [1.0]  # polynomial in s, lowest power first
        denominator: fx.Node | float = 1.0
        for m, d_m in enumerate(offsets):
            if m == j:
                continue
            shifted: list[fx.Node | float] = [0.0] * (len(coeffs) + 1)
            for p, c in enumerate(coeffs):  # (s + d_m) * poly
                shifted[p] = _add(g, shifted[p], _mul(g, c, d_m))
                shifted[p + 1] = _add(g, shifted[p + 1], c)
            coeffs = shifted
            denominator = _mul(g, denominator, call(g, aten.sub.Tensor, d_m, d_j))
        e1 = call(g, aten.add.Tensor, e, 1.0)
        total: fx.Node | float = 0.0
        for p, c in enumerate(coeffs):
            span = call(g, aten.sub.Tensor, call(g, aten.pow.Tensor_Scalar, e1, p + 1),
                        call(g, aten.pow.Tensor_Scalar, e, p + 1))
            total = _add(g, total, _mul(g, c, call(g, aten.div.Scalar, span, float(p + 1))))
        weights.append(total if isinstance(denominator, float) else call(g, aten.div.Tensor, total, denominator))
    return weights  # type: ignore[return-value]


def _fold(g: fx.Graph, op: Any, identity: float, x: fx.Node | float, y: fx.Node | float) -> fx.Node | float:
    """``op(x, y)`` with the identity element folded away (a float when both are floats' identities)."""
    if isinstance(x, float) and x == identity:
        return y
    if isinstance(y, float) and y == identity:
        return x
    if isinstance(x, float):
        x, y = y, x
    return call(g, op, x, y)


def _add(g: fx.Graph, x: fx.Node | float, y: fx.Node | float) -> fx.Node | float:
    return _fold(g, aten.add.Tensor, 0.0, x, y)


def _mul(g: fx.Graph, x: fx.Node | float, y: fx.Node | float) -> fx.Node | float:
    return _fold(g, aten.mul.Tensor, 1.0, x, y)


@dataclasses.dataclass(frozen=True)
class AdamsBashforth(Predictor):
    """AB-Cache: a k-th order Adams-Bashforth combination of the last k computed values.

    The cached step ``i`` feeds the sampler's step from ``i`` to ``i + 1``; the forecast is the mean of the
    polynomial through the last ``min(k, computed)`` values over that step, ``sum_j b_j F(a_j)`` with
    ``b_j = int_i^{i+1} L_j`` (Lagrange basis in step positions). At unit spacing right after a computed
    step these are Adams-Bashforth's weights (k=2: 3/2, -1/2; k=3: 23/12, -16/12, 5/12).
    State: ``order`` tensors per unit.
    """

    order: int = 2
    name = "adams_bashforth"

    def __post_init__(self) -> None:
        if not 1 <= self.order <= HISTORY:
            raise ValueError(f"AdamsBashforth order must be in 1..{HISTORY}, got {self.order}")

    def num_state(self) -> int:
        return self.order

    def on_compute(self, g: fx.Graph, value: fx.Node, state: list[fx.Node], clock: Clock) -> list[fx.Node]:
        return [value, *state[: self.order - 1]]

    def on_cached(self, g: fx.Graph, state: list[fx.Node], clock: Clock) -> tuple[fx.Node, list[fx.Node]]:
        distances = [clock.real(g, clock.distance(g, j)) for j in range(self.order)]
        e = distances[0]
        offsets = [call(g, aten.sub.Tensor, d, e) for d in distances]  # a_0 - a_j
        weights = _lagrange_means(g, offsets[:1], e)
        for q in range(2, self.order + 1):  # fewer computed steps than the order: the highest order known
            higher = _lagrange_means(g, offsets[:q], e)
            weights = [call(g, aten.where.self, clock.known(g, q), h, w) for h, w in zip(higher, weights, strict=False)]
            weights.append(call(g, aten.where.self, clock.known(g, q), higher[-1],
                                call(g, aten.zeros_like.default, higher[-1])))
        forecast = weighted_sum(g, clock, list(zip(state, weights, strict=True)))
        return forecast, [clone(g, s) for s in state]
