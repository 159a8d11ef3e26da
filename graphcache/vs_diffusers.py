"""graphcache side by side with diffusers' own cache hooks: same model, same method, settings mapped field by field.

For each (model, method): a real DDIM generation of ``steps`` steps (batch 1, the latent updated by the
scheduler) is run by
  1. the uncached model compiled (``torch.compile(fullgraph=True)``): the baseline,
  2. diffusers' hooks, eager (``apply_first_block_cache``, ``apply_taylorseer_cache``, ``apply_mag_cache``,
     ``apply_pyramid_attention_broadcast``, ``apply_faster_cache`` on a copy of the model),
  3. the same hooks under ``torch.compile`` (not fullgraph: the hooks break the graph),
  4. ``graphcache.optimize(model, policy)`` (one graph).
Each is warmed up (compiled) by one generation, then timed ``repeats`` times. The diffusers runs and the
graphcache runs are two phases after a dynamo reset, each with a freshly compiled baseline of its own: in the
diffusers phase the baseline is timed before the hooks are compiled (their graph break inside the blocks'
loop makes dynamo skip the model's forward for every later compile of that class until a reset); in the
graphcache phase graphcache and the baseline run in turn.

Computed steps are read per call: diffusers' from forward hooks on modules only a computed step runs (eager),
graphcache's from its decision log. The mappings, and where a mapping is only approximate, are in
:func:`mapping` and in each :class:`Mapping`'s ``note``. Nothing here prints: progress goes through the
``status`` callback, the results come back as records (:class:`Row`, :class:`Agreement`, :class:`Comparison`);
``graphcache bench --against diffusers`` and ``benchmarks/vs_diffusers.py`` print them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from graphcache.errors import GraphcacheError
from graphcache.policies import PolicyConfig, make_policy

MODELS = ("dit", "flux", "pixart")
METHODS = ("fbcache", "taylorseer", "taylorseer-lite", "magcache", "pab", "fastercache")

Status = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclasses.dataclass
class Clock:
    """Where the denoising loop is (a pipeline's ``current_timestep`` / step index), for the diffusers hooks
    whose configs read it through callbacks (PAB, FasterCache)."""

    step: int = 0
    t: float = 0.0


@dataclasses.dataclass
class Subject:
    """A denoiser and how one DDIM step calls it. ``kind`` ("dit" / "flux") picks the module names the
    diffusers configs and the computed-step probe use; ``timestep_scale`` brings the model's timestep input
    onto the 1000 scale (Flux takes t / 1000)."""

    name: str
    kind: str
    model: torch.nn.Module
    kwargs: Callable[[torch.Tensor, torch.Tensor], dict[str, Any]]  # (latent, scheduler t) -> the call's kwargs
    latent: torch.Tensor
    timestep_scale: float = 1.0

    def call(self, fn: Callable[..., Any], latent: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return fn(**self.kwargs(latent, t)).sample  # type: ignore[no-any-return]

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Subject:
        """The same subject on ``device``: the model and every input tensor moved there, the model, the latent
        and the floating inputs in ``dtype`` (None: as they are) except the timestep and the position ids,
        which the models read in float32 themselves."""
        model = self.model.to(device=device, dtype=dtype)
        kwargs = self.kwargs

        def moved(key: str, value: Any) -> Any:
            if isinstance(value, dict):
                return {k: moved(k, v) for k, v in value.items()}
            if not isinstance(value, torch.Tensor):
                return value
            keep = key == "timestep" or key.endswith("ids") or not value.is_floating_point()
            return value.to(device=device, dtype=None if keep else dtype)

        def on_device(latent: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
            return {k: moved(k, v) for k, v in kwargs(latent, t).items()}

        return dataclasses.replace(self, model=model, kwargs=on_device,
                                   latent=self.latent.to(device=device, dtype=dtype))

    def probe(self, model: torch.nn.Module) -> torch.nn.Module:
        """A module only a computed step runs under every method (the last block's attention query)."""
        if self.kind == "flux":
            return model.single_transformer_blocks[-1].attn.to_q  # type: ignore[index,union-attr]
        return model.transformer_blocks[-1].attn1.to_q  # type: ignore[index,union-attr]


def subject_from_inputs(name: str, kind: str, model: torch.nn.Module, inputs: Callable[[float], dict[str, Any]],
                        timestep_scale: float = 1.0) -> Subject:
    """A :class:`Subject` from a model file's ``(model, inputs)`` (``inputs(t)``: the denoiser's keyword
    arguments at timestep ``t``, batch 1): ``hidden_states`` is the latent the loop updates."""
    model = model.eval().requires_grad_(False)
    latent = inputs(999.0)["hidden_states"].clone()

    def kwargs(latent: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
        return {**inputs(float(t)), "hidden_states": latent}

    return Subject(name, kind, model, kwargs, latent, timestep_scale)


def dit(hidden: int = 512, layers: int = 12) -> Subject:
    """A class-conditional ``DiTTransformer2DModel`` with random weights (32x32x4 latent, class 3)."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    model = DiTTransformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=layers, num_attention_heads=8,
        attention_head_dim=hidden // 8, num_embeds_ada_norm=10, norm_num_groups=1,
    )
    labels = torch.tensor([3])
    latent = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))

    def inputs(t: float) -> dict[str, Any]:
        return {"hidden_states": latent, "timestep": torch.tensor([int(t)]), "class_labels": labels}

    return subject_from_inputs(f"DiT {hidden}x{layers}", "dit", model, inputs)


def flux(dual: int = 4, single: int = 8, tokens: int = 256, text_tokens: int = 16, heads: int = 4,
         head_dim: int = 32) -> Subject:
    """A Flux-shaped ``FluxTransformer2DModel`` with random weights (:func:`graphcache.random_models.flux_shaped`,
    examples/flux.py's config and seeds; width ``heads * head_dim``)."""
    from graphcache.random_models import flux_shaped

    model, inputs = flux_shaped(dual, single, tokens, text_tokens, heads, head_dim)
    width = "" if (heads, head_dim) == (4, 32) else f" width {heads * head_dim}, {tokens} tokens"
    return subject_from_inputs(f"Flux {dual}+{single}{width}", "flux", model, inputs, timestep_scale=1000.0)


def pixart(hidden: int = 512, layers: int = 12, text_tokens: int = 16) -> Subject:
    """A ``PixArtTransformer2DModel`` with random weights (AdaLN-single, self- and cross-attention per block;
    32x32x4 latent, a fixed random caption embedding)."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    model = PixArtTransformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=layers, num_attention_heads=8,
        attention_head_dim=hidden // 8, cross_attention_dim=hidden, caption_channels=64,
        norm_type="ada_norm_single", use_additional_conditions=False,
    )
    g = torch.Generator().manual_seed(1)
    latent, caption = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, text_tokens, 64, generator=g)

    def inputs(t: float) -> dict[str, Any]:
        return {"hidden_states": latent, "encoder_hidden_states": caption, "timestep": torch.tensor([int(t)]),
                "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}

    return subject_from_inputs(f"PixArt {hidden}x{layers}", "pixart", model, inputs)


def subject(key: str) -> Subject:
    """The benchmark's models: ``dit`` (DiT 512x12), ``flux`` (Flux 4+8) or ``pixart`` (PixArt 512x12)."""
    if key not in MODELS:
        raise ValueError(f"unknown model {key!r}; choose from {', '.join(MODELS)}")
    builders: dict[str, Callable[[], Subject]] = {"dit": dit, "flux": flux, "pixart": pixart}
    return builders[key]()


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


def magcache_calibration(subj: Subject, steps: int, path: Path, status: Status = _quiet) -> list[float]:
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


def mapping(method: str, subj: Subject, settings: Settings, workdir: Path, status: Status = _quiet
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


@dataclasses.dataclass
class Run:
    seconds: float
    out: torch.Tensor
    computed: list[bool] | None  # per call, where probes say (diffusers, eager)
    step_seconds: list[float] | None = None  # per call (CPU runs: a GPU run is not synchronized per step)


def generate(subj: Subject, fn: Callable[..., Any], steps: int, probes: list[torch.nn.Module] | None = None,
             hooked: torch.nn.Module | None = None, clock: Clock | None = None) -> Run:
    """One DDIM generation. A model with diffusers hooks (``hooked``) starts it with fresh hook state, as
    diffusers' pipelines do (``cache_context`` / reset). With ``probes``, a call counts as computed when every
    probe module ran in it. ``clock`` is kept at the current step and timestep."""
    from diffusers import DDIMScheduler
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    if hooked is not None:
        HookRegistry.check_if_exists_or_initialize(hooked).reset_stateful_hooks()
        _set_cache_context(hooked, CacheContext("cond", num_inference_steps=steps))
    ran: set[int] = set()
    handles = [p.register_forward_hook(lambda module, *_: ran.add(id(module))) for p in probes or []]
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    latent = subj.latent.clone()
    computed: list[bool] = []
    step_seconds: list[float] | None = None if latent.is_cuda else []
    try:
        _sync(latent)
        start = time.perf_counter()
        with torch.no_grad():
            for i, t in enumerate(scheduler.timesteps):
                if clock is not None:
                    clock.step, clock.t = i, float(t)
                ran.clear()
                begin = time.perf_counter()
                eps = subj.call(fn, latent, t)
                if step_seconds is not None:
                    step_seconds.append(time.perf_counter() - begin)
                if probes:
                    computed.append(len(ran) == len({id(p) for p in probes}))
                latent = scheduler.step(eps, t, latent).prev_sample
        _sync(latent)
        seconds = time.perf_counter() - start
    finally:
        for h in handles:
            h.remove()
    return Run(seconds, latent, computed if probes else None, step_seconds)


def _sync(tensor: torch.Tensor) -> None:
    """Wait for the device's queued work (a GPU run's wall time ends when its kernels do)."""
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)


def _probes(subj: Subject, m: Mapping, model: torch.nn.Module) -> list[torch.nn.Module]:
    found = m.probes(model) if m.probes is not None else [subj.probe(model)]
    if not found:
        raise ValueError(f"{subj.name}: no module to tell a computed {m.method} step by")
    return found


def hooked_model(subj: Subject, m: Mapping, clock: Clock) -> torch.nn.Module:
    """A copy of the model with diffusers' hooks of ``m`` applied."""
    hooked = copy.deepcopy(subj.model)
    m.apply(hooked, clock)
    return hooked


@dataclasses.dataclass(frozen=True)
class Agreement:
    """The per-step decisions of both sides for one (model, method) (True = computed)."""

    model: str
    method: str
    diffusers: tuple[bool, ...]
    graphcache: tuple[bool, ...]
    exact: bool
    why_differ: str
    max_diff: float  # max |diffusers' final latent - graphcache's| (eager hooks vs graphcache)

    @property
    def identical(self) -> bool:
        return self.diffusers == self.graphcache

    @property
    def differing_steps(self) -> list[int]:
        return [i for i, (a, b) in enumerate(zip(self.diffusers, self.graphcache, strict=True)) if a != b]

    def describe(self) -> str:
        pattern = "  diffusers  {}\n  graphcache {}".format(
            "".join("C" if d else "." for d in self.diffusers), "".join("C" if d else "." for d in self.graphcache))
        verdict = "identical" if self.identical else f"differ at steps {self.differing_steps}: {self.why_differ}"
        return (f"{self.model} {self.method}: computed steps diffusers {sum(self.diffusers)}, graphcache "
                f"{sum(self.graphcache)}; decisions {verdict}\n{pattern}")


@dataclasses.dataclass(frozen=True)
class Row:
    """One timed configuration of the table. ``ratio`` = the uncached compiled model's median time / this
    one's; ``pct_of_limit`` = ratio / (steps / computed), in percent (the schedule's limit counts cached steps
    as free)."""

    model: str
    method: str
    run: str
    seconds: float  # median over the repeats
    baseline_seconds: float  # the uncached compiled model's median in the same phase
    steps: int
    computed: int
    graphs: int | None  # graphs dynamo made (None: eager)
    breaks: int | None
    error: float  # max |final latent - the uncached one|
    vs_other: float | None = None  # max |diffusers' final latent - graphcache's| (graphcache's row)
    computed_ms: float | None = None  # median computed / cached call of the fastest run (CPU runs only)
    cached_ms: float | None = None

    @property
    def ratio(self) -> float:
        return self.baseline_seconds / self.seconds

    @property
    def limit(self) -> float:
        return self.steps / self.computed

    @property
    def pct_of_limit(self) -> float:
        return 100 * self.ratio / self.limit

    def markdown(self) -> str:
        graphs = "eager" if self.graphs is None else f"{self.graphs}, {self.breaks}"
        other = "" if self.vs_other is None else f"{self.vs_other:.2e}"
        steps = "" if self.computed_ms is None else (
            f"{self.computed_ms:.2f} / " + ("-" if self.cached_ms is None else f"{self.cached_ms:.2f}"))
        return (f"| {self.model} | {self.method} | {self.run} | {self.ratio:.2f}x | {self.computed}/{self.steps} | "
                f"{self.pct_of_limit:.0f}% | {graphs} | {self.error:.2e} | {other} | {steps} |")


TABLE_HEADER = ("| model | method | run | ratio | computed | % of limit | graphs, breaks | max err vs uncached | "
                "max diff diffusers vs graphcache | computed / cached step (ms) |\n"
                "|---|---|---|---|---|---|---|---|---|---|")


def step_medians(runs: list[Run], computed: Sequence[bool]) -> tuple[float | None, float | None]:
    """The median computed and cached call (ms) of the fastest of ``runs`` (None without per-call times)."""
    fastest = min(runs, key=lambda r: r.seconds)
    if fastest.step_seconds is None:
        return None, None
    split = {kind: [1e3 * s for s, c in zip(fastest.step_seconds, computed, strict=True) if c is kind]
             for kind in (True, False)}
    return (statistics.median(split[True]) if split[True] else None,
            statistics.median(split[False]) if split[False] else None)


@dataclasses.dataclass
class Comparison:
    settings: Settings
    rows: list[Row] = dataclasses.field(default_factory=list)
    agreements: list[Agreement] = dataclasses.field(default_factory=list)
    mappings: list[tuple[str, str, str, str]] = dataclasses.field(default_factory=list)  # model, method, both, note
    failures: list[str] = dataclasses.field(default_factory=list)  # (model, method) pairs graphcache refused
    threads: int = dataclasses.field(default_factory=torch.get_num_threads)

    def caption(self) -> str:
        s = self.settings
        where = f"CPU threads {self.threads}" if s.device == "cpu" else f"{_device_name(s.device)}, {s.dtype}"
        return (f"{s.steps} steps, DDIM, batch 1, backend {s.backend}, {where}, median of "
                f"{s.repeats}; ratio = uncached compiled time / this time; % of limit = ratio / (steps / computed)")

    def table(self) -> str:
        return "\n".join([TABLE_HEADER, *(r.markdown() for r in self.rows)])

    def notes(self) -> list[str]:
        """One line per (model, method): the settings on both sides and how far the mapping is exact."""
        return [f"{model} {method}: {both}. {note}" for model, method, both, note in self.mappings]

    def decisions(self) -> list[str]:
        """Per (model, method): both sides' computed steps, C = computed, and why they differ where they do."""
        return [a.describe() for a in self.agreements]


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else device


def counters_clear() -> None:
    torch._dynamo.utils.counters.clear()


def dynamo_counts() -> tuple[int, int]:
    counters = torch._dynamo.utils.counters
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def baseline(subj: Subject, backend: str) -> Callable[..., Any]:
    """The uncached model compiled from a clean dynamo state (and compiled: one short generation)."""
    torch._dynamo.reset()
    base_fn = torch.compile(subj.model, fullgraph=True, dynamic=False, backend=backend)
    generate(subj, base_fn, 4)
    return base_fn


def _graphcache(subj: Subject, m: Mapping, backend: str) -> Any:
    import graphcache

    return graphcache.optimize(subj.model, m.policy, backend=backend)


def decisions(subj: Subject, m: Mapping, steps: int, backend: str = "eager") -> Agreement:
    """Both sides' per-step decisions over one generation, untimed: diffusers' hooks eager, graphcache with
    ``backend`` (``eager`` / ``aot_eager``: no Inductor compile)."""
    clock = Clock()
    hooked = hooked_model(subj, m, clock)
    theirs = generate(subj, hooked, steps, _probes(subj, m, hooked), hooked, clock)
    fast = _graphcache(subj, m, backend)
    ours = generate(subj, fast, steps)
    assert theirs.computed is not None
    return Agreement(subj.name, m.method, tuple(theirs.computed), tuple(d == "computed" for d in fast.decisions()),
                     m.exact, m.why_differ, float((theirs.out - ours.out).abs().max()))


def side_by_side(subj: Subject, m: Mapping, settings: Settings, status: Status = _quiet
                 ) -> tuple[list[Row], Agreement]:
    """The three timed rows of one (model, method) and the decisions of both sides."""
    steps, repeats, backend = settings.steps, settings.repeats, settings.backend
    clock = Clock()
    hooked = hooked_model(subj, m, clock)
    status(f"{subj.name} {m.method}: diffusers' hooks, eager (decisions)")
    theirs = generate(subj, hooked, steps, _probes(subj, m, hooked), hooked, clock).computed
    assert theirs is not None
    # phase 1, diffusers: the baseline timed first, then the hooks eager, then compiled. Not in turn: a compiled
    # hook graph-breaks inside the blocks' loop, and dynamo then skips the model's forward for every later
    # torch.compile of that class until a reset (the baseline would run eager)
    status(f"{subj.name} {m.method}: uncached baseline, compiling and timing ({backend})")
    base_fn = baseline(subj, backend)
    base_runs = [generate(subj, base_fn, steps) for _ in range(repeats)]
    status(f"{subj.name} {m.method}: diffusers' hooks, eager, timing")
    hook_runs = [generate(subj, hooked, steps, hooked=hooked, clock=clock) for _ in range(repeats)]
    status(f"{subj.name} {m.method}: diffusers' hooks under torch.compile, compiling and timing")
    counters_clear()
    compiled_hooks = torch.compile(hooked, dynamic=False, backend=backend)
    generate(subj, compiled_hooks, steps, hooked=hooked, clock=clock)  # compile (a full run: hooks' Python state)
    hook_graphs = dynamo_counts()
    compiled_runs = [generate(subj, compiled_hooks, steps, hooked=hooked, clock=clock) for _ in range(repeats)]
    base_hooks = statistics.median(r.seconds for r in base_runs)
    # phase 2, graphcache: a fresh baseline, then graphcache in turn with it
    status(f"{subj.name} {m.method}: graphcache {m.label}, compiling and timing in turn with a fresh baseline")
    base_fn = baseline(subj, backend)
    base_runs = []
    counters_clear()
    fast = _graphcache(subj, m, backend)
    generate(subj, fast, steps)  # compile
    ours_graphs = dynamo_counts()
    ours_runs = []
    for _ in range(repeats):
        base_runs.append(generate(subj, base_fn, steps))
        fast.reset()
        ours_runs.append(generate(subj, fast, steps))
    ours = [d == "computed" for d in fast.decisions()]
    base = statistics.median(r.seconds for r in base_runs)
    ref = base_runs[0].out
    between = float((hook_runs[0].out - ours_runs[0].out).abs().max())

    def row(run: str, runs: list[Run], decided: Sequence[bool], graphs: tuple[int, int] | None, base_seconds: float,
            other: float | None = None) -> Row:
        return Row(subj.name, m.method, run, statistics.median(r.seconds for r in runs), base_seconds, steps,
                   sum(decided), graphs[0] if graphs else None, graphs[1] if graphs else None,
                   float((runs[0].out - ref).abs().max()), other, *step_medians(runs, decided))

    rows = [row("diffusers hooks, eager", hook_runs, theirs, None, base_hooks),
            row("diffusers hooks, torch.compile", compiled_runs, theirs, hook_graphs, base_hooks),
            row(f"graphcache {m.label}", ours_runs, ours, ours_graphs, base, between)]
    agreement = Agreement(subj.name, m.method, tuple(theirs), tuple(ours), m.exact, m.why_differ, between)
    return rows, agreement


def compare(models: tuple[str, ...] | list[str] = MODELS, methods: tuple[str, ...] | list[str] = METHODS,
            settings: Settings | None = None, status: Status = _quiet,
            subjects: dict[str, Subject] | None = None) -> Comparison:
    """The side by side for every model x method (``subjects``: models by key instead of the built-in ones)."""
    settings = settings or Settings()
    unknown = sorted(set(methods) - set(METHODS)) + sorted(set(models) - set(MODELS) - set(subjects or {}))
    if unknown:
        raise ValueError(f"unknown {unknown}; methods: {', '.join(METHODS)}; models: {', '.join(MODELS)}")
    result = Comparison(settings)
    for key in models:
        status(f"building {key}")
        subj = (subjects or {}).get(key) or subject(key)
        if settings.device != "cpu" or settings.dtype is not None:
            subj = subj.to(settings.device, settings.dtype)
        for method in methods:
            with tempfile.TemporaryDirectory(prefix="graphcache-vs-diffusers-") as tmp:
                m = mapping(method, subj, settings, Path(tmp), status)
                if m is None:
                    status(f"{subj.name} {method}: not applicable, skipped")
                    continue
                result.mappings.append((subj.name, method, f"{m.diffusers_config} vs {m.label}", m.note))
                try:
                    rows, agreement = side_by_side(subj, m, settings, status)
                except GraphcacheError as err:  # graphcache refused this model: said with the table, the rest runs
                    result.failures.append(f"{subj.name} {method}: graphcache {m.label} failed, no row: "
                                           f"{type(err).__name__}: {err}")
                    status(result.failures[-1])
                    continue
            result.rows.extend(rows)
            result.agreements.append(agreement)
            status(f"{subj.name} {method}: decisions " + ("identical" if agreement.identical else
                                                          f"differ at steps {agreement.differing_steps}"))
    return result
