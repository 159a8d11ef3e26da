"""Compile time on a Flux-sized block structure: graphcache vs plain ``torch.compile`` of the same model.

diffusers' FluxTransformer2DModel with Flux.1's block counts (19 dual-stream + 38 single-stream blocks) at a
reduced width. Each side compiles from a cold start (dynamo reset, Inductor's caches off) and makes its first
call; the first call's wall time is the compile time a user waits for. graphcache's is split into dynamo's
trace + graphcache's passes (with the shape propagation inside them) + the self-check + the cached-step graph
(a static schedule's cached steps run by their own graph, compiled after the first call) + Inductor (the rest).
The two sides run in turn, ``--repeats`` times; medians are printed with their ratio.

    python benchmarks/compile_time.py                     # fora, 19 + 38 blocks, width 64
    python benchmarks/compile_time.py --policy fbcache --dual 4 --single 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # every compile from scratch

import torch

import graphcache
from graphcache.passes.base import analysis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from flux import build


def plain(model: torch.nn.Module, kwargs: dict) -> float:
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    start = time.perf_counter()
    with torch.no_grad():
        compiled(**kwargs)
    return time.perf_counter() - start


def with_graphcache(model: torch.nn.Module, kwargs: dict, policy: str) -> tuple[float, dict[str, float], int]:
    torch._dynamo.reset()
    fast = graphcache.optimize(model, policy, backend="inductor")
    start = time.perf_counter()
    with torch.no_grad():
        fast(**kwargs)
    total = time.perf_counter() - start
    found = analysis(fast.states[0].gm)
    apart = ("self-check", "cached-step graph")  # timed beside the passes, printed on their own
    parts = {"passes": sum(s for name, s, _ in found.timings if name not in apart),
             "shape propagation (in the passes)": sum(p for _, _, p in found.timings),
             **{name: sum(s for n, s, _ in found.timings if n == name) for name in apart}}
    return total, parts, len(fast.states)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="fora")
    parser.add_argument("--dual", type=int, default=19)
    parser.add_argument("--single", type=int, default=38)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    model, inputs = build(dual=args.dual, single=args.single)
    model.requires_grad_(False)
    kwargs = inputs(999.0)
    with torch.no_grad():  # Inductor's one-time start (imports, compile workers) lands on neither side
        torch.compile(torch.nn.Linear(4, 4), fullgraph=True)(torch.randn(2, 4))
    plain_runs, fast_runs, parts_runs = [], [], []
    for k in range(args.repeats):
        if k % 2 == 0:  # in turn, so that a drifting machine hits both
            plain_runs.append(plain(model, kwargs))
        total, parts, graphs = with_graphcache(model, kwargs, args.policy)
        if k % 2 == 1:
            plain_runs.append(plain(model, kwargs))
        if graphs != 1:
            raise SystemExit(f"graphcache compiled {graphs} graphs, expected one")
        fast_runs.append(total)
        parts_runs.append(parts)
        print(f"run {k + 1}/{args.repeats}: torch.compile {plain_runs[-1]:.1f} s, graphcache {total:.1f} s",
              flush=True)
    base, fast = statistics.median(plain_runs), statistics.median(fast_runs)
    parts = {name: statistics.median(p[name] for p in parts_runs) for name in parts_runs[0]}
    inductor = fast - parts["passes"] - parts["self-check"] - parts["cached-step graph"]
    print(f"\nFluxTransformer2DModel, {args.dual} dual + {args.single} single blocks, {args.policy}, "
          f"median of {args.repeats}, threads {torch.get_num_threads()}")
    print(f"  plain torch.compile (dynamo + Inductor), first call   {base:8.1f} s")
    print(f"  graphcache, first call                                {fast:8.1f} s")
    print(f"    graphcache passes                                    {parts['passes']:8.2f} s "
          f"(of which shape propagation {parts['shape propagation (in the passes)']:.2f} s)")
    print(f"    self-check (one eager computed step)                 {parts['self-check']:8.2f} s")
    print(f"    cached-step graph (made and compiled by Inductor)    {parts['cached-step graph']:8.2f} s")
    print(f"    dynamo + Inductor (the rest)                         {inductor:8.1f} s")
    print(f"  ratio graphcache / torch.compile                       {fast / base:8.2f}x")


if __name__ == "__main__":
    main()
