"""Evaluated points of a search, and the file they are appended to as they finish (a search resumes from it)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class Point:
    """One configuration measured on one split."""

    spec: str
    family: str
    structure: str  # the graph's shape: points of one structure share their step costs
    split: str
    metrics: dict[str, float]
    computed: int
    steps: int
    seconds: float  # wall time of the generation, on the split's backend
    feasible: bool
    costs: dict[str, float | None] = dataclasses.field(default_factory=dict)  # mean computed / cached call
    estimate: float = 0.0  # estimated end-to-end speedup (search points)
    speedup: float | None = None  # measured end-to-end speedup (held-out points, same run as uncached)
    error: str = ""  # the policy was refused on this model

    @property
    def limit(self) -> float:
        return self.steps / max(1, self.computed)

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class PointStore:
    """``points.jsonl`` in the report folder: a header naming the search, then one line per point. A file
    written for another search (other model, inputs or backend) is started over."""

    def __init__(self, folder: Path | None, header: dict[str, Any], fresh: bool = False) -> None:
        self.path = folder / "points.jsonl" if folder is not None else None
        self.points: dict[tuple[str, str], Point] = {}
        self.baseline: dict[str, Any] | None = None
        self.resumed = 0
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [] if fresh or not self.path.exists() else self.path.read_text().splitlines()
        if lines and _loads(lines[0]) == {"kind": "header", **header}:
            for line in lines[1:]:
                entry = _loads(line)
                if entry.get("kind") == "point":
                    entry.pop("kind")
                    try:
                        point = Point(**entry)
                    except TypeError:
                        continue  # written by another version of graphcache
                    self.points[(point.split, point.spec)] = point
                elif entry.get("kind") == "uncached":
                    self.baseline = entry
            self.resumed = len(self.points)
        else:
            self.path.write_text(json.dumps({"kind": "header", **header}) + "\n")

    def get(self, split: str, spec: str) -> Point | None:
        return self.points.get((split, spec))

    def _append(self, entry: dict[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    def add(self, point: Point) -> None:
        self.points[(point.split, point.spec)] = point
        self._append({"kind": "point", **point.row()})

    def set_baseline(self, seconds: float, step: float) -> None:
        self.baseline = {"kind": "uncached", "seconds": seconds, "step": step}
        self._append(self.baseline)


def _loads(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return {}  # a line cut short by an interrupted search
    return value if isinstance(value, dict) else {}
