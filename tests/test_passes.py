"""Graph-level checks of the passes: what nodes each adds, invariants, pass manager errors and dumps."""

from __future__ import annotations

import pytest
import torch

from graphcache.capture import capture_export
from graphcache.errors import PassError
from graphcache.passes import InsertCacheBranch, default_pipeline
from graphcache.passes.base import META_KEY, PassManager, analysis
from graphcache.passes.graph_utils import op_name
from graphcache.policies.fora import FORA
from graphcache.predictors import Reuse

from models import tiny_dit, tiny_flux


def _rewritten(factory, granularity="stack"):
    model, inputs = factory()
    gm, flat = capture_export(model, inputs(999))
    policy = FORA(granularity=granularity)
    PassManager(policy.passes(), flat)(gm)
    return gm


def _ops(gm):
    return [op_name(n) for n in gm.graph.nodes if n.op == "call_function"]


def test_one_cond_and_state_writes_outside_branches():
    gm = _rewritten(tiny_dit)
    conds = gm.graph.find_nodes(op="call_function", target=torch.ops.higher_order.cond)
    assert len(conds) == 1
    copies = gm.graph.find_nodes(op="call_function", target=torch.ops.aten.copy_.default)
    # step, last timestep, timestep direction, decision log, last computed steps, computed count; one stack
    # residual
    assert len(copies) == 6 + 1
    for branch in (gm._gc_compute, gm._gc_cached):
        assert "copy_" not in _ops(branch)
    roles = {n.meta[META_KEY]["role"] for n in gm.graph.nodes if META_KEY in n.meta}
    assert roles == {"state", "decision", "cache_branch"}


@pytest.mark.parametrize("factory,blocks", [(tiny_dit, 3), (tiny_flux, 5)])
def test_branches_hold_the_blocks_only_in_the_compute_branch(factory, blocks):
    gm = _rewritten(factory)
    attention = "scaled_dot_product_attention"
    assert _ops(gm._gc_compute).count(attention) == blocks
    assert attention not in _ops(gm._gc_cached)
    assert attention not in _ops(gm)  # the outer graph keeps prologue and epilogue only


def test_block_granularity_recomputes_gates_but_not_attention_or_mlp():
    gm = _rewritten(tiny_dit, "block")
    cached = _ops(gm._gc_cached)
    assert "scaled_dot_product_attention" not in cached
    assert cached.count("gelu") == 0
    # per block, the modulation linears stay (timestep MLP: 2, adaLN: 1); q, k, v, out and the MLP's 2 go
    assert cached.count("linear") == 3 * 3
    assert _ops(gm._gc_compute).count("linear") == 3 * (3 + 4 + 2)
    assert cached.count("mul") >= 3 * 2  # gate * cached branch output, per block and branch


def test_requires_is_checked_and_names_the_pass():
    model, inputs = tiny_dit()
    gm, flat = capture_export(model, inputs(999))
    with pytest.raises(PassError, match=r"pass 'insert_cache_branch' requires \['block_stack', 'cache_plan', "
                                         r"'state', 'decision'\]"):
        PassManager([InsertCacheBranch(Reuse())], flat)(gm)


def test_failure_names_the_passes_before():
    model, inputs = tiny_dit()
    gm, flat = capture_export(model, inputs(999))
    passes = default_pipeline("stack", Reuse(), lambda i: i.nonexistent_method())
    with pytest.raises(PassError, match=r"pass 'insert_decision' failed \(passes before it: \['find_block_stack', "
                                        r"'plan_cache_units', 'add_cache_state'\]\)"):
        PassManager(passes, flat)(gm)


def test_dump_before_and_after_a_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHCACHE_DUMP", "insert_cache_branch")
    monkeypatch.setenv("GRAPHCACHE_DUMP_DIR", str(tmp_path))
    gm = _rewritten(tiny_dit)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["04-insert_cache_branch-after.txt", "04-insert_cache_branch-before.txt"]
    assert "higher_order.cond" in (tmp_path / files[0]).read_text()
    assert "higher_order.cond" not in (tmp_path / files[1]).read_text()
    assert analysis(gm).cache_branch["compute"] == "_gc_compute"
