"""``graphcache bench``: uncached vs policies on the reference pipeline, same seeds and classes.

Measures wall time (ratio vs the uncached pipeline run the same way, in the same process), computed steps,
and quality: class accuracy by the independent judge, Frechet distance of judge features to the real
digits, PSNR / SSIM of each sample vs the uncached sample of the same seed and class.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from graphcache.api import decisions
from graphcache.cached_module import CachedModule
from graphcache.policies import PolicyConfig
from graphcache.quality import class_accuracy, frechet_distance, psnr, ssim


@dataclasses.dataclass
class RunResult:
    label: str
    settings: str
    seconds: float
    images: torch.Tensor  # (N, H, W) in [0, 1]
    trajectory: list[torch.Tensor]  # latent after each step
    decisions: list[str]
    accuracy: float = 0.0
    frechet: float = 0.0
    psnr: float = float("inf")
    ssim: float = 1.0
    speedup: float = 1.0
    step_error: list[float] = dataclasses.field(default_factory=list)
    cache_bytes: int = 0
    seconds_runs: list[float] = dataclasses.field(default_factory=list)  # every timed run (``seconds``: fastest)
    sample_steps: float = 1.0  # share of (sample, step) pairs on which the blocks ran for that sample
    warmup_seconds: float = 0.0  # the untimed 4-step warm-up generation: compilation (capture, passes, Inductor)
    calls: dict[str, int] = dataclasses.field(default_factory=dict)  # the first timed run's denoiser calls by
    # route (CachedModule.routes: through dynamo, by the cached-step graph, directly); empty when uncached
    calls_off: dict[str, str] = dataclasses.field(default_factory=dict)  # why a route was not taken

    @property
    def spread(self) -> float:
        """(slowest - fastest) / fastest over the timed runs: how noisy this row's timing was."""
        return (max(self.seconds_runs) - min(self.seconds_runs)) / min(self.seconds_runs) if self.seconds_runs else 0.0

    @property
    def computed(self) -> int:
        return self.decisions.count("computed") if self.decisions else len(self.trajectory)

    def row(self) -> dict[str, Any]:
        return {
            "policy": self.label, "settings": self.settings, "seconds": round(self.seconds, 3),
            "speedup": round(self.speedup, 3), "computed_steps": self.computed, "steps": len(self.trajectory),
            "schedule_limit": round(len(self.trajectory) / max(1, self.computed), 3),
            "class_accuracy": round(self.accuracy, 4), "frechet_distance": round(self.frechet, 3),
            "psnr_db": round(self.psnr, 2), "ssim": round(self.ssim, 4), "cache_bytes": self.cache_bytes,
            "seconds_runs": [round(x, 3) for x in self.seconds_runs], "timing_spread": round(self.spread, 4),
            "sample_steps_computed": round(self.sample_steps, 4), "warmup_seconds": round(self.warmup_seconds, 1),
            "calls": self.calls, "calls_not_around_dynamo": self.calls_off,
        }


def _generate(pipe: Any, labels: list[int], steps: int, guidance: float, seed: int, show_progress: bool = False
              ) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    trajectory: list[torch.Tensor] = []
    start = time.perf_counter()
    images = pipe(class_labels=labels, num_inference_steps=steps, guidance_scale=guidance,
                  generator=torch.Generator().manual_seed(seed), output_type="pt", progress=show_progress,
                  callback=lambda _n, _t, x: trajectory.append(x.clone()))
    return time.perf_counter() - start, images, trajectory


def with_reference_calibration(policy: PolicyConfig) -> PolicyConfig:
    """Policies that read a calibration get the shipped one of the reference model unless given another
    (made by `graphcache calibrate --reference -o graphcache/reference/weights/calibration.json`)."""
    from graphcache.reference.pipeline import DEFAULT_CALIBRATION

    if getattr(policy, "calibration", "") is None and getattr(policy, "coefficients", None) is None:
        return dataclasses.replace(policy, calibration=str(DEFAULT_CALIBRATION))  # type: ignore[call-arg]
    return policy


def run_bench(policies: list[PolicyConfig], samples: int = 100, steps: int = 50, guidance: float = 1.5,
              backend: str = "inductor", seed: int = 0,
              status: Callable[[str], None] = print, progress: bool = True, repeats: int = 1) -> list[RunResult]:
    """Uncached first, then each policy, then uncached again (the faster uncached run is the baseline of the
    ratios); each warmed up by a short generation (compilation) before it is timed, then timed ``repeats``
    times (the fastest counts: wall-time noise only ever adds)."""
    from graphcache.errors import PolicyConfigError

    if not isinstance(repeats, int) or repeats < 1:
        raise PolicyConfigError(f"repeats must be an integer >= 1, got {repeats!r}")
    import graphcache
    from graphcache.reference import load_pipeline
    from graphcache.reference.data import load_digits_tensors
    from graphcache.reference.judge import load_judge

    policies = [with_reference_calibration(p) for p in policies]
    labels = [i % 10 for i in range(samples)]
    judge = load_judge()
    real, _ = load_digits_tensors()
    real_features = judge.features((real + 1) / 2).numpy()
    pipe = load_pipeline()
    pipe.set_progress_bar_config(leave=False, desc="denoise", disable=not progress)
    denoiser = pipe.transformer
    results: list[RunResult] = []
    runs: list[tuple[str, str, PolicyConfig | None]] = [("uncached", "-", None)]
    runs += [(p.name, _settings(p), p) for p in policies]
    if policies:  # the uncached run again at the end: the faster of the two is the baseline (wall-time noise)
        runs.append(("uncached", "again", None))
    for label, settings, policy in runs:
        torch._dynamo.reset()  # one compiled denoiser at a time: dynamo's recompile limit counts per code object
        if policy is None:
            pipe.transformer = torch.compile(denoiser, fullgraph=True, dynamic=False) if backend == "inductor" \
                else denoiser
        else:
            pipe.transformer = denoiser
            graphcache.optimize(pipe, policy, backend=backend)
        status(f"{label} {settings}: warm-up (compilation)")
        warmup = time.perf_counter()
        _generate(pipe, labels, min(steps, 4), guidance, seed)
        warmup = time.perf_counter() - warmup
        status(f"{label} {settings}: timed run of {samples} samples x {steps} steps")
        before = _routes(pipe.transformer)
        seconds, images, trajectory = _generate(pipe, labels, steps, guidance, seed, progress)
        calls = {route: n - before[route] for route, n in _routes(pipe.transformer).items()}
        times = [seconds]
        for k in range(1, repeats):
            status(f"{label} {settings}: timed run {k + 1}/{repeats}")
            times.append(_generate(pipe, labels, steps, guidance, seed, False)[0])
        if settings == "again":
            results[0].warmup_seconds = min(results[0].warmup_seconds, warmup)
            results[0].seconds_runs += times
            results[0].seconds = min(results[0].seconds_runs)
            continue
        run = RunResult(label, settings, min(times), images, trajectory,
                        decisions(pipe) if policy is not None else ["computed"] * steps, seconds_runs=times,
                        warmup_seconds=warmup, calls=calls)
        if isinstance(pipe.transformer, CachedModule):
            run.cache_bytes = pipe.transformer.cache_bytes()
            run.calls_off = pipe.transformer.routes_off()
            run.sample_steps = _sample_steps(pipe.transformer, run.computed / steps)
        results.append(run)
    _score(results, judge, real_features, torch.tensor(labels))
    return results


def _routes(denoiser: Any) -> dict[str, int]:
    return denoiser.routes() if isinstance(denoiser, CachedModule) else {}


def _sample_steps(denoiser: CachedModule, pooled: float) -> float:
    """The share of (sample, step) pairs computed in the last generation of the stream last run: from the
    per-sample log of a dynamic policy, else every sample follows the batch (``pooled``)."""
    from graphcache.state import computed_share

    state = denoiser.used[0] if denoiser.used else None
    share = computed_share(state.sample_decisions()) if state is not None else None
    return pooled if share is None else share


def _settings(policy: PolicyConfig) -> str:
    defaults = type(policy)()
    changed = [f"{f.name}={getattr(policy, f.name)}" for f in dataclasses.fields(policy)
               if getattr(policy, f.name) != getattr(defaults, f.name) and f.name != "calibration"]
    return ",".join(changed) or "defaults"


def _score(results: list[RunResult], judge: Any, real_features: np.ndarray, labels: torch.Tensor) -> None:
    base = results[0]
    with torch.no_grad():
        for run in results:
            run.accuracy = class_accuracy(judge(run.images), labels)
            run.frechet = frechet_distance(judge.features(run.images).numpy(), real_features)
            if run is not base:
                run.psnr = float(psnr(run.images, base.images).clamp(max=100).mean())
                run.ssim = float(ssim(run.images, base.images).mean())
            run.speedup = base.seconds / run.seconds
            run.step_error = [float((a - b).abs().mean()) for a, b in zip(run.trajectory, base.trajectory,
                                                                           strict=True)]
