"""Every registered policy (and decisions composed with forecasts; DeepCache on a U-Net, PAB on PixArt):
torch.compile(fullgraph=True) with Inductor gives one graph, 0 graph breaks and 0 recompiles over two
generations, the same outputs, and the decisions and outputs of the same rewrite run op by op (the lowering
passes change how state is written, never what is decided: EasyCache's rate once read a cache the branch
had already overwritten in place)."""

from __future__ import annotations

import pytest
import torch

from graphcache.backend import make_backend
from graphcache.policies import available

from helpers import generation, moving_latent, timesteps
from models import tiny_dit, tiny_pixart, tiny_unet

STEPS = 12
OPTIONS = {  # options that give cached steps on the tiny DiT within 12 steps
    "adacache": {}, "dbcache": {"threshold": 0.15, "warmup": 1}, "easycache": {"tau": 10.0, "warmup": 2},
    "fbcache": {"threshold": 0.15}, "teacache": {}, "magcache": {}, "pab": {}, "fastercache": {"num_steps": STEPS},
    "speca": {"num_steps": STEPS},
}
# U-Net skips (the default ``auto`` takes DeepCache there); self- and cross-attention phases
MODELS = {"deepcache": tiny_unet, "auto": tiny_unet, "pab": tiny_pixart}
WRAPPING = {"cfgcache"}  # wraps the call, no graph passes: one graph / no recompiles in tests/test_cfgcache.py
CASES = [*sorted(set(available()) - WRAPPING), "fbcache{forecast=foca,threshold=0.15}",
         "dbcache{forecast=taylor:2,warmup=1,threshold=0.15}", "teacache{forecast=ab:3}"]


def test_every_registered_policy_is_covered():
    static = {"fora", "taylorseer", "hicache", "foca", "abcache", "deepcache", "deltadit", "auto"}
    assert set(OPTIONS) | static | WRAPPING >= set(available())


@pytest.mark.parametrize("policy", CASES)
def test_fullgraph_inductor_two_generations_no_recompiles(dit_calibration, policy):
    name = policy.split("{")[0]
    model, fixed = MODELS[name]() if name in MODELS else tiny_dit(num_layers=3, batch=2)
    inputs = moving_latent(fixed) if name == "easycache" else fixed
    options = dict(OPTIONS.get(name, {})) if "{" not in policy else {}
    if name in ("teacache", "magcache"):
        options["calibration"] = str(dit_calibration)
    states: list = []
    compiled = torch.compile(model, backend=make_backend(policy, "inductor", states, **options), fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        first = generation(compiled, inputs, timesteps(STEPS))
        decisions = states[0].decisions()
        second = generation(compiled, inputs, timesteps(STEPS))
    assert len(states) == 1, "more than one graph: a graph break"
    assert states[0].decisions() == decisions and "cached" in decisions
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(first, second, strict=True))
    eager_states: list = []
    eager = torch.compile(model, backend=make_backend(policy, "eager", eager_states, **options), fullgraph=True)
    reference = generation(eager, inputs, timesteps(STEPS))
    assert eager_states[0].decisions() == decisions
    for k, (a, b) in enumerate(zip(first, reference, strict=True)):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), f"step {k}: {float((a - b).abs().max()):.3g}"
