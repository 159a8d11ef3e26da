"""The plan file of an exported cache schedule (``graphcache-plan.json``, schema + version).

It says which graph files exist, what each reads and writes of the cache state, and, for the step-unrolled
form, which graph runs at each step. Loaders check the schema, the version and that every file is there
and unchanged (sha256), and say what to do when something is off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from graphcache.errors import ExportError
from graphcache.versioned_json import read_versioned

from .functional import TensorSpec

SCHEMA = "graphcache.plan"
VERSION = 1
PLAN_FILE = "graphcache-plan.json"
FORMATS = ("onnx", "aoti", "tensorrt")
FORMS = ("in-graph", "unrolled")


@dataclasses.dataclass(frozen=True)
class GraphEntry:
    file: str
    reads: list[str]  # state buffers the graph takes as inputs (all state in the in-graph form)
    writes: list[str]  # state buffers the graph returns; the others stay where they are
    sha256: str = ""


@dataclasses.dataclass
class Plan:
    format: str
    form: str
    policy: str
    model: str
    timestep: str  # the input whose value decides where a generation starts
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    state: list[TensorSpec]
    graphs: dict[str, GraphEntry]
    schedule: list[str] | None = None  # unrolled: graph name per step of one generation

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "version": VERSION, "format": self.format, "form": self.form, "policy": self.policy,
            "model": self.model, "timestep": self.timestep,
            "inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs],
            "state": [s.to_json() for s in self.state],
            "graphs": {k: dataclasses.asdict(v) for k, v in self.graphs.items()}, "schedule": self.schedule,
        }

    def save(self, directory: Path) -> Path:
        graphs = {k: dataclasses.replace(v, sha256=_sha256(directory / v.file)) for k, v in self.graphs.items()}
        self.graphs = graphs
        path = directory / PLAN_FILE
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_types(path: Path, plan: Plan, remake: str) -> None:
    """The fields the runner reads have the types it reads them as (a tampered plan fails here, by name)."""
    problems = [name for name, ok in (
        ("format", isinstance(plan.format, str)), ("form", isinstance(plan.form, str)),
        ("policy", isinstance(plan.policy, str)), ("model", isinstance(plan.model, str)),
        ("timestep", isinstance(plan.timestep, str)),
        ("schedule", plan.schedule is None or (isinstance(plan.schedule, list)
                                               and all(isinstance(g, str) for g in plan.schedule))),
        ("graphs", all(isinstance(k, str) and isinstance(e.file, str) and e.file and isinstance(e.sha256, str)
                       and all(isinstance(x, list) and all(isinstance(n, str) for n in x) for x in (e.reads, e.writes))
                       for k, e in plan.graphs.items()) and bool(plan.graphs)),
        ("inputs / outputs / state", all(
            isinstance(t.name, str) and isinstance(t.dtype, str) and all(isinstance(d, int) and d >= 0
                                                                         for d in t.shape)
            for t in (*plan.inputs, *plan.outputs, *plan.state))),
    ) if not ok]
    if problems:
        raise ExportError(f"{path}: malformed field(s) {problems}; {remake}")


def load_plan(directory: str | Path, verify: bool = True) -> Plan:
    """Read and check ``directory/graphcache-plan.json`` (and, with ``verify``, its files' checksums)."""
    directory = Path(directory)
    path = directory / PLAN_FILE
    remake = "re-export with `graphcache export model.py --policy ... -o DIR`"
    data = read_versioned(path, schema=SCHEMA, version=VERSION, kind="export plan", error=ExportError, fix=remake,
                          missing=f"{path} not found: {directory} is not a graphcache export; {remake}")
    try:
        plan = Plan(
            format=data["format"], form=data["form"], policy=data["policy"], model=data["model"],
            timestep=data["timestep"], inputs=[TensorSpec.from_json(s) for s in data["inputs"]],
            outputs=[TensorSpec.from_json(s) for s in data["outputs"]],
            state=[TensorSpec.from_json(s) for s in data["state"]],
            graphs={k: GraphEntry(**v) for k, v in data["graphs"].items()}, schedule=data.get("schedule"),
        )
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise ExportError(f"{path} is missing or has a malformed field ({err!r}); {remake}") from err
    _check_types(path, plan, remake)
    if plan.format not in FORMATS or plan.form not in FORMS:
        raise ExportError(f"{path}: format {plan.format!r} / form {plan.form!r}, expected one of {FORMATS} / {FORMS}")
    unknown = sorted({g for g in plan.schedule or [] if g not in plan.graphs})
    if unknown:
        raise ExportError(f"{path}: the schedule names graphs {unknown} that the plan does not list; {remake}")
    root = directory.resolve()
    for name, entry in plan.graphs.items():
        file = directory / entry.file
        if not file.resolve().is_relative_to(root):
            raise ExportError(f"{path}: graph '{name}' file {entry.file!r} is outside the export folder {directory}; "
                              f"a plan only names files inside it; {remake}")
        if not file.is_file():
            raise ExportError(f"graph '{name}' file {file} is missing; {remake}")
        if verify and not (isinstance(entry.sha256, str) and len(entry.sha256) == 64):
            raise ExportError(f"{path}: graph '{name}' has no sha256 checksum ({entry.sha256!r}): its file cannot be "
                              f"verified; {remake}")
        if verify and _sha256(file) != entry.sha256:
            raise ExportError(f"graph '{name}' file {file} does not match its checksum in the plan (changed or "
                              f"corrupt); {remake}")
    return plan
