"""Write a functional graph as an ONNX model (static shapes, opset 18) and check it.

The in-graph form has one top-level ``If`` (then = the blocks, else = the predictor); the step-unrolled
graphs have none. Shapes are static, every state tensor is a named input ``gc_<name>`` and output
``gc_<name>_out``, and the file is checked with ``onnx.checker`` (full check) and strict shape inference:
what TensorRT's ONNX parser and ONNX Runtime both accept.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from graphcache.errors import ExportError

from .deps import require
from .functional import FunctionalGraph

OPSET = 18


def write_onnx(fg: FunctionalGraph, example_kwargs: Mapping[str, Any], path: Path) -> Path:
    """Export ``fg`` to ``path`` (one self-contained .onnx file) and check it."""
    inputs = fg.flat_inputs(example_kwargs)
    return onnx_file(fg.module, (*inputs, *fg.initial_state(inputs[0].device)), fg.input_names, fg.output_names,
                     path)


def onnx_file(module: torch.nn.Module, args: tuple[Any, ...], input_names: list[str], output_names: list[str],
              path: Path) -> Path:
    """``module(*args)`` exported to ``path`` with the dynamo exporter (static shapes), then checked."""
    require("onnxscript")
    quiet = io.StringIO()
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # torchvision notes
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, args, dynamo=True, input_names=input_names, output_names=output_names,
                opset_version=OPSET, verbose=False, optimize=True,
            )
            assert program is not None
            program.save(str(path), external_data=False)
    except Exception as err:
        raise ExportError(f"ONNX export of {path.name} failed: {type(err).__name__}: "
                          f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}") from err
    check_onnx(path)
    return path


def check_onnx(path: Path) -> Any:
    """``onnx.checker`` (full) and strict shape inference; returns the inferred model."""
    onnx = require("onnx")
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as err:
        raise ExportError(f"{path} fails the ONNX checker: {err}") from err


def count_ops(path: Path, op_type: str) -> int:
    """How many nodes of ``op_type`` the main graph of ``path`` has (``If`` for the in-graph form)."""
    onnx = require("onnx")
    return sum(node.op_type == op_type for node in onnx.load(str(path), load_external_data=False).graph.node)
