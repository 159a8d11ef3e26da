"""The tuned configuration file: the chosen spec, the model it was tuned for, and the measurements.

``graphcache optimize --config tuned.json``, ``graphcache export --config tuned.json`` and
``graphcache.optimize(pipe, config="tuned.json")`` read it; a model whose weights differ from the tuned
model's fingerprint is refused. A policy that reads a calibration file has it copied beside the tuned file
(``<name>.calibration.json``) and named relative to it, so the pair can move together to another machine.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from graphcache.errors import PolicyConfigError
from graphcache.policies import PolicyConfig, make_policy
from graphcache.versioned_json import read_versioned

SCHEMA = "graphcache-tuned"
VERSION = 1


def save_tuned(path: str | Path, model: torch.nn.Module, spec: str, **record: Any) -> Path:
    from graphcache.calibration import fingerprint

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = _with_calibration_beside(path, spec)
    data = {"schema": SCHEMA, "version": VERSION, "model": type(model).__name__, "fingerprint": fingerprint(model),
            "policy": spec, **record}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _with_calibration_beside(path: Path, spec: str) -> str:
    """``spec`` with its calibration file (if any) copied beside ``path`` and named relative to it."""
    config = make_policy(spec)
    source = getattr(config, "calibration", None)
    if source is None:
        return spec
    beside = path.with_name(f"{path.stem}.calibration.json")
    if Path(source).resolve() != beside.resolve():
        shutil.copyfile(source, beside)
    return dataclasses.replace(config, **{"calibration": beside.name}).spec()


def read_tuned(path: str | Path) -> dict[str, Any]:
    data = read_versioned(path, schema=SCHEMA, version=VERSION, kind="tuned config", error=PolicyConfigError,
                          fix=f"write one with `graphcache tune ... -o {path}`")
    for key in ("policy", "fingerprint", "model"):
        if not isinstance(data.get(key), str):
            raise PolicyConfigError(f"{path}: {key!r} must be a string, got {data.get(key)!r}")
    return data


def load_tuned(path: str | Path, model: torch.nn.Module | None = None) -> PolicyConfig:
    """The tuned policy of ``path``; with ``model``, refused unless it is the model that was tuned."""
    return tuned_policy(read_tuned(path), path, model)


def tuned_policy(data: dict[str, Any], path: str | Path, model: torch.nn.Module | None = None) -> PolicyConfig:
    """The policy of a tuned config already read (:func:`read_tuned`), checked against ``model``."""
    from graphcache.calibration import fingerprint

    if model is not None and fingerprint(model) != data["fingerprint"]:
        raise PolicyConfigError(f"{path} was tuned for another model ({data['model']}, fingerprint "
                                f"{data['fingerprint'][:12]}...; this {type(model).__name__} is "
                                f"{fingerprint(model)[:12]}...): tune this model with `graphcache tune`")
    try:
        config = make_policy(data["policy"])
    except PolicyConfigError as err:
        raise PolicyConfigError(f"{path}: its policy {data['policy']!r} does not parse: {err}") from err
    calibration = getattr(config, "calibration", None)
    if calibration is not None and not Path(calibration).is_absolute():  # written beside the tuned file
        config = dataclasses.replace(config, **{"calibration": str(Path(path).parent / calibration)})
    return config
