"""Cached schedules exported to ONNX and run by ONNX Runtime, against the uncached model in ONNX Runtime.

Same DiT as ``dit_cpu.py`` (hidden 512, 12 blocks, 256 tokens). For each policy it exports the
in-graph form (one model with an ``If``) and, for static policies, the step-unrolled form (full + cached
graphs), runs ``--steps``-step generations with the graphcache runner (IO binding, state in OrtValues), and
prints the speedup over the plain model exported to ONNX and run the same way, next to the speedup torch
gets for the same schedule (both torch models compiled with Inductor) and the ratio of the two (goal:
ORT speedup >= 0.9x the torch speedup). Quality: relative L2 error of each step's output vs uncached.

    python benchmarks/onnx_runtime.py                        # fora N=3, 50 steps
    python benchmarks/onnx_runtime.py --policy 'taylorseer{interval=4,order=1,lite=true}'
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from dit_cpu import build

import graphcache
from graphcache.export import export_model, export_uncached, load
from graphcache.policies import make_policy


def generation(fn, latent: torch.Tensor, labels: torch.Tensor, steps: int) -> tuple[float, list[torch.Tensor]]:
    outs = []
    start = time.perf_counter()
    with torch.no_grad():
        for t in torch.linspace(999, 0, steps).long():
            out = fn(hidden_states=latent, timestep=t.expand(latent.shape[0]), class_labels=labels)
            outs.append(out.sample if hasattr(out, "sample") else out)
    return time.perf_counter() - start, outs


def best_of(repeats: int, run):  # type: ignore[no-untyped-def]
    return min((run() for _ in range(repeats)), key=lambda r: r[0])


def rel_error(outs: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    return max(float((o - r).norm() / r.norm()) for o, r in zip(outs, ref, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="fora")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2, help="timed generations per runtime (best kept)")
    parser.add_argument("--torch-backend", choices=["inductor", "eager"], default="inductor")
    args = parser.parse_args()
    config = make_policy(args.policy)
    model, latent, labels = build(args.hidden, args.layers, 1)
    kwargs = {"hidden_states": latent, "timestep": torch.tensor([999]), "class_labels": labels}
    print(f"DiT hidden {args.hidden}, {args.layers} blocks, 256 tokens, {args.steps} steps, {config.describe()}; "
          f"onnxruntime CPU, torch {torch.__version__} ({args.torch_backend}), {torch.get_num_threads()} threads")
    computed = sum(config.expected(args.steps)) if config.static else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export_uncached(model, kwargs, Path(tmp) / "uncached")
        plain = load(Path(tmp) / "uncached")
        generation(plain, latent, labels, 2)
        base_s, base_out = best_of(args.repeats, lambda: generation(plain, latent, labels, args.steps))
        forms = ["in-graph", "unrolled"] if config.static else ["in-graph"]
        for form in forms:
            directory = Path(tmp) / form
            export_model(model, kwargs, directory, config, "onnx", form, steps=args.steps)
            runner = load(directory)
            generation(runner, latent, labels, 2)
            seconds, outs = best_of(args.repeats, lambda r=runner: (r.reset(), generation(r, latent, labels,
                                                                                          args.steps))[1])
            computed = runner.decisions().count("computed")
            rows.append((f"onnxruntime {form}", base_s / seconds, rel_error(outs, base_out)))
    torch_speedup = torch_ratio(model, latent, labels, config, args)
    limit = args.steps / computed if computed else float("nan")
    print(f"uncached onnxruntime: {base_s:.2f} s ({1e3 * base_s / args.steps:.1f} ms/step); "
          f"schedule: {computed}/{args.steps} computed, limit {limit:.2f}x")
    print(f"{'runtime':<24}{'speedup':>9}{'% of limit':>12}{'vs torch':>10}{'max rel. error':>16}")
    for name, speedup, err in rows:
        print(f"{name:<24}{speedup:>8.2f}x{100 * speedup / limit:>11.1f}%{speedup / torch_speedup:>9.2f}x{err:>16.2e}")
    print(f"{'torch ' + args.torch_backend:<24}{torch_speedup:>8.2f}x{100 * torch_speedup / limit:>11.1f}%")


def torch_ratio(model: torch.nn.Module, latent: torch.Tensor, labels: torch.Tensor, config, args) -> float:  # type: ignore[no-untyped-def]
    compile_ = (lambda m: torch.compile(m, fullgraph=True, dynamic=False)) if args.torch_backend == "inductor" else (
        lambda m: m)
    uncached = compile_(model)
    cached = graphcache.optimize(model, config, backend=args.torch_backend)
    for fn in (uncached, cached):
        generation(fn, latent, labels, 4)
    graphcache.reset(cached)
    base = best_of(args.repeats, lambda: generation(uncached, latent, labels, args.steps))[0]
    fast = best_of(args.repeats, lambda: (graphcache.reset(cached), generation(cached, latent, labels,
                                                                                args.steps))[1])[0]
    return base / fast


if __name__ == "__main__":
    main()
