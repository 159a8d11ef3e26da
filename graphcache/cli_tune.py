"""``graphcache tune``: search policies and options for the fastest configuration within quality budgets."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import click

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")


def parse_duration(text: str) -> float:
    """``'20m'``, ``'90s'``, ``'1.5h'`` or plain seconds, in seconds."""
    match = _DURATION.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise click.BadParameter(f"{text!r} is not a duration such as 20m, 90s or 1h", param_hint="--time")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


@click.command()
@click.argument("model_file", type=click.Path(path_type=Path), required=False)
@click.option("--reference", is_flag=True, help="tune the shipped reference digits pipeline (class accuracy too)")
@click.option("--budget", "budgets", multiple=True, metavar="METRIC>=VALUE",
              help="repeatable: psnr>=30, ssim>=0.98, acc_drop<=1 (points), acc>=97, max_error<=0.05")
@click.option("--policy", "policies", multiple=True, help="search only these policies (repeatable; default all)")
@click.option("--time", "time_text", default="20m", show_default=True,
              help="time for the search; the finalists' compilation and timing come after it")
@click.option("--max-points", type=click.IntRange(min=1), default=None, help="stop the search after this many points")
@click.option("--finalists", default=3, show_default=True, type=click.IntRange(min=1),
              help="best-estimated feasible points compiled and timed on the held-out split")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(min=2))
@click.option("--search-samples", default=20, show_default=True, type=click.IntRange(min=1),
              help="reference: digits of the search split (seed 1)")
@click.option("--heldout-samples", default=100, show_default=True, type=click.IntRange(min=1),
              help="reference: digits of the held-out split (seed 0)")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="model file: a `graphcache calibrate` file, so that TeaCache and MagCache are searched too")
@click.option("--backend", type=click.Choice(["eager", "inductor"]), default="inductor", show_default=True,
              help="how the finalists and the uncached model are run and timed")
@click.option("--estimate", type=click.Choice(["measured", "limit"]), default="measured", show_default=True,
              help="speed estimate of search points: step costs measured per structure, or steps / computed")
@click.option("--seed", default=0, show_default=True, help="order in which the options' settings are tried")
@click.option("--repeats", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--report", "report", type=click.Path(path_type=Path), default=Path("reports/tune"), show_default=True,
              help="report folder: points.jsonl (appended as points finish; a rerun resumes), tune.md, front_*.png")
@click.option("--fresh", is_flag=True, help="ignore the points an earlier search left in the report folder")
@click.option("-o", "--out", "tuned_path", type=click.Path(path_type=Path), default=Path("tuned.json"),
              show_default=True, help="the tuned config: pass it to optimize / export --config")
def tune(model_file: Path | None, reference: bool, budgets: tuple[str, ...], policies: tuple[str, ...],
         time_text: str, max_points: int | None, finalists: int, steps: int, search_samples: int,
         heldout_samples: int, calibration: Path | None, backend: str, estimate: str, seed: int, repeats: int,
         report: Path, fresh: bool, tuned_path: Path) -> None:
    """Find the fastest policy and options for MODEL_FILE (or --reference) that meet every --budget.

    Searches on one set of inputs, checks the finalists on another (held-out), writes TUNED (-o) for
    `graphcache optimize --config`, `graphcache export --config` and `graphcache.optimize(pipe, config=...)`.
    """
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from graphcache.cli import console
    from graphcache.tuning import ModelFileTarget, ReferenceTarget
    from graphcache.tuning import tune as run_tune

    if (model_file is None) == (not reference):
        raise click.UsageError("give a MODEL_FILE or --reference (one of them)")
    seconds = parse_duration(time_text)
    if reference and calibration is not None:
        raise click.UsageError("--calibration is for a model file; the reference model ships its own")
    target = ReferenceTarget(steps, search_samples, heldout_samples) if reference else \
        ModelFileTarget.from_file(model_file, steps, str(calibration) if calibration else None)  # type: ignore[arg-type]
    command = "graphcache tune " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["tune"] else ""

    def say(text: str) -> None:
        console.print(f"[bold]tune[/]: {escape(text)}", highlight=False)

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("search", total=seconds)
        state = {"n": 0, "ok": 0, "best": 0.0}

        def on_point(point, elapsed: float) -> None:  # type: ignore[no-untyped-def]
            state["n"] += 1
            if point.feasible:
                state["ok"] += 1
                state["best"] = max(state["best"], point.estimate)
            mark = "ok " if point.feasible else ("ERR" if point.error else "-  ")
            quality = ", ".join(f"{k} {v:.2f}" for k, v in point.metrics.items()) or point.error
            console.print(f"  {mark} {escape(point.spec)}: {point.computed}/{point.steps} computed, est. "
                          f"{point.estimate:.2f}x; {escape(quality)}", highlight=False)
            bar.update(task, completed=min(elapsed, seconds), description=(
                f"search: {state['n']} points, {state['ok']} within budget, best est. {state['best']:.2f}x"))

        outcome = run_tune(target, budgets, policies, seed, seconds, max_points, finalists, backend,
                           estimate=estimate, repeats=repeats, out=report, tuned_path=tuned_path, fresh=fresh,
                           status=say, on_point=on_point, command=command)
    from graphcache.tuning.report import pareto

    for metric in dict.fromkeys(b.metric for b in outcome.budgets):
        front = Table(title=f"Pareto front on the search split: estimated speedup vs {metric}")
        for column in ("spec", "estimated", "computed", metric, "budgets"):
            front.add_column(column)
        for p in pareto(outcome.searched.points, metric):
            front.add_row(escape(p.spec), f"{p.estimate:.2f}x", f"{p.computed}/{p.steps}", f"{p.metrics[metric]:.2f}",
                          "met" if p.feasible else "missed")
        console.print(front)
    table = Table(title=f"held-out: {target.describe('heldout')}, {backend}, same run as uncached")
    for column in ("spec", "speedup", "estimated", "computed", *target.metrics, "budgets"):
        table.add_column(column)
    for p in outcome.finals.points:
        table.add_row(escape(p.spec), f"{p.speedup:.2f}x" if p.speedup else "-", f"{p.estimate:.2f}x",
                      f"{p.computed}/{p.steps}", *(f"{p.metrics.get(m, float('nan')):.2f}" for m in target.metrics),
                      ("met" if p.feasible else "missed") + (" (chosen)" if p is outcome.chosen else ""))
    console.print(table)
    chosen = outcome.chosen
    if chosen is not None:
        console.print(f"[bold]chosen[/]: {escape(chosen.spec)} at {chosen.speedup:.2f}x; written to {tuned_path}",
                      highlight=False)
    console.print(f"report: {report}/tune.md, fronts in {report}/front_*.png")
