"""diffusers' own pipelines, assembled from tiny seeded parts and driven with prompt embeddings (no text
encoder, nothing downloaded): Wan 2.2 (CFG as two calls in cache contexts with loop fields, two transformers),
Flux true-CFG, SD3 with the batch changing between calls, an interrupted run. Every stream of calls a
pipeline makes must get exactly what it gets run alone through a fresh optimized model, and a policy that
never caches must leave the pipeline bit-exact."""

from __future__ import annotations

import copy
from collections import defaultdict

import pytest
import torch

import graphcache

pytest.importorskip("transformers")  # diffusers' pipeline classes need it (a dev dependency)


def _wan_transformer(seed: int) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                                 out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()


def _wan_pipeline(two_transformers: bool):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    return WanPipeline(tokenizer=None, text_encoder=None, transformer=_wan_transformer(1), vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
                       transformer_2=_wan_transformer(2) if two_transformers else None,
                       boundary_ratio=0.5 if two_transformers else None)


def _wan(pipe, steps: int = 8, **extra):
    g = torch.Generator().manual_seed(0)
    prompt, negative = torch.randn(1, 8, 32, generator=g), torch.randn(1, 8, 32, generator=g)
    return pipe(prompt_embeds=prompt, negative_prompt_embeds=negative, height=16, width=16, num_frames=5,
                num_inference_steps=steps, guidance_scale=6.0, generator=torch.Generator().manual_seed(3),
                output_type="pt", **extra).frames


def _flux_pipeline():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]).eval()
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)


def _flux_true_cfg(pipe):
    g = torch.Generator().manual_seed(0)
    embeds = [torch.randn(1, 8, 32, generator=g), torch.randn(1, 32, generator=g),
              torch.randn(1, 8, 32, generator=g), torch.randn(1, 32, generator=g)]
    return pipe(prompt_embeds=embeds[0], pooled_prompt_embeds=embeds[1], negative_prompt_embeds=embeds[2],
                negative_pooled_prompt_embeds=embeds[3], true_cfg_scale=4.0, height=32, width=32,
                num_inference_steps=7, guidance_scale=5.0, generator=torch.Generator().manual_seed(3),
                output_type="pt").images


class _Recorder:
    """Every call of an optimized denoiser: its cache context, its keyword arguments and its output."""

    def __init__(self, fast: torch.nn.Module) -> None:
        self.calls: dict[str, list[tuple[dict, torch.Tensor]]] = defaultdict(list)
        fast.register_forward_hook(self._hook, with_kwargs=True)
        self.fast = fast

    def _hook(self, _module, args, kwargs, out):
        assert not args
        tensor = out[0] if isinstance(out, tuple) else out.sample
        self.calls[self.fast.contexts.active].append((dict(kwargs), tensor.clone()))


def _assert_each_stream_equals_it_alone(recorder: _Recorder, original: torch.nn.Module, policy: str) -> None:
    assert set(recorder.calls) == {"cond", "uncond"}
    for context, calls in recorder.calls.items():
        alone = graphcache.optimize(copy.deepcopy(original), policy, backend="eager")
        with torch.no_grad():
            for kwargs, out in calls:
                got = alone(**kwargs)
                assert torch.equal(got[0] if isinstance(got, tuple) else got.sample, out), context
        assert "cached" in graphcache.decisions(alone), context
        assert recorder.fast.decisions(context) == graphcache.decisions(alone), context


def test_wan22_cfg_in_cache_contexts_gives_each_stream_of_each_transformer_its_own_cache():
    """WanPipeline with ``transformer`` and ``transformer_2`` (boundary 0.5): cond and uncond calls in
    ``cache_context(name, step_index=..., sigma=..., num_inference_steps=...)``; four streams in all."""
    pipe = _wan_pipeline(two_transformers=True)
    originals = {name: copy.deepcopy(getattr(pipe, name)) for name in ("transformer", "transformer_2")}
    fast = graphcache.optimize(pipe, "fora", backend="eager")
    recorders = {name: _Recorder(getattr(fast, name)) for name in originals}
    _wan(fast)
    for name, recorder in recorders.items():
        assert [len(c) for c in recorder.calls.values()] == [4, 4], name  # 8 steps split at the boundary
        _assert_each_stream_equals_it_alone(recorder, originals[name], "fora")
    assert graphcache.decisions(fast) == ["computed", "cached", "cached", "computed"]


def test_flux_true_cfg_gives_each_stream_its_own_cache():
    pipe = _flux_pipeline()
    original = copy.deepcopy(pipe.transformer)
    fast = graphcache.optimize(pipe, "fora", backend="eager")
    recorder = _Recorder(fast.transformer)
    _flux_true_cfg(fast)
    _assert_each_stream_equals_it_alone(recorder, original, "fora")


@pytest.mark.parametrize("build,run", [(lambda: _wan_pipeline(False), _wan), (_flux_pipeline, _flux_true_cfg)],
                         ids=["wan", "flux-true-cfg"])
def test_a_policy_that_never_caches_leaves_the_pipeline_bit_exact(build, run):
    pipe = build()
    reference = run(pipe)
    fast = graphcache.optimize(pipe, "fora{interval=1}", backend="eager")
    assert torch.equal(run(fast), reference)
    assert set(graphcache.decisions(fast)) == {"computed"}


def test_an_interrupted_wan_run_does_not_leak_into_the_next_one():
    """A run stopped at step 3 (``pipe._interrupt`` from a step-end callback, as a UI's stop button does),
    then a full run: equal to the full run of a fresh optimized pipeline."""
    fresh = _wan(graphcache.optimize(_wan_pipeline(False), "fora", backend="eager"))
    fast = graphcache.optimize(_wan_pipeline(False), "fora", backend="eager")

    def stop_at_3(pipe, i, _t, kwargs):
        pipe._interrupt = i >= 2
        return kwargs

    _wan(fast, callback_on_step_end=stop_at_3)
    assert torch.equal(_wan(fast), fresh)


def test_sd3_batch_changing_between_pipeline_calls():
    """SD3 with two images per prompt (embeddings of batch 2: CFG batch 4) between runs of one image: each
    run equals the same run through a fresh optimized pipeline, and a run of one image after it repeats."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    def build():
        torch.manual_seed(0)
        transformer = SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=4, num_layers=4,
                                            attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                            joint_attention_dim=32, pooled_projection_dim=64, out_channels=4).eval()
        vae = AutoencoderKL(block_out_channels=[4], in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
                            down_block_types=["DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D"],
                            norm_num_groups=1, shift_factor=0.0609, scaling_factor=1.5035)
        return StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer,
                                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                        text_encoder_3=None, tokenizer_3=None)

    def run(pipe, n: int):
        g = torch.Generator().manual_seed(0)
        embeds = [torch.randn(n, 8, 32, generator=g), torch.randn(n, 64, generator=g),
                  torch.randn(n, 8, 32, generator=g), torch.randn(n, 64, generator=g)]
        return pipe(prompt_embeds=embeds[0], pooled_prompt_embeds=embeds[1], negative_prompt_embeds=embeds[2],
                    negative_pooled_prompt_embeds=embeds[3], height=32, width=32, num_inference_steps=7,
                    guidance_scale=5.0, generator=torch.Generator().manual_seed(3), output_type="pt").images

    fast = graphcache.optimize(build(), "fora", backend="eager")
    one, two, one_again = run(fast, 1), run(fast, 2), run(fast, 1)
    assert torch.equal(one, one_again)
    assert torch.equal(two, run(graphcache.optimize(build(), "fora", backend="eager"), 2))
    assert graphcache.decisions(fast) == ["computed", "cached", "cached"] * 2 + ["computed"]
