"""Each method on both sides, settings mapped field by field: diffusers' hooks config and graphcache's policy
(:func:`mapping`), with what is exact and why per-step decisions may differ."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from graphcache.policies import PolicyConfig, make_policy
from graphcache.vs_diffusers.generation import generate
from graphcache.vs_diffusers.subjects import Clock, Status, Subject, quiet

METHODS = ("fbcache", "taylorseer", "taylorseer-lite", "magcache", "pab", "fastercache")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Each method's settings, given to both sides (defaults: diffusers' config defaults where it has them)."""

    steps: int = 50
    repeats: int = 2
    backend: str = "inductor"  # the baseline, the compiled hooks and graphcache
    threshold: float | None = None  # FBCache (None: DiT 0.2, Flux 0.5: about 10-14 of 50 steps computed)
    interval: int = 5  # TaylorSeer cache_interval
    warmup: int = 3  # TaylorSeer disable_cache_before_step
    mag_threshold: float = 0.06  # MagCacheConfig's defaults
    mag_max_skips: int = 3
    mag_retention: float = 0.2
    pab_range: int = 2  # spatial_attention_block_skip_range
    pab_window: tuple[float, float] = (100.0, 800.0)  # PyramidAttentionBroadcastConfig's timestep range default
    faster_range: int = 2  # FasterCacheConfig's defaults
    faster_window: tuple[float, float] = (-1.0, 681.0)
    device: str = "cpu"  # where every run happens (the subjects are built on the CPU and moved)
    dtype: torch.dtype | None = None  # the models' and latents' dtype there (None: float32 as built)


@dataclasses.dataclass(frozen=True)
class Mapping:
    """One method on both sides: diffusers' hooks (applied in place to a copy of the model) and graphcache's
    policy, with the settings written out (``diffusers_config`` / ``label``), whether the mapping is exact,
    and why the per-step decisions may differ."""

    method: str
    diffusers_config: str
    apply: Callable[[torch.nn.Module, Clock], None]
    policy: PolicyConfig
    label: str  # graphcache's spec as shown (a calibration file's temporary path left out)
    exact: bool  # same rule and same settings: the per-step decisions must agree
    note: str  # the mapping: what is the same, what only approximately
    why_differ: str  # the reason per-step decisions differ where they do
    probes: Callable[[torch.nn.Module], list[torch.nn.Module]] | None = None  # default: the subject's probe


@contextlib.contextmanager
def _diffusers_warnings_off() -> Iterator[None]:
    """diffusers' FasterCache logs an 'experimental' warning on every application: quiet while applying."""
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        yield
    finally:
        dlogging.set_verbosity(level)


def _attention_probes(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The query projection of every self-attention module of the blocks (what PAB / FasterCache skip)."""
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention

    found = []
    for name, module in model.named_modules():
        if isinstance(module, Attention | AttentionModuleMixin) and "transformer_blocks" in name \
                and not getattr(module, "is_cross_attention", False) and hasattr(module, "to_q"):
            found.append(module.to_q)
    return found


def magcache_calibration(subj: Subject, steps: int, path: Path, status: Status = quiet) -> list[float]:
    """Record the stack residual's magnitude ratios over one uncached DDIM generation of ``steps`` steps
    (graphcache's calibration, ``gamma_i = mean ||r_i|| / ||r_{i-1}||``), write them as a calibration file
    for ``subj.model`` at ``path`` and return them by step index, as diffusers' ``mag_ratios`` takes them
    (step 0's ratio is 1.0)."""
    from graphcache import calibration

    status(f"{subj.name}: calibrating MagCache's magnitude ratios ({steps} uncached steps)")
    recorder = calibration.Recorder(subj.model, subj.kwargs(subj.latent, torch.tensor(999)))
    generate(subj, recorder, steps)
    fitted = calibration.fit_magcache(recorder.rows)
    calibration.save(path, subj.model, steps, magcache=fitted)
    return [1.0, *fitted["ratios"]]


def mapping(method: str, subj: Subject, settings: Settings, workdir: Path, status: Status = quiet
            ) -> Mapping | None:
    """``method`` mapped field by field for ``subj`` (None: the method does not apply to this model, e.g.
    TaylorSeer's lite mode on DiT). ``workdir`` holds MagCache's calibration file while it is used."""
    from diffusers.hooks import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
        apply_faster_cache,
        apply_first_block_cache,
        apply_mag_cache,
        apply_pyramid_attention_broadcast,
    )
    from diffusers.hooks.taylorseer_cache import apply_taylorseer_cache

    steps, scale = settings.steps, subj.timestep_scale
    if method == "fbcache":
        threshold = settings.threshold if settings.threshold is not None else (0.5 if subj.kind == "flux" else 0.2)
        policy = make_policy("fbcache", threshold=threshold, per_sample=False)
        return Mapping(
            method, f"FirstBlockCacheConfig(threshold={threshold})",
            lambda m, _: apply_first_block_cache(m, FirstBlockCacheConfig(threshold=threshold)),
            policy, policy.spec(), True,
            "exact: the same rule (relative L1 change of block 0's residual vs the last computed step's; batch 1, "
            "so pooled = per-sample)",
            "not expected (same rule): a relative change within float rounding of the threshold")
    if method in ("taylorseer", "taylorseer-lite"):
        n, w = settings.interval, settings.warmup
        lite = method == "taylorseer-lite"
        if lite and subj.kind != "flux":
            return None
        if lite:
            config = TaylorSeerCacheConfig(cache_interval=n, disable_cache_before_step=w, max_order=1,
                                           taylor_factors_dtype=torch.float32, use_lite_mode=True)
            shown = f"TaylorSeerCacheConfig(cache_interval={n}, disable_cache_before_step={w}, max_order=1, " \
                    "use_lite_mode=True)"
            note = ("approximate: diffusers skips the blocks and forecasts proj_out's output, graphcache forecasts "
                    "the stack's residual and runs the epilogue on it; "
                    f"warmup=W+1: graphcache also computes step W={w}")
        else:
            modules = {"dit": [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"],
                       "pixart": [r"transformer_blocks\.\d+\.(attn1|attn2|ff)"],
                       "flux": [r"transformer_blocks\.\d+\.(attn|ff|ff_context)",
                                r"single_transformer_blocks\.\d+\.attn"]}[subj.kind]
            config = TaylorSeerCacheConfig(cache_interval=n, disable_cache_before_step=w, max_order=1,
                                           taylor_factors_dtype=torch.float32, cache_identifiers=modules)
            shown = f"TaylorSeerCacheConfig(cache_interval={n}, disable_cache_before_step={w}, max_order=1, " \
                    "attention + MLP modules)"
            note = (f"approximate: the same per-module order-1 forecasts; warmup=W+1: graphcache also computes "
                    f"step W={w}")
        policy = make_policy("taylorseer", interval=n, warmup=w + 1, order=1, lite=lite)
        return Mapping(
            method, shown, lambda m, _: apply_taylorseer_cache(m, config), policy, policy.spec(), False, note,
            f"by construction: diffusers computes steps 0..W-1 and W+1+kN (its step W={w} is forecast from W computed "
            "steps), graphcache follows the released TaylorSeer code (0..W and W+1+kN), which no "
            "(interval, warmup) pair maps onto diffusers' schedule")
    if method == "magcache":
        ratios = magcache_calibration(subj, steps, workdir / f"{subj.kind}-magcache.json", status)
        t, k, r = settings.mag_threshold, settings.mag_max_skips, settings.mag_retention
        mag = MagCacheConfig(threshold=t, max_skip_steps=k, retention_ratio=r, num_inference_steps=steps,
                             mag_ratios=ratios)
        policy = make_policy("magcache", threshold=t, max_skips=k, retention=r,
                             calibration=str(workdir / f"{subj.kind}-magcache.json"))
        label = f"magcache{{threshold={t},max_skips={k},retention={r},calibration=<the same ratios>}}"
        return Mapping(
            method,
            f"MagCacheConfig(threshold={t}, max_skip_steps={k}, retention_ratio={r}, num_inference_steps={steps}, "
            "mag_ratios=<the same ratios>)",
            lambda m, _: apply_mag_cache(m, mag), policy, label, True,
            "exact: the same accumulation (G *= gamma, E += |1 - G|, k += 1; skip iff E <= threshold and k <= K "
            "after step int(R*T + 0.5)); the ratios are graphcache's calibration of this model over this DDIM "
            "loop, given to diffusers by step index and to graphcache by timestep (the same values at these "
            "steps)",
            "not expected (same rule, same ratios): an accumulated error within float rounding of the threshold "
            "(graphcache interpolates the ratios in float32 inside the graph)")
    if method == "pab":
        rng, (low, high) = settings.pab_range, settings.pab_window
        base = PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=rng,
                                               spatial_attention_timestep_skip_range=(low, high))

        def apply_pab(m: torch.nn.Module, clock: Clock) -> None:
            config = dataclasses.replace(base, current_timestep_callback=lambda: clock.t)
            apply_pyramid_attention_broadcast(m, config)

        policy = make_policy("pab", spatial=rng, temporal=None, cross=None, window_low=low, window_high=high,
                             timestep_scale=scale)
        approx = {"dit": "", "pixart": "; PixArt's cross-attention runs on every step on both sides",
                  "flux": "; approximate in what is cached on Flux's single blocks: diffusers reuses the attention "
                          "module's output, graphcache the block's parallel attention+MLP branch "
                          "(proj_out(cat(attn, mlp))), found as one attention branch"}[subj.kind]
        return Mapping(
            method,
            f"PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range={rng}, "
            f"spatial_attention_timestep_skip_range=({low:g}, {high:g}))",
            apply_pab, policy, policy.spec(), True,
            "exact schedule: inside the open timestep window a self-attention output is recomputed at steps "
            f"i % {rng} == 0 and reused otherwise, outside it always runs; the self-attention of these models is "
            "spatial on both sides (diffusers by module name, graphcache by structure); temporal/cross ranges are "
            "None on both" + approx,
            "not expected (same rule): a timestep on a window bound moved across it by float rounding "
            "(t / 1000 on Flux)",
            probes=_attention_probes)
    if method == "fastercache":
        rng, (low, high) = settings.faster_range, settings.faster_window
        base = FasterCacheConfig(spatial_attention_block_skip_range=rng,
                                 spatial_attention_timestep_skip_range=(low, high), is_guidance_distilled=True)

        def apply_faster(m: torch.nn.Module, clock: Clock) -> None:
            config = dataclasses.replace(
                base, current_timestep_callback=lambda: clock.t,
                attention_weight_callback=lambda _: max(0.5, clock.step / max(steps - 1, 1)))
            with _diffusers_warnings_off():
                apply_faster_cache(m, config)

        policy = make_policy("fastercache", spatial=rng, temporal=None, cross=None, window_low=max(low, 0.0),
                             window_high=high, num_steps=steps, timestep_scale=scale)
        clamped = low < 0
        return Mapping(
            method,
            f"FasterCacheConfig(spatial_attention_block_skip_range={rng}, spatial_attention_timestep_skip_range="
            f"({low:g}, {high:g}), is_guidance_distilled=True, attention_weight_callback=max(0.5, i/(T-1)))",
            apply_faster, policy, policy.spec(), not clamped,
            "approximate: FasterCache's attention half only. diffusers ties FasterCache to CFG (its denoiser hook "
            "splits the batch into unconditional/conditional halves); on this batch-1 loop without guidance it "
            "runs with is_guidance_distilled=True, which keeps the attention reuse and drops CFG-Cache "
            "(graphcache's cfgcache policy, not compared here). Same schedule (recompute at i % range == 0 inside "
            "the window) and the same weight max(0.5, i/(T-1)) (given to diffusers as attention_weight_callback; "
            "its default is 0.5); but diffusers rolls its two-entry cache at every call, so a cached step "
            "extrapolates from the last computed output and the call before it (itself an extrapolation), "
            "graphcache from the last two computed outputs: outputs differ"
            + ("; graphcache refuses a negative window_low, so the low bound -1 maps to 0" if clamped else ""),
            "the window: graphcache's is open at 0 (diffusers' low bound -1 maps to window_low=0), so a t=0 step "
            "(DDIM's last) computes in graphcache and is cached in diffusers when its index is not a multiple "
            "of the range" if clamped else "not expected (same rule): a timestep on a window bound",
            probes=_attention_probes)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")

