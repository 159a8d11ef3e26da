"""Where a cached step's time goes, next to what reading its bytes would cost on this machine.

Builds the DiT of ``dit_cpu.py`` (hidden 512, 12 blocks, 256 tokens, batch 1), optimizes it with ``--policy``
(torch.export route, the torch.compile lowering, Inductor), runs a generation (compiling every branch), then
profiles the ``--cached`` cached steps after the first with ``torch.profiler`` (under ``no_grad``, as
generations run) and prints the top operators; ``--computed`` then profiles a computed step after the first
(what it adds to the model's own work: the predictors' state updates). First it measures this machine's read
bandwidth (the fastest of 10 ``sum``s over 120 MiB): a cached step that must read N bytes cannot be faster
than N / that.

With ``--model flux`` the model is the side by side's Flux 4+8 at width 128 (``graphcache.vs_diffusers.flux``);
``--uncached`` also profiles one step of the uncached model compiled plainly (the cost of calling a compiled
graph of the whole model, which both pay); ``--no-size-asserts`` compiles both without Inductor's
``assert_size_stride`` on their inputs, to measure what those cost (never the default: they catch a branch
compiled for other strides).

    python benchmarks/cached_step_profile.py                      # taylorseer (per block, order 4)
    python benchmarks/cached_step_profile.py --policy 'fora{granularity=block}'
    python benchmarks/cached_step_profile.py --computed --uncached   # taylorseer's computed step vs the model's
    python benchmarks/cached_step_profile.py --model flux --policy 'fbcache{threshold=0.5,per_sample=false}' \
        --cached 1 --uncached
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from dit_cpu import build, read_bandwidth
from torch.profiler import ProfilerActivity, profile

from graphcache.exported import optimize_exported
from graphcache.rewrite import INDUCTOR_OPTIONS, compile_lowering


def model_and_inputs(name: str) -> tuple[torch.nn.Module, Callable[[float], dict[str, Any]]]:
    if name == "flux":
        from graphcache.vs_diffusers import flux

        subj = flux()
        return subj.model, lambda t: subj.kwargs(subj.latent, torch.tensor(t))
    model, latent, labels = build(512, 12, 1)
    return model, lambda t: {"hidden_states": latent, "timestep": torch.tensor([int(t)]), "class_labels": labels}


def table(prof: profile, steps: int, what: str) -> None:
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3
    print(f"{what}: {steps} step(s), {total / steps:.2f} ms each under the profiler")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="taylorseer")
    parser.add_argument("--model", choices=("dit", "flux"), default="dit")
    parser.add_argument("--cached", type=int, default=2, help="cached steps to profile (after the first)")
    parser.add_argument("--uncached", action="store_true", help="also profile one step of the uncached model")
    parser.add_argument("--computed", action="store_true", help="also profile a computed step after the first")
    parser.add_argument("--no-size-asserts", action="store_true", help="compile without Inductor's input asserts")
    args = parser.parse_args()
    torch._inductor.config.cpp.enable_kernel_profile = True  # Inductor's kernels by name, apart from its wrapper
    print(f"read bandwidth: {read_bandwidth():.1f} GiB/s warm, {read_bandwidth(cold=True):.1f} GiB/s cold "
          "(fastest sum over 120 MiB; cold: each right after reading 1 GiB of other data)")
    model, inputs = model_and_inputs(args.model)
    options = {**INDUCTOR_OPTIONS, "size_asserts": not args.no_size_asserts}
    steps = torch.linspace(999, 0, 50).tolist()
    cached = optimize_exported(model, inputs(steps[0]), args.policy, compile_lowering("inductor"))
    fast = torch.compile(cached.module, fullgraph=True, dynamic=False, options=options)
    with torch.no_grad():
        for t in steps:  # compile every branch, then stop before a run of cached steps
            fast(**inputs(t))
        schedule = cached.state.decisions()
        cached.state.reset()
        k = 0
        while cached.state.decisions()[-1:] != ["cached"]:  # up to the first cached step, unprofiled
            fast(**inputs(steps[k]))
            k += 1
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for t in steps[k:k + args.cached]:
                fast(**inputs(t))
        ran = cached.state.decisions()[k:]
        if any(d != "cached" for d in ran):
            raise SystemExit(f"the profiled steps were not all cached ({ran}); use a smaller --cached")
        table(prof, len(ran), f"{args.policy}, cached")
        if args.computed:  # a computed step after the first: what it adds to the model's (predictor updates)
            j = next(j for j, d in enumerate(schedule) if j > 0 and d == "computed")
            cached.state.reset()
            for t in steps[:j]:
                fast(**inputs(t))
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fast(**inputs(steps[j]))
            if cached.state.decisions()[-1] != "computed":
                raise SystemExit(f"step {j} was not computed")
            table(prof, 1, f"{args.policy}, computed (step {j})")
        if args.uncached:
            base = torch.compile(model, fullgraph=True, dynamic=False,
                                 options={"size_asserts": not args.no_size_asserts})
            for t in steps[:3]:
                base(**inputs(t))
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                base(**inputs(steps[k]))
            table(prof, 1, "uncached")


if __name__ == "__main__":
    main()
