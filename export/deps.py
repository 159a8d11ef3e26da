"""Optional dependencies of the lowerings: a missing one is an ``ExportError`` naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from graphcache.errors import ExportError

EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "polygraphy": "onnx", "tensorrt": "tensorrt"}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise an ``ExportError`` that says which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = EXTRAS.get(module.split(".")[0], module)
        raise ExportError(
            f"this lowering needs the '{module}' package, which is not installed ({err}); install it with "
            f"`pip install 'graphcache[{extra}]'`"
        ) from err
