"""Bucket batch sizes for per-sample decisions, and the model's graphs captured at them.

A dynamic policy decides per sample; without buckets a compute step runs the blocks for the whole batch when
any sample needs them (each sample still gets exactly its own decisions). With ``buckets=n`` the compute
step sorts the samples that need it first, takes the smallest bucket size that holds them, gathers that
many samples and runs the blocks at that batch size, then writes the needing samples' results back: the
blocks cost what the needing samples cost, rounded up to a bucket. The blocks at batch ``b`` are the model's
own graph at ``b``: ``graphcache.optimize`` captures the model once per bucket size on its first call of an
input shape (a dynamo capture with sliced inputs, no compilation), and ``insert_cache_branch`` takes each
bucket's blocks from that capture, node for node (the captures differ only in literal sizes).

Exactness: a sample computed in a bucket of ``b`` gets the model's output for that bucket's ``b`` samples
(the model run at batch ``b``; kernels may differ from those at the full batch by rounding). A computed
step with every sample needing it runs the whole batch: the first step of a generation (checked by the
self-check) is bit-exact to the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree


def bucket_sizes(batch: int, count: int) -> tuple[int, ...]:
    """The partial bucket sizes for a batch of ``batch`` samples: ``ceil(k * batch / (count + 1))`` for
    ``k = 1..count``, distinct and below ``batch`` (``bucket_sizes(100, 3) == (25, 50, 75)``;
    ``bucket_sizes(2, 3) == (1,)``)."""
    sizes = {math.ceil(k * batch / (count + 1)) for k in range(1, count + 1)}
    return tuple(sorted(s for s in sizes if 0 < s < batch))


def call_batch(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
    """The batch size of a denoiser call: the first dimension of its first tensor argument (the latent)."""
    first = next((x for x in pytree.tree_leaves((tuple(args), dict(kwargs)))
                  if isinstance(x, torch.Tensor) and x.dim() > 0), None)
    return None if first is None else int(first.shape[0])


def bucket_plan(args: Sequence[Any], kwargs: Mapping[str, Any], count: int) -> tuple[int, tuple[int, ...], str]:
    """The call's batch, its bucket sizes for ``count`` buckets, and why there are none (else "")."""
    batch = call_batch(args, kwargs) or 0
    sizes = bucket_sizes(batch, count)
    return batch, sizes, "" if sizes else f"a batch of {batch} has no smaller bucket"


def sliced(args: Sequence[Any], kwargs: Mapping[str, Any], batch: int, size: int) -> tuple[Any, Any]:
    """The call with every tensor whose first dimension is ``batch`` cut to its first ``size`` samples."""
    def cut(x: Any) -> Any:
        return x[:size] if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == batch else x

    return pytree.tree_map(cut, (tuple(args), dict(kwargs)))  # type: ignore[no-any-return]


def capture_buckets(model: torch.nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any],
                    count: int) -> tuple[dict[int, tuple[fx.GraphModule, list[Any]]], str]:
    """The model's dynamo graph (and its example inputs) at each of the call's ``count`` bucket sizes, as
    ``torch.compile`` of the same call at that batch would hand it to a backend; with a reason instead of
    graphs when there is no bucket or a capture fails (the caller then runs whole batches). Each capture runs
    the model once at that batch size."""
    batch, sizes, reason = bucket_plan(args, kwargs, count)
    if reason:
        return {}, reason
    graphs: dict[int, tuple[fx.GraphModule, list[Any]]] = {}
    for size in sizes:
        def record(gm: fx.GraphModule, example_inputs: Sequence[Any], size: int = size) -> Any:
            graphs[size] = (gm, list(example_inputs))
            return gm.forward

        small_args, small_kwargs = sliced(args, kwargs, batch, size)
        try:
            torch.compile(model, backend=record, fullgraph=True, dynamic=False)(*small_args, **small_kwargs)
        except Exception as err:  # a model that does not fit one graph at this size: whole batches
            from graphcache.errors import first_line

            return {}, f"capturing the model at batch {size} failed ({type(err).__name__}: {first_line(err, 160)})"
        if size not in graphs:
            return {}, f"torch.compile did not hand over a graph at batch {size}"
    return graphs, ""
