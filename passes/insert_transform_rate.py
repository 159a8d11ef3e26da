"""Transform pass: EasyCache's signals, from the stack's input and its cached residual, before the cond.

Precondition: ``cache_plan`` (one stack-residual unit ``delta = out - in``), ``state``. With ``x`` the
stack's input and ``v = x + delta`` its output, EasyCache needs, at step n with a and a' the last two
computed steps: the transformation rate ``k = mean|v_a - v_a'| / mean|x_a - x_a'|``, the input change
``mean|x_n - x_{n-1}|`` and ``mean|v_a|``. All are known before the cond from four buffers: ``x_{n-1}``
(``refresh_always``), ``x_a`` and ``x_a'`` (shifted on computed steps: ``refresh_on_compute``), and the
residual ``delta_a'`` (the cache buffer's value before it is overwritten, shifted on computed steps); the
current ``delta_a`` is the cache buffer itself. Postcondition: ``signals`` gets ``k * mean|x_n - x_{n-1}| /
mean|v_a|`` per sample (NaN until two computed steps exist).
"""

from __future__ import annotations

import dataclasses

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
        units = [u for u in plan.units if u.base is not None]
        if plan.granularity != "stack" or len(units) != 1:
            raise UnsupportedGraphError("EasyCache needs one stack residual (out - in) to cache; found "
                                        f"{len(units)} residual units at granularity '{plan.granularity}'")
        unit = units[0]
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
