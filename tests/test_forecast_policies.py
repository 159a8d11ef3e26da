"""FoCa and AB-Cache policies, and any decision composed with any forecast (``forecast=...``)."""

from __future__ import annotations

import pytest
import torch

from graphcache.errors import PolicyConfigError
from graphcache.exported import optimize_exported
from graphcache.policies import make_policy

from helpers import assert_exact_iff_computed, generation, timesteps
from models import tiny_dit


@pytest.mark.parametrize("policy", ["foca", "abcache", "taylorseer{newton=true,order=2}"])
@pytest.mark.parametrize("lite", [False, True])
def test_compute_steps_bit_exact_and_cached_steps_forecast(policy, lite):
    model, inputs = tiny_dit()
    ts = timesteps(12)
    config = make_policy(policy, interval=3, warmup=3, lite=lite)
    cached = optimize_exported(model, inputs(ts[0]), config)
    reuse = optimize_exported(model, inputs(ts[0]), "fora", interval=3, warmup=3,
                              granularity="stack" if lite else "block")
    outputs, reused = generation(cached, inputs, ts), generation(reuse, inputs, ts)
    reference = generation(model, inputs, ts)
    decisions = cached.state.decisions()
    assert "".join("C" if d == "computed" else "." for d in decisions) == "CCCC..C..C.."
    assert_exact_iff_computed(outputs, reference, [decisions] * 2)
    for i, d in enumerate(decisions):  # a forecast, not the reused value
        if d == "cached":
            assert not torch.equal(outputs[i], reused[i]), i


def test_memory_per_unit():
    model, inputs = tiny_dit(num_layers=3, batch=2)
    hidden = 2 * 16 * 32 * 4  # bytes of one [2, 16, 32] float32 unit
    units = 3 * 2  # blocks x (attention, MLP)
    assert optimize_exported(model, inputs(999), "foca").state.cache_bytes() == units * 3 * hidden
    assert optimize_exported(model, inputs(999), "abcache", order=3).state.cache_bytes() == units * 3 * hidden
    assert optimize_exported(model, inputs(999), "abcache", order=3, lite=True).state.cache_bytes() == 3 * hidden
    assert optimize_exported(model, inputs(999), "fbcache", forecast="taylor:2").state.cache_bytes() == 3 * hidden


@pytest.mark.parametrize("forecast", ["taylor:1", "foca", "ab:2"])
def test_per_sample_decision_with_forecast_equals_each_sample_alone(forecast):
    """FBCache decisions per sample + a forecast: each sample of a batch of 4 gets its alone decisions and
    outputs (per-sample clocks: a sample's forecast counts its own computed steps)."""
    model, inputs = tiny_dit(num_layers=3, batch=4)
    ts = timesteps(12)
    options = {"threshold": 0.16, "forecast": forecast}
    cached = optimize_exported(model, inputs(ts[0]), "fbcache", **options)
    together = generation(cached, inputs, ts)
    per_sample = cached.state.sample_decisions()
    assert len({tuple(d) for d in per_sample}) >= 2, "samples should disagree somewhere, or this checks nothing"
    assert_exact_iff_computed(together, generation(model, inputs, ts), per_sample, exact_only=True)
    reuse = generation(optimize_exported(model, inputs(ts[0]), "fbcache", threshold=0.16), inputs, ts)
    assert any(not torch.equal(a, b) for a, b in zip(together, reuse, strict=True))
    for s in range(4):
        def one(t, s=s):
            return {k: v[s : s + 1] for k, v in inputs(t).items()}

        alone = optimize_exported(model, one(ts[0]), "fbcache", **options)
        outputs = generation(alone, one, ts)
        assert alone.state.decisions() == per_sample[s]
        for got, want in zip(together, outputs, strict=True):
            torch.testing.assert_close(got[s : s + 1], want, atol=1e-5, rtol=1e-5)


def test_dbcache_with_taylor_forecast_pooled():
    model, inputs = tiny_dit(num_layers=4, batch=2)
    ts = timesteps(12)
    options = {"threshold": 0.3, "warmup": 2, "per_sample": False}
    taylor = optimize_exported(model, inputs(ts[0]), "dbcache", forecast="taylor:2", **options)
    reuse = optimize_exported(model, inputs(ts[0]), "dbcache", **options)
    out_t, out_r = generation(taylor, inputs, ts), generation(reuse, inputs, ts)
    decisions = taylor.state.decisions()
    assert decisions == reuse.state.decisions() and "cached" in decisions
    assert_exact_iff_computed(out_t, generation(model, inputs, ts), [decisions] * 2, exact_only=True)
    assert any(not torch.equal(a, b) for a, b, d in zip(out_t, out_r, decisions, strict=True) if d == "cached")


def test_dynamic_forecast_from_reuses_before_the_step():
    """dbcache{forecast=taylor:1,forecast_from=S}: cached steps before S equal plain reuse, later ones forecast."""
    model, inputs = tiny_dit(num_layers=4, batch=2)
    ts = timesteps(12)
    options = {"threshold": 0.3, "warmup": 2, "per_sample": False}
    reuse = generation(optimize_exported(model, inputs(ts[0]), "dbcache", **options), inputs, ts)
    late = optimize_exported(model, inputs(ts[0]), "dbcache", forecast="taylor:1", forecast_from=7, **options)
    outputs, decisions = generation(late, inputs, ts), late.state.decisions()
    cached = [i for i, d in enumerate(decisions) if d == "cached"]
    assert any(i < 7 for i in cached) and any(i >= 7 for i in cached), decisions
    for i in cached:
        assert torch.equal(outputs[i], reuse[i]) == (i < 7), i
    with pytest.raises(PolicyConfigError, match=r"fbcache.forecast_from=-1 is invalid: must be an integer >= 0"):
        make_policy("fbcache", forecast="foca", forecast_from=-1)


@pytest.mark.parametrize(("spec", "message"), [
    ("magic", r"fbcache.forecast='magic' is invalid: choose one of reuse \| taylor:M"),
    ("taylor:x", r"the order after ':' must be an integer, e.g. taylor:2"),
    ("foca:2", r"'foca' takes no order"),
    ("ab:9", r"ab's order must be in 1..5"),
])
def test_bad_forecast_is_named(spec, message):
    with pytest.raises(PolicyConfigError, match=message):
        make_policy("fbcache", forecast=spec)


def test_bad_options():
    with pytest.raises(PolicyConfigError, match=r"abcache.order=6 is invalid: must be an integer in 1..5"):
        make_policy("abcache", order=6)
    with pytest.raises(PolicyConfigError, match=r"foca.damp_after=0 is invalid: must be a number > 0"):
        make_policy("foca", damp_after=0)
