"""Named cache contexts: one set of cache state per stream of calls (diffusers' ``cache_context``).

Pipelines call the denoiser in several streams per step: ``with transformer.cache_context("cond")`` then
``("uncond")`` for classifier-free guidance as two calls (Wan, Flux true-CFG, QwenImage). Each stream must see
its own cache, as if it ran alone. The rewritten graph owns one set of state buffers; switching context points
those buffers at the context's own storage (``Tensor.set_``: no copy, the compiled graph keeps its buffers),
and a context used for the first time starts from the fills of a new generation.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from graphcache.host_timestep import HostTimestep

DEFAULT = ""  # the context of calls made outside any cache_context


def _live(state: Any) -> dict[str, torch.Tensor]:
    """The state buffers a context owns: those the passes declared as state (``StateSpec.buffers``), not every
    buffer they added (MagCache's calibrated ratios are constants every context reads)."""
    gm = getattr(state, "gm", None)  # CFG-Cache's state wraps the call, it has no graph buffers
    return {} if gm is None else {name: gm.get_buffer(name) for name in state.spec.buffers}


class StateSets:
    """The cache state of each named context, for every graph of one optimized module."""

    def __init__(self) -> None:
        self.active = DEFAULT
        self._saved: dict[str, dict[int, dict[str, torch.Tensor]]] = {}  # context -> state index -> buffers
        self._owner: dict[int, str] = {}  # state index -> the context its live buffers belong to
        self.ran: list[str] = []  # contexts that have run a call, in order of their first call

    def switch(self, states: Sequence[Any], name: str) -> None:
        """Make ``name`` the context whose state the graphs read and write."""
        for k, state in enumerate(states):
            owner = self._owner.setdefault(k, self.active)
            if owner == name:
                continue
            live = _live(state)
            self._saved.setdefault(owner, {})[k] = {n: _point(torch.empty(0, dtype=b.dtype, device=b.device), b)
                                                    for n, b in live.items()}
            target = self._saved.get(name, {}).pop(k, None)
            if target is None:
                target = {n: _fresh(state, n, b) for n, b in live.items()}
            with torch.no_grad():
                for n, b in live.items():
                    _point(b, target[n])
            self._owner[k] = name
        self.active = name

    def note_call(self) -> None:
        if self.active not in self.ran:
            self.ran.append(self.active)

    def reported(self, name: str | None) -> str:
        """The context ``decisions()`` reports: ``name``, else the active one once it has run, else the first
        that ran (after a pipeline that calls only inside ``cache_context("cond")`` / ``("uncond")``: "cond")."""
        if name is not None:
            return name
        return self.active if self.active in self.ran or not self.ran else self.ran[0]

    def reset(self, states: Sequence[Any]) -> None:
        """Forget every context: the next call of each starts a new generation."""
        self._saved.clear()
        self.ran.clear()
        for state in states:
            state.reset()

    def contexts(self) -> list[str]:
        return sorted({self.active, *self._saved})


def _point(tensor: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``tensor`` made to view ``source``'s storage (same object, new data: what the compiled graph reads)."""
    return tensor.set_(source.untyped_storage(), source.storage_offset(), source.size(), source.stride())


def _fresh(state: Any, name: str, like: torch.Tensor) -> torch.Tensor:
    fill = state.spec.fills.get(name, 0.0)
    return torch.empty_like(like).fill_(fill)


# The fields diffusers' ``CacheContext`` accepts beside the name (pipelines pass them: Wan gives step_index,
# sigma and num_inference_steps).
CONTEXT_FIELDS = ("step_index", "num_inference_steps", "timestep", "sigma")


def starts_generation(name: Any, fields: dict[str, Any]) -> bool:
    """Check a ``cache_context(name, **fields)`` call as diffusers' ``CacheContext`` would; True when the
    pipeline says this is the first step of its loop (``step_index=0``): the context starts a new generation."""
    from graphcache.errors import PolicyConfigError

    if not isinstance(name, str):
        raise PolicyConfigError(f"cache_context needs a name (a string), got {type(name).__name__}")
    unknown = sorted(set(fields) - set(CONTEXT_FIELDS))
    if unknown:
        raise TypeError(f"cache_context() got unexpected keyword arguments {unknown}; it accepts {list(CONTEXT_FIELDS)}"
                        " (the fields of diffusers' CacheContext)")
    return fields.get("step_index") == 0


@contextlib.contextmanager
def cache_context(sets: StateSets, states: Sequence[Any], name: str, **fields: Any) -> Iterator[None]:
    """Calls inside use context ``name``'s state; ``step_index=0`` starts a new generation in it."""
    fresh = starts_generation(name, fields)
    previous = sets.active
    sets.switch(states, name)
    if fresh:
        for state in states:
            state.reset()  # the live buffers are the context's own now: only this context starts over
    try:
        yield
    finally:
        sets.switch(states, previous)


_SOURCE = re.compile(r"L\['(\w+)'\]((?:\['\w+'\]|\[\d+\])*)")
_INDEX = re.compile(r"\['(\w+)'\]|\[(\d+)\]")


Getter = Callable[[tuple[Any, ...], dict[str, Any]], Any]


def argument_getter(forward: Callable[..., Any], source: str) -> Getter | None:
    """A function of a call's ``(args, kwargs)`` returning the argument dynamo names ``source``
    (``L['timestep']``, ``L['kwargs']['timestep']``, ``L['args'][3]``); None for a source of another form.

    Dynamo names the locals of the code it traced. For a ``forward`` behind a decorator (diffusers'
    ``apply_lora_scale``: ``wrapper(self, *args, **kwargs)``) that is the wrapper, so the call is bound to
    ``forward``'s own signature; where the name is not one of its parameters, dynamo traced the wrapped
    function (it skips a wrapper's frame once a graph broke in it, for every model sharing that decorator)
    and the call is bound to the wrapped signature."""
    match = _SOURCE.fullmatch(source)
    if match is None:
        return None
    name = match[1]
    signature = inspect.signature(forward, follow_wrapped=False)
    if name not in signature.parameters:
        signature = inspect.signature(forward)
        if name not in signature.parameters:
            return None
    path = [key if key else int(index) for key, index in _INDEX.findall(match[2])]

    def get(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            value = signature.bind_partial(*args, **kwargs).arguments.get(name)
        except TypeError:  # arguments this signature does not take: not a call the graph was captured for
            return None
        for step in path:
            if isinstance(step, int) and isinstance(value, list | tuple) and step < len(value):
                value = value[step]
            elif isinstance(step, str) and isinstance(value, dict):
                value = value.get(step)
            else:
                return None
        return value

    return get


class StreamRouter:
    """Without cache contexts, the k-th call in a row at one timestep belongs to stream k: CFG as two calls
    (cond, uncond) gives streams 0 and 1, Heun's repeated timesteps a stream per stage, and each stream sees a
    trajectory that moves one way. Reads the timestep on the host through :class:`HostTimestep`: a view of the
    scheduler's timesteps on a GPU costs one device sync per generation, not one per call."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.repeat = 0
        self.get: Getter | None = None
        self.reader = HostTimestep()

    def stream(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """The context of this call, or None when the timestep cannot be found."""
        if self.get is None:
            return None
        t = self.get(args, kwargs)
        if t is None:
            return None
        value = self.reader.read(t)
        self.repeat = self.repeat + 1 if value == self.last else 0
        self.last = value
        return DEFAULT if self.repeat == 0 else f"stream {self.repeat}"

    def reset(self) -> None:
        self.last, self.repeat = None, 0
        self.reader.clear()
