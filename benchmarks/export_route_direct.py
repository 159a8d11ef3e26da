"""``graphcache optimize --backend inductor``'s torch.export route (``CompiledExport``) with every call through
dynamo and with calls after a generation's first made directly (the default), in one run.

On the DiT of ``dit_cpu.py`` (hidden 512, 12 blocks, batch 1), 50 steps, for each ``--policy``: the CLI's own
comparison (``graphcache.runner.compare``: uncached and graphcache generations in turn, ``--repeats`` pairs,
the median pair), printed as speedup, computed steps, the schedule's limit and the % of it reached, with the
median uncached, computed and cached step times, and the final step's max error against the uncached run.

    python benchmarks/export_route_direct.py
    python benchmarks/export_route_direct.py --policy 'fbcache{threshold=0.15,per_sample=false}'
"""

from __future__ import annotations

import argparse
import statistics

import torch
from dit_cpu import build

from graphcache.exported import CompiledExport
from graphcache.policies import make_policy
from graphcache.runner import compare

DEFAULT = ["teacache{threshold=0.1,coefficients=[1.0,0.0]}", "fbcache{threshold=0.15,per_sample=false}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", action="append", help=f"repeatable (default: {' and '.join(DEFAULT)})")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch._dynamo.config.recompile_limit = 64
    model, latent, labels = build(512, 12, 1)

    def inputs(t: float) -> dict[str, torch.Tensor]:
        return {"hidden_states": latent, "timestep": torch.tensor([int(t)]), "class_labels": labels}

    print("| policy | calls | speedup | computed | limit | % of limit | step: uncached / computed / cached (ms) "
          "| max error, final step |")
    print("|---|---|---|---|---|---|---|---|")
    for policy in args.policy or DEFAULT:
        for direct in (False, True):
            CompiledExport.direct_calls = direct
            torch._dynamo.reset()
            result = compare(model, inputs, make_policy(policy), 50, "inductor", repeats=args.repeats)
            uncached, cached, decisions = result.uncached_run, result.cached_run, result.decisions
            computed = decisions.count("computed")

            def median_ms(times: list[float], which: str, d: list[str] = decisions) -> float:
                return 1e3 * statistics.median([s for s, x in zip(times, d, strict=True) if x == which] or [0.0])

            speedup, limit = uncached.seconds / cached.seconds, len(decisions) / computed
            error = float((cached.outputs[-1] - uncached.outputs[-1]).abs().max())
            times = cached.step_seconds
            steps = (f"{1e3 * statistics.median(uncached.step_seconds):.2f} / "
                     f"{median_ms(times, 'computed'):.2f} / {median_ms(times, 'cached'):.2f}")
            print(f"| {policy} | {'direct' if direct else 'through dynamo'} | {speedup:.2f}x | {computed}/50 | "
                  f"{limit:.2f}x | {100 * speedup / limit:.1f}% | {steps} | {error:.2e} |", flush=True)
    CompiledExport.direct_calls = True


if __name__ == "__main__":
    main()
