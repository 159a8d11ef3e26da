"""The side by side's records: both sides' decisions (:class:`Agreement`), the timed rows (:class:`Row`) and
the whole comparison (:class:`Comparison`) with its table, notes and caption."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

import torch

from graphcache.vs_diffusers.generation import Run
from graphcache.vs_diffusers.mappings import Settings


@dataclasses.dataclass(frozen=True)
class Agreement:
    """The per-step decisions of both sides for one (model, method) (True = computed)."""

    model: str
    method: str
    diffusers: tuple[bool, ...]
    graphcache: tuple[bool, ...]
    exact: bool
    why_differ: str
    max_diff: float  # max |diffusers' final latent - graphcache's| (eager hooks vs graphcache)

    @property
    def identical(self) -> bool:
        return self.diffusers == self.graphcache

    @property
    def differing_steps(self) -> list[int]:
        return [i for i, (a, b) in enumerate(zip(self.diffusers, self.graphcache, strict=True)) if a != b]

    def describe(self) -> str:
        pattern = "  diffusers  {}\n  graphcache {}".format(
            "".join("C" if d else "." for d in self.diffusers), "".join("C" if d else "." for d in self.graphcache))
        verdict = "identical" if self.identical else f"differ at steps {self.differing_steps}: {self.why_differ}"
        return (f"{self.model} {self.method}: computed steps diffusers {sum(self.diffusers)}, graphcache "
                f"{sum(self.graphcache)}; decisions {verdict}\n{pattern}")


@dataclasses.dataclass(frozen=True)
class Row:
    """One timed configuration of the table. ``ratio`` = the uncached compiled model's median time / this
    one's; ``pct_of_limit`` = ratio / (steps / computed), in percent (the schedule's limit counts cached steps
    as free)."""

    model: str
    method: str
    run: str
    seconds: float  # median over the repeats
    baseline_seconds: float  # the uncached compiled model's median in the same phase
    steps: int
    computed: int
    graphs: int | None  # graphs dynamo made (None: eager)
    breaks: int | None
    error: float  # max |final latent - the uncached one|
    vs_other: float | None = None  # max |diffusers' final latent - graphcache's| (graphcache's row)
    computed_ms: float | None = None  # median computed / cached call of the fastest run (CPU runs only)
    cached_ms: float | None = None

    @property
    def ratio(self) -> float:
        return self.baseline_seconds / self.seconds

    @property
    def limit(self) -> float:
        return self.steps / self.computed

    @property
    def pct_of_limit(self) -> float:
        return 100 * self.ratio / self.limit

    def markdown(self) -> str:
        graphs = "eager" if self.graphs is None else f"{self.graphs}, {self.breaks}"
        other = "" if self.vs_other is None else f"{self.vs_other:.2e}"
        steps = "" if self.computed_ms is None else (
            f"{self.computed_ms:.2f} / " + ("-" if self.cached_ms is None else f"{self.cached_ms:.2f}"))
        return (f"| {self.model} | {self.method} | {self.run} | {self.ratio:.2f}x | {self.computed}/{self.steps} | "
                f"{self.pct_of_limit:.0f}% | {graphs} | {self.error:.2e} | {other} | {steps} |")


TABLE_HEADER = ("| model | method | run | ratio | computed | % of limit | graphs, breaks | max err vs uncached | "
                "max diff diffusers vs graphcache | computed / cached step (ms) |\n"
                "|---|---|---|---|---|---|---|---|---|---|")


def step_medians(runs: list[Run], computed: Sequence[bool]) -> tuple[float | None, float | None]:
    """The median computed and cached call (ms) of the fastest of ``runs`` (None without per-call times)."""
    fastest = min(runs, key=lambda r: r.seconds)
    if fastest.step_seconds is None:
        return None, None
    split = {kind: [1e3 * s for s, c in zip(fastest.step_seconds, computed, strict=True) if c is kind]
             for kind in (True, False)}
    return (statistics.median(split[True]) if split[True] else None,
            statistics.median(split[False]) if split[False] else None)


@dataclasses.dataclass
class Comparison:
    settings: Settings
    rows: list[Row] = dataclasses.field(default_factory=list)
    agreements: list[Agreement] = dataclasses.field(default_factory=list)
    mappings: list[tuple[str, str, str, str]] = dataclasses.field(default_factory=list)  # model, method, both, note
    failures: list[str] = dataclasses.field(default_factory=list)  # (model, method) pairs graphcache refused
    threads: int = dataclasses.field(default_factory=torch.get_num_threads)

    def caption(self) -> str:
        s = self.settings
        where = f"CPU threads {self.threads}" if s.device == "cpu" else f"{_device_name(s.device)}, {s.dtype}"
        return (f"{s.steps} steps, DDIM, batch 1, backend {s.backend}, {where}, median of "
                f"{s.repeats}; ratio = uncached compiled time / this time; % of limit = ratio / (steps / computed)")

    def table(self) -> str:
        return "\n".join([TABLE_HEADER, *(r.markdown() for r in self.rows)])

    def notes(self) -> list[str]:
        """One line per (model, method): the settings on both sides and how far the mapping is exact."""
        return [f"{model} {method}: {both}. {note}" for model, method, both, note in self.mappings]

    def decisions(self) -> list[str]:
        """Per (model, method): both sides' computed steps, C = computed, and why they differ where they do."""
        return [a.describe() for a in self.agreements]


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else device

