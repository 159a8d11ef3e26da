"""Per-sample decisions only where the hidden stream is laid out by sample. ErnieImage's stream is
sequence-first (tokens, batch, width): its rows are tokens, each holding every sample of the batch, so rows
deciding apart mixed the samples (a step logged as computed returned some token rows from the cache). Such a
model decides once per call, as ``per_sample=false`` does, and says so."""

from __future__ import annotations

import warnings

import pytest
import torch

import graphcache
from graphcache.passes.base import analysis

from zoo import ZOO
from zoo.registry import output_tensor


def _run(name: str, policy: str) -> tuple[list[torch.Tensor], list[str], list[str], object]:
    entry = ZOO[name]
    torch._dynamo.reset()
    fast = graphcache.optimize(entry.build(), policy=policy, backend="eager")
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [output_tensor(fast(**entry.inputs(t))).clone() for t in entry.timesteps(7)]
    said = [str(w.message) for w in caught if "per-sample decisions need" in str(w.message)]
    return outs, graphcache.decisions(fast), said, analysis(fast.states[0].gm).decision


@pytest.mark.parametrize("threshold", [0.5, 0.6])
def test_a_sequence_first_stream_decides_once_per_call(threshold):
    outs, decisions, said, decision = _run("ErnieImageTransformer2DModel", f"fbcache{{threshold={threshold},warmup=2}}")
    ref, ref_decisions, _, _ = _run("ErnieImageTransformer2DModel",
                                    f"fbcache{{threshold={threshold},warmup=2,per_sample=false}}")
    assert said and "72 rows for 2 timesteps" in said[0]
    assert decision.pooled == "the signals have 72 rows for 2 timesteps"
    assert decisions == ref_decisions and "cached" in decisions and decisions.count("computed") > 2
    for a, b in zip(outs, ref, strict=True):
        assert torch.equal(a, b)


def test_a_stream_laid_out_by_sample_keeps_per_sample_decisions():
    _, decisions, said, decision = _run("DiTTransformer2DModel", "fbcache{threshold=1000.0,warmup=2}")
    assert not said and decision.pooled is None and decision.sample_mask is not None
    assert "cached" in decisions
