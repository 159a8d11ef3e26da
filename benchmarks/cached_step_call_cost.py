"""What a cached step costs against the model's own prologue and epilogue, on the CPU: the issue's
"cached-step time <= prologue + epilogue + 10%".

Builds the DiT of ``dit_cpu.py`` (hidden 512, 12 blocks, batch 1) and optimizes it with ``--policy`` through
``graphcache.optimize`` (Inductor), twice: with the cached steps run by their own graph (the default,
``graphcache/cached_step.py``) and with every step through the one graph (``cached_step_graph = False``:
dynamo's guard check over every weight, Inductor's wrapper of the whole model); and once through
``torch.compile(model, backend="graphcache")``, where dynamo's guards run on every call and the graph it calls
runs a cached step by the cached-step graph. Each runs ``--rounds``
generations; printed: the median of the first cached step after each computed one (caches cold from the
computed step) and of the next one. Then the floor: the same DiT with its blocks as identities (prologue +
epilogue alone), compiled plainly with ``torch.compile``, timed right after a full uncached step and again.
Ratios are to that floor, in the same run.

    python benchmarks/cached_step_call_cost.py                  # fora (interval 3)
    python benchmarks/cached_step_call_cost.py --policy taylorseer
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from dit_cpu import build, without_blocks

import graphcache
from graphcache.rewrite import INDUCTOR_OPTIONS


def cached_step_times(fast, kwargs: list[dict], rounds: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Median ms of the first and of the second cached step after a computed one, over ``rounds`` generations."""
    first, second = [], []
    for _ in range(rounds):
        graphcache.reset(fast)
        times = []
        for kw in kwargs:
            start = time.perf_counter()
            fast(**kw)
            times.append(1e3 * (time.perf_counter() - start))
        d = graphcache.decisions(fast)
        first += [t for k, t in enumerate(times) if d[k] == "cached" and d[k - 1] == "computed"]
        second += [t for k, t in enumerate(times) if k > 1 and d[k] == "cached" and d[k - 1] == "cached"
                   and d[k - 2] == "computed"]
    return statistics.median(first), statistics.median(second) if second else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="fora")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch._dynamo.config.recompile_limit = 64
    model, latent, labels = build(512, 12, 1)
    kwargs = [{"hidden_states": latent, "timestep": torch.tensor([int(t)]), "class_labels": labels}
              for t in torch.linspace(999, 0, args.steps).tolist()]
    runs = {"cached-step graph": graphcache.optimize(model, args.policy),
            "one graph": graphcache.optimize(model, args.policy)}
    runs["one graph"].cached_step_graph = False
    runs["torch.compile(backend='graphcache')"] = torch.compile(
        model, backend="graphcache", fullgraph=True, dynamic=False, options={"policy": args.policy})
    full = torch.compile(model, fullgraph=True, dynamic=False, options=INDUCTOR_OPTIONS)
    bare = torch.compile(without_blocks(model), fullgraph=True, dynamic=False, options=INDUCTOR_OPTIONS)
    with torch.no_grad():
        for fast in runs.values():
            for kw in kwargs:  # compile every graph
                fast(**kw)
        for kw in kwargs[:3]:
            full(**kw)
            bare(**kw)
        cold, warm = [], []
        for kw in kwargs[:12 * args.rounds]:
            full(**kw)
            for out in (cold, warm):
                start = time.perf_counter()
                bare(**kw)
                out.append(1e3 * (time.perf_counter() - start))
        floor_cold, floor_warm = statistics.median(cold), statistics.median(warm)
        print(f"prologue + epilogue alone: {floor_cold:.2f} ms after a full step, {floor_warm:.2f} ms the next call")
        for name, fast in runs.items():
            first, second = cached_step_times(fast, kwargs, args.rounds)
            print(f"{args.policy}, {name}: cached step after a computed one {first:.2f} ms "
                  f"({first / floor_cold:.2f}x the floor), the next {second:.2f} ms ({second / floor_warm:.2f}x)")
        runner = runs["cached-step graph"].states[0].cached_step
        why = f" ({runner.why_not})" if runner.why_not else ""
        print(f"cached steps run by their own graph: {runner.runs}{why}")


if __name__ == "__main__":
    main()
