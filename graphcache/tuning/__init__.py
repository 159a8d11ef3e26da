"""``graphcache tune``: the fastest configuration that meets quality budgets, found by search.

``tune(target, ["psnr>=30"])`` searches (:mod:`.search`), times the finalists on held-out inputs, writes the
report folder (points.jsonl as it goes, tune.md, tune.json, front_*.png) and the tuned file (:mod:`.tuned`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graphcache.errors import GraphcacheError
from graphcache.tuning.budget import Budget, parse_budgets
from graphcache.tuning.points import Point, PointStore
from graphcache.tuning.report import markdown, plot_fronts
from graphcache.tuning.search import Finals, SearchResult, finals, search
from graphcache.tuning.space import families
from graphcache.tuning.targets import ModelFileTarget, ReferenceTarget
from graphcache.tuning.tuned import load_tuned, read_tuned, save_tuned

__all__ = ["Budget", "ModelFileTarget", "ReferenceTarget", "TuneOutcome", "load_tuned", "read_tuned", "tune"]


class NothingMeetsBudgets(GraphcacheError):
    """No configuration met every budget on the held-out split."""


@dataclasses.dataclass
class TuneOutcome:
    budgets: list[Budget]
    searched: SearchResult
    finals: Finals
    written: list[Path]

    @property
    def chosen(self) -> Point | None:
        return self.finals.chosen


def tune(target: Any, budgets: list[str] | tuple[str, ...], policies: tuple[str, ...] = (), seed: int = 0,
         time_limit: float = 1200.0, max_points: int | None = None, finalists: int = 3, backend: str = "inductor",
         search_backend: str = "eager", estimate: str = "measured", repeats: int = 2, out: Path | None = None,
         tuned_path: Path | None = None, fresh: bool = False, status: Callable[[str], None] = print,
         on_point: Callable[[Point, float], None] | None = None, command: str = "") -> TuneOutcome:
    parsed = parse_budgets(list(budgets), target.metrics)
    chosen_families = families(policies, target.calibration)
    if finalists < 1:
        raise GraphcacheError(f"finalists must be >= 1, got {finalists}")
    store = PointStore(out, search_header(target, search_backend), fresh)
    if store.resumed:
        status(f"resuming: {store.resumed} points already evaluated in {store.path}")
    status(f"search: {', '.join(f.policy for f in chosen_families)} on {target.describe('search')} ({search_backend})")
    searched = search(target, parsed, chosen_families, store, seed, time_limit, max_points, search_backend,
                      estimate, on_point)
    status(f"search: {len(searched.points)} points in {searched.seconds:.0f} s ({searched.stopped}), "
           f"{len(searched.ranked())} meet the budgets")
    final = finals(target, parsed, searched, finalists, backend, repeats, status) if searched.ranked() else \
        Finals([], {}, [], 0.0)
    outcome = TuneOutcome(parsed, searched, final, [])
    if out is not None:
        outcome.written = _write_report(out, target, outcome, command)
    best = final.chosen
    if best is None:
        where = f"; report in {out}" if out is not None else ""
        raise NothingMeetsBudgets(
            f"no configuration met {', '.join(str(b) for b in parsed)} on the held-out split "
            f"({len(searched.ranked())} met them on the search split){where}: loosen a budget, search longer "
            "(--time) or more policies")
    if tuned_path is not None:
        outcome.written.append(save_tuned(
            tuned_path, target.model, best.spec, budgets=[str(b) for b in parsed], target=target.label,
            speedup=best.speedup, estimated_speedup=best.estimate, computed=best.computed, steps=best.steps,
            heldout={"inputs": target.describe("heldout"), "metrics": best.metrics, "uncached": final.base_metrics},
            search={"inputs": target.describe("search"), "metrics": searched_metrics(searched, best.spec)},
            backend=backend, search_seconds=round(searched.seconds, 1), command=command))
    return outcome


def search_header(target: Any, backend: str) -> dict[str, Any]:
    """What makes points of one search reusable by another: the model, the search inputs, the backend
    (budgets are not in it: feasibility is judged again from the stored metrics)."""
    from graphcache.calibration import fingerprint

    return {"target": target.label, "fingerprint": fingerprint(target.model), "search": target.describe("search"),
            "backend": backend}


def searched_metrics(result: SearchResult, spec: str) -> dict[str, float]:
    return next((p.metrics for p in result.points if p.spec == spec), {})


def _write_report(out: Path, target: Any, outcome: TuneOutcome, command: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    s, f = outcome.searched, outcome.finals
    header = [f"Target: {target.label}. Search split: {target.describe('search')}; held-out split: "
              f"{target.describe('heldout')}.",
              f"Search: {len(s.points)} points in {s.seconds:.0f} s ({s.stopped}); finalists compiled and timed in "
              f"{f.seconds:.0f} s.",
              *([f"Uncached class accuracy on the held-out split: {f.base_metrics['acc']:.1f}%."]
                if "acc" in f.base_metrics else []),
              *[f"Estimate vs measured for `{p.spec}`: {p.estimate:.2f}x estimated, {p.speedup:.2f}x measured "
                f"({100 * (p.estimate / p.speedup - 1):+.0f}%)." for p in f.points if p.speedup]]
    (out / "tune.md").write_text(markdown(s.points, f.points, f.chosen, outcome.budgets, target.metrics, command,
                                          header))
    (out / "tune.json").write_text(json.dumps({
        "command": command, "budgets": [str(b) for b in outcome.budgets], "search": [p.row() for p in s.points],
        "heldout": [p.row() for p in f.points], "chosen": f.chosen.spec if f.chosen else None,
        "uncached_heldout_seconds": f.base_seconds, "search_seconds": s.seconds, "finals_seconds": f.seconds,
        "stopped": s.stopped}, indent=2))
    return [out / "tune.md", out / "tune.json", *plot_fronts(out, s.points, f.points, outcome.budgets,
                                                             target.metrics)]
