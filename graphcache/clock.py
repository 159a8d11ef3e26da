"""The step clock and decision log every cached graph keeps: in-graph arithmetic shared by the decision pass,
the state object and CFG-Cache's wrapper (tensor functions, traced into graphs with torch.fx)."""

from __future__ import annotations

from typing import Any

import torch

LOG_CAPACITY = 1024
LOG_DTYPE = torch.int32  # TensorRT has no plain int8 tensors


def next_step(t: torch.Tensor, last_t: torch.Tensor, step: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(t_now, new_generation, i)``: the call's timestep (the batch's largest), whether it starts a
    generation (the timestep did not decrease) and the step index (0 then, else one past the last)."""
    t_now = t.reshape(-1).to(torch.float32).amax(0)  # explicit dim: ONNX ReduceMax needs it
    new_generation = t_now >= last_t
    return t_now, new_generation, torch.where(new_generation, torch.zeros_like(step), step + 1)


def next_step_directed(t: torch.Tensor, last_t: torch.Tensor, step: torch.Tensor, direction: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`next_step` for models whose timestep may run either way: ``direction`` is -1 (t decreases along a
    generation, most models), +1 (t increases: Lumina-Next, Z-Image) or 0 (not known yet: the second call of
    the first generation sets it from its move). A generation starts on the first call (or after ``reset()``),
    when the timestep repeats, or when it moves against the direction. Returns ``(t_now, new_generation, i,
    new_direction)``."""
    t_now = t.reshape(-1).to(torch.float32).amax(0)
    started = torch.isinf(last_t)
    moving = torch.where(started, torch.zeros_like(t_now), t_now - last_t)
    new_generation = started | (moving == 0) | (moving * direction < 0)
    new_direction = torch.where((direction == 0) & ~new_generation, torch.sign(moving), direction)
    return t_now, new_generation, torch.where(new_generation, torch.zeros_like(step), step + 1), new_direction


def scheduled_step(rule: Any, t: torch.Tensor, last_t: torch.Tensor, step: torch.Tensor, direction: torch.Tensor,
                   reads_timestep: bool = False, named: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """One call of the clock and the policy's rule: ``rule(i, **named)``, or ``rule(i, t_now, **named)`` with
    ``reads_timestep`` (``named``: signals and accumulators by the rule parameter that reads them). Returns
    ``(mask, i, t_now, new_direction, new_generation, new_accumulators)``, ``mask`` the rule's compute mask
    or'ed with the start of a generation. The decision pass traces it onto the device clock, the host
    decision onto its host copy: one code for both."""
    t_now, new_generation, i, new_direction = next_step_directed(t, last_t, step, direction)
    named = named or {}
    result = rule(i, t_now, **named) if reads_timestep else rule(i, **named)
    mask, accumulators = (result[0], list(result[1:])) if isinstance(result, tuple) else (result, [])
    return mask | new_generation, i, t_now, new_direction, new_generation, accumulators


def log_slot(log: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """The ring-log position of step ``i`` as a mask over the (1-D) log."""
    positions = torch.ones_like(log, dtype=torch.int64).cumsum(0) - 1  # arange on the log's device
    return positions == (i % LOG_CAPACITY)


def logged(log: torch.Tensor, slot: torch.Tensor, new_generation: torch.Tensor, value: torch.Tensor
           ) -> torch.Tensor:
    """``log`` with ``value`` written at ``slot``, cleared to -1 first when a generation starts."""
    cleared = torch.where(new_generation, torch.full_like(log, -1), log)
    return torch.where(slot, value.to(LOG_DTYPE), cleared)
