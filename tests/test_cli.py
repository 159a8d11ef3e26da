"""The graphcache CLI: optimize a model.py, list policies, clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from graphcache.cli import main
from graphcache.host_schedule import DYNAMIC


def test_policies_lists_fields():
    result = CliRunner().invoke(main, ["policies"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for word in ("fora", "interval", "granularity", "arxiv.org/abs/2407.01425"):
        assert word in result.output


def test_optimize_example_dit(root, tmp_path):
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(
        main, ["optimize", str(root / "examples" / "dit.py"), "--steps", "7", "--set", "interval=3",
               "--json", str(report_path)], terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "6 x BasicTransformerBlock" in result.output
    report = json.loads(report_path.read_text())
    assert report["decisions"] == "C..C..C"
    assert report["computed_steps"] == 3
    assert report["max_abs_error_computed_steps"] == 0.0
    assert report["max_abs_error"] > 0.0
    assert report["cache_bytes"] == 2 * 64 * 128 * 4
    assert report["state_bytes"] > report["cache_bytes"]  # the clock and the decision log too
    assert report["cached_step_state_bytes"] == 0  # the cache is written in place, on computed steps only
    assert report["cached_step_state_bytes_functional"] == 2 * report["cache_bytes"]  # copied out and back
    assert report["schedule_limit"] == 7 / 3
    assert report["repeats"] == 3 and report["speedup_range"][0] <= report["speedup"] <= report["speedup_range"][1]
    assert "median of 3" in result.output
    compile_seconds = report["compile_seconds"]
    capture = [k for k in compile_seconds if k.startswith("capture (torch.export")]  # ", cached": the suite's cache
    assert len(capture) == 1 and compile_seconds[capture[0]] > 0 and compile_seconds["find_block_stack"] > 0
    assert {"insert_cache_branch", "self-check", "first call, graphcache (compilation)"} <= set(compile_seconds)
    # the timed generation: computed steps op by op (--backend eager), cached steps by the cached-step graph
    assert report["calls"] == {"full_graph": 3, "cached_step_graph": 4, "direct": 0}
    assert report["calls_not_around_dynamo"] == {"direct": "the module runs op by op (backend eager)"}
    assert "calls (timed run)" in result.output
    assert "\n\n" not in result.output.strip()  # not a terminal: no progress bars, no blank lines left by them


def test_optimize_reports_per_sample_steps_and_buckets(root, tmp_path):
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(
        main, ["optimize", str(root / "examples" / "dit.py"), "--steps", "12", "--policy",
               "fbcache{threshold=0.2,buckets=1}", "--backend", "eager", "--repeats", "1", "--json", str(report_path)],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["sample_buckets"] == [1] and report["sample_buckets_not_used"] == ""
    assert "in buckets of 1 or the whole batch" in result.output
    batch_share = report["computed_steps"] / report["steps"]
    assert 0 < report["sample_steps_computed"] < batch_share  # the two samples do not always agree
    assert f"per sample: {100 * report['sample_steps_computed']:.0f}% of (sample, step) pairs" in result.output
    assert report["calls"] == {"full_graph": 12, "cached_step_graph": 0, "direct": 0}  # a dynamic decision
    assert report["calls_not_around_dynamo"]["cached_step_graph"] == DYNAMIC


def test_optimize_example_flux_block_granularity(root, tmp_path):
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(
        main, ["optimize", str(root / "examples" / "flux.py"), "--steps", "4", "--policy", "fora", "--set",
               "granularity=block", "--json", str(report_path)], terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["num_blocks"] == 6
    assert report["decisions"] == "C..C"
    # a cached step reads each block's gates only: 2 of 6 modulation chunks of both streams in the 2 dual blocks,
    # 1 of 3 in the 4 single blocks (width 128, fp32)
    assert report["narrowed_linears"] == 2 * 2 + 4
    assert report["weight_bytes_not_read"] == 4 * (2 * 2 * 4 * 128 * 128 + 4 * 2 * 128 * 128)
    assert "8 linears narrowed" in result.output
    assert report["max_abs_error_computed_steps"] == 0.0


def test_bad_model_file(tmp_path):
    bad = tmp_path / "model.py"
    bad.write_text("def build():\n    return 3\n")
    result = CliRunner().invoke(main, ["optimize", str(bad)], terminal_width=200)
    assert result.exit_code == 2
    output = " ".join(result.output.split())  # the console wraps long lines
    assert "ModelFileError" in output and "expected (model, inputs)" in output


def test_missing_model_file(tmp_path):
    result = CliRunner().invoke(main, ["optimize", str(tmp_path / "nope.py")], terminal_width=200)
    assert result.exit_code == 2
    assert "not found" in result.output and "build()" in result.output


def test_optimize_a_unet_under_the_default_policy_says_it_took_deepcache(root, tmp_path):
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["optimize", str(root / "examples" / "unet.py"), "--steps", "4", "--repeats",
                                       "1", "--json", str(report_path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["policy"].startswith("auto(") and report["decisions"] == "C..C"
    assert report["policy_applied"].startswith("policy 'auto' applied deepcache(interval=3, skip=1")
    assert report["max_abs_error_computed_steps"] == 0.0
    assert "policy 'auto' applied deepcache" in result.output


def test_bad_option_value(root):
    result = CliRunner().invoke(main, ["optimize", str(root / "examples" / "dit.py"), "--set", "interval=0"],
                                terminal_width=200)
    assert result.exit_code == 2
    assert "auto.interval=0 is invalid" in result.output


def test_unknown_policy(root):
    result = CliRunner().invoke(main, ["optimize", str(root / "examples" / "dit.py"), "--policy", "nope"],
                                terminal_width=200)
    assert result.exit_code == 2
    assert "unknown policy 'nope'" in result.output


def test_model_without_stack(tmp_path):
    model_file = tmp_path / "conv.py"
    here = str(Path(__file__).parent)
    model_file.write_text(
        f"import sys; sys.path.insert(0, {here!r})\n"
        "from models import conv_net\n\ndef build():\n    return conv_net()\n"
    )
    result = CliRunner().invoke(main, ["optimize", str(model_file), "--steps", "2"], terminal_width=200)
    assert result.exit_code == 2
    assert "NoStackError" in result.output and "no stack of repeated blocks" in result.output


def test_bench_on_a_model_file(root, tmp_path):
    result = CliRunner().invoke(
        main, ["bench", "--model", str(root / "examples" / "dit.py"), "--policy", "fora", "--policy",
               "taylorseer{order=1,warmup=1}", "--steps", "6", "--backend", "eager", "--out", str(tmp_path)],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "2/6" in result.output  # fora: steps 0 and 3
    assert "3/6" in result.output  # taylorseer: warm-up 0, then 1 and 5


def test_export_with_check(root, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "dit_onnx"
    result = CliRunner().invoke(
        main, ["export", str(root / "examples" / "dit.py"), "--policy", "fora", "--form", "unrolled", "--steps", "6",
               "-o", str(out), "--check"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert all((out / name).is_file() for name in ("full.onnx", "cached.onnx", "graphcache-plan.json"))
    assert "schedule: C..C.." in result.output
    assert "decisions identical" in result.output and "PASSED" in result.output


def test_export_dynamic_policy_unrolled_is_refused(root, tmp_path):
    result = CliRunner().invoke(
        main, ["export", str(root / "examples" / "dit.py"), "--policy", "fbcache", "--form", "unrolled", "-o",
               str(tmp_path)], terminal_width=200)
    assert result.exit_code == 2
    assert "ExportError" in result.output and "--form in-graph" in result.output


def test_calibrate_then_optimize(root, tmp_path):
    out = tmp_path / "cal.json"
    result = CliRunner().invoke(main, ["calibrate", str(root / "examples" / "dit.py"), "--steps", "8", "--policy",
                                       "teacache", "-o", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["schema"] == "graphcache.calibration" and "teacache" in data and "magcache" not in data
    assert len(data["teacache"]["coefficients"]) == 5
    result = CliRunner().invoke(main, ["optimize", str(root / "examples" / "dit.py"), "--policy", "teacache", "--set",
                                       f"calibration={out}", "--steps", "8"], terminal_width=200)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["optimize", str(root / "examples" / "dit.py"), "--policy", "magcache", "--set",
                                       f"calibration={out}", "--steps", "4"], terminal_width=200)
    assert result.exit_code == 2 and "has no 'magcache' calibration" in result.output


def test_a_schedule_without_cached_steps_prints_no_nan(root):
    result = CliRunner().invoke(main, ["optimize", str(root / "examples" / "dit.py"), "--steps", "3", "--set",
                                       "interval=1", "--repeats", "1"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "cached - (none)" in result.output and "nan" not in result.output
    assert "one run: no spread" in result.output
