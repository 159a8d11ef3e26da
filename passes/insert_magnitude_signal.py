"""Transform pass: MagCache's calibrated magnitude ratio at the current timestep, as decision signals.

Precondition: ``block_stack``. The calibration (``timesteps``, ``ratios``: gamma by timestep value) becomes
two constant buffers; ``gamma(t)`` is their piecewise-linear interpolation, clamped at the ends, written
with elementwise ops only (``r_0 + sum_k (r_{k+1} - r_k) * clamp((t - t_k) / (t_{k+1} - t_k), 0, 1)``), so
it exports to ONNX / TensorRT unchanged and any step count interpolates. Postcondition: ``signals`` gets
``gamma`` and the timestep, one value per timestep entry.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx

from graphcache.blockstack import BlockStack
from graphcache.errors import PolicyConfigError

from .base import Pass, PassResult, analysis, mark_new
from .graph_utils import emit_traced


def interpolate(t: torch.Tensor, knots: torch.Tensor, steps: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``gamma(t)`` from knots ``t_k`` (ascending), ``steps = r_{k+1} - r_k``, ``first = r_0``."""
    t = t.reshape(-1, 1).to(torch.float32)
    lo, width = knots[:-1], knots[1:] - knots[:-1]
    return first + (steps * ((t - lo) / width).clamp(0.0, 1.0)).sum(-1)


def timestep_vector(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).to(torch.float32)


@dataclasses.dataclass(frozen=True)
class InsertMagnitudeSignal(Pass):
    timesteps: tuple[float, ...] = ()
    ratios: tuple[float, ...] = ()
    name = "insert_magnitude_signal"
    requires = ("block_stack",)
    provides = ("signals",)

    def __post_init__(self) -> None:
        if len(self.timesteps) < 2 or len(self.timesteps) != len(self.ratios):
            raise PolicyConfigError(f"the magnitude ratios need one ratio per timestep and at least two of each; got "
                                    f"{len(self.timesteps)} timesteps and {len(self.ratios)} ratios")
        if len(set(self.timesteps)) != len(self.timesteps):
            raise PolicyConfigError("the magnitude ratios' timesteps repeat a value; each timestep needs one ratio")

    def call(self, gm: fx.GraphModule) -> PassResult:
        found = analysis(gm)
        stack = found.require(BlockStack)
        order = sorted(range(len(self.timesteps)), key=lambda k: self.timesteps[k])
        knots = torch.tensor([self.timesteps[k] for k in order], dtype=torch.float32)
        ratios = torch.tensor([self.ratios[k] for k in order], dtype=torch.float32)
        device = stack.timestep.meta["val"].device
        gm.register_buffer("_gc_mag_knots", knots.to(device))
        gm.register_buffer("_gc_mag_steps", (ratios[1:] - ratios[:-1]).to(device))
        gm.register_buffer("_gc_mag_first", ratios[0].to(device))
        graph = gm.graph
        before = set(graph.nodes)
        with graph.inserting_before(stack.region[0]):
            consts = [graph.get_attr(n) for n in ("_gc_mag_knots", "_gc_mag_steps", "_gc_mag_first")]
            t = emit_traced(graph, timestep_vector, [stack.timestep])
            gamma = emit_traced(graph, interpolate, [stack.timestep, *consts])
        mark_new(graph, before, self.name, "decision")
        found.add_signal("gamma", gamma, self.name)
        found.add_signal("t", t, self.name)
        return PassResult(gm, modified=True)

