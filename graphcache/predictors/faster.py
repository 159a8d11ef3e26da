"""FasterCache's feature extrapolation: the last computed value moved along its last change."""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx

from .base import Clock, Predictor, call, clone


@dataclasses.dataclass(frozen=True)
class Extrapolate(Predictor):
    """``F_hat = F_a + (F_a - F_b) * w`` with ``F_a``, ``F_b`` the last two computed values and
    ``w = max(0.5, 1 - (T-1-i)/(T-1)) = max(0.5, i/(T-1))`` at step i of a ``num_steps`` (T) generation: the
    trend counts more as the generation converges. With one computed value so far ``F_b = F_a`` (reuse).
    State: 2 tensors per unit."""

    num_steps: int = 50
    name = "extrapolate"

    def num_state(self) -> int:
        return 2

    def on_compute(self, g: fx.Graph, value: fx.Node, state: list[fx.Node], clock: Clock) -> list[fx.Node]:
        return [value, call(g, torch.ops.aten.where.self, clock.known(g, 1), state[0], value)]

    def weight(self, g: fx.Graph, clock: Clock) -> fx.Node:
        aten = torch.ops.aten
        progress = call(g, aten.div.Scalar, clock.real(g, clock.step), float(max(self.num_steps - 1, 1)))
        return call(g, aten.clamp_min.default, progress, 0.5)

    def on_cached(self, g: fx.Graph, state: list[fx.Node], clock: Clock) -> tuple[fx.Node, list[fx.Node]]:
        aten = torch.ops.aten
        trend = call(g, aten.mul.Tensor, call(g, aten.sub.Tensor, state[0], state[1]),
                     clock.coefficient(g, self.weight(g, clock)))
        return call(g, aten.add.Tensor, state[0], trend), [clone(g, s) for s in state]
