"""Predictors: what the cached branch puts in place of a cached unit, and the state it keeps.

- :class:`Reuse` (FORA, the dynamic policies): the last computed value.
- :class:`Taylor` (TaylorSeer), :class:`Hermite` (HiCache): series over finite differences;
  :class:`Newton`: divided differences over actual positions (exact for polynomials up to its order).
- :class:`FoCa`: BDF2 forecast with a Heun calibration; :class:`AdamsBashforth` (AB-Cache).
- :class:`Extrapolate` (FasterCache): the last computed value moved along its last change, weighted by
  the generation's progress.
- :func:`parse_forecast`: a predictor from a config string (``forecast=taylor:2`` on any policy).

Each matches an independent NumPy computation of its formula (tests/test_predictors.py).
"""

from __future__ import annotations

from .base import HISTORY, Clock, FromStep, Predictor, Reuse, call, clone, weighted_sum
from .faster import Extrapolate
from .ode import AdamsBashforth, FoCa
from .spec import FORECAST_HELP, FORECASTS, parse_forecast
from .taylor import Hermite, Newton, Taylor

__all__ = ["FORECASTS", "FORECAST_HELP", "HISTORY", "AdamsBashforth", "Clock", "Extrapolate", "FoCa", "FromStep",
           "Hermite", "Newton", "Predictor", "Reuse", "Taylor", "call", "clone", "parse_forecast", "weighted_sum"]
