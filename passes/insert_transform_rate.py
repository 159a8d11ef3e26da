"""Transform pass: EasyCache's signals, from the stack's input and its cached residual, before the cond.

Precondition: ``cache_plan`` (one stack-residual unit ``delta = out - in``), ``state``. With ``x`` the
stack's input and ``v = x + delta`` its output, EasyCache needs, at step n with a and a' the last two
computed steps: the transformation rate ``k = mean|v_a - v_a'| / mean|x_a - x_a'|``, the input change
``mean|x_n - x_{n-1}|`` and ``mean|v_a|``. All are known before the cond from four buffers: ``x_{n-1}``
(``refresh_always``), ``x_a`` and ``x_a'`` (shifted on computed steps: ``refresh_on_compute``), and the
residual ``delta_a'`` (the cache buffer's value before it is overwritten, shifted on computed steps); the
current ``delta_a`` is the cache buffer itself. Postcondition: ``signals`` gets ``k * mean|x_n - x_{n-1}| /
mean|v_a|`` per sample (NaN until two computed steps exist).

A stack of several streams (SD3's image and context streams, Flux 2's outputs that are not residuals of its
inputs) has no single ``x`` and ``v``: ``x`` is then every stream input of the stack and every base of a
residual unit, ``v`` every unit's output (``base + delta``, or the cached output itself), and each mean runs
over all of their elements of one sample, as if they were concatenated. Streams whose leading dimensions
differ (packed sequences) are refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.fx as fx

from graphcache.analyses import CachePlan, StateSpec
from graphcache.blockstack import BlockStack
from graphcache.errors import UnsupportedGraphError

from .base import Pass, PassResult, analysis, mark_new
from .graph_utils import emit_traced, tensor_val


def predicted_change(x: torch.Tensor, x_prev: torch.Tensor, x_a: torch.Tensor, x_a2: torch.Tensor,
                     delta_a: torch.Tensor, delta_a2: torch.Tensor) -> torch.Tensor:
    """Per sample ``k * mean|x - x_prev| / mean|v_a|`` with ``k = mean|v_a - v_a'| / mean|x_a - x_a'|``."""
    v_a, v_a2 = x_a + delta_a, x_a2 + delta_a2
    rate = (v_a - v_a2).abs().flatten(1).mean(1) / (x_a - x_a2).abs().flatten(1).mean(1)
    return rate * (x - x_prev).abs().flatten(1).mean(1) / v_a.abs().flatten(1).mean(1)


@dataclasses.dataclass(frozen=True)
class InsertTransformRate(Pass):
    name = "insert_transform_rate"
    requires = ("cache_plan", "state", "block_stack")
    provides = ("signals", "refresh_on_compute", "refresh_always")

    def call(self, gm: fx.GraphModule) -> PassResult:
        found = analysis(gm)
        plan, state, stack = found.require(CachePlan), found.require(StateSpec), found.require(BlockStack)
        if plan.granularity != "stack" or not plan.units:
            raise UnsupportedGraphError("EasyCache needs the stack's outputs as cache units; found "
                                        f"{len(plan.units)} units at granularity '{plan.granularity}'")
        if len(plan.units) > 1 or plan.units[0].base is None:
            return self._streams(gm, plan, state, stack)
        unit = plan.units[0]
        x = unit.base
        assert x is not None  # units filtered on a base above
        val = tensor_val(x)
        assert val is not None
        anchor = stack.region[0]

        def buffer(name: str) -> fx.Node:
            return state.add(gm, f"_gc_easy_{name}", torch.empty(val.shape, dtype=val.dtype, device=val.device),
                             anchor, self.name)

        x_prev, x_a, x_a2, delta_a2 = buffer("x_prev"), buffer("x_a"), buffer("x_a2"), buffer("delta_a2")
        delta_a = state.caches[unit.name][0]
        graph = gm.graph
        before = set(graph.nodes)
        with graph.inserting_before(anchor):
            signal = emit_traced(graph, predicted_change, [x, x_prev, x_a, x_a2, delta_a, delta_a2])
        mark_new(graph, before, self.name, "decision")
        found.add_signal("change", signal, self.name)
        found.refresh_always.append((x_prev, x))
        found.refresh_on_compute.extend([(x_a, x), (x_a2, x_a), (delta_a2, delta_a)])
        return PassResult(gm, modified=True)

    def _streams(self, gm: fx.GraphModule, plan: CachePlan, state: StateSpec, stack: BlockStack) -> PassResult:
        """The several-stream form (see the module docstring): per-sample sums of absolute values over every
        input stream and every unit, then the same rate."""
        found = analysis(gm)
        xs = list(dict.fromkeys([*stack.stream_inputs, *(u.base for u in plan.units if u.base is not None)]))
        values = [tensor_val(n) for n in [*xs, *(u.node for u in plan.units)]]
        leading = {None if v is None or v.dim() == 0 else v.shape[0] for v in values}
        if len(leading) != 1 or None in leading:
            raise UnsupportedGraphError("EasyCache over several streams needs them laid out by sample (one leading "
                                        f"dimension); the stack's inputs and outputs have {sorted(map(str, leading))}")
        anchor = stack.region[0]

        def buffer(name: str, node: fx.Node) -> fx.Node:
            val = tensor_val(node)
            assert val is not None
            return state.add(gm, f"_gc_easy_{name}", torch.empty(val.shape, dtype=val.dtype, device=val.device),
                             anchor, self.name)

        x_prev = [buffer(f"x{k}_prev", x) for k, x in enumerate(xs)]
        x_a = [buffer(f"x{k}_a", x) for k, x in enumerate(xs)]
        x_a2 = [buffer(f"x{k}_a2", x) for k, x in enumerate(xs)]
        delta_a = [state.caches[u.name][0] for u in plan.units]
        delta_a2 = [buffer(f"{u.name}_a2", u.node) for u in plan.units]
        x_numel = sum(_per_sample(x) for x in xs)
        v_numel = sum(_per_sample(u.node) for u in plan.units)
        graph = gm.graph
        before = set(graph.nodes)
        with graph.inserting_before(anchor):
            def total(pairs: list[tuple[fx.Node, fx.Node | None]]) -> fx.Node:
                parts = [emit_traced(graph, _abs_sum, [a, b]) if b is not None else emit_traced(graph, _abs, [a])
                         for a, b in pairs]
                out = parts[0]
                for part in parts[1:]:
                    out = emit_traced(graph, _add, [out, part])
                return out

            def outputs(xs_at: list[fx.Node], deltas: list[fx.Node]) -> list[fx.Node]:
                return [emit_traced(graph, _add, [xs_at[xs.index(u.base)], d]) if u.base is not None else d
                        for u, d in zip(plan.units, deltas, strict=True)]

            v_a, v_a2 = outputs(x_a, delta_a), outputs(x_a2, delta_a2)
            dv = total(list(zip(v_a, v_a2, strict=True)))
            dx = total(list(zip(x_a, x_a2, strict=True)))
            change = total(list(zip(xs, x_prev, strict=True)))
            norm = total([(v, None) for v in v_a])
            signal = emit_traced(graph, _rate(x_numel, v_numel), [dv, dx, change, norm])
        mark_new(graph, before, self.name, "decision")
        found.add_signal("change", signal, self.name)
        found.refresh_always.extend(zip(x_prev, xs, strict=True))
        found.refresh_on_compute.extend([*zip(x_a2, x_a, strict=True), *zip(x_a, xs, strict=True),
                                         *zip(delta_a2, delta_a, strict=True)])
        return PassResult(gm, modified=True)


def _per_sample(node: fx.Node) -> int:
    val = tensor_val(node)
    assert val is not None
    return int(val[0].numel())


def _abs_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().flatten(1).sum(1, dtype=torch.float32)


def _abs(a: torch.Tensor) -> torch.Tensor:
    return a.abs().flatten(1).sum(1, dtype=torch.float32)


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + b


def _rate(x_numel: int, v_numel: int) -> Any:
    """``k * mean|x - x_prev| / mean|v_a|`` from per-sample sums, each mean over ``x_numel`` / ``v_numel``."""
    def rate(dv: torch.Tensor, dx: torch.Tensor, change: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        return (dv / v_numel) / (dx / x_numel) * (change / x_numel) / (norm / v_numel)

    return rate
