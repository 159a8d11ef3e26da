"""Plan files, loaders and optional extras: every bad input gives an ExportError that says what to do."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphcache.errors import ExportError
from graphcache.export import export_model, load, load_plan
from graphcache.export.deps import require
from graphcache.export.plan import PLAN_FILE, VERSION
from graphcache.runner import first_tensor

from helpers import timesteps
from models import tiny_dit


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    model, inputs = tiny_dit()
    directory = tmp_path_factory.mktemp("fora_onnx")
    export_model(model, inputs(999.0), directory, "fora", "onnx", "unrolled", steps=5)
    return directory


def _edit(directory, tmp_path, change):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(directory, target)
    data = json.loads((target / PLAN_FILE).read_text())
    change(data, target)
    (target / PLAN_FILE).write_text(json.dumps(data))
    return target


def test_plan_records_schedule_state_and_checksums(onnx_export):
    plan = load_plan(onnx_export)
    assert plan.form == "unrolled" and plan.schedule == ["full", "cached", "cached", "full", "cached"]
    assert plan.timestep == "timestep" and [s.name for s in plan.inputs] == ["hidden_states", "timestep",
                                                                                "class_labels"]
    assert all(len(e.sha256) == 64 for e in plan.graphs.values())
    assert {s.name: s.fill for s in plan.state}["last_t"] == float("-inf")
    from graphcache.policies import make_policy

    assert make_policy(plan.policy) == make_policy("fora")  # the canonical spec: it parses back


def test_missing_directory(tmp_path):
    with pytest.raises(ExportError, match="is not a graphcache export; re-export with `graphcache export"):
        load(tmp_path / "nowhere")


@pytest.mark.parametrize(("change", "message"), [
    (lambda d, p: d.update(schema="other"),
     r"is not a graphcache export plan \(schema 'other', expected 'graphcache.plan'\)"),
    (lambda d, p: d.update(version=VERSION + 1), f"plan version {VERSION + 1}; this graphcache reads version"),
    (lambda d, p: d.pop("state"), "missing or has a malformed field"),
    (lambda d, p: d.update(schedule=["full", "warp"]), r"names graphs \['warp'\]"),
    (lambda d, p: (p / "cached.onnx").unlink(), "graph 'cached' file .* is missing"),
    (lambda d, p: (p / "cached.onnx").write_bytes(b"not onnx"), "does not match its checksum"),
    (lambda d, p: d.update(format="coreml"), "format 'coreml'"),
    (lambda d, p: d["graphs"]["cached"].update(sha256=""), "graph 'cached' has no sha256 checksum"),
    (lambda d, p: d["graphs"]["cached"].update(file="../../etc/passwd"), "is outside the export folder"),
    (lambda d, p: d["graphs"]["cached"].update(file="/etc/hostname"), "is outside the export folder"),
])
def test_bad_plans_are_explained(onnx_export, tmp_path, change, message):
    with pytest.raises(ExportError, match=message):
        load(_edit(onnx_export, tmp_path, change))


def test_corrupt_plan_json(onnx_export, tmp_path):
    target = _edit(onnx_export, tmp_path, lambda d, p: None)
    (target / PLAN_FILE).write_text("{not json")
    with pytest.raises(ExportError, match=r"export plan .* is corrupt \(not JSON"):
        load(target)


def test_unknown_format_and_form(tmp_path):
    model, inputs = tiny_dit()
    with pytest.raises(ExportError, match="unknown format 'tflite'; choose one of onnx, aoti, tensorrt"):
        export_model(model, inputs(999.0), tmp_path, "fora", "tflite")
    with pytest.raises(ExportError, match="unknown form 'looped'"):
        export_model(model, inputs(999.0), tmp_path, "fora", "onnx", "looped")


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ExportError, match=r"pip install 'graphcache\[onnx\]'"):
        require("onnxruntime")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_without_tensorrt_names_the_extra(onnx_export, tmp_path):
    from graphcache.export.tensorrt import build_engine

    with pytest.raises(ExportError, match=r"pip install 'graphcache\[tensorrt\]'"):
        build_engine(onnx_export / "full.onnx", tmp_path / "full.engine")
    model, inputs = tiny_dit()
    with pytest.raises(ExportError, match=r"graphcache\[tensorrt\]"):
        export_model(model, inputs(999.0), tmp_path / "trt", "fora", "tensorrt", steps=3)


def test_aoti_package_runs_a_generation(tmp_path):
    """AOTInductor: the in-graph .pt2 (with its cond) runs two generations like the torch graph."""
    model, inputs = tiny_dit()
    exported = export_model(model, inputs(999.0), tmp_path, "taylorseer", "aoti", "in-graph", steps=8)
    assert (tmp_path / "step.pt2").is_file()
    runner = load(tmp_path)
    exported.cached.state.reset()
    with torch.no_grad():
        for _ in range(2):
            for t in timesteps(8):
                kwargs = inputs(t)
                want = first_tensor(exported.cached(**kwargs))
                assert float((runner(**kwargs) - want).abs().max()) < 1e-4
            assert runner.decisions() == exported.cached.state.decisions()
    assert "cached" in runner.decisions()


def test_runner_checks_dtypes_and_takes_positional_inputs(onnx_export):
    _model, inputs = tiny_dit()
    runner = load(onnx_export)
    kwargs = inputs(999.0)
    names = [s.name for s in runner.plan.inputs]
    positional = runner(*[kwargs[n] for n in names])
    assert torch.equal(positional, load(onnx_export)(**kwargs))
    with pytest.raises(ExportError, match=r"input 'hidden_states' has dtype torch.float64; the export was traced "
                                          r"with float32"):
        runner(**{**kwargs, "hidden_states": kwargs["hidden_states"].double()})
    with pytest.raises(ExportError, match=r"unknown inputs \['hidden'\]"):
        runner(hidden=1, **kwargs)
    with pytest.raises(ExportError, match=r"given both by position and by name"):
        runner(kwargs["hidden_states"], **kwargs)


_JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2, 70), st.floats(), st.text(max_size=6)),
                     lambda inner: st.one_of(st.lists(inner, max_size=3),
                                             st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=6)
_FIELDS = ["format", "form", "policy", "model", "timestep", "inputs", "outputs", "state", "graphs", "schedule",
           "graphs.full", "graphs.cached", "graphs.cached.file", "graphs.cached.sha256", "inputs.0", "state.0.shape"]
PLAN_FUZZ: dict[str, int] = {"loaded": 0, "refused": 0}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(_FIELDS), value=_JSON)
def test_fuzz_tampered_plans_load_or_are_refused_by_name(onnx_export, tmp_path_factory, where, value):
    """A plan with any field replaced by any JSON value loads, or raises ExportError: never another type."""
    def change(data, _path):
        *parents, key = where.split(".")
        target = data
        for parent in parents:
            target = target[int(parent)] if isinstance(target, list) else target[parent]
        if isinstance(target, list):
            target[int(key)] = value
        else:
            target[key] = value

    try:
        load_plan(_edit(onnx_export, tmp_path_factory.mktemp("fuzz"), change))
        PLAN_FUZZ["loaded"] += 1
    except ExportError as err:
        assert str(err).strip()
        PLAN_FUZZ["refused"] += 1
