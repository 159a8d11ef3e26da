"""graphcache's error hierarchy: every message says what was required, what was found, and the fix."""

from __future__ import annotations


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first line of ``err``'s message (at most ``limit`` characters), or its type's name when it has none:
    how graphcache quotes a long error from torch inside its own message."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


class GraphcacheError(Exception):
    """Base class of every error graphcache raises on purpose."""


class UnsupportedGraphError(GraphcacheError):
    """The captured graph lacks the structure a pass requires (e.g. no stack of repeated blocks)."""


class NoStackError(UnsupportedGraphError):
    """A graph holds no stack of repeated blocks (or no timestep input): under ``torch.compile`` with graph
    breaks, such a graph is a piece outside the cached region and runs as it is. ``short`` says it in a few
    words."""

    def __init__(self, message: str, short: str = "") -> None:
        super().__init__(message)
        self.short = short or message


class SmallStackError(NoStackError):
    """The repeated blocks found hold too little of the step's work for caching them to pay (a U-Net's ResNet
    pairs): the default policy ``auto`` takes DeepCache there."""


class DataDependentShapeError(UnsupportedGraphError):
    """A captured graph computes a shape from tensor values (``nonzero``, a boolean mask): graphcache's passes
    cannot follow it. Under ``torch.compile`` with graph breaks, such a graph outside the blocks runs as is."""


class PolicyConfigError(GraphcacheError, ValueError):
    """An unknown policy, an unknown option, or an option value out of range."""


class PassError(GraphcacheError):
    """A pass failed or broke an invariant; the message names the pass and those before it."""


class ModelFileError(GraphcacheError):
    """A model.py for the CLI does not follow the ``build() -> (model, inputs)`` contract."""


class ExportError(GraphcacheError):
    """A lowering (ONNX, ONNX Runtime, TensorRT, AOTInductor) failed or lacks its optional extra."""
