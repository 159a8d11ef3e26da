"""The search of ``graphcache tune``: bisect each family's knob per setting on the search split, estimate
speed from step costs, then time the finalists for real on the held-out split.

Rule: a point is *feasible* when every budget holds on the split it ran on. On the search split (run op by
op: no compilation per point) the search walks round-robin over the families' settings and, for each,
bisects the knob for the fastest feasible value. Speed is estimated, not timed per point: the ratio
``r`` of a cached call's time to a computed call's is measured once per structure (the first point of that
structure with both kinds, both timed in the same run), and a point's estimate is ``T_uncached /
(T_uncached - steps * t + t * (computed + cached * r))`` with ``t`` the uncached call's time;
``estimate="limit"`` uses steps / computed instead (no timing: deterministic). The
finalists (the best estimates among the feasible points) are then compiled with the target backend and
timed on the held-out split in the same run as the uncached model; the chosen configuration is the fastest
finalist that meets every budget there.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from graphcache.errors import GraphcacheError, UnsupportedGraphError, first_line
from graphcache.policies import make_policy
from graphcache.tuning.budget import Budget, feasible
from graphcache.tuning.points import Point, PointStore
from graphcache.tuning.space import Family, fixed_options, rounds
from graphcache.tuning.targets import Run

ESTIMATES = ("measured", "limit")


@dataclasses.dataclass
class CostModel:
    mode: str
    base_seconds: float
    base_step: float
    steps: int
    per_structure: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

    def learn(self, point: Point) -> None:
        computed, cached = point.costs.get("computed"), point.costs.get("cached")
        if point.structure not in self.per_structure and computed is not None and cached is not None:
            self.per_structure[point.structure] = (computed, cached)

    def estimate(self, point: Point) -> float:
        if point.error:
            return 0.0
        if self.mode == "limit":
            return point.limit
        computed, cached = self.per_structure.get(point.structure, (None, None))
        if computed is None:  # no point of this structure cached a step yet: this point's own costs
            computed, cached = point.costs.get("computed"), point.costs.get("cached")
        # A cached call costs ``cached / computed`` of a computed one, both timed in the same run (a machine
        # busy for that whole run slows both alike); a computed call costs what an uncached call does.
        relative = cached / computed if computed and cached is not None else 0.0
        overhead = max(0.0, self.base_seconds - self.steps * self.base_step)  # the pipeline around the calls
        seconds = overhead + self.base_step * (point.computed + (point.steps - point.computed) * relative)
        return self.base_seconds / seconds if seconds > 0 else 0.0


@dataclasses.dataclass
class SearchResult:
    points: list[Point]
    cost: CostModel
    seconds: float
    stopped: str  # why the search ended

    def ranked(self) -> list[Point]:
        """Feasible points, best estimate first (ties: fewer computed steps, then the spec)."""
        ok = [p for p in self.points if p.feasible]
        return sorted(ok, key=lambda p: (-p.estimate, p.computed, p.spec))


def search(target: Any, budgets: list[Budget], chosen: list[Family], store: PointStore, seed: int = 0,
           time_limit: float = 1200.0, max_points: int | None = None, backend: str = "eager",
           estimate: str = "measured", on_point: Callable[[Point, float], None] | None = None) -> SearchResult:
    if estimate not in ESTIMATES:
        raise GraphcacheError(f"estimate must be one of {ESTIMATES}, got {estimate!r}")
    start = time.perf_counter()
    base_run: list[Run] = []

    def base() -> Run:
        if not base_run:
            base_run.append(target.run(None, "search", backend))
        return base_run[0]

    if store.baseline is None:
        run = base()
        store.set_baseline(run.seconds, run.step_cost("computed") or run.seconds / target.steps)
    assert store.baseline is not None, "the uncached baseline is measured before the search"
    cost = CostModel(estimate, store.baseline["seconds"], store.baseline["step"], target.steps)
    points: list[Point] = []
    refused: set[str] = set()
    stopped = "every setting of every family searched"

    def evaluate(family: Family, setting: dict[str, Any], value: Any) -> Point:
        spec = family.spec(setting, value, fixed_options(family, target.calibration), target.steps)
        point = store.get("search", spec)
        if point is None:
            point = _measure(target, spec, family, setting, budgets, base, backend)
            store.add(point)
        elif not point.error:  # measured by an earlier search, perhaps under other budgets
            point = dataclasses.replace(point, feasible=feasible(budgets, point.metrics))
        cost.learn(point)
        point.estimate = cost.estimate(point)
        points.append(point)
        if on_point is not None:
            on_point(point, time.perf_counter() - start)
        return point

    def out_of_budget() -> str:
        if time.perf_counter() - start > time_limit:
            return "time limit reached"
        return f"{max_points} points evaluated" if max_points is not None and len(points) >= max_points else ""

    for family, setting in rounds(chosen, seed):
        if family.policy in refused:
            continue
        values = family.knob.values
        low, high = -1, len(values)  # values[:low+1] assumed feasible, values[high:] not
        while high - low > 1 and not out_of_budget():
            mid = (low + high) // 2
            point = evaluate(family, setting, values[mid])
            if point.error:
                if point.error.startswith("unsupported"):
                    refused.add(family.policy)
                break
            if point.feasible:
                low = mid
            else:
                high = mid
        reason = out_of_budget()
        if reason:
            stopped = reason
            break
    for point in points:  # structures measured later refine the earlier points' estimates
        point.estimate = cost.estimate(point)
    return SearchResult(points, cost, time.perf_counter() - start, stopped)


def _measure(target: Any, spec: str, family: Family, setting: dict[str, Any], budgets: list[Budget],
             base: Callable[[], Run], backend: str) -> Point:
    structure = family.structure(setting)
    try:
        run = target.run(make_policy(spec), "search", backend)
    except UnsupportedGraphError as err:
        return Point(spec, family.policy, structure, "search", {}, 0, target.steps, 0.0, False,
                     error=f"unsupported: {first_line(err, 200)}")
    except GraphcacheError as err:
        return Point(spec, family.policy, structure, "search", {}, 0, target.steps, 0.0, False,
                     error=f"{type(err).__name__}: {first_line(err, 200)}")
    metrics = target.score(run, base(), "search")
    return Point(spec, family.policy, structure, "search", metrics, run.computed, len(run.decisions),
                 run.seconds, feasible(budgets, metrics),
                 costs={"computed": run.step_cost("computed"), "cached": run.step_cost("cached")})


@dataclasses.dataclass
class Finals:
    points: list[Point]  # held-out, measured
    base_metrics: dict[str, float]  # the uncached run's own accuracy where the target has one
    base_seconds: list[float]
    seconds: float

    @property
    def chosen(self) -> Point | None:
        ok = [p for p in self.points if p.feasible]
        return max(ok, key=lambda p: (p.speedup or 0.0)) if ok else None


def finals(target: Any, budgets: list[Budget], result: SearchResult, count: int = 3, backend: str = "inductor",
           repeats: int = 2, status: Callable[[str], None] = print) -> Finals:
    """Compile and time the ``count`` best-estimated feasible points on the held-out split, the uncached
    model before and after them (the faster uncached run is the baseline of the ratios)."""
    start = time.perf_counter()
    status(f"held-out: uncached ({target.describe('heldout')}, {backend})")
    base = target.run(None, "heldout", backend, repeats)
    measured = []
    for point in result.ranked()[:count]:
        status(f"held-out: {point.spec} (estimated {point.estimate:.2f}x)")
        try:
            run = target.run(make_policy(point.spec), "heldout", backend, repeats)
        except GraphcacheError as err:
            measured.append(dataclasses.replace(point, split="heldout", feasible=False, error=first_line(err, 200)))
            continue
        metrics = target.score(run, base, "heldout")
        measured.append(dataclasses.replace(point, split="heldout", metrics=metrics, computed=run.computed,
                                            steps=len(run.decisions), seconds=run.seconds,
                                            feasible=feasible(budgets, metrics)))
    status("held-out: uncached again")
    again = target.run(None, "heldout", backend, repeats)
    base_seconds = base.seconds_runs + again.seconds_runs
    for point in measured:
        point.speedup = min(base_seconds) / point.seconds if point.seconds else None
    base_metrics = {k: v for k, v in target.score(base, base, "heldout").items() if k == "acc"}
    return Finals(measured, base_metrics, base_seconds, time.perf_counter() - start)
