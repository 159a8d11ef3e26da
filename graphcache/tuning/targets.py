"""What ``graphcache tune`` measures a configuration on: the reference pipeline or a model.py.

A target runs one generation of a split (``"search"`` or ``"heldout"``: different seeds) uncached or with a
policy, on a backend, and scores it against the uncached run of the same split.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from graphcache.policies import PolicyConfig

SPLITS = ("search", "heldout")


@dataclasses.dataclass
class Run:
    """One generation: its outputs (to score), per-call decisions and timings."""

    outputs: Any
    decisions: list[str]
    seconds: float  # the fastest timed generation
    call_seconds: list[float]  # each denoiser call of that generation
    seconds_runs: list[float] = dataclasses.field(default_factory=list)

    @property
    def computed(self) -> int:
        return self.decisions.count("computed")

    def step_cost(self, kind: str) -> float | None:
        """Mean seconds of the calls that were ``kind`` (``computed`` / ``cached``); None when there were none."""
        times = [s for s, d in zip(self.call_seconds, self.decisions, strict=False) if d == kind]
        return sum(times) / len(times) if times else None


def _timed(fn: Callable[..., Any], record: list[float]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        record.append(time.perf_counter() - start)
        return out

    return call


def _fastest(best: Run | None, runs: list[float]) -> Run:
    if best is None:
        raise ValueError("repeats must be >= 1")
    best.seconds_runs = runs
    return best


class ReferenceTarget:
    """The shipped digits pipeline: CFG batch, 50 DDIM steps; class accuracy by the independent judge."""

    metrics = ("psnr", "ssim", "acc", "acc_drop", "max_error")

    def __init__(self, steps: int = 50, search_samples: int = 20, heldout_samples: int = 100,
                 guidance: float = 1.5) -> None:
        from graphcache.reference import load_pipeline
        from graphcache.reference.judge import load_judge
        from graphcache.reference.pipeline import DEFAULT_CALIBRATION

        self.steps, self.guidance = steps, guidance
        self.samples = {"search": search_samples, "heldout": heldout_samples}
        self.seeds = {"search": 1, "heldout": 0}
        self.pipe = load_pipeline()
        self.pipe.set_progress_bar_config(disable=True)
        self.model = self.pipe.transformer
        self.judge = load_judge()
        self.calibration: str | None = str(DEFAULT_CALIBRATION)
        self.label = "reference digits DiT"

    def describe(self, split: str) -> str:
        return (f"{self.samples[split]} digits (classes 0-9 in turn, seed {self.seeds[split]}) x {self.steps} steps, "
                f"guidance {self.guidance}")

    def _labels(self, split: str) -> list[int]:
        return [i % 10 for i in range(self.samples[split])]

    def _generate(self, split: str, steps: int) -> torch.Tensor:
        return self.pipe(class_labels=self._labels(split), num_inference_steps=steps, guidance_scale=self.guidance,
                         generator=torch.Generator().manual_seed(self.seeds[split]), output_type="pt")

    def run(self, policy: PolicyConfig | None, split: str, backend: str, repeats: int = 1) -> Run:
        import graphcache

        torch._dynamo.reset()  # one compiled denoiser at a time (dynamo's recompile limit counts per code object)
        if policy is None:
            denoiser: Any = torch.compile(self.model, fullgraph=True, dynamic=False) if backend == "inductor" \
                else self.model
            self.pipe.transformer = denoiser
        else:
            self.pipe.transformer = self.model
            graphcache.optimize(self.pipe, policy, backend=backend)
        module = self.pipe.transformer
        self._generate(split, min(self.steps, 3))  # warm-up: capture, self-check, compilation
        best: Run | None = None
        runs = []
        for _ in range(repeats):
            calls: list[float] = []
            forward = module.forward
            module.forward = _timed(forward, calls)
            try:
                start = time.perf_counter()
                images = self._generate(split, self.steps)
                seconds = time.perf_counter() - start
            finally:
                module.forward = forward
            runs.append(seconds)
            decided = graphcache.decisions(self.pipe) if policy is not None else ["computed"] * self.steps
            if best is None or seconds < best.seconds:
                best = Run(images, decided, seconds, calls)
        self.pipe.transformer = self.model
        return _fastest(best, runs)

    def score(self, run: Run, base: Run, split: str) -> dict[str, float]:
        from graphcache.quality import class_accuracy, psnr, ssim

        labels = torch.tensor(self._labels(split))
        with torch.no_grad():
            acc = 100 * class_accuracy(self.judge(run.outputs), labels)
            base_acc = 100 * class_accuracy(self.judge(base.outputs), labels)
        return {"psnr": float(psnr(run.outputs, base.outputs).clamp(max=100).mean()),
                "ssim": float(ssim(run.outputs, base.outputs).mean()), "acc": acc, "acc_drop": base_acc - acc,
                "max_error": float((run.outputs - base.outputs).abs().max())}


class ModelFileTarget:
    """A model.py (``build() -> (model, inputs)``): the denoiser called at each of ``steps`` timesteps.

    The held-out split calls ``inputs(t, seed=1)`` when the file's ``inputs`` takes a ``seed``; otherwise it
    is the search inputs again (said in the report)."""

    metrics = ("psnr", "max_error")

    def __init__(self, model: torch.nn.Module, inputs: Callable[..., dict[str, Any]], steps: int = 50,
                 calibration: str | None = None, label: str = "model") -> None:
        from graphcache.runner import cli_timesteps

        self.model, self._inputs = model.eval(), inputs
        self.steps = steps
        self.timesteps = cli_timesteps(steps)
        self.calibration = calibration
        self.label = label
        try:
            self.seeded = "seed" in inspect.signature(self._inputs).parameters
        except (TypeError, ValueError):
            self.seeded = False

    @classmethod
    def from_file(cls, path: str | Path, steps: int = 50, calibration: str | None = None) -> ModelFileTarget:
        from graphcache.modelfile import load_model_file

        model, inputs = load_model_file(path)
        return cls(model, inputs, steps, calibration, str(path))

    def describe(self, split: str) -> str:
        if split == "heldout":
            return (f"inputs(t, seed=1) x {self.steps} steps" if self.seeded else
                    f"the search inputs again x {self.steps} steps (the model file's inputs() takes no seed)")
        return f"inputs(t) x {self.steps} steps"

    def inputs(self, split: str) -> Callable[[float], dict[str, Any]]:
        if split == "heldout" and self.seeded:
            return lambda t: self._inputs(t, seed=1)  # type: ignore[call-arg]
        return self._inputs

    def run(self, policy: PolicyConfig | None, split: str, backend: str, repeats: int = 1) -> Run:
        from graphcache.capture import reuse_captures
        from graphcache.exported import optimize_exported
        from graphcache.rewrite import INDUCTOR_OPTIONS, compile_lowering
        from graphcache.runner import run_generation

        torch._dynamo.reset()
        inputs = self.inputs(split)
        state = None
        fn: Callable[..., Any] = self.model
        if policy is not None:
            with reuse_captures():
                cached = optimize_exported(self.model, inputs(self.timesteps[0]), policy, compile_lowering(backend))
            fn, state = cached.module, cached.state
        if backend == "inductor":
            options = INDUCTOR_OPTIONS if policy is not None else None  # the uncached model: plain torch.compile
            fn = torch.compile(fn, fullgraph=True, dynamic=False, options=options)
        run_generation(fn, inputs, self.timesteps[:3])  # warm-up (compilation)
        best: Run | None = None
        runs = []
        for _ in range(repeats):
            if state is not None:
                state.reset()
            gen = run_generation(fn, inputs, self.timesteps)
            runs.append(gen.seconds)
            decided = state.decisions() if state is not None else ["computed"] * self.steps
            if best is None or gen.seconds < best.seconds:
                best = Run(gen.outputs, decided, gen.seconds, gen.step_seconds)
        return _fastest(best, runs)

    def score(self, run: Run, base: Run, split: str) -> dict[str, float]:
        out, ref = torch.cat([o.flatten() for o in run.outputs]), torch.cat([o.flatten() for o in base.outputs])
        mse = float(((out - ref) ** 2).mean())
        span = float(ref.max() - ref.min()) or 1.0
        psnr = 100.0 if mse == 0 else min(100.0, 10 * float(torch.log10(torch.tensor(span**2 / mse))))
        return {"psnr": psnr, "max_error": float((out - ref).abs().max())}
