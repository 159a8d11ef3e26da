"""Every graph policy under the ways pipelines call a denoiser: CFG as two calls with cache contexts and without
(routed by the repeated timestep), Heun's repeated timesteps, and img2img (a generation that starts lower).
Each stream's outputs and decisions must equal the same policy run on that stream alone; test_streams.py
checks the same with FORA in more detail."""

from __future__ import annotations

import pytest
import torch

import graphcache

from helpers import timesteps
from models import hand_written_dit
from zoo.matrix import flat_magcache

# Each policy set so that it caches within 7 steps on the hand-written DiT (as the zoo's sweep sets them).
POLICIES = {
    "fora": "fora{interval=3}",
    "fora-block": "fora{interval=3,granularity=block}",
    "fbcache": "fbcache{threshold=0.3,warmup=1}",
    "fbcache-buckets": "fbcache{threshold=0.3,warmup=1,buckets=1}",  # per-sample steps on the needing rows only
    "taylorseer-lite": "taylorseer{lite=true,interval=3,warmup=1,order=1}",
    "taylorseer": "taylorseer{interval=3,warmup=1,order=2}",
    "foca": "foca{interval=3,warmup=2}",
    "hicache-lite": "hicache{interval=3,warmup=2,order=2,lite=true}",
    "abcache": "abcache{interval=3,warmup=2,order=2}",
    "dbcache": "dbcache{fn=1,bn=1,threshold=0.3,warmup=2}",
    "adacache": "adacache{codebook='1000.0:3',default_steps=3}",
    "teacache": "teacache{threshold=0.3,coefficients=[1.0,0.0],warmup=1}",
    "easycache": "easycache{tau=1000.0,warmup=2}",
    "magcache": "magcache{threshold=1000.0,max_skips=2,retention=0.0,calibration='{calibration}'}",
    "speca": "speca{tau0=1000.0,tau_min=1000.0,warmup=2,num_steps=7}",
    "pab": "pab{spatial=2,temporal=2,cross=2,window_low=0.0,window_high=1000000.0}",
    "fastercache": "fastercache{spatial=2,temporal=2,window_low=0.0,window_high=1000000.0,num_steps=7}",
    "deltadit": "deltadit{interval=2,boundary=3}",
}


def _stream(seed: int):
    """A stream's inputs at timestep ``t``: its own latent, moved with ``t`` as a sampler moves it."""
    x = torch.randn(2, 10, 4, generator=torch.Generator().manual_seed(seed))
    return lambda t: {"latent": x * (1.0 + (999.0 - t) / 2000.0), "noise_level": torch.full((2,), t)}


def _run(fast, calls):
    """``calls``: (context or None, inputs) in calling order; the outputs, in the same order."""
    outs = []
    with torch.no_grad():
        for context, kwargs in calls:
            if context is None:
                outs.append(fast(**kwargs))
            else:
                with fast.cache_context(context):
                    outs.append(fast(**kwargs))
    return outs


def _optimized(spec: str, tmp_path):
    model, _ = hand_written_dit()
    if "{calibration}" in spec:
        spec = spec.replace("{calibration}", str(flat_magcache(tmp_path / "magcache.json", model)))
    return graphcache.optimize(model, spec, backend="eager")


def _alone(fast, stream, ts):
    fast.reset()
    outs = _run(fast, [(None, stream(t)) for t in ts])
    return outs, graphcache.decisions(fast)


def _assert_same(got, want, what):
    assert len(got) == len(want), what
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(a, b), f"{what}: call {k} differs by {float((a - b).abs().max()):.3g}"


@pytest.mark.parametrize("policy", POLICIES)
def test_each_stream_equals_the_policy_run_alone(policy, tmp_path):
    """Two calls per step in contexts and without, then Heun: each stream as if alone (MagCache's calibrated
    ratios were once zeroed in every stream after the first, taken for state by the context switch)."""
    spec = POLICIES[policy]
    cond, uncond, ts = _stream(1), _stream(2), timesteps(7)
    reference = _optimized(spec, tmp_path)
    alone_c, decisions_c = _alone(reference, cond, ts)
    alone_u, decisions_u = _alone(reference, uncond, ts)
    heun_2, decisions_2 = _alone(reference, cond, ts[1:])
    img2img, _ = _alone(reference, uncond, ts[2:])
    assert "cached" in decisions_c and "cached" in decisions_2, f"nothing cached alone: {decisions_c}"

    fast = _optimized(spec, tmp_path)
    for contexts in (True, False):  # CFG as two calls, in diffusers' cache contexts or in a hand-written loop
        fast.reset()
        names = ("cond", "uncond") if contexts else (None, None)
        outs = _run(fast, [(name, stream(t)) for t in ts for name, stream in zip(names, (cond, uncond), strict=True)])
        what = "two calls in contexts" if contexts else "two calls without contexts"
        _assert_same(outs[0::2], alone_c, f"{what}, cond")
        _assert_same(outs[1::2], alone_u, f"{what}, uncond")
        if contexts:
            for name, decisions in (("cond", decisions_c), ("uncond", decisions_u)):
                with fast.cache_context(name):
                    assert graphcache.decisions(fast) == decisions, name

    fast.reset()  # Heun: t0, t1, t1, t2, t2, ...: the second call at a timestep is the second stage's stream
    outs = _run(fast, [(None, cond(t)) for t in [ts[0]] + [t for t in ts[1:] for _ in range(2)]])
    _assert_same([outs[0], *outs[1::2]], alone_c, "Heun, first stage")
    _assert_same(outs[2::2], heun_2, "Heun, second stage")
    # img2img right after, without reset(): a generation that starts at a lower timestep is a new one
    _assert_same(_run(fast, [(None, uncond(t)) for t in ts[2:]]), img2img, "img2img after Heun")
