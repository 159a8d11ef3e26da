"""FORA on a DiT big enough that blocks dominate: end-to-end ratio vs the uncached model, same run.

Both models run compiled the same way (``torch.compile(fullgraph=True)``, Inductor); each first runs one
untimed 4-step generation (compilation, warm-up), then ``--repeats`` timed generations of ``--steps`` steps,
alternating uncached / graphcache. Prints the speedup, the schedule's limit (steps / computed steps),
the percentage of it reached, the mean full and cached step times, and the time of prologue + epilogue
alone (the same DiT with its blocks replaced by identities, compiled the same way): a cached step can
never be cheaper than that.

    python benchmarks/fora_dit_cpu.py                   # hidden 512, 12 blocks, 256 tokens, 50 steps, N=3
    python benchmarks/fora_dit_cpu.py --granularity block --interval 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from diffusers import DiTTransformer2DModel

import graphcache


def build(hidden: int, layers: int, batch: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    heads = 8
    model = DiTTransformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=layers, num_attention_heads=heads,
        attention_head_dim=hidden // heads, num_embeds_ada_norm=10, norm_num_groups=1,
    ).eval().requires_grad_(False)
    latent = torch.randn(batch, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(batch) % 10
    return model, latent, labels


def without_blocks(model: torch.nn.Module) -> torch.nn.Module:
    """The same model with every block an identity: what remains is prologue + epilogue."""
    bare = copy.deepcopy(model)
    for block in bare.transformer_blocks:
        block.forward = lambda hidden_states, *args, **kwargs: hidden_states  # type: ignore[method-assign]
    return bare


def generate(fn, latent, labels, steps: int) -> tuple[float, list[float], torch.Tensor]:
    step_times, out = [], latent
    start = time.perf_counter()
    with torch.no_grad():
        for t in torch.linspace(999, 0, steps).long():
            s = time.perf_counter()
            out = fn(latent, timestep=t.expand(latent.shape[0]), class_labels=labels).sample
            step_times.append(time.perf_counter() - s)
    return time.perf_counter() - start, step_times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--interval", type=int, default=3)
    parser.add_argument("--granularity", choices=["stack", "block"], default="stack")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backend", choices=["inductor", "eager"], default="inductor")
    args = parser.parse_args()

    model, latent, labels = build(args.hidden, args.layers, args.batch)
    tokens = (32 // 2) ** 2
    print(f"DiT hidden {args.hidden}, {args.layers} blocks, {tokens} tokens, batch {args.batch}, {args.steps} steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, backend {args.backend}")
    compile_ = (lambda m: torch.compile(m, fullgraph=True, dynamic=False)) if args.backend == "inductor" else (
        lambda m: m)
    uncached = compile_(model)
    bare = compile_(without_blocks(model))
    cached = graphcache.optimize(model, "fora", backend=args.backend, interval=args.interval,
                                 granularity=args.granularity)
    t0 = time.perf_counter()
    for fn in (uncached, cached, bare):  # compiles: a short generation runs every branch of the graph
        generate(fn, latent, labels, 4)
    print(f"compile + warm-up: {time.perf_counter() - t0:.1f} s")

    results: dict[str, list[float]] = {"uncached": [], "graphcache": [], "bare": []}
    steps_of: dict[str, list[float]] = {"uncached": [], "graphcache": [], "bare": []}
    for _ in range(args.repeats):
        for name, fn in (("uncached", uncached), ("graphcache", cached), ("bare", bare)):
            total, step_times, out = generate(fn, latent, labels, args.steps)
            results[name].append(total)
            steps_of[name] = step_times
            if name == "uncached":
                reference = out
            if name == "graphcache":
                error = float((out - reference).abs().max())

    decisions = graphcache.decisions(cached)
    computed = decisions.count("computed")
    limit = len(decisions) / computed
    t_un, t_gc = statistics.median(results["uncached"]), statistics.median(results["graphcache"])
    speedup = t_un / t_gc
    full = [s for s, d in zip(steps_of["graphcache"], decisions, strict=True) if d == "computed"]
    reuse = [s for s, d in zip(steps_of["graphcache"], decisions, strict=True) if d == "cached"]
    bare_step = statistics.median(steps_of["bare"])
    print(f"schedule: {''.join('C' if d == 'computed' else '.' for d in decisions)}")
    print(f"uncached   {t_un:.3f} s/generation ({1e3 * t_un / args.steps:.2f} ms/step, median of {args.repeats})")
    print(f"graphcache {t_gc:.3f} s/generation ({computed}/{len(decisions)} steps computed)")
    print(f"speedup    {speedup:.2f}x   schedule limit {limit:.2f}x   -> {100 * speedup / limit:.1f}% of the limit")
    print(f"step time  computed {1e3 * statistics.median(full):.2f} ms, cached {1e3 * statistics.median(reuse):.2f} ms,"
          f" prologue+epilogue alone {1e3 * bare_step:.2f} ms")
    print(f"final-step max |error| vs uncached: {error:.3e}; cache memory {graphcache.cache_bytes(cached):,} bytes")


if __name__ == "__main__":
    main()
