"""Run a denoiser uncached vs optimized over one generation's timesteps and measure both."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from graphcache.exported import ExportedCache, optimize_exported
from graphcache.passes.dense_cond_operands import DenseCondOperands
from graphcache.policies import PolicyConfig

BACKENDS = ("eager", "inductor")


def cli_timesteps(steps: int) -> list[float]:
    """``steps`` timesteps from 999 down to 0 (DDPM scale; model files rescale if they need to)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(999.0, 0.0, steps).tolist()


def first_tensor(out: Any) -> torch.Tensor:
    """The denoiser's prediction from whatever it returns (tensor, tuple, diffusers output)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample  # type: ignore[no-any-return]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot find the prediction tensor in a {type(out).__name__}")


@dataclasses.dataclass
class Generation:
    outputs: list[torch.Tensor]
    step_seconds: list[float]

    @property
    def seconds(self) -> float:
        return sum(self.step_seconds)


def run_generation(fn: Callable[..., Any], inputs: Callable[[float], dict[str, Any]], timesteps: list[float],
                   progress: Callable[[Iterable[float]], Iterable[float]] | None = None) -> Generation:
    outputs, times = [], []
    steps: Iterable[float] = progress(timesteps) if progress else timesteps
    with torch.no_grad():
        for t in steps:
            kwargs = inputs(t)
            start = time.perf_counter()
            out = first_tensor(fn(**kwargs))
            times.append(time.perf_counter() - start)
            outputs.append(out.detach().clone())
    return Generation(outputs, times)


@dataclasses.dataclass
class Comparison:
    policy: PolicyConfig
    backend: str
    cached: ExportedCache
    uncached_run: Generation
    cached_run: Generation
    decisions: list[str]

    @property
    def computed(self) -> int:
        return self.decisions.count("computed")

    @property
    def speedup(self) -> float:
        return self.uncached_run.seconds / self.cached_run.seconds

    @property
    def limit(self) -> float:
        """The schedule's limit: steps / computed steps (cached steps free)."""
        return len(self.decisions) / max(1, self.computed)

    def errors(self) -> list[float]:
        return [float((a - b).abs().max()) for a, b in zip(self.cached_run.outputs, self.uncached_run.outputs,
                                                           strict=True)]

    def mean_step(self, kind: str) -> float:
        times = [s for s, d in zip(self.cached_run.step_seconds, self.decisions, strict=True) if d == kind]
        return sum(times) / len(times) if times else float("nan")


def compare(model: torch.nn.Module, inputs: Callable[[float], dict[str, Any]], policy: PolicyConfig,
            steps: int = 50, backend: str = "eager",
            progress: Callable[[str], Callable[[Iterable[float]], Iterable[float]]] | None = None) -> Comparison:
    """Optimize ``model`` (torch.export route) and time one generation of it against the uncached model.

    Both run the same way (``eager``: op by op; ``inductor``: ``torch.compile(fullgraph=True)``), each first
    warmed up by an untimed 4-step generation (compilation), then timed on the same inputs.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    timesteps = cli_timesteps(steps)
    lowering = (DenseCondOperands(),) if backend == "inductor" else ()
    cached = optimize_exported(model, inputs(timesteps[0]), policy, lowering)
    base: Callable[..., Any] = model
    fast: Callable[..., Any] = cached.module
    if backend == "inductor":
        base = torch.compile(model, fullgraph=True, dynamic=False)
        fast = torch.compile(cached.module, fullgraph=True, dynamic=False)
    bar = progress or (lambda _label: None)  # type: ignore[return-value, arg-type]
    run_generation(base, inputs, timesteps[:4], bar("warm-up uncached"))  # compiles every branch
    run_generation(fast, inputs, timesteps[:4], bar("warm-up graphcache"))
    uncached_run = run_generation(base, inputs, timesteps, bar("uncached"))
    cached_run = run_generation(fast, inputs, timesteps, bar(policy.name))
    return Comparison(policy, backend, cached, uncached_run, cached_run, cached.state.decisions())
