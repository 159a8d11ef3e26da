"""The default policy ``auto``: FORA on a stack of repeated blocks, DeepCache on a U-Net, chosen by structure."""

from __future__ import annotations

import copy

import pytest
import torch

import graphcache
from graphcache.errors import NoStackError, SmallStackError

from helpers import assert_exact_iff_computed, generation, timesteps
from models import conv_net, hand_written_unet, tiny_dit, tiny_unet


def _run(model, inputs, policy=None, steps=7):
    fast = graphcache.optimize(model, backend="eager") if policy is None else \
        graphcache.optimize(model, policy, backend="eager")
    return fast, generation(fast, inputs, timesteps(steps))


@pytest.mark.parametrize("build,skip", [(tiny_unet, 1), (hand_written_unet, 1)], ids=["diffusers", "hand-written"])
def test_the_default_takes_deepcache_on_a_unet(build, skip):
    """diffusers' U-Net (repeated ResNet pairs holding too little of the step) and a U-Net with no repeated
    blocks at all: DeepCache behind skip 1, the same outputs as that policy named, computed steps exact."""
    model, inputs = build()
    reference = generation(model, inputs, timesteps(7))
    fast, outputs = _run(copy.deepcopy(model), inputs)
    named, expected = _run(copy.deepcopy(model), inputs, f"deepcache{{skip={skip}}}")
    decisions = graphcache.decisions(fast)
    assert decisions == ["computed", "cached", "cached"] * 2 + ["computed"]
    assert decisions == graphcache.decisions(named)
    assert all(torch.equal(a, b) for a, b in zip(outputs, expected, strict=True))
    assert_exact_iff_computed(outputs, reference, [decisions] * 2)
    assert [s.policy for s in fast.states] == ["deepcache"]
    assert len(fast.notes) == 1 and f"policy 'auto' applied deepcache(interval=3, skip={skip}" in fast.notes[0]


def test_fora_named_on_a_unet_is_refused_with_the_way_out():
    model, inputs = tiny_unet()
    fast = graphcache.optimize(model, "fora", backend="eager")
    with pytest.raises(SmallStackError, match=r"holds \d+% of the step.*for a U-Net use policy 'deepcache'"):
        fast(**inputs(999.0))


def test_the_default_is_fora_on_a_transformer():
    model, inputs = tiny_dit()
    fast, outputs = _run(copy.deepcopy(model), inputs)
    named, expected = _run(copy.deepcopy(model), inputs, "fora")
    assert graphcache.decisions(fast) == graphcache.decisions(named) == ["computed", "cached", "cached"] * 2 + [
        "computed"]
    assert all(torch.equal(a, b) for a, b in zip(outputs, expected, strict=True))
    assert fast.notes == [] and [s.policy for s in fast.states] == ["auto"]


def test_the_default_refuses_a_model_that_is_neither_with_foras_reason():
    """No repeated blocks and no skip connections: nothing for DeepCache either, FORA's refusal stands."""
    model, inputs = conv_net()
    fast = graphcache.optimize(model, backend="eager")
    with pytest.raises(NoStackError, match="no stack of repeated blocks"):
        fast(**inputs(999.0))


class _UNetWithoutTimestep(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unet = hand_written_unet()[0]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        u = self.unet
        s0 = u.stem(image)
        s1 = torch.nn.functional.silu(u.enc(s0))
        deep = u.core(u.shrink(s1))
        return u.rim(torch.cat([u.dec(torch.cat([u.grow(deep), s1], 1)), s0], 1))


def test_when_deepcache_refuses_too_both_reasons_are_given():
    fast = graphcache.optimize(_UNetWithoutTimestep().eval(), backend="eager")
    with pytest.raises(graphcache.UnsupportedGraphError,
                       match=r"no stack of repeated blocks.*Policy 'auto' then tried deepcache\(.*which refused: .*"
                             r"no timestep input"):
        fast(image=torch.randn(2, 3, 8, 8))
