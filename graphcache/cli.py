"""``graphcache`` command line: ``optimize``, ``policies``, ``bench``, ``export`` (in cli_export.py)."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from graphcache.cli_options import policy_options
from graphcache.errors import GraphcacheError, PolicyConfigError
from graphcache.vs_diffusers import METHODS as VS_METHODS
from graphcache.vs_diffusers import MODELS as VS_MODELS

console = Console(width=None if sys.stdout.isatty() else 140)  # logs and CI: no wrapping at 80 columns


def _parse_sets(values: tuple[str, ...]) -> dict[str, str]:
    options = {}
    for item in values:
        if "=" not in item:
            raise PolicyConfigError(f"--set {item!r} must be key=value, e.g. --set interval=3")
        key, value = item.split("=", 1)
        options[key.strip()] = value.strip()
    return options


def _progress(label: str) -> Any:
    def wrap(items: Iterable[float]) -> Iterable[float]:
        items = list(items)
        columns = (TextColumn(f"{label:>20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task(label, total=len(items))
            for item in items:
                yield item
                bar.advance(task)

    return wrap


def policy_of(policy: str | None, sets: tuple[str, ...], config_path: Path | None) -> Callable[[Any], Any]:
    """The policy of --policy / --set, or of a tuned --config, as a function of the model (a tuned file is
    checked against it). The spec or file is read here, before any model file is run: its mistakes come first."""
    from graphcache.policies import make_policy

    if config_path is None:
        config = make_policy(policy or "auto", **_parse_sets(sets))
        return lambda model: config
    if policy is not None or sets:
        raise click.UsageError("give --policy / --set or --config, not both")
    from graphcache.tuning.tuned import read_tuned, tuned_policy

    data = read_tuned(config_path)
    return lambda model: tuned_policy(data, config_path, model)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GraphcacheError as err:
            console.print(f"[bold red]error[/]: {type(err).__name__}: {escape(str(err))}", highlight=False)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="graphcache")
def main() -> None:
    """graphcache: feature caching for diffusion denoisers, inside the compiled graph."""


@main.command()
@click.option("--markdown", is_flag=True, help="print the README's policy table (generated from the registry)")
def policies(markdown: bool) -> None:
    """List the caching policies and their options."""
    from graphcache.policies import available, markdown_table, policy_class

    if markdown:
        click.echo(markdown_table())
        return
    for name in available():
        cls = policy_class(name)
        table = Table(title=f"[bold]{name}[/]: {escape(cls.summary)}\n{cls.paper}", title_justify="left")
        for column in ("option", "type", "default", "accepts", "meaning"):
            table.add_column(column)
        accepts = cls.field_constraints()
        for field, tp, default, help_text in cls.field_docs():
            table.add_row(field, escape(tp), escape(repr(default)), escape(accepts.get(field, "")), escape(help_text))
        console.print(table)


@main.command()
@click.argument("model_file", type=click.Path(path_type=Path))
@policy_options
@click.option("--steps", default=50, show_default=True, type=click.IntRange(min=2),
              help="denoising steps of the generation (>= 2: step 0 always computes)")
@click.option("--backend", type=click.Choice(["eager", "inductor"]), default="eager", show_default=True,
              help="run both models op by op, or both compiled with torch.compile(fullgraph=True)")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="also write the report as JSON")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1),
              help="timed generation pairs (uncached, graphcache) in turn; the speedup is their median")
def optimize(model_file: Path, policy: str | None, sets: tuple[str, ...], config_path: Path | None, steps: int,
             backend: str, json_path: Path | None, repeats: int) -> None:
    """Optimize the denoiser of MODEL_FILE and report blocks, schedule, speed, error and cache memory.

    MODEL_FILE defines build() -> (model, inputs), inputs(t) -> dict of the denoiser's keyword arguments.
    MODEL_FILE is executed as Python: only run files you trust.
    """
    from graphcache.modelfile import load_model_file
    from graphcache.runner import compare

    policy_for = policy_of(policy, sets, config_path)
    model, inputs = load_model_file(model_file)
    config = policy_for(model)
    console.print(f"[bold]graphcache[/] {config.describe()} on {model_file} ({backend}, {steps} steps)")
    result = compare(model, inputs, config, steps, backend, progress=_progress, repeats=repeats)
    report = build_report(result)
    print_report(report)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
        console.print(f"report written to {json_path}")


def _split_choices(choices: tuple[str, ...], what: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A repeatable option whose values may also be comma-separated, each one of ``choices``."""
    def callback(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(v.strip() for value in values for v in value.split(",") if v.strip())
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise click.BadParameter(f"unknown {what} {', '.join(repr(n) for n in unknown)}; choose from "
                                     f"{', '.join(choices)}", ctx=ctx, param=param)
        return tuple(dict.fromkeys(names))

    return callback


@main.command()
@click.option("--policy", "policies_", multiple=True, default=("fora",), show_default=True,
              help="policy name or spec, repeatable: --policy fora --policy 'fora{interval=2}'")
@click.option("--samples", default=100, show_default=True, help="digits generated per run (classes 0-9 in turn)")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(min=2))
@click.option("--guidance", default=1.5, show_default=True, help="classifier-free guidance scale")
@click.option("--backend", type=click.Choice(["eager", "inductor"]), default="inductor", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports/bench"), show_default=True,
              help="report folder: report.md, report.json, samples / decisions / step_error / speed_vs_quality.png")
@click.option("--model", "model_file", type=click.Path(path_type=Path), default=None,
              help="a model.py instead of the reference model: speed and error vs uncached (no judge)")
@click.option("--repeats", default=2, show_default=True, type=click.IntRange(min=1),
              help="timed runs of each configuration; the fastest counts (the uncached one runs twice that); "
                   "with --against diffusers: the median of that many")
@click.option("--against", type=click.Choice(["diffusers"]), default=None,
              help="side by side with another implementation instead: 'diffusers' runs each method with "
                   "diffusers' own cache hooks (eager and compiled) and with graphcache, settings mapped field by "
                   "field, on a DiT and a Flux-shaped model with random weights (a DDIM loop, batch 1)")
@click.option("--models", "models_", multiple=True, callback=_split_choices(VS_MODELS, "model"),
              metavar="NAMES", help=f"with --against: models, comma-separated or repeated, of {', '.join(VS_MODELS)} "
                                    "(default: all)")
@click.option("--methods", "methods_", multiple=True, callback=_split_choices(VS_METHODS, "method"),
              metavar="NAMES", help=f"with --against: methods, comma-separated or repeated, of "
                                    f"{', '.join(VS_METHODS)} (default: all)")
def bench(policies_: tuple[str, ...], samples: int, steps: int, guidance: float, backend: str, seed: int,
          out: Path, model_file: Path | None, repeats: int, against: str | None, models_: tuple[str, ...],
          methods_: tuple[str, ...]) -> None:
    """Uncached vs policies on the shipped reference digits model (or --model model.py), same seeds.

    With --against diffusers: graphcache vs diffusers' own cache hooks (FBCache, TaylorSeer, MagCache, PAB,
    FasterCache), per-step decisions compared and a markdown table of speed, computed steps and errors."""
    if against is not None:
        _refuse_reference_options(["policies_", "samples", "guidance", "seed", "out", "model_file"])
        _bench_against_diffusers(models_ or VS_MODELS, methods_ or VS_METHODS, steps, backend, repeats)
        return
    if models_ or methods_:
        raise click.UsageError("--models / --methods choose what `--against diffusers` compares; give --against "
                               "diffusers, or --policy for the reference bench")
    from graphcache.bench import run_bench
    from graphcache.bench_report import write_report
    from graphcache.policies import make_policy

    configs = [make_policy(p) for p in policies_]
    if model_file is not None:
        _bench_model_file(model_file, configs, steps, backend, repeats)
        return
    results = run_bench(configs, samples, steps, guidance, backend, seed,
                        status=lambda text: console.print(f"[bold]bench[/]: {escape(text)}", highlight=False),
                        progress=console.is_terminal, repeats=repeats)
    args = [a for p in policies_ for a in ("--policy", p)] + [
        "--samples", str(samples), "--steps", str(steps), "--guidance", str(guidance), "--backend", backend,
        "--seed", str(seed), "--repeats", str(repeats), "--out", str(out)]
    command = "graphcache bench " + shlex.join(args)  # quoted: specs hold braces the shell would expand
    write_report(results, out, command)
    table = Table(title=f"reference digits DiT, {samples} samples x {steps} steps, guidance {guidance}, {backend}; "
                        f"wall ratio: fastest of {repeats} timed runs each")
    for column in ("policy", "settings", "wall ratio", "timing spread", "computed", "sample-steps", "class acc.",
                   "Frechet", "PSNR dB", "SSIM", "warm-up s"):
        table.add_column(column)
    for i, r in enumerate(results):
        table.add_row(escape(r.label), escape(r.settings), f"{r.speedup:.2f}x", f"{100 * r.spread:.1f}%",
                      f"{r.computed}/{len(r.trajectory)}", f"{100 * r.sample_steps:.0f}%",
                      f"{100 * r.accuracy:.1f}%", f"{r.frechet:.2f}", "-" if i == 0 else f"{r.psnr:.1f}",
                      "-" if i == 0 else f"{r.ssim:.3f}", f"{r.warmup_seconds:.0f}")
    console.print(table)
    for r in results[1:]:  # how each policy's denoiser calls ran in its first timed run
        if r.calls:
            text = _calls_text(r.calls, r.calls_off, eager=False)  # graphcache.optimize: dynamo on every backend
            console.print(f"{escape(r.label)} {escape(r.settings)}: calls {escape(text)}", highlight=False)
    console.print(f"report: {out}/report.md and plots in {out}/")


def _bench_against_diffusers(models: tuple[str, ...], methods: tuple[str, ...], steps: int, backend: str,
                             repeats: int) -> None:
    """``bench --against diffusers``: graphcache.vs_diffusers, a status line per phase, then the decisions,
    the mappings and the markdown table."""
    from graphcache.vs_diffusers import Settings, compare

    console.print(f"[bold]graphcache bench --against diffusers[/]: {', '.join(models)} x {', '.join(methods)}, "
                  f"{steps} steps, backend {backend}, {repeats} timed run(s) each", highlight=False)
    result = compare(models, methods, Settings(steps=steps, repeats=repeats, backend=backend),
                     status=lambda text: console.print(f"[bold]bench[/]: {escape(text)}", highlight=False))
    console.print("[bold]decisions[/] (C = computed, . = cached)")
    for text in result.decisions():
        console.print(escape(text), highlight=False)
    console.print("[bold]mappings[/]")
    for text in result.notes():
        console.print(f"- {escape(text)}", highlight=False, soft_wrap=True)
    for text in result.failures:
        console.print(f"[bold red]not compared[/]: {escape(text)}", highlight=False, soft_wrap=True)
    console.print(f"\n{escape(result.caption())}\n", highlight=False, soft_wrap=True)
    console.print(result.table(), markup=False, highlight=False, soft_wrap=True)


def _refuse_reference_options(names: list[str]) -> None:
    """The reference bench's options have no meaning with --against: refuse them where given on the command line."""
    ctx = click.get_current_context()
    given = [p.opts[0] for p in ctx.command.params if p.name in names
             and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]  # type: ignore[arg-type]
    if given:
        what = "an option" if len(given) == 1 else "options"
        raise click.UsageError(f"{', '.join(given)}: {what} of the reference bench, not of --against diffusers "
                               "(which takes --models, --methods, --steps, --repeats, --backend)")


def _bench_model_file(model_file: Path, configs: list[Any], steps: int, backend: str, repeats: int) -> None:
    from graphcache.modelfile import load_model_file
    from graphcache.runner import compare

    model, inputs = load_model_file(model_file)
    table = Table(title=f"{model_file}, {steps} steps, {backend}; wall ratio: median of {repeats} pairs (range)")
    for column in ("policy", "wall ratio", "computed", "% of limit", "max |error|", "cache bytes"):
        table.add_column(column)
    for config in configs:
        r = build_report(compare(model, inputs, config, steps, backend, progress=_progress, repeats=repeats))
        low, high = r["speedup_range"]
        table.add_row(escape(r["policy"]), f"{r['speedup']:.2f}x ({low:.2f}-{high:.2f})",
                      f"{r['computed_steps']}/{r['steps']}",
                      f"{r['percent_of_limit']:.0f}%", f"{r['max_abs_error']:.2e}", f"{r['cache_bytes']:,}")
    console.print(table)


def build_report(result: Any) -> dict[str, Any]:
    from graphcache.passes.base import analysis
    from graphcache.rewrite import lowering_fields
    from graphcache.state import computed_share

    stack = result.cached.block_stack
    buckets = analysis(result.cached.module).sample_buckets
    bucket_fields = {} if buckets is None else {"sample_buckets": list(buckets.used),
                                                "sample_buckets_not_used": buckets.reason}
    choice = analysis(result.cached.module).policy_choice
    if choice:
        bucket_fields["policy_applied"] = choice
    share = computed_share(result.cached.state.sample_decisions())
    if share is not None:
        bucket_fields["sample_steps_computed"] = share
    errors = result.errors()
    computed_err = result.computed_step_error()
    return {
        "policy": result.policy.describe(),
        "spec": result.policy.spec(),
        "backend": result.backend,
        "blocks": stack.describe().splitlines(),
        "num_blocks": stack.num_blocks,
        "decisions": "".join("C" if d == "computed" else "." for d in result.decisions),
        "steps": len(result.decisions),
        "computed_steps": result.computed,
        "uncached_seconds": result.uncached_run.seconds,
        "graphcache_seconds": result.cached_run.seconds,
        "speedup": result.speedup,
        "speedup_range": [result.ratios[0], result.ratios[-1]],
        "repeats": len(result.ratios),
        "schedule_limit": result.limit,
        "percent_of_limit": 100 * result.speedup / result.limit,
        "computed_step_ms": 1e3 * result.mean_step("computed"),
        "cached_step_ms": 1e3 * result.mean_step("cached"),
        "max_abs_error": max(errors),
        "max_abs_error_computed_steps": computed_err,
        "cache_bytes": result.cached.state.cache_bytes(),
        "state_bytes": result.cached.state.state_bytes(),
        "compile_seconds": {name: round(seconds, 4) for name, seconds in result.timings},
        "calls": result.cached_run.routes,
        "calls_not_around_dynamo": result.routes_off,
        **lowering_fields(result.cached.module),
        **bucket_fields,
    }


def _ms(seconds_ms: float) -> str:
    return "- (none)" if seconds_ms != seconds_ms else f"{seconds_ms:.2f} ms"  # NaN: no step of that kind


def _compile_text(seconds: dict[str, float]) -> str:
    """Capture, the passes (the slowest named), the self-check and the first compiled calls, in seconds."""
    passes = {k: v for k, v in seconds.items() if not any(k.startswith(w) for w in
                                                           ("capture", "self-check", "first call", "shape"))}
    slowest = max(passes, key=passes.__getitem__) if passes else "-"
    capture = sum(v for k, v in seconds.items() if k.startswith("capture"))  # fresh or reused export
    return (f"capture {capture:.2f} s, passes {sum(passes.values()):.2f} s "
            f"(shape propagation {seconds.get('shape propagation (in the passes)', 0):.2f} s; slowest "
            f"{slowest}), self-check {seconds.get('self-check', 0):.2f} s, first call "
            f"{seconds.get('first call, graphcache (compilation)', 0):.2f} s (uncached "
            f"{seconds.get('first call, uncached (compilation)', 0):.2f} s)")


def _calls_text(calls: dict[str, int], off: dict[str, str], eager: bool) -> str:
    """How the timed generation's calls ran, and why a way around dynamo was not taken (``eager``: the module
    runs op by op, with no dynamo to go around)."""
    parts = [f"{calls['full_graph']} {'op by op' if eager else 'through dynamo'}"]
    routes = (("cached_step_graph", "by the cached-step graph"), ("direct", "by the compiled graph without dynamo"))
    for route, words in routes[:1] if eager else routes:  # op by op there is no dynamo to go around
        parts.append(f"{calls[route]} {words}" + (f" (off: {off[route]})" if route in off else ""))
    return ", ".join(parts)


def _speedup_text(r: dict[str, Any]) -> str:
    """The median ratio with its spread over the repeats, and a marker when it is above what the schedule
    allows (cached steps free): then the timing is noise, not speed."""
    low, high = r["speedup_range"]
    spread = f"median of {r['repeats']}, {low:.2f}-{high:.2f}x" if r["repeats"] > 1 else "one run: no spread"
    text = (f"{r['speedup']:.2f}x ({spread}; schedule limit {r['schedule_limit']:.2f}x: "
            f"{r['percent_of_limit']:.0f}% of it)")
    if r["percent_of_limit"] > 105:
        text += " ABOVE THE LIMIT: timing noise (a busy machine or a model too small to time); use more --repeats"
    return text


def print_report(r: dict[str, Any]) -> None:
    from graphcache.rewrite import describe_lowering

    if "policy_applied" in r:
        console.print(escape(r["policy_applied"]), highlight=False)
    console.print("[bold]blocks found[/]")
    for line in r["blocks"]:
        console.print(f"  {line}", highlight=False)
    console.print(f"[bold]schedule[/] ({r['computed_steps']}/{r['steps']} computed, C = computed, . = cached)")
    console.print(f"  {r['decisions']}", highlight=False)
    if "sample_steps_computed" in r:
        console.print(f"  per sample: {100 * r['sample_steps_computed']:.0f}% of (sample, step) pairs computed (a "
                      "batch step computes when any sample needs it)", highlight=False)
    table = Table(show_header=False)
    rows = [
        ("uncached", f"{r['uncached_seconds']:.3f} s"),
        ("graphcache", f"{r['graphcache_seconds']:.3f} s"),
        ("speedup", _speedup_text(r)),
        ("step time", f"computed {_ms(r['computed_step_ms'])}, cached {_ms(r['cached_step_ms'])}"),
        ("max |error| vs uncached", f"{r['max_abs_error']:.3e} (computed steps: "
                                    f"{r['max_abs_error_computed_steps']:.3e})"),
        ("compile time", _compile_text(r["compile_seconds"])),
        ("cache memory", f"{r['cache_bytes']:,} bytes of cached features, {r['state_bytes']:,} bytes of state in all"),
    ]
    cached_step = describe_lowering(r)
    if cached_step is not None:
        rows.append(("cached step", cached_step))
    if r.get("calls"):
        rows.append(("calls (timed run)", _calls_text(r["calls"], r["calls_not_around_dynamo"],
                                                      r["backend"] == "eager")))
    if "sample_buckets" in r:
        rows.append(("sample buckets", f"the blocks run for the needing samples only, in buckets of "
                     f"{', '.join(map(str, r['sample_buckets']))} or the whole batch" if r["sample_buckets"] else
                     f"not used: {r['sample_buckets_not_used']}"))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def _register() -> None:
    from graphcache.cli_calibrate import calibrate
    from graphcache.cli_export import export
    from graphcache.cli_tune import tune

    main.add_command(export)
    main.add_command(calibrate)
    main.add_command(tune)


_register()

if __name__ == "__main__":
    main()
