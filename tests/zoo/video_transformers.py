"""Video transformers, Wan-like part: Wan and its derivatives, SkyReels, ChronoEdit, Helios, AnyFlow, Sana video
models and JoyImage-Edit.

Configs and inputs follow diffusers' own model tests (tests/models/transformers/test_models_transformer_*.py in
huggingface/diffusers) with 3-4 blocks and small latents. Unless noted, the pipelines pass the flow-matching t on
the 1000 scale (``flow_steps``: 1000 -> 100 for 10 steps).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from .registry import ZooModel, builder, flow_steps, randn, tb

B = 2

_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, text_dim=16, freq_dim=256, ffn_dim=32,
            num_layers=3, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def _wan_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 2, 8, 8, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 8, 16, seed=2), "return_dict": False}


# --- Wan 2.1 / 2.2 (test_models_transformer_wan.py) ----------------------------------------------------------------
WAN = ZooModel("WanTransformer3DModel", builder("WanTransformer3DModel", in_channels=4, out_channels=4, **_WAN),
               _wan_inputs, flow_steps)

# --- SkyReels-V2 (test_models_transformer_skyreels_v2.py) --------------------------------------------------------
SKYREELS = ZooModel(
    "SkyReelsV2Transformer3DModel", builder("SkyReelsV2Transformer3DModel", in_channels=4, out_channels=4, **_WAN),
    _wan_inputs, flow_steps)


# --- ChronoEdit (test_models_transformer_chronoedit.py) ------------------------------------------------------------
def _chrono_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 16, 2, 8, 8, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 8, 32, seed=2), "encoder_hidden_states_image": None,
            "return_dict": False}


CHRONOEDIT = ZooModel(
    "ChronoEditTransformer3DModel",
    builder("ChronoEditTransformer3DModel", patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
            in_channels=16, out_channels=16, text_dim=32, freq_dim=16, ffn_dim=32, num_layers=3, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-06, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=64,
            pos_embed_seq_len=None, rope_temporal_skip_len=8),
    _chrono_inputs, flow_steps)


# --- Wan VACE (test_models_transformer_wan_vace.py): control branch blocks at vace_layers ------------------------
def _vace_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 16, 2, 8, 8, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 8, 32, seed=2), "control_hidden_states": randn(B, 48, 2, 8, 8, seed=3),
            "return_dict": False}


WAN_VACE = ZooModel(
    "WanVACETransformer3DModel",
    builder("WanVACETransformer3DModel", **{**_WAN, "text_dim": 32, "num_layers": 4}, in_channels=16,
            out_channels=16, vace_layers=[0, 2], vace_in_channels=48),
    _vace_inputs, flow_steps, note="4 main blocks, VACE control blocks at 0 and 2")


# --- Wan-Animate (test_models_transformer_wan_animate.py): motion + face encoders; 20 pose frames (21 latent frames)
# are what the face-injection shapes need, so the spatial size is kept at 8x8.
def _animate_inputs(t: torch.Tensor) -> dict[str, Any]:
    frames = 20
    return {"hidden_states": randn(1, 12, frames + 1, 8, 8, seed=1), "timestep": tb(t, 1),
            "encoder_hidden_states": randn(1, 8, 16, seed=2), "encoder_hidden_states_image": randn(1, 4, 16, seed=3),
            "pose_hidden_states": randn(1, 4, frames, 8, 8, seed=4),
            "face_pixel_values": randn(1, 3, 77, 16, 16, seed=5), "return_dict": False}


WAN_ANIMATE = ZooModel(
    "WanAnimateTransformer3DModel",
    builder("WanAnimateTransformer3DModel", **{**_WAN, "num_layers": 4}, in_channels=12, latent_channels=4,
            out_channels=4, image_dim=16, motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16},
            motion_encoder_size=16, motion_style_dim=8, motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16,
            face_encoder_num_heads=2, inject_face_latents_blocks=2),
    _animate_inputs, flow_steps, batch=1,
    note="batch 1: the face encoder folds the 77 face frames into the batch; 4 blocks, face adapter every 2nd")


# --- Wan-Animate 2 (test_models_transformer_wan_animate_2.py): the per-step call is the "cached" generation pass,
# which attends to the reference segment's per-layer K/V. The pipeline fills that cache once per segment with an
# "extract" pass of the same model; here the cache is filled with seeded random K/V of the right shape instead (so
# inputs() stays model-free). Lists of per-sample latents in and out.
_WA2_LAYERS, _WA2_HEADS, _WA2_DIM = 3, 2, 64


def _animate2_inputs(t: torch.Tensor) -> dict[str, Any]:
    from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2KVCache

    ref_frames, gen_frames, h, w = 2, 3, 4, 4
    per_frame = (h // 2) * (w // 2)
    cache = WanAnimate2KVCache(_WA2_LAYERS)
    for i in range(_WA2_LAYERS):
        shape = (1, ref_frames * per_frame, _WA2_HEADS, _WA2_DIM // _WA2_HEADS)
        cache.get(i).store(randn(*shape, seed=100 + i), randn(*shape, seed=200 + i))
    return {"hidden_states": [randn(16, gen_frames, h, w, seed=1)], "timestep": tb(t, 1),
            "encoder_hidden_states": [randn(8, 32, seed=2)], "condition_latents": [randn(20, gen_frames, h, w, seed=3)],
            "kv_cache": cache, "kv_cache_mode": "cached", "seq_len": gen_frames * per_frame,
            "reference_grid_sizes": torch.tensor([[ref_frames, h // 2, w // 2]]), "origin_len": 5,
            "origin_area": [32, 32], "return_dict": False}


WAN_ANIMATE2 = ZooModel(
    "WanAnimate2Transformer3DModel",
    builder("WanAnimate2Transformer3DModel", patch_size=(1, 2, 2), text_len=16, in_dim=36, dim=_WA2_DIM, ffn_dim=128,
            freq_dim=64, text_dim=32, out_dim=16, num_heads=_WA2_HEADS, num_layers=_WA2_LAYERS, cross_attn_norm=True,
            use_img_emb=False),
    _animate2_inputs, flow_steps, batch=1,
    note="batch 1 (the cached reference K/V is per segment); kv_cache filled with seeded random K/V")


# --- Helios (test_models_transformer_helios.py): multi-term memory of short/mid/long history latents ---------------
def _helios_inputs(t: torch.Tensor) -> dict[str, Any]:
    f = 2
    return {"hidden_states": randn(B, 4, f, 8, 8, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 8, 16, seed=2), "indices_hidden_states": torch.ones(B, f),
            "indices_latents_history_short": torch.ones(B, f - 1), "indices_latents_history_mid": torch.ones(B, f - 1),
            "indices_latents_history_long": torch.ones(B, (f - 1) * 4),
            "latents_history_short": randn(B, 4, f - 1, 8, 8, seed=3),
            "latents_history_mid": randn(B, 4, f - 1, 8, 8, seed=4),
            "latents_history_long": randn(B, 4, (f - 1) * 4, 8, 8, seed=5), "return_dict": False}


HELIOS = ZooModel(
    "HeliosTransformer3DModel",
    builder("HeliosTransformer3DModel", **{k: v for k, v in _WAN.items() if k != "rope_max_seq_len"}, in_channels=4,
            out_channels=4, rope_dim=(4, 4, 4), has_multi_term_memory_patch=True, guidance_cross_attn=True,
            zero_history_timestep=True, is_amplify_history=False),
    _helios_inputs, flow_steps)


# --- AnyFlow (test_models_transformer_anyflow.py): flow-map model, per-frame t and target r (B, F). The pipeline
# passes r = t unless it samples with mean velocity; inputs() does the same. Latents are (B, F, C, H, W).
def _anyflow_inputs(t: torch.Tensor) -> dict[str, Any]:
    f = 2
    ts = tb(t, B)[:, None].repeat(1, f)
    return {"hidden_states": randn(B, f, 4, 8, 8, seed=1), "timestep": ts, "r_timestep": ts.clone(),
            "encoder_hidden_states": randn(B, 8, 16, seed=2), "return_dict": False}


_ANYFLOW = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                text_dim=16, freq_dim=256, ffn_dim=32, num_layers=3, cross_attn_norm=True, rope_max_seq_len=32,
                gate_value=0.25, deltatime_type="r")
ANYFLOW = ZooModel("AnyFlowTransformer3DModel", builder("AnyFlowTransformer3DModel", **_ANYFLOW), _anyflow_inputs,
                   flow_steps, note="r_timestep = timestep (no mean-velocity sampling)")


# --- AnyFlow-FAR (test_models_transformer_anyflow_far.py): frame-autoregressive, chunked; the causal block mask is
# built inside when attention_mask is None.
def _anyflow_far_inputs(t: torch.Tensor) -> dict[str, Any]:
    chunks = [2, 2]
    f = sum(chunks)
    ts = tb(t, 1)[:, None].repeat(1, f)
    return {"hidden_states": randn(1, f, 4, 8, 8, seed=1), "timestep": ts, "r_timestep": ts.clone(),
            "encoder_hidden_states": randn(1, 8, 16, seed=2), "chunk_partition": chunks, "return_dict": False}


ANYFLOW_FAR = ZooModel(
    "AnyFlowFARTransformer3DModel",
    builder("AnyFlowFARTransformer3DModel", **_ANYFLOW, compressed_patch_size=(1, 4, 4), full_chunk_limit=3),
    _anyflow_far_inputs, flow_steps, batch=1, note="batch 1 as in the upstream test (chunked causal mask)")


# --- Sana-Video (test_models_transformer_sana_video.py) -----------------------------------------------------------
def _sana_video_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 16, 2, 8, 8, seed=1), "encoder_hidden_states": randn(B, 8, 16, seed=2),
            "timestep": tb(t, B), "return_dict": False}


SANA_VIDEO = ZooModel(
    "SanaVideoTransformer3DModel",
    builder("SanaVideoTransformer3DModel", in_channels=16, out_channels=16, num_attention_heads=2,
            attention_head_dim=12, num_layers=3, num_cross_attention_heads=2, cross_attention_head_dim=12,
            cross_attention_dim=24, caption_channels=16, mlp_ratio=2.5, dropout=0.0, attention_bias=False,
            sample_size=8, patch_size=(1, 2, 2), norm_elementwise_affine=False, norm_eps=1e-6,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
    _sana_video_inputs, flow_steps)


# --- SANA-WM (no upstream model test; config from the signature, camera branch unused): GDN linear-attention blocks
# with every 2nd block softmax attention (2 of each). Per-frame timestep (B, 1, T) on the 1000 scale (LTX style).
def _sana_wm_inputs(t: torch.Tensor) -> dict[str, Any]:
    frames = 2
    return {"hidden_states": randn(B, 4, frames, 8, 8, seed=1),
            "timestep": tb(t, B)[:, None, None].repeat(1, 1, frames),
            "encoder_hidden_states": randn(B, 1, 8, 16, seed=2), "mask": torch.ones(B, 8, dtype=torch.long),
            "return_dict": False}


SANA_WM = ZooModel(
    "SanaWMTransformer3DModel",
    builder("SanaWMTransformer3DModel", fill=("conv_k",), in_channels=4, num_layers=4, hidden_size=32,
            num_attention_heads=2, softmax_every_n=2, linear_head_dim=16, use_chunk_plucker_post_attn=False,
            chunk_plucker_post_attn_blocks=0, caption_channels=16, mlp_ratio=2.0, mixed_precision="fp32",
            fp32_attention=False),
    _sana_wm_inputs, flow_steps,
    note="no upstream model test; 2 GDN + 2 softmax blocks, no camera conditions; zero-initialised conv_k redrawn")


# --- SANA-WM LTX-2 refiner (no upstream model test): video-only LTX-2 blocks over one AR block of tokens, no KV cache
# (plain self-attention). timestep is per token, sigma * 1000. The RoPE is the model's own
# build_rotary_emb_for_absolute_positions, computed from a stand-alone copy of its (parameter-free) rope module.
_REF = dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
            cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
            audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=3, caption_channels=16,
            rope_double_precision=False)


def _refiner_inputs(t: torch.Tensor) -> dict[str, Any]:
    from diffusers.models.transformers.transformer_sana_wm_refiner import (
        SanaWMLTX2AudioVideoRotaryPosEmbed,
        SanaWMLTX2RefinerTransformer3DModel,
    )

    frames, h, w = 2, 4, 4
    rope = SanaWMLTX2AudioVideoRotaryPosEmbed(
        dim=16, patch_size=1, patch_size_t=1, base_num_frames=20, base_height=2048, base_width=2048,
        scale_factors=(8, 32, 32), theta=10000.0, causal_offset=1, modality="video", double_precision=False,
        rope_type="interleaved", num_attention_heads=2)
    rotary = SanaWMLTX2RefinerTransformer3DModel.build_rotary_emb_for_absolute_positions(
        SimpleNamespace(rope=rope), batch_size=B, frame_positions=list(range(frames)), height=h, width=w,
        device=torch.device("cpu"), fps=24.0)
    n = frames * h * w
    return {"hidden_states": randn(B, n, 4, seed=1), "encoder_hidden_states": randn(B, 8, 16, seed=2),
            "timestep": tb(t, B)[:, None].repeat(1, n), "video_rotary_emb": rotary,
            "encoder_attention_mask": torch.ones(B, 8), "return_dict": False}


SANA_WM_REFINER = ZooModel(
    "SanaWMLTX2RefinerTransformer3DModel", builder("SanaWMLTX2RefinerTransformer3DModel", **_REF), _refiner_inputs,
    flow_steps, note="no upstream model test; kv_cache=None (plain attention over the active block)")


# --- JoyImage-Edit (test_models_transformer_joyimage.py) ----------------------------------------------------------
_JOY = dict(patch_size=[1, 2, 2], in_channels=16, hidden_size=32, num_attention_heads=2, text_dim=16, num_layers=3,
            rope_dim_list=[4, 6, 6], theta=256)


def _joy_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 16, 1, 8, 8, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 8, 16, seed=2), "return_dict": False}


JOY_EDIT = ZooModel("JoyImageEditTransformer3DModel", builder("JoyImageEditTransformer3DModel", **_JOY), _joy_inputs,
                    flow_steps)


# --- JoyImage-Edit-Plus (test_models_transformer_joyimage_edit_plus.py): pre-patchified tokens (B, N, C, pt, ph, pw)
# of several images per sample, each image's (t, h, w) token grid in shape_list (here two 2x2 images: N = 8).
def _joy_plus_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 8, 16, 1, 2, 2, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 8, 16, seed=2), "shape_list": [[(1, 2, 2), (1, 2, 2)]] * B,
            "return_dict": False}


JOY_EDIT_PLUS = ZooModel("JoyImageEditPlusTransformer3DModel", builder("JoyImageEditPlusTransformer3DModel", **_JOY),
                         _joy_plus_inputs, flow_steps)

ENTRIES = [WAN, SKYREELS, CHRONOEDIT, WAN_VACE, WAN_ANIMATE, WAN_ANIMATE2, HELIOS, ANYFLOW, ANYFLOW_FAR, SANA_VIDEO,
           SANA_WM, SANA_WM_REFINER, JOY_EDIT, JOY_EDIT_PLUS]
