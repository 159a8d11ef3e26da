"""Image transformers, second part: DiT / PixArt-style, CogView, Lumina, Z-Image and other single-stream models.

Configs and inputs follow diffusers' own model tests (tests/models/transformers/test_models_*.py in
huggingface/diffusers) with more layers and smaller latents. Timestep conventions are those of each pipeline.
"""

from __future__ import annotations

from typing import Any

import torch

from .registry import ZooModel, builder, flow_sigmas, flow_steps, increasing, randint, randn, steps_1000, tb

B = 2


# --- DiT (test_models_dit_transformer2d.py): class-conditional; discrete t on the 1000 scale ------------------------
def _dit_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 8, 8, seed=1), "timestep": tb(t, B), "class_labels": torch.arange(B) % 8,
            "return_dict": False}


DIT = ZooModel(
    "DiTTransformer2DModel",
    builder("DiTTransformer2DModel", in_channels=4, out_channels=8, activation_fn="gelu-approximate",
           num_attention_heads=2, attention_head_dim=8, attention_bias=True, num_layers=3, norm_type="ada_norm_zero",
           num_embeds_ada_norm=8, patch_size=2, sample_size=8),
    _dit_inputs, steps_1000, note="out_channels = 2 * in_channels (learned sigma)")


# --- PixArt (test_models_pixart_transformer2d.py): discrete t on the 1000 scale ------------------------------------
def _pixart_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 8, 8, seed=1), "encoder_hidden_states": randn(B, 8, 8, seed=2),
            "timestep": tb(t, B), "added_cond_kwargs": {"aspect_ratio": None, "resolution": None},
            "return_dict": False}


_PIXART_CONFIG = dict(sample_size=8, num_layers=3, patch_size=2, attention_head_dim=8, num_attention_heads=2,
                      in_channels=4, cross_attention_dim=16, out_channels=8, attention_bias=True,
                      activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
                      norm_elementwise_affine=False, norm_eps=1e-6)
PIXART = ZooModel(
    "PixArtTransformer2DModel",
    builder("PixArtTransformer2DModel", **_PIXART_CONFIG, use_additional_conditions=False, caption_channels=8),
    _pixart_inputs, steps_1000)

# --- Transformer2DModel (no own test; the generic class as a standalone patched denoiser, i.e. a legacy PixArt-alpha
# checkpoint: the same config as PixArt above); discrete t on the 1000 scale.
TRANSFORMER_2D = ZooModel(
    "Transformer2DModel",
    builder("Transformer2DModel", **_PIXART_CONFIG, caption_channels=8),
    _pixart_inputs, steps_1000, note="generic class configured as a patched PixArt-alpha denoiser")


# --- Sana (test_models_transformer_sana.py): linear attention; flow t on the 1000 scale (timestep_scale 1) ---------
def _sana_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 8, 8, seed=1), "encoder_hidden_states": randn(B, 8, 8, seed=2),
            "timestep": tb(t, B), "return_dict": False}


SANA = ZooModel(
    "SanaTransformer2DModel",
    builder("SanaTransformer2DModel", patch_size=1, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=4,
           num_attention_heads=2, num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8,
           caption_channels=8, sample_size=8),
    _sana_inputs, flow_steps)


# --- CogView3-Plus (test_models_transformer_cogview3plus.py): DDIM, discrete t on the 1000 scale --------------------
def _cogview_inputs(t: torch.Tensor) -> dict[str, Any]:
    size = torch.tensor([[64, 64]] * B, dtype=torch.float32)
    return {"hidden_states": randn(B, 4, 8, 8, seed=1), "encoder_hidden_states": randn(B, 8, 8, seed=2),
            "timestep": tb(t, B), "original_size": size, "target_size": size,
            "crop_coords": torch.zeros(B, 2), "return_dict": False}


COGVIEW3 = ZooModel(
    "CogView3PlusTransformer2DModel",
    builder("CogView3PlusTransformer2DModel", patch_size=2, in_channels=4, num_layers=3, attention_head_dim=4,
           num_attention_heads=2, out_channels=4, text_embed_dim=8, time_embed_dim=8, condition_dim=2,
           pos_embed_max_size=8, sample_size=8),
    _cogview_inputs, steps_1000)

# --- CogView4 (test_models_transformer_cogview4.py): flow t on the 1000 scale --------------------------------------
COGVIEW4 = ZooModel(
    "CogView4Transformer2DModel",
    builder("CogView4Transformer2DModel", patch_size=2, in_channels=4, num_layers=3, attention_head_dim=4,
           num_attention_heads=4, out_channels=4, text_embed_dim=8, time_embed_dim=8, condition_dim=4),
    _cogview_inputs, flow_steps)


# --- GLM-Image (test_models_transformer_glm_image.py): prior (AR) tokens added per image token; the pipeline
# passes the flow t on the 1000 scale minus 1 (999 -> ...).
def _glm_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 8, 8, seed=1), "encoder_hidden_states": randn(B, 8, 32, seed=2),
            "prior_token_id": randint(0, 64, B, 16, seed=3), "prior_token_drop": torch.zeros(B, 16, dtype=torch.bool),
            "timestep": tb(t, B), "target_size": torch.tensor([[8.0, 8.0]] * B), "crop_coords": torch.zeros(B, 2),
            "return_dict": False}


GLM_IMAGE = ZooModel(
    "GlmImageTransformer2DModel",
    builder("GlmImageTransformer2DModel", patch_size=2, in_channels=4, out_channels=4, num_layers=3,
           attention_head_dim=8, num_attention_heads=2, text_embed_dim=32, time_embed_dim=16, condition_dim=8,
           prior_vq_quantizer_codebook_size=64),
    _glm_inputs, lambda n: [s - 1.0 for s in flow_steps(n)], note="prior_token_id: one AR token per image token")


# --- ERNIE-Image (test_models_transformer_ernie_image.py): flow t on the 1000 scale --------------------------------
def _ernie_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 16, 8, 8, seed=1), "timestep": tb(t, B), "text_bth": randn(B, 8, 16, seed=2),
            "text_lens": torch.tensor([8, 6]), "return_dict": False}


ERNIE = ZooModel(
    "ErnieImageTransformer2DModel",
    builder("ErnieImageTransformer2DModel", fill=("adaLN_modulation", "final_linear"), hidden_size=32,
            num_attention_heads=2, num_layers=3, ffn_hidden_size=32, in_channels=16, out_channels=16, patch_size=1,
            text_in_dim=16, rope_theta=256, rope_axes_dim=(8, 4, 4), eps=1e-6, qk_layernorm=True),
    _ernie_inputs, flow_steps, note="zero-initialised adaLN_modulation / final_linear redrawn (else output == 0)")


# --- HunyuanDiT (test_models_transformer_hunyuan_dit.py): U-shaped skips between block halves; DDPM t on the 1000
# scale. The rotary embedding is computed as the pipeline does (the test feeds a constant one).
def _hydit_inputs(t: torch.Tensor) -> dict[str, Any]:
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    rope = get_2d_rotary_pos_embed(8, ((0, 0), (4, 4)), (4, 4), output_type="pt")
    meta = torch.tensor([[1024.0, 1024.0, 64.0, 64.0, 0.0, 0.0]] * B)
    return {"hidden_states": randn(B, 4, 8, 8, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 4, 8, seed=2), "text_embedding_mask": torch.ones(B, 4),
            "encoder_hidden_states_t5": randn(B, 4, 8, seed=3), "text_embedding_mask_t5": torch.ones(B, 4),
            "image_meta_size": meta, "style": torch.zeros(B, dtype=torch.long), "image_rotary_emb": rope,
            "return_dict": False}


HUNYUAN_DIT = ZooModel(
    "HunyuanDiT2DModel",
    builder("HunyuanDiT2DModel", sample_size=8, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=8,
           num_attention_heads=2, cross_attention_dim=8, cross_attention_dim_t5=8, pooled_projection_dim=4,
           hidden_size=16, text_len=4, text_len_t5=4, activation_fn="gelu-approximate"),
    _hydit_inputs, steps_1000, note="blocks in the second half take a long skip from the first half")


# --- Lumina 2 (test_models_transformer_lumina2.py). INCREASING t: the pipeline passes 1 - t/1000, 0 -> 1 ----------
def _lumina2_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 8, 8, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 8, 32, seed=2),
            "encoder_attention_mask": torch.ones(B, 8, dtype=torch.bool), "return_dict": False}


LUMINA2 = ZooModel(
    "Lumina2Transformer2DModel",
    builder("Lumina2Transformer2DModel", sample_size=8, patch_size=2, in_channels=4, hidden_size=24, num_layers=3,
           num_refiner_layers=1, num_attention_heads=3, num_kv_heads=1, multiple_of=2, ffn_dim_multiplier=None,
           norm_eps=1e-5, scaling_factor=1.0, axes_dim_rope=(4, 2, 2), axes_lens=(128, 128, 128), cap_feat_dim=32),
    _lumina2_inputs, increasing, note="INCREASING t (1 - t/1000): 0 = noise -> 1 = clean")


# --- Lumina-Next (test_models_transformer_lumina.py). INCREASING t: the pipeline passes 1 - t/1000, 0 -> 1. The
# rotary embedding is the pipeline's get_2d_rotary_pos_embed_lumina (the test feeds random numbers).
def _lumina_next_inputs(t: torch.Tensor) -> dict[str, Any]:
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    return {"hidden_states": randn(B, 4, 8, 8, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 8, 32, seed=2), "encoder_mask": torch.ones(B, 8),
            "image_rotary_emb": get_2d_rotary_pos_embed_lumina(8, 32, 32), "cross_attention_kwargs": {},
            "return_dict": False}


LUMINA_NEXT = ZooModel(
    "LuminaNextDiT2DModel",
    builder("LuminaNextDiT2DModel", fill=(".gate",), fill_always=("pad_token",), fill_std=0.5, sample_size=8,
            patch_size=2, in_channels=4, hidden_size=24, num_layers=3, num_attention_heads=3, num_kv_heads=1,
            multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5, learn_sigma=False, qk_norm=True,
            cross_attention_dim=32, scaling_factor=1.0),
    _lumina_next_inputs, increasing,
    note="INCREASING t (1 - t/1000): 0 = noise -> 1 = clean; pad_token (torch.empty) and zero cross-attn gates redrawn")


# --- OmniGen (test_models_transformer_omnigen.py): an LLM over text ids + the time token + image latents; sample 0's
# first 16 text positions are replaced by an input image's latents. INCREASING t: the scheduler is
# FlowMatchEulerDiscreteScheduler(invert_sigmas=True, num_train_timesteps=1), so t = 1 - sigma runs 0 -> 1.
def _omnigen_inputs(t: torch.Tensor) -> dict[str, Any]:
    n_txt, n_img = 24, 16
    n = n_txt + 1 + n_img
    return {"hidden_states": randn(B, 4, 8, 8, seed=1), "timestep": tb(t, B),
            "input_ids": randint(1, 10, B, n_txt, seed=2), "input_img_latents": [randn(1, 4, 8, 8, seed=3)],
            "input_image_sizes": {0: [[0, n_img]]}, "attention_mask": torch.ones(B, n, n),
            "position_ids": torch.arange(n).unsqueeze(0).repeat(B, 1), "return_dict": False}


OMNIGEN = ZooModel(
    "OmniGenTransformer2DModel",
    builder("OmniGenTransformer2DModel", hidden_size=16, num_attention_heads=4, num_key_value_heads=4,
           intermediate_size=32, num_layers=3, pad_token_id=0, vocab_size=1000, in_channels=4, time_step_dim=4,
           rope_scaling={"long_factor": [1, 2], "short_factor": [1, 2]}),
    _omnigen_inputs, increasing, note="INCREASING t (1 - sigma): 0 = noise -> 1 = clean")


# --- PRX (test_models_transformer_prx.py, its 1792-wide config shrunk): pipeline passes t / 1000 ------------------
def _prx_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 16, 8, 8, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 8, 32, seed=2), "return_dict": False}


PRX = ZooModel(
    "PRXTransformer2DModel",
    builder("PRXTransformer2DModel", fill=("modulation.lin.weight",), in_channels=16, patch_size=2, context_in_dim=32,
            hidden_size=32, mlp_ratio=3.5, num_heads=2, depth=3, axes_dim=[8, 8], theta=10_000),
    _prx_inputs, flow_sigmas, note="zero-initialised block modulation weights redrawn (else blocks ignore t)")


# --- Z-Image (test_models_transformer_z_image.py): lists of per-sample (C, F, H, W) latents and (L, D) captions.
# INCREASING t: the pipeline passes (1000 - t) / 1000, 0 -> 1. Output: a list of per-sample tensors.
def _zimage_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"x": [randn(16, 1, 8, 8, seed=1 + i) for i in range(B)],
            "cap_feats": [randn(8, 16, seed=11 + i) for i in range(B)], "t": tb(t, B), "return_dict": False}


Z_IMAGE = ZooModel(
    "ZImageTransformer2DModel",
    builder("ZImageTransformer2DModel", all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32,
           n_layers=3, n_refiner_layers=1, n_heads=2, n_kv_heads=2, qk_norm=True, cap_feat_dim=16, rope_theta=256.0,
           t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[256, 32, 32]),
    _zimage_inputs, increasing, note="INCREASING t ((1000 - t)/1000): 0 = noise -> 1 = clean; list inputs/outputs")

ENTRIES = [DIT, PIXART, TRANSFORMER_2D, SANA, COGVIEW3, COGVIEW4, GLM_IMAGE, ERNIE, HUNYUAN_DIT, LUMINA2, LUMINA_NEXT,
           OMNIGEN, PRX, Z_IMAGE]
