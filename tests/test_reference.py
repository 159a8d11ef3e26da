"""The shipped reference model and judge: load, generate, recognise; the bench on a small run."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from graphcache.cli import main
from graphcache.errors import GraphcacheError
from graphcache.reference import load_pipeline
from graphcache.reference.data import load_digits_tensors, split_indices
from graphcache.reference.judge import load_judge


def test_judge_recognises_held_out_real_digits():
    images, labels = load_digits_tensors()
    _, held_out = split_indices(len(images))
    with torch.no_grad():
        logits = load_judge()((images[held_out] + 1) / 2)
    # measured 98.3% on these 359 digits by examples/train_judge.py
    assert (logits.argmax(1) == labels[held_out]).float().mean() >= 0.97


def test_shipped_checkpoint_generates_recognisable_digits():
    """The uncached model scores 98.0% on 200 samples at 50 steps (README, examples/evaluate_reference.py).
    20 samples must score >= 80%: at a true 98% P(fewer than 16 of 20) = 0.004%, at 95% 0.26%."""
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    labels = list(range(10)) * 2
    images = pipe(class_labels=labels, num_inference_steps=50, generator=torch.Generator().manual_seed(0),
                  output_type="pt")
    assert images.shape == (20, 16, 16) and 0 <= float(images.min()) and float(images.max()) <= 1
    with torch.no_grad():
        predicted = load_judge()(images).argmax(1)
    assert (predicted == torch.tensor(labels)).float().mean() >= 0.8


def test_pipeline_rejects_bad_labels():
    pipe = load_pipeline()
    with pytest.raises(GraphcacheError, match=r"class_labels must be digits 0..9, got \[3, 12\]"):
        pipe(class_labels=[3, 12], num_inference_steps=2)


def test_missing_weights_name_the_training_script(tmp_path):
    with pytest.raises(GraphcacheError, match=r"run `python examples/train_reference\.py"):
        load_pipeline(tmp_path / "none.safetensors")


def test_bench_small_run_writes_report(tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        main, ["bench", "--policy", "fora", "--policy", "fora{interval=2}", "--samples", "10", "--steps", "6",
               "--backend", "eager", "--out", str(out)], terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    runs = {(r["policy"], r["settings"]): r for r in report["runs"]}
    assert runs[("uncached", "-")]["computed_steps"] == 6
    assert runs[("fora", "defaults")]["computed_steps"] == 2
    assert runs[("fora", "interval=2")]["computed_steps"] == 3
    assert 0 < runs[("fora", "defaults")]["psnr_db"] < 100
    # the first timed run's calls: the generation's first through dynamo, the other computed steps directly,
    # the cached ones by the cached-step graph
    assert runs[("fora", "defaults")]["calls"] == {"full_graph": 1, "cached_step_graph": 4, "direct": 1}
    assert runs[("fora", "interval=2")]["calls"] == {"full_graph": 1, "cached_step_graph": 3, "direct": 2}
    assert runs[("fora", "defaults")]["calls_not_around_dynamo"] == {}
    assert runs[("uncached", "-")]["calls"] == {}
    assert "fora interval=2: calls 1 through dynamo, 3 by the cached-step graph, 2 by the compiled graph" \
        in result.output
    assert len(runs[("fora", "defaults")]["seconds_runs"]) == 2  # --repeats 2 (the default)
    assert len(runs[("uncached", "-")]["seconds_runs"]) == 4  # before and after the policies
    assert "timing spread" in result.output
    for name in ("samples.png", "decisions.png", "step_error.png", "speed_vs_quality.png", "report.md"):
        assert (out / name).stat().st_size > 0
    assert "--policy 'fora{interval=2}'" in (out / "report.md").read_text()  # quoted: the shell keeps it


def test_corrupt_weights_are_named(tmp_path):
    bad = tmp_path / "dit.safetensors"
    bad.write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(GraphcacheError, match=r"dit.safetensors is not a readable safetensors file"):
        load_pipeline(bad)


def test_weights_of_another_model_are_named(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(GraphcacheError, match=r"other.safetensors does not hold reference DiT weights"):
        load_pipeline(other)
