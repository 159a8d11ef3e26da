"""Policies on a DiT big enough that blocks dominate: % of the schedule's limit, measured in one run.

For each ``--policy`` the model is optimized (Inductor, one graph); the uncached model is compiled the same way
(``torch.compile(fullgraph=True)``). After one untimed 4-step generation each (compilation, every branch), each
of ``--repeats`` rounds times, for every policy, one generation of ``--steps`` steps of the uncached model right
before one of the policy: the speedup is the median over the rounds of those adjacent pairs' ratios (this shared
machine's speed drifts by 10-20% over minutes; a pair shares the drift). Printed per policy: that speedup, the
schedule's limit (calls / computed calls), the percentage of it reached, the same percentage from the
generation's own step times (computed steps x the median computed step over the time its steps took: free of
drift between runs), the median computed and cached step times (of its fastest generation), the bytes a cached
step reads and what reading them takes at this machine's read bandwidth (measured in the run, warm and cold:
right after reading 1 GiB of other data, as a cached step finds its bytes after a computed step), the % of
the limit a cached step of exactly prologue + epilogue + that read time would reach ("at the read bound": what
the method's own reads allow on this machine; the cold figure is what a cached step after a computed one
meets), the final-step error vs uncached, and what the lowering changed in the cached step (state written in
place, linears narrowed, few-row linears as reductions); and once, the time of prologue + epilogue alone (the
same DiT with its blocks replaced by identities, compiled the same way): no cached step can be cheaper. A
cached step of attention reuse (PAB) still runs everything but the attention, so its limit is Amdahl's with
the measured step of the DiT without self-attention: steps / (computed + cached x that step / the uncached
step).

    python benchmarks/dit_cpu.py                                   # hidden 512, 12 blocks, 256 tokens, 50 steps
    python benchmarks/dit_cpu.py --policy fora --policy 'fora{granularity=block}' --policy taylorseer
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time

import torch
from diffusers import DiTTransformer2DModel

import graphcache
from graphcache.rewrite import describe_lowering, lowering_fields

DEFAULT_POLICIES = ["fora", "fora{granularity=block}", "taylorseer", "taylorseer{lite=true}", "foca",
                    "foca{lite=true}", "pab{window_low=0,window_high=1000}"]


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


def read_bandwidth(mib: int = 120, cold: bool = False) -> float:
    """GiB/s of the fastest of 10 ``sum``s over ``mib`` MiB of float32: a step that must read N bytes cannot be
    faster than N / that. ``cold``: each ``sum`` right after reading 1 GiB of other data, as a cached step finds
    its bytes after a computed step has streamed the model's weights through the caches (on this project's
    CPU about half the warm figure: the shared last-level cache does not keep them)."""
    x = torch.randn(mib * 1024 * 1024 // 4)
    other = torch.randn(2**28) if cold else None
    best = float("inf")
    for _ in range(10):
        if other is not None:
            other.sum()
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return mib / 1024 / best


def without_blocks(model: torch.nn.Module) -> torch.nn.Module:
    """The same model with every block an identity: what remains is prologue + epilogue."""
    bare = copy.deepcopy(model)
    for block in bare.transformer_blocks:
        block.forward = lambda hidden_states, *args, **kwargs: hidden_states  # type: ignore[method-assign]
    return bare


def without_attention(model: torch.nn.Module) -> torch.nn.Module:
    """The same model with every block's self-attention an identity: a step that PAB-style attention reuse can
    at best reach on its cached steps (they still run everything else)."""
    bare = copy.deepcopy(model)
    for block in bare.transformer_blocks:
        block.attn1.forward = lambda hidden_states, *args, **kwargs: hidden_states  # type: ignore[method-assign]
    return bare


def own_graph(fast: graphcache.CachedModule) -> str:
    """How many cached steps ran by the cached-step graph, and the cache bytes that graph writes (the one
    graph's cached branch is what ``describe_lowering`` reports)."""
    from graphcache.analyses import StateSpec
    from graphcache.cached_step_graph import cached_step_graph
    from graphcache.passes.base import analysis

    state = fast.states[0]
    runner = state.cached_step
    if runner is None or runner.why_not is not None:
        return ""
    caches = {str(n.target) for n in analysis(state.gm).require(StateSpec).cache_nodes()}
    graph = cached_step_graph(state.gm)[0]
    written = sum(state.gm.get_buffer(str(n.args[0].target)).nbytes for n in graph.graph.nodes
                  if n.target is torch.ops.aten.copy_.default and str(n.args[0].target) in caches)
    return f"; by its own graph ({runner.runs} cached steps) it writes {written:,} bytes of cache"


def by_position(steps: list[float], decisions: list[str]) -> str:
    """The median cached step by its place in a run of cached steps (1: right after a computed step, whose
    work has pushed the cached step's bytes out of the caches)."""
    places: dict[int, list[float]] = {}
    run = 0
    for seconds, decision in zip(steps, decisions, strict=True):
        run = run + 1 if decision == "cached" else 0
        if run:
            places.setdefault(run, []).append(seconds)
    if not places:
        return ""
    times = ", ".join(f"{1e3 * statistics.median(places[k]):.2f}" for k in sorted(places))
    return f"; cached step by its place after a computed one (ms): {times}"


def generate(fn, latent, labels, steps: int) -> tuple[float, list[float], torch.Tensor]:
    step_times, out = [], latent
    start = time.perf_counter()
    with torch.no_grad():
        for t in torch.linspace(999, 0, steps).long():
            s = time.perf_counter()
            out = fn(latent, timestep=t.expand(latent.shape[0]), class_labels=labels).sample
            step_times.append(time.perf_counter() - s)
    return time.perf_counter() - start, step_times, out


@dataclasses.dataclass
class Fastest:
    """The fastest timed generation of one configuration."""

    seconds: float = float("inf")
    steps: list[float] = dataclasses.field(default_factory=list)
    out: torch.Tensor | None = None

    def offer(self, seconds: float, steps: list[float], out: torch.Tensor) -> None:
        if seconds < self.seconds:
            self.seconds, self.steps, self.out = seconds, steps, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", action="append", help=f"a policy spec, repeatable (default: {DEFAULT_POLICIES})")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    specs = args.policy or DEFAULT_POLICIES
    # every compile of this model class adds an entry to its forward's dynamo cache (the default limit is 8)
    torch._dynamo.config.recompile_limit = 64

    model, latent, labels = build(args.hidden, args.layers, args.batch)
    tokens = (32 // 2) ** 2
    print(f"DiT hidden {args.hidden}, {args.layers} blocks, {tokens} tokens, batch {args.batch}, {args.steps} steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, Inductor; "
          f"median of {args.repeats} adjacent pairs")
    runs: dict[str, torch.nn.Module] = {
        "uncached": torch.compile(model, fullgraph=True, dynamic=False),
        "prologue+epilogue": torch.compile(without_blocks(model), fullgraph=True, dynamic=False),
        "without attention": torch.compile(without_attention(model), fullgraph=True, dynamic=False),
    }
    for spec in specs:
        t0 = time.perf_counter()
        runs[spec] = graphcache.optimize(model, spec)
        generate(runs[spec], latent, labels, 4)  # compiles every branch
        print(f"{spec}: compiled and warmed up in {time.perf_counter() - t0:.1f} s")
    for name in ("uncached", "prologue+epilogue", "without attention"):
        generate(runs[name], latent, labels, 4)
    fastest = {name: Fastest() for name in runs}
    ratios: dict[str, list[float]] = {name: [] for name in runs}  # uncached seconds / its seconds, adjacent pairs
    for _ in range(args.repeats):
        for name, fn in runs.items():
            if name == "uncached":
                continue
            base_seconds, *rest = generate(runs["uncached"], latent, labels, args.steps)
            fastest["uncached"].offer(base_seconds, *rest)
            seconds, *rest = generate(fn, latent, labels, args.steps)
            fastest[name].offer(seconds, *rest)
            ratios[name].append(base_seconds / seconds)

    base, bare, no_attention = fastest["uncached"], fastest["prologue+epilogue"], fastest["without attention"]
    assert base.out is not None
    attention_share = 1 - 1 / statistics.median(ratios["without attention"])
    print(f"uncached {base.seconds:.3f} s/generation ({1e3 * base.seconds / args.steps:.2f} ms/step); "
          f"prologue+epilogue alone {1e3 * statistics.median(bare.steps):.2f} ms/step; without self-attention "
          f"{1e3 * no_attention.seconds / args.steps:.2f} ms/step (attention {100 * attention_share:.0f}% of a step)")
    warm, cold = read_bandwidth(), read_bandwidth(cold=True)
    print(f"read bandwidth {warm:.1f} GiB/s warm, {cold:.1f} GiB/s cold (fastest sum over 120 MiB; cold: each "
          "after reading 1 GiB of other data)")
    print("| policy | speedup | computed | limit | % of limit | % of limit, own steps | % at the read bound "
          "(warm / cold) | step: computed / cached (ms) | cached step reads (MiB, ms warm / cold) | final-step err |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    for spec in specs:
        run, decisions = fastest[spec], graphcache.decisions(runs[spec])
        assert run.out is not None
        computed = decisions.count("computed")
        speedup = statistics.median(ratios[spec])
        cached_share = 1 - attention_share if spec.startswith(("pab", "fastercache")) else 0.0  # Amdahl
        limit = len(decisions) / (computed + (len(decisions) - computed) * cached_share)
        full = [s for s, d in zip(run.steps, decisions, strict=True) if d == "computed"]
        cached = [s for s, d in zip(run.steps, decisions, strict=True) if d == "cached"]
        cached_ms = f"{1e3 * statistics.median(cached):.2f}" if cached else "-"
        # the same yardstick from this generation's own step times (drift between runs cancels): the time its
        # steps would take if a cached step cost what the limit assumes, over the time they took
        t_full, t_cached = statistics.median(full), statistics.median(cached) if cached else 0.0
        own = t_full * (computed + len(cached) * cached_share) / (computed * t_full + len(cached) * t_cached)
        error = float((run.out - base.out).abs().max())
        fields = lowering_fields(runs[spec].states[0].gm)
        reads = fields.get("cached_step_read_bytes", 0) / 2**30
        # the best a cached step could do: prologue + epilogue, then reading its bytes at the bandwidth measured
        # warm and cold; computed steps at the uncached step's time (attention reuse: Amdahl's yardstick)
        t_base = statistics.median(base.steps)
        bound = "-" if cached_share else " / ".join(
            f"{100 * computed * t_base / (computed * t_base + len(cached) * floor):.1f}%"
            for floor in (statistics.median(bare.steps) + reads / bandwidth for bandwidth in (warm, cold)))
        print(f"| {spec} | {speedup:.2f}x | {computed}/{len(decisions)} | {limit:.2f}x | {100 * speedup / limit:.1f}% "
              f"| {100 * own:.1f}% | {bound} | {1e3 * t_full:.1f} / {cached_ms} "
              f"| {1024 * reads:.1f}, {1e3 * reads / warm:.2f} / {1e3 * reads / cold:.2f} | {error:.2e} |")
        notes.append(f"{spec}: cached step {describe_lowering(fields)}{own_graph(runs[spec])}"
                     f"{by_position(run.steps, decisions)}")
    print("\n".join(notes))


if __name__ == "__main__":
    main()
