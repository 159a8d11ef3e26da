"""graphcache side by side with diffusers' own cache hooks: same model, same method, settings mapped field by field.

For each (model, method): a real DDIM generation of ``--steps`` steps (batch 1, the latent updated by the
scheduler) is run by
  1. the uncached model compiled (``torch.compile(fullgraph=True)``, Inductor): the baseline,
  2. diffusers' hooks, eager (``apply_first_block_cache`` / ``apply_taylorseer_cache`` on a copy of the model),
  3. the same hooks under ``torch.compile`` (not fullgraph: the hooks break the graph),
  4. ``graphcache.optimize(model, spec)`` (Inductor, one graph).
Each is warmed up (compiled) by one generation, then timed ``--repeats`` times. The diffusers runs and the
graphcache runs are two phases after a dynamo reset, each with a freshly compiled baseline of its own: in the
diffusers phase the baseline is timed before the hooks are compiled (their graph break inside the blocks'
loop makes dynamo skip the model's forward for every later compile of that class until a reset); in the
graphcache phase graphcache and the baseline run in turn.
Printed per row: wall ratio vs the baseline, computed calls, % of the schedule's limit (ratio / (steps /
computed)), graphs and graph breaks dynamo made, the max error vs the uncached output, and the max
difference between diffusers' and graphcache's outputs. Computed steps are read per call: diffusers' from a
forward hook on a module only a computed step runs (eager), graphcache's from its decision log.

Mappings (see the printed notes):
  FBCache   FirstBlockCacheConfig(threshold=T)  ==  fbcache{threshold=T,per_sample=false}: the same rule
            (relative L1 change of block 0's residual vs the last computed step's; batch 1, so pooled =
            per-sample); decisions must agree step for step.
  TaylorSeer TaylorSeerCacheConfig(cache_interval=N, disable_cache_before_step=W, max_order=1, fp32 factors,
            attention + MLP modules of every block)  ~  taylorseer{interval=N,warmup=W+1,order=1}: diffusers
            computes steps 0..W-1 and W+1+kN (step W forecast from W computed steps); graphcache (the released
            code's schedule) computes 0..W and W+1+kN: one more computed step, the rest identical.
  TaylorSeer lite (Flux)  use_lite_mode=True (blocks skipped, proj_out forecast)  ~  taylorseer{lite=true,...}
            (the stack's residual forecast: the epilogue still runs on the forecast).

    python benchmarks/vs_diffusers.py                       # DiT 512x12 and Flux 4+8, 50 steps, N=2
    python benchmarks/vs_diffusers.py --models dit --methods fbcache --steps 30
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel
from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, TaylorSeerCacheConfig, apply_first_block_cache
from diffusers.hooks.hooks import CacheContext, _set_cache_context
from diffusers.hooks.taylorseer_cache import apply_taylorseer_cache

import graphcache

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import flux  # examples/flux.py


@dataclasses.dataclass
class Subject:
    name: str
    model: torch.nn.Module
    call: Callable[[Callable[..., Any], torch.Tensor, torch.Tensor], torch.Tensor]  # (fn, latent, t) -> eps
    latent: torch.Tensor
    computed_probe: Callable[[torch.nn.Module], torch.nn.Module]  # a module only a computed step runs


def dit(hidden: int = 512, layers: int = 12) -> Subject:
    torch.manual_seed(0)
    model = DiTTransformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=layers, num_attention_heads=8,
        attention_head_dim=hidden // 8, num_embeds_ada_norm=10, norm_num_groups=1,
    ).eval().requires_grad_(False)
    labels = torch.tensor([3])

    def call(fn: Callable[..., Any], latent: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return fn(latent, timestep=t.reshape(1), class_labels=labels).sample

    latent = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    return Subject(f"DiT {hidden}x{layers}", model, call, latent, lambda m: m.transformer_blocks[-1].attn1.to_q)


def flux_subject(dual: int = 4, single: int = 8, tokens: int = 256) -> Subject:
    model, inputs = flux.build(dual=dual, single=single, tokens=tokens)
    model.requires_grad_(False)
    fixed = inputs(0.0)

    def call(fn: Callable[..., Any], latent: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        kwargs = {**fixed, "hidden_states": latent, "timestep": (t / 1000.0).reshape(1)}
        return fn(**kwargs).sample

    return Subject(f"Flux {dual}+{single}", model, call, fixed["hidden_states"].clone(),
                   lambda m: m.single_transformer_blocks[-1].attn.to_q)


@dataclasses.dataclass
class Method:
    name: str
    diffusers: Callable[[torch.nn.Module], None]  # applies the hooks in place
    spec: str
    note: str


def methods(args: argparse.Namespace, subject: Subject) -> list[Method]:
    n, w = args.interval, args.warmup
    threshold = args.threshold if args.threshold is not None else (0.2 if subject.name.startswith("DiT") else 0.5)
    dit_modules = [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"]
    flux_modules = [r"transformer_blocks\.\d+\.(attn|ff|ff_context)", r"single_transformer_blocks\.\d+\.attn"]
    modules = dit_modules if subject.name.startswith("DiT") else flux_modules
    found = [
        Method("fbcache",
               lambda m: apply_first_block_cache(m, FirstBlockCacheConfig(threshold=threshold)),
               f"fbcache{{threshold={threshold},per_sample=false}}", "same rule: decisions must agree"),
        Method("taylorseer",
               lambda m: apply_taylorseer_cache(m, TaylorSeerCacheConfig(
                   cache_interval=n, disable_cache_before_step=w, max_order=1,
                   taylor_factors_dtype=torch.float32, cache_identifiers=modules)),
               f"taylorseer{{interval={n},warmup={w + 1},order=1}}",
               "graphcache computes step W as well (the released code's schedule)"),
    ]
    if subject.name.startswith("Flux"):
        found.append(Method(
            "taylorseer-lite",
            lambda m: apply_taylorseer_cache(m, TaylorSeerCacheConfig(
                cache_interval=n, disable_cache_before_step=w, max_order=1, taylor_factors_dtype=torch.float32,
                use_lite_mode=True)),
            f"taylorseer{{interval={n},warmup={w + 1},order=1,lite=true}}",
            "diffusers forecasts proj_out's output, graphcache the stack's residual"))
    return [m for m in found if m.name in args.methods]


@dataclasses.dataclass
class Run:
    seconds: float
    out: torch.Tensor
    computed: list[bool] | None  # per call, where a probe says (diffusers, eager)


def generate(subject: Subject, fn: Callable[..., Any], steps: int, probe: list[int] | None = None,
             hooked: torch.nn.Module | None = None) -> Run:
    """One generation; a model with diffusers hooks (``hooked``) starts it with fresh hook state, as diffusers'
    pipelines do (``cache_context`` / reset)."""
    if hooked is not None:
        HookRegistry.check_if_exists_or_initialize(hooked).reset_stateful_hooks()
        _set_cache_context(hooked, CacheContext("cond", num_inference_steps=steps))
    if probe is not None:
        probe[0] = 0
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    latent = subject.latent.clone()
    start = time.perf_counter()
    computed: list[bool] = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            before = probe[0] if probe is not None else 0
            eps = subject.call(fn, latent, t)
            if probe is not None:
                computed.append(probe[0] > before)
            latent = scheduler.step(eps, t, latent).prev_sample
    seconds = time.perf_counter() - start
    return Run(seconds, latent, computed if probe is not None else None)


def baseline(subject: Subject) -> Callable[..., Any]:
    """The uncached model compiled from a clean dynamo state (and compiled: one short generation)."""
    torch._dynamo.reset()
    base_fn = torch.compile(subject.model, fullgraph=True, dynamic=False)
    generate(subject, base_fn, 4)
    return base_fn


def counters_clear() -> None:
    torch._dynamo.utils.counters.clear()


def dynamo_counts() -> tuple[int, int]:
    counters = torch._dynamo.utils.counters
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["dit", "flux"], choices=["dit", "flux"])
    parser.add_argument("--methods", nargs="+", default=["fbcache", "taylorseer", "taylorseer-lite"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=None,
                        help="FBCache threshold (default: DiT 0.2, Flux 0.5: about 10-14 of 50 steps computed)")
    parser.add_argument("--interval", type=int, default=5, help="TaylorSeer cache_interval")
    parser.add_argument("--warmup", type=int, default=3, help="TaylorSeer disable_cache_before_step")
    args = parser.parse_args()
    rows = []
    for key in args.models:
        subject = dit() if key == "dit" else flux_subject()
        for method in methods(args, subject):
            hooked = copy.deepcopy(subject.model)
            method.diffusers(hooked)
            calls = [0]

            def count(*_: Any, calls: list[int] = calls) -> None:
                calls[0] += 1

            subject.computed_probe(hooked).register_forward_hook(count)
            theirs = generate(subject, hooked, args.steps, calls, hooked).computed
            assert theirs is not None
            diffusers_steps = sum(theirs)
            # phase 1, diffusers: the baseline timed first, then the hooks eager, then compiled. Not in turn: a
            # compiled hook graph-breaks inside the blocks' loop, and dynamo then skips the model's forward
            # for every later torch.compile of that class until a reset (the baseline would run eager)
            base_fn = baseline(subject)
            base_runs = [generate(subject, base_fn, args.steps) for _ in range(args.repeats)]
            hook_runs = [generate(subject, hooked, args.steps, hooked=hooked) for _ in range(args.repeats)]
            counters_clear()
            compiled_hooks = torch.compile(hooked, dynamic=False)
            generate(subject, compiled_hooks, args.steps, hooked=hooked)  # compile (a full run: hooks' Python state)
            hook_graphs = dynamo_counts()
            compiled_runs = [generate(subject, compiled_hooks, args.steps, hooked=hooked) for _ in range(args.repeats)]
            base_hooks = statistics.median(r.seconds for r in base_runs)
            # phase 2, graphcache: a fresh baseline, then graphcache in turn with it
            base_fn = baseline(subject)
            base_runs = []
            counters_clear()
            fast = graphcache.optimize(subject.model, method.spec, backend="inductor")
            generate(subject, fast, args.steps)  # compile
            ours_graphs = dynamo_counts()
            ours_runs = []
            for _ in range(args.repeats):
                base_runs.append(generate(subject, base_fn, args.steps))
                fast.reset()
                ours_runs.append(generate(subject, fast, args.steps))
            ours_steps = fast.decisions().count("computed")
            ours_decisions = [d == "computed" for d in fast.decisions()]
            base = statistics.median(r.seconds for r in base_runs)
            ref = base_runs[0].out

            def row(label: str, runs: list[Run], computed: int, graphs: tuple[int, int] | str, other: str,
                    base: float = base, ref: torch.Tensor = ref, subject: Subject = subject,
                    method: Method = method) -> dict[str, Any]:
                ratio = base / statistics.median(r.seconds for r in runs)
                limit = args.steps / computed
                return {"model": subject.name, "method": method.name, "run": label, "ratio": ratio,
                        "computed": computed, "pct": 100 * ratio / limit, "graphs": graphs,
                        "error": float((runs[0].out - ref).abs().max()), "vs": other}

            between = float((hook_runs[0].out - ours_runs[0].out).abs().max())
            rows.append(row("diffusers hooks, eager", hook_runs, diffusers_steps, "eager", "", base=base_hooks))
            rows.append(row("diffusers hooks, torch.compile", compiled_runs, diffusers_steps, hook_graphs, "",
                            base=base_hooks))
            rows.append(row(f"graphcache {method.spec}", ours_runs, ours_steps, ours_graphs, f"{between:.2e}"))
            agree = "identical" if theirs == ours_decisions else \
                f"differ at steps {[i for i, (a, b) in enumerate(zip(theirs, ours_decisions, strict=True)) if a != b]}"
            print(f"{subject.name} {method.name}: computed steps diffusers {diffusers_steps}, graphcache "
                  f"{ours_steps}, schedules {agree} ({method.note})\n  diffusers  "
                  f"{''.join('C' if d else '.' for d in theirs)}\n  graphcache "
                  f"{''.join('C' if d else '.' for d in ours_decisions)}", flush=True)
    print(f"\n{args.steps} steps, DDIM, batch 1, CPU threads {torch.get_num_threads()}, median of {args.repeats}; "
          "ratio = uncached compiled time / this time; % of limit = ratio / (steps / computed)\n")
    print("| model | method | run | ratio | computed | % of limit | graphs, breaks | max err vs uncached | "
          "max diff diffusers vs graphcache |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        graphs = r["graphs"] if isinstance(r["graphs"], str) else f"{r['graphs'][0]}, {r['graphs'][1]}"
        print(f"| {r['model']} | {r['method']} | {r['run']} | {r['ratio']:.2f}x | {r['computed']}/{args.steps} | "
              f"{r['pct']:.0f}% | {graphs} | {r['error']:.2e} | {r['vs']} |")


if __name__ == "__main__":
    main()
