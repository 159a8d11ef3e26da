"""The torch.export route: capture once, rewrite, and keep a callable module with its cache state."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.fx as fx

from graphcache.analyses import SampleBuckets
from graphcache.blockstack import BlockStack
from graphcache.capture import capture_export
from graphcache.errors import GraphcacheError, first_line
from graphcache.passes.base import analysis
from graphcache.policies import PolicyConfig, make_policy
from graphcache.rewrite import rewrite
from graphcache.state import CacheState


@dataclasses.dataclass
class ExportedCache:
    """A rewritten exported graph: call ``module(**inputs)`` like the original model."""

    module: fx.GraphModule
    state: CacheState
    policy: PolicyConfig

    @property
    def block_stack(self) -> BlockStack:
        return analysis(self.module).require(BlockStack)

    def __call__(self, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(**kwargs)


def export_buckets(model: torch.nn.Module, example_kwargs: Mapping[str, Any], count: int) -> SampleBuckets:
    """The model exported at each of ``count`` bucket batch sizes (:mod:`graphcache.buckets`), or why not."""
    from graphcache.buckets import bucket_plan, sliced

    batch, sizes, reason = bucket_plan((), example_kwargs, count)
    if reason:
        return SampleBuckets({}, reason=reason)
    graphs = {}
    for size in sizes:
        _, small = sliced((), example_kwargs, batch, size)  # type: ignore[arg-type]
        try:
            graphs[size] = capture_export(model, small)[0]
        except GraphcacheError as err:
            return SampleBuckets({}, reason=f"exporting the model at batch {size} failed: {first_line(err, 160)}")
    return SampleBuckets(graphs)


def optimize_exported(
    model: torch.nn.Module, example_kwargs: Mapping[str, Any], policy: str | PolicyConfig = "auto",
    lowering: tuple[Any, ...] = (), self_check: bool = True, **options: Any,
) -> ExportedCache:
    """Capture ``model`` with torch.export on ``example_kwargs`` and apply ``policy`` to the graph (checked
    against the captured graph on ``example_kwargs`` unless ``self_check=False``)."""
    config = make_policy(policy, **options)
    config.check_model(model)
    gm, flat_inputs = capture_export(model.eval(), example_kwargs)
    if getattr(config, "buckets", 0):
        analysis(gm).sample_buckets = export_buckets(model, example_kwargs, config.buckets)  # type: ignore[attr-defined]
    state = rewrite(gm, flat_inputs, config, lowering, self_check)
    return ExportedCache(gm, state, config)


class CompiledExport:
    """An :class:`ExportedCache`'s module compiled with ``torch.compile`` (``backend``: ``"inductor"``,
    ``"aot_eager"``, or ``"eager"``: run as it is), called like the model (``fast(**inputs)``). As in
    ``graphcache.optimize`` (:mod:`graphcache.cached_step`), a static schedule's cached steps run by their own
    graph (``cached_step_graph = False``: through the one graph) and every other call after a generation's
    first runs the graph dynamo compiled without dynamo's guard check (``direct_calls = False``: every call
    through dynamo)."""

    cached_step_graph = True
    direct_calls = True

    def __init__(self, cached: ExportedCache, backend: str = "inductor") -> None:
        from graphcache.host_timestep import HostTimestep

        self.cached = cached
        self.backend = backend
        module = cached.module
        self.full: Any = module if backend == "eager" else torch.compile(
            module, backend=self._compile, fullgraph=True, dynamic=False)
        self.steps: Any = None  # the CachedStepGraph, made at the first call (after dynamo compiled the graph)
        self.compiles = 0
        self.full_calls = 0  # calls through dynamo (backend "eager": the module op by op)
        self._last_outputs: list[int] = []  # ids of the compiled graph's outputs at its last call
        self.reader = HostTimestep()
        timestep = analysis(module).block_stack.timestep if analysis(module).block_stack is not None else None
        self.timestep = timestep.name if timestep is not None and timestep.op == "placeholder" else None

    def _compile(self, gm: fx.GraphModule, example_inputs: list[Any]) -> Any:
        """The dynamo backend: ``backend``'s compilation, noting its outputs at each call. The graph dynamo made
        of the module takes the module's parameters and buffers too, each named by its source; a second
        compilation (another input signature) turns the direct route off."""
        from graphcache.backend import lower
        from graphcache.capture import input_sources

        compiled = lower(gm, example_inputs, self.backend)
        self.compiles += 1
        state = self.cached.state
        if self.compiles == 1:
            sources = input_sources(gm)
            state.dynamo_sources = [sources.get(n.name, "") for n in gm.graph.find_nodes(op="placeholder")]
            state.dynamo_inputs = len(example_inputs)
        state.compiled_call = None  # set once the first call's outputs are matched to the module's
        if self.steps is not None and self.compiles > 1:
            self.steps.direct_why_not = "the module was compiled again (another input signature)"

        def run(*args: Any) -> Any:
            outputs = compiled(*args)
            self._last_outputs = [id(x) for x in outputs]
            return outputs

        run._boxed_call = getattr(compiled, "_boxed_call", False)  # type: ignore[attr-defined]
        self._compiled = compiled
        return run

    def __call__(self, **kwargs: Any) -> Any:
        from graphcache.cached_step import NOT_RUN

        with torch.no_grad():
            t = kwargs.get(self.timestep) if self.timestep is not None else None
            steps = self.steps
            if t is not None and steps is not None and steps.call is not None:
                out = steps.run_around_dynamo((), kwargs, self.reader.read(t), direct=self.direct_calls)
                if out is not NOT_RUN:
                    return out
            out = self.full(**kwargs)
            self.full_calls += 1
            if t is not None and (self.cached_step_graph or self.direct_calls):
                self._record(kwargs, out)
            return out

    def routes(self) -> dict[str, int]:
        """How many calls ran each way so far: through dynamo (``full_graph``), by the cached-step graph, by the
        compiled graph without dynamo (``direct``)."""
        from graphcache.cached_step import route_counts

        return route_counts(self.full_calls, [self.steps] if self.steps is not None else [])

    def routes_off(self) -> dict[str, str]:
        """Why a way around dynamo is not taken, by route (absent: taken where it applies)."""
        from graphcache.cached_step import routes_not_taken

        if self.timestep is None:
            return {"cached_step_graph": "no timestep input to read", "direct": "no timestep input to read"}
        off = routes_not_taken(self.steps, self.cached_step_graph, self.direct_calls, "no call recorded yet")
        if self.backend == "eager":
            off["direct"] = "the module runs op by op (backend eager)"
        return off

    def _record(self, kwargs: dict[str, Any], out: Any) -> None:
        """After a call through dynamo: the model's output leaves are the graph's outputs in order (the
        cached-step graph's too); the first time, the graph dynamo compiled becomes callable directly with its
        outputs in that order (where each leaf is one of them), then the CachedStepGraph is made."""
        from graphcache.cached_step import CachedStepGraph

        state = self.cached.state
        leaves = torch.utils._pytree.tree_leaves(out)
        state.output_ids = [id(x) for x in leaves]
        if self.steps is None:
            if self.compiles == 1 and all(id(x) in self._last_outputs for x in leaves):
                state.compiled_call = _reordered(self._compiled, [self._last_outputs.index(id(x)) for x in leaves])
            module = self.cached.module
            self.steps = CachedStepGraph(state, module, module.forward, self.backend,
                                         cached_steps=self.cached_step_graph)
        self.steps.record((), kwargs, out)


def _reordered(compiled: Callable[..., Any], order: list[int]) -> Callable[..., list[Any]]:
    """``compiled`` returning its outputs at ``order``."""
    def call(*inputs: Any) -> list[Any]:
        outputs = compiled(*inputs)
        return [outputs[k] for k in order]

    return call
