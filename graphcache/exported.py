"""The torch.export route: capture once, rewrite, and keep a callable module with its cache state."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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
    ``"aot_eager"``, or ``"eager"``: run as it is), called like the model (``fast(**inputs)``). A static
    schedule's cached steps run by their own graph (:mod:`graphcache.cached_step`), as in
    ``graphcache.optimize``; ``cached_step_graph = False`` runs every call through the one graph."""

    cached_step_graph = True

    def __init__(self, cached: ExportedCache, backend: str = "inductor") -> None:
        from graphcache.cached_step import CachedStepGraph
        from graphcache.host_timestep import HostTimestep
        from graphcache.rewrite import INDUCTOR_OPTIONS

        self.cached = cached
        module = cached.module
        self.full: Any = module if backend == "eager" else torch.compile(
            module, backend=backend, fullgraph=True, dynamic=False,
            options=INDUCTOR_OPTIONS if backend == "inductor" else None)
        self.steps = CachedStepGraph(cached.state, module, module.forward, backend)
        self.reader = HostTimestep()
        timestep = analysis(module).block_stack.timestep if analysis(module).block_stack is not None else None
        self.timestep = timestep.name if timestep is not None and timestep.op == "placeholder" else None

    def __call__(self, **kwargs: Any) -> Any:
        from graphcache.cached_step import NOT_RUN

        with torch.no_grad():
            t = kwargs.get(self.timestep) if self.timestep is not None and self.cached_step_graph else None
            if t is not None and self.steps.call is not None:
                out = self.steps.run((), kwargs, self.reader.read(t))
                if out is not NOT_RUN:
                    return out
            out = self.full(**kwargs)
            if self.cached_step_graph:
                self.cached.state.output_ids = [id(x) for x in torch.utils._pytree.tree_leaves(out)]
                self.steps.record((), kwargs, out)
            return out
