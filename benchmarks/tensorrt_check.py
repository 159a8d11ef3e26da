"""TensorRT check: build engines from graphcache's ONNX exports and run whole generations on the GPU.

Needs the ``tensorrt`` Python package and a CUDA GPU (``pip install 'graphcache[tensorrt]'`` where NVIDIA's
wheels are reachable). Not run where graphcache is developed: no TensorRT there. Steps:

1. The uncached model -> ONNX -> engine: the baseline, timed over ``--steps`` steps.
2. FORA N=3, step-unrolled: ``full.engine`` + ``cached.engine`` + plan; state in persistent CUDA buffers.
3. FBCache (threshold 0.2), in-graph: one engine whose ``If`` becomes a TensorRT conditional.
For 2 and 3: polygraphy compares each engine with ONNX Runtime on the inputs and state of a real step;
the whole generation is compared with the torch rewritten graph (decisions identical, max |diff|); the
speedup vs the uncached engine, next to the schedule's limit.

    python benchmarks/tensorrt_check.py --out reports/tensorrt
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from gpu_check import DiT

from graphcache.export import export_model, export_uncached, load
from graphcache.export.check import _feeds

CASES = [("fora", "unrolled", {}), ("fbcache", "in-graph", {"threshold": 0.2})]


def generation(runner, latent: torch.Tensor, steps: int) -> tuple[float, list[torch.Tensor]]:  # type: ignore[no-untyped-def]
    outs = []
    torch.cuda.synchronize()
    start = time.perf_counter()
    for t in torch.linspace(999, 0, steps):
        outs.append(runner(latent=latent, timestep=t.expand(latent.shape[0])))
    torch.cuda.synchronize()
    return time.perf_counter() - start, outs


def polygraphy_engine_vs_onnxruntime(engine: Path, onnx_path: Path, feed: dict) -> bool:
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator
    from polygraphy.comparator.compare import SimpleCompareFunc

    ort_runner = OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["CPUExecutionProvider"]))
    with ort_runner:
        wanted = set(ort_runner.get_input_metadata().keys())
    data = [OrderedDict((k, v.numpy()) for k, v in feed.items() if k in wanted)]
    results = Comparator.run([TrtRunner(EngineFromBytes(BytesFromPath(str(engine)))), ort_runner], data_loader=data)
    return bool(Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=1e-3, rtol=1e-3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--width", type=int, default=1152)
    parser.add_argument("--depth", type=int, default=28)
    parser.add_argument("--out", type=Path, default=Path("reports/tensorrt"))
    args = parser.parse_args()
    if importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available():
        print("tensorrt_check needs the tensorrt package and a CUDA GPU: pip install 'graphcache[tensorrt]'")
        sys.exit(2)
    torch.manual_seed(0)
    model = DiT(args.width, args.depth, 16).eval().requires_grad_(False)
    latent = torch.randn(2, 1024, 16)
    kwargs = {"latent": latent, "timestep": torch.full((2,), 999.0)}
    results: dict = {"device": torch.cuda.get_device_name(), "steps": args.steps}
    export_uncached(model, kwargs, args.out / "uncached", "tensorrt")
    base_runner = load(args.out / "uncached")
    generation(base_runner, latent.cuda(), 2)
    base, _ = generation(base_runner, latent.cuda(), args.steps)
    print(f"uncached engine: {1e3 * base / args.steps:.2f} ms/step")
    timesteps = torch.linspace(999, 0, args.steps).tolist()
    for policy, form, options in CASES:
        directory = args.out / policy
        exported = export_model(model, kwargs, directory, policy, "tensorrt", form, steps=args.steps, **options)
        inputs = lambda t: {"latent": latent, "timestep": torch.full((2,), t)}  # noqa: E731
        engines_ok = [polygraphy_engine_vs_onnxruntime(directory / exported.plan.graphs[name].file,
                                                       directory / f"{name}.onnx", feed)
                      for name, _, feed in _feeds(exported, inputs, timesteps)]
        runner = load(directory)
        exported.cached.state.reset()
        worst, same = 0.0, True
        with torch.no_grad():
            for t in timesteps:
                want = exported.cached(**inputs(t))
                want = want if isinstance(want, torch.Tensor) else want[0]
                got = runner(**{k: v.cuda() for k, v in inputs(t).items()})
                worst = max(worst, float((got.cpu() - want).abs().max()))
        same = runner.decisions() == exported.cached.state.decisions()
        runner.reset()
        generation(runner, latent.cuda(), args.steps)
        runner.reset()
        seconds, _ = generation(runner, latent.cuda(), args.steps)
        computed = runner.decisions().count("computed")
        row = {"form": form, "speedup": base / seconds, "limit": args.steps / computed, "engines_match_ort": engines_ok,
               "decisions_identical": same, "max_abs_vs_torch": worst}
        results[policy] = row
        print(f"{policy} ({form}): {row['speedup']:.2f}x of {row['limit']:.2f}x, polygraphy {engines_ok}, "
              f"decisions identical {same}, max |diff| vs torch {worst:.2e}")
    (args.out / "tensorrt_check.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
