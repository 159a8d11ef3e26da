"""TeaCache and MagCache: in-graph decisions equal the published rules re-implemented in Python on the
same indicators, per sample; calibration files (fullgraph compile: test_compile_policies.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from graphcache import calibration
from graphcache.errors import PolicyConfigError
from graphcache.exported import optimize_exported
from graphcache.passes.graph_utils import relative_l1

from helpers import assert_exact_iff_computed, generation, timesteps
from models import tiny_dit, tiny_flux

STEPS = 12


def modulated_inputs(model, inputs, ts):
    """Block 0's AdaLN-modulated input from the model's own modules (no graphcache)."""
    out = []
    with torch.no_grad():
        for t in ts:
            kw = inputs(t)
            h = model.pos_embed(kw["hidden_states"])
            out.append(model.transformer_blocks[0].norm1(h, kw["timestep"], kw["class_labels"],
                                                          hidden_dtype=h.dtype)[0])
    return out


def teacache_python(indicators, fit, threshold):
    """TeaCache as published, per sample: first step computes; A += poly(relL1(m_i, m_{i-1})); compute and
    reset A when A >= threshold. With graphcache's guard: d clamped to the fitted range, poly(d) >= 0."""
    coefficients, (low, high) = fit["coefficients"], fit["indicator_range"]
    batch = indicators[0].shape[0]
    decisions = [[] for _ in range(batch)]
    for b in range(batch):
        acc = 0.0
        for i, m in enumerate(indicators):
            if i == 0:
                compute = True
            else:
                d = float(relative_l1(m[b : b + 1], indicators[i - 1][b : b + 1]))
                acc += max(float(np.polyval(coefficients, min(max(d, low), high))), 0.0)
                compute = acc >= threshold
            if compute:
                acc = 0.0
            decisions[b].append("computed" if compute else "cached")
    return decisions


def magcache_python(t_values, table, threshold, max_skips, boundary):
    """MagCache as published, with gamma interpolated at each step's timestep (numpy.interp)."""
    order = np.argsort(table["timesteps"])
    knots, ratios = np.asarray(table["timesteps"])[order], np.asarray(table["ratios"])[order]
    g, e, k, decisions = 1.0, 0.0, 0, []
    for i, t in enumerate(t_values):
        skip = False
        if i > 0 and t < boundary:
            g2 = g * float(np.interp(t, knots, ratios))
            e2, k2 = e + abs(1 - g2), k + 1
            skip = e2 <= threshold and k2 <= max_skips
        g, e, k = (g2, e2, k2) if skip else (1.0, 0.0, 0)
        decisions.append("cached" if skip else "computed")
    return decisions


def test_teacache_decisions_match_the_python_rule_per_sample(dit_calibration):
    model, inputs = tiny_dit(num_layers=3, batch=2)
    ts = timesteps(STEPS)
    indicators = modulated_inputs(model, inputs, ts)
    fit = calibration.load(dit_calibration, "teacache")
    patterns = set()
    for threshold in (0.05, 0.15, 0.3):
        cached = optimize_exported(model, inputs(ts[0]), "teacache", threshold=threshold,
                                   calibration=str(dit_calibration))
        outputs = generation(cached, inputs, ts)
        expected = teacache_python(indicators, fit, threshold)
        assert cached.state.sample_decisions() == expected, threshold
        reference = generation(model, inputs, ts)
        assert_exact_iff_computed(outputs, reference, expected, exact_only=True)
        patterns.add(tuple(cached.state.decisions()))
    assert len(patterns) >= 2, "thresholds should give different schedules, or the test checks nothing"


@pytest.mark.parametrize("steps", [STEPS, 20])
def test_magcache_decisions_match_the_python_rule(dit_calibration, steps):
    """Calibrated on 12 steps; a 20-step generation interpolates the ratios by timestep."""
    from graphcache.policies.magcache import MagCache

    model, inputs = tiny_dit(num_layers=3, batch=2)
    ts = timesteps(steps)
    table = calibration.load(dit_calibration, "magcache")
    for threshold, max_skips in ((0.05, 2), (0.5, 5)):
        policy = MagCache(threshold=threshold, max_skips=max_skips, calibration=str(dit_calibration))
        cached = optimize_exported(model, inputs(ts[0]), policy)
        outputs = generation(cached, inputs, ts)
        expected = magcache_python([float(int(t)) for t in ts], table, threshold, max_skips, policy.boundary())
        assert cached.state.decisions() == expected
        assert "cached" in expected
        reference = generation(model, inputs, ts)
        for out, ref, d in zip(outputs, reference, expected, strict=True):
            assert torch.equal(out, ref) == (d == "computed")


def test_teacache_batch_of_four_equals_each_sample_alone(dit_calibration, tmp_path):
    model, inputs = tiny_dit(num_layers=3, batch=4)
    rows = calibration.record(model, inputs, timesteps(STEPS))
    path = calibration.save(tmp_path / "cal4.json", model, STEPS, **calibration.fit(rows))
    ts = timesteps(STEPS)
    together = optimize_exported(model, inputs(ts[0]), "teacache", threshold=0.12, calibration=str(path))
    outputs = generation(together, inputs, ts)
    per_sample = together.state.sample_decisions()
    assert len({tuple(d) for d in per_sample}) >= 2, "samples should disagree somewhere"
    for s in range(4):
        def one(t, s=s):
            return {k: v[s : s + 1] for k, v in inputs(t).items()}

        alone = optimize_exported(model, one(ts[0]), "teacache", threshold=0.12, calibration=str(path))
        alone_outputs = generation(alone, one, ts)
        assert alone.state.decisions() == per_sample[s]
        for got, want in zip(outputs, alone_outputs, strict=True):
            torch.testing.assert_close(got[s : s + 1], want, atol=1e-5, rtol=1e-5)


def test_flux_teacache_and_magcache_run(tmp_path):
    model, inputs = tiny_flux()
    rows = calibration.record(model, inputs, timesteps(STEPS))
    path = calibration.save(tmp_path / "flux.json", model, STEPS, **calibration.fit(rows))
    assert calibration.load(path, "magcache")["timesteps"][0] < 1.0  # Flux sees t / 1000: stored as it sees it
    for policy in ("teacache", "magcache"):
        cached = optimize_exported(model, inputs(999.0), policy, calibration=str(path), threshold=0.5)
        generation(cached, inputs, timesteps(STEPS))
        assert "cached" in cached.state.decisions()


@pytest.mark.parametrize(("change", "message"), [
    (None, "not found; make one with `graphcache calibrate model.py"),
    ("{broken", "is corrupt"),
    (json.dumps({"schema": "other"}), r"is not a graphcache calibration file \(schema 'other', expected"),
    (json.dumps({"schema": calibration.SCHEMA, "version": 99}),
     "has calibration file version 99; this graphcache reads version"),
    (json.dumps({"schema": calibration.SCHEMA, "version": calibration.VERSION, "fingerprint": "0" * 16,
                 "model": "Other"}), "was calibrated for another model"),
])
def test_calibration_file_errors(tmp_path, change, message):
    model, inputs = tiny_dit(num_layers=3)
    path = tmp_path / "cal.json"
    if change is not None:
        path.write_text(change)
    with pytest.raises(PolicyConfigError, match=message):
        optimize_exported(model, inputs(999.0), "teacache", calibration=str(path))


def test_missing_section_and_no_calibration(dit_calibration, tmp_path):
    data = json.loads(dit_calibration.read_text())
    del data["magcache"]
    path = tmp_path / "tea_only.json"
    path.write_text(json.dumps(data))
    model, inputs = tiny_dit(num_layers=3, batch=2)
    with pytest.raises(PolicyConfigError, match="has no 'magcache' calibration"):
        optimize_exported(model, inputs(999.0), "magcache", calibration=str(path))
    for policy in ("teacache", "magcache"):
        with pytest.raises(PolicyConfigError, match=r"graphcache calibrate model.py -o calibration.json"):
            optimize_exported(model, inputs(999.0), policy)


def test_pooled_decision_is_one_for_the_batch(dit_calibration):
    """per_sample=False: every sample follows one decision, from the batch-mean indicator."""
    model, inputs = tiny_dit(num_layers=3, batch=2)
    ts = timesteps(STEPS)
    indicators = modulated_inputs(model, inputs, ts)
    fit = calibration.load(dit_calibration, "teacache")
    cached = optimize_exported(model, inputs(ts[0]), "teacache", threshold=0.15, per_sample=False,
                               calibration=str(dit_calibration))
    generation(cached, inputs, ts)
    first, second = cached.state.sample_decisions()
    assert first == second == cached.state.decisions()
    assert "cached" in first
    distances = [float(relative_l1(indicators[i], indicators[i - 1]).mean()) for i in range(1, STEPS)]
    acc, expected = 0.0, ["computed"]
    low, high = fit["indicator_range"]
    for d in distances:
        acc += max(float(np.polyval(fit["coefficients"], min(max(d, low), high))), 0.0)
        expected.append("computed" if acc >= 0.15 else "cached")
        acc = 0.0 if acc >= 0.15 else acc
    assert first == expected


def test_magcache_retention_rounds_as_the_published_code(tmp_path):
    """``int(R * T + 0.5)`` retained steps (MagCache's code and diffusers' MagCacheConfig), not ceil: R = 0.12
    over a 10-step calibration keeps 1 step (ceil would keep 2)."""
    from graphcache.policies.magcache import MagCache

    model, _ = tiny_dit(num_layers=2)
    timesteps_cal = [900.0 - 100.0 * k for k in range(9)]
    path = calibration.save(tmp_path / "cal.json", model, 10, magcache={
        "timesteps": timesteps_cal, "ratios": [1.0] * 9, "steps": 10})
    assert MagCache(retention=0.12, calibration=str(path)).boundary() == timesteps_cal[0] + 1e-3
    assert MagCache(retention=0.15, calibration=str(path)).boundary() == timesteps_cal[1] + 1e-3
