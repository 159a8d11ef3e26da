"""GPU check: uncached vs graphcache generations on CUDA, in every runtime graphcache lowers to.

Needs torch with CUDA; no diffusers (the DiT below is plain torch, adaLN-zero blocks). On the GPU machine:

    pip install --no-deps -e . && python benchmarks/gpu_check.py --out "$OUT"

Sections (each prints its figures; all go to ``--out/gpu_check.json``, rewritten after every section, so a run
stopped by a time limit keeps what it measured; a section that fails records its error and the next one runs):
1. torch.compile(fullgraph=True), Inductor: uncached vs every policy of ``--policies`` via the graphcache
   backend: speedup, % of the schedule's limit, graphs / breaks / recompiles, max |error|, compile seconds,
   and the mean computed / cached step (each step synchronized; the end-to-end run is not).
2. Host syncs: ``torch.cuda.set_sync_debug_mode("warn")`` around compiled cached and computed steps: does
   the in-graph decision (Inductor lowers the cond to ``if pred.item()``) force a device-to-host sync? Then
   each call's host time in a generation that never synchronizes, and the CUDA runtime calls by host time
   (what a cached step waits for, if anything), per policy of ``--sync-policies``.
3. The step-unrolled form (``compile_unrolled``: full-step and cached-step graphs picked by the host) for
   FORA and the per-block forecasts, with CUDA graphs (mode="reduce-overhead") and without; the in-graph FORA
   under Inductor's cudagraphs.
4. AOTInductor: the in-graph ``.pt2`` package vs the uncached model's package.
``--device cpu --small`` runs the same code on CPU with a tiny model (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from timing_lock import exclusive  # benchmarks/: one timed region at a time when two benchmarks share the GPU
from torch import nn

import graphcache
from graphcache.export import compile_unrolled, export_model, load
from graphcache.passes.base import analysis

POLICIES = ["fora", "taylorseer", "foca", "fora{granularity=block}", "taylorseer{lite=true}", "foca{lite=true}",
            "pab{window_low=0,window_high=1000}"]


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
    with exclusive():
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            for t in torch.linspace(999, 0, steps, device=latent.device):
                torch.compiler.cudagraph_mark_step_begin()  # a CUDA-graphed run reuses its output memory:
                outs.append(fn(latent=latent, timestep=t.expand(latent.shape[0])).clone())  # kept as a copy
        sync()
        return time.perf_counter() - start, outs


def max_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b, strict=True))


def step_times(fn, latent: torch.Tensor, steps: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Each call's wall time, the device synchronized around every call (a diagnostic: the end-to-end runs
    do not synchronize per step)."""
    times = []
    with exclusive(), torch.no_grad():
        for t in torch.linspace(999, 0, steps, device=latent.device):
            sync()
            start = time.perf_counter()
            fn(latent=latent, timestep=t.expand(latent.shape[0]))
            sync()
            times.append(time.perf_counter() - start)
    return times


ONE_GRAPH = False  # --one-graph


def mean_ms(values: list[float]) -> float | None:
    return 1e3 * sum(values) / len(values) if values else None


def section_compile(model, latent, steps, results, policies) -> None:  # type: ignore[no-untyped-def]
    from torch._dynamo.utils import counters

    uncached = torch.compile(model, fullgraph=True, dynamic=False)
    start = time.perf_counter()
    generation(uncached, latent, 3)
    compile_s = time.perf_counter() - start
    base, ref = generation(uncached, latent, steps)
    results["uncached_compiled_ms_per_step"] = 1e3 * base / steps
    results["uncached_compile_s"] = compile_s
    print(f"[1] uncached torch.compile: {1e3 * base / steps:.2f} ms/step (compile and 3 steps {compile_s:.0f} s)",
          flush=True)
    for spec in policies:
        try:
            torch._dynamo.reset()
            counters.clear()
            cached = graphcache.optimize(model, spec, backend="inductor")
            cached.cached_step_graph = not ONE_GRAPH
            start = time.perf_counter()
            generation(cached, latent, 3)
            compile_s = time.perf_counter() - start
            torch._dynamo.config.error_on_recompile = True  # a recompile during the timed generation fails here
            graphcache.reset(cached)
            seconds, outs = generation(cached, latent, steps)
            decisions = graphcache.decisions(cached)
            graphcache.reset(cached)
            own = step_times(cached, latent, steps)
            computed = decisions.count("computed")
            limit = steps / computed
            row = {"speedup": base / seconds, "limit": limit, "percent_of_limit": 100 * base / seconds / limit,
                   "graphs": counters["stats"]["unique_graphs"],
                   "graph_breaks": sum(counters["graph_break"].values()), "max_abs_error": max_err(outs, ref),
                   "compile_s": compile_s, "computed": computed,
                   "host_decision": str(analysis(cached.states[0].gm).host_decision),
                   "cached_step_graph": _cached_step_graph(cached),
                   "computed_step_ms": mean_ms([s for s, d in zip(own, decisions, strict=True) if d == "computed"]),
                   "cached_step_ms": mean_ms([s for s, d in zip(own, decisions, strict=True) if d != "computed"])}
            results[f"compile/{spec}"] = row
            print(f"[1] {spec}: {row['speedup']:.2f}x of {limit:.2f}x = {row['percent_of_limit']:.1f}% of the "
                  f"limit, graphs {row['graphs']}, breaks {row['graph_breaks']}, recompiles 0, "
                  f"max |err| {row['max_abs_error']:.2e}, compile {compile_s:.0f} s, steps (synchronized) "
                  f"computed {row['computed_step_ms']:.2f} ms, cached {row['cached_step_ms'] or 0:.2f} ms",
                  flush=True)
        except Exception as err:  # one policy's failure is recorded, the others still run
            results[f"compile/{spec}"] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            print(f"[1] {spec}: FAILED {type(err).__name__}: {err}", flush=True)
        finally:
            torch._dynamo.config.error_on_recompile = False


def _cached_step_graph(cached) -> str:  # type: ignore[no-untyped-def]
    """How many cached steps ran by their own graph (graphcache/cached_step.py), or why none."""
    runner = cached.states[0].cached_step
    if runner is None:
        return "off" if ONE_GRAPH else "not made"
    return f"{runner.runs} steps" + (f" ({runner.why_not})" if runner.why_not else "")


def section_syncs(model, latent, results, policy: str = "fora", steps: int = 7) -> None:  # type: ignore[no-untyped-def]
    """Device-to-host syncs of each step of one generation (``policy``), and the Python lines that made them
    (the warning's location: graphcache's wrapper, dynamo's guards or Inductor's generated code): with
    timesteps as views of one tensor (diffusers' ``t.expand(batch)``) and as a fresh tensor per call."""
    torch._dynamo.reset()
    cached = graphcache.optimize(model, policy, backend="inductor")
    generation(cached, latent, 3)
    results[f"host_decision/{policy}"] = str(analysis(cached.states[0].gm).host_decision)
    print(f"[2] {policy}: {results[f'host_decision/{policy}']}", flush=True)
    for fresh in (False, True) if torch.cuda.is_available() else ():  # (on CPU: the host-time part only)
        _count_syncs(cached, latent, results, policy, steps, fresh)
    _host_waits(cached, latent, results, policy)


def _host_waits(cached, latent, results, policy, steps: int = 12) -> None:  # type: ignore[no-untyped-def]
    """Where the host waits for the device: each call's host time in one generation that never synchronizes
    (a call that returns only when the device catches up shows the device's backlog, not its own launch
    time), and the CUDA runtime calls of those steps by host time (``cudaStreamSynchronize``,
    ``cudaMemcpyAsync`` from pageable memory, ``cudaEventSynchronize``: any of them in a cached step exposes
    it)."""
    from torch.profiler import ProfilerActivity, profile

    graphcache.reset(cached)
    ts = torch.linspace(999, 0, steps, device=latent.device)
    host = []
    sync()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])]
    with torch.no_grad(), profile(activities=activities) as prof:
        for t in ts:
            start = time.perf_counter()
            cached(latent=latent, timestep=t.expand(latent.shape[0]))
            host.append(1e3 * (time.perf_counter() - start))
        sync()
    decisions = graphcache.decisions(cached)
    runtime = sorted(((e.key, e.count, e.self_cpu_time_total / 1e3) for e in prof.key_averages()
                      if e.key.startswith("cuda") and not e.key.startswith("cudaLaunch")), key=lambda r: -r[2])
    results[f"host_waits/{policy}"] = {"host_ms": host, "decisions": decisions, "cuda_runtime": runtime[:8]}
    print(f"[2] host time per call, no sync ({policy}): "
          + ", ".join(f"{d[:4]} {ms:.2f}" for d, ms in zip(decisions, host, strict=False)), flush=True)
    print(f"[2] CUDA runtime calls over {steps} steps ({policy}): "
          + "; ".join(f"{k} x{n} {ms:.2f} ms" for k, n, ms in runtime[:6]), flush=True)


def sync_sections(model, latent, results, policies) -> None:  # type: ignore[no-untyped-def]
    for policy in policies:  # one policy's failure is recorded, the others still run
        try:
            section_syncs(model, latent, results, policy)
        except Exception as err:
            results[f"host_syncs/{policy}"] = {"error": f"{type(err).__name__}: {err}",
                                               "traceback": traceback.format_exc()}
            print(f"[2] {policy}: FAILED {type(err).__name__}: {err}", flush=True)


def _count_syncs(cached, latent, results, policy, steps, fresh) -> None:  # type: ignore[no-untyped-def]
    graphcache.reset(cached)
    counts, sites = [], {}
    ts = torch.linspace(999, 0, steps, device=latent.device)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with torch.no_grad():
            for t in ts:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    timestep = t.expand(latent.shape[0]).clone() if fresh else t.expand(latent.shape[0])
                    cached(latent=latent, timestep=timestep)
                    sync()
                found = [w for w in caught if "synchroniz" in str(w.message)]
                counts.append(len(found))
                for w in found:
                    site = f"{w.filename}:{w.lineno}"
                    sites[site] = sites.get(site, 0) + 1
    finally:
        torch.cuda.set_sync_debug_mode("default")
    decisions = graphcache.decisions(cached)
    kind = "fresh" if fresh else "views"
    results[f"host_syncs/{policy}/{kind}"] = {"per_step": counts, "decisions": decisions, "sites": sites}
    print(f"[2] device-to-host syncs per step ({policy}, timesteps as {kind}, in-graph cond, Inductor): "
          + ", ".join(f"{d[:4]} {c}" for d, c in zip(decisions, counts, strict=False)) + f"; sites {sites}", flush=True)


def section_cudagraphs(model, latent, steps, results, policies=("fora", "taylorseer", "foca")) -> None:  # type: ignore[no-untyped-def]
    """The step-unrolled form (``graphcache.export.compile_unrolled``: a full-step and a cached-step graph per
    schedule slot, picked by the host) with and without CUDA graphs, for ``policies``; and the in-graph
    module under Inductor's cudagraphs. Each run on its own: one failure leaves the others' figures."""
    from torch._dynamo.utils import counters

    mode = "reduce-overhead" if latent.is_cuda else None  # CPU: the same code without CUDA graphs (smoke test)
    torch._dynamo.reset()
    uncached = torch.compile(model, mode=mode, fullgraph=True)
    generation(uncached, latent, 3)
    base, ref = generation(uncached, latent, steps)
    rows: dict = {"uncached_ms_per_step": 1e3 * base / steps}
    results["cudagraphs"] = rows
    print(f"[3] uncached, CUDA graphs: {1e3 * base / steps:.2f} ms/step", flush=True)
    kwargs = {"latent": latent, "timestep": torch.full((latent.shape[0],), 999.0, device=latent.device)}
    # FORA with CUDA graphs first, then every policy without, then the forecasts with
    runs = [(policies[0], mode), *((p, None) for p in policies if mode or p != policies[0])]
    runs += [(p, mode) for p in policies[1:] if mode]
    for policy, run_mode in runs:
        key = f"unrolled/{policy}/{run_mode or 'default'}"
        try:
            torch._dynamo.reset()
            start = time.perf_counter()
            runner = compile_unrolled(model, kwargs, policy, steps=steps, mode=run_mode)
            generation(runner, latent, steps)
            compile_s = time.perf_counter() - start
            runner.reset()
            seconds, outs = generation(runner, latent, steps)
            computed = runner.decisions().count("computed")
            rows[key] = {"speedup": base / seconds, "limit": steps / computed,
                         "percent_of_limit": 100 * base / seconds / (steps / computed),
                         "max_abs_error": max_err(outs, ref), "compile_and_first_generation_s": compile_s}
            print(f"[3] step-unrolled {policy} mode={run_mode}: {base / seconds:.2f}x of {steps / computed:.2f}x = "
                  f"{rows[key]['percent_of_limit']:.1f}%, max |err| {rows[key]['max_abs_error']:.2e}, compile and "
                  f"first generation {compile_s:.0f} s", flush=True)
        except Exception as err:
            rows[key] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            print(f"[3] step-unrolled {policy} mode={run_mode}: FAILED {type(err).__name__}: {err}", flush=True)
    try:
        torch._dynamo.reset()
        counters.clear()
        with torch._inductor.config.patch({"triton.cudagraphs": latent.is_cuda}):
            cached = graphcache.optimize(model, "fora", backend="inductor")
            generation(cached, latent, 3)
            graphcache.reset(cached)
            in_graph, _ = generation(cached, latent, steps)
        rows["in_graph_speedup"] = base / in_graph
        rows["inductor_counters"] = {k: v for k, v in counters["inductor"].items() if "cudagraph" in k}
        print(f"[3] in-graph fora under Inductor's cudagraphs: {base / in_graph:.2f}x "
              f"(counters {rows['inductor_counters']})", flush=True)
    except Exception as err:
        rows["in_graph"] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        print(f"[3] in-graph fora under Inductor's cudagraphs: FAILED {type(err).__name__}: {err}", flush=True)


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
        decisions = runner.decisions()
        computed = decisions.count("computed")
    results["aoti"] = {"uncached_ms_per_step": 1e3 * base / steps, "speedup": base / seconds,
                       "limit": steps / computed, "max_abs_error": max_err(outs, ref), "decisions": decisions}
    print(f"[4] AOTInductor: uncached {1e3 * base / steps:.2f} ms/step, fora package {base / seconds:.2f}x of "
          f"{steps / computed:.2f}x, max |err| {max_err(outs, ref):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny model (smoke test)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--sections", default="1234")
    parser.add_argument("--size", default="1152,12,16,4096,2", metavar="WIDTH,DEPTH,HEADS,TOKENS,BATCH",
                        help="the DiT's size (default 1152,12,16,4096,2: DiT-XL blocks at 1024x1024 latents' tokens)")
    parser.add_argument("--policies", default=";".join(POLICIES), help="policy specs, separated by ';'")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--one-graph", action="store_true",
                        help="section 1: every step through the one graph (no cached-step graph), to compare")
    parser.add_argument("--sync-policies", default="fora;taylorseer{lite=true};pab{window_low=0,window_high=1000}",
                        help="section 2's policies, separated by ';'")
    args = parser.parse_args()
    global ONE_GRAPH
    ONE_GRAPH = args.one_graph
    width, depth, heads, tokens, batch = (64, 4, 2, 16, 2) if args.small else (int(v) for v in args.size.split(","))
    default = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    dtype = getattr(torch, args.dtype) if args.dtype else default
    torch.manual_seed(0)
    model = DiT(width, depth, heads).to(args.device, dtype).eval().requires_grad_(False)
    latent = torch.randn(batch, tokens, 16, device=args.device, dtype=dtype)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    results: dict = {"device": device_name, "torch": torch.__version__, "model": f"DiT width {width} depth {depth}, "
                     f"{tokens} tokens, batch {batch}, {dtype}", "steps": args.steps, "errors": {}}
    print(f"{results['model']} on {device_name}, torch {torch.__version__}, {args.steps} steps", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    sections = {
        "1": lambda: section_compile(model, latent, args.steps, results, args.policies.split(";")),
        "2": lambda: sync_sections(model, latent, results, args.sync_policies.split(";")),
        "3": lambda: section_cudagraphs(model, latent, args.steps, results),
        "4": lambda: section_aoti(model, latent, args.steps, args.device, results),
    }
    for key in args.sections:
        try:
            sections[key]()
        except Exception as err:  # recorded; the next section still runs
            results["errors"][key] = traceback.format_exc()
            print(f"[{key}] FAILED {type(err).__name__}: {err}", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {args.out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
