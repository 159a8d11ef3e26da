"""The two routes of a static policy on one machine: ``graphcache.optimize`` (the decision in the graph, the
torch.compile lowering) and ``graphcache.export.compile_unrolled`` (a full-step and a cached-step graph picked
by the host, the export route's functional state), each against the uncached model compiled the same way.

Each round times one generation of every run; printed per run: the median ms per step, the speedup over the
uncached median, the fastest and the median single step (a cached step is the fastest one), computed steps.

    python benchmarks/unrolled_vs_in_graph.py                      # DiT 512x12, 50 steps, FORA and TaylorSeer
    python benchmarks/unrolled_vs_in_graph.py --policy fora --device cuda --mode reduce-overhead
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from dit_cpu import build  # benchmarks/: the same diffusers DiT

import graphcache
from graphcache.export import compile_unrolled


def generate(fn, latent, labels, steps: int) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    times = []
    sync = torch.cuda.synchronize if latent.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        for t in torch.linspace(999, 0, steps, device=latent.device).round().long():
            begin = time.perf_counter()
            fn(hidden_states=latent, timestep=t.expand(latent.shape[0]), class_labels=labels)
            times.append(time.perf_counter() - begin)
    sync()
    return time.perf_counter() - start, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", action="append", help="a static policy, repeatable (default: fora, taylorseer)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default=None, help="torch.compile mode of the unrolled graphs")
    args = parser.parse_args()
    model, latent, labels = build(512, 12, 2)
    model, latent, labels = model.to(args.device), latent.to(args.device), labels.to(args.device)
    example = {"hidden_states": latent, "timestep": torch.full((2,), 999, dtype=torch.long, device=args.device),
               "class_labels": labels}
    runs = {"uncached": torch.compile(model, fullgraph=True, dynamic=False)}
    for spec in args.policy or ["fora", "taylorseer"]:
        runs[f"{spec}, in-graph"] = graphcache.optimize(model, spec)
        runs[f"{spec}, unrolled"] = compile_unrolled(model, example, spec, steps=args.steps, mode=args.mode)
    for name, fn in runs.items():
        start = time.perf_counter()
        generate(fn, latent, labels, args.steps)  # compiles every graph
        print(f"{name}: compiled and ran once in {time.perf_counter() - start:.0f} s", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    steps: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            if hasattr(fn, "reset"):
                fn.reset()
            total, steps[name] = generate(fn, latent, labels, args.steps)
            seconds[name].append(total)
    base = statistics.median(seconds["uncached"])
    print(f"\nDiT 512x12, {args.steps} steps, {args.device}, median of {args.rounds} rounds")
    for name, fn in runs.items():
        median, ordered = statistics.median(seconds[name]), sorted(steps[name])
        computed = fn.decisions().count("computed") if hasattr(fn, "decisions") else args.steps
        print(f"{name}: {1e3 * median / args.steps:.2f} ms/step, {base / median:.2f}x of {args.steps / computed:.2f}x; "
              f"fastest step {1e3 * ordered[0]:.2f} ms, median step {1e3 * ordered[len(ordered) // 2]:.2f} ms")


if __name__ == "__main__":
    main()
