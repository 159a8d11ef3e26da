"""A call's timestep on the host without a device sync per call.

Routing calls to streams (:class:`graphcache.streams.StreamRouter`) compares each call's timestep with the
last one on the host. Reading a GPU tensor's value waits until the device has run everything queued before
it: one stall per denoiser call, measured on an H200 as one of the two syncs of every step, and it exposes
the host's per-call work that the device would otherwise hide.

diffusers' loops pass views of the scheduler's timesteps (``t = timesteps[i]``, then ``t.expand(batch)``): all
calls of a generation read one small storage. :class:`HostTimestep` copies that whole storage to the host once
and answers later calls from the copy. The copy stays valid while

- the device storage is the same: the reader holds it, so its memory cannot be freed and reused by another
  tensor at the same address while the copy is kept;
- nothing wrote it: an in-place write through the tensor or any of its views bumps the version counter they
  share, and the copy is made again.

The tensor read last is remembered (by identity and version): the stream router and the graph's host clock
(``passes/host_decision.py``) read one call's timestep once, also when it is a fresh tensor.

A write the version counter does not see (through ``Tensor.data`` or a raw pointer) is not detected; nothing
in diffusers' loops writes timesteps that way. Numbers, CPU tensors, inference tensors (they have no version
counter) and tensors over storages larger than :data:`MAX_MIRROR_BYTES` are read directly.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

MAX_MIRROR_BYTES = 1 << 16  # a scheduler's timesteps: a few hundred bytes


class HostTimestep:
    """The largest value of a timestep argument, read on the host (see the module's docstring)."""

    def __init__(self, mirror_cpu: bool = False) -> None:
        self.mirror_cpu = mirror_cpu  # tests: take the mirror path for CPU tensors too
        self._held: torch.UntypedStorage | None = None  # the mirrored device storage, kept alive
        self._key: tuple[Any, ...] | None = None
        self._mirror: torch.Tensor | None = None
        self.copies = 0  # host copies made (each one a device sync on a GPU)
        self._last: tuple[weakref.ref[torch.Tensor], int, float] | None = None  # the tensor read last, its value

    def read(self, t: Any) -> float:
        if not isinstance(t, torch.Tensor):
            return float(t)
        last = self._last
        if last is not None and last[0]() is t and not t.is_inference() and t._version == last[1]:
            return last[2]  # the same tensor again (the router, then the graph's host clock): no second read
        value = self._read(t.detach())
        if not t.is_inference():
            self._last = (weakref.ref(t), t._version, value)
        return value

    def _read(self, t: torch.Tensor) -> float:
        storage = self._mirrorable(t)
        if storage is None:
            return float(t.reshape(-1).max())
        key = (storage.data_ptr(), storage.nbytes(), t.device, t.dtype, t._version)
        if key != self._key or self._mirror is None:
            flat = torch.empty(0, dtype=t.dtype, device=t.device).set_(storage)
            self._mirror, self._held, self._key = flat.to("cpu", copy=True), storage, key
            self.copies += 1
        view = torch.as_strided(self._mirror, t.shape, t.stride(), t.storage_offset())
        return float(view.reshape(-1).max())

    def _mirrorable(self, t: torch.Tensor) -> torch.UntypedStorage | None:
        """``t``'s storage when the copy route applies to it, else None (read directly)."""
        if t.device.type == "cpu" and not self.mirror_cpu:
            return None
        if t.is_inference() or t.numel() == 0 or t.is_sparse or t.device.type == "meta":
            return None
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # a tensor subclass without one storage (DTensor, ...)
            return None
        nbytes = storage.nbytes()
        return storage if nbytes <= MAX_MIRROR_BYTES and nbytes % t.element_size() == 0 else None

    def clear(self) -> None:
        self._held = self._key = self._mirror = self._last = None
