"""matvec_reductions (Inductor lowering on CPU): few-row linears of the cached branch as multiply-and-sum."""

from __future__ import annotations

import pytest
import torch

from graphcache.analyses import MatvecRewrite
from graphcache.capture import capture_export
from graphcache.passes.base import META_KEY, analysis
from graphcache.passes.matvec_reductions import MAX_ROWS, MatvecReductions, reduce_graph

from models import tiny_dit

_LINEAR = torch.ops.aten.linear.default


class Linears(torch.nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 6).to(dtype), torch.nn.Linear(6, 4, bias=False).to(dtype)

    def forward(self, few, many):
        return self.b(torch.nn.functional.silu(self.a(few))), self.a(many)


def test_few_row_linears_become_reductions_and_many_row_ones_stay():
    model = Linears(torch.float32).eval()
    few, many = torch.randn(2, 1, 8), torch.randn(MAX_ROWS + 1, 8)  # 2 rows, then one row more than the limit
    gm, _ = capture_export(model, {"few": few, "many": many})
    assert reduce_graph(gm) == (2, (6 * 8 + 4 * 6) * 4)
    assert [tuple(n.meta["val"].shape) for n in gm.graph.nodes if n.target is _LINEAR] == [(MAX_ROWS + 1, 6)]
    sums = [n for n in gm.graph.nodes if n.target is torch.ops.aten.sum.dim_IntList]
    assert [tuple(n.meta["val"].shape) for n in sums] == [(2, 1, 6), (2, 1, 4)]
    with torch.no_grad():
        out, ref = gm(few=few, many=many), model(few, many)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(out[1], ref[1])  # left as it was


def test_a_narrow_dtype_is_summed_in_float32_and_cast_back():
    model = Linears(torch.bfloat16).eval()
    few, many = torch.randn(1, 8, dtype=torch.bfloat16), torch.randn(8, 8, dtype=torch.bfloat16)
    gm, _ = capture_export(model, {"few": few, "many": many})
    assert reduce_graph(gm)[0] == 2
    sums = [n for n in gm.graph.nodes if n.target is torch.ops.aten.sum.dim_IntList]
    assert {n.meta["val"].dtype for n in sums} == {torch.float32}
    with torch.no_grad():
        out, ref = gm(few=few, many=many)[0], model(few, many)[0]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=1.6e-2, atol=1e-2)  # one bf16 rounding apart at most


def test_only_the_cached_branch_changes_and_cached_steps_stay_within_rounding():
    from graphcache.exported import optimize_exported

    model, inputs = tiny_dit()  # batch 2: every timestep / gate linear has 2 rows
    spec = "taylorseer{order=2}"
    plain = optimize_exported(model, inputs(999.0), spec)
    reduced = optimize_exported(model, inputs(999.0), spec, (MatvecReductions(),))
    gm = reduced.module
    found = analysis(gm).matvec_reductions
    cached_linears = [n for n in plain.module._gc_cached.graph.nodes if n.target is _LINEAR]
    assert isinstance(found, MatvecRewrite) and found.linears == len(cached_linears) > 0  # all have 2 rows

    def marked(branch):
        return [n for n in branch.graph.nodes if n.meta.get(META_KEY, {}).get("pass") == MatvecReductions.name]

    assert marked(gm._gc_cached) and not marked(gm._gc_compute)
    assert not [n for n in gm._gc_cached.graph.nodes if n.target is _LINEAR]
    for t in torch.linspace(999, 0, 12).tolist():
        a, b = plain(**inputs(t))[0], reduced(**inputs(t))[0]
        if reduced.state.decisions()[-1] == "computed":
            assert torch.equal(a, b)
        else:  # the same dot products summed in another order
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert plain.state.decisions() == reduced.state.decisions() and "cached" in plain.state.decisions()


@pytest.mark.parametrize("backend, expected", [("inductor", True), ("aot_eager", False)])
def test_the_torch_compile_lowering_uses_it_for_inductor_only(backend, expected):
    from graphcache.rewrite import compile_lowering

    assert any(isinstance(p, MatvecReductions) for p in compile_lowering(backend)) is expected
