"""What ``graphcache tune`` searches: policy families, each a speed knob and the options around it.

A family's ``knob`` lists values from the most careful to the fastest; quality is assumed to fall as the knob
rises (the search bisects along it), which holds for every interval and threshold here. ``options`` are the
other axes; every combination of them is one *setting*, searched along the knob (``forecast_from`` only with
a forecast: with plain reuse it changes nothing). Axes named in
``structural`` change the rewritten graph (what a cached step runs), so step costs are measured per value.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

from graphcache.errors import PolicyConfigError
from graphcache.policies import available, make_policy
from graphcache.policies.spec import format_spec


@dataclasses.dataclass(frozen=True)
class Axis:
    name: str
    values: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Family:
    policy: str
    knob: Axis
    options: tuple[Axis, ...] = ()
    structural: tuple[str, ...] = ()
    needs_calibration: bool = False
    needs_steps: tuple[str, ...] = ()  # options that, when on, need the policy told the step count (num_steps)

    def settings(self, seed: int) -> list[dict[str, Any]]:
        """Every combination of the option axes: the first values first, the rest in a seeded order."""
        combos = [dict(zip([a.name for a in self.options], values, strict=True))
                  for values in itertools.product(*(a.values for a in self.options))]
        combos = [c for c in combos if not (c.get("forecast_from") and c.get("forecast", "reuse") == "reuse")]
        rest = combos[1:]
        order = np.random.default_rng(seed).permutation(len(rest)).tolist() if rest else []
        return combos[:1] + [rest[i] for i in order]

    def spec(self, setting: dict[str, Any], knob_value: Any, fixed: dict[str, Any], steps: int = 50) -> str:
        """The canonical spec of one point (options equal to the policy's defaults left out)."""
        told = {"num_steps": steps} if any(setting.get(k) for k in self.needs_steps) else {}
        return make_policy(self.policy, **fixed, **told, **setting, **{self.knob.name: knob_value}).spec()

    def structure(self, setting: dict[str, Any]) -> str:
        return format_spec(self.policy, {k: setting[k] for k in self.structural if k in setting})


INTERVALS = (2, 3, 4, 5, 6, 7, 8, 10)
FORECAST = Axis("forecast", ("reuse", "taylor:1"))  # any decision composed with a forecast (``predictor()``)
FORECAST_FROM = Axis("forecast_from", (0, 10))  # reuse before that step, forecast from it on
FAMILIES: tuple[Family, ...] = (
    Family("fora", Axis("interval", INTERVALS),
           (Axis("warmup", (0, 2)), Axis("compute_last", (False, True)), Axis("granularity", ("stack", "block")),
            FORECAST, FORECAST_FROM),
           structural=("granularity", "forecast"), needs_steps=("compute_last",)),
    Family("taylorseer", Axis("interval", (3, 4, 5, 6, 7, 8, 10)),
           (Axis("lite", (True, False)), Axis("order", (1, 2)), Axis("warmup", (3, 1))), structural=("lite", "order")),
    Family("foca", Axis("interval", (3, 4, 5, 6, 7, 8, 10)), (Axis("lite", (True,)), Axis("warmup", (3, 1))),
           structural=("lite",)),
    Family("fbcache", Axis("threshold", (0.08, 0.12, 0.16, 0.2, 0.25, 0.3, 0.4)),
           (Axis("per_sample", (False, True)), Axis("warmup", (2, 0)), FORECAST),
           structural=("per_sample", "forecast")),
    Family("magcache", Axis("threshold", (0.06, 0.12, 0.18, 0.24, 0.36, 0.5, 0.7)),
           (Axis("max_skips", (5, 3, 8)), Axis("retention", (0.1, 0.2)), FORECAST), structural=("forecast",),
           needs_calibration=True),
    Family("teacache", Axis("threshold", (0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)),
           (Axis("per_sample", (False, True)), FORECAST), structural=("per_sample", "forecast"),
           needs_calibration=True),
    Family("easycache", Axis("tau", (0.05, 0.1, 0.15, 0.2, 0.3)), (Axis("warmup", (4, 10)),)),
)


def families(names: tuple[str, ...] | list[str] = (), calibration: str | None = None) -> list[Family]:
    """The families to search (``names``: a subset by policy name; default all). Families that read a
    calibration (TeaCache, MagCache) are left out without one."""
    known = {f.policy: f for f in FAMILIES}
    for name in names:
        if name not in known:
            searchable = ", ".join(known)
            hint = "" if name in available() else f"; policies: {', '.join(available())}"
            raise PolicyConfigError(f"tune cannot search {name!r}: the searchable policies are {searchable}{hint}")
    chosen = [known[n] for n in names] if names else list(FAMILIES)
    if calibration is None:
        missing = [f.policy for f in chosen if f.needs_calibration]
        if names and missing:
            raise PolicyConfigError(f"{', '.join(missing)} read a calibration: give --calibration (made by "
                                    "`graphcache calibrate`)")
        chosen = [f for f in chosen if not f.needs_calibration]
    return chosen


def fixed_options(family: Family, calibration: str | None) -> dict[str, Any]:
    return {"calibration": calibration} if family.needs_calibration else {}


def rounds(chosen: list[Family], seed: int) -> Iterator[tuple[Family, dict[str, Any]]]:
    """(family, setting) pairs round by round: every family's first setting, then every family's second, ...
    so that a short search still tries every family."""
    per_family = [f.settings(seed + i) for i, f in enumerate(chosen)]
    for k in range(max((len(s) for s in per_family), default=0)):
        for family, settings in zip(chosen, per_family, strict=True):
            if k < len(settings):
                yield family, settings[k]
