"""Each pass run directly on a small captured graph, after only the passes it requires: what it records or
adds, and what it refuses. The policies' end-to-end tests check the same passes through the whole pipeline."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.fx as fx

from graphcache.analyses import CachePlan
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
from graphcache.passes.base import META_KEY, PassManager, analysis
from graphcache.passes.dense_cond_operands import DenseCondOperands
from graphcache.policies.fora import FORA
from graphcache.predictors import Taylor

from models import tiny_dit, tiny_pixart, tiny_unet

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


def test_insert_transform_rate_needs_the_stack_residual():
    gm, _ = _run([FindBlockStack(), PlanCacheUnits(), AddCacheState(), InsertTransformRate()])
    found = analysis(gm)
    assert _per_sample(found.signals) == {"change": (BATCH,)}
    assert len(found.refresh_always) == 1 and len(found.refresh_on_compute) == 3
    with pytest.raises(UnsupportedGraphError, match="EasyCache needs one stack residual"):
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
