"""Run a policy's passes over a captured graph."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.fx as fx

from graphcache.passes.base import PassManager
from graphcache.policies import PolicyConfig
from graphcache.state import CacheState


def rewrite(
    gm: fx.GraphModule, example_inputs: Sequence[Any], policy: PolicyConfig, lowering: Sequence[Any] = ()
) -> CacheState:
    """Apply ``policy``'s passes, then the ``lowering`` passes, to ``gm`` (captured with meta) in place."""
    manager = PassManager([*policy.passes(), *lowering], example_inputs)
    new = manager(gm)
    assert new is gm, "graphcache passes edit the GraphModule in place"
    return CacheState(gm, policy.name)
