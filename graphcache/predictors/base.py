"""The predictor contract, the clock it reads, and plain reuse.

A predictor emits graph nodes in two places: in the compute branch (``on_compute``: the fresh value is
known; return the new state tensors) and in the cached branch (``on_cached``: return the predicted value
and the new state). Both get the :class:`Clock` (current step index, positions of the last computed
steps, number of computed steps of this generation before the current one) as graph nodes, so step
distances come from actual step indices. Branch outputs must be new tensors (``torch.cond`` forbids
returning an operand).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.fx as fx

HISTORY = 5  # computed-step positions the clock keeps (Newton order 4, Adams-Bashforth order 5)


def call(g: fx.Graph, op: Any, *args: Any, **kwargs: Any) -> fx.Node:
    return g.call_function(op, args, kwargs)


@dataclasses.dataclass(frozen=True)
class Clock:
    """Branch-graph nodes: ``step`` i (0-d int64); ``history``, the positions of the last :data:`HISTORY`
    computed steps before i, most recent first (``[HISTORY]``, or ``[B, HISTORY]`` when each sample decides);
    ``n_computed``, how many steps of this generation were computed before i (0-d or ``[B]``; history
    entries past it are stale). Per-sample clocks are reshaped by :meth:`shaped` to broadcast over a unit."""

    step: fx.Node
    history: fx.Node
    n_computed: fx.Node
    dtype: torch.dtype | None = None  # per-sample clocks: the unit's dtype, for coefficients (see real())

    def shaped(self, g: fx.Graph, rank: int, dtype: torch.dtype) -> Clock:
        """The per-sample clock viewed as ``[B, 1, ...]`` for a unit of ``rank`` dimensions."""
        ones = [1] * (rank - 1)
        history = call(g, torch.ops.aten.reshape.default, self.history, [-1, *ones, HISTORY])
        n = call(g, torch.ops.aten.reshape.default, self.n_computed, [-1, *ones])
        return Clock(self.step, history, n, dtype)

    def computed_at(self, g: fx.Graph, j: int) -> fx.Node:
        """Position of the (j+1)-th most recent computed step (valid while ``n_computed > j``)."""
        return call(g, torch.ops.aten.select.int, self.history, -1, j)

    def distance(self, g: fx.Graph, j: int = 0) -> fx.Node:
        """``i - a_j`` (int64): steps since the (j+1)-th most recent computed step."""
        return call(g, torch.ops.aten.sub.Tensor, self.step, self.computed_at(g, j))

    def known(self, g: fx.Graph, count: int) -> fx.Node:
        """True where at least ``count`` steps were computed before i."""
        return call(g, torch.ops.aten.ge.Scalar, self.n_computed, count)

    def real(self, g: fx.Graph, x: fx.Node) -> fx.Node:
        """``x`` in float64, for computing coefficients."""
        return g.call_function(torch.ops.aten._to_copy.default, (x,), {"dtype": torch.float64})

    def coefficient(self, g: fx.Graph, c: fx.Node) -> fx.Node:
        """A float64 coefficient ready to scale the state: 0-d float64 stays (a 0-d tensor does not promote
        the state's dtype); per sample ([B, 1, ...]) it is cast to the unit's dtype (else it would promote)."""
        if self.dtype is None:
            return c
        return g.call_function(torch.ops.aten._to_copy.default, (c,), {"dtype": self.dtype})


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


def weighted_sum(g: fx.Graph, clock: Clock, terms: list[tuple[fx.Node, fx.Node | None]]) -> fx.Node:
    """``sum_j c_j * x_j`` for ``(x_j, c_j)`` pairs (float64 coefficient nodes; ``None`` = 1)."""
    aten = torch.ops.aten
    total: fx.Node | None = None
    for x, c in terms:
        term = x if c is None else call(g, aten.mul.Tensor, x, clock.coefficient(g, c))
        total = term if total is None else call(g, aten.add.Tensor, total, term)
    assert total is not None
    return total


@dataclasses.dataclass(frozen=True)
class FromStep(Predictor):
    """``inner``'s forecast from step ``start`` on; before it, cached steps reuse the last computed value
    (``state[0]`` of every predictor here). For models whose early features do not extrapolate."""

    inner: Predictor = dataclasses.field(default_factory=Reuse)
    start: int = 0
    name = "from_step"

    def num_state(self) -> int:
        return self.inner.num_state()

    def on_compute(self, g: fx.Graph, value: fx.Node, state: list[fx.Node], clock: Clock) -> list[fx.Node]:
        return self.inner.on_compute(g, value, state, clock)

    def on_cached(self, g: fx.Graph, state: list[fx.Node], clock: Clock) -> tuple[fx.Node, list[fx.Node]]:
        forecast, new_state = self.inner.on_cached(g, state, clock)
        started = call(g, torch.ops.aten.ge.Scalar, clock.step, self.start)
        return call(g, torch.ops.aten.where.self, started, forecast, state[0]), new_state
