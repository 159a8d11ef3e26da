"""Write a bench report folder: report.json, report.md and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from graphcache.bench import RunResult

COLUMNS = ("policy", "settings", "speedup", "computed_steps", "steps", "class_accuracy", "frechet_distance",
           "psnr_db", "ssim", "cache_bytes")


def markdown_table(results: list[RunResult]) -> str:
    header = ("| policy | settings | wall time ratio | computed / total | sample-steps computed | class accuracy "
              "| Frechet | PSNR (dB) | SSIM |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        row = r.row()
        psnr_text = "-" if r is results[0] else f"{r.psnr:.1f}"
        ssim_text = "-" if r is results[0] else f"{r.ssim:.3f}"
        lines.append(
            f"| {row['policy']} | {row['settings']} | {row['speedup']:.2f}x | {row['computed_steps']}/{row['steps']} "
            f"| {100 * row['sample_steps_computed']:.0f}% | {100 * row['class_accuracy']:.1f}% "
            f"| {row['frechet_distance']:.2f} | {psnr_text} | {ssim_text} |"
        )
    return "\n".join(lines)


def write_report(results: list[RunResult], folder: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"command": command, "runs": [r.row() for r in results]},
                                                   indent=2))
    (folder / "report.md").write_text(f"Command: `{command}`\n\n{markdown_table(results)}\n")

    cols = min(10, results[0].images.shape[0])
    fig, axes = plt.subplots(len(results), cols, figsize=(cols * 0.9, len(results) * 1.0 + 0.3), squeeze=False)
    for i, run in enumerate(results):
        for j in range(cols):
            ax = axes[i][j]
            ax.imshow(run.images[j].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"{run.label}\n{run.settings}"[:28], fontsize=6)
    fig.suptitle("samples (same seed and class per column)", fontsize=8)
    fig.savefig(folder / "samples.png", dpi=150, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 0.4 * len(results) + 1))
    grid = np.array([[1.0 if d == "computed" else 0.0 for d in r.decisions] for r in results])
    ax.imshow(grid, aspect="auto", cmap="Greys", vmin=0, vmax=1.4, interpolation="nearest")
    ax.set_yticks(range(len(results)), [f"{r.label} {r.settings}" for r in results], fontsize=7)
    ax.set_xlabel("step (dark = computed, light = cached)")
    fig.savefig(folder / "decisions.png", dpi=150, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in results[1:]:
        ax.plot(run.step_error, label=f"{run.label} {run.settings}")
    ax.set_xlabel("step")
    ax.set_ylabel("mean |latent - uncached latent|")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.legend(fontsize=7)
    fig.savefig(folder / "step_error.png", dpi=150, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    for run in results[1:]:
        ax.scatter(run.speedup, run.psnr)
        ax.annotate(f"{run.label} {run.settings}", (run.speedup, run.psnr), fontsize=6)
    ax.set_xlabel("wall time ratio vs uncached")
    ax.set_ylabel("PSNR vs uncached (dB)")
    fig.savefig(folder / "speed_vs_quality.png", dpi=150, bbox_inches="tight")
    plt.close(fig)
