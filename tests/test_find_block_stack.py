"""The block stack is found by structure on diffusers and hand-written denoisers, from both captures."""

from __future__ import annotations

import pytest
import torch

from graphcache.capture import capture_export, prepare_dynamo_graph
from graphcache.errors import UnsupportedGraphError
from graphcache.passes import FindBlockStack
from graphcache.passes.base import analysis

from models import conv_net, hand_written_dit, tiny_dit, tiny_flux, tiny_pixart, tiny_sd3


def export_stack(factory, **kw):
    model, inputs = factory(**kw)
    gm, _ = capture_export(model, inputs(500.0))
    FindBlockStack()(gm)
    return analysis(gm).block_stack


def dynamo_stack(model, inputs):
    found = {}

    def backend(gm, example_inputs):
        new = prepare_dynamo_graph(gm, example_inputs)
        FindBlockStack()(new)
        found["stack"] = analysis(new).block_stack
        return gm.forward

    with torch.no_grad():
        torch.compile(model, backend=backend, fullgraph=True)(**inputs(500.0))
    return found["stack"]


@pytest.mark.parametrize("layers", [2, 5])
def test_dit_stack_has_one_block_per_layer(layers):
    stack = export_stack(tiny_dit, num_layers=layers)
    assert [len(s.blocks) for s in stack.stacks] == [layers]
    assert stack.stacks[0].class_name == "BasicTransformerBlock"
    assert len(stack.stacks[0].stream_slots) == 1
    assert stack.timestep.name == "timestep"
    # the epilogue re-enters block 0's label embedding: those nodes must not join block 0
    block0 = stack.stacks[0].blocks[0]
    assert all(n not in stack.epilogue for n in block0.nodes)
    assert len({len(b.nodes) for b in stack.stacks[0].blocks}) == 1


def test_flux_two_stacks_with_two_streams():
    stack = export_stack(tiny_flux, dual=2, single=3)
    assert [(s.class_name, len(s.blocks)) for s in stack.stacks] == [
        ("FluxTransformerBlock", 2), ("FluxSingleTransformerBlock", 3)]
    assert [len(s.stream_slots) for s in stack.stacks] == [2, 2]
    assert len(stack.stream_inputs) == 2
    assert stack.modulation, "temb (from the timestep) is a shared input of every block"


@pytest.mark.parametrize("factory,expected", [
    (tiny_sd3, ("JointTransformerBlock", 2)),  # 3 layers, the last one is built differently
    (tiny_pixart, ("BasicTransformerBlock", 3)),
    (hand_written_dit, ("_Layer", 4)),
])
def test_unlisted_architectures(factory, expected):
    stack = export_stack(factory)
    assert [(s.class_name, len(s.blocks)) for s in stack.stacks] == [expected]


def test_names_do_not_matter():
    """Same hand-written model, blocks under another name: same stack."""
    stack = export_stack(hand_written_dit, trunk_name="zz_misc")
    assert len(stack.stacks[0].blocks) == 4
    assert stack.stacks[0].blocks[0].path == "zz_misc.0"


@pytest.mark.parametrize("factory", [tiny_dit, tiny_flux])
def test_dynamo_capture_finds_the_same_stack(factory):
    model, inputs = factory()
    exported = export_stack(factory)
    dynamo = dynamo_stack(model, inputs)
    assert [len(s.blocks) for s in dynamo.stacks] == [len(s.blocks) for s in exported.stacks]
    assert [len(s.stream_slots) for s in dynamo.stacks] == [len(s.stream_slots) for s in exported.stacks]
    assert "timestep" in dynamo.timestep.name


def test_graph_without_stack_is_rejected_with_what_was_found():
    with pytest.raises(UnsupportedGraphError, match=r"no stack of repeated blocks found .*3 x Conv2d.*requires at "
                                                    r"least 2 consecutive calls"):
        export_stack(conv_net)


def test_missing_timestep_is_rejected():
    class NoTime(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(3)])

        def forward(self, x):
            for b in self.blocks:
                x = x + b(x)
            return x

    gm, _ = capture_export(NoTime().eval(), {"x": torch.randn(2, 8)})
    with pytest.raises(UnsupportedGraphError, match="no timestep input found among the user inputs"):
        FindBlockStack()(gm)


def test_repeated_layers_inside_one_block_are_not_a_stack():
    """A 1-block DiT has no stack: to_v and to_out (same shapes) are linked through attention, not glue."""
    with pytest.raises(UnsupportedGraphError, match="no stack of repeated blocks"):
        export_stack(tiny_dit, num_layers=1)


def test_residual_written_in_the_parent_still_chains_blocks():
    class ParentResidual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.time = torch.nn.Linear(4, 8)
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(3)])

        def forward(self, x, t):
            c = self.time(torch.cat([t[:, None].sin().expand(-1, 2), t[:, None].cos().expand(-1, 2)], -1))
            for b in self.blocks:
                x = x + b(x + c)
            return x

    model = ParentResidual().eval()
    gm, _ = capture_export(model, {"x": torch.randn(2, 8), "t": torch.ones(2)})
    FindBlockStack()(gm)
    assert [len(s.blocks) for s in analysis(gm).block_stack.stacks] == [3]


def test_a_stack_holding_little_of_the_work_is_refused_with_the_policy_to_use():
    """A U-Net's only repeated blocks (two ResNet blocks of its mid block) hold ~10% of its FLOPs: a cached
    step would cost as much as a computed one, so the stack is refused and DeepCache is named."""
    from models import tiny_unet

    with pytest.raises(UnsupportedGraphError, match=r"holds \d+% of the step's multiply-accumulate work.*"
                                                    r"for a U-Net use policy 'deepcache'"):
        export_stack(tiny_unet)


def test_alternating_blocks_form_a_stack_of_pairs():
    """Latte alternates spatial and temporal blocks, ACE-Step sliding-window and full-attention layers: the
    repeated unit is a pair of calls, found as such."""
    stack = export_stack(hand_written_dit, layer="alternating")
    assert len(stack.stacks) == 1 and len(stack.stacks[0].blocks) == 2
    assert stack.stacks[0].blocks[0].path == "trunk.0+trunk.1"


@pytest.mark.parametrize("policy", ["fora", "fora{granularity=block}", "taylorseer"])
def test_alternating_blocks_compute_steps_exact(policy):
    from helpers import assert_exact_on_computed_steps, timesteps

    model, inputs = hand_written_dit(layer="alternating")
    assert_exact_on_computed_steps(model, inputs, timesteps(7), policy)


class _PairsReadingASlice(torch.nn.Module):
    """Bria-Fibo 2's main blocks: plain and text-reading layers alternate; each text layer reads its own
    slice ``text[:, k]``, taken between the two calls of a pair."""

    def __init__(self) -> None:
        super().__init__()
        from models import LAYERS

        self.time = torch.nn.Linear(16, 16)
        self.layers = torch.nn.ModuleList([LAYERS["plain"](16, 2) if k % 2 == 0 else _TextLayer() for k in range(4)])

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        angles = timestep.float()[:, None] * torch.arange(8, dtype=torch.float32)
        c = self.time(torch.cat([angles.sin(), angles.cos()], -1))
        for k, layer in enumerate(self.layers):
            x = layer(x, c) if k % 2 == 0 else layer(x, text[:, k // 2])
        return x


class _TextLayer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)
        self.mix = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return x + self.mix(torch.tanh(self.proj(x) + text[:, None]))


def test_pairs_whose_second_call_reads_its_own_slice_are_one_stack():
    from helpers import assert_exact_on_computed_steps, timesteps

    torch.manual_seed(0)
    model = _PairsReadingASlice().eval()
    x, text = torch.randn(2, 5, 16), torch.randn(2, 2, 16)

    def inputs(t):
        return {"x": x, "timestep": torch.full((2,), t), "text": text}

    stack = dynamo_stack(model, inputs)
    assert [b.path for b in stack.stacks[0].blocks] == ["layers.0+layers.1", "layers.2+layers.3"]
    assert_exact_on_computed_steps(model, inputs, timesteps(5), "fora")
