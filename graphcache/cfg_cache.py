"""FasterCache's CFG-Cache as one graph: ``torch.cond(full_step, guided batch, conditional half + deltas)``.

A pipeline with classifier-free guidance calls the denoiser on a batch of 2B: the conditional and the
unconditional halves. On a full step the model runs on all of it and the difference of the two halves'
outputs, ``d = eps_u - eps_c``, is split by a 2-D FFT low-pass (circular, radius ``min(H, W) // 5`` around
the zero frequency) into ``d_low`` and ``d_high``, kept in buffers. On a cached step the model runs on the
conditional half only and ``eps_u = IFFT(FFT(eps_c) + s_low FFT(d_low) + s_high FFT(d_high)) = eps_c +
s_low d_low + s_high d_high`` (the FFT is linear, so the cached step needs none); ``s_low`` grows by
``low_growth`` per cached step early (timestep >= ``split_timestep``), ``s_high`` by ``high_growth`` late,
both back to 1 on a full step. The model is captured twice (batch 2B and B, by torch.export; inside a
branch dynamo traces the exported graph); the decision, the step counter and the deltas are tensors of the
one graph.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch
from torch.utils import _pytree as pytree

from graphcache.capture import capture_export
from graphcache.clock import LOG_CAPACITY, LOG_DTYPE, log_slot, logged, next_step
from graphcache.errors import UnsupportedGraphError
from graphcache.policies.base import in_window
from graphcache.state import log_decisions

TIMESTEP_NAMES = ("timestep", "timesteps", "t", "sigma", "noise_level")
FILLS = {"_gc_step": 0, "_gc_last_t": float("-inf"), "_gc_log": -1, "_gc_d_low": 0.0, "_gc_d_high": 0.0,
         "_gc_scales": 1.0}


def low_pass_mask(height: int, width: int) -> torch.Tensor:
    """The circular low-frequency mask of radius ``min(H, W) // 5`` in unshifted FFT layout."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    centered = (x - width // 2) ** 2 + (y - height // 2) ** 2 <= (min(height, width) // 5) ** 2
    return torch.fft.ifftshift(centered.to(torch.float32), dim=(-2, -1))


def low_frequencies(d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Re(IFFT2(mask * FFT2(d)))`` over the last two dimensions."""
    return torch.fft.ifft2(torch.fft.fft2(d.to(torch.float32)) * mask).real.to(d.dtype).contiguous()


class CFGCache(torch.nn.Module):
    """Wraps a denoiser called on guided batches; built from one example call (see :func:`wrap`)."""

    def __init__(self, full: torch.nn.Module, half: torch.nn.Module, config: Any, signature: inspect.Signature,
                 batch: int, output: torch.Tensor, spec: pytree.TreeSpec, features: Any = None) -> None:
        super().__init__()
        self.full_graph, self.half_graph = full, half  # the model captured at the guided batch and at its half
        self.config, self.signature, self.batch, self.spec = config, signature, batch, spec
        self.fills = dict(FILLS)
        self.feature_inputs: list[str] = []
        self.feature_state: list[str] = []
        if features is not None:  # a FunctionalGraph: the guided batch's graph rewritten by another policy
            self.feature_inputs = [s.name for s in features.inputs]
            for s in features.state:
                name = f"_gc_features_{s.name}"
                self.register_buffer(name, s.initial(output.device), persistent=False)
                self.feature_state.append(name)
                self.fills[name] = s.fill
        half_shape = (batch // 2, *output.shape[1:])
        buffers = {"_gc_step": torch.zeros((), dtype=torch.int64), "_gc_last_t": torch.zeros(()),
                   "_gc_log": torch.zeros(LOG_CAPACITY, dtype=LOG_DTYPE), "_gc_d_low": output.new_zeros(half_shape),
                   "_gc_d_high": output.new_zeros(half_shape), "_gc_scales": torch.ones(2),
                   "_gc_mask": low_pass_mask(*output.shape[-2:])}
        for name, value in buffers.items():
            self.register_buffer(name, value.to(output.device), persistent=False)
        self.reset()

    def reset(self) -> None:
        """The next call starts a generation (and is a full step)."""
        with torch.no_grad():
            for name, fill in self.fills.items():
                self.get_buffer(name).fill_(fill)

    def _guided(self, bound: dict[str, Any], features: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The guided batch's output and the feature policy's new state."""
        if not self.feature_state:
            return (pytree.tree_leaves(self.full_graph(**bound))[0],)
        out = self.full_graph(*[bound[n] for n in self.feature_inputs], *features)
        return (out[0], *[s.clone() for s in out[len(out) - len(features):]])

    def _conditional(self, bound: dict[str, Any]) -> torch.Tensor:
        half = conditional_half(bound, self.batch, self.config.uncond_first)
        return pytree.tree_leaves(self.half_graph(**half))[0]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        bound = dict(self.signature.bind(*args, **kwargs).arguments)
        c = self.config
        state = {name: self.get_buffer(name) for name in FILLS}
        timestep = next(bound[n] for n in TIMESTEP_NAMES if n in bound)
        t, new_generation, i = next_step(timestep, state["_gc_last_t"], state["_gc_step"])
        inside = in_window(t, c.window_low, c.window_high, c.timestep_scale)
        full_step = new_generation | ~inside | (i % c.interval == 0)
        early = t * c.timestep_scale >= c.split_timestep
        mask = self.get_buffer("_gc_mask")

        def full(d_low: torch.Tensor, d_high: torch.Tensor, scales: torch.Tensor, early: torch.Tensor,
                 *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
            eps, *new_features = self._guided(bound, features)
            eps_c, eps_u = guided_halves(eps, c.uncond_first)
            d = eps_u - eps_c
            low = low_frequencies(d, mask)
            return eps.clone(), low, d - low, torch.ones_like(scales), *new_features

        def cached(d_low: torch.Tensor, d_high: torch.Tensor, scales: torch.Tensor, early: torch.Tensor,
                   *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
            eps_c = self._conditional(bound)
            growth = torch.stack([torch.where(early, c.low_growth, 1.0), torch.where(early, 1.0, c.high_growth)])
            new_scales = scales * growth
            eps_u = eps_c + new_scales[0] * d_low + new_scales[1] * d_high
            kept = [f.clone() for f in features]
            return guided_batch(eps_c, eps_u, c.uncond_first), d_low.clone(), d_high.clone(), new_scales, *kept

        features = [self.get_buffer(name) for name in self.feature_state]
        eps, d_low, d_high, scales, *new_features = torch.cond(full_step, full, cached, (
            state["_gc_d_low"], state["_gc_d_high"], state["_gc_scales"], early, *features))
        for buffer, value in zip(features, new_features, strict=True):
            buffer.copy_(value)
        log = logged(state["_gc_log"], log_slot(state["_gc_log"], i), new_generation, full_step)
        new = {"_gc_d_low": d_low, "_gc_d_high": d_high, "_gc_scales": scales, "_gc_step": i, "_gc_last_t": t,
               "_gc_log": log}
        for name, value in new.items():
            state[name].copy_(value)
        return pytree.tree_unflatten([eps], self.spec)


@dataclasses.dataclass
class CFGState:
    """The handles :class:`graphcache.state.CacheState` gives, for a :class:`CFGCache`."""

    module: CFGCache
    policy: str = "cfgcache"

    def reset(self) -> None:
        self.module.reset()

    def decisions(self) -> list[str]:
        get = self.module.get_buffer
        return log_decisions(get("_gc_step"), get("_gc_last_t"), get("_gc_log"))

    def sample_decisions(self) -> list[list[str]]:
        return []

    def cache_bytes(self) -> int:
        """The deltas and the feature policy's state (its clock and log included)."""
        names = ("_gc_d_low", "_gc_d_high", *self.module.feature_state)
        return sum(b.numel() * b.element_size() for b in map(self.module.get_buffer, names))


def guided_halves(x: torch.Tensor, uncond_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(conditional, unconditional)`` halves of a guided batch."""
    first, second = x.chunk(2)
    return (second, first) if uncond_first else (first, second)


def guided_batch(cond: torch.Tensor, uncond: torch.Tensor, uncond_first: bool) -> torch.Tensor:
    """The guided batch of two halves, in the pipeline's order."""
    return torch.cat((uncond, cond) if uncond_first else (cond, uncond))


def conditional_half(bound: dict[str, Any], batch: int, uncond_first: bool) -> dict[str, Any]:
    """The arguments with every tensor of the guided batch cut to its conditional half."""
    def cut(v: Any) -> Any:
        batched = isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch
        return guided_halves(v, uncond_first)[0] if batched else v

    return {k: cut(v) for k, v in bound.items()}


def wrap(model: torch.nn.Module, config: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CFGCache:
    """A :class:`CFGCache` around ``model`` for calls shaped like ``model(*args, **kwargs)`` (run once here)."""
    signature = inspect.signature(model.forward)
    bound = dict(signature.bind(*args, **kwargs).arguments)
    if not any(n in bound for n in TIMESTEP_NAMES):
        raise UnsupportedGraphError(f"CFG-Cache reads the timestep from an argument named one of {TIMESTEP_NAMES}; "
                                    f"the call passed {sorted(bound)}")
    tensors = [v for v in bound.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    batch = int(tensors[0].shape[0]) if tensors else 0
    if batch < 2 or batch % 2:
        raise UnsupportedGraphError(f"CFG-Cache needs a guided batch (conditional and unconditional halves), got a "
                                    f"first input of batch {batch}; use it with guidance_scale != 1")
    with torch.no_grad():
        leaves, spec = pytree.tree_flatten(model(**bound))
    out = leaves[0]
    if len(leaves) != 1 or not isinstance(out, torch.Tensor) or out.dim() < 4 or out.shape[0] != batch:
        raise UnsupportedGraphError(f"CFG-Cache needs one output shaped [batch, channels, height, width] with the "
                                    f"input's batch {batch}; got {[getattr(x, 'shape', x) for x in leaves]}")
    half, _ = capture_export(model, conditional_half(bound, batch, config.uncond_first))
    if config.features is None:
        full, _ = capture_export(model, bound)
        return CFGCache(full, half, config, signature, batch, out, spec)
    from graphcache.export.functional import functionalize
    from graphcache.exported import optimize_exported
    from graphcache.passes.dense_cond_operands import DenseCondOperands

    guided = optimize_exported(model, bound, config.features, lowering=(DenseCondOperands(),))
    features = functionalize(guided, bound)
    return CFGCache(features.module, half, config, signature, batch, out, spec, features)
