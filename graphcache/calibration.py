"""Calibration files for TeaCache (indicator polynomial) and MagCache (magnitude ratios by timestep).

``graphcache calibrate model.py`` runs uncached generations and records, per step, what the dynamic
policies read: the timestep-modulated input of block 0 (found by structure), the block stack's input and
output, and the model output. From those it fits

- TeaCache: ``numpy.polyfit`` of the output's step-to-step relL1 against the indicator's (degree 4),
- MagCache: ``gamma_i = mean_tokens(||r_i|| / ||r_{i-1}||)`` of the stack residual ``r``, stored by
  timestep value so a generation with another step count interpolates.

The file is JSON with ``schema``, ``version`` and the model's fingerprint (parameter names, shapes and
leading values); loading checks all three and says which command makes a new one.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import math
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch.fx import _pytree as fx_pytree

from graphcache.blockstack import BlockStack
from graphcache.errors import PolicyConfigError
from graphcache.versioned_json import read_versioned

SCHEMA = "graphcache.calibration"
VERSION = 2  # 2: the fingerprint hashes every weight byte
MAKE = "make one with `graphcache calibrate model.py -o calibration.json`"


def fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer: names, shapes, dtypes and all the bytes (streamed one tensor at a
    time), so a model with one changed weight is another model."""
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(p.shape)}:{p.dtype}:".encode())
        if p.numel():
            digest.update(p.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _recorder(model: torch.nn.Module, example: Mapping[str, Any]) -> fx.GraphModule:
    """The captured model returning (output, block 0's modulated input, stack input, stack output, timestep)."""
    from graphcache.capture import capture_export
    from graphcache.passes.base import PassManager, analysis
    from graphcache.passes.find_block_stack import FindBlockStack
    from graphcache.passes.insert_modulated_indicator import find_modulated_input

    gm, flat = capture_export(model.eval(), example)
    PassManager([FindBlockStack()], flat)(gm)
    stack = analysis(gm).require(BlockStack)
    first = stack.stacks[0]
    block = first.blocks[0]
    stream = block.inputs[first.stream_slots[0]]
    modulated = find_modulated_input(block.nodes, stream, [block.inputs[k] for k in first.shared_slots])
    stack_out = next(o for o in stack.region_outputs if tuple(o.meta["val"].shape) == tuple(stream.meta["val"].shape))
    output = next(n for n in gm.graph.nodes if n.op == "output")
    leaves = list(output.args[0])  # type: ignore[arg-type]
    output.args = ((leaves[0], modulated, stream, stack_out, stack.timestep),)
    gm.graph._codegen = fx.graph.CodeGen()  # positional inputs, a plain tuple out
    plain = fx.GraphModule(gm, gm.graph)  # without export's kwargs hooks
    plain.meta["in_spec"] = gm._in_spec
    return plain


class Recorder(torch.nn.Module):
    """Stands in for the denoiser (same call signature): runs it uncached and keeps, per call, the timestep
    as the model sees it and the tensors the fits need. Works inside a pipeline (``pipe.transformer = rec``)."""

    def __init__(self, model: torch.nn.Module, example: Mapping[str, Any]) -> None:
        super().__init__()
        self.signature = inspect.signature(model.forward)
        self.gm = _recorder(model, example)
        self.rows: list[dict[str, Any]] = []
        self.config = getattr(model, "config", None)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        bound = self.signature.bind_partial(*args, **kwargs)
        flat = fx_pytree.tree_flatten_spec(((), dict(bound.arguments)), self.gm.meta["in_spec"])
        with torch.no_grad():
            out, modulated, stack_in, stack_out, timestep = self.gm(*flat)
        self.rows.append({"t": float(timestep.reshape(-1).float().max()), "out": out, "modulated": modulated,
                          "input": stack_in, "residual": stack_out - stack_in})
        return types.SimpleNamespace(sample=out)


def record(model: torch.nn.Module, inputs: Callable[[float], dict[str, Any]], timesteps: list[float],
           progress: Callable[[Any], Any] = iter) -> list[dict[str, Any]]:
    """One uncached generation of a model file: the rows a :class:`Recorder` keeps."""
    recorder = Recorder(model, inputs(timesteps[0]))
    for t in progress(timesteps):
        recorder(**inputs(t))
    return recorder.rows


def fit(rows: list[dict[str, Any]], degree: int = 4) -> dict[str, Any]:
    """Both calibrations from one recorded generation (keep generations apart: ratios are step to step)."""
    return {"teacache": fit_teacache(rows, degree), "magcache": fit_magcache(rows)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-sample relL1(a, b) = mean|a - b| / mean|b|."""
    return ((a - b).abs().flatten(1).mean(1) / b.abs().flatten(1).mean(1)).double().numpy()


def fit_teacache(rows: list[dict[str, Any]], degree: int = 4) -> dict[str, Any]:
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
        raise PolicyConfigError(f"the TeaCache polynomial's degree must be an integer >= 1, got {degree!r}")
    if len(rows) < 2:
        raise PolicyConfigError(f"a calibration needs at least 2 steps (step-to-step changes), got {len(rows)}")
    x = np.concatenate([_rel(r["modulated"], p["modulated"]) for p, r in itertools.pairwise(rows)])
    y = np.concatenate([_rel(r["out"], p["out"]) for p, r in itertools.pairwise(rows)])
    if len(x) < degree + 1:
        raise PolicyConfigError(f"a degree-{degree} polynomial needs at least {degree + 1} points, the calibration "
                                f"run gives {len(x)} (steps - 1 per sample): calibrate with more steps or a lower "
                                "--degree")
    coefficients = np.polyfit(x, y, degree)
    return {"coefficients": coefficients.tolist(), "degree": degree, "points": len(x),
            "indicator_range": [float(x.min()), float(x.max())]}


def fit_magcache(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if len(rows) < 3:
        raise PolicyConfigError(f"MagCache's ratios need a calibration of at least 3 steps, got {len(rows)}")
    gammas = []
    for prev, row in itertools.pairwise(rows):
        now, before = row["residual"].double().norm(dim=-1), prev["residual"].double().norm(dim=-1)
        gammas.append(float((now / before).mean()))
    return {"timesteps": [r["t"] for r in rows[1:]], "ratios": gammas, "steps": len(rows)}


def save(path: str | Path, model: torch.nn.Module, steps: int, **sections: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"schema": SCHEMA, "version": VERSION, "model": type(model).__name__, "fingerprint": fingerprint(model),
            "steps": steps, **sections}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def load(path: str | Path, section: str, model: torch.nn.Module | None = None) -> dict[str, Any]:
    """The ``section`` ("teacache" / "magcache") of a calibration file, checked (and against ``model``)."""
    path = Path(path)
    data = read_versioned(path, schema=SCHEMA, version=VERSION, kind="calibration file", error=PolicyConfigError,
                          fix=MAKE)
    if model is not None and data.get("fingerprint") != fingerprint(model):
        raise PolicyConfigError(f"{path} was calibrated for another model ({data.get('model')}, fingerprint "
                                f"{data.get('fingerprint')}; this {type(model).__name__} is {fingerprint(model)}); "
                                f"{MAKE}")
    if section not in data:
        raise PolicyConfigError(f"{path} has no '{section}' calibration; {MAKE}")
    _check_section(path, section, data[section])
    return data[section]  # type: ignore[no-any-return]


# The fields each section must hold: name -> (minimum length, exact length or None) of a list of numbers.
_SECTIONS: dict[str, dict[str, tuple[int, int | None]]] = {
    "teacache": {"coefficients": (1, None), "indicator_range": (2, 2)},
    "magcache": {"timesteps": (2, None), "ratios": (2, None)},
}


def _check_section(path: Path, section: str, value: Any) -> None:
    """Every field a policy reads is there and is a list of finite numbers of the right length."""
    if not isinstance(value, dict):
        raise PolicyConfigError(f"{path}: '{section}' must be an object, got {type(value).__name__}; {MAKE}")
    for field, (minimum, exact) in _SECTIONS.get(section, {}).items():
        numbers = value.get(field)
        ok = isinstance(numbers, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers)
        length = len(numbers) if isinstance(numbers, list) else -1
        if not ok or length < minimum or (exact is not None and length != exact):
            size = f"{exact}" if exact is not None else f"at least {minimum}"
            raise PolicyConfigError(f"{path}: {section}.{field} must be a list of {size} finite numbers, got "
                                    f"{str(numbers)[:80]}; {MAKE}")
    if section == "magcache" and len(value["timesteps"]) != len(value["ratios"]):
        raise PolicyConfigError(f"{path}: magcache.timesteps and magcache.ratios differ in length; {MAKE}")
