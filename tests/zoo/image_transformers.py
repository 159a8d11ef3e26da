"""Image transformers, MMDiT / Flux-like (dual-stream + single-stream) part.

Configs and inputs follow diffusers' own model tests (tests/models/transformers/test_models_transformer_*.py in
huggingface/diffusers), with more layers (graphcache needs a stack of repeated blocks) and shorter sequences.
Timestep conventions are those of each model's pipeline (diffusers/pipelines/<name>/): the value the pipeline passes
as ``timestep=``.
"""

from __future__ import annotations

from typing import Any

import torch

from .registry import ZooModel, builder, flow_sigmas, flow_steps, increasing, randn, tb

B = 2  # batch size used wherever the model allows it


def grid_ids(h: int, w: int, axes: int = 3, frame_axis: int = 0) -> torch.Tensor:
    """Flux-style positional ids of an h x w latent grid: (h*w, axes) with [.., row, col] on the last two axes."""
    ids = torch.zeros(h, w, axes)
    ids[..., axes - 2] = torch.arange(h)[:, None]
    ids[..., axes - 1] = torch.arange(w)[None, :]
    if axes == 4:  # Flux 2 / Flux 3: (t, h, w, l)
        ids = torch.zeros(h, w, 4)
        ids[..., 1] = torch.arange(h)[:, None]
        ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, axes)


def text_ids(n: int, axes: int = 3) -> torch.Tensor:
    ids = torch.zeros(n, axes)
    if axes == 4:
        ids[:, 3] = torch.arange(n)
    return ids


# --- Flux (tests/models/transformers/test_models_transformer_flux.py) ---------------------------------------------
# Pipeline passes timestep / 1000 (sigma in [0, 1]); the model multiplies by 1000.
def _flux_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 16, 4, seed=1), "encoder_hidden_states": randn(B, 8, 32, seed=2),
            "pooled_projections": randn(B, 32, seed=3), "img_ids": grid_ids(4, 4), "txt_ids": text_ids(8),
            "timestep": tb(t, B), "return_dict": False}


FLUX = ZooModel(
    "FluxTransformer2DModel",
    builder("FluxTransformer2DModel", patch_size=1, in_channels=4, num_layers=2, num_single_layers=3,
           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
           axes_dims_rope=[4, 4, 8]),
    _flux_inputs, flow_sigmas, note="2 dual-stream + 3 single-stream blocks")


# --- Flux 2 (test_models_transformer_flux2.py): 4-axis ids (t, h, w, l), guidance embedding; sigma in [0, 1] -------
def _flux2_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 16, 4, seed=1), "encoder_hidden_states": randn(B, 8, 32, seed=2),
            "img_ids": grid_ids(4, 4, 4).unsqueeze(0).expand(B, -1, -1),
            "txt_ids": text_ids(8, 4).unsqueeze(0).expand(B, -1, -1),
            "timestep": tb(t, B), "guidance": torch.full((B,), 1.0), "return_dict": False}


FLUX2 = ZooModel(
    "Flux2Transformer2DModel",
    builder("Flux2Transformer2DModel", patch_size=1, in_channels=4, num_layers=2, num_single_layers=3,
           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=256,
           axes_dims_rope=[4, 4, 4, 4]),
    _flux2_inputs, flow_sigmas, note="2 dual-stream + 3 single-stream blocks")


# --- Flux 3 (no diffusers model test; config from transformer_flux3.py's signature): per-mode blocks, then joint
# blocks; ids of shape (seq, 4); the model multiplies timestep by 1000 (sigma in [0, 1]).
def _flux3_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 16, 4, seed=1), "encoder_hidden_states": randn(B, 8, 32, seed=2),
            "timestep": tb(t, B), "img_ids": grid_ids(4, 4, 4), "txt_ids": text_ids(8, 4), "return_dict": False}


FLUX3 = ZooModel(
    "Flux3Transformer2DModel",
    builder("Flux3Transformer2DModel", in_channels=4, cond_in_channels=4, num_layers=2, num_single_layers=3,
           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, timestep_channels=32,
           mlp_ratio=2.0, axes_dims_rope=(4, 4, 4, 4)),
    _flux3_inputs, flow_sigmas, note="no upstream model test; 2 per-mode + 3 joint blocks")


# --- Chroma (test_models_transformer_chroma.py): Flux without pooled projection; sigma in [0, 1] --------------------
def _chroma_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 16, 4, seed=1), "encoder_hidden_states": randn(B, 8, 32, seed=2),
            "img_ids": grid_ids(4, 4), "txt_ids": text_ids(8), "timestep": tb(t, B), "return_dict": False}


CHROMA = ZooModel(
    "ChromaTransformer2DModel",
    builder("ChromaTransformer2DModel", patch_size=1, in_channels=4, num_layers=2, num_single_layers=3,
           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=[4, 4, 8],
           approximator_num_channels=8, approximator_hidden_dim=16, approximator_layers=1),
    _chroma_inputs, flow_sigmas)

# --- Ovis-Image (test_models_transformer_ovis_image.py): same inputs as Chroma; sigma in [0, 1] -------------------
OVIS = ZooModel(
    "OvisImageTransformer2DModel",
    builder("OvisImageTransformer2DModel", patch_size=1, in_channels=4, out_channels=4, num_layers=2,
           num_single_layers=3, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
           axes_dims_rope=(4, 4, 8)),
    _chroma_inputs, flow_sigmas)


# --- LongCat-Image (test_models_transformer_longcat_image.py): sigma in [0, 1] + guidance ------------------------
def _longcat_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {**_chroma_inputs(t), "guidance": torch.full((B,), 3.5)}


LONGCAT = ZooModel(
    "LongCatImageTransformer2DModel",
    builder("LongCatImageTransformer2DModel", patch_size=1, in_channels=4, num_layers=2, num_single_layers=3,
           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
           axes_dims_rope=[4, 4, 8]),
    _longcat_inputs, flow_sigmas)


# --- Bria (test_models_transformer_bria.py): pipeline passes the scheduler's t on the 1000 scale ------------------
def _bria_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 16, 4, seed=1), "encoder_hidden_states": randn(B, 8, 32, seed=2),
            "img_ids": grid_ids(4, 4), "txt_ids": text_ids(8), "timestep": tb(t, B), "return_dict": False}


BRIA = ZooModel(
    "BriaTransformer2DModel",
    builder("BriaTransformer2DModel", patch_size=1, in_channels=4, num_layers=2, num_single_layers=3,
           attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=None,
           axes_dims_rope=[0, 4, 4]),
    _bria_inputs, flow_steps)


# --- Bria FIBO (test_models_transformer_bria_fibo.py): per-layer text features; t on the 1000 scale ---------------
def _fibo_inputs(t: torch.Tensor) -> dict[str, Any]:
    text = randn(B, 8, 64, seed=2)
    return {"hidden_states": randn(B, 16, 16, seed=1), "encoder_hidden_states": text,
            "text_encoder_layers": [text[:, :, :32]] * 5, "img_ids": grid_ids(4, 4), "txt_ids": text_ids(8),
            "timestep": tb(t, B), "return_dict": False}


BRIA_FIBO = ZooModel(
    "BriaFiboTransformer2DModel",
    builder("BriaFiboTransformer2DModel", patch_size=1, in_channels=16, num_layers=2, num_single_layers=3,
           attention_head_dim=8, num_attention_heads=2, joint_attention_dim=64, text_encoder_dim=32,
           pooled_projection_dim=None, axes_dims_rope=[0, 4, 4]),
    _fibo_inputs, flow_steps, note="text_encoder_layers: one 32-dim feature map per block (5)")


# --- Bria FIBO 2 (no upstream model test; config from the signature): Z-Image-like single stream with a Perceiver
# "gist" resampler and text injection at injection_layer_ids. Pipeline passes t / 1000 (noise level in [0, 1]).
def _fibo2_inputs(t: torch.Tensor) -> dict[str, Any]:
    # encoder_hidden_states: (batch, 1 + len(injection_layer_ids), text_len, cap_feat_dim)
    return {"hidden_states": randn(B, 4, 8, 8, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 3, 8, 16, seed=2), "return_dict": False}


BRIA_FIBO2 = ZooModel(
    "BriaFibo2Transformer2DModel",
    builder("BriaFibo2Transformer2DModel", fill=("cross_attn_gate",), fill_std=0.5, in_channels=4, patch_size=2, dim=32,
            n_layers=4, n_refiner_layers=1, n_heads=2, cap_feat_dim=16, injection_layer_ids=(1, 3),
            perceiver_num_layers=1, min_num_gist_tokens=4, max_num_gist_tokens=8, gist_step=4, gist_min_text_len=4,
            gist_max_text_len=16, axes_dims=(4, 6, 6), axes_lens=(32, 16, 16)),
    _fibo2_inputs, flow_sigmas,
    note="no upstream model test; 4 main blocks + 1 noise refiner; zero-initialised cross_attn_gate redrawn")


# --- Qwen-Image (test_models_transformer_qwenimage.py): sigma in [0, 1] --------------------------------------------
def _qwen_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 16, 16, seed=1), "encoder_hidden_states": randn(B, 8, 16, seed=2),
            "encoder_hidden_states_mask": torch.ones(B, 8, dtype=torch.long), "timestep": tb(t, B),
            "img_shapes": [(1, 4, 4)] * B, "return_dict": False}


QWEN = ZooModel(
    "QwenImageTransformer2DModel",
    builder("QwenImageTransformer2DModel", patch_size=2, in_channels=16, out_channels=4, num_layers=3,
           attention_head_dim=16, num_attention_heads=4, joint_attention_dim=16, guidance_embeds=False,
           axes_dims_rope=(8, 4, 4)),
    _qwen_inputs, flow_sigmas)

# --- NucleusMoE-Image (test_models_transformer_nucleusmoe_image.py): MoE off as in the test; sigma in [0, 1] -------
NUCLEUS = ZooModel(
    "NucleusMoEImageTransformer2DModel",
    builder("NucleusMoEImageTransformer2DModel", patch_size=2, in_channels=16, out_channels=4, num_layers=3,
           attention_head_dim=16, num_attention_heads=4, joint_attention_dim=16, axes_dims_rope=(8, 4, 4),
           moe_enabled=False, capacity_factors=[8.0, 8.0, 8.0]),
    _qwen_inputs, flow_sigmas)


# --- Qwen-Image 2.1 (no upstream model test; config from the signature). One joint sequence: text positions then one
# "slot" per 2x2 group of image tokens (img_mask marks the slots). Pipeline passes t / 1000.
def _qwen21_inputs(t: torch.Tensor) -> dict[str, Any]:
    img_mask = torch.cat([torch.zeros(B, 8, dtype=torch.bool), torch.ones(B, 4, dtype=torch.bool)], dim=1)
    return {"hidden_states": randn(B, 16, 16, seed=1), "encoder_hidden_states": randn(B, 8, 32, seed=2),
            "timestep": tb(t, B), "img_shapes": [[(1, 4, 4)]] * B, "img_mask": img_mask,
            "encoder_hidden_states_mask": torch.ones(B, 8, dtype=torch.bool), "return_dict": False}


QWEN21 = ZooModel(
    "QwenImage21Transformer2DModel",
    builder("QwenImage21Transformer2DModel", patch_size=1, in_channels=16, out_channels=16, num_layers=3,
           attention_head_dim=16, num_attention_heads=2, context_in_dim=32, mlp_ratio=2, axes_dims_rope=(4, 6, 6)),
    _qwen21_inputs, flow_sigmas, note="no upstream model test")


# --- SD3 (test_models_transformer_sd3.py): smaller latent and text; t on the 1000 scale -----------------------------
def _sd3_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 8, 8, seed=1), "encoder_hidden_states": randn(B, 8, 32, seed=2),
            "pooled_projections": randn(B, 64, seed=3), "timestep": tb(t, B), "return_dict": False}


SD3 = ZooModel(
    "SD3Transformer2DModel",
    builder("SD3Transformer2DModel", sample_size=8, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=8,
           num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64,
           out_channels=4, pos_embed_max_size=16, dual_attention_layers=(), qk_norm=None),
    _sd3_inputs, flow_steps, note="the last joint block is context_pre_only: 3 identical + 1 different")


# --- AuraFlow (test_models_transformer_aura_flow.py): pipeline passes t / 1000 --------------------------------------
def _aura_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 8, 8, seed=1), "encoder_hidden_states": randn(B, 8, 32, seed=2),
            "timestep": tb(t, B), "return_dict": False}


AURAFLOW = ZooModel(
    "AuraFlowTransformer2DModel",
    builder("AuraFlowTransformer2DModel", sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=2,
           num_single_dit_layers=3, attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
           joint_attention_dim=32, out_channels=4, pos_embed_max_size=64),
    _aura_inputs, flow_sigmas, note="2 MMDiT + 3 single DiT blocks")


# --- HiDream-Image (test_models_transformer_hidream.py): llama features per layer; `timesteps` on the 1000 scale ----
def _hidream_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 16, 16, seed=1), "encoder_hidden_states_t5": randn(B, 8, 8, seed=2),
            "encoder_hidden_states_llama3": randn(2, B, 8, 4, seed=3), "pooled_embeds": randn(B, 8, seed=4),
            "timesteps": tb(t, B), "return_dict": False}


HIDREAM = ZooModel(
    "HiDreamImageTransformer2DModel",
    builder("HiDreamImageTransformer2DModel", patch_size=2, in_channels=4, out_channels=4, num_layers=2,
           num_single_layers=2, attention_head_dim=8, num_attention_heads=4, caption_channels=[8, 4], text_emb_dim=8,
           num_routed_experts=2, num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(16, 16),
           llama_layers=(0, 1, 0, 1), force_inference_output=True),
    _hidream_inputs, flow_steps, note="MoE feed-forward; llama3 features indexed per block by llama_layers")


# --- HunyuanImage 2.1 (tests/pipelines/hunyuan_image_21/test_hunyuanimage.py): t on the 1000 scale ----------------
def _hyimage_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 8, 8, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 8, 32, seed=2), "encoder_attention_mask": torch.ones(B, 8),
            "encoder_hidden_states_2": randn(B, 4, 32, seed=3), "encoder_attention_mask_2": torch.ones(B, 4),
            "return_dict": False}


HUNYUAN_IMAGE = ZooModel(
    "HunyuanImageTransformer2DModel",
    builder("HunyuanImageTransformer2DModel", in_channels=4, out_channels=4, num_attention_heads=4,
           attention_head_dim=8, num_layers=2, num_single_layers=3, num_refiner_layers=1, patch_size=(1, 1),
           guidance_embeds=False, text_embed_dim=32, text_embed_2_dim=32, rope_axes_dim=(4, 4)),
    _hyimage_inputs, flow_steps, note="2 dual-stream + 3 single-stream blocks")


# --- Ideogram 4 (test_models_transformer_ideogram4.py): one packed sequence of text then image tokens.
# INCREASING t: the pipeline passes 1 - t / 1000, i.e. 0 (noise) -> 1 (clean).
def _ideogram_inputs(t: torch.Tensor) -> dict[str, Any]:
    from diffusers.models.transformers.transformer_ideogram4 import (
        IMAGE_POSITION_OFFSET,
        LLM_TOKEN_INDICATOR,
        OUTPUT_IMAGE_INDICATOR,
    )

    n_txt, side = 4, 4
    n_img = side * side
    hidden = torch.zeros(B, n_txt + n_img, 16)
    hidden[:, n_txt:] = randn(B, n_img, 16, seed=1)
    text = torch.zeros(B, n_txt + n_img, 24)
    text[:, :n_txt] = randn(B, n_txt, 24, seed=2)
    pos = torch.zeros(B, n_txt + n_img, 3, dtype=torch.long)
    pos[:, :n_txt] = torch.arange(n_txt)[:, None]
    pos[:, n_txt:, 0] = IMAGE_POSITION_OFFSET
    pos[:, n_txt:, 1] = torch.arange(side).repeat_interleave(side) + IMAGE_POSITION_OFFSET
    pos[:, n_txt:, 2] = torch.arange(side).repeat(side) + IMAGE_POSITION_OFFSET
    indicator = torch.full((B, n_txt + n_img), OUTPUT_IMAGE_INDICATOR, dtype=torch.long)
    indicator[:, :n_txt] = LLM_TOKEN_INDICATOR
    return {"hidden_states": hidden, "encoder_hidden_states": text, "timestep": tb(t, B), "position_ids": pos,
            "segment_ids": torch.ones(B, n_txt + n_img, dtype=torch.long), "indicator": indicator,
            "return_dict": False}


IDEOGRAM4 = ZooModel(
    "Ideogram4Transformer2DModel",
    builder("Ideogram4Transformer2DModel", in_channels=16, num_layers=3, attention_head_dim=8, num_attention_heads=4,
           intermediate_size=32, adaln_dim=16, llm_features_dim=24, rope_theta=10_000, mrope_section=(2, 1, 1),
           norm_eps=1e-5),
    _ideogram_inputs, increasing, note="INCREASING t (1 - t/1000): 0 = noise -> 1 = clean")


# --- Krea 2 (test_models_transformer_krea2.py): text features of several LLM layers; pipeline passes t / 1000 -----
def _krea2_inputs(t: torch.Tensor) -> dict[str, Any]:
    n_txt, side = 4, 4
    pos = torch.zeros(n_txt + side * side, 3)
    pos[n_txt:, 1] = torch.arange(side).repeat_interleave(side)
    pos[n_txt:, 2] = torch.arange(side).repeat(side)
    mask = torch.ones(B, n_txt, dtype=torch.bool)
    mask[:, -1] = False
    return {"hidden_states": randn(B, side * side, 16, seed=1), "encoder_hidden_states": randn(B, n_txt, 3, 16, seed=2),
            "timestep": tb(t, B), "position_ids": pos, "encoder_attention_mask": mask, "return_dict": False}


KREA2 = ZooModel(
    "Krea2Transformer2DModel",
    builder("Krea2Transformer2DModel", in_channels=16, num_layers=3, attention_head_dim=8, num_attention_heads=4,
           num_key_value_heads=2, intermediate_size=32, timestep_embed_dim=8, text_hidden_dim=16, num_text_layers=3,
           text_num_attention_heads=2, text_num_key_value_heads=1, text_intermediate_size=16,
           num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(4, 2, 2), rope_theta=1000.0,
           norm_eps=1e-5),
    _krea2_inputs, flow_sigmas)

ENTRIES = [FLUX, FLUX2, FLUX3, CHROMA, OVIS, LONGCAT, BRIA, BRIA_FIBO, BRIA_FIBO2, QWEN, NUCLEUS, QWEN21, SD3, AURAFLOW,
           HIDREAM, HUNYUAN_IMAGE, IDEOGRAM4, KREA2]
