"""``graphcache export``: write ONNX / AOTInductor / TensorRT artifacts and a plan, optionally check them."""

from __future__ import annotations

from pathlib import Path

import click

from graphcache.cli_options import policy_options


@click.command()
@click.argument("model_file", type=click.Path(path_type=Path))
@policy_options
@click.option("--format", "fmt", type=click.Choice(["onnx", "aoti", "tensorrt"]), default="onnx", show_default=True)
@click.option("--form", type=click.Choice(["in-graph", "unrolled"]), default=None,
              help="in-graph: one graph deciding inside (If / torch.cond); unrolled: full + cached graphs and a "
                   "per-step schedule (static policies). Default: unrolled for TensorRT with a static policy")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(min=1),
              help="steps per generation (the unrolled schedule's length)")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="output folder")
@click.option("--check", is_flag=True, help="compare every graph (polygraphy) and two whole generations with torch")
@click.option("--atol", default=1e-4, show_default=True, help="--check tolerance (fp32)")
def export(model_file: Path, policy: str | None, sets: tuple[str, ...], config_path: Path | None, fmt: str,
           form: str | None, steps: int, out: Path,
           check: bool, atol: float) -> None:
    """Export the cached denoiser of MODEL_FILE: graph files + graphcache-plan.json in --out.

    Load it with ``graphcache.export.load(OUT)``, which runs whole generations (state kept between steps).
    """
    from rich.markup import escape

    from graphcache.cli import console, policy_of
    from graphcache.export.build import export_model
    from graphcache.modelfile import load_model_file
    from graphcache.runner import cli_timesteps

    if out.exists() and not out.is_dir():
        raise click.BadParameter(f"{out} is a file; --out names the folder the export is written to", param_hint="-o")
    policy_for = policy_of(policy, sets, config_path)
    model, inputs = load_model_file(model_file)
    config = policy_for(model)
    with console.status("exporting") as status:

        def log(text: str) -> None:
            status.update(text)
            console.print(f"  {escape(text)}", highlight=False)

        exported = export_model(model, inputs(999.0), out, config, fmt, form, steps, log=log)
    plan = exported.plan
    console.print(f"[bold]{plan.format}[/], {plan.form} form, {escape(plan.policy)}")
    for entry in plan.graphs.values():
        size = (out / entry.file).stat().st_size
        console.print(f"  {entry.file}: {size / 2**20:.1f} MiB, reads {len(entry.reads)} / writes "
                      f"{len(entry.writes)} state tensors", highlight=False)
    if plan.schedule:
        console.print("  schedule: " + "".join("C" if g == "full" else "." for g in plan.schedule), highlight=False)
    if check:
        from graphcache.export.check import check_export

        with console.status("checking against torch"):
            report = check_export(exported, inputs, cli_timesteps(steps), atol=atol)
        console.print(escape(report.summary()), highlight=False)
        if not report.passed:
            raise SystemExit(1)
