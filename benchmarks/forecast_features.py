"""Why forecasting helps late and hurts early on the reference model: feature-level forecast errors.

Runs the uncached reference pipeline once, records the stack residual (last block's output minus the first
block's input) at every step, and replays a static schedule (warm-up, then every `interval`-th step) on it:
at each cached step, the relative L1 error of reuse, first- and second-order TaylorSeer forecasts against
the true residual, averaged before and after step `--split`.

    python benchmarks/forecast_features.py [--samples 20] [--warmup 3] [--interval 4] [--split 17]
"""

from __future__ import annotations

import argparse

import torch

from graphcache.reference import load_pipeline


def residual_trajectory(samples: int, steps: int, guidance: float) -> torch.Tensor:
    pipe = load_pipeline()
    blocks = pipe.transformer.transformer_blocks
    entering: dict[str, torch.Tensor] = {}
    residuals: list[torch.Tensor] = []
    blocks[0].register_forward_pre_hook(
        lambda _m, args, kwargs: entering.__setitem__("in", args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True)
    blocks[-1].register_forward_hook(lambda _m, _a, out: residuals.append((out - entering["in"]).double()))
    with torch.no_grad():
        pipe(class_labels=[i % 10 for i in range(samples)], num_inference_steps=steps, guidance_scale=guidance,
             generator=torch.Generator().manual_seed(0), output_type="pt", progress=False)
    return torch.stack(residuals)


def forecast_errors(r: torch.Tensor, computed: list[int]) -> dict[str, list[tuple[int, float]]]:
    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().mean() / b.abs().mean())

    errors: dict[str, list[tuple[int, float]]] = {"reuse": [], "taylor order 1": [], "taylor order 2": []}
    seen: list[int] = []
    for i in range(len(r)):
        if i in computed:
            seen.append(i)
            continue
        a, b, c = seen[-1], seen[-2], seen[-3]
        k = i - a
        d1, d1_before = (r[a] - r[b]) / (a - b), (r[b] - r[c]) / (b - c)
        d2 = (d1 - d1_before) / (a - b)  # TaylorSeer's differences (last gap only)
        errors["reuse"].append((i, rel(r[a], r[i])))
        errors["taylor order 1"].append((i, rel(r[a] + k * d1, r[i])))
        errors["taylor order 2"].append((i, rel(r[a] + k * d1 + k * k / 2 * d2, r[i])))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--interval", type=int, default=4)
    parser.add_argument("--split", type=int, default=17)
    args = parser.parse_args()
    r = residual_trajectory(args.samples, args.steps, args.guidance)
    computed = list(range(args.warmup)) + list(range(args.warmup, args.steps, args.interval))
    print(f"{args.samples} digits, {args.steps} steps, computed {len(computed)}: warm-up {args.warmup}, "
          f"then every {args.interval}; mean relative L1 error of the stack residual at cached steps")
    print(f"{'forecast':16s} {'before ' + str(args.split):>12s} {'from ' + str(args.split):>12s} {'all':>8s}")
    for name, rows in forecast_errors(r, computed).items():
        early = [e for i, e in rows if i < args.split]
        late = [e for i, e in rows if i >= args.split]
        mean = lambda xs: sum(xs) / max(1, len(xs))  # noqa: E731
        print(f"{name:16s} {mean(early):12.4f} {mean(late):12.4f} {mean([e for _, e in rows]):8.4f}")


if __name__ == "__main__":
    main()
