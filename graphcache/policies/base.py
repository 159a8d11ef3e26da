"""Policies are data: a frozen config (fields = the method's published parameters) + the passes it runs."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from graphcache.errors import PolicyConfigError


def option(default: Any, help: str, minimum: float | None = None, maximum: float | None = None,
           choices: tuple[Any, ...] | None = None, note: str = "") -> Any:
    """A policy field with its help text (shown by ``graphcache policies``) and its constraints as data:
    ``minimum`` / ``maximum`` (inclusive) and ``choices``, checked for every policy before ``validate()``
    (``note`` is appended to the refusal, e.g. ``" (1 computes every step)"``)."""
    constraints = {k: v for k, v in (("minimum", minimum), ("maximum", maximum), ("choices", choices)) if v is not None}
    return dataclasses.field(default=default, metadata={"help": help, "note": note, **constraints})


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Base of every policy config. Subclasses set ``name``, ``summary``, ``paper`` and implement ``passes``."""

    name: ClassVar[str] = "policy"
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    static: ClassVar[bool] = True  # the schedule depends on the step index only (expected() is exact)

    def __post_init__(self) -> None:
        self._check_types()
        self._check_constraints()
        self.validate()

    def _check_constraints(self) -> None:
        """The constraints declared next to each field (:func:`option`); None passes (optional fields)."""
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None:
                continue
            low, high, choices = meta.get("minimum"), meta.get("maximum"), meta.get("choices")
            kind = "an integer" if isinstance(value, int) and not isinstance(value, float) else "a number"
            if choices is not None:
                require(value in choices, self.name, f.name, value,
                        "must be " + " or ".join(repr(c) for c in choices) + meta.get("note", ""))
            elif low is not None and high is not None:
                require(low <= value <= high, self.name, f.name, value,
                        f"must be {kind} in {low}..{high}{meta.get('note', '')}")
            elif low is not None:
                require(value >= low, self.name, f.name, value, f"must be {kind} >= {low}{meta.get('note', '')}")
            elif high is not None:
                require(value <= high, self.name, f.name, value, f"must be {kind} <= {high}{meta.get('note', '')}")

    def _check_types(self) -> None:
        """Each field holds its declared type: ``interval=True`` or ``num_steps=2.5`` are refused by name (a
        bool is not an int here, an int is a float, None only where the field is optional)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, tp = getattr(self, f.name), hints[f.name]
            args = typing.get_args(tp)
            optional = type(None) in args
            bases = tuple(a for a in args if a is not type(None)) if args and typing.get_origin(tp) is not tuple \
                else (tp,)
            if value is None and optional:
                continue
            if not all(b in (bool, int, float, str) for b in bases):
                continue  # containers and nested configs: checked by validate()
            ok = any(_is(value, b) for b in bases)
            if not ok:
                wanted = " or ".join(_type_name(b) for b in bases) + (" or None" if optional else "")
                raise PolicyConfigError(f"option {self.name}.{f.name}={value!r} is invalid: expects {wanted}, got "
                                        f"{type(value).__name__}")

    def validate(self) -> None:
        """Raise :class:`PolicyConfigError` naming the field, the value and the accepted range."""

    def passes(self) -> list[Any]:
        raise NotImplementedError

    def instead_of_no_stack(self, gm: Any) -> PolicyConfig | None:
        """The policy to apply to ``gm`` when this one's passes found no stack of repeated blocks worth caching
        (:class:`graphcache.errors.NoStackError`); None: refuse (``auto`` takes DeepCache on a U-Net)."""
        return None

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise :class:`PolicyConfigError` when the policy's data (a calibration) does not fit ``model``."""

    def predictor(self) -> Any:
        """What cached steps use: the predictor the ``forecast`` field names (:func:`forecast_option`),
        plain reuse for a policy without one. Raises :class:`PolicyConfigError` for a bad name."""
        from graphcache.predictors import FromStep, Reuse, parse_forecast

        spec = getattr(self, "forecast", None)
        predictor = Reuse() if spec is None else parse_forecast(spec, f"{self.name}.forecast")
        start = getattr(self, "forecast_from", 0)
        require(isinstance(start, int) and start >= 0, self.name, "forecast_from", start, "must be an integer >= 0")
        return FromStep(predictor, start) if start > 0 and not isinstance(predictor, Reuse) else predictor

    def rule(self, i: torch.Tensor) -> torch.Tensor:
        """Static schedule: compute at step index ``i`` (a tensor); traced into the graph."""
        raise NotImplementedError

    def expected(self, steps: int) -> list[bool]:
        """The schedule of one generation of ``steps`` steps (True = compute; step 0 always computes)."""
        i = torch.arange(steps)
        return (self.rule(i) | (i == 0)).tolist()  # type: ignore[no-any-return]

    def spec(self) -> str:
        """The canonical spec: the fields that differ from the defaults, written in the option grammar
        (:mod:`graphcache.policies.spec`); ``make_policy(config.spec()) == config``."""
        from graphcache.policies.spec import format_spec

        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changed = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if getattr(self, f.name) != defaults[f.name]}
        return format_spec(self.name, changed)

    def describe(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{self.name}({fields})"

    @classmethod
    def field_constraints(cls) -> dict[str, str]:
        """Each constrained field's accepted values, from the constraints declared with :func:`option`."""
        out = {}
        for f in dataclasses.fields(cls):
            low, high, choices = (f.metadata.get(k) for k in ("minimum", "maximum", "choices"))
            if choices is not None:
                out[f.name] = " | ".join(repr(c) for c in choices)
            elif low is not None or high is not None:
                out[f.name] = f"{low}..{high}" if low is not None and high is not None else (
                    f">= {low}" if low is not None else f"<= {high}")
        return out

    @classmethod
    def field_docs(cls) -> list[tuple[str, str, Any, str]]:
        """``(name, type, default, help)`` per field, for ``graphcache policies`` and the docs."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
        return rows

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PolicyConfig:
        """Build from keyword options or ``--set key=value`` strings, converting strings to the field types."""
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise PolicyConfigError(
                f"policy '{cls.name}' has no option {unknown}; its options are {sorted(known)}"
            )
        values = {k: _convert(cls.name, k, v, hints[k]) for k, v in options.items()}
        return cls(**values)


def _is(value: Any, base: type) -> bool:
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, base)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(policy: str, key: str, value: Any, tp: Any) -> Any:
    if not isinstance(value, str):
        return value
    args = typing.get_args(tp)
    base = next((a for a in args if a is not type(None)), tp) if args else tp
    if value.lower() in ("none", "null") and type(None) in args:
        return None
    try:
        if base is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base in (int, float):
            return base(value)
    except ValueError:
        raise PolicyConfigError(
            f"option {policy}.{key} expects {_type_name(base)}, got {value!r}; e.g. --set {key}=3"
        ) from None
    return value


def per_sample_option() -> Any:
    """The ``per_sample`` field of the dynamic policies (see :func:`pooled`)."""
    return option(True, "each sample decides (a batch computes when any sample needs it, the others keep their "
                  "cache); False: one decision from the batch-mean indicator")


def buckets_option() -> Any:
    """The ``buckets`` field of the dynamic policies (see :mod:`graphcache.buckets`)."""
    return option(0, "per-sample compute steps run the blocks only for the samples that need them, gathered into "
                  "the smallest of this many bucket batch sizes (B/(n+1), 2B/(n+1), ...; the whole batch above "
                  "them); each bucket adds a copy of the blocks to the compiled graph. 0: the whole batch runs "
                  "when any sample needs a step. graphcache.optimize only (a capture per bucket size)", minimum=0)


def forecast_option(default: str = "reuse") -> Any:
    """The ``forecast`` field: compose the policy's decision with any predictor (see ``predictor()``)."""
    from graphcache.predictors import FORECAST_HELP

    return option(default, FORECAST_HELP)


def forecast_from_option() -> Any:
    """The ``forecast_from`` field: reuse before that step, forecast from it on (see ``predictor()``)."""
    return option(0, "cached steps before this step reuse the last computed value; the forecast starts here "
                  "(graphcache's knob for models whose early features do not extrapolate)")


def pair_halves_option() -> Any:
    """The ``pair_halves`` field of the per-sample policies (see :func:`pooled`)."""
    return option(False, "the batch is a guidance pair of halves (conditional and unconditional, either order): "
                  "sample i and i + B/2 decide together, from the mean of their indicators (one decision per "
                  "prompt instead of two)")


def pooled(signal: torch.Tensor, per_sample: bool, pair_halves: bool = False) -> torch.Tensor:
    """``signal`` as is when each sample decides, its batch mean for every sample when not; with
    ``pair_halves`` (and per sample) the mean of samples ``i`` and ``i + B/2`` for both."""
    if not per_sample:
        return signal.mean(0, keepdim=True).expand_as(signal)
    if pair_halves:
        halves = signal.reshape(2, -1).mean(0)
        return torch.cat([halves, halves])
    return signal


def require_int(config: PolicyConfig, key: str, minimum: int, note: str = "") -> None:
    """``config.<key>`` must be an integer >= ``minimum`` (``note`` is appended to the message)."""
    value = getattr(config, key)
    require(isinstance(value, int) and value >= minimum, config.name, key, value,
            f"must be an integer >= {minimum}{note}")


def require_window(config: PolicyConfig) -> None:
    """The timestep window options (``window_low`` < ``window_high`` on the 1000 scale, ``timestep_scale``)."""
    low, high, scale = config.window_low, config.window_high, config.timestep_scale  # type: ignore[attr-defined]
    require(0 <= low < high, config.name, "window_low", low, f"must be >= 0 and below window_high={high}")
    require(scale > 0, config.name, "timestep_scale", scale, "must be > 0")


def in_window(t: torch.Tensor, low: float, high: float, scale: float) -> torch.Tensor:
    """``low < t * scale < high``: the timestep (brought to the 1000 scale) inside an open window."""
    scaled = t * scale
    return (scaled > low) & (scaled < high)


def require(condition: bool, policy: str, key: str, value: Any, rule: str) -> None:
    """Raise a :class:`PolicyConfigError` unless ``condition``: ``fora.interval=0: must be >= 1``."""
    if not condition:
        raise PolicyConfigError(f"option {policy}.{key}={value!r} is invalid: {rule}")
