"""Transform pass: compute the cache decision inside the graph, from state buffers and the timestep.

Precondition: ``state`` and ``block_stack``. Postcondition: ``decision`` recorded: ``pred`` (0-d bool,
True = the branch that computes runs), the new step index, timestep and decision log, all graph nodes
placed before the block region. A generation starts when the timestep repeats or moves against the model's
direction, learned from the first generation's first move (``_gc_direction``: -1 most models, +1 for
models whose time runs up), or after ``reset()`` (which sets the last timestep to -inf): the step index
restarts at 0, the log is cleared and the step is computed.

The policy contributes ``rule(i, **signals, **accumulators)`` (traced into the graph with torch.fx; each
signal and accumulator is passed to the rule parameter of its name, checked by :func:`bind_signals`; with
``reads_timestep`` ``rule(i, t, ...)``, ``t`` the timestep value: PAB's window), which returns the compute
mask, or ``(mask, *new_accumulators)``. A rule object with ``bind(analyses)`` is first bound to what
earlier passes found (PAB: the attention kinds the model has). ``signals`` are per-sample graph values earlier
passes recorded (a probe's change, the timestep); ``accumulators`` are per-sample float32 buffers the
pass adds (``accumulators=(("name", initial), ...)``: TeaCache's accumulated distance, MagCache's error).
With signals the mask is per sample (shape [B]): ``pred`` is "any sample computes", the per-sample mask
goes to the cache branch (a sample that did not need the step keeps its cached value and state, so it
gets what it would get alone) and to ``_gc_sample_log``. ``refresh_on_compute`` pairs ``(buffer,
value)`` are written per sample where that sample computes; ``refresh_always`` pairs on every step.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable

import torch
import torch.fx as fx

from graphcache.analyses import Decision, StateSpec
from graphcache.blockstack import BlockStack
from graphcache.clock import LOG_CAPACITY, LOG_DTYPE, log_slot, logged, scheduled_step
from graphcache.errors import PassError, PolicyConfigError

from .base import Pass, PassResult, analysis, mark, mark_new
from .graph_utils import per_sample_where, tensor_val

Rule = Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]


MAX_SIGNALS = 4
MAX_ACCUMULATORS = 4


def _decision_fn(rule: Rule, signal_names: list[str], accumulator_names: list[str], per_sample: bool,
                 reads_timestep: bool = False) -> Callable[..., tuple[torch.Tensor, ...]]:
    def decide(
        t: torch.Tensor, step: torch.Tensor, last_t: torch.Tensor, direction: torch.Tensor, log: torch.Tensor,
        history: torch.Tensor, n_computed: torch.Tensor, sample_log: torch.Tensor | None = None,
        s0: torch.Tensor | None = None,
        s1: torch.Tensor | None = None, s2: torch.Tensor | None = None, s3: torch.Tensor | None = None,
        a0: torch.Tensor | None = None, a1: torch.Tensor | None = None, a2: torch.Tensor | None = None,
        a3: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        named = dict(zip(signal_names, [s0, s1, s2, s3], strict=False))
        named.update(zip(accumulator_names, [a0, a1, a2, a3], strict=False))
        mask, i, t_now, new_direction, new_generation, new_accumulators = scheduled_step(
            rule, t, last_t, step, direction, reads_timestep, named)
        if len(new_accumulators) != len(accumulator_names):
            raise PassError(f"the decision rule returns {len(new_accumulators)} new accumulator value(s) for "
                            f"{accumulator_names or 'no accumulators'}: it must return (mask, one new value each)")
        compute = mask.reshape(-1).any(0) if per_sample else mask
        slot = log_slot(log, i)
        new_log = logged(log, slot, new_generation, compute)
        # the clock: per sample (history [B, H], count [B]) when each sample decides, else one per batch
        n_before = torch.where(new_generation, torch.zeros_like(n_computed), n_computed)
        pushed = torch.cat([torch.zeros_like(history[..., :1]) + i, history[..., :-1]], -1)
        new_history = torch.where(mask.unsqueeze(-1) if per_sample else compute, pushed, history)
        new_n = n_before + (mask if per_sample else compute).to(torch.int64)
        out = [compute, i, t_now, new_log, new_history, new_n, history, n_before, mask, new_direction]
        if sample_log is not None:
            out.append(logged(sample_log, slot.unsqueeze(1), new_generation, mask.unsqueeze(0)))
        return (*out, *new_accumulators)

    return decide


def bind_signals(rule: Rule, signals: list[str], accumulators: list[str], reads_timestep: bool) -> None:
    """Check that ``rule`` reads, by parameter name, exactly the recorded signals and the accumulators (after
    the step index ``i``, and ``t`` with ``reads_timestep``): a signal no parameter names, or a parameter no
    signal or accumulator provides, is refused here rather than read as the wrong value."""
    params = list(inspect.signature(rule).parameters.values())
    named = [p.name for p in params[(2 if reads_timestep else 1):]
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unread = [s for s in [*signals, *accumulators] if s not in named]
    unbound = [p for p in named if p not in signals and p not in accumulators] if signals or accumulators else []
    clash = sorted(set(signals) & set(accumulators))
    if unread or unbound or clash:
        raise PassError(
            f"the decision rule {getattr(rule, '__qualname__', rule)} reads {named or 'no signal'}; recorded signals "
            f"{signals or 'none'}, accumulators {accumulators or 'none'}"
            + (f"; no parameter reads {unread}" if unread else "")
            + (f"; nothing provides {unbound}" if unbound else "")
            + (f"; both a signal and an accumulator: {clash}" if clash else ""))


def _trace(fn: Callable[..., tuple[torch.Tensor, ...]], used: list[str]) -> fx.GraphModule:
    names = ["sample_log", "s0", "s1", "s2", "s3", "a0", "a1", "a2", "a3"]
    traced = fx.symbolic_trace(fn, concrete_args={n: None for n in names if n not in used})
    for check in [n for n in traced.graph.nodes if n.op == "call_function" and "assert_is_none" in str(n.target)]:
        traced.graph.erase_node(check)  # fx's guards on the None arguments: not graph values
    for node in [n for n in traced.graph.nodes if n.op == "placeholder" and not n.users]:
        traced.graph.erase_node(node)
    return traced


@dataclasses.dataclass(frozen=True)
class InsertDecision(Pass):
    rule: Rule = dataclasses.field(default=lambda i: torch.ones_like(i, dtype=torch.bool))
    accumulators: tuple[tuple[str, float], ...] = ()
    reads_timestep: bool = False  # rule(i, t, ...): t the step's timestep value (the batch's largest)
    name = "insert_decision"
    requires = ("state", "block_stack")
    provides = ("decision",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        state = analysis(gm).require(StateSpec)
        stack = analysis(gm).require(BlockStack)
        recorded = analysis(gm).signals
        signals = list(recorded.values())
        if len(signals) > MAX_SIGNALS or len(self.accumulators) > MAX_ACCUMULATORS:
            raise PassError(f"the decision reads at most {MAX_SIGNALS} signals and {MAX_ACCUMULATORS} accumulators, "
                            f"got {list(recorded)} and {[n for n, _ in self.accumulators]}")
        per_sample = bool(signals)
        anchor = stack.region[0]
        why: str | None = None
        extra: list[fx.Node] = []
        used = [f"s{k}" for k in range(len(signals))] + [f"a{k}" for k in range(len(self.accumulators))]
        if per_sample:
            batch = _batch_size(signals[0])
            why = _not_by_sample(stack, batch)
            if why:  # one decision per call: rows of another axis must not decide apart (they mix samples)
                warnings.warn(f"graphcache: per-sample decisions need the hidden stream laid out by sample; {why}: "
                              "the whole call decides once, from the mean of the rows' signals", stacklevel=2)
                recorded = {name: _pooled(gm.graph, node, anchor, self.name) for name, node in recorded.items()}
                signals = list(recorded.values())
            config = getattr(self.rule, "__self__", None)
            if getattr(config, "pair_halves", False) and getattr(config, "per_sample", True) and batch % 2:
                raise PolicyConfigError(f"{getattr(config, 'name', 'policy')}.pair_halves=true needs a batch of two "
                                        f"halves (guidance as one call on a doubled batch); this batch is {batch}")
            sample_log = state.add(gm, "_gc_sample_log", torch.empty(LOG_CAPACITY, batch, dtype=LOG_DTYPE),
                                   anchor, self.name, -1)
            for clock_buffer in (state.history, state.n_computed):  # one clock per sample
                old = gm.get_buffer(str(clock_buffer.target))
                gm.register_buffer(str(clock_buffer.target), old.new_zeros((batch, *old.shape)))
            accumulators = [state.add(gm, f"_gc_acc_{name}", torch.empty(batch), anchor, self.name, initial)
                            for name, initial in self.accumulators]
            extra, used = [sample_log, *signals, *accumulators], ["sample_log", *used]
        rule = self.rule.bind(analysis(gm)) if hasattr(self.rule, "bind") else self.rule
        accumulator_names = [n for n, _ in self.accumulators]
        bind_signals(rule, list(recorded), accumulator_names, self.reads_timestep)
        decide = _decision_fn(rule, list(recorded), accumulator_names, per_sample, self.reads_timestep)
        traced = _trace(decide, used)
        placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
        direction = state.add(gm, "_gc_direction", torch.zeros(()), anchor, self.name, 0.0)
        inputs = [stack.timestep, state.step, state.last_t, direction, state.log, state.history, state.n_computed,
                  *extra]
        before = set(gm.graph.nodes)
        with gm.graph.inserting_before(anchor):
            out = gm.graph.graph_copy(traced.graph, dict(zip(placeholders, inputs, strict=True)))
        assert isinstance(out, tuple)
        pred, step, t_now, log, history, n_computed, history_before, n_before, mask, new_direction = out[:10]
        updates = [(state.step, step), (state.last_t, t_now), (direction, new_direction), (state.log, log),
                   (state.history, history), (state.n_computed, n_computed)]
        if per_sample:
            updates.append((extra[0], out[10]))
            updates.extend(zip(extra[1 + len(signals):], out[11:], strict=True))
        with gm.graph.inserting_before(anchor):
            for buffer, fresh in analysis(gm).refresh_on_compute:
                kept = (per_sample_where(gm.graph, mask, fresh, buffer, fresh) if per_sample else
                        gm.graph.call_function(torch.ops.aten.where.self, (pred, fresh, buffer)))
                updates.append((buffer, kept))
            updates.extend(analysis(gm).refresh_always)
        mark_new(gm.graph, before, self.name, "decision")
        static = rule if not per_sample and not self.accumulators else None
        analysis(gm).decision = Decision(pred, updates, [step, history_before, n_before],
                                            mask if per_sample else None, static, self.reads_timestep, why)
        return PassResult(gm, modified=True)


def _not_by_sample(stack: BlockStack, rows: int) -> str | None:
    """Why the signals' ``rows`` are not the batch's samples (None when they are): a per-sample timestep of
    another length (a sequence-first stream, frames folded into the batch, a packed sequence with a timestep
    per token), or hidden streams whose leading dimensions differ."""
    if rows == 1:
        return None
    t = tensor_val(stack.timestep)
    if t is not None and t.dim() >= 1 and t.shape[0] > 1 and t.shape[0] != rows:
        return f"the signals have {rows} rows for {t.shape[0]} timesteps"
    leading = {int(v.shape[0]) for v in map(tensor_val, stack.stream_inputs) if v is not None and v.dim() >= 1}
    if len(leading) > 1:
        return f"the hidden streams' leading dimensions differ ({sorted(leading)})"
    return None


def _pooled(graph: fx.Graph, signal: fx.Node, anchor: fx.Node, pass_name: str) -> fx.Node:
    """``signal``'s mean over its rows, for every row (the decision is then the same for all)."""
    with graph.inserting_before(anchor):
        mean = mark(graph.call_function(torch.ops.aten.mean.dim, (signal, [0], True)), pass_name, "decision")
        return mark(graph.call_function(torch.ops.aten.expand_as.default, (mean, signal)), pass_name, "decision")


def _batch_size(signal: fx.Node) -> int:
    val = tensor_val(signal)
    if val is None or val.dim() != 1:
        raise PassError(f"decision signal {signal.name} must be a per-sample vector, got {val}")
    return int(val.shape[0])
