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
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
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

    def drop(self, names: Iterable[str]) -> None:
        """Forget the saved state of these contexts (not the live one's)."""
        for name in names:
            self._saved.pop(name, None)

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


_LOCAL = re.compile(r"L\['(\w+)'\]")
_STEP = re.compile(r"\.(\w+)|\['([^']*)'\]|\[(\d+)\]")


Getter = Callable[[tuple[Any, ...], dict[str, Any]], Any]


def source_path(source: str) -> tuple[str, list[tuple[bool, str | int]]] | None:
    """A dynamo source ``L['name']`` followed by ``.attribute``, ``['key']`` and ``[index]`` steps: the local's
    name and the steps, each ``(True, attribute)`` or ``(False, key or index)``; None for a source of another
    form."""
    match = _LOCAL.match(source)
    if match is None:
        return None
    rest = source[match.end():]
    steps = list(_STEP.finditer(rest))
    if "".join(s[0] for s in steps) != rest:
        return None
    return match[1], [(True, s[1]) if s[1] else (False, s[2] if s[3] is None else int(s[3])) for s in steps]


def argument_getter(forward: Callable[..., Any], source: str) -> Getter | None:
    """A function of a call's ``(args, kwargs)`` returning the argument dynamo names ``source``
    (``L['timestep']``, ``L['kwargs']['timestep']``, ``L['args'][3]``); None for a source of another form.

    Dynamo names the locals of the code it traced. For a ``forward`` behind a decorator (diffusers'
    ``apply_lora_scale``: ``wrapper(self, *args, **kwargs)``) that is the wrapper, so the call is bound to
    ``forward``'s own signature; where the name is not one of its parameters, dynamo traced the wrapped
    function (it skips a wrapper's frame once a graph broke in it, for every model sharing that decorator)
    and the call is bound to the wrapped signature."""
    parsed = source_path(source)
    if parsed is None or any(attribute for attribute, _ in parsed[1]):
        return None
    name, steps = parsed
    signature = inspect.signature(forward, follow_wrapped=False)
    if name not in signature.parameters:
        signature = inspect.signature(forward)
        if name not in signature.parameters:
            return None
    path = [key for _, key in steps]

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
        return self.stream_at(t)

    def stream_at(self, t: Any) -> str:
        """The stream of a call at timestep ``t`` (a tensor or a number), given the calls before it."""
        value = self.reader.read(t)
        self.repeat = self.repeat + 1 if value == self.last else 0
        self.last = value
        return DEFAULT if self.repeat == 0 else f"stream {self.repeat}"

    def reset(self) -> None:
        self.last, self.repeat = None, 0
        self.reader.clear()


class GraphStreams:
    """Streams for a graph no module wraps (``torch.compile(model, backend="graphcache")``), per model.

    Before each call the graph's state is switched to the call's stream by :class:`StreamRouter`'s rule (the
    k-th call in a row at one timestep is stream k: CFG as two calls, Heun's stages), as
    :class:`graphcache.CachedModule` does, and to the calling model's own state: dynamo hands one compiled
    graph to every model of a class compiled with equal options (their parameters are inputs), so the model is
    told by its parameters (``param``: the graph input holding one). Reports (``decisions``) and ``reset`` act
    on the model :meth:`select` named, its first stream. A model's saved state goes at the first call after the
    model is gone."""

    def __init__(self, reader: HostTimestep, timestep: int, param: int) -> None:
        self.sets = StateSets()
        self.reader, self.timestep, self.param = reader, timestep, param
        self.models: list[tuple[weakref.ref[torch.Tensor], StreamRouter, set[str]]] = []  # param, router, contexts
        self.selected = 0

    def model_of(self, param: torch.Tensor) -> int:
        """The index of the model holding ``param``; a new one for a model not seen before."""
        for k, (ref, _, _) in enumerate(self.models):
            if ref() is param:
                return k
        router, k = StreamRouter(), len(self.models)
        router.reader = self.reader
        self.models.append((weakref.ref(param), router, set()))
        return k

    def _context(self, model: int, stream: str) -> str:
        name = stream if model == 0 else f"model {model}: {stream or 'first stream'}"
        self.models[model][2].add(name)
        return name

    def _drop(self, model: int, keep: str | None = None) -> None:
        self.sets.drop(self.models[model][2] - {keep})

    def before_call(self, state: Any, inputs: Sequence[Any]) -> int:
        """Switch ``state`` to the call's model and stream; returns the model's index."""
        model = self.model_of(inputs[self.param])
        self.sets.switch([state], self._context(model, self.models[model][1].stream_at(inputs[self.timestep])))
        for k, (ref, _, _) in enumerate(self.models):  # a model that is gone: its saved state with it
            if ref() is None:
                self._drop(k)
        return model

    def select(self, params: Iterable[torch.Tensor]) -> None:
        """The model whose state reports and resets act on: the one these are the parameters of."""
        mine = {id(p): p for p in params}
        alive = [(k, ref()) for k, (ref, _, _) in enumerate(self.models)]
        self.selected = next((k for k, p in alive if p is not None and mine.get(id(p)) is p), 0)

    def show_first(self, state: Any) -> None:
        """Point the state's buffers at the selected model's first stream (what its decisions report)."""
        self.sets.switch([state], self._context(self.selected, DEFAULT))

    def forget(self, state: Any) -> None:
        """The selected model's streams dropped but its first, whose buffers are live after this (the caller
        resets them); the next call of that model starts over in its first stream."""
        self.show_first(state)
        self._drop(self.selected, keep=self._context(self.selected, DEFAULT))
        self.models[self.selected][1].reset()
