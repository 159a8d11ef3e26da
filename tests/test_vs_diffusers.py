"""graphcache.vs_diffusers: the methods mapped onto diffusers' own cache hooks decide step for step as the hooks do
(or differ where the mapping says why), the table's records, and ``graphcache bench --against diffusers``'s
refusals. Tiny models, 10-step DDIM loops, graphcache on the eager backend."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from diffusers import DDIMScheduler

from graphcache import vs_diffusers as vd
from graphcache.cli import main

from models import tiny_dit, tiny_pixart

STEPS = 10


@pytest.fixture
def subject() -> vd.Subject:
    return vd.subject_from_inputs("tiny DiT", "dit", *tiny_dit(num_layers=3, batch=1))


def _agreement(subject: vd.Subject, method: str, tmp_path: Path, **settings) -> vd.Agreement:
    m = vd.mapping(method, subject, vd.Settings(steps=STEPS, **settings), tmp_path)
    assert m is not None
    return vd.decisions(subject, m, STEPS, backend="eager")


def test_fbcache_decides_as_diffusers_first_block_cache(subject, tmp_path):
    a = _agreement(subject, "fbcache", tmp_path, threshold=0.3)
    assert a.exact
    assert 2 < sum(a.diffusers) < STEPS  # the threshold skips some steps and not all: a real comparison
    assert a.identical, a.describe()
    assert a.max_diff < 1e-4  # the same algorithm: the same generation, up to float rounding


def test_magcache_with_the_same_ratios_decides_as_diffusers_mag_cache(subject, tmp_path):
    a = _agreement(subject, "magcache", tmp_path)
    assert a.exact
    assert 2 < sum(a.diffusers) < STEPS
    assert a.identical, a.describe()
    assert a.max_diff < 1e-4
    assert list(tmp_path.glob("*magcache.json"))  # graphcache read its ratios from a calibration file


def test_pab_decides_as_diffusers_pyramid_attention_broadcast(subject, tmp_path):
    a = _agreement(subject, "pab", tmp_path)
    assert a.exact and 2 < sum(a.diffusers) < STEPS
    assert a.identical, a.describe()


@pytest.mark.parametrize("method", ["fbcache", "magcache", "pab"])
def test_pixart_with_cross_attention_decides_as_diffusers(method, tmp_path):
    """PixArt (self- and cross-attention per block): the exact mappings decide step for step as the hooks do."""
    pixart = vd.subject_from_inputs("tiny PixArt", "pixart", *tiny_pixart())
    a = _agreement(pixart, method, tmp_path, threshold=0.1)
    assert a.exact and 2 < sum(a.diffusers) < STEPS, a.describe()
    assert a.identical, a.describe()


def test_pixart_taylorseer_forecasts_the_same_modules_as_diffusers(tmp_path):
    """diffusers' TaylorSeer hooks attn1, attn2 and ff of every block: as many as the units graphcache finds."""
    from graphcache.analyses import CachePlan
    from graphcache.exported import optimize_exported
    from graphcache.passes.base import analysis

    model, inputs = tiny_pixart()
    pixart = vd.subject_from_inputs("tiny PixArt", "pixart", model, inputs)
    m = vd.mapping("taylorseer", pixart, vd.Settings(steps=STEPS), tmp_path)
    hooked = vd.hooked_model(pixart, m, vd.Clock())
    forecast = sorted(name.split(".")[-1] for name, module in hooked.named_modules()
                      if "transformer_blocks." in name and getattr(module, "_diffusers_hook", None) is not None
                      and module._diffusers_hook.hooks)
    units = analysis(optimize_exported(model, inputs(999.0), m.policy).module).require(CachePlan).units
    assert forecast == sorted(["attn1", "attn2", "ff"] * 3)
    assert len(units) == len(forecast)


def test_fastercache_differs_only_at_the_documented_t0_step(subject, tmp_path):
    """diffusers' window (-1, 681) maps to graphcache's (0, 681): DDIM's last timestep is 0, inside diffusers'
    window and outside graphcache's open one; every other step agrees."""
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(STEPS)
    assert int(scheduler.timesteps[-1]) == 0 and (STEPS - 1) % 2 == 1  # a cached index in diffusers' window
    a = _agreement(subject, "fastercache", tmp_path)
    assert not a.exact and "open at 0" in a.why_differ
    assert a.differing_steps == [STEPS - 1]
    assert a.graphcache[-1] and not a.diffusers[-1]
    assert "differ at steps [9]" in a.describe()


def test_rows_percent_of_limit_is_ratio_over_the_schedule_limit(subject):
    settings = vd.Settings(steps=6, repeats=1, backend="eager", threshold=0.3)
    result = vd.compare(["tiny"], ["fbcache"], settings, subjects={"tiny": subject})
    assert [r.run for r in result.rows] == ["diffusers hooks, eager", "diffusers hooks, torch.compile",
                                            "graphcache fbcache{threshold=0.3,per_sample=false}"]
    (agreement,) = result.agreements
    assert agreement.identical and result.failures == []
    for row in result.rows:
        assert row.pct_of_limit == pytest.approx(100 * row.ratio / (row.steps / row.computed))
        assert row.ratio == pytest.approx(row.baseline_seconds / row.seconds)
        assert row.computed == sum(agreement.diffusers) < row.steps
        assert f"| {row.computed}/6 | {row.pct_of_limit:.0f}% |" in row.markdown()
        assert row.computed_ms is not None and row.cached_ms is not None  # CPU runs: per-call times
        assert f"| {row.computed_ms:.2f} / {row.cached_ms:.2f} |" in row.markdown()
    eager, compiled, ours = result.rows
    assert (eager.graphs, ours.graphs, ours.breaks) == (None, 1, 0)  # graphcache: one graph, no break
    assert compiled.breaks is not None and compiled.breaks > 0  # the hooks break the graph
    assert ours.vs_other is not None and ours.vs_other < 1e-4 and eager.vs_other is None
    assert len(result.table().splitlines()) == 2 + len(result.rows)  # header, rule, one line per row


def test_lite_taylorseer_is_not_mapped_on_dit(subject, tmp_path):
    assert vd.mapping("taylorseer-lite", subject, vd.Settings(steps=STEPS), tmp_path) is None


def test_cli_refuses_an_unknown_method():
    result = CliRunner().invoke(main, ["bench", "--against", "diffusers", "--methods", "fbcache,nope"])
    assert result.exit_code == 2
    assert "Invalid value for '--methods': unknown method 'nope'" in result.output
    assert "choose from fbcache, taylorseer, taylorseer-lite, magcache, pab, fastercache" in result.output


def test_cli_refuses_side_by_side_options_without_against_and_reference_options_with_it():
    without = CliRunner().invoke(main, ["bench", "--methods", "fbcache"])
    assert without.exit_code == 2 and "give --against diffusers" in without.output
    mixed = CliRunner().invoke(main, ["bench", "--against", "diffusers", "--samples", "3"])
    assert mixed.exit_code == 2 and "--samples: an option of the reference bench" in mixed.output
    unknown = CliRunner().invoke(main, ["bench", "--against", "onnx"])
    assert unknown.exit_code == 2 and "Invalid value for '--against': 'onnx'" in unknown.output


def test_a_subject_moved_to_a_dtype_keeps_its_timestep_and_position_ids_in_float32():
    """``Subject.to`` (the GPU side by side runs in bf16): the model, the latent and the floating inputs take the
    dtype; the timestep and Flux's position ids stay float32, as the models read them."""
    import torch

    subj = vd.flux(1, 1, tokens=16, heads=2, head_dim=16)
    moved = subj.to("cpu", torch.bfloat16)
    kwargs = moved.kwargs(moved.latent, torch.tensor(999))
    assert {p.dtype for p in moved.model.parameters()} == {torch.bfloat16}
    floating = (moved.latent, kwargs["hidden_states"], kwargs["encoder_hidden_states"])
    assert {t.dtype for t in floating} == {torch.bfloat16}
    assert kwargs["timestep"].dtype == kwargs["img_ids"].dtype == kwargs["txt_ids"].dtype == torch.float32
    with torch.no_grad():
        assert moved.call(moved.model, moved.latent, torch.tensor(999)).dtype == torch.bfloat16


def test_a_flux_head_dim_that_the_rotary_axes_cannot_split_is_refused():
    from graphcache.random_models import flux_shaped

    with pytest.raises(ValueError, match="multiple of 16"):
        flux_shaped(heads=2, head_dim=24)
