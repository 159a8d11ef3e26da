"""The ``graphcache`` torch.compile backend: capture -> rewrite -> Inductor (or eager / aot_eager).

``torch.compile(model, backend="graphcache", options={"policy": "fora", "interval": 3})``; the name is
registered through the ``torch_dynamo_backends`` entry point, so no import is needed. Extra option
``backend``: ``"inductor"`` (default), ``"aot_eager"`` or ``"eager"`` (run the rewritten graph as is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

from graphcache.capture import prepare_dynamo_graph
from graphcache.errors import PolicyConfigError
from graphcache.passes.dense_cond_operands import DenseCondOperands
from graphcache.policies import make_policy
from graphcache.rewrite import rewrite
from graphcache.state import CacheState, register

INNER_BACKENDS = ("inductor", "aot_eager", "eager")


def make_backend(
    policy: Any = "fora", inner: str = "inductor", sink: list[CacheState] | None = None, **policy_options: Any
) -> Callable[[fx.GraphModule, Sequence[Any]], Callable[..., Any]]:
    """A dynamo backend applying ``policy``; created states are appended to ``sink`` when given."""
    if inner not in INNER_BACKENDS:
        raise PolicyConfigError(f"backend={inner!r} is not supported; use one of {INNER_BACKENDS}")
    config = make_policy(policy, **policy_options)
    if getattr(config, "wraps_model", False):
        config.passes()  # raises: such a policy wraps the call, it has no passes for a captured graph

    def graphcache_backend(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        new = prepare_dynamo_graph(gm, example_inputs)
        lowering = [DenseCondOperands()] if inner == "inductor" else []
        state = rewrite(new, example_inputs, config, lowering)
        register(state, [x for x in example_inputs if isinstance(x, torch.nn.Parameter)])
        if sink is not None:
            sink.append(state)
        if inner == "eager":
            return new
        if inner == "aot_eager":
            from torch._dynamo.backends.common import aot_autograd
            from torch._functorch.aot_autograd import make_boxed_compiler

            return aot_autograd(fw_compiler=make_boxed_compiler(lambda g, _: g))(new, example_inputs)  # type: ignore[no-any-return]
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(new, list(example_inputs))  # type: ignore[return-value]

    return graphcache_backend


def backend(gm: fx.GraphModule, example_inputs: Sequence[Any], options: dict[str, Any] | None = None,
            **_: Any) -> Callable[..., Any]:
    """Entry point of ``torch.compile(..., backend="graphcache", options={...})``."""
    options = dict(options or {})
    policy = options.pop("policy", "fora")
    inner = options.pop("backend", "inductor")
    return make_backend(policy, inner, **options)(gm, example_inputs)
