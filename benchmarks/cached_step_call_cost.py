"""What calling the graph costs a cached step, next to the model's own prologue and epilogue, on the CPU.

Builds the DiT of ``dit_cpu.py`` (hidden 512, 12 blocks, batch 1), optimizes it with ``--policy`` (torch.export
route, the torch.compile lowering, Inductor) and times every step of a generation, twice: once as compiled, and
once under ``torch.compiler.set_stance(skip_guard_eval_unsafe=True)`` (dynamo's guard check skipped: unsafe,
a measurement only). Prints the median of the first and of the second cached step after each computed step
(the first runs with caches cold from the computed step). Then the same DiT with its blocks as identities
(prologue + epilogue alone), compiled the same way, timed right after a full uncached step and again: the
floor a cached step is measured against.

    python benchmarks/cached_step_call_cost.py                  # fora (interval 3)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from dit_cpu import build, without_blocks

from graphcache.exported import optimize_exported
from graphcache.rewrite import INDUCTOR_OPTIONS, compile_lowering


def cached_step_times(fast, state, kwargs: list[dict]) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Median ms of the first and of the second cached step after a computed one, over one generation."""
    state.reset()
    times = []
    for kw in kwargs:
        start = time.perf_counter()
        fast(**kw)
        times.append(1e3 * (time.perf_counter() - start))
    decisions = state.decisions()
    first = [t for k, t in enumerate(times) if decisions[k] == "cached" and decisions[k - 1] == "computed"]
    second = [t for k, t in enumerate(times) if decisions[k] == "cached" and k > 1
              and decisions[k - 1] == "cached" and decisions[k - 2] == "computed"]
    return statistics.median(first), statistics.median(second) if second else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="fora")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    model, latent, labels = build(512, 12, 1)
    kwargs = [{"hidden_states": latent, "timestep": torch.tensor([int(t)]), "class_labels": labels}
              for t in torch.linspace(999, 0, args.steps).tolist()]
    cached = optimize_exported(model, kwargs[0], args.policy, compile_lowering("inductor"))
    fast = torch.compile(cached.module, fullgraph=True, dynamic=False, options=INDUCTOR_OPTIONS)
    full = torch.compile(model, fullgraph=True, dynamic=False, options=INDUCTOR_OPTIONS)
    bare = torch.compile(without_blocks(model), fullgraph=True, dynamic=False, options=INDUCTOR_OPTIONS)
    with torch.no_grad():
        for kw in kwargs:  # compile every branch
            fast(**kw)
        first, second = cached_step_times(fast, cached.state, kwargs)
        print(f"{args.policy}: cached step after a computed one {first:.2f} ms, the next {second:.2f} ms")
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            first, second = cached_step_times(fast, cached.state, kwargs)
        print(f"{args.policy}, guard check skipped (unsafe): {first:.2f} ms, the next {second:.2f} ms")
        cold, warm = [], []
        for kw in kwargs[:3]:
            full(**kw)
            bare(**kw)
        for kw in kwargs[:12]:
            full(**kw)
            for out in (cold, warm):
                start = time.perf_counter()
                bare(**kw)
                out.append(1e3 * (time.perf_counter() - start))
        print(f"prologue + epilogue alone: {statistics.median(cold):.2f} ms after a full step, "
              f"{statistics.median(warm):.2f} ms the next call")


if __name__ == "__main__":
    main()
