"""ONNX export + ONNX Runtime runner: every step of two generations within 1e-4 (fp32) of the torch graph."""

from __future__ import annotations

import pytest
import torch

from helpers import moving_latent, timesteps
from models import tiny_dit, tiny_flux

pytest.importorskip("onnxruntime")

from graphcache.errors import ExportError
from graphcache.export import export_model, load
from graphcache.export.check import check_export
from graphcache.export.onnx_export import check_onnx, count_ops
from graphcache.runner import first_tensor

MODELS = {"dit": tiny_dit, "flux": tiny_flux}
CASES = [("dit", "fora", "in-graph"), ("dit", "taylorseer", "unrolled"), ("dit", "fbcache", "in-graph"),
         ("flux", "fora", "unrolled"), ("flux", "taylorseer", "in-graph"), ("flux", "fbcache", "in-graph")]
STEPS = 9


def run_both(exported, inputs, steps=STEPS):
    """Two generations without reset in between (both sides must see the boundary); per-step max |diff|."""
    runner = load(exported.directory)
    exported.cached.state.reset()
    diffs, decisions = [], []
    with torch.no_grad():
        for _ in range(2):
            for t in timesteps(steps):
                kwargs = inputs(t)
                want = first_tensor(exported.cached(**kwargs))
                got = runner(**kwargs)
                diffs.append(float((got - want).abs().max()))
            decisions.append((runner.decisions(), exported.cached.state.decisions()))
    return runner, diffs, decisions


@pytest.mark.parametrize(("model_name", "policy", "form"), CASES)
def test_onnxruntime_matches_torch_every_step(tmp_path, model_name, policy, form):
    model, inputs = MODELS[model_name]()
    options = {"threshold": 0.3} if policy == "fbcache" else {}
    exported = export_model(model, inputs(999.0), tmp_path, policy, "onnx", form, steps=STEPS, **options)
    for entry in exported.plan.graphs.values():
        check_onnx(tmp_path / entry.file)
        assert count_ops(tmp_path / entry.file, "If") == (1 if form == "in-graph" else 0)
    _, diffs, decisions = run_both(exported, inputs)
    assert max(diffs) < 1e-4, diffs
    for ort_decisions, torch_decisions in decisions:
        assert ort_decisions == torch_decisions
        assert len(ort_decisions) == STEPS and "cached" in ort_decisions
    if form == "unrolled":
        assert exported.plan.schedule == ["full" if c else "cached" for c in exported.cached.policy.expected(STEPS)]


def test_state_stays_in_ortvalues_and_ping_pongs(tmp_path):
    import onnxruntime as ort

    model, inputs = tiny_dit()
    exported = export_model(model, inputs(999.0), tmp_path, "fora", "onnx", "unrolled", steps=4)
    runner = load(tmp_path)
    assert all(isinstance(h, ort.OrtValue) for h in runner.state.values())
    before = dict(runner.state)
    spare = dict(runner.backend.spare)
    runner(**inputs(999.0))  # full step: writes everything
    cache = next(s.name for s in exported.plan.state if s.name.startswith("stack"))
    assert runner.state[cache] is spare[cache] and runner.backend.spare[cache] is before[cache]
    kept = runner.state[cache]
    runner(**inputs(500.0))  # cached step: the cache buffer is read in place, not rewritten
    assert runner.state[cache] is kept
    assert runner.decisions() == ["computed", "cached"]


def test_unrolled_schedule_is_per_step_count(tmp_path):
    model, inputs = tiny_dit()
    export_model(model, inputs(999.0), tmp_path, "fora", "onnx", "unrolled", steps=2)
    runner = load(tmp_path)
    runner(**inputs(999.0))
    runner(**inputs(500.0))
    with pytest.raises(ExportError, match="step 2 is past the exported schedule of 2 steps"):
        runner(**inputs(100.0))
    runner(**inputs(999.0))  # a new generation starts over
    assert runner.decisions() == ["computed"]


def test_dynamic_policy_has_no_unrolled_form(tmp_path):
    model, inputs = tiny_dit()
    with pytest.raises(ExportError, match=r"'fbcache' decides at run time .* --form in-graph"):
        export_model(model, inputs(999.0), tmp_path, "fbcache", "onnx", "unrolled")


def test_runner_rejects_wrong_inputs(tmp_path):
    model, inputs = tiny_dit()
    export_model(model, inputs(999.0), tmp_path, "fora", "onnx", "in-graph", steps=3)
    runner = load(tmp_path)
    kwargs = inputs(999.0)
    with pytest.raises(ExportError, match=r"missing inputs \['class_labels'\]"):
        runner(**{k: v for k, v in kwargs.items() if k != "class_labels"})
    kwargs["hidden_states"] = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ExportError, match=r"input 'hidden_states' has shape \(1, 4, 8, 8\).*\(2, 4, 8, 8\)"):
        runner(**kwargs)


def test_check_report_passes_and_can_fail(tmp_path):
    model, inputs = tiny_dit()
    exported = export_model(model, inputs(999.0), tmp_path, "fora", "onnx", "unrolled", steps=6)
    report = check_export(exported, inputs, timesteps(6))
    assert report.passed, report.summary()
    assert {g.graph for g in report.graphs} == {"full", "cached"} and report.decisions_match
    assert len(report.steps) == 12 and 0 < report.max_abs < 1e-4
    strict = check_export(exported, inputs, timesteps(6), atol=0.0, rtol=0.0)
    assert not strict.passed and "FAILED" in strict.summary()


def test_runner_in_a_diffusers_scheduler_loop(tmp_path):
    """A DDIM loop feeds the runner new latents each step: final latents match the torch graph's."""
    from diffusers import DDIMScheduler

    model, inputs = tiny_dit()
    exported = export_model(model, inputs(999.0), tmp_path, "fora", "onnx", "in-graph")
    runner = load(tmp_path)
    finals = []
    for denoiser in (runner, lambda **kw: first_tensor(exported.cached(**kw))):
        scheduler = DDIMScheduler(num_train_timesteps=1000)
        scheduler.set_timesteps(12)
        latents = inputs(999.0)["hidden_states"].clone()
        with torch.no_grad():
            for t in scheduler.timesteps:
                kwargs = inputs(float(t)) | {"hidden_states": latents}
                eps = denoiser(**kwargs)[:, :4]
                latents = scheduler.step(eps, t, latents).prev_sample
        finals.append(latents)
    assert runner.decisions() == exported.cached.state.decisions() and "cached" in runner.decisions()
    assert float((finals[0] - finals[1]).abs().max()) < 1e-4


def test_every_dynamic_policy_exports_in_graph(tmp_path):
    """TeaCache, MagCache, DBCache, AdaCache, EasyCache: ONNX Runtime decides like torch (per-sample masks,
    accumulators and the magnitude table all inside the one If model)."""
    from graphcache import calibration

    model, fixed = tiny_dit(num_layers=3)
    inputs = moving_latent(fixed)
    rows = calibration.record(model, inputs, timesteps(STEPS))
    cal = str(calibration.save(tmp_path / "cal.json", model, STEPS, **calibration.fit(rows)))
    cases = {"teacache": {"calibration": cal, "threshold": 0.1}, "magcache": {"calibration": cal},
             "dbcache": {"threshold": 0.2, "warmup": 1}, "adacache": {}, "easycache": {"warmup": 2, "tau": 0.5}}
    for policy, options in cases.items():
        exported = export_model(model, inputs(999.0), tmp_path / policy, policy, "onnx", steps=STEPS, **options)
        _, diffs, decisions = run_both(exported, inputs)
        assert max(diffs) < 1e-4, policy
        for ort_decisions, torch_decisions in decisions:
            assert ort_decisions == torch_decisions and "cached" in ort_decisions, policy


@pytest.mark.parametrize(("model_name", "policy", "form", "options"), [
    ("dit", "foca", "unrolled", {}),
    ("dit", "fbcache", "in-graph", {"threshold": 0.3, "forecast": "taylor:1"}),
    ("dit", "deltadit", "in-graph", {"boundary": 4}),  # a nested If: the stage boundary
    ("unet", "deepcache", "unrolled", {}),  # input and output both named 'sample' in diffusers
    ("video", "pab", "in-graph", {}),  # a chain of Ifs: which of spatial / temporal / cross attention a step skips
    ("dit", "fastercache", "in-graph", {"num_steps": STEPS}),
    ("dit", "speca", "in-graph", {"num_steps": STEPS}),  # the last block copied before the If (verification)
])
def test_predictive_policies_export(tmp_path, model_name, policy, form, options):
    from models import hand_written_video_dit, tiny_unet

    model, inputs = {"dit": tiny_dit, "unet": tiny_unet, "video": hand_written_video_dit}[model_name]()
    exported = export_model(model, inputs(999.0), tmp_path, policy, "onnx", form, steps=STEPS, **options)
    _, diffs, decisions = run_both(exported, inputs)
    assert max(diffs) < 1e-4, diffs
    assert all(a == b and "cached" in a for a, b in decisions)


@pytest.mark.parametrize("form", ["in-graph", "unrolled"])
def test_runner_keeps_one_state_per_stream(tmp_path, form):
    """CFG as two calls through the ONNX Runtime runner: with cache contexts or routed by the repeated
    timestep, each stream's outputs are those of the stream run alone by a fresh runner."""
    model, inputs = tiny_dit()
    exported = export_model(model, inputs(999.0), tmp_path, "fora", "onnx", form, steps=6)
    cond = inputs
    other = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))

    def uncond(t):
        return {**inputs(t), "hidden_states": other}

    ts = timesteps(6)
    alone = {}
    for name, stream in (("cond", cond), ("uncond", uncond)):
        runner = load(exported.directory)
        alone[name] = [runner(**stream(t)).clone() for t in ts]
    for contexts in (True, False):
        runner = load(exported.directory)
        got = {"cond": [], "uncond": []}
        for i, t in enumerate(ts):
            for name, stream in (("cond", cond), ("uncond", uncond)):
                if contexts:  # with the fields Wan passes; step_index=0 starts the stream over
                    with runner.cache_context(name, step_index=i, sigma=float(t) / 1000, num_inference_steps=6):
                        got[name].append(runner(**stream(t)).clone())
                else:
                    got[name].append(runner(**stream(t)).clone())
        for name in got:
            assert all(torch.equal(a, b) for a, b in zip(got[name], alone[name], strict=True)), (contexts, name)
