from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch (no cached graphs, no leftover recompile counters)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def root() -> Path:
    return ROOT
