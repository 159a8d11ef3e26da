"""The tune report: the Pareto fronts (speed vs each quality metric), printed and plotted."""

from __future__ import annotations

from pathlib import Path

from graphcache.tuning.budget import METRICS, Budget
from graphcache.tuning.points import Point


def pareto(points: list[Point], metric: str) -> list[Point]:
    """Points no other point beats in both estimated speed and ``metric``, fastest first."""
    better_high = METRICS[metric][1] == "higher"
    ok = [p for p in points if not p.error and metric in p.metrics]
    key = (lambda p: p.metrics[metric]) if better_high else (lambda p: -p.metrics[metric])
    front: list[Point] = []
    for p in sorted(ok, key=lambda p: (-p.estimate, -key(p), p.spec)):
        if not front or key(p) > key(front[-1]):
            front.append(p)
    return front


def plot_fronts(folder: Path, points: list[Point], finals: list[Point], budgets: list[Budget],
                metrics: tuple[str, ...]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(6, 4))
        ok = [p for p in points if not p.error]
        for feasible, colour, label in ((True, "tab:green", "meets the budgets"), (False, "tab:grey", "misses")):
            chosen = [p for p in ok if p.feasible == feasible]
            ax.scatter([p.estimate for p in chosen], [p.metrics[metric] for p in chosen], c=colour, s=14,
                       label=f"search: {label}")
        front = pareto(points, metric)
        ax.plot([p.estimate for p in front], [p.metrics[metric] for p in front], c="tab:blue", lw=1,
                label="Pareto front (search)")
        measured = [p for p in finals if p.speedup and metric in p.metrics]
        ax.scatter([p.speedup or 0.0 for p in measured], [p.metrics[metric] for p in measured], marker="*", s=90,
                   c="tab:red", label="held-out, timed")
        for p in measured:
            ax.annotate(p.spec.split("{")[0], (p.speedup, p.metrics[metric]), fontsize=6)  # type: ignore[arg-type]
        for budget in budgets:
            if budget.metric == metric:
                ax.axhline(budget.value, ls="--", c="tab:red", lw=0.8)
        ax.set_xlabel("end-to-end speedup vs uncached (search: estimated; stars: measured)")
        ax.set_ylabel(f"{metric} vs uncached ({METRICS[metric][1]} is better)")
        ax.legend(fontsize=6)
        path = folder / f"front_{metric}.png"
        fig.savefig(path, dpi=140, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def markdown(points: list[Point], finals: list[Point], chosen: Point | None, budgets: list[Budget],
             metrics: tuple[str, ...], command: str, header: list[str]) -> str:
    lines = [f"Command: `{command}`", "", *header, "", f"Budgets: {', '.join(str(b) for b in budgets)}", ""]
    cols = " | ".join(metrics)
    lines += ["Held-out, compiled and timed in the same run as the uncached model:", "",
              f"| spec | speedup (estimated on search) | computed | {cols} | meets budgets |",
              "|---|---|---|" + "---|" * len(metrics) + "---|"]
    for p in finals:
        marks = " | ".join(f"{p.metrics.get(m, float('nan')):.2f}" for m in metrics)
        speed = f"{p.speedup:.2f}x ({p.estimate:.2f}x)" if p.speedup else "-"
        lines.append(f"| `{p.spec}` | {speed} | {p.computed}/{p.steps} | {marks} | "
                     f"{'yes' if p.feasible else 'no'}{' (chosen)' if p is chosen else ''} |")
    for metric in metrics:
        lines += ["", f"Pareto front on the search split, estimated speed vs {metric}:", "",
                  f"| spec | estimated speedup | computed | {metric} | meets budgets |", "|---|---|---|---|---|"]
        lines += [f"| `{p.spec}` | {p.estimate:.2f}x | {p.computed}/{p.steps} | {p.metrics[metric]:.2f} | "
                  f"{'yes' if p.feasible else 'no'} |" for p in pareto(points, metric)]
    return "\n".join(lines) + "\n"
