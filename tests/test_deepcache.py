"""DeepCache on U-Nets found by structure: diffusers' UNet2DConditionModel and a hand-written U-Net."""

from __future__ import annotations

import pytest
import torch

from graphcache.capture import capture_export
from graphcache.errors import UnsupportedGraphError
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
