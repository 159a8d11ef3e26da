"""Each pass run directly on a small captured graph, after only the passes it requires: what it records or
adds, and what it refuses. The policies' end-to-end tests check the same passes through the whole pipeline."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.fx as fx

from graphcache.analyses import CachePlan, LinearNarrowing, StateWrites
from graphcache.capture import capture_export
from graphcache.errors import PassError, PolicyConfigError, UnsupportedGraphError
from graphcache.passes import (
    AddCacheState,
    FindBlockStack,
    FindUNetSkip,
    InsertDecision,
    InsertMagnitudeSignal,
    InsertModulatedIndicator,
    InsertProbeIndicator,
    InsertTransformRate,
    InsertVerificationSignal,
    PlanAttentionUnits,
    PlanCacheUnits,
    PlanDeltaUnits,
    SplitProbeBlocks,
    SplitTailBlocks,
)
from graphcache.passes.base import META_KEY, PassManager, analysis, propagate_meta
from graphcache.passes.dense_cond_operands import DenseCondOperands
from graphcache.policies.fora import FORA
from graphcache.predictors import Taylor

from models import tiny_dit, tiny_flux, tiny_pixart, tiny_unet

BATCH = 2  # tiny_dit's and tiny_unet's batch


def _run(passes, factory=tiny_dit, t=999.0):
    model, inputs = factory()
    gm, flat = capture_export(model, inputs(t))
    return PassManager(passes, flat)(gm), flat


def _value_of(gm: fx.GraphModule, flat, node: fx.Node) -> torch.Tensor:
    """``node``'s value when ``gm`` runs on ``flat`` (an interpreter that keeps it)."""
    seen = {}

    class Keep(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n is node:
                seen["value"] = out
            return out

    with torch.no_grad():
        Keep(gm).run(*flat)
    return seen["value"]


def _roles(gm, pass_name):
    return {n.meta[META_KEY]["role"] for n in gm.graph.nodes if n.meta.get(META_KEY, {}).get("pass") == pass_name}


def test_plan_cache_units_by_granularity():
    stack_gm, _ = _run([FindBlockStack(), PlanCacheUnits("stack")])
    plan = analysis(stack_gm).cache_plan
    (unit,) = plan.units  # one hidden stream: its residual over the whole stack
    assert unit.base in analysis(stack_gm).block_stack.stream_inputs
    block_gm, _ = _run([FindBlockStack(), PlanCacheUnits("block")])
    units = analysis(block_gm).cache_plan.units
    assert [u.name for u in units] == [f"s0b{b}_branch{j}" for b in range(3) for j in range(2)]  # attention, MLP
    with pytest.raises(PolicyConfigError, match="granularity='tokens' is not one of stack, block, outputs"):
        PlanCacheUnits("tokens")


def test_plan_delta_units_splits_the_blocks_and_refuses_a_split_out_of_range():
    gm, _ = _run([FindBlockStack(), PlanDeltaUnits(split=1)])
    plan = analysis(gm).cache_plan
    assert plan.granularity == "delta" and [u.name for u in plan.units] == ["front0", "rear0"]
    assert [set(p.units) for p in plan.phases] == [{"rear0"}, {"front0"}]
    with pytest.raises(PolicyConfigError, match="split=7 is invalid: this model has 3 blocks"):
        _run([FindBlockStack(), PlanDeltaUnits(split=7)])


def test_plan_attention_units_finds_kinds_by_structure():
    gm, _ = _run([FindBlockStack(), PlanAttentionUnits()])
    assert analysis(gm).attention_kinds == {"spatial": 2} and len(analysis(gm).cache_plan.units) == 3
    pixart, _ = _run([FindBlockStack(), PlanAttentionUnits()], tiny_pixart)
    assert analysis(pixart).attention_kinds == {"spatial": 2, "cross": 6}  # keys from the prompt: cross
    flux, _ = _run([FindBlockStack(), PlanAttentionUnits()], tiny_flux)  # attention called with key=... keywords
    assert analysis(flux).attention_kinds == {"spatial": 2}
    assert len(analysis(flux).cache_plan.units) == 2 * 2 + 3  # a dual block: image and text attention outputs
    with pytest.raises(UnsupportedGraphError, match=r"every attention kind found .* has range None"):
        _run([FindBlockStack(), PlanAttentionUnits(spatial=None)])


def test_add_cache_state_registers_its_buffers_and_adds_no_compute():
    gm, _ = _run([FindBlockStack(), PlanCacheUnits(), AddCacheState(predictor=Taylor(order=1))])
    state = analysis(gm).state
    assert state.buffers[:5] == ["_gc_step", "_gc_last_t", "_gc_log", "_gc_history", "_gc_n_computed"]
    (unit,) = analysis(gm).cache_plan.units
    assert len(state.caches[unit.name]) == 2  # order 1: value and first difference
    assert all(hasattr(gm, name) for name in state.buffers)
    added = [n for n in gm.graph.nodes if n.meta.get(META_KEY, {}).get("pass") == "add_cache_state"]
    assert {n.op for n in added} == {"get_attr"} and _roles(gm, "add_cache_state") == {"state"}


def test_split_probe_blocks_records_a_narrowed_stack_and_leaves_the_graph():
    model, inputs = tiny_dit()
    gm, flat = capture_export(model, inputs(999.0))
    PassManager([FindBlockStack()], flat)(gm)
    whole = analysis(gm).block_stack
    nodes = list(gm.graph.nodes)
    PassManager([SplitProbeBlocks(blocks=1)], flat)(gm)
    narrowed, probe = analysis(gm).block_stack, analysis(gm).probe
    assert narrowed is not whole and len(whole.stacks[0].blocks) == 3  # the old record is untouched
    assert len(narrowed.stacks[0].blocks) == 2 and narrowed.region[0] is whole.stacks[0].blocks[1].first
    assert probe.inputs == whole.stream_inputs and probe.outputs == narrowed.stream_inputs
    assert list(gm.graph.nodes) == nodes
    with pytest.raises(dataclasses.FrozenInstanceError):
        narrowed.region = []  # type: ignore[misc]
    with pytest.raises(PolicyConfigError, match="probe blocks=3 must leave at least one cached block"):
        _run([FindBlockStack(), SplitProbeBlocks(blocks=3)])


def test_split_tail_blocks_moves_the_last_blocks_to_the_epilogue():
    model, inputs = tiny_dit()
    gm, flat = capture_export(model, inputs(999.0))
    PassManager([FindBlockStack()], flat)(gm)
    whole = analysis(gm).block_stack
    PassManager([SplitTailBlocks(blocks=1)], flat)(gm)
    stack = analysis(gm).block_stack
    assert analysis(gm).tail == 1 and len(stack.stacks[-1].blocks) == 2 and len(whole.stacks[-1].blocks) == 3
    moved = whole.stacks[-1].blocks[-1]
    assert set(moved.nodes) <= set(stack.epilogue) and not set(moved.nodes) & set(stack.region)
    with pytest.raises(PolicyConfigError, match="tail blocks=3 must leave at least one cached block"):
        _run([FindBlockStack(), SplitTailBlocks(blocks=3)])


def _per_sample(signals):
    return {name: tuple(node.meta["val"].shape) for name, node in signals.items()}


def test_insert_probe_indicator_records_the_change_by_name():
    gm, _ = _run([FindBlockStack(), SplitProbeBlocks(1), PlanCacheUnits(), AddCacheState(), InsertProbeIndicator()])
    found = analysis(gm)
    assert _per_sample(found.signals) == {"change": (BATCH,)}
    ((buffer, fresh),) = found.refresh_on_compute  # the reference, written only on computed steps
    assert buffer.target == "_gc_probe_ref" and found.probe.outputs[0] in fresh.all_input_nodes  # out - in
    assert "_gc_probe_ref" in found.state.buffers and _roles(gm, "insert_probe_indicator") == {"decision"}


def test_insert_modulated_indicator_reads_block_zeros_modulated_input():
    gm, _ = _run([FindBlockStack(), PlanCacheUnits(), AddCacheState(), InsertModulatedIndicator()])
    found = analysis(gm)
    assert _per_sample(found.signals) == {"distance": (BATCH,)}
    block0 = found.block_stack.stacks[0].blocks[0]
    assert found.indicator in {n.name for n in block0.nodes}
    ((prev, _),) = found.refresh_always
    assert prev.target == "_gc_modulated_prev"


def test_insert_magnitude_signal_interpolates_the_calibrated_ratio():
    passes = [FindBlockStack(), InsertMagnitudeSignal(timesteps=(1000.0, 0.0, 500.0), ratios=(0.8, 1.0, 0.9))]
    gm, flat = _run(passes, t=750.0)
    signals = analysis(gm).signals
    assert list(signals) == ["gamma", "t"]
    gamma = _value_of(gm, flat, signals["gamma"])
    assert torch.allclose(gamma, torch.full((BATCH,), 0.85))  # halfway between the knots 500 and 1000
    with pytest.raises(PolicyConfigError, match="one ratio per timestep and at least two"):
        InsertMagnitudeSignal(timesteps=(1.0, 2.0), ratios=(1.0,))
    with pytest.raises(PolicyConfigError, match="repeat a value"):
        InsertMagnitudeSignal(timesteps=(1.0, 1.0), ratios=(1.0, 0.9))


def test_insert_transform_rate_needs_the_stack_outputs():
    gm, _ = _run([FindBlockStack(), PlanCacheUnits(), AddCacheState(), InsertTransformRate()])
    found = analysis(gm)
    assert _per_sample(found.signals) == {"change": (BATCH,)}
    assert len(found.refresh_always) == 1 and len(found.refresh_on_compute) == 3
    with pytest.raises(UnsupportedGraphError, match="EasyCache needs the stack's outputs as cache units"):
        _run([FindBlockStack(), PlanCacheUnits("block"), AddCacheState(), InsertTransformRate()])


def test_insert_verification_signal_runs_a_copy_of_the_last_block():
    passes = [FindBlockStack(), PlanDeltaUnits(split=-1, boundary=None), AddCacheState(), InsertVerificationSignal()]
    gm, _ = _run(passes)
    assert _per_sample(analysis(gm).signals) == {"error": (BATCH,), "since": (BATCH,)}
    attention = [n for n in gm.graph.nodes if "scaled_dot_product_attention" in str(n.target)]
    assert len(attention) == 3 + 1  # the three blocks and the verification's copy of the last


def _stateful(extra=()):
    return [FindBlockStack(), SplitProbeBlocks(1), PlanCacheUnits(), AddCacheState(), InsertProbeIndicator(), *extra]


def test_insert_decision_passes_signals_by_name():
    def rule(i, change):
        return change > 0.5

    gm, _ = _run(_stateful([InsertDecision(rule=rule)]))
    decision = analysis(gm).decision
    assert decision.pred.meta["val"].shape == () and decision.pred.meta["val"].dtype == torch.bool
    assert tuple(decision.sample_mask.meta["val"].shape) == (BATCH,)
    assert "_gc_sample_log" in analysis(gm).state.buffers

    def misnamed(i, relative_change):
        return relative_change > 0.5

    with pytest.raises(PassError, match=r"no parameter reads \['change'\]; nothing provides \['relative_change'\]"):
        _run(_stateful([InsertDecision(rule=misnamed)]))

    def extra(i, change, remaining):
        return change > remaining, remaining + change

    with pytest.raises(PassError, match=r"nothing provides \['remaining'\]"):
        _run(_stateful([InsertDecision(rule=extra)]))
    gm, _ = _run(_stateful([InsertDecision(rule=extra, accumulators=(("remaining", 0.0),))]))
    assert "_gc_acc_remaining" in analysis(gm).state.buffers
    with pytest.raises(PassError, match=r"returns 0 new accumulator value.s. for .'remaining'.: it must return"):
        _run(_stateful([InsertDecision(rule=lambda i, change, remaining: change > remaining,
                                       accumulators=(("remaining", 0.0),))]))


def test_a_signal_recorded_twice_is_refused():
    with pytest.raises(PassError, match="records decision signal 'change', which an earlier pass recorded"):
        _run(_stateful([InsertTransformRate()]))


def test_find_unet_skip_takes_the_deep_part_and_refuses_a_skip_out_of_range():
    gm, _ = _run([FindUNetSkip(skip=1)], tiny_unet)
    stack = analysis(gm).block_stack
    assert stack.prologue and stack.region and stack.epilogue
    cats = [n for n in stack.epilogue if "cat" in str(n.target)]
    assert cats, "the skip concat that reads the deep part is after the region"
    with pytest.raises(UnsupportedGraphError, match="skip=99 is out of range: this U-Net has 4 skip connections"):
        _run([FindUNetSkip(skip=99)], tiny_unet)


def test_dense_cond_operands_gives_the_cond_dense_operands():
    gm, _ = _run([*FORA().passes(), DenseCondOperands()])
    assert isinstance(analysis(gm).cache_plan, CachePlan) and analysis(gm).dense_cond_operands is not None
    (cond,) = gm.graph.find_nodes(op="call_function", target=torch.ops.higher_order.cond)
    operands = [o.meta["val"] for o in cond.args[3] if isinstance(o.meta.get("val"), torch.Tensor)]
    assert operands and all(o.is_contiguous() for o in operands)
    with pytest.raises(PassError, match="requires \\['cache_branch'\\]"):
        _run([FindBlockStack(), DenseCondOperands()])


def _writes(branch: fx.GraphModule) -> list[str]:
    """Names of the operands ``branch`` writes with ``aten.copy_``."""
    return [str(n.args[0].name) for n in branch.graph.nodes if n.target is torch.ops.aten.copy_.default]


def test_sink_state_writes_writes_each_buffer_in_the_branch_that_changes_it():
    from graphcache.passes.sink_state_writes import SinkStateWrites
    from graphcache.policies import make_policy

    gm, flat = _run([*make_policy("taylorseer{order=1,lite=true}").passes(), SinkStateWrites()])
    found = analysis(gm)
    caches = [str(n.target) for n in found.state.cache_nodes()]
    (cond,) = gm.graph.find_nodes(op="call_function", target=torch.ops.higher_order.cond)
    assert len(cond.meta["val"]) == len(found.block_stack.region_outputs)  # no state comes out of the cond
    kept = [(v.shape, v.stride(), v.dtype) for v in cond.meta["val"]]  # the pass keeps the values (no propagation)
    assert found.propagated[-1] == ("sink_state_writes", 0, len(gm.graph.nodes))
    propagate_meta(gm, flat)
    assert kept == [(v.shape, v.stride(), v.dtype) for v in cond.meta["val"]]
    outer_writes = {str(n.args[0].target) for n in gm.graph.nodes if n.target is torch.ops.aten.copy_.default}
    assert not outer_writes & set(caches)  # the clock and log are still written outside
    assert len(_writes(gm._gc_compute)) == len(caches) and _writes(gm._gc_cached) == []
    assert not [n for n in gm._gc_cached.graph.nodes if n.target is torch.ops.aten.clone.default
                and n.args[0].op == "placeholder"]  # no copy of an unchanged cache tensor is left
    cache_bytes = sum(gm.get_buffer(c).numel() * gm.get_buffer(c).element_size() for c in caches)
    assert found.state_writes == StateWrites(len(caches), 2 * cache_bytes, 0)


def test_sink_state_writes_keeps_nested_conds_functional():
    from graphcache.passes.sink_state_writes import SinkStateWrites
    from graphcache.policies import make_policy

    gm, _ = _run([*make_policy("pab{window_low=0,window_high=1000}").passes(), SinkStateWrites()], tiny_pixart)
    cached = gm._gc_cached  # spatial attention every 2nd step, cross attention every 6th: two phases
    assert len(cached.graph.find_nodes(op="call_function", target=torch.ops.higher_order.cond)) == 1
    for name in ("here", "other"):  # torch.cond refuses a nested cond whose branches write their operands
        assert _writes(getattr(cached, name)) == []
    assert _writes(cached) and analysis(gm).state_writes.cached_step_bytes_after > 0  # the running kinds refresh


@pytest.mark.parametrize("spec", ["taylorseer{order=1}", "pab{window_low=0,window_high=1000}",
                                  "fbcache{threshold=0.3}"])
def test_state_written_in_place_gives_the_same_generation(spec):
    from graphcache.exported import optimize_exported
    from graphcache.passes.sink_state_writes import SinkStateWrites

    model, inputs = tiny_dit()
    functional = optimize_exported(model, inputs(999.0), spec)
    in_place = optimize_exported(model, inputs(999.0), spec, (SinkStateWrites(),))
    assert analysis(in_place.module).state_writes.buffers > 0
    for t in torch.linspace(999, 0, 12).tolist():
        assert torch.equal(functional(**inputs(t))[0], in_place(**inputs(t))[0])
    assert functional.state.decisions() == in_place.state.decisions()
    assert "cached" in functional.state.decisions()


def test_narrow_linear_outputs_computes_only_the_gates_a_cached_step_reads():
    from graphcache.exported import optimize_exported
    from graphcache.passes.narrow_linear_outputs import NarrowLinearOutputs

    model, inputs = tiny_dit()
    plain = optimize_exported(model, inputs(999.0), "fora{granularity=block}")
    narrowed = optimize_exported(model, inputs(999.0), "fora{granularity=block}", (NarrowLinearOutputs(),))
    gm = narrowed.module
    modulation = [b.norm1.linear.weight for b in model.transformer_blocks]  # AdaLN-Zero: 6 chunks, 2 gates read
    saved = sum(w.numel() * w.element_size() * 4 // 6 for w in modulation)
    assert analysis(gm).narrowed_linears == LinearNarrowing(3, saved)
    chunks = {str(n.target) for n in gm._gc_cached.graph.nodes if "chunk" in str(n.target)}
    assert not chunks and any("chunk" in str(n.target) for n in gm._gc_compute.graph.nodes)  # compute untouched
    for t in torch.linspace(999, 0, 9).tolist():
        a, b = plain(**inputs(t))[0], narrowed(**inputs(t))[0]
        if narrowed.state.decisions()[-1] == "computed":
            assert torch.equal(a, b)
        else:  # the same dot products, maybe summed by another kernel
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert plain.state.decisions() == narrowed.state.decisions() and "cached" in plain.state.decisions()


def test_narrow_linear_outputs_narrows_only_a_partly_read_linear():
    from graphcache.passes.narrow_linear_outputs import narrow_graph

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.full, self.part = torch.nn.Linear(4, 6), torch.nn.Linear(4, 6)

        def forward(self, x):
            a, b, c = self.full(x).chunk(3, dim=-1)  # every piece read: left as it is
            _, middle, _ = self.part(x).chunk(3, dim=-1)  # one piece of three read
            _, _, last = self.part(x).unsqueeze(0).chunk(3, dim=-1)  # after an unsqueeze: still a piece
            return a + b + c + middle + last

    model = Two().eval()
    x = torch.randn(2, 4)
    gm, _ = capture_export(model, {"x": x})
    assert narrow_graph(gm) == (2, 2 * 4 * 4 * 4)  # two linears, 4 of their 6 rows of 4 floats no longer read
    linears = [n for n in gm.graph.nodes if n.target is torch.ops.aten.linear.default]
    assert [tuple(n.meta["val"].shape) for n in linears] == [(2, 6), (2, 2), (2, 2)]
    with torch.no_grad():
        torch.testing.assert_close(gm(x=x), model(x), rtol=1e-6, atol=1e-6)


def test_narrow_linear_outputs_leaves_a_linear_read_whole_by_an_op_with_a_scalar_first():
    """Dynamo's graphs write ``0.5 * h`` as ``mul(0.5, h)``: a use that is not a split, whose first argument is
    not a node (ConsisID's blocks): the linear is left whole instead of the pass failing."""
    from graphcache.passes.narrow_linear_outputs import narrow_graph

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.part = torch.nn.Linear(4, 6)

        def forward(self, x):
            h = self.part(x)
            return 0.5 * h + h.chunk(3, dim=-1)[1].sum()

    graphs = []
    model, x = Scaled().eval(), torch.randn(2, 4)
    torch._dynamo.reset()
    torch.compile(model, backend=lambda gm, _: graphs.append(gm) or gm.forward, fullgraph=True)(x)
    (gm,) = graphs
    assert any(n.args and not isinstance(n.args[0], torch.fx.Node) for n in gm.graph.nodes if n.op == "call_function")
    assert narrow_graph(gm) == (0, 0)


def test_read_bytes_counts_what_a_branch_uses_and_only_the_slices_of_a_narrowed_weight():
    from graphcache.passes.narrow_linear_outputs import narrow_graph
    from graphcache.rewrite import read_bytes

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.full, self.part, self.unused = torch.nn.Linear(4, 6), torch.nn.Linear(4, 6), torch.nn.Linear(4, 6)

        def forward(self, x):
            a, b, c = self.full(x).chunk(3, dim=-1)
            _, middle, _ = self.part(x).chunk(3, dim=-1)  # rows 2..4 of part's weight and bias read
            return a + b + c + middle

    gm, _ = capture_export(Two().eval(), {"x": torch.randn(2, 4)})
    floats = 2 * 4 + (6 * 4 + 6) + (6 * 4 + 6)  # x, full, part (unused: not read)
    assert read_bytes(gm) == 4 * floats
    narrow_graph(gm)
    assert read_bytes(gm) == 4 * (2 * 4 + (6 * 4 + 6) + (2 * 4 + 2))
