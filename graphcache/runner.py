"""Run a denoiser uncached vs optimized over one generation's timesteps and measure both."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from graphcache.exported import CompiledExport, ExportedCache, optimize_exported
from graphcache.passes.base import analysis
from graphcache.policies import PolicyConfig
from graphcache.rewrite import compile_lowering

BACKENDS = ("eager", "inductor")


def cli_timesteps(steps: int) -> list[float]:
    """``steps`` timesteps from 999 down to 0 (DDPM scale; model files rescale if they need to)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        from graphcache.errors import PolicyConfigError

        raise PolicyConfigError(f"steps must be an integer >= 1, got {steps!r}")
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
    routes: dict[str, int] = dataclasses.field(default_factory=dict)  # calls each way (CompiledExport.routes)

    @property
    def seconds(self) -> float:
        return sum(self.step_seconds)


def run_generation(fn: Callable[..., Any], inputs: Callable[[float], dict[str, Any]], timesteps: list[float],
                   progress: Callable[[Iterable[float]], Iterable[float]] | None = None) -> Generation:
    outputs, times = [], []
    steps: Iterable[float] = progress(timesteps) if progress else timesteps
    before = fn.routes() if isinstance(fn, CompiledExport) else {}
    with torch.no_grad():
        for t in steps:
            kwargs = inputs(t)
            start = time.perf_counter()
            out = first_tensor(fn(**kwargs))
            times.append(time.perf_counter() - start)
            outputs.append(out.detach().clone())
    after = fn.routes() if isinstance(fn, CompiledExport) else {}
    return Generation(outputs, times, {route: n - before[route] for route, n in after.items()})


@dataclasses.dataclass
class Comparison:
    """Uncached and graphcache generations timed in turn (``repeats`` pairs); the figures are medians."""

    policy: PolicyConfig
    backend: str
    cached: ExportedCache
    uncached_runs: list[Generation]
    cached_runs: list[Generation]
    decisions: list[str]
    timings: list[tuple[str, float]] = dataclasses.field(default_factory=list)  # capture, passes, compilation
    routes_off: dict[str, str] = dataclasses.field(default_factory=dict)  # why a way around dynamo is not taken

    @property
    def _pair_ratios(self) -> list[float]:
        """Each pair's wall-time ratio (uncached / graphcache), in the order they ran."""
        return [u.seconds / c.seconds for u, c in zip(self.uncached_runs, self.cached_runs, strict=True)]

    @property
    def ratios(self) -> list[float]:
        """Each pair's wall-time ratio, sorted."""
        return sorted(self._pair_ratios)

    @property
    def _median(self) -> int:
        """The pair whose ratio is the median one (its runs give the speedup, step times and outputs)."""
        ratios = self._pair_ratios
        return sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]

    @property
    def uncached_run(self) -> Generation:
        return self.uncached_runs[self._median]

    @property
    def cached_run(self) -> Generation:
        return self.cached_runs[self._median]

    @property
    def computed(self) -> int:
        return self.decisions.count("computed")

    @property
    def speedup(self) -> float:
        """The median pair's ratio (one pair: that pair's)."""
        return self._pair_ratios[self._median]

    @property
    def limit(self) -> float:
        """The schedule's limit: steps / computed steps (cached steps free)."""
        return len(self.decisions) / max(1, self.computed)

    def errors(self) -> list[float]:
        return [float((a - b).abs().max()) for a, b in zip(self.cached_run.outputs, self.uncached_run.outputs,
                                                           strict=True)]

    def computed_step_error(self) -> float:
        """Max |error| over what was computed: whole steps, or with per-sample decisions (a step computes for
        the samples that need it, the others keep their cache) each sample on the steps it computed; 0 where
        graphcache promises exactness."""
        per_sample = self.cached.state.sample_decisions()
        worst = 0.0
        for k, (a, b) in enumerate(zip(self.cached_run.outputs, self.uncached_run.outputs, strict=True)):
            if per_sample and a.dim() > 0 and a.shape[0] == len(per_sample):
                rows = [s for s in range(a.shape[0]) if per_sample[s][k] == "computed"]
                if rows:
                    worst = max(worst, float((a[rows] - b[rows]).abs().max()))
            elif self.decisions[k] == "computed":
                worst = max(worst, float((a - b).abs().max()))
        return worst

    def mean_step(self, kind: str) -> float:
        times = [s for s, d in zip(self.cached_run.step_seconds, self.decisions, strict=True) if d == kind]
        return sum(times) / len(times) if times else float("nan")


def compare(model: torch.nn.Module, inputs: Callable[[float], dict[str, Any]], policy: PolicyConfig,
            steps: int = 50, backend: str = "eager",
            progress: Callable[[str], Callable[[Iterable[float]], Iterable[float]]] | None = None,
            repeats: int = 1) -> Comparison:
    """Optimize ``model`` (torch.export route) and time generations of it against the uncached model.

    Both run the same way (``eager``: op by op; ``inductor``: ``torch.compile(fullgraph=True)``), each first
    warmed up by an untimed 4-step generation (compilation), then timed on the same inputs, ``repeats`` times
    in turn (uncached, graphcache, uncached, ...) so that drift of a busy machine hits both.
    """
    from graphcache.errors import PolicyConfigError

    if backend not in BACKENDS:
        raise PolicyConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise PolicyConfigError(f"repeats must be an integer >= 1, got {repeats!r}")
    timesteps = cli_timesteps(steps)
    cached = optimize_exported(model, inputs(timesteps[0]), policy, compile_lowering(backend))
    base: Callable[..., Any] = model
    fast = CompiledExport(cached, "inductor" if backend == "inductor" else "eager")
    if backend == "inductor":
        base = torch.compile(model, fullgraph=True, dynamic=False)
    bar = progress or (lambda _label: None)  # type: ignore[return-value, arg-type]
    warm_base = run_generation(base, inputs, timesteps[:4], bar("warm-up uncached"))  # compiles every branch
    warm_fast = run_generation(fast, inputs, timesteps[:4], bar("warm-up graphcache"))
    uncached_runs, cached_runs = [], []
    for k in range(repeats):
        suffix = f" {k + 1}/{repeats}" if repeats > 1 else ""
        uncached_runs.append(run_generation(base, inputs, timesteps, bar(f"uncached{suffix}")))
        cached.state.reset()
        cached_runs.append(run_generation(fast, inputs, timesteps, bar(f"{policy.name}{suffix}")))
    recorded = analysis(cached.module).timings  # (capture or pass, seconds, shape propagation)
    timings = [(name, seconds) for name, seconds, _ in recorded]
    timings.append(("shape propagation (in the passes)", sum(p for _, _, p in recorded)))
    timings += [("first call, graphcache (compilation)", warm_fast.step_seconds[0]),
                ("first call, uncached (compilation)", warm_base.step_seconds[0])]
    return Comparison(policy, backend, cached, uncached_runs, cached_runs, cached.state.decisions(), timings,
                      fast.routes_off())
