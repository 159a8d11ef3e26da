"""Predictors named in config: ``forecast=taylor:2`` on any policy composes its decision with a forecast."""

from __future__ import annotations

from graphcache.errors import PolicyConfigError

from .base import HISTORY, Predictor, Reuse
from .ode import AdamsBashforth, FoCa
from .taylor import Hermite, Newton, Taylor

FORECASTS = {
    "reuse": "the last computed value (no order)",
    "taylor": "TaylorSeer's series of order M (taylor:M, default 1)",
    "hermite": "HiCache's Hermite-scaled series of order M (hermite:M, default 1)",
    "newton": f"Newton's divided differences of order M (newton:M, M in 1..{HISTORY - 1}, default 1)",
    "foca": "BDF2 forecast with a Heun calibration (no order)",
    "ab": f"Adams-Bashforth of order K (ab:K, K in 1..{HISTORY}, default 2)",
}
CHOICES = " | ".join(("reuse", "taylor:M", "hermite:M", "newton:M", "foca", "ab:K"))
FORECAST_HELP = f"what cached steps use: {CHOICES}"


def parse_forecast(spec: str, owner: str = "forecast") -> Predictor:
    """``'taylor:2'`` -> ``Taylor(order=2)``; raises :class:`PolicyConfigError` naming ``owner`` and the choices."""
    name, _, order_text = str(spec).strip().lower().partition(":")
    if name not in FORECASTS:
        raise PolicyConfigError(f"option {owner}={spec!r} is invalid: choose one of {CHOICES}")
    if name in ("reuse", "foca"):
        if order_text:
            raise PolicyConfigError(f"option {owner}={spec!r} is invalid: '{name}' takes no order")
        return Reuse() if name == "reuse" else FoCa()
    try:
        order = int(order_text) if order_text else (2 if name == "ab" else 1)
    except ValueError:
        raise PolicyConfigError(f"option {owner}={spec!r} is invalid: the order after ':' must be an integer, "
                                f"e.g. {name}:2") from None
    top = {"ab": HISTORY, "newton": HISTORY - 1}.get(name, 6)
    low = 1
    if not low <= order <= top:
        raise PolicyConfigError(f"option {owner}={spec!r} is invalid: {name}'s order must be in {low}..{top}")
    if name == "ab":
        return AdamsBashforth(order=order)
    if name == "newton":
        return Newton(order=order)
    return Taylor(order=order) if name == "taylor" else Hermite(order=order)
