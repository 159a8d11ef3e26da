"""The model.py contract of the CLI tools.

The file is executed as Python (imported, then ``build()`` called): only give graphcache model files you trust.

A model file defines ``build()`` returning ``(model, inputs)``: ``model`` a ``torch.nn.Module`` denoiser and
``inputs(t: float) -> dict`` the keyword arguments of one denoiser call at timestep ``t`` (the CLI runs a
decreasing sequence of ``t`` from 999 to 0, so the file decides names, shapes and timestep scale).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from graphcache.errors import ModelFileError

CONTRACT = "define build() returning (model, inputs) with inputs(t: float) -> dict of keyword arguments"


def load_model_file(path: str | Path) -> tuple[torch.nn.Module, Callable[[float], dict[str, Any]]]:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} not found; {CONTRACT}")
    spec = importlib.util.spec_from_file_location(f"graphcache_model_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ModelFileError(f"{path} is not a Python file; {CONTRACT}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise ModelFileError(f"{path} failed to import: {type(err).__name__}: {err}") from err
    build = getattr(module, "build", None)
    if not callable(build):
        raise ModelFileError(f"{path} has no build() function; {CONTRACT}")
    try:
        result = build()
    except Exception as err:
        raise ModelFileError(f"{path}: build() raised {type(err).__name__}: {err}") from err
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ModelFileError(f"{path}: build() returned {type(result).__name__}, expected (model, inputs); {CONTRACT}")
    model, inputs = result
    if not isinstance(model, torch.nn.Module):
        raise ModelFileError(f"{path}: build()[0] is {type(model).__name__}, expected a torch.nn.Module")
    if not callable(inputs):
        raise ModelFileError(f"{path}: build()[1] is {type(inputs).__name__}, expected a function inputs(t) -> dict")
    try:
        example = inputs(999.0)
    except Exception as err:
        raise ModelFileError(f"{path}: inputs(999.0) raised {type(err).__name__}: {err}") from err
    if not isinstance(example, dict):
        raise ModelFileError(f"{path}: inputs(999.0) returned {type(example).__name__}, expected a dict of kwargs")
    return model.eval(), inputs
