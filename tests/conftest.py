from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
# torch.export captures of a model already captured in this run are copies of the first (graphcache.capture):
# the suite exports the same small models about a hundred times.
os.environ.setdefault("GRAPHCACHE_CAPTURE_CACHE", "1")
# the pass manager checks the invariants of passes/README.md after every pass (graphcache/passes/base.py)
os.environ.setdefault("GRAPHCACHE_CHECK", "1")

ROOT = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one thread each
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _host_decision_everywhere(monkeypatch):
    """``GRAPHCACHE_TEST_HOST_DECISION=1``: every torch.compile-route graph with a static schedule decides on
    the host as on a GPU (passes/host_decision.py), asserting at every step that the host and device clocks
    agree: the suite's generations, streams and pipelines then check that lowering too."""
    if os.environ.get("GRAPHCACHE_TEST_HOST_DECISION") == "1":
        import graphcache.rewrite as rewrite
        from graphcache.passes.host_decision import MoveDecisionToHost

        monkeypatch.setattr(rewrite, "HOST_DECISION", MoveDecisionToHost(force=True, check=True))
    yield


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch (no cached graphs, no leftover recompile counters)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def root() -> Path:
    return ROOT


CALIBRATION_STEPS = 12


@pytest.fixture(scope="session")
def dit_calibration(tmp_path_factory):
    """TeaCache / MagCache calibration of ``tiny_dit(num_layers=3, batch=2)`` over 12 steps."""
    from graphcache import calibration

    from helpers import timesteps
    from models import tiny_dit

    model, inputs = tiny_dit(num_layers=3, batch=2)
    rows = calibration.record(model, inputs, timesteps(CALIBRATION_STEPS))
    path = tmp_path_factory.mktemp("cal") / "dit.json"
    calibration.save(path, model, CALIBRATION_STEPS, **calibration.fit(rows))
    return path


def _run_summary() -> list[str]:
    """This process's lines for the end of the run: the zoo's counts (class x policy: supported / refused /
    failures) and the fuzz tests' (inputs accepted / refused with a GraphcacheError)."""
    lines = []
    fuzz = dict(getattr(sys.modules.get("test_bad_input"), "FUZZ_COUNTS", None) or {})
    fuzz.update({f"plans {k}": v for k, v in (getattr(sys.modules.get("test_export_plan"), "PLAN_FUZZ", None)
                                               or {}).items() if v})
    if fuzz:
        lines.append("fuzz: " + ", ".join(f"{k} {v}" for k, v in sorted(fuzz.items())))
    results = getattr(sys.modules.get("test_zoo"), "_RESULTS", None)
    if results:
        from zoo.matrix import optimized_by_default, summary

        cases = [c for name in sorted(results) for c in results[name]]
        supported = sum(all(c.status == "ok" for c in cs if c.policy != "auto") for cs in results.values())
        by_default = sum(optimized_by_default(cs) for cs in results.values())
        lines.append(f"zoo: {len(results)} diffusers denoisers, {by_default} optimized by the default policy (auto: "
                     f"FORA, DeepCache on a U-Net), {supported} supported under FORA, FBCache and lite TaylorSeer; "
                     f"{summary(cases)}")
    return lines


_WORKER_LINES: list[str] = []  # with pytest-xdist: what each worker reported when it finished


def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):  # an xdist worker: hand the lines to the controller
        session.config.workeroutput["graphcache_summary"] = _run_summary()


try:
    import xdist  # noqa: F401  (its hooks exist only with it)

    def pytest_testnodedown(node, error):
        _WORKER_LINES.extend(getattr(node, "workeroutput", {}).get("graphcache_summary", []))
except ImportError:
    pass


def pytest_terminal_summary(terminalreporter):
    for line in _run_summary() + _WORKER_LINES:
        terminalreporter.write_line(line)
