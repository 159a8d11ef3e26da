"""Forecasts from finite differences: TaylorSeer's Taylor series and HiCache's Hermite-scaled series."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.fx as fx

from .base import HISTORY, Clock, Predictor, call, clone, weighted_sum


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
        distance = clock.distance(g)
        new = [value]
        for j in range(self.order):
            diff = call(g, aten.div.Tensor, call(g, aten.sub.Tensor, new[j], state[j]), distance)
            zero = call(g, aten.zeros_like.default, value)
            new.append(call(g, aten.where.self, clock.known(g, j + 1), diff, zero))
        return new

    def coefficients(self, g: fx.Graph, k: fx.Node) -> list[fx.Node]:
        """0-d float64 nodes c_1..c_m with ``F_hat = D_0 + sum_j c_j D_j`` at distance ``k`` (float64)."""
        aten = torch.ops.aten
        return [call(g, aten.div.Scalar, call(g, aten.pow.Tensor_Scalar, k, j), float(math.factorial(j)))
                for j in range(1, self.order + 1)]

    def on_cached(self, g: fx.Graph, state: list[fx.Node], clock: Clock) -> tuple[fx.Node, list[fx.Node]]:
        aten = torch.ops.aten
        k = clock.real(g, clock.distance(g))
        forecast = state[0]
        for j, coeff in enumerate(self.coefficients(g, k), start=1):
            scaled = call(g, aten.mul.Tensor, state[j], clock.coefficient(g, coeff))
            forecast = call(g, aten.add.Tensor, forecast, scaled)
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
        x = call(g, aten.mul.Tensor, k, self.sigma)
        hermite = [call(g, aten.ones_like.default, x), call(g, aten.mul.Tensor, x, 2.0)]
        for n in range(1, self.order):
            two_x_h = call(g, aten.mul.Tensor, call(g, aten.mul.Tensor, x, 2.0), hermite[n])
            hermite.append(call(g, aten.sub.Tensor, two_x_h, call(g, aten.mul.Tensor, hermite[n - 1], 2.0 * n)))
        return [call(g, aten.mul.Tensor, hermite[j], self.sigma**j / math.factorial(j))
                for j in range(1, self.order + 1)]


@dataclasses.dataclass(frozen=True)
class Newton(Taylor):
    """Newton's divided differences over the actual computed positions: ``D_j = F[a_0, ..., a_j]``
    (``a_0`` the last computed step), ``F_hat(i) = sum_j D_j prod_{m<j} (i - a_m)``. Exact for polynomials
    of degree <= ``order`` once ``order + 1`` steps were computed, on any spacing. TaylorSeer's published
    differences divide by the last gap only, so they are exact for lines only (and for uniform spacing
    their higher terms are backward differences, not derivatives)."""

    name = "newton"

    def __post_init__(self) -> None:
        if not 0 <= self.order < HISTORY:
            raise ValueError(f"Newton order must be in 0..{HISTORY - 1}, got {self.order}")

    def on_compute(self, g: fx.Graph, value: fx.Node, state: list[fx.Node], clock: Clock) -> list[fx.Node]:
        aten = torch.ops.aten
        new = [value]
        for j in range(self.order):  # F[i, a_0..a_j] = (F[i, a_0..a_{j-1}] - F[a_0..a_j]) / (i - a_j)
            diff = call(g, aten.div.Tensor, call(g, aten.sub.Tensor, new[j], state[j]), clock.distance(g, j))
            zero = call(g, aten.zeros_like.default, value)
            new.append(call(g, aten.where.self, clock.known(g, j + 1), diff, zero))
        return new

    def newton_coefficients(self, g: fx.Graph, clock: Clock) -> list[fx.Node]:
        aten = torch.ops.aten
        coefficients: list[fx.Node] = []
        product: fx.Node | None = None
        for m in range(self.order):
            gap = clock.real(g, clock.distance(g, m))
            product = gap if product is None else call(g, aten.mul.Tensor, product, gap)
            coefficients.append(product)
        return coefficients

    def on_cached(self, g: fx.Graph, state: list[fx.Node], clock: Clock) -> tuple[fx.Node, list[fx.Node]]:
        terms = [(state[0], None), *zip(state[1:], self.newton_coefficients(g, clock), strict=True)]
        forecast = weighted_sum(g, clock, terms) if self.order else clone(g, state[0])
        return forecast, [clone(g, s) for s in state]
