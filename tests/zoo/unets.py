"""U-Nets (and aMUSEd's U-ViT), family "unet".

Configs and inputs follow diffusers' model tests (tests/models/unets/test_models_unet_*.py in huggingface/diffusers)
or, for models without one, the pipeline tests that build them (cited per entry). Unless noted, the timesteps are
discrete DDPM/DDIM ones on the 1000 scale (``steps_1000``: 999 -> 0).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .registry import ZooModel, builder, flow_steps, randint, randn, steps_1000, tb

B = 2


def _unet(name: str, cls_name: str, inputs, timesteps=steps_1000, fill=(), fill_std=0.02, note: str = "",
          batch: int = B, **config):
    return ZooModel(name, builder(cls_name, fill=fill, fill_std=fill_std, **config), inputs, timesteps, batch=batch,
                    family="unet", note=note)


# --- UNet1DModel (test_models_unet_1d.py, the Diffuser-style temporal U-Net) -------------------------------------
UNET_1D = _unet(
    "UNet1DModel", "UNet1DModel",
    lambda t: {"sample": randn(B, 14, 16, seed=1), "timestep": tb(t, B), "return_dict": False},
    block_out_channels=(8, 8, 16, 16), in_channels=14, out_channels=14, time_embedding_type="positional",
    use_timestep_embedding=True, flip_sin_to_cos=False, freq_shift=1.0, out_block_type="OutConv1DBlock",
    mid_block_type="MidResTemporalBlock1D", up_block_types=("UpResnetBlock1D", "UpResnetBlock1D", "UpResnetBlock1D"),
    down_block_types=("DownResnetBlock1D", "DownResnetBlock1D", "DownResnetBlock1D", "DownResnetBlock1D"),
    act_fn="swish")

# --- UNet2DModel (test_models_unet_2d.py, the DDPM-style config with attention) ------------------------------------
UNET_2D = _unet(
    "UNet2DModel", "UNet2DModel",
    lambda t: {"sample": randn(B, 3, 16, 16, seed=1), "timestep": tb(t, B), "return_dict": False},
    block_out_channels=(4, 8), norm_num_groups=2, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=3, out_channels=3, in_channels=3,
    layers_per_block=2, sample_size=16)

# --- UNet2DConditionModel (test_models_unet_2d_condition.py, the SD-style config) --------------------------------
UNET_2D_COND = _unet(
    "UNet2DConditionModel", "UNet2DConditionModel",
    lambda t: {"sample": randn(B, 4, 16, 16, seed=1), "timestep": tb(t, B),
               "encoder_hidden_states": randn(B, 4, 8, seed=2), "return_dict": False},
    block_out_channels=(4, 8), norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=2, out_channels=4,
    in_channels=4, layers_per_block=1, sample_size=16)

# --- UNet3DConditionModel (test_models_unet_3d_condition.py): latents (B, C, F, H, W) ------------------------------
UNET_3D_COND = _unet(
    "UNet3DConditionModel", "UNet3DConditionModel",
    lambda t: {"sample": randn(B, 4, 4, 16, 16, seed=1), "timestep": tb(t, B),
               "encoder_hidden_states": randn(B, 4, 8, seed=2), "return_dict": False},
    block_out_channels=(4, 8), norm_num_groups=4, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=8, attention_head_dim=2, out_channels=4,
    in_channels=4, layers_per_block=1, sample_size=16,
    fill=(".conv4.",), note="zero-initialised temporal convolutions (conv4) redrawn (else they are identities)")

# --- UNetMotionModel (test_models_unet_motion.py, AnimateDiff): text embeddings per frame, (B * F, L, D) -----------
UNET_MOTION = _unet(
    "UNetMotionModel", "UNetMotionModel",
    lambda t: {"sample": randn(B, 4, 4, 16, 16, seed=1), "timestep": tb(t, B),
               "encoder_hidden_states": randn(B * 4, 4, 16, seed=2), "return_dict": False},
    block_out_channels=(16, 32), norm_num_groups=16, down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
    up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"), cross_attention_dim=16, num_attention_heads=2,
    out_channels=4, in_channels=4, layers_per_block=1, sample_size=16)


# --- UNetSpatioTemporalConditionModel (test_models_unet_spatiotemporal.py, Stable Video Diffusion): latents
# (B, F, C, H, W). Timesteps are those of SVD's EulerDiscreteScheduler (Karras sigmas 700 -> 0.002,
# timestep_type="continuous"): t = log(sigma) / 4, DECREASING from about 1.64 to about -1.55.
def _svd_timesteps(n: int) -> list[torch.Tensor]:
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
                                       timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
                                       interpolation_type="linear", steps_offset=1)
    scheduler.set_timesteps(n)
    return [t.reshape(1).to(torch.float32) for t in scheduler.timesteps]


UNET_SVD = _unet(
    "UNetSpatioTemporalConditionModel", "UNetSpatioTemporalConditionModel",
    lambda t: {"sample": randn(B, 2, 4, 16, 16, seed=1), "timestep": tb(t, B),
               "encoder_hidden_states": randn(B, 1, 32, seed=2),
               "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]] * B), "return_dict": False},
    _svd_timesteps, note="EDM c_noise timesteps (log(sigma)/4), decreasing, negative at the end",
    block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
    num_attention_heads=4, out_channels=4, in_channels=4, layers_per_block=1, sample_size=16,
    projection_class_embeddings_input_dim=3 * 8, addition_time_embed_dim=8)

# --- I2VGenXLUNet (the deprecated pipeline's test, tests/pipelines/i2vgen_xl/test_i2vgenxl.py before commit
# bc55b631fd): image latents (B, C, F, H, W) of the first frame, CLIP image embeddings, fps micro-condition.
UNET_I2VGEN = _unet(
    "I2VGenXLUNet", "I2VGenXLUNet",
    lambda t: {"sample": randn(B, 4, 2, 16, 16, seed=1), "timestep": tb(t, B), "fps": torch.full((B,), 16.0),
               "image_latents": randn(B, 4, 2, 16, 16, seed=2), "image_embeddings": randn(B, 4, seed=3),
               "encoder_hidden_states": randn(B, 4, 4, seed=4), "return_dict": False},
    block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    cross_attention_dim=4, attention_head_dim=4, num_attention_heads=None, norm_num_groups=2,
    fill=(".conv4.",), note="zero-initialised temporal convolutions (conv4) redrawn (else they are identities)")

# --- Kandinsky3UNet (tests/pipelines/kandinsky3/test_kandinsky3.py, narrower): DDPM, discrete t on the 1000 scale.
# Its time embedding enters only through zero-initialised MLPs, redrawn here (else the output ignores t).
UNET_KANDINSKY3 = _unet(
    "Kandinsky3UNet", "Kandinsky3UNet",
    lambda t: {"sample": randn(B, 4, 16, 16, seed=1), "timestep": tb(t, B),
               "encoder_hidden_states": randn(B, 8, 32, seed=2), "encoder_attention_mask": torch.ones(B, 8),
               "return_dict": False},
    fill=("context_mlp",), fill_std=0.2, note="zero-initialised time-modulation MLPs (context_mlp) redrawn",
    in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4, layers_per_block=2,
    block_out_channels=(16, 32), cross_attention_dim=4, encoder_hid_dim=32)


# --- StableCascadeUNet (the prior of tests/pipelines/stable_cascade/test_stable_cascade_prior.py, narrower):
# timestep_ratio in [0, 1], DECREASING 1 -> 0 (DDPMWuerstchenScheduler), one value per sample.
def _cascade_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"sample": randn(B, 16, 8, 8, seed=1), "timestep_ratio": tb(t, B),
            "clip_text_pooled": randn(B, 1, 32, seed=2), "clip_text": randn(B, 8, 32, seed=3),
            "clip_img": randn(B, 1, 16, seed=4), "return_dict": False}


UNET_CASCADE = _unet(
    "StableCascadeUNet", "StableCascadeUNet", _cascade_inputs,
    lambda n: [s.reshape(1) for s in torch.linspace(1.0, 0.0, n + 1)[:-1]],
    note="timestep_ratio 1 -> 0", conditioning_dim=32, block_out_channels=(32, 32), num_attention_heads=(2, 2),
    down_num_layers_per_block=(1, 1), up_num_layers_per_block=(1, 1), switch_level=(False,),
    clip_image_in_channels=16, clip_text_in_channels=32, clip_text_pooled_in_channels=32, dropout=(0.0, 0.0))

# --- DreamLiteUNetModel (tests/pipelines/dreamlite/test_pipeline_dreamlite.py): flow t on the 1000 scale -----------
UNET_DREAMLITE = _unet(
    "DreamLiteUNetModel", "DreamLiteUNetModel",
    lambda t: {"sample": randn(B, 4, 8, 8, seed=1), "timestep": tb(t, B),
               "encoder_hidden_states": randn(B, 8, 16, seed=2), "return_dict": False},
    flow_steps, sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("DreamLiteCrossAttnNoSelfAttnDownBlock2D", "DreamLiteCrossAttnDownBlock2D"),
    up_block_types=("DreamLiteCrossAttnUpBlock2D", "DreamLiteUpBlock2D"), block_out_channels=(32, 64),
    cross_attention_dim=16, attention_head_dim=8, layers_per_block=1, norm_num_groups=8,
    transformer_layers_per_block=1)


# --- UVit2DModel (aMUSEd; the deprecated pipeline's test, tests/pipelines/amused/test_amused.py before commit
# bc55b631fd, with 3 transformer layers). A MaskGIT token predictor: forward() has no timestep. Its step is encoded
# in how many image tokens are masked, so here t is the mask ratio in [0, 1] of AmusedScheduler's cosine schedule,
# DECREASING 1 (all masked) -> cos(pi/2 * (n-1)/n); inputs(t) masks the first round(t * N) tokens of a fixed random
# permutation with mask_token_id = vocab_size - 1.
def _uvit_inputs(t: torch.Tensor) -> dict[str, Any]:
    h = w = 8
    n_tokens = h * w
    ids = randint(0, 8, B, n_tokens, seed=1)
    order = torch.randperm(n_tokens, generator=torch.Generator().manual_seed(2))
    n_masked = round(float(t.flatten()[0]) * n_tokens)
    ids[:, order[:n_masked]] = 31
    micro = torch.tensor([[64.0, 64.0, 0.0, 0.0, 6.0]] * B)
    return {"input_ids": ids.reshape(B, h, w), "encoder_hidden_states": randn(B, 8, 8, seed=3),
            "pooled_text_emb": randn(B, 8, seed=4), "micro_conds": micro}


UVIT = _unet(
    "UVit2DModel", "UVit2DModel", _uvit_inputs,
    lambda n: [torch.tensor([math.cos(math.pi / 2 * i / n)]) for i in range(n)],
    note="no timestep argument: t = mask ratio of the input tokens (MaskGIT); returns logits (B, codebook, H, W); "
         "a U-ViT: conv down/up blocks around a stack of 3 transformer layers",
    hidden_size=8, use_bias=False, hidden_dropout=0.0, cond_embed_dim=8, micro_cond_encode_dim=2,
    micro_cond_embed_dim=10, encoder_hidden_size=8, vocab_size=32, codebook_size=8, in_channels=8,
    block_out_channels=8, num_res_blocks=1, downsample=True, upsample=True, block_num_heads=1, num_hidden_layers=3,
    num_attention_heads=1, attention_dropout=0.0, intermediate_size=8, layer_norm_eps=1e-06,
    ln_elementwise_affine=True)

ENTRIES = [UNET_1D, UNET_2D, UNET_2D_COND, UNET_3D_COND, UNET_MOTION, UNET_SVD, UNET_I2VGEN, UNET_KANDINSKY3,
           UNET_CASCADE, UNET_DREAMLITE, UVIT]
