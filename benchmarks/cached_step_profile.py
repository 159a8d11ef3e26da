"""Where a cached step's time goes, next to what reading its bytes would cost on this machine.

Builds the DiT of ``dit_cpu.py`` (hidden 512, 12 blocks, 256 tokens, batch 1), optimizes it with ``--policy``
(torch.export route, the torch.compile lowering, Inductor), runs a generation (compiling every branch), then
profiles the ``--cached`` cached steps after the first with ``torch.profiler`` (under ``no_grad``, as
generations run) and prints the top operators. First it measures this machine's read bandwidth (the fastest
of 10 ``sum``s over 120 MiB): a cached step that must read N bytes cannot be faster than N / that.

    python benchmarks/cached_step_profile.py                      # taylorseer (per block, order 4)
    python benchmarks/cached_step_profile.py --policy 'fora{granularity=block}'
"""

from __future__ import annotations

import argparse

import torch
from dit_cpu import build, read_bandwidth
from torch.profiler import ProfilerActivity, profile

from graphcache.exported import optimize_exported
from graphcache.rewrite import INDUCTOR_OPTIONS, compile_lowering


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="taylorseer")
    parser.add_argument("--cached", type=int, default=2, help="cached steps to profile (after the first)")
    args = parser.parse_args()
    print(f"read bandwidth: {read_bandwidth():.1f} GiB/s (fastest sum over 120 MiB)")
    model, latent, labels = build(512, 12, 1)

    def inputs(t: float) -> dict:
        return {"hidden_states": latent, "timestep": torch.tensor([int(t)]), "class_labels": labels}

    steps = torch.linspace(999, 0, 50).tolist()
    cached = optimize_exported(model, inputs(steps[0]), args.policy, compile_lowering("inductor"))
    fast = torch.compile(cached.module, fullgraph=True, dynamic=False, options=INDUCTOR_OPTIONS)
    with torch.no_grad():
        for t in steps:  # compile every branch, then stop before a run of cached steps
            fast(**inputs(t))
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
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3
    print(f"{args.policy}: {len(ran)} cached steps, {total / len(ran):.1f} ms each under the profiler")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
