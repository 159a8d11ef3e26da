"""GPU check: uncached vs graphcache generations on CUDA, in every runtime graphcache lowers to.

Needs torch with CUDA; no diffusers (the DiT below is plain torch, adaLN-zero blocks). On the GPU machine:

    pip install --no-deps -e . && python benchmarks/gpu_check.py --out "$OUT"

Sections (each prints its figures; all go to ``--out/gpu_check.json``):
1. torch.compile(fullgraph=True), Inductor: uncached vs FORA N=3 and TaylorSeer lite (N=4, order 1) via the
   graphcache backend: speedup, % of the schedule's limit, graphs / breaks / recompiles, max |error|.
2. Host syncs: ``torch.cuda.set_sync_debug_mode("warn")`` around compiled cached and computed steps: does
   the in-graph decision (Inductor lowers the cond to ``if pred.item()``) force a device-to-host sync?
3. CUDA graphs: Inductor's cudagraph mode on the in-graph model (expected: skipped, control flow), and the
   step-unrolled form (full-step and cached-step graphs compiled with mode="reduce-overhead").
4. AOTInductor: the in-graph ``.pt2`` package vs the uncached model's package.
``--device cpu --small`` runs the same code on CPU with a tiny model (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import graphcache
from graphcache.export import export_model, load
from graphcache.export.functional import functionalize
from graphcache.export.unroll import specialize
from graphcache.exported import optimize_exported
from graphcache.passes.dense_cond_operands import DenseCondOperands
from graphcache.policies import make_policy

POLICIES = ["fora", "taylorseer{interval=4,order=1,lite=true,warmup=1}"]


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.mod = nn.Linear(width, 6 * width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, b1, g1, s2, b2, g2 = self.mod(F.silu(c)).unsqueeze(1).chunk(6, dim=-1)
        h = F.layer_norm(x, x.shape[-1:]) * (1 + s1) + b1
        q, k, v = self.qkv(h).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        x = x + g1 * self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
        h = F.layer_norm(x, x.shape[-1:]) * (1 + s2) + b2
        return x + g2 * self.down(F.gelu(self.up(h)))


class DiT(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, channels: int = 16) -> None:
        super().__init__()
        self.width = width
        self.embed = nn.Linear(channels, width)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList([Block(width, heads) for _ in range(depth)])
        self.head = nn.Linear(width, channels)

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        half = self.width // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=latent.device, dtype=torch.float32) / half)
        angles = timestep.float()[:, None] * freqs[None]
        c = self.time_mlp(torch.cat([angles.sin(), angles.cos()], dim=-1).to(latent.dtype))
        x = self.embed(latent)
        for block in self.blocks:
            x = block(x, c)
        return self.head(F.layer_norm(x, x.shape[-1:]))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def generation(fn, latent: torch.Tensor, steps: int) -> tuple[float, list[torch.Tensor]]:  # type: ignore[no-untyped-def]
    outs = []
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        for t in torch.linspace(999, 0, steps, device=latent.device):
            outs.append(fn(latent=latent, timestep=t.expand(latent.shape[0])))
    sync()
    return time.perf_counter() - start, outs


def max_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b, strict=True))


def section_compile(model, latent, steps, results) -> None:  # type: ignore[no-untyped-def]
    from torch._dynamo.utils import counters

    uncached = torch.compile(model, fullgraph=True, dynamic=False)
    generation(uncached, latent, 3)
    base, ref = generation(uncached, latent, steps)
    results["uncached_compiled_ms_per_step"] = 1e3 * base / steps
    print(f"[1] uncached torch.compile: {1e3 * base / steps:.2f} ms/step")
    for spec in POLICIES:
        torch._dynamo.reset()
        counters.clear()
        cached = graphcache.optimize(model, spec, backend="inductor")
        generation(cached, latent, 3)
        torch._dynamo.config.error_on_recompile = True  # a recompile during the timed generation fails here
        graphcache.reset(cached)
        seconds, outs = generation(cached, latent, steps)
        computed = graphcache.decisions(cached).count("computed")
        limit = steps / computed
        row = {"speedup": base / seconds, "limit": limit, "percent_of_limit": 100 * base / seconds / limit,
               "graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values()),
               "max_abs_error": max_err(outs, ref)}
        results[f"compile/{spec}"] = row
        print(f"[1] {spec}: {row['speedup']:.2f}x of {limit:.2f}x = {row['percent_of_limit']:.1f}% of the limit, "
              f"graphs {row['graphs']}, breaks {row['graph_breaks']}, recompiles 0, "
              f"max |err| {row['max_abs_error']:.2e}")
        torch._dynamo.config.error_on_recompile = False


def section_syncs(model, latent, results) -> None:  # type: ignore[no-untyped-def]
    if not torch.cuda.is_available():
        return
    torch._dynamo.reset()
    cached = graphcache.optimize(model, "fora", backend="inductor")
    generation(cached, latent, 3)
    graphcache.reset(cached)
    counts = []
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with torch.no_grad():
            for t in (999.0, 900.0):  # one computed step, one cached step
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    cached(latent=latent, timestep=torch.full((latent.shape[0],), t, device=latent.device))
                    sync()
                counts.append(sum("synchroniz" in str(w.message) for w in caught))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    results["host_syncs_per_step"] = {"computed": counts[0], "cached": counts[1]}
    print(f"[2] device-to-host syncs per step (in-graph cond, Inductor): computed {counts[0]}, cached {counts[1]}")


def section_cudagraphs(model, latent, steps, results) -> None:  # type: ignore[no-untyped-def]
    from torch._dynamo.utils import counters

    mode = "reduce-overhead" if latent.is_cuda else None  # CPU: the same code without CUDA graphs (smoke test)
    torch._dynamo.reset()
    counters.clear()
    uncached = torch.compile(model, mode=mode, fullgraph=True)
    generation(uncached, latent, 3)
    base, ref = generation(uncached, latent, steps)
    with torch._inductor.config.patch({"triton.cudagraphs": latent.is_cuda}):
        cached = graphcache.optimize(model, "fora", backend="inductor")
        generation(cached, latent, 3)
        graphcache.reset(cached)
        in_graph, _ = generation(cached, latent, steps)
    skips = {k: v for k, v in counters["inductor"].items() if "cudagraph" in k}
    # the step-unrolled form: two plain graphs, each CUDA-graphed
    config = make_policy("fora")
    kwargs = {"latent": latent, "timestep": torch.full((latent.shape[0],), 999.0, device=latent.device)}
    fg = functionalize(optimize_exported(model, kwargs, config, lowering=(DenseCondOperands(),)), kwargs)
    graphs = {c: specialize(fg, c) for c in (True, False)}
    compiled = {c: torch.compile(g.module, mode=mode, fullgraph=True) for c, g in graphs.items()}
    schedule = config.expected(steps)

    def unrolled() -> tuple[float, list[torch.Tensor]]:
        state = {s.name: s.initial(latent.device) for s in fg.state}
        outs = []
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            for compute, t in zip(schedule, torch.linspace(999, 0, steps, device=latent.device), strict=True):
                g = graphs[compute]
                res = compiled[compute](latent, t.expand(latent.shape[0]), *[state[s.name] for s in fg.state])
                outs.append(res[0].clone())
                state.update({w: v.clone() for w, v in zip(g.writes, res[1:], strict=True)})
        sync()
        return time.perf_counter() - start, outs

    unrolled()
    seconds, outs = unrolled()
    computed = sum(schedule)
    results["cudagraphs"] = {"uncached_ms_per_step": 1e3 * base / steps, "in_graph_speedup": base / in_graph,
                             "unrolled_speedup": base / seconds, "limit": steps / computed,
                             "unrolled_max_abs_error": max_err(outs, ref), "inductor_counters": skips}
    print(f"[3] CUDA graphs: uncached {1e3 * base / steps:.2f} ms/step; in-graph cond {base / in_graph:.2f}x "
          f"(inductor counters {skips}); step-unrolled {base / seconds:.2f}x of {steps / computed:.2f}x")


def section_aoti(model, latent, steps, device, results) -> None:  # type: ignore[no-untyped-def]
    kwargs = {"latent": latent, "timestep": torch.full((latent.shape[0],), 999.0, device=latent.device)}
    with tempfile.TemporaryDirectory() as tmp:
        plain = torch._inductor.aoti_load_package(torch._inductor.aoti_compile_and_package(
            torch.export.export(model, (), kwargs), package_path=f"{tmp}/plain.pt2"))
        generation(plain, latent, 2)
        base, ref = generation(plain, latent, steps)
        export_model(model, kwargs, Path(tmp) / "fora", "fora", "aoti")
        runner = load(Path(tmp) / "fora", device=device)
        generation(runner, latent, 2)
        runner.reset()
        seconds, outs = generation(runner, latent, steps)
        computed = runner.decisions().count("computed")
    results["aoti"] = {"uncached_ms_per_step": 1e3 * base / steps, "speedup": base / seconds,
                       "limit": steps / computed, "max_abs_error": max_err(outs, ref)}
    print(f"[4] AOTInductor: uncached {1e3 * base / steps:.2f} ms/step, fora package {base / seconds:.2f}x of "
          f"{steps / computed:.2f}x, max |err| {max_err(outs, ref):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny model (smoke test)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--sections", default="1234")
    args = parser.parse_args()
    width, depth, heads, tokens = (64, 4, 2, 16) if args.small else (1152, 28, 16, 1024)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    model = DiT(width, depth, heads).to(args.device, dtype).eval().requires_grad_(False)
    latent = torch.randn(2, tokens, 16, device=args.device, dtype=dtype)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    results: dict = {"device": device_name, "torch": torch.__version__, "model": f"DiT width {width} depth {depth}, "
                     f"{tokens} tokens, batch 2, {dtype}", "steps": args.steps}
    print(f"{results['model']} on {device_name}, torch {torch.__version__}, {args.steps} steps")
    if "1" in args.sections:
        section_compile(model, latent, args.steps, results)
    if "2" in args.sections:
        section_syncs(model, latent, results)
    if "3" in args.sections:
        section_cudagraphs(model, latent, args.steps, results)
    if "4" in args.sections:
        section_aoti(model, latent, args.steps, args.device, results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {args.out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
