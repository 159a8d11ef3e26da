"""``graphcache calibrate``: fit TeaCache's polynomial and MagCache's ratios from uncached generations."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("model_file", type=click.Path(path_type=Path), required=False)
@click.option("--reference", is_flag=True, help="calibrate the shipped reference digits model along real pipeline "
              "trajectories (10 classes, guidance 1.5) instead of a MODEL_FILE")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(min=3),
              help="denoising steps of the calibration generation")
@click.option("--degree", default=4, show_default=True, type=click.IntRange(min=1),
              help="degree of TeaCache's polynomial")
@click.option("--policy", "policies", type=click.Choice(["teacache", "magcache"]), multiple=True,
              default=("teacache", "magcache"), show_default=True, help="which fits to write (repeatable)")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="calibration file (JSON)")
def calibrate(model_file: Path | None, reference: bool, steps: int, degree: int, policies: tuple[str, ...],
              out: Path) -> None:
    """Run uncached, record block 0's modulated input, the stack residual and the output, and save the fits.

    Use the file with `--set calibration=FILE` for teacache and magcache (keyed to the model's weights).
    """
    import torch

    from graphcache.calibration import Recorder, fit, record, save
    from graphcache.cli import _progress, console
    from graphcache.errors import ModelFileError

    if reference == (model_file is not None):
        raise ModelFileError("give a MODEL_FILE or --reference (one of them)")
    if reference:
        from graphcache.reference import load_pipeline
        from graphcache.reference.model import NULL_CLASS

        pipe = load_pipeline()
        model = pipe.transformer
        labels = torch.arange(10)
        c, s = model.config.in_channels, model.config.sample_size
        example = {"hidden_states": torch.zeros(20, c, s, s), "timestep": torch.full((20,), 999, dtype=torch.long),
                   "class_labels": torch.cat([labels, torch.full_like(labels, NULL_CLASS)])}
        recorder = Recorder(model, example)
        pipe.transformer = recorder
        pipe(class_labels=labels, num_inference_steps=steps, guidance_scale=1.5,
             generator=torch.Generator().manual_seed(0), progress=True)
        pipe.transformer = model
        rows = recorder.rows
    else:
        from graphcache.modelfile import load_model_file
        from graphcache.runner import cli_timesteps

        model, inputs = load_model_file(model_file)  # type: ignore[arg-type]
        rows = record(model, inputs, cli_timesteps(steps), progress=_progress("calibrating"))
    sections = {k: v for k, v in fit(rows, degree).items() if k in policies}
    path = save(out, model, steps, **sections)
    if "teacache" in sections:
        tea = sections["teacache"]
        console.print(f"teacache: degree {degree} polynomial {[round(c, 4) for c in tea['coefficients']]} over "
                      f"{tea['points']} points, indicator relL1 {tea['indicator_range'][0]:.4f} .. "
                      f"{tea['indicator_range'][1]:.4f}", highlight=False)
    if "magcache" in sections:
        mag = sections["magcache"]
        console.print(f"magcache: ratios at {len(mag['ratios'])} timesteps, {min(mag['ratios']):.4f} .. "
                      f"{max(mag['ratios']):.4f}", highlight=False)
    console.print(f"wrote {path}")
