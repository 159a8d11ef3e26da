"""Transform pass: add the persistent cache state as buffers of the GraphModule.

Precondition: ``cache_plan``. Postcondition: ``state`` recorded (a :class:`StateSpec`); new buffers
``_gc_step`` (int64, index of the current step in its generation), ``_gc_last_t`` (float32, last
timestep; -inf = no generation yet), ``_gc_log`` (int32 ring of decisions: 1 computed, 0 cached, -1 unset),
``_gc_history`` / ``_gc_n_computed`` (the predictors' clock: positions of the last computed steps, most
recent first, and how many steps were computed; per sample when each sample decides)
and, per cached unit, the predictor's state tensors, each read by one ``get_attr`` node.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx

from graphcache.analyses import CachePlan, StateSpec
from graphcache.blockstack import BlockStack
from graphcache.clock import LOG_CAPACITY, LOG_DTYPE
from graphcache.predictors import HISTORY, Predictor, Reuse

from .base import Pass, PassResult, analysis
from .graph_utils import tensor_val


@dataclasses.dataclass(frozen=True)
class AddCacheState(Pass):
    predictor: Predictor = dataclasses.field(default_factory=Reuse)
    name = "add_cache_state"
    requires = ("cache_plan", "block_stack")
    provides = ("state",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        plan = analysis(gm).require(CachePlan)
        anchor = analysis(gm).require(BlockStack).region[0]
        device = _device_of(gm)
        spec = StateSpec(step=None, last_t=None, log=None, history=None, n_computed=None,  # type: ignore[arg-type]
                         caches={}, buffers=[], device=device)

        def add(name: str, shape: tuple[int, ...], dtype: torch.dtype, fill: float = 0.0) -> fx.Node:
            return spec.add(gm, name, torch.empty(shape, dtype=dtype, device=device), anchor, self.name, fill)

        spec.step = add("_gc_step", (), torch.int64)
        spec.last_t = add("_gc_last_t", (), torch.float32, float("-inf"))
        spec.log = add("_gc_log", (LOG_CAPACITY,), LOG_DTYPE, -1)
        spec.history = add("_gc_history", (HISTORY,), torch.int64)
        spec.n_computed = add("_gc_n_computed", (), torch.int64)
        for unit in plan.units:
            val = tensor_val(unit.node)
            assert val is not None, f"cache unit {unit.name} has no meta['val']"
            spec.caches[unit.name] = [add(f"_gc_{unit.name}_{j}", tuple(val.shape), val.dtype)
                                      for j in range(self.predictor.num_state())]
        analysis(gm).state = spec
        return PassResult(gm, modified=True)


def _device_of(gm: fx.GraphModule) -> torch.device:
    """Where the model runs: an accelerator any of its inputs or parameters is on (a model on CUDA may still take
    a CPU timestep), else the CPU."""
    devices = [val.device for node in gm.graph.nodes if node.op in ("placeholder", "get_attr")
               if (val := tensor_val(node)) is not None]
    return next((d for d in devices if d.type != "cpu"), torch.device("cpu"))
