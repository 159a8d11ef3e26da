"""TaylorSeer policy: schedule, compute steps bit-exact, forecast memory, better than reuse on a real model."""

from __future__ import annotations

import pytest
import torch

from graphcache.exported import optimize_exported
from graphcache.policies import make_policy
from graphcache.policies.taylorseer import TaylorSeer

from helpers import generation, run_with_stream_hooks, timesteps
from models import tiny_dit


@pytest.mark.parametrize("lite", [False, True])
def test_compute_steps_bit_exact_and_schedule(lite):
    model, inputs = tiny_dit()
    ts = timesteps(12)
    policy = TaylorSeer(interval=4, order=2, warmup=2, lite=lite)
    cached = optimize_exported(model, inputs(ts[0]), policy)
    outputs = generation(cached, inputs, ts)
    reference = generation(model, inputs, ts)
    decisions = cached.state.decisions()
    assert decisions == ["computed" if c else "cached" for c in policy.expected(12)]
    assert "".join("C" if d == "computed" else "." for d in decisions) == "CCC...C...C."  # warm-up 0, 1; then 2, 6, 10
    for out, ref, decision in zip(outputs, reference, decisions, strict=True):
        assert torch.equal(out, ref) == (decision == "computed")


def test_memory_is_order_plus_one_tensors_per_unit():
    model, inputs = tiny_dit(num_layers=3, batch=2)
    hidden = 2 * 16 * 32 * 4
    full = optimize_exported(model, inputs(999), "taylorseer", order=2)
    lite = optimize_exported(model, inputs(999), "taylorseer", order=2, lite=True)
    assert full.state.cache_bytes() == 3 * 2 * 3 * hidden  # blocks x (attention, MLP) x (m + 1)
    assert lite.state.cache_bytes() == 3 * hidden  # one unit x (m + 1): O(1) in depth


def test_bad_order():
    from graphcache.errors import PolicyConfigError

    with pytest.raises(PolicyConfigError, match=r"taylorseer.order=9 is invalid: must be an integer in 0..6"):
        make_policy("taylorseer", order=9)


def test_hicache_compute_steps_bit_exact_and_forecasts_differ_from_taylor():
    model, inputs = tiny_dit()
    ts = timesteps(10)
    reference = generation(model, inputs, ts)
    hi = optimize_exported(model, inputs(ts[0]), "hicache", order=2, warmup=1, interval=3, lite=True)
    ta = optimize_exported(model, inputs(ts[0]), "taylorseer", order=2, warmup=1, interval=3, lite=True)
    out_hi, out_ta = generation(hi, inputs, ts), generation(ta, inputs, ts)
    assert hi.state.decisions() == ta.state.decisions()
    for a, b, ref, decision in zip(out_hi, out_ta, reference, hi.state.decisions(), strict=True):
        if decision == "computed":
            assert torch.equal(a, ref) and torch.equal(b, ref)
    cached = [i for i, d in enumerate(hi.state.decisions()) if d == "cached" and i > 2]
    assert any(not torch.equal(out_hi[i], out_ta[i]) for i in cached)


def test_hicache_sigma_validated():
    from graphcache.errors import PolicyConfigError

    with pytest.raises(PolicyConfigError, match=r"hicache.sigma=0 is invalid: must be in \(0, 2\]"):
        make_policy("hicache", sigma=0)


@pytest.mark.parametrize("forecast_from", [0, 9])
def test_lite_first_order_forecast_in_the_graph_is_the_formula(forecast_from):
    """At cached step i the stack output is h_in + r_a + (i - a) (r_a - r_b) / (a - b) (r = out - in at the
    last two computed steps a, b), checked against the model run with its last block's output replaced;
    before ``forecast_from`` it is h_in + r_a (reuse)."""
    model, inputs = tiny_dit(num_layers=4)
    ts = timesteps(16)
    cached = optimize_exported(model, inputs(ts[0]), "taylorseer", lite=True, order=1, interval=4, warmup=3,
                               forecast_from=forecast_from)
    outputs = generation(cached, inputs, ts)
    decisions = cached.state.decisions()
    history = []
    for i, t in enumerate(ts):
        if decisions[i] == "computed":
            _, seen = run_with_stream_hooks(model, inputs(t), 2, {})
            history.append((i, seen["out"] - seen["in"]))
            continue
        (a, r_a), (b, r_b) = history[-1], history[-2]
        r = r_a + (i - a) * (r_a - r_b) / (a - b) if i >= forecast_from else r_a
        want, _ = run_with_stream_hooks(model, inputs(t), 2, {"out": lambda seen, r=r: seen["in"] + r})
        torch.testing.assert_close(outputs[i], want, rtol=1e-5, atol=1e-5)


def test_the_documented_mapping_from_diffusers_taylorseer_config():
    """``taylorseer{interval=N, warmup=W+1}`` computes diffusers' steps for (N, W) plus step W, as documented."""
    from graphcache.policies.taylorseer import TaylorSeer, diffusers_schedule

    for n, w in ((5, 3), (4, 1), (6, 0)):
        ours = TaylorSeer(interval=n, warmup=w + 1).expected(30)
        theirs = diffusers_schedule(30, n, w)
        assert [i for i in range(30) if ours[i] != theirs[i]] == [w]
        assert TaylorSeer(interval=n, warmup=w).expected(30) != theirs
