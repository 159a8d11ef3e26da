"""DeepCache on U-Nets found by structure: diffusers' UNet2DConditionModel and a hand-written U-Net."""

from __future__ import annotations

import pytest
import torch

from graphcache.capture import capture_export
from graphcache.errors import PolicyConfigError, UnsupportedGraphError
from graphcache.exported import optimize_exported
from graphcache.passes.find_unet_skip import skip_concats
from graphcache.passes.graph_utils import module_stack

from helpers import assert_exact_iff_computed, generation, timesteps
from models import hand_written_unet, tiny_dit, tiny_unet


def test_skip_connections_found_outermost_first():
    model, inputs = tiny_unet()
    gm, _ = capture_export(model, inputs(999))
    concats = skip_concats(gm.graph)
    # conv_in, down block 0 (resnet + attention), its downsampler, down block 1: four skips, used LIFO
    assert len(concats) == 4
    owners = [module_stack(c.skip)[-1][1] if module_stack(c.skip) else "" for c in concats]
    assert "conv_in" in owners[0] and "down_blocks" in owners[1]
    positions = {n: i for i, n in enumerate(gm.graph.nodes)}
    assert [positions[c.concat] for c in concats] == sorted((positions[c.concat] for c in concats), reverse=True)


@pytest.mark.parametrize("skip", [0, 1, 2, 3])
def test_compute_steps_bit_exact_cached_steps_shallow(skip):
    model, inputs = tiny_unet()
    ts = timesteps(9)
    cached = optimize_exported(model, inputs(ts[0]), "deepcache", skip=skip, interval=3)
    outputs, reference = generation(cached, inputs, ts), generation(model, inputs, ts)
    decisions = cached.state.decisions()
    assert decisions == ["computed", "cached", "cached"] * 3
    assert_exact_iff_computed(outputs, reference, [decisions] * 2)
    # the deep side is gone from the cached step: its branch only hands back the cached feature
    cached_ops = [n for n in cached.module._gc_cached.graph.nodes if n.op == "call_function"]
    assert all(str(n.target) == "aten.clone.default" for n in cached_ops)
    def in_mid_block(graph):  # the U-Net's bottom: behind every skip
        return [n for n in graph.nodes if any("mid_block" in path for _, path, _ in module_stack(n))]

    assert in_mid_block(capture_export(model, inputs(ts[0]))[0].graph)
    assert not in_mid_block(cached.module.graph)  # outside the cond: the shallow path only


def test_cached_step_output_is_the_shallow_path_on_the_cached_feature():
    """A cached step equals the U-Net run with the deep feature of the last computed step spliced in."""
    model, inputs = tiny_unet()
    ts = timesteps(3)
    cached = optimize_exported(model, inputs(ts[0]), "deepcache", skip=1, interval=3)
    generation(cached, inputs, ts[:1])
    captured = {}
    up_block = model.up_blocks[0]  # its output is the feature entering the concat with skip 1

    def record(_module, _args, output):
        captured.setdefault("feature", output)
        return captured["feature"]

    handle = up_block.register_forward_hook(record)
    try:
        with torch.no_grad():
            model(**inputs(ts[0]))
            spliced = model(**inputs(ts[1])).sample
    finally:
        handle.remove()
    torch.testing.assert_close(cached(**inputs(ts[1]))[0], spliced, rtol=1e-5, atol=1e-5)


def test_hand_written_unet_structure_not_names():
    model, inputs = hand_written_unet()
    ts = timesteps(6)
    for skip in (0, 1):
        cached = optimize_exported(model, inputs(ts[0]), "deepcache", skip=skip, interval=2)
        outputs, reference = generation(cached, inputs, ts), generation(model, inputs, ts)
        assert cached.state.decisions() == ["computed", "cached"] * 3
        assert_exact_iff_computed(outputs, reference, [cached.state.decisions()] * 2)


def test_errors():
    model, inputs = tiny_dit()
    with pytest.raises(UnsupportedGraphError, match="no skip connections found: DeepCache needs a U-Net"):
        optimize_exported(model, inputs(999), "deepcache")
    model, inputs = tiny_unet()
    with pytest.raises(UnsupportedGraphError, match=r"skip=4 is out of range: this U-Net has 4 skip connections"):
        optimize_exported(model, inputs(999), "deepcache", skip=4)


def _deepcache_reference_power_schedule(total, n, center, pow=1.4):
    """``sample_from_quad_center`` as DeepCache's Stable Diffusion pipeline writes it (Python's power of a
    negative base is complex; numpy's int32 cast keeps the real part)."""
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while pow > 1:
            x_values = np.linspace((-center) ** (1 / pow), (total - center) ** (1 / pow), n + 1)
            indices = [0] + [int(x) + center for x in np.unique(np.int32(x_values**pow))[1:-1]]
            if len(indices) == n:
                return tuple(indices)
            pow -= 0.02
    return None


def test_power_schedule_is_deepcaches():
    from graphcache.policies.deepcache import power_schedule

    for total in range(6, 120, 7):
        for interval in (2, 3, 5):
            n = -(-total // interval)
            for center in (0, 5, 15):
                want = _deepcache_reference_power_schedule(total, n, center)
                if want is None or max(want) >= total:
                    with pytest.raises(PolicyConfigError, match="finds no spacing"):
                        power_schedule(total, n, center, 1.4)
                else:
                    assert power_schedule(total, n, center, 1.4) == want, (total, interval, center)


def test_power_schedule_computes_its_steps_exactly():
    """``schedule=power``: the computed steps are the schedule's (later steps than num_steps are computed), bit
    exact with the model; the cached ones run the shallow path."""
    from graphcache.policies.deepcache import power_schedule

    model, inputs = tiny_unet()
    ts = timesteps(12)
    cached = optimize_exported(model, inputs(ts[0]), "deepcache", schedule="power", num_steps=10, interval=3,
                               center=4)
    outputs, reference = generation(cached, inputs, ts), generation(model, inputs, ts)
    decisions = cached.state.decisions()
    steps = power_schedule(10, 4, 4, 1.4)
    assert len(steps) == 4 and steps != (0, 3, 6, 9)  # not the uniform one
    assert [k for k, d in enumerate(decisions) if d == "computed"] == [*steps, 10, 11]
    assert_exact_iff_computed(outputs, reference, [decisions] * 2)


def test_power_schedule_needs_num_steps():
    import graphcache

    with pytest.raises(PolicyConfigError, match=r"deepcache.schedule='power' is invalid: needs num_steps"):
        graphcache.make_policy("deepcache", schedule="power")
    with pytest.raises(PolicyConfigError, match=r"deepcache.schedule='power' finds no spacing of 5 computed steps "
                                                r"out of 10 around center=5"):
        graphcache.make_policy("deepcache", schedule="power", num_steps=10, interval=2, center=5)
    every = graphcache.make_policy("deepcache", schedule="power", num_steps=6, interval=1)
    assert every.computed_steps() == tuple(range(6))  # DeepCache's pipeline: interval 1 computes every step
