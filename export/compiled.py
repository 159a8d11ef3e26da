"""The step-unrolled form in this process: the plan's graphs compiled with ``torch.compile``, nothing written.

For a static schedule on a GPU this is the fastest route: the host picks the full-step or the cached-step
graph from the schedule, each graph can be one CUDA-graph replay (``mode="reduce-overhead"``; Inductor's
CUDA graphs split the in-graph route around its cond), and a cached step writes no state (on torch 2.11 the
in-graph route's functional branches copy it every step). Measured on an H200 (``benchmarks/gpu_check.py
--sections 3``, docs/measurements.md): FORA 2.84x of a 2.94x limit (96.6%) against 93% in-graph; per-block
TaylorSeer / FoCa 73% / 76% (default mode) against 19% / 33% in-graph.

    runner = compile_unrolled(model, example_kwargs, "fora", steps=50, mode="reduce-overhead")
    for t in timesteps:
        out = runner(**inputs(t))

The runner is an export :class:`~graphcache.export.runtime.PlanRunner`: generations start as in the graph
(the timestep repeats or moves against the model's direction, or ``reset()``), streams by ``cache_context``
or by call order at one timestep, ``decisions()`` from the state's log. Shapes and dtypes are the example's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from graphcache.errors import ExportError
from graphcache.passes.dense_cond_operands import DenseCondOperands
from graphcache.policies import PolicyConfig, make_policy
from graphcache.rewrite import INDUCTOR_OPTIONS

from .build import check_exportable, plan_graphs
from .functional import FunctionalGraph
from .plan import Plan
from .runtime import PlanRunner

MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class CompiledBackend:
    """Each graph of the plan under ``torch.compile`` (fullgraph, static shapes); state as device tensors."""

    def __init__(self, plan: Plan, graphs: Mapping[str, FunctionalGraph], device: torch.device,
                 backend: str = "inductor", mode: str | None = None) -> None:
        self.plan = plan
        self.device = device
        self.specs = {s.name: s for s in plan.state}
        self.cudagraphs = mode == "reduce-overhead" and device.type == "cuda"
        # graphcache's Inductor settings where torch.compile takes them (it refuses options beside a mode)
        options = dict(INDUCTOR_OPTIONS) if backend == "inductor" and mode is None else None
        self.compiled = {name: torch.compile(g.module, backend=backend, fullgraph=True, dynamic=False, mode=mode,
                                             options=options) for name, g in graphs.items()}

    def allocate(self, name: str) -> torch.Tensor:
        return self.specs[name].initial(self.device)

    def run(self, graph: str, inputs: Sequence[torch.Tensor], state: dict[str, Any]) -> tuple[
            list[torch.Tensor], dict[str, Any]]:
        args = [*inputs, *(state[s.name] for s in self.plan.state)]
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad():
            results = list(self.compiled[graph](*args))
        if self.cudagraphs:  # a replay's outputs live in the graphs' memory pool: the next replay overwrites them
            results = [r.clone() for r in results]
        n = len(self.plan.outputs)
        return results[:n], dict(zip(self.plan.graphs[graph].writes, results[n:], strict=True))

    def read(self, handle: Any) -> torch.Tensor:
        return handle.detach().cpu()  # type: ignore[no-any-return]


def compile_unrolled(model: torch.nn.Module, example_kwargs: Mapping[str, Any], policy: str | PolicyConfig = "fora",
                     steps: int = 50, mode: str | None = None, backend: str = "inductor",
                     **options: Any) -> PlanRunner:
    """A runner of ``policy``'s step-unrolled schedule for generations of ``steps`` steps, its graphs compiled
    here with ``torch.compile(backend=backend, mode=mode)``. Static policies only (a decision from the
    features has no schedule to unroll: use ``graphcache.optimize``)."""
    config = make_policy(policy, **options)
    if not config.static:
        raise ExportError(f"policy '{config.name}' decides at run time from the features, so it has no step-unrolled "
                          "schedule; use graphcache.optimize (the decision in the graph)")
    if mode not in MODES:
        raise ExportError(f"unknown torch.compile mode {mode!r}; choose one of {', '.join(map(str, MODES))}")
    check_exportable(config, steps)
    _, graphs, plan = plan_graphs(model, example_kwargs, config, "compile", "unrolled", steps, DenseCondOperands())
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # the state lives with the weights
    return PlanRunner(plan, CompiledBackend(plan, graphs, device, backend, mode))
