"""The ways pipelines call a denoiser, across the zoo: each stream of calls gets what it would get alone.

For every zoo class (or ``--only`` some), under a policy of the matrix's tables (``--policy``, FORA by
default), run op by op:
- CFG as two calls per step, in diffusers' cache contexts and without them (then the k-th call at one
  timestep is stream k). The cond stream takes the zoo's inputs, the uncond stream the same with every
  floating-point input of 2+ dimensions but the timestep scaled by 0.8 (other conditioning, other latent);
- Heun's order: t0, t1, t1, t2, t2, ...; the second call at a timestep is the second stage's stream (inputs
  scaled by 1.1);
- img2img right after, without ``reset()``: a generation that starts at a lower timestep is a new one.
Each stream's outputs must equal, bit for bit, the same policy run on that stream alone (a second optimized
model, reset between streams), and in contexts each stream's decisions the alone run's.

    python -m tests.zoo.streams [--policy fora] [--only Name,Name]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

import graphcache

from .matrix import OK, REFUSED, Case, _equal, outcome, policy_keys, policy_spec, step_inputs
from .registry import ZOO, ZooModel, output_tensor

Inputs = Callable[[int], dict[str, Any]]  # a stream's inputs at step index k
TIME_NAMES = ("timestep", "sigma")  # arguments the calls of one step share


def _scaled(entry: ZooModel, ts: Sequence[torch.Tensor], factor: float) -> Inputs:
    """Step ``k``'s inputs with every floating-point input of 2+ dimensions scaled by ``factor``, except the
    timestep's (a per-frame or per-token ``timestep``: the calls of one step share it, as a sampler's do)."""
    def move(value: Any) -> Any:
        moves = isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() >= 2
        return value * factor if moves else value

    def inputs(k: int) -> dict[str, Any]:
        return {name: value if any(h in name for h in TIME_NAMES) else pytree.tree_map(move, value)
                for name, value in step_inputs(entry, k, ts[k]).items()}

    return inputs


def _run(fast: Any, calls: Sequence[tuple[str | None, dict[str, Any]]]) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for context, kwargs in calls:
            if context is None:
                outs.append(output_tensor(fast(**kwargs)).clone())
            else:
                with fast.cache_context(context):
                    outs.append(output_tensor(fast(**kwargs)).clone())
    return outs


def _alone(fast: Any, stream: Inputs, steps: Sequence[int]) -> tuple[list[torch.Tensor], list[str]]:
    fast.reset()
    outs = _run(fast, [(None, stream(k)) for k in steps])
    return outs, graphcache.decisions(fast)


def _differs(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor], what: str) -> str:
    if len(got) != len(want):
        return f"{what}: {len(got)} calls vs {len(want)} alone"
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        if not _equal(a, b):
            diff = float((a.double() - b.double()).abs().max()) if a.shape == b.shape else -1.0
            return f"{what}: call {k} differs from the stream alone by {diff:.3g}"
    return ""


def check_streams(entry: ZooModel, spec: str, steps: int = 7) -> str:
    """"" when every stream equals it alone; otherwise what differs first. Raises what ``optimize`` raises."""
    ts = entry.timesteps(steps)
    cond, uncond, stage2 = (_scaled(entry, ts, f) for f in (1.0, 0.8, 1.1))
    n = range(steps)
    reference = graphcache.optimize(entry.build(), spec, backend="eager")
    alone_c, decisions_c = _alone(reference, cond, n)
    alone_u, decisions_u = _alone(reference, uncond, n)
    heun_2, _ = _alone(reference, stage2, n[1:])
    img2img, _ = _alone(reference, uncond, n[2:])
    if "cached" not in decisions_c:
        return f"nothing cached alone: {decisions_c}"
    fast = graphcache.optimize(entry.build(), spec, backend="eager")
    for contexts in (True, False):
        fast.reset()
        names = ("cond", "uncond") if contexts else (None, None)
        outs = _run(fast, [(name, stream(k)) for k in n for name, stream in zip(names, (cond, uncond), strict=True)])
        what = "two calls in contexts" if contexts else "two calls without contexts"
        found = _differs(outs[0::2], alone_c, f"{what}, cond") or _differs(outs[1::2], alone_u, f"{what}, uncond")
        if found:
            return found
        for name, decisions in (("cond", decisions_c), ("uncond", decisions_u)):
            if contexts:
                with fast.cache_context(name):
                    if graphcache.decisions(fast) != decisions:
                        return f"{what}: {name}'s decisions {graphcache.decisions(fast)} vs {decisions} alone"
    fast.reset()
    outs = _run(fast, [(None, cond(0))] + [(None, s(k)) for k in n[1:] for s in (cond, stage2)])
    found = _differs([outs[0], *outs[1::2]], alone_c, "Heun, first stage") or \
        _differs(outs[2::2], heun_2, "Heun, second stage")
    return found or _differs(_run(fast, [(None, uncond(k)) for k in n[2:]]), img2img, "img2img after Heun")


def run_streams(entry: ZooModel, policy: str) -> Case:
    case = Case(entry.name, policy, OK)
    with outcome(case):
        found = check_streams(entry, policy_spec(policy, entry))
        if found:
            case.status, case.detail = "wrong", found
    return case


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="fora")
    parser.add_argument("--only", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    (policy,) = policy_keys(args.policy)
    names = [n for n in args.only.split(",") if n] or sorted(ZOO)
    counts: dict[str, int] = {}
    for name in names:
        case = run_streams(ZOO[name], policy)
        counts[case.status] = counts.get(case.status, 0) + 1
        print(f"{name:40s} {policy:12s} {case.status:8s} {case.seconds:6.1f}s {case.detail[:200]}", flush=True)
    print("streams: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f" of {len(names)}")
    return 0 if all(k in (OK, REFUSED) for k in counts) else 1


if __name__ == "__main__":
    sys.exit(main())
