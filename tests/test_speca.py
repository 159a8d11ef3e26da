"""SpeCa: forecast, verify with the real last block, recompute on rejection; against a reference written
with the model's own modules."""

from __future__ import annotations

import pytest
import torch

import graphcache
from graphcache.errors import PolicyConfigError
from graphcache.exported import optimize_exported

from helpers import assert_exact_iff_computed, generation, run_with_stream_hooks, timesteps
from models import tiny_dit

STEPS, LAYERS = 16, 4


def speca_reference(model, inputs, ts, tau, warmup=3, max_forecasts=8):
    """SpeCa with one decision per batch (mean of the per-sample errors), order-1 Taylor drafts of the
    deltas (entering the last block - stack input) and (stack output - entering the last block)."""
    computed, decisions, outputs, errors = [], [], [], []  # computed: (step, front, rear)

    def draft(i):
        (a, front, rear), prev = computed[-1], computed[-2] if len(computed) > 1 else None
        if prev is None:
            return front, rear
        k = (i - a) / (a - prev[0])
        return front + (front - prev[1]) * k, rear + (rear - prev[2]) * k

    for i, t in enumerate(ts):
        kw = inputs(t)
        compute = i < warmup or i - computed[-1][0] > max_forecasts
        if not compute:
            front, rear = draft(i)
            with torch.no_grad():
                h = model.pos_embed(kw["hidden_states"])
                real = model.transformer_blocks[-1](h + front, timestep=kw["timestep"], class_labels=kw["class_labels"])
            e = ((real - (h + front + rear)).flatten(1).norm(dim=1) / real.flatten(1).norm(dim=1)).mean()
            errors.append(float(e))
            compute = not e <= tau(i)
        if compute:
            sample, seen = run_with_stream_hooks(model, kw, LAYERS - 1, {})
            computed.append((i, seen["mid"] - seen["in"], seen["out"] - seen["mid"]))
        else:
            sample, _ = run_with_stream_hooks(model, kw, LAYERS - 1, {
                "out": lambda seen, f=front, r=rear: seen["in"] + f + r})
        decisions.append("computed" if compute else "cached")
        outputs.append(sample)
    return decisions, outputs, errors


@pytest.mark.parametrize("threshold", ["all", "some", "none"])
def test_decisions_and_outputs_match_reference(threshold):
    model, inputs = tiny_dit(num_layers=LAYERS)
    ts = timesteps(STEPS)
    _, _, errors = speca_reference(model, inputs, ts, lambda i: float("inf"))
    tau = {"all": 1e9, "some": sorted(errors)[len(errors) // 2], "none": 0.0}[threshold]
    options = dict(forecast="taylor:1", tau0=tau, decay=1.0, tau_min=tau, num_steps=STEPS, per_sample=False)
    cached = optimize_exported(model, inputs(ts[0]), "speca", **options)
    outputs = generation(cached, inputs, ts)
    decisions, reference, _ = speca_reference(model, inputs, ts, lambda i: tau)
    assert cached.state.decisions() == decisions
    if threshold == "all":  # accepted until max_forecasts
        assert decisions == ["computed"] * 3 + ["cached"] * 8 + ["computed"] + ["cached"] * 4
    if threshold == "some":
        assert 0 < decisions[3:].count("cached") < STEPS - 3
    assert_exact_iff_computed(outputs, generation(model, inputs, ts), [decisions] * 2)
    for i, (out, ref) in enumerate(zip(outputs, reference, strict=True)):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5, msg=f"step {i}")


def test_bad_options_are_named():
    model, inputs = tiny_dit(num_layers=LAYERS)
    with pytest.raises(PolicyConfigError, match=r"speca.decay=0.0 is invalid: must be in \(0, 1\]"):
        optimize_exported(model, inputs(999), "speca", decay=0.0)
    with pytest.raises(PolicyConfigError, match=r"speca.warmup=0 is invalid: must be an integer >= 1"):
        optimize_exported(model, inputs(999), "speca", warmup=0)


def test_each_sample_decides_as_if_alone():
    ts = timesteps(STEPS)
    model, pair = tiny_dit(num_layers=LAYERS, batch=2)
    _, alone = tiny_dit(num_layers=LAYERS, batch=1)
    _, _, errors = speca_reference(model, pair, ts, lambda i: float("inf"))
    tau = sorted(errors)[len(errors) // 2]
    options = dict(tau0=tau, decay=1.0, tau_min=tau, num_steps=STEPS)
    both = optimize_exported(model, pair(ts[0]), "speca", **options)
    single = optimize_exported(model, alone(ts[0]), "speca", **options)
    outputs, first = generation(both, pair, ts), generation(single, alone, ts)
    assert both.state.sample_decisions()[0] == single.state.decisions()
    assert both.state.sample_decisions()[0] != both.state.sample_decisions()[1]
    for i, (out, ref) in enumerate(zip(outputs, first, strict=True)):
        torch.testing.assert_close(out[:1], ref, rtol=1e-4, atol=1e-5, msg=f"step {i}")


def test_a_last_block_that_writes_a_tensor_shared_with_the_model_is_refused():
    """SpeCa runs a copy of the last block before the blocks; a copy that wrote a tensor the rest of the model
    reads (here a buffer every block scales in place through a view) would change the computed steps: refused
    by name."""
    from graphcache.errors import UnsupportedGraphError

    model, inputs = tiny_dit(num_layers=LAYERS)
    model.register_buffer("shared", torch.ones(1))
    for block in model.transformer_blocks:
        forward = block.forward

        def writing(*args, _forward=forward, **kwargs):
            model.shared[:1].mul_(1.0)  # through a view the block makes
            return _forward(*args, **kwargs)

        block.forward = writing
    torch._dynamo.reset()
    fast = graphcache.optimize(model, "speca", backend="eager")
    with torch.no_grad(), pytest.raises(UnsupportedGraphError, match=r"writes .* in place, a tensor it shares"):
        fast(**inputs(999.0))
