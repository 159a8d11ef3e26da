"""Handles on the cache state a rewritten graph owns: reset, decision log, memory."""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import torch
import torch.fx as fx

from graphcache.analyses import StateSpec
from graphcache.clock import LOG_CAPACITY
from graphcache.passes.base import analysis


def computed_share(per_sample: list[list[str]]) -> float | None:
    """The share of (sample, step) pairs computed, from :meth:`CacheState.sample_decisions` (None: no rows)."""
    pairs = sum(len(row) for row in per_sample)
    return sum(row.count("computed") for row in per_sample) / pairs if pairs else None


def log_decisions(step: torch.Tensor, last_t: torch.Tensor, log: torch.Tensor) -> list[str]:
    """The current generation's decisions from the step counter, the last timestep and the ring log."""
    if torch.isinf(last_t).item():
        return []
    steps = int(step.item()) + 1
    entries = log.tolist()
    first = max(0, steps - LOG_CAPACITY)
    return ["computed" if entries[i % LOG_CAPACITY] == 1 else "cached" for i in range(first, steps)]


@dataclasses.dataclass
class CacheState:
    """The state buffers of one rewritten graph (one per compiled graph; never shared)."""

    gm: fx.GraphModule
    policy: str
    streams: Any = None  # a GraphStreams where the graph routes its own calls (the torch.compile backend)
    output_ids: list[int] = dataclasses.field(default_factory=list)  # ids of the last call's graph outputs
    cached_step: Any = None  # graphcache.optimize's CachedStepGraph for this state, once made
    compiled_cached_step: Any = None  # the backend's CompiledCachedStep for this graph, where it made one
    compiled_call: Any = None  # what the backend handed dynamo for this graph (called with dynamo's inputs)
    dynamo_inputs: int = 0  # how many inputs dynamo passes it
    dynamo_sources: list[str] | None = None  # each of them named by dynamo, where its graph is not ``gm``

    @property
    def spec(self) -> StateSpec:
        return analysis(self.gm).require(StateSpec)

    def buffer(self, name: str) -> torch.Tensor:
        return self.gm.get_buffer(name)

    def reset(self) -> None:
        """Forget the current generation (of every stream): the next call starts a new one and is computed."""
        if self.streams is not None:
            self.streams.forget(self)
        spec = self.spec
        with torch.no_grad():
            for name in spec.buffers:
                self.buffer(name).fill_(spec.fills.get(name, 0.0))

    def cache_buffer_names(self) -> list[str]:
        return [str(n.target) for n in self.spec.cache_nodes()]

    def decisions(self) -> list[str]:
        """``'computed'`` / ``'cached'`` for each call of the current generation, in order (of the first
        stream, where the graph routes its own calls)."""
        if self.streams is not None:
            self.streams.show_first(self)
        return log_decisions(self.buffer("_gc_step"), self.buffer("_gc_last_t"), self.buffer("_gc_log"))

    def sample_decisions(self) -> list[list[str]]:
        """Per-sample decisions of the current generation (dynamic policies); ``[]`` for static ones."""
        if self.streams is not None:
            self.streams.show_first(self)
        if "_gc_sample_log" not in self.spec.buffers or torch.isinf(self.buffer("_gc_last_t")).item():
            return []
        steps = int(self.buffer("_gc_step").item()) + 1
        log = self.buffer("_gc_sample_log")
        rows = [log[i % LOG_CAPACITY].tolist() for i in range(max(0, steps - LOG_CAPACITY), steps)]
        return [["computed" if row[b] == 1 else "cached" for row in rows] for b in range(log.shape[1])]

    def cache_bytes(self) -> int:
        """Bytes held by the cached features only (what the cache stores of the model's activations)."""
        return sum(self.buffer(n).numel() * self.buffer(n).element_size() for n in self.cache_buffer_names())

    def state_bytes(self) -> int:
        """Bytes of every state buffer: the cached features plus indicators, accumulators, step clock and logs
        (EasyCache keeps its previous input and output beside the cache: this counts them)."""
        return sum(self.buffer(n).numel() * self.buffer(n).element_size() for n in self.spec.buffers)


# Keyed by the id of the model's first parameter, checked through a weak reference; an entry goes away
# with its parameter, so the states live as long as the model does. Each state is noted with the
# ``torch.compile`` call that made it (its owner), so two compilations of one model keep their own.
_LIVE: dict[int, tuple[weakref.ref[torch.Tensor], list[tuple[CacheState, object]]]] = {}


def register(state: CacheState, params: list[torch.Tensor], owner: object = None) -> None:
    """Remember which model a backend-created state belongs to (for ``graphcache.decisions(model)``), and
    which ``torch.compile`` call (``owner``, None when unknown) created it."""
    if not params:
        return
    key = id(params[0])
    entry = _LIVE.get(key)
    if entry is None or entry[0]() is not params[0]:
        entry = (weakref.ref(params[0], lambda _: _LIVE.pop(key, None)), [])
        _LIVE[key] = entry
    entry[1].append((state, owner))


def states_of(model: torch.nn.Module, owner: object = None) -> list[CacheState]:
    """States created by ``torch.compile(model, backend="graphcache")`` for this model, oldest first; with
    ``owner``, only those of that compilation."""
    found: list[CacheState] = []
    for p in model.parameters():
        entry = _LIVE.get(id(p))
        if entry is not None and entry[0]() is p:
            found.extend(state for state, made_by in entry[1] if owner is None or made_by == owner)
    for state in found:  # a graph serving several models (see GraphStreams) reports this one's state
        if state.streams is not None:
            state.streams.select(model.parameters())
    return found


def compile_call_of(compiled: object) -> object:
    """The ``torch.compile`` call behind an ``OptimizedModule`` (what :func:`register` got as ``owner``):
    the end of dynamo's chain of backend wrappers; None for anything else."""
    callback: Any = getattr(getattr(compiled, "dynamo_ctx", None), "callback", None)
    seen = 0
    while hasattr(callback, "_torchdynamo_orig_backend") and seen < 16:
        callback, seen = callback._torchdynamo_orig_backend, seen + 1
    return callback if isinstance(callback, torch._TorchCompileWrapper) else None
