"""Transform pass: compute the cache decision inside the graph, from state buffers and the timestep.

Precondition: ``state`` and ``block_stack``. Postcondition: ``decision`` recorded: ``pred`` (0-d bool,
True = compute), the new step index, timestep and decision log, all graph nodes placed before the block
region. A generation starts when the timestep does not decrease (or after ``reset()``, which sets the last
timestep to -inf): the step index restarts at 0, the log is cleared and the step is computed. The policy
contributes ``rule(i, *signals) -> bool`` (compute at step i), traced into the graph with torch.fx;
``signals`` are graph values earlier passes recorded (e.g. a probe's per-sample change), and
``refresh_on_compute`` pairs ``(buffer, value)`` become ``where(pred, value, buffer)`` writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.fx as fx

from .add_cache_state import LOG_CAPACITY, LOG_DTYPE, StateSpec
from .base import Pass, PassResult, analysis, mark

Rule = Callable[..., torch.Tensor]


@dataclasses.dataclass
class Decision:
    pred: fx.Node
    updates: list[tuple[fx.Node, fx.Node]]  # (state buffer node, new value node), written after the cond
    clock: list[fx.Node]  # step index, last computed step, computed steps so far: operands of both branches


MAX_SIGNALS = 4


def _decision_fn(rule: Rule) -> Callable[..., tuple[torch.Tensor, ...]]:
    def decide(
        t: torch.Tensor, step: torch.Tensor, last_t: torch.Tensor, log: torch.Tensor, last_compute: torch.Tensor,
        n_computed: torch.Tensor, s0: torch.Tensor | None = None, s1: torch.Tensor | None = None,
        s2: torch.Tensor | None = None, s3: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        t_now = t.reshape(-1).to(torch.float32).amax(0)  # explicit dim: ONNX ReduceMax needs it
        new_generation = t_now >= last_t
        i = torch.where(new_generation, torch.zeros_like(step), step + 1)
        compute = new_generation | rule(i, *[s for s in (s0, s1, s2, s3) if s is not None])
        positions = torch.ones_like(log, dtype=torch.int64).cumsum(0) - 1  # arange on log's device
        slot = positions == (i % LOG_CAPACITY)
        cleared = torch.where(new_generation, torch.full_like(log, -1), log)
        new_log = torch.where(slot, compute.to(LOG_DTYPE), cleared)
        n_before = torch.where(new_generation, torch.zeros_like(n_computed), n_computed)
        new_last_compute = torch.where(compute, i, last_compute)
        new_n = n_before + compute.to(torch.int64)
        return compute, i, t_now, new_log, new_last_compute, new_n, last_compute, n_before

    return decide


@dataclasses.dataclass(frozen=True)
class InsertDecision(Pass):
    rule: Rule = dataclasses.field(default=lambda i: torch.ones_like(i, dtype=torch.bool))
    name = "insert_decision"
    requires = ("state", "block_stack")
    provides = ("decision",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        state: StateSpec = analysis(gm)["state"]
        stack = analysis(gm)["block_stack"]
        signals = list(analysis(gm).get("signals", []))
        assert len(signals) <= MAX_SIGNALS, f"at most {MAX_SIGNALS} decision signals"
        unused = {f"s{k}": None for k in range(len(signals), MAX_SIGNALS)}
        traced = fx.symbolic_trace(_decision_fn(self.rule), concrete_args=unused)
        for check in [n for n in traced.graph.nodes if n.op == "call_function" and "assert_is_none" in str(n.target)]:
            traced.graph.erase_node(check)  # fx's guards on the None arguments: not graph values
        placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
        for node in placeholders[6 + len(signals) :]:
            traced.graph.erase_node(node)
        inputs = [stack.timestep, state.step, state.last_t, state.log, state.last_compute, state.n_computed]
        env = dict(zip(placeholders[: 6 + len(signals)], [*inputs, *signals], strict=True))
        before = set(gm.graph.nodes)
        with gm.graph.inserting_before(stack.region[0]):
            out = gm.graph.graph_copy(traced.graph, env)
        for node in gm.graph.nodes:
            if node not in before:
                mark(node, self.name, "decision")
        assert isinstance(out, tuple)
        pred, step, t_now, log, last_compute, n_computed, last_before, n_before = out
        updates = [(state.step, step), (state.last_t, t_now), (state.log, log), (state.last_compute, last_compute),
                   (state.n_computed, n_computed)]
        for buffer, fresh in analysis(gm).get("refresh_on_compute", []):
            with gm.graph.inserting_before(stack.region[0]):
                kept = mark(gm.graph.call_function(torch.ops.aten.where.self, (pred, fresh, buffer)), self.name,
                            "decision")
            updates.append((buffer, kept))
        analysis(gm)["decision"] = Decision(pred, updates, [step, last_before, n_before])
        return PassResult(gm, modified=True)
