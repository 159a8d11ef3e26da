"""The runs: diffusers' hooks eager and compiled, graphcache and the uncached baseline, per (model, method)
(:func:`side_by_side`), over every model x method (:func:`compare`)."""

from __future__ import annotations

import copy
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from graphcache.errors import GraphcacheError
from graphcache.vs_diffusers.generation import Run, generate
from graphcache.vs_diffusers.mappings import METHODS, Mapping, Settings, mapping
from graphcache.vs_diffusers.report import Agreement, Comparison, Row, step_medians
from graphcache.vs_diffusers.subjects import MODELS, Clock, Status, Subject, quiet, subject


def _probes(subj: Subject, m: Mapping, model: torch.nn.Module) -> list[torch.nn.Module]:
    found = m.probes(model) if m.probes is not None else [subj.probe(model)]
    if not found:
        raise ValueError(f"{subj.name}: no module to tell a computed {m.method} step by")
    return found


def hooked_model(subj: Subject, m: Mapping, clock: Clock) -> torch.nn.Module:
    """A copy of the model with diffusers' hooks of ``m`` applied."""
    hooked = copy.deepcopy(subj.model)
    m.apply(hooked, clock)
    return hooked



def counters_clear() -> None:
    torch._dynamo.utils.counters.clear()


def dynamo_counts() -> tuple[int, int]:
    counters = torch._dynamo.utils.counters
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def baseline(subj: Subject, backend: str) -> Callable[..., Any]:
    """The uncached model compiled from a clean dynamo state (and compiled: one short generation)."""
    torch._dynamo.reset()
    base_fn = torch.compile(subj.model, fullgraph=True, dynamic=False, backend=backend)
    generate(subj, base_fn, 4)
    return base_fn


def _graphcache(subj: Subject, m: Mapping, backend: str) -> Any:
    import graphcache

    return graphcache.optimize(subj.model, m.policy, backend=backend)


def decisions(subj: Subject, m: Mapping, steps: int, backend: str = "eager") -> Agreement:
    """Both sides' per-step decisions over one generation, untimed: diffusers' hooks eager, graphcache with
    ``backend`` (``eager`` / ``aot_eager``: no Inductor compile)."""
    clock = Clock()
    hooked = hooked_model(subj, m, clock)
    theirs = generate(subj, hooked, steps, _probes(subj, m, hooked), hooked, clock)
    fast = _graphcache(subj, m, backend)
    ours = generate(subj, fast, steps)
    assert theirs.computed is not None
    return Agreement(subj.name, m.method, tuple(theirs.computed), tuple(d == "computed" for d in fast.decisions()),
                     m.exact, m.why_differ, float((theirs.out - ours.out).abs().max()))


def side_by_side(subj: Subject, m: Mapping, settings: Settings, status: Status = quiet
                 ) -> tuple[list[Row], Agreement]:
    """The three timed rows of one (model, method) and the decisions of both sides."""
    steps, repeats, backend = settings.steps, settings.repeats, settings.backend
    clock = Clock()
    hooked = hooked_model(subj, m, clock)
    status(f"{subj.name} {m.method}: diffusers' hooks, eager (decisions)")
    theirs = generate(subj, hooked, steps, _probes(subj, m, hooked), hooked, clock).computed
    assert theirs is not None
    # phase 1, diffusers: the baseline timed first, then the hooks eager, then compiled. Not in turn: a compiled
    # hook graph-breaks inside the blocks' loop, and dynamo then skips the model's forward for every later
    # torch.compile of that class until a reset (the baseline would run eager)
    status(f"{subj.name} {m.method}: uncached baseline, compiling and timing ({backend})")
    base_fn = baseline(subj, backend)
    base_runs = [generate(subj, base_fn, steps) for _ in range(repeats)]
    status(f"{subj.name} {m.method}: diffusers' hooks, eager, timing")
    hook_runs = [generate(subj, hooked, steps, hooked=hooked, clock=clock) for _ in range(repeats)]
    status(f"{subj.name} {m.method}: diffusers' hooks under torch.compile, compiling and timing")
    counters_clear()
    compiled_hooks = torch.compile(hooked, dynamic=False, backend=backend)
    generate(subj, compiled_hooks, steps, hooked=hooked, clock=clock)  # compile (a full run: hooks' Python state)
    hook_graphs = dynamo_counts()
    compiled_runs = [generate(subj, compiled_hooks, steps, hooked=hooked, clock=clock) for _ in range(repeats)]
    base_hooks = statistics.median(r.seconds for r in base_runs)
    # phase 2, graphcache: a fresh baseline, then graphcache in turn with it
    status(f"{subj.name} {m.method}: graphcache {m.label}, compiling and timing in turn with a fresh baseline")
    base_fn = baseline(subj, backend)
    base_runs = []
    counters_clear()
    fast = _graphcache(subj, m, backend)
    generate(subj, fast, steps)  # compile
    ours_graphs = dynamo_counts()
    ours_runs = []
    for _ in range(repeats):
        base_runs.append(generate(subj, base_fn, steps))
        fast.reset()
        ours_runs.append(generate(subj, fast, steps))
    ours = [d == "computed" for d in fast.decisions()]
    base = statistics.median(r.seconds for r in base_runs)
    ref = base_runs[0].out
    between = float((hook_runs[0].out - ours_runs[0].out).abs().max())

    def row(run: str, runs: list[Run], decided: Sequence[bool], graphs: tuple[int, int] | None, base_seconds: float,
            other: float | None = None) -> Row:
        return Row(subj.name, m.method, run, statistics.median(r.seconds for r in runs), base_seconds, steps,
                   sum(decided), graphs[0] if graphs else None, graphs[1] if graphs else None,
                   float((runs[0].out - ref).abs().max()), other, *step_medians(runs, decided))

    rows = [row("diffusers hooks, eager", hook_runs, theirs, None, base_hooks),
            row("diffusers hooks, torch.compile", compiled_runs, theirs, hook_graphs, base_hooks),
            row(f"graphcache {m.label}", ours_runs, ours, ours_graphs, base, between)]
    agreement = Agreement(subj.name, m.method, tuple(theirs), tuple(ours), m.exact, m.why_differ, between)
    return rows, agreement


def compare(models: tuple[str, ...] | list[str] = MODELS, methods: tuple[str, ...] | list[str] = METHODS,
            settings: Settings | None = None, status: Status = quiet,
            subjects: dict[str, Subject] | None = None) -> Comparison:
    """The side by side for every model x method (``subjects``: models by key instead of the built-in ones)."""
    settings = settings or Settings()
    unknown = sorted(set(methods) - set(METHODS)) + sorted(set(models) - set(MODELS) - set(subjects or {}))
    if unknown:
        raise ValueError(f"unknown {unknown}; methods: {', '.join(METHODS)}; models: {', '.join(MODELS)}")
    result = Comparison(settings)
    for key in models:
        status(f"building {key}")
        subj = (subjects or {}).get(key) or subject(key)
        if settings.device != "cpu" or settings.dtype is not None:
            subj = subj.to(settings.device, settings.dtype)
        for method in methods:
            with tempfile.TemporaryDirectory(prefix="graphcache-vs-diffusers-") as tmp:
                m = mapping(method, subj, settings, Path(tmp), status)
                if m is None:
                    status(f"{subj.name} {method}: not applicable, skipped")
                    continue
                result.mappings.append((subj.name, method, f"{m.diffusers_config} vs {m.label}", m.note))
                try:
                    rows, agreement = side_by_side(subj, m, settings, status)
                except GraphcacheError as err:  # graphcache refused this model: said with the table, the rest runs
                    result.failures.append(f"{subj.name} {method}: graphcache {m.label} failed, no row: "
                                           f"{type(err).__name__}: {err}")
                    status(result.failures[-1])
                    continue
            result.rows.extend(rows)
            result.agreements.append(agreement)
            status(f"{subj.name} {method}: decisions " + ("identical" if agreement.identical else
                                                          f"differ at steps {agreement.differing_steps}"))
    return result
