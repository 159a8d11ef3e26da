"""A static schedule's decision for the next call, made on the host before the call: the rule's own
arithmetic on the clock's values read from the state buffers (what lets :mod:`graphcache.cached_step` pick
the cached-step graph)."""

from __future__ import annotations

import torch
import torch.fx as fx

from graphcache.analyses import StateSpec
from graphcache.clock import scheduled_step
from graphcache.passes.base import analysis

DYNAMIC = "the decision reads values computed in the graph"  # why_not of a dynamic policy (not a note)
MEMO_LIMIT = 4096  # host decisions remembered by (timestep, clock): generations repeat their schedule


class HostSchedule:
    """A static schedule's decision evaluated on the host, before the call: the rule's own arithmetic
    (:func:`graphcache.clock.scheduled_step`) on the clock's values read from the state buffers (the host clock
    where ``host_decision`` moved the decision there), memoized by (timestep, clock). ``why_not`` says why
    the host cannot decide for this graph (None: it can)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.why_not: str | None = None
        self.memo: dict[tuple[float, ...], bool] = {}
        found = analysis(gm)
        decision = found.decision
        if decision is None or decision.static_rule is None:
            self.why_not = DYNAMIC
            return
        host = found.host_decision
        on_host = host is not None and host.conds > 0
        spec = found.require(StateSpec)
        if not on_host and spec.device.type != "cpu":
            self.why_not = "the clock is on the device and the decision is not moved to the host"
            return
        names = ("_gc_host_step", "_gc_host_last_t", "_gc_host_direction") if on_host else (
            str(spec.step.target), str(spec.last_t.target), "_gc_direction")
        self.clock = [gm.get_buffer(n) for n in names]
        self.host_t = gm.get_buffer(host.buffer) if on_host and host is not None else None
        self.rule, self.reads_timestep = decision.static_rule, decision.reads_timestep

    def will_cache(self, t: float) -> bool:
        """Whether the graph's decision for a call at timestep ``t`` (read on the host) is "cached"."""
        step, last_t, direction = (b.item() for b in self.clock)
        key = (t, step, last_t, direction)
        compute = self.memo.get(key)
        if compute is None:
            if len(self.memo) >= MEMO_LIMIT:
                self.memo.clear()
            value = torch.tensor([t], dtype=torch.float32)
            clock = [b.detach().to("cpu", copy=True) for b in self.clock]
            mask = scheduled_step(self.rule, value, clock[1], clock[0], clock[2], self.reads_timestep)[0]
            compute = self.memo[key] = bool(mask.reshape(-1).any())
        return not compute

