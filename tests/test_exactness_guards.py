"""Reduced models of the zoo's failure kinds, and the guards against silent wrong results: in-place writes kept
through the branches' dead-code elimination, the self-check that refuses a rewrite that does not reproduce the
model, branch outputs with canonical strides (batch 1 through nn.MultiheadAttention), the static cost model."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx as fx

import graphcache
from graphcache.passes.base import propagate_meta
from graphcache.passes.cost import node_flops
from graphcache.passes.dead_code import eliminate_dead_code, written_args
from graphcache.self_check import SelfCheckError

from helpers import assert_exact_on_computed_steps, generation, timesteps
from models import HandWrittenDiT, hand_written_dit


def _traced(fn, *example):
    """``fn`` as dynamo captures it (in-place writes as ``operator.setitem`` / ``call_method``), with meta vals."""
    captured = []

    def keep(gm, example_inputs):
        captured.append(gm)
        return gm.forward

    torch.compile(fn, backend=keep, fullgraph=True)(*example)
    gm = fx.GraphModule(captured[0], captured[0].graph)
    propagate_meta(gm, example)
    return gm


def test_dead_code_keeps_a_write_a_live_node_reads_and_drops_one_nobody_reads():
    def fn(x):
        out = torch.empty_like(x)
        out[:, 0::2] = x[:, 0::2] * 2  # read by the output: kept
        unused = x.clone()
        unused[:, :1] = 0.0  # read by nobody: dropped with its tensor
        return out[:, 0::2] + 1

    gm = _traced(fn, torch.randn(3, 4))
    writes_before = [n for n in gm.graph.nodes if written_args(n)]
    assert [n.target for n in writes_before] == [operator.setitem, operator.setitem]
    eliminate_dead_code(gm.graph)
    gm.recompile()
    kept = [n for n in gm.graph.nodes if written_args(n)]
    assert len(kept) == 1 and kept[0].args[0].name == "out"
    assert not any("clone" in str(n.target) for n in gm.graph.nodes)
    x = torch.randn(3, 4)
    assert torch.equal(gm(x)[0], fn(x))


def test_dead_code_keeps_in_place_methods_on_views():
    def fn(x):
        y = x.clone()
        y[0].mul_(3.0)  # a write through a view of y: y's storage is read by the output
        return y + 0

    gm = _traced(fn, torch.randn(2, 3))
    eliminate_dead_code(gm.graph)
    gm.recompile()
    assert any(n.target == "mul_" for n in gm.graph.nodes)
    x = torch.randn(2, 3)
    assert torch.equal(gm(x)[0], fn(x))


@pytest.mark.parametrize("policy", ["fora", "fora{granularity=block}", "taylorseer", "fbcache{threshold=1000}"])
def test_in_place_rotary_embeddings_compute_steps_exact(policy):
    """Wan / CogView4 / EasyAnimate write their rotary embeddings in place: computed steps stay bit-exact."""
    model, inputs = hand_written_dit(layer="rope")
    assert_exact_on_computed_steps(model, inputs, timesteps(7), policy)


def test_self_check_refuses_a_rewrite_that_drops_a_write(monkeypatch):
    """The safety net: with the old dead-code elimination (writes dropped), optimize refuses on the first call
    and names the first node whose value differs."""
    import graphcache.passes.insert_cache_branch as branch

    monkeypatch.setattr(branch, "eliminate_dead_code", lambda g: g.eliminate_dead_code(
        is_impure_node=lambda n: n.op in ("placeholder", "output")))
    model, inputs = hand_written_dit(layer="rope")
    fast = graphcache.optimize(model, policy="fora", backend="eager")
    with pytest.raises(SelfCheckError, match=r"first diverging node: 'scaled_dot_product_attention' .*trunk\.0"):
        fast(**inputs(999.0))
    unchecked = graphcache.optimize(model, policy="fora", backend="eager", self_check=False)
    assert not torch.equal(unchecked(**inputs(999.0)), model(**inputs(999.0)))  # what the check protects from


def test_self_check_passes_and_leaves_no_trace():
    """The check's extra forward restores the cache state: the generation is the same with and without it."""
    model, inputs = hand_written_dit()
    ts = timesteps(6)
    checked = generation(graphcache.optimize(model, policy="fora", backend="eager"), inputs, ts)
    torch._dynamo.reset()
    plain = generation(graphcache.optimize(model, policy="fora", backend="eager", self_check=False), inputs, ts)
    assert all(torch.equal(a, b) for a, b in zip(checked, plain, strict=True))


@pytest.mark.parametrize("policy", ["taylorseer", "fora{granularity=block}", "fora"])
def test_multihead_attention_at_batch_1(policy):
    """nn.MultiheadAttention's output at batch 1 has a non-canonical stride on the size-1 dimension; torch.cond
    compares strides between branches, so branch outputs are made row-major exactly."""
    model, inputs = hand_written_dit(batch=1, layer="mha")
    # eager nn.MultiheadAttention takes its fused fast path, which tracing does not: the reference is the
    # captured graph run as is (what the self-check compares with), not the eager module
    reference = torch.compile(model, backend="eager", fullgraph=True)
    assert_exact_on_computed_steps(model, inputs, timesteps(8), policy, reference_model=reference)


def test_cost_model_counts_linear_matmul_and_attention():
    def fn(x, w, q, k, v):
        h = torch.nn.functional.linear(x, w)  # [2, 5, 8] x [16, 8]^T: 2*2*5*16*8
        a = torch.nn.functional.scaled_dot_product_attention(query=q, key=k, value=v)  # 4 * B*H*L*D * S
        return h @ h.transpose(-1, -2), a  # [2, 5, 16] @ [2, 16, 5]: 2*2*5*5*16

    example = (torch.randn(2, 5, 8), torch.randn(16, 8), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 3, 4),
               torch.randn(1, 2, 3, 4))
    gm = _traced(fn, *example)
    counted = {n.name: node_flops(n) for n in gm.graph.nodes if node_flops(n)}
    assert sorted(counted.values()) == sorted([2 * 2 * 5 * 16 * 8, 4 * 1 * 2 * 6 * 4 * 3, 2 * 2 * 5 * 5 * 16])


class _TwoStreamLayer(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(width, width), torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        joint = torch.cat([ctx, x], 1)
        mixed = torch.softmax(joint @ joint.transpose(1, 2) / 4.0, -1) @ joint
        return x + c[:, None] * self.a(mixed[:, ctx.shape[1]:]), ctx + self.b(mixed[:, : ctx.shape[1]])


class SlicedStreams(torch.nn.Module):
    """Both streams enter the blocks as slices of one tensor (CogVideoX, CogView3Plus, ConsisID, WanVACE):
    torch.cond refuses operands that alias each other."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.embed, self.time = torch.nn.Linear(4, width), torch.nn.Linear(2, width)
        self.blocks = torch.nn.ModuleList([_TwoStreamLayer(width) for _ in range(3)])
        self.head = torch.nn.Linear(width, 4)

    def forward(self, latent: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self.time(torch.stack([t.sin(), t.cos()], -1))
        both = self.embed(latent)
        ctx, x = both[:, :3], both[:, 3:]
        for block in self.blocks:
            x, ctx = block(x, ctx, c)
        return self.head(x)


@pytest.mark.parametrize("backend", ["aot_eager", "eager"])
def test_operands_that_alias_each_other_are_passed_distinct(backend):
    torch.manual_seed(0)
    model = SlicedStreams().eval()
    x = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(1))

    def inputs(t):
        return {"latent": x, "t": torch.full((2,), t / 1000)}

    ts = timesteps(6)
    reference = generation(torch.compile(model, backend="eager", fullgraph=True), inputs, ts)
    torch._dynamo.reset()
    fast = graphcache.optimize(model, policy="fora", backend=backend)
    outputs = generation(fast, inputs, ts)
    decisions = graphcache.decisions(fast)
    assert decisions == ["computed", "cached", "cached"] * 2
    for out, ref, d in zip(outputs, reference, decisions, strict=True):
        if d == "computed":
            assert torch.allclose(out, ref, atol=1e-6) if backend == "aot_eager" else torch.equal(out, ref)


class ColumnMajorStream(HandWrittenDiT):
    """The hidden stream kept in a dense but not row-major layout (ACE-Step's blocks return one): elementwise
    ops keep it, so the epilogue reduces over that layout."""

    def between_blocks(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).contiguous().transpose(1, 2) if x.stride(-1) == 1 else x


def test_region_outputs_keep_the_captured_layout():
    """A region output that is dense but not row-major leaves the cond with the same strides (not a row-major
    copy): the epilogue then sums in the model's order, and computed steps stay bit-exact."""
    torch.manual_seed(0)
    model = ColumnMajorStream().eval()
    x = torch.randn(2, 10, 4, generator=torch.Generator().manual_seed(1))

    def inputs(t):
        return {"latent": x, "noise_level": torch.full((2,), t)}

    assert_exact_on_computed_steps(model, inputs, timesteps(7), "fora")
    fast = graphcache.optimize(model, "fora", backend="eager")
    fast(**inputs(999.0))
    gm = fast.states[0].gm
    cond = gm.graph.find_nodes(op="call_function", target=torch.ops.higher_order.cond)[0]
    out = next(u for u in cond.users if u.args[1] == 0)
    assert out.meta["val"].stride()[1] == 1  # the column-major stride of the captured stream
