"""Handles on the cache state a rewritten graph owns: reset, decision log, memory."""

from __future__ import annotations

import dataclasses
import weakref

import torch
import torch.fx as fx

from graphcache.passes.add_cache_state import LOG_CAPACITY
from graphcache.passes.base import analysis


@dataclasses.dataclass
class CacheState:
    """The state buffers of one rewritten graph (one per compiled graph; never shared)."""

    gm: fx.GraphModule
    policy: str

    @property
    def spec(self):  # noqa: ANN201 - StateSpec, kept loose to avoid an import cycle in type checkers
        return analysis(self.gm)["state"]

    def buffer(self, name: str) -> torch.Tensor:
        return self.gm.get_buffer(name)

    def reset(self) -> None:
        """Forget the current generation: the next call starts a new one and is computed."""
        with torch.no_grad():
            self.buffer("_gc_last_t").fill_(float("-inf"))
            self.buffer("_gc_step").zero_()
            self.buffer("_gc_log").fill_(-1)
            for name in self.cache_buffer_names():
                self.buffer(name).zero_()

    def cache_buffer_names(self) -> list[str]:
        return [str(n.target) for n in self.spec.cache_nodes()]

    def decisions(self) -> list[str]:
        """``'computed'`` / ``'cached'`` for each call of the current generation, in order."""
        if torch.isinf(self.buffer("_gc_last_t")).item():
            return []
        steps = int(self.buffer("_gc_step").item()) + 1
        log = self.buffer("_gc_log").tolist()
        first = max(0, steps - LOG_CAPACITY)
        return ["computed" if log[i % LOG_CAPACITY] == 1 else "cached" for i in range(first, steps)]

    def cache_bytes(self) -> int:
        """Bytes held by the cached features (the step counter and log, ~1 KiB, are not counted)."""
        return sum(self.buffer(n).numel() * self.buffer(n).element_size() for n in self.cache_buffer_names())


_LIVE: list[tuple[weakref.ref[CacheState], frozenset[int]]] = []


def register(state: CacheState, params: list[torch.Tensor]) -> None:
    """Remember which model parameters a backend-created state belongs to (for ``graphcache.decisions``)."""
    _LIVE[:] = [(ref, ids) for ref, ids in _LIVE if ref() is not None]
    _LIVE.append((weakref.ref(state), frozenset(id(p) for p in params)))


def states_of(model: torch.nn.Module) -> list[CacheState]:
    """States created by ``torch.compile(model, backend="graphcache")`` for this model."""
    ids = {id(p) for p in model.parameters()}
    found = []
    for ref, owned in _LIVE:
        state = ref()
        if state is not None and owned and owned <= ids:
            found.append(state)
    return found
