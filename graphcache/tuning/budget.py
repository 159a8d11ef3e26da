"""Quality budgets of ``graphcache tune``: ``'psnr>=35'``, ``'acc_drop<=1'``, ``'max_error<=1e-2'``."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

from graphcache.errors import PolicyConfigError

# metric -> (meaning, the direction that is better)
METRICS: dict[str, tuple[str, str]] = {
    "psnr": ("mean PSNR in dB vs the uncached output of the same inputs", "higher"),
    "ssim": ("mean SSIM vs the uncached image (reference model)", "higher"),
    "acc": ("class accuracy in % by the judge (reference model)", "higher"),
    "acc_drop": ("uncached class accuracy minus this accuracy, in points (reference model)", "lower"),
    "max_error": ("max |output - uncached output| over the generation", "lower"),
}
_FORM = re.compile(r"^\s*([a-z_]+)\s*(>=|<=)\s*([-+0-9.eE]+|inf)\s*$")


@dataclasses.dataclass(frozen=True)
class Budget:
    """One bound on one quality metric, measured against the uncached model on the same inputs."""

    metric: str
    op: str  # ">=" or "<="
    value: float

    @classmethod
    def parse(cls, text: str) -> Budget:
        match = _FORM.match(text) if isinstance(text, str) else None
        if match is None:
            raise PolicyConfigError(f"budget {text!r} must read METRIC>=VALUE or METRIC<=VALUE, e.g. 'psnr>=35' or "
                                    f"'acc_drop<=1'; metrics: {', '.join(METRICS)}")
        metric, op, raw = match.groups()
        if metric not in METRICS:
            raise PolicyConfigError(f"budget {text!r}: unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
        wanted = ">=" if METRICS[metric][1] == "higher" else "<="
        if op != wanted:
            raise PolicyConfigError(f"budget {text!r}: {metric} is better {METRICS[metric][1]}, so its budget is "
                                    f"'{metric}{wanted}VALUE'")
        try:
            value = float(raw)
        except ValueError:
            raise PolicyConfigError(f"budget {text!r}: {raw!r} is not a number") from None
        if math.isnan(value):
            raise PolicyConfigError(f"budget {text!r}: the bound is not a number")
        return cls(metric, op, value)

    def met(self, metrics: Mapping[str, float]) -> bool:
        value = metrics[self.metric]
        return value >= self.value if self.op == ">=" else value <= self.value

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_budgets(texts: list[str] | tuple[str, ...], available: tuple[str, ...]) -> list[Budget]:
    """Budgets from their texts; each metric must be one the target measures (``available``)."""
    if not texts:
        raise PolicyConfigError("give at least one --budget, e.g. --budget 'psnr>=30' (metrics: "
                                f"{', '.join(available)})")
    budgets = [Budget.parse(t) for t in texts]
    for budget in budgets:
        if budget.metric not in available:
            raise PolicyConfigError(f"budget {budget}: this target does not measure {budget.metric} (it measures "
                                    f"{', '.join(available)}; class accuracy needs --reference)")
    return budgets


def feasible(budgets: list[Budget], metrics: Mapping[str, float]) -> bool:
    return all(b.met(metrics) for b in budgets)
