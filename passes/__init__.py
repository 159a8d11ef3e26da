"""graphcache's graph passes, one per file; passes/README.md lists their order and invariants."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .add_cache_state import AddCacheState
from .base import Pass, PassManager, PassResult
from .find_block_stack import FindBlockStack
from .find_unet_skip import FindUNetSkip
from .insert_cache_branch import InsertCacheBranch
from .insert_decision import InsertDecision
from .insert_magnitude_signal import InsertMagnitudeSignal
from .insert_modulated_indicator import InsertModulatedIndicator
from .insert_probe_indicator import InsertProbeIndicator
from .insert_transform_rate import InsertTransformRate
from .insert_verification_signal import InsertVerificationSignal
from .plan_attention_units import PlanAttentionUnits
from .plan_cache_units import PlanCacheUnits
from .plan_delta_units import PlanDeltaUnits
from .split_probe import SplitProbeBlocks
from .split_tail import SplitTailBlocks


def default_pipeline(granularity: str, predictor: Any, rule: Any, probe_blocks: int = 0,
                     signals: Sequence[Pass] = (), accumulators: tuple[tuple[str, float], ...] = (),
                     tail_blocks: int = 0, find: Pass | None = None, plan: Pass | None = None,
                     reads_timestep: bool = False) -> list[Pass]:
    """The pass order every caching policy uses; policies choose granularity, predictor and decision rule.

    ``probe_blocks > 0`` (dynamic policies): the first blocks run every step as a probe and their residual's
    per-sample change becomes an argument of ``rule``. ``signals``: other indicator passes (their signals
    follow the probe's); ``accumulators``: per-sample buffers the rule reads and returns; ``tail_blocks``: the
    last blocks run every step too (DBCache's Bn); ``find``: the pass that finds the cached region
    (default: the stack of repeated blocks; DeepCache: a U-Net's deep part); ``plan``: the pass that
    chooses the cached units (default: ``PlanCacheUnits(granularity)``; Delta-DiT: block-range deltas; PAB:
    attention outputs by kind); ``reads_timestep``: ``rule(i, t, ...)`` also gets the timestep value.
    """
    probe = [SplitProbeBlocks(blocks=probe_blocks)] if probe_blocks else []
    indicator = [InsertProbeIndicator()] if probe_blocks else []
    return [
        find or FindBlockStack(),
        *probe,
        *([SplitTailBlocks(blocks=tail_blocks)] if tail_blocks else []),
        plan or PlanCacheUnits(granularity=granularity),
        AddCacheState(predictor=predictor),
        *indicator,
        *signals,
        InsertDecision(rule=rule, accumulators=accumulators, reads_timestep=reads_timestep),
        InsertCacheBranch(predictor=predictor),
    ]


__all__ = [
    "AddCacheState",
    "FindBlockStack",
    "FindUNetSkip",
    "InsertCacheBranch",
    "InsertDecision",
    "InsertMagnitudeSignal",
    "InsertModulatedIndicator",
    "InsertProbeIndicator",
    "InsertTransformRate",
    "InsertVerificationSignal",
    "Pass",
    "PassManager",
    "PassResult",
    "PlanAttentionUnits",
    "PlanCacheUnits",
    "PlanDeltaUnits",
    "SplitProbeBlocks",
    "SplitTailBlocks",
    "default_pipeline",
]


def all_passes() -> list[type[Pass]]:
    """Every pass class of this package, in file order."""
    import importlib
    import pkgutil

    found: list[type[Pass]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += [v for v in vars(module).values()
                  if isinstance(v, type) and issubclass(v, Pass) and v is not Pass and v.__module__ == module.__name__]
    return found


def markdown_table() -> str:
    """passes/README.md's table of every pass, generated from the classes (a test keeps it in sync)."""
    import inspect

    def keys(names: Sequence[str]) -> str:
        return ", ".join(f"`{n}`" for n in names) or "-"

    lines = ["| pass | file | requires | provides | replaces | what it does |", "|---|---|---|---|---|---|"]
    for cls in all_passes():
        module = inspect.getmodule(cls)
        doc = (module.__doc__ if module is not None and module.__doc__ else cls.__doc__ or "").strip()
        summary = doc.split("\n\n")[0].replace("\n", " ").split(". ")[0].rstrip(".").replace("|", "/")
        file = module.__name__.rsplit(".", 1)[-1] + ".py" if module is not None else "?"
        lines.append(f"| `{cls.name}` | `{file}` | {keys(cls.requires)} | {keys(cls.provides)} | {keys(cls.updates)} "
                     f"| {summary} |")
    return "\n".join(lines)
