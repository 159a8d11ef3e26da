"""Every denoiser class diffusers ships, under FORA, FBCache and lite TaylorSeer: supported with exact computed
steps and caching that happens, or refused with a GraphcacheError that names the reason. Never silently wrong.

The models are tiny seeded configs (tests/zoo/); the support matrix in docs/ is generated from the same runner
(``python -m tests.zoo.matrix --markdown docs/support_matrix.md``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zoo import NOT_DENOISERS, ZOO, denoiser_classes
from zoo.matrix import (
    EXTRA_POLICIES,
    OK,
    POLICIES,
    REFUSED,
    Case,
    markdown,
    optimized_by_default,
    run_model,
    summary,
)
from zoo.streams import run_streams

# At least this many classes optimize under every policy of the matrix (the rest are refused with a reason).
MIN_SUPPORTED = 64
# At least this many optimize under the default policy (``auto``: the U-Nets under DeepCache too).
MIN_BY_DEFAULT = 72

_RESULTS: dict[str, list[Case]] = {}


def test_every_diffusers_denoiser_class_is_in_the_zoo():
    """New classes are picked up: the enumeration of diffusers' transformer and U-Net modules is the list."""
    classes = denoiser_classes()
    missing = [c for c in classes if c not in ZOO and c not in NOT_DENOISERS]
    assert not missing, f"diffusers classes without a zoo entry: {missing}"
    assert len(classes) >= 80 and set(ZOO) <= set(classes)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model(name):
    _RESULTS[name] = run_model(ZOO[name])
    if _no_stack(_RESULTS[name][0]):  # the default policy takes DeepCache on a U-Net
        _RESULTS[name] += run_model(ZOO[name], ["auto"])
    _assert_supported_or_refused(_RESULTS[name])


def _no_stack(case: Case) -> bool:
    """FORA found no stack of blocks worth caching (none, or too small a part of the step)."""
    return case.status == REFUSED and case.detail.startswith(("NoStackError", "SmallStackError"))


def _assert_supported_or_refused(cases: list[Case]) -> None:
    """Every case ok (a cached step cheaper than a computed one) or refused with a reason."""
    for case in cases:
        print(f"{case.model} {case.policy}: {case.status} {case.decisions} {case.detail}")
    failures = [c for c in cases if not c.passed]
    assert not failures, "; ".join(f"{c.policy}: {c.status}: {c.detail}" for c in failures)
    for case in cases:
        if case.status == REFUSED:
            assert len(case.detail) > 40, f"a refusal must say why: {case.detail!r}"
        else:
            assert case.cached_flops < 1.0, f"{case.policy}: a cached step costs a computed one's FLOPs"


@pytest.mark.slow
def test_zoo_counts():
    """Runs after the per-model tests (file order) and runs whatever they did not (a run of this test alone)."""
    for name in sorted(ZOO):
        if name not in _RESULTS:
            _RESULTS[name] = run_model(ZOO[name])
            if _no_stack(_RESULTS[name][0]):
                _RESULTS[name] += run_model(ZOO[name], ["auto"])
    cases = [c for name in sorted(_RESULTS) for c in _RESULTS[name]]
    by_default = [n for n, cs in _RESULTS.items() if optimized_by_default(cs)]
    print(f"\nzoo: {len(_RESULTS)} models; {len(by_default)} optimized by the default policy; {summary(cases)}")
    if os.environ.get("GRAPHCACHE_ZOO_MARKDOWN"):  # regenerate docs/support_matrix.md from this run
        Path(os.environ["GRAPHCACHE_ZOO_MARKDOWN"]).write_text(markdown(cases))
    assert not [c for c in cases if not c.passed]
    supported_everywhere = [n for n, cs in _RESULTS.items() if all(c.status == OK for c in cs)]
    assert len(supported_everywhere) >= MIN_SUPPORTED, (
        f"{len(supported_everywhere)} of {len(_RESULTS)} models supported under {list(POLICIES)}")
    assert len(by_default) >= MIN_BY_DEFAULT, f"{len(by_default)} of {len(_RESULTS)} optimized by the default policy"


# The rest of the policies on the classes where a sweep of the whole zoo under them once failed (a pass that
# crashed instead of refusing: ConsisID's ``0.5 * linear`` in narrow_linear_outputs, HunyuanDiT's split stream
# that leaves the region in Delta-DiT's plan, SpeCa on packed streams and flex attention, SpeCa's copy of the
# last block dropping SanaVideo's in-place rotary writes: random decisions, Z-Image's autocast scope in that
# copy), two common ones, and a U-Net (DeepCache).
# The whole sweep: ``python -m tests.zoo.matrix --policies extra`` (docs/zoo.md).
EXTRA_SAMPLE = ("FluxTransformer2DModel", "WanTransformer3DModel", "HunyuanDiT2DModel", "ConsisIDTransformer3DModel",
                "Cosmos3OmniTransformer", "Kandinsky6SRTransformer3DModel", "LatteTransformer3DModel",
                "SanaVideoTransformer3DModel", "ZImageTransformer2DModel", "UNet2DConditionModel")


@pytest.mark.slow
@pytest.mark.parametrize("name", EXTRA_SAMPLE)
def test_zoo_model_under_the_other_policies(name):
    _assert_supported_or_refused(run_model(ZOO[name], list(EXTRA_POLICIES)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["CosmosTransformer3DModel", "Kandinsky5Transformer3DModel"])
def test_per_block_units_are_found_past_a_position_add_and_float32_residuals(name):
    """Cosmos adds a position embedding to the stream inside each block, Kandinsky 5 (as Wan-style blocks do)
    adds its branches in float32, ``(x.float() + gate * F(x)).type_as(x)``: both still carry the residual
    stream, so per-block caching and attention reuse find their three branches per block."""
    cases = run_model(ZOO[name], ["fora-block", "pab"])
    assert [c.status for c in cases] == [OK, OK], [(c.policy, c.status, c.detail) for c in cases]


# The ways pipelines call a denoiser (CFG as two calls with contexts and without, Heun, img2img after it;
# ``python -m tests.zoo.streams`` over the whole zoo): classes whose forward sits behind diffusers' decorator
# (the stream router once found no timestep there and let cond and uncond share one cache), per-frame
# timesteps (AnyFlow), a dynamic and a forecasting policy, and a U-Net under the default policy.
STREAMS_SAMPLE = [("FluxTransformer2DModel", "fora"), ("FluxTransformer2DModel", "fbcache"),
                  ("SD3Transformer2DModel", "taylorseer-lite"), ("AnyFlowTransformer3DModel", "fora"),
                  ("UNet2DConditionModel", "auto")]


@pytest.mark.slow
@pytest.mark.parametrize("name,policy", STREAMS_SAMPLE)
def test_zoo_streams_each_equal_to_it_alone(name, policy):
    case = run_streams(ZOO[name], policy)
    assert case.status == OK, f"{case.status}: {case.detail}"
