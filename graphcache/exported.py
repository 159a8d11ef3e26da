"""The torch.export route: capture once, rewrite, and keep a callable module with its cache state."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx

from graphcache.blockstack import BlockStack
from graphcache.capture import capture_export
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


def optimize_exported(
    model: torch.nn.Module, example_kwargs: Mapping[str, Any], policy: str | PolicyConfig = "fora",
    lowering: tuple[Any, ...] = (), self_check: bool = True, **options: Any,
) -> ExportedCache:
    """Capture ``model`` with torch.export on ``example_kwargs`` and apply ``policy`` to the graph (checked
    against the captured graph on ``example_kwargs`` unless ``self_check=False``)."""
    config = make_policy(policy, **options)
    config.check_model(model)
    gm, flat_inputs = capture_export(model.eval(), example_kwargs)
    state = rewrite(gm, flat_inputs, config, lowering, self_check)
    return ExportedCache(gm, state, config)
