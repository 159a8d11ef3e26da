"""Video transformers, second part: CogVideoX-like, Latte/Allegro, Mochi, LTX, HunyuanVideo, EasyAnimate, Cosmos,
Kandinsky 5/6, Motif-Video and MiniMax-H3.

Configs and inputs follow diffusers' own model tests (tests/models/transformers/test_models_transformer_*.py in
huggingface/diffusers) with 3-4 blocks and small latents. Timestep conventions are those of each pipeline.
"""

from __future__ import annotations

from typing import Any

import torch

from .registry import ZooModel, builder, flow_sigmas, flow_steps, randn, steps_1000, tb

B = 2


# --- CogVideoX (test_models_transformer_cogvideox.py, the CogVideoX 1.5 variant with RoPE and temporal patches):
# latents (B, F, C, H, W); DDIM/DPM, discrete t on the 1000 scale.
def _cogvideo_inputs(t: torch.Tensor) -> dict[str, Any]:
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    # CogVideoX 1.5 branch of the pipeline's _prepare_rotary_positional_embeddings: 2 frames / patch_size_t 2 = 1
    rope = get_3d_rotary_pos_embed(16, None, (4, 4), 1, grid_type="slice", max_size=(4, 4))
    return {"hidden_states": randn(B, 2, 4, 8, 8, seed=1), "encoder_hidden_states": randn(B, 8, 8, seed=2),
            "timestep": tb(t, B), "image_rotary_emb": rope, "return_dict": False}


COGVIDEOX = ZooModel(
    "CogVideoXTransformer3DModel",
    builder("CogVideoXTransformer3DModel", num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
            time_embed_dim=2, text_embed_dim=8, num_layers=3, sample_width=8, sample_height=8, sample_frames=8,
            patch_size=2, patch_size_t=2, temporal_compression_ratio=4, max_text_seq_length=8,
            use_rotary_positional_embeddings=True),
    _cogvideo_inputs, steps_1000, note="image_rotary_emb computed as the pipeline does (get_3d_rotary_pos_embed)")


# --- ConsisID (test_models_transformer_consisid.py): identity-preserving CogVideoX with a face/ID branch -----------
def _consisid_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 1, 4, 8, 8, seed=1), "encoder_hidden_states": randn(B, 8, 8, seed=2),
            "timestep": tb(t, B), "id_vit_hidden": [randn(B, 2, 2, seed=3)], "id_cond": randn(B, 2, seed=4),
            "return_dict": False}


CONSISID = ZooModel(
    "ConsisIDTransformer3DModel",
    builder("ConsisIDTransformer3DModel", num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
            time_embed_dim=2, text_embed_dim=8, num_layers=3, sample_width=8, sample_height=8, sample_frames=8,
            patch_size=2, temporal_compression_ratio=4, max_text_seq_length=8, cross_attn_interval=1, is_kps=False,
            is_train_face=True, cross_attn_dim_head=1, cross_attn_num_heads=1, LFE_id_dim=2, LFE_vit_dim=2,
            LFE_depth=5, LFE_dim_head=8, LFE_num_heads=2, LFE_num_id_token=1, LFE_num_querie=1, LFE_output_dim=10,
            LFE_ff_mult=1, LFE_num_scale=1),
    _consisid_inputs, steps_1000)


# --- Allegro (test_models_transformer_allegro.py): discrete t on the 1000 scale ------------------------------------
def _allegro_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 2, 8, 8, seed=1), "encoder_hidden_states": randn(B, 8, 8, seed=2),
            "timestep": tb(t, B), "return_dict": False}


ALLEGRO = ZooModel(
    "AllegroTransformer3DModel",
    builder("AllegroTransformer3DModel", num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
            num_layers=3, cross_attention_dim=16, sample_width=8, sample_height=8, sample_frames=8, caption_channels=8),
    _allegro_inputs, steps_1000)


# --- Latte (test_models_transformer_latte.py): spatial and temporal blocks alternate; discrete t on 1000 scale -----
def _latte_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 2, 8, 8, seed=1), "encoder_hidden_states": randn(B, 8, 8, seed=2),
            "timestep": tb(t, B), "enable_temporal_attentions": True, "return_dict": False}


LATTE = ZooModel(
    "LatteTransformer3DModel",
    builder("LatteTransformer3DModel", sample_size=8, num_layers=3, patch_size=2, attention_head_dim=4,
            num_attention_heads=2, caption_channels=8, in_channels=4, cross_attention_dim=8, out_channels=8,
            attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
            norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6, video_length=2),
    _latte_inputs, steps_1000, note="3 spatial + 3 temporal blocks")


# --- Mochi (test_models_transformer_mochi.py). INCREASING t on the 1000 scale: Mochi's scheduler inverts sigmas, the
# model gets t = (1 - sigma) * 1000, 0 (noise) -> 1000 (clean).
def _mochi_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 2, 8, 8, seed=1), "encoder_hidden_states": randn(B, 8, 16, seed=2),
            "timestep": tb(t, B), "encoder_attention_mask": torch.ones(B, 8, dtype=torch.bool), "return_dict": False}


MOCHI = ZooModel(
    "MochiTransformer3DModel",
    builder("MochiTransformer3DModel", fill=("pos_frequencies",), fill_std=1.0, patch_size=2, num_attention_heads=2,
            attention_head_dim=8, num_layers=3, pooled_projection_dim=16, in_channels=4, out_channels=None,
            qk_norm="rms_norm", text_embed_dim=16, time_embed_dim=4, activation_fn="swiglu", max_sequence_length=16),
    _mochi_inputs, lambda n: [1000.0 - s for s in flow_steps(n)],
    note="INCREASING t ((1 - sigma) * 1000): 0 = noise -> 1000 = clean; zero-initialised RoPE pos_frequencies redrawn")


# --- LTX-Video (test_models_transformer_ltx.py): packed tokens (B, F*H*W, C); t on the 1000 scale ------------------
def _ltx_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 2 * 8 * 8, 4, seed=1), "encoder_hidden_states": randn(B, 8, 16, seed=2),
            "timestep": tb(t, B), "encoder_attention_mask": torch.ones(B, 8, dtype=torch.bool), "num_frames": 2,
            "height": 8, "width": 8, "return_dict": False}


LTX = ZooModel(
    "LTXVideoTransformer3DModel",
    builder("LTXVideoTransformer3DModel", in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
            cross_attention_dim=16, num_layers=3, qk_norm="rms_norm_across_heads", caption_channels=16),
    _ltx_inputs, flow_steps)


# --- LTX-2 (test_models_transformer_ltx2.py): joint audio-video; the video prediction is output 0 ----------------
def _ltx2_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 2 * 8 * 8, 4, seed=1), "audio_hidden_states": randn(B, 9, 4, seed=2),
            "encoder_hidden_states": randn(B, 8, 16, seed=3), "audio_encoder_hidden_states": randn(B, 8, 16, seed=4),
            "timestep": tb(t, B), "encoder_attention_mask": torch.ones(B, 8, dtype=torch.bool), "num_frames": 2,
            "height": 8, "width": 8, "audio_num_frames": 9, "fps": 25.0, "return_dict": False}


LTX2 = ZooModel(
    "LTX2VideoTransformer3DModel",
    builder("LTX2VideoTransformer3DModel", in_channels=4, out_channels=4, patch_size=1, patch_size_t=1,
            num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16, audio_in_channels=4,
            audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=4, audio_cross_attention_dim=8,
            num_layers=3, qk_norm="rms_norm_across_heads", caption_channels=16, rope_double_precision=False),
    _ltx2_inputs, flow_steps, note="outputs (video, audio); the video prediction is the main one")


# --- HunyuanVideo (test_models_transformer_hunyuan_video.py): t and guidance on the 1000 scale ---------------------
def _hyvideo_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 1, 8, 8, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 8, 16, seed=2), "pooled_projections": randn(B, 8, seed=3),
            "encoder_attention_mask": torch.ones(B, 8), "guidance": torch.full((B,), 6000.0), "return_dict": False}


_HYV = dict(num_attention_heads=2, attention_head_dim=10, num_layers=2, num_single_layers=3, num_refiner_layers=1,
            patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4))
HUNYUAN_VIDEO = ZooModel(
    "HunyuanVideoTransformer3DModel",
    builder("HunyuanVideoTransformer3DModel", in_channels=4, out_channels=4, patch_size=1, guidance_embeds=True,
            image_condition_type=None, **_HYV),
    _hyvideo_inputs, flow_steps, note="2 dual-stream + 3 single-stream blocks; guidance 6.0 * 1000")


# --- HunyuanVideo-Framepack (test_models_transformer_hunyuan_video_framepack.py): clean/history latents ----------
def _framepack_inputs(t: torch.Tensor) -> dict[str, Any]:
    f = 3
    return {"hidden_states": randn(B, 4, f, 4, 4, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 8, 16, seed=2), "pooled_projections": randn(B, 8, seed=3),
            "encoder_attention_mask": torch.ones(B, 8), "guidance": torch.full((B,), 6000.0),
            "image_embeds": randn(B, 8, 16, seed=4), "indices_latents": torch.arange(f, dtype=torch.float32),
            "latents_clean": randn(B, 4, f - 1, 4, 4, seed=5), "indices_latents_clean": torch.ones(f - 1),
            "latents_history_2x": randn(B, 4, f - 1, 4, 4, seed=6), "indices_latents_history_2x": torch.ones(f - 1),
            "latents_history_4x": randn(B, 4, (f - 1) * 4, 4, 4, seed=7),
            "indices_latents_history_4x": torch.ones((f - 1) * 4), "return_dict": False}


FRAMEPACK = ZooModel(
    "HunyuanVideoFramepackTransformer3DModel",
    builder("HunyuanVideoFramepackTransformer3DModel", in_channels=4, out_channels=4, patch_size=2,
            guidance_embeds=True, image_condition_type=None, has_image_proj=True, image_proj_dim=16,
            has_clean_x_embedder=True, **_HYV),
    _framepack_inputs, flow_steps, note="2 dual-stream + 3 single-stream blocks")


# --- HunyuanVideo 1.5 (test_models_transformer_hunyuan_1_5.py) -----------------------------------------------------
def _hyv15_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 1, 8, 8, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 6, 16, seed=2), "encoder_hidden_states_2": randn(B, 4, 8, seed=3),
            "encoder_attention_mask": torch.ones(B, 6), "encoder_attention_mask_2": torch.ones(B, 4),
            "image_embeds": torch.zeros(B, 3, 12), "return_dict": False}


HUNYUAN_VIDEO15 = ZooModel(
    "HunyuanVideo15Transformer3DModel",
    builder("HunyuanVideo15Transformer3DModel", in_channels=4, out_channels=4, num_attention_heads=2,
            attention_head_dim=8, num_layers=3, num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1,
            text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=16,
            task_type="t2v"),
    _hyv15_inputs, flow_steps)


# --- EasyAnimate (test_models_transformer_easyanimate.py): flow t on the 1000 scale ---------------------------------
def _easyanimate_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 2, 8, 8, seed=1), "timestep": tb(t, B), "timestep_cond": None,
            "encoder_hidden_states": randn(B, 8, 16, seed=2), "encoder_hidden_states_t5": None,
            "inpaint_latents": None, "control_latents": None, "return_dict": False}


EASYANIMATE = ZooModel(
    "EasyAnimateTransformer3DModel",
    builder("EasyAnimateTransformer3DModel", attention_head_dim=16, num_attention_heads=2, in_channels=4,
            mmdit_layers=3, num_layers=3, out_channels=4, patch_size=2, sample_height=60, sample_width=90,
            text_embed_dim=16, time_embed_dim=8, time_position_encoding_type="3d_rope", timestep_activation_fn="silu"),
    _easyanimate_inputs, flow_steps)


# --- Cosmos (test_models_transformer_cosmos.py, the Cosmos-1.0 text-to-world config, no padding-mask channel).
# Timesteps are those of the Cosmos-1.0 pipelines' EDMEulerScheduler (Karras sigmas 80 -> 0.002):
# t = c_noise(sigma) = log(sigma) / 4, DECREASING from about 1.1 to about -1.55 (Cosmos-Predict2 pipelines pass
# sigma / (sigma + 1) instead).
def _cosmos_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 4, 1, 16, 16, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 8, 16, seed=2), "attention_mask": torch.ones(B, 8), "fps": 30,
            "return_dict": False}


def _cosmos_timesteps(n: int) -> list[torch.Tensor]:
    from diffusers import EDMEulerScheduler

    scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=80, sigma_data=0.5, sigma_schedule="karras")
    scheduler.set_timesteps(n)
    return [t.reshape(1).to(torch.float32) for t in scheduler.timesteps]


COSMOS = ZooModel(
    "CosmosTransformer3DModel",
    builder("CosmosTransformer3DModel", in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12,
            num_layers=3, mlp_ratio=2, text_embed_dim=16, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2),
            rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=False, extra_pos_embed_type="learnable"),
    _cosmos_inputs, _cosmos_timesteps,
    note="EDM c_noise timesteps (log(sigma)/4), decreasing, negative at the end; concat_padding_mask=False because "
         "resizing the padding mask needs torchvision, which the venv lacks")


# --- Cosmos 3 Omni (test_models_transformer_cosmos3.py): one packed understanding+generation sequence (2 text ids,
# then 4x4 vision tokens); vision_timesteps per noisy token on the 1000 scale (the model multiplies by 0.001).
def _cosmos3_inputs(t: torch.Tensor) -> dict[str, Any]:
    h = w = 4
    n_vis = h * w
    seq = 2 + n_vis
    vis_idx = torch.arange(2, seq)
    return {"input_ids": torch.tensor([1, 2]), "text_indexes": torch.tensor([0, 1]),
            "position_ids": torch.zeros(3, seq, dtype=torch.long), "und_len": 2, "sequence_length": seq,
            "vision_tokens": [randn(1, 2, 1, h, w, seed=1)], "vision_token_shapes": [(1, h, w)],
            "vision_sequence_indexes": vis_idx, "vision_mse_loss_indexes": vis_idx,
            "vision_timesteps": tb(t, n_vis), "vision_noisy_frame_indexes": [torch.tensor([0])],
            "return_dict": False}


COSMOS3 = ZooModel(
    "Cosmos3OmniTransformer",
    builder("Cosmos3OmniTransformer", head_dim=6, hidden_act="relu2", hidden_size=12, intermediate_size=24,
            latent_channel=2, latent_patch_size=1, num_attention_heads=2, num_hidden_layers=3, num_key_value_heads=1,
            patch_latent_dim=2, qk_norm_for_text=False, rms_norm_eps=1e-5, rope_axes_dim=[1, 1, 1], rope_theta=1e8,
            vocab_size=32),
    _cosmos3_inputs, flow_steps, batch=1, note="batch 1: a single packed sequence (no batch axis)")


# --- Kandinsky 5 (tests/pipelines/kandinsky5/test_kandinsky5.py): channels-last latents (B, F, H, W, C); the
# zero-initialised out_layer is redrawn (else the output is 0). t on the 1000 scale.
def _k5_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 1, 8, 8, 16, seed=1), "encoder_hidden_states": randn(B, 8, 16, seed=2),
            "timestep": tb(t, B), "pooled_projections": randn(B, 8, seed=3),
            "visual_rope_pos": [torch.arange(1), torch.arange(4), torch.arange(4)], "text_rope_pos": torch.arange(8),
            "return_dict": False}


KANDINSKY5 = ZooModel(
    "Kandinsky5Transformer3DModel",
    builder("Kandinsky5Transformer3DModel", fill=("out_layer",), in_visual_dim=16, in_text_dim=16, in_text_dim2=8,
            time_dim=16, out_visual_dim=16, patch_size=(1, 2, 2), model_dim=16, ff_dim=32, num_text_blocks=1,
            num_visual_blocks=3, axes_dims=(2, 2, 4), visual_cond=False, attention_type="regular"),
    _k5_inputs, flow_steps, note="zero-initialised out_layer redrawn")


# --- Kandinsky 6 (no upstream model test; config from the signature): fused video+audio blocks, channels-last video
# latents with the conditioning latent and mask concatenated (visual_cond), t on the 1000 scale.
def _k6_inputs(t: torch.Tensor) -> dict[str, Any]:
    video = torch.cat([randn(B, 1, 4, 4, 4, seed=1), torch.zeros(B, 1, 4, 4, 5)], dim=-1)
    return {"hidden_states": video, "encoder_hidden_states": randn(B, 8, 16, seed=2),
            "pooled_projections": randn(B, 8, seed=3), "timestep": tb(t, B),
            "audio_hidden_states": randn(B, 6, 4, seed=4),
            "return_dict": False}


KANDINSKY6 = ZooModel(
    "Kandinsky6Transformer3DModel",
    builder("Kandinsky6Transformer3DModel", fill=("out_layer",), in_visual_dim=4, out_visual_dim=4, in_text_dim=16,
            in_text_dim2=8, time_dim=16, patch_size=(1, 2, 2), model_dim=16, ff_dim=32, num_text_blocks=1,
            num_visual_blocks=3, axes_dims=(2, 2, 4), visual_cond=True, in_audio_dim=4, out_audio_dim=4),
    _k6_inputs, flow_steps, note="no upstream model test; outputs (video, audio)")


# --- Kandinsky 6 SR (no upstream model test): NABLA sparse flex attention over 8x8 token groups, so the token grid is
# 8x8; channels-last input = noisy latent + anchor latent + anchor mask. t on the 1000 scale.
def _k6sr_inputs(t: torch.Tensor) -> dict[str, Any]:
    x = torch.cat([randn(B, 1, 8, 8, 4, seed=1), randn(B, 1, 8, 8, 4, seed=2), torch.ones(B, 1, 8, 8, 1)], dim=-1)
    return {"hidden_states": x, "timestep": tb(t, B), "return_dict": False}


KANDINSKY6_SR = ZooModel(
    "Kandinsky6SRTransformer3DModel",
    builder("Kandinsky6SRTransformer3DModel", fill=("out_layer",), in_visual_dim=4, out_visual_dim=4, time_dim=16,
            patch_size=(1, 1, 1), model_dim=16, ff_dim=32, num_visual_blocks=3, axes_dims=(2, 2, 4)),
    _k6sr_inputs, flow_steps, note="no upstream model test")


# --- Motif-Video (test_models_transformer_motif_video.py, fewer frames): in = 2 * 16 + 1 channels -----------------
def _motif_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 33, 2, 8, 8, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 8, 32, seed=2), "return_dict": False}


MOTIF = ZooModel(
    "MotifVideoTransformer3DModel",
    builder("MotifVideoTransformer3DModel", in_channels=33, out_channels=16, num_attention_heads=2,
            attention_head_dim=12, num_layers=2, num_single_layers=2, num_decoder_layers=0, mlp_ratio=4.0,
            patch_size=1, patch_size_t=1, qk_norm="rms_norm", norm_type="layer_norm", text_embed_dim=32,
            image_embed_dim=4, rope_theta=256.0, rope_axes_dim=(4, 4, 4), enable_text_cross_attention_dual=False,
            enable_text_cross_attention_single=False),
    _motif_inputs, flow_steps, note="2 dual-stream + 2 single-stream blocks")


# --- MiniMax-H3 (test_models_transformer_minimax_h3.py): one packed text+audio+video sequence per sample (the batch
# axis only replicates), a table of distinct timesteps indexed per row. Timesteps unscaled in [0, 1]; here video and
# audio rows share t.
def _h3_inputs(t: torch.Tensor) -> dict[str, Any]:
    n_txt, n_aud, n_vid = 4, 6, 8
    seq = n_txt + n_aud + n_vid
    text_idx, audio_idx = torch.arange(n_txt), torch.arange(n_txt, n_txt + n_aud)
    video_idx = torch.arange(n_txt + n_aud, seq)
    tags = torch.zeros(seq, dtype=torch.long)
    tags[text_idx], tags[audio_idx] = 1, 2
    pos = torch.zeros(seq, 3)
    pos[:, 0] = torch.arange(seq, dtype=torch.float32)
    pos[video_idx, 1] = torch.arange(n_vid, dtype=torch.float32) % 4
    pos[video_idx, 2] = torch.arange(n_vid, dtype=torch.float32) % 2
    return {"hidden_states": randn(B, n_vid, 16, seed=1), "audio_hidden_states": randn(B, n_aud, 6, seed=2),
            "encoder_hidden_states": randn(B, n_txt, 8, seed=3), "timestep": tb(t, 1),
            "timestep_indices": torch.zeros(seq, dtype=torch.long), "token_tags": tags, "position_ids": pos,
            "video_indices": video_idx, "audio_indices": audio_idx, "text_indices": text_idx, "return_dict": False}


MINIMAX_H3 = ZooModel(
    "MiniMaxH3Transformer3DModel",
    builder("MiniMaxH3Transformer3DModel", num_attention_heads=2, attention_head_dim=16, hidden_size=24, num_layers=3,
            num_refiner_layers=2, ffn_dim=32, in_channels=4, audio_in_channels=6, patch_size=(1, 2, 2), text_dim=8,
            freq_dim=8, time_embed_hidden_dim=24, time_embed_dim=16, rope_freq_dim=2),
    _h3_inputs, flow_sigmas, note="outputs (video, audio); timestep is a table of distinct values, here one")

ENTRIES = [COGVIDEOX, CONSISID, ALLEGRO, LATTE, MOCHI, LTX, LTX2, HUNYUAN_VIDEO, FRAMEPACK, HUNYUAN_VIDEO15,
           EASYANIMATE, COSMOS, COSMOS3, KANDINSKY5, KANDINSKY6, KANDINSKY6_SR, MOTIF, MINIMAX_H3]
