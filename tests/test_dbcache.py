"""DBCache: Fn probe blocks, Bn tail blocks, warm-up and caps; decisions equal the rule re-implemented in
Python on the probe residuals taken from the model's own modules."""

from __future__ import annotations

import pytest
import torch

from graphcache.errors import PolicyConfigError
from graphcache.exported import optimize_exported
from graphcache.passes.graph_utils import relative_l1

from helpers import assert_exact_iff_computed, first_block_residuals, generation, moving_latent, timesteps
from models import tiny_dit, tiny_sd3


def dbcache_python(residuals, threshold, warmup, max_cached, max_run):
    """Per sample: compute iff warm-up, relL1(r1, r1_ref) >= threshold, or a cap is reached; r1_ref moves on
    computed steps only."""
    batch = residuals[0].shape[0]
    out = []
    for b in range(batch):
        ref, cached, run, decisions = None, 0, 0, []
        for i, r in enumerate(residuals):
            r = r[b : b + 1]
            stale = ref is None or float(relative_l1(r, ref)) >= threshold
            compute = i < max(warmup, 1) or stale or (0 <= max_cached <= cached) or (0 <= max_run <= run)
            if compute:
                ref, run = r, 0
            else:
                cached, run = cached + 1, run + 1
            decisions.append("computed" if compute else "cached")
        out.append(decisions)
    return out


@pytest.mark.parametrize(("warmup", "max_cached", "max_run"), [(0, -1, -1), (3, -1, 2), (1, 3, -1)])
def test_decisions_match_python_rule(warmup, max_cached, max_run):
    model, inputs = tiny_dit(num_layers=4, batch=2)
    ts = timesteps(12)
    residuals = first_block_residuals(model, inputs, ts)
    cached = optimize_exported(model, inputs(ts[0]), "dbcache", threshold=0.3, warmup=warmup,
                               max_cached_steps=max_cached, max_continuous_cached_steps=max_run)
    outputs = generation(cached, inputs, ts)
    expected = dbcache_python(residuals, 0.3, warmup, max_cached, max_run)
    assert cached.state.sample_decisions() == expected
    assert any("cached" in d for d in expected)
    reference = generation(model, inputs, ts)
    assert_exact_iff_computed(outputs, reference, expected)


def test_tail_blocks_run_on_cached_steps():
    model, inputs = tiny_dit(num_layers=4, batch=2)
    ts = timesteps(8)
    db = optimize_exported(model, inputs(ts[0]), "dbcache", bn=1, warmup=0, max_continuous_cached_steps=3,
                           threshold=10.0)
    assert [len(s.blocks) for s in db.block_stack.stacks] == [2]  # 4 blocks - Fn 1 - Bn 1
    fb = optimize_exported(model, inputs(ts[0]), "dbcache", bn=0, warmup=0, max_continuous_cached_steps=3,
                           threshold=10.0)
    out_db, out_fb = generation(db, inputs, ts), generation(fb, inputs, ts)
    assert db.state.decisions() == fb.state.decisions() == ["computed", "cached", "cached", "cached"] * 2
    reference = generation(model, inputs, ts)
    for k, d in enumerate(db.state.decisions()):
        if d == "computed":
            assert torch.equal(out_db[k], reference[k]) and torch.equal(out_fb[k], reference[k])
        else:  # the tail reruns on the cached middle's output: a different output than reusing all 3 blocks
            assert not torch.equal(out_db[k], out_fb[k])


@pytest.mark.parametrize(("options", "message"), [
    ({"fn": 0}, "dbcache.fn=0 is invalid"),
    ({"fn": 4}, "probe blocks=4 must leave at least one cached block"),
    ({"fn": 2, "bn": 2}, "tail blocks=2 must leave at least one cached block"),
    ({"max_cached_steps": -2}, "max_cached_steps=-2 is invalid"),
])
def test_bad_options(options, message):
    model, inputs = tiny_dit(num_layers=4)
    with pytest.raises(PolicyConfigError, match=message):
        optimize_exported(model, inputs(999.0), "dbcache", **options)


def adacache_python(residuals, codebook, default_steps=1):
    """AdaCache per sample: at a computed step i (k steps after the last), c = relL1(r_i, r_last) / k; the
    next compute is codebook(c) steps later (first entry with distance >= c, else default_steps)."""
    out = []
    for b in range(residuals[0].shape[0]):
        last_i, ref, next_i, decisions = None, None, 0, []
        for i, r in enumerate(residuals):
            r = r[b : b + 1]
            compute = i >= next_i
            if compute:
                steps = default_steps
                if ref is not None:
                    c = float(relative_l1(r, ref)) / (i - last_i)
                    steps = next((n for d, n in codebook if c <= d), default_steps)
                next_i, last_i, ref = i + steps, i, r
            decisions.append("computed" if compute else "cached")
        out.append(decisions)
    return out


@pytest.mark.parametrize("codebook", ["0.08:6,0.16:5,0.24:4,0.32:3,0.40:2", "0.1:3,0.2:2"])
def test_adacache_decisions_match_python_rule(codebook):
    from graphcache.policies.adacache import parse_codebook

    model, inputs = tiny_dit(num_layers=4, batch=2)
    ts = timesteps(14)
    residuals = first_block_residuals(model, inputs, ts)
    cached = optimize_exported(model, inputs(ts[0]), "adacache", codebook=codebook)
    generation(cached, inputs, ts)
    expected = adacache_python(residuals, parse_codebook(codebook))
    assert cached.state.sample_decisions() == expected
    assert any(d.count("cached") >= 2 for d in expected)


def test_adacache_bad_codebook():
    model, inputs = tiny_dit()
    with pytest.raises(PolicyConfigError, match=r"must look like '0\.08:6,0\.16:5,\.\.\.'"):
        optimize_exported(model, inputs(999.0), "adacache", codebook="fast")


def easycache_python(rows, tau, warmup):
    """EasyCache per sample on an uncached run's stack inputs x and residuals (v = x + residual)."""
    out = []
    for b in range(rows[0]["input"].shape[0]):
        x = [r["input"][b : b + 1].double() for r in rows]
        v = [r["input"][b : b + 1].double() + r["residual"][b : b + 1].double() for r in rows]
        error, computed, decisions = 0.0, [], []
        for n in range(len(rows)):
            compute = n < max(warmup, 1) or len(computed) < 2
            if not compute:
                a, a2 = computed[-1], computed[-2]
                k = float((v[a] - v[a2]).abs().mean() / (x[a] - x[a2]).abs().mean())
                error += k * float((x[n] - x[n - 1]).abs().mean() / v[a].abs().mean())
                compute = not error < tau  # NaN computes
            if compute:
                error = 0.0
                computed.append(n)
            decisions.append("computed" if compute else "cached")
        out.append(decisions)
    return out


@pytest.mark.parametrize(("tau", "warmup"), [(0.05, 2), (0.2, 3)])
def test_easycache_decisions_match_python_rule(tau, warmup):
    from graphcache.calibration import record

    model, fixed = tiny_dit(num_layers=3, batch=2)
    inputs = moving_latent(fixed)
    ts = timesteps(14)
    rows = record(model, inputs, ts)
    cached = optimize_exported(model, inputs(ts[0]), "easycache", tau=tau, warmup=warmup)
    outputs = generation(cached, inputs, ts)
    expected = easycache_python(rows, tau, warmup)
    assert cached.state.sample_decisions() == expected
    assert any("cached" in d for d in expected)
    reference = generation(model, inputs, ts)
    assert_exact_iff_computed(outputs, reference, expected)


def _two_stream_rows(model, inputs, ts):
    """Per step of an uncached SD3 run: the stack's two input streams and its two outputs (blocks 0 .. n-2;
    the last joint block is built differently), each flattened per sample and concatenated."""
    first, last = model.transformer_blocks[0], model.transformer_blocks[-2]
    seen = {}
    hooks = [first.register_forward_pre_hook(lambda m, a, kw: seen.__setitem__("in", kw), with_kwargs=True),
             last.register_forward_hook(lambda m, a, out: seen.__setitem__("out", out))]
    rows = []
    with torch.no_grad():
        for t in ts:
            model(**inputs(t))
            x = torch.cat([seen["in"]["hidden_states"].flatten(1), seen["in"]["encoder_hidden_states"].flatten(1)], 1)
            context, hidden = seen["out"]
            v = torch.cat([hidden.flatten(1), context.flatten(1)], 1)
            rows.append({"input": x, "residual": v - x})
    for hook in hooks:
        hook.remove()
    return rows


@pytest.mark.parametrize("tau", [0.05, 0.2])
def test_easycache_over_two_streams_means_over_both(tau):
    """SD3's stack carries an image and a context stream: EasyCache's rate and change are means over both
    streams' elements of a sample, as if concatenated (once refused: no single residual)."""
    model, fixed = tiny_sd3(num_layers=4)
    inputs = moving_latent(fixed)
    ts = timesteps(14)
    rows = _two_stream_rows(model, inputs, ts)
    cached = optimize_exported(model, inputs(ts[0]), "easycache", tau=tau, warmup=2)
    outputs = generation(cached, inputs, ts)
    expected = easycache_python(rows, tau, 2)
    assert cached.state.sample_decisions() == expected
    assert any("cached" in d for d in expected) and any(d.count("computed") > 3 for d in expected)
    assert_exact_iff_computed(outputs, generation(model, inputs, ts), expected)


def test_the_computed_step_error_counts_each_sample_on_its_own_computed_steps():
    """With per-sample decisions a step computes for some samples and blends the others back to their
    cache: the report's computed-step error (0 where exactness is promised) looks at each sample on the steps
    it computed, not at the whole batch of every step some sample computed."""
    from graphcache.policies import make_policy
    from graphcache.runner import compare

    model, inputs = tiny_dit(num_layers=4, batch=2)
    result = compare(model, inputs, make_policy("dbcache", threshold=0.2, warmup=1), steps=12)
    per_sample = result.cached.state.sample_decisions()
    mixed = [k for k in range(12) if per_sample[0][k] != per_sample[1][k]]
    assert mixed, "the samples must decide differently at some step for this test to mean something"
    assert result.computed_step_error() == 0.0
    whole_steps = max(e for e, d in zip(result.errors(), result.decisions, strict=True) if d == "computed")
    assert whole_steps > 0.0
