"""Audio, music, protein and embedding denoisers (1-D token sequences rather than images or videos).

Configs and inputs follow diffusers' model tests (tests/models/transformers/test_models_*.py in huggingface/diffusers)
or the pipeline tests that build the model (cited per entry), with 3-4 blocks.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .registry import ZooModel, builder, flow_sigmas, increasing, randint, randn, steps_1000, tb

B = 2


# --- ACE-Step (test_models_transformer_ace_step.py): alternating sliding-window / full attention layers (4 = 2 + 2);
# the pipeline passes the flow sigma in [0, 1] as both timestep and timestep_r.
def _ace_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 8, 8, seed=1), "timestep": tb(t, B), "timestep_r": tb(t, B),
            "encoder_hidden_states": randn(B, 10, 32, seed=2), "context_latents": randn(B, 8, 16, seed=3),
            "return_dict": False}


ACE_STEP = ZooModel(
    "AceStepTransformer1DModel",
    builder("AceStepTransformer1DModel", hidden_size=32, intermediate_size=64, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, in_channels=24, audio_acoustic_hidden_dim=8,
            patch_size=2, rope_theta=10000.0, rms_norm_eps=1e-6, sliding_window=16),
    _ace_inputs, flow_sigmas)


# --- LongCat-AudioDiT (test_models_transformer_longcat_audio_dit.py): pipeline passes t / 1000 (sigma in [0, 1]) ---
def _longcat_audio_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 16, 8, seed=1), "encoder_hidden_states": randn(B, 10, 32, seed=2),
            "encoder_attention_mask": torch.ones(B, 10, dtype=torch.bool),
            "attention_mask": torch.ones(B, 16, dtype=torch.bool), "timestep": tb(t, B), "return_dict": False}


LONGCAT_AUDIO = ZooModel(
    "LongCatAudioDiTTransformer",
    builder("LongCatAudioDiTTransformer", fill=("norm_out.linear", "proj_out", "adaln_global_mlp.mlp.1"), dit_dim=64,
            dit_depth=3, dit_heads=4, dit_text_dim=32, latent_dim=8, text_conv=False),
    _longcat_audio_inputs, flow_sigmas, note="zero-initialised output / global adaLN layers redrawn (else output == 0)")


# --- MiniMax-Music 3 (test_models_transformer_minimax_music3.py). INCREASING t: the modular pipeline passes the
# flow-matching time in [0, 1] with 0 = noise.
def _music3_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 8, 24, seed=1), "encoder_hidden_states": randn(B, 24, 16, seed=2),
            "timestep": tb(t, B), "return_dict": False}


MINIMAX_MUSIC3 = ZooModel(
    "MiniMaxMusic3Transformer1DModel",
    builder("MiniMaxMusic3Transformer1DModel", in_channels=8, condition_dim=16, num_layers=3, num_attention_heads=2,
            attention_head_dim=8, ff_inner_dim=32, rotary_dim=4, fourier_embedding_dim=8),
    _music3_inputs, increasing, note="INCREASING t in [0, 1]: 0 = noise -> 1 = clean")


# --- Stable Audio Open (tests/pipelines/stable_audio/test_stable_audio.py): global (duration) token + RoPE as the
# pipeline builds them. Timesteps are CosineDPMSolverMultistepScheduler's (sigma 500 -> 0.3, exponential):
# t = atan(sigma) / pi * 2, DECREASING from about 0.999 to about 0.19.
def _stable_audio_inputs(t: torch.Tensor) -> dict[str, Any]:
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    rope = get_1d_rotary_pos_embed(2, 16 + 1, use_real=True, repeat_interleave_real=False)
    return {"hidden_states": randn(B, 3, 16, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 8, 4, seed=2), "global_hidden_states": randn(B, 1, 8, seed=3),
            "rotary_embedding": rope, "return_dict": False}


def _stable_audio_timesteps(n: int) -> list[torch.Tensor]:
    # CosineDPMSolverMultistepScheduler.set_timesteps, written out (that scheduler needs torchsde, absent here)
    sigmas = torch.linspace(math.log(0.3), math.log(500.0), n).exp().flip(0)
    return [t.reshape(1) for t in sigmas.atan() / math.pi * 2]


STABLE_AUDIO = ZooModel(
    "StableAudioDiTModel",
    builder("StableAudioDiTModel", sample_size=16, in_channels=3, num_layers=3, attention_head_dim=4,
            num_attention_heads=2, num_key_value_attention_heads=2, out_channels=3, cross_attention_dim=4,
            time_proj_dim=8, global_states_input_dim=8, cross_attention_input_dim=4),
    _stable_audio_inputs, _stable_audio_timesteps, note="cosine-EDM timesteps atan(sigma)*2/pi, decreasing")


# --- Stable Audio 3 (test_models_transformer_stable_audio3.py): rectified flow, t = sigma in [0, 1] (the pipeline's
# scheduler has num_train_timesteps=1).
def _sa3_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 8, 16, seed=1), "timestep": tb(t, B),
            "encoder_hidden_states": randn(B, 4, 16, seed=2), "global_hidden_states": randn(B, 12, seed=3),
            "return_dict": False}


STABLE_AUDIO3 = ZooModel(
    "StableAudio3DiTModel",
    builder("StableAudio3DiTModel", io_channels=8, patch_size=1, embed_dim=32, depth=3, num_heads=4,
            cond_token_dim=16, global_cond_dim=12, local_add_cond_dim=5, timestep_features_dim=16, ff_mult=2,
            num_memory_tokens=3, use_differential_attention=False),
    _sa3_inputs, flow_sigmas)


# --- T5FilmDecoder (spectrogram diffusion; the deprecated pipeline's test,
# tests/pipelines/spectrogram_diffusion/test_spectrogram_diffusion.py before commit f13665e8f4, narrower).
# decoder_noise_time = t / 1000 of DDPM timesteps, in [0, 1), DECREASING 0.999 -> 0.
def _t5film_inputs(t: torch.Tensor) -> dict[str, Any]:
    enc = [(randn(B, 8, 32, seed=2), torch.ones(B, 8, dtype=torch.bool)),
           (randn(B, 4, 32, seed=3), torch.ones(B, 4, dtype=torch.bool))]
    return {"encodings_and_masks": enc, "decoder_input_tokens": randn(B, 16, 8, seed=1),
            "decoder_noise_time": tb(t, B)}


T5FILM = ZooModel(
    "T5FilmDecoder",
    builder("T5FilmDecoder", input_dims=8, targets_length=16, max_decoder_noise_time=2000.0, d_model=32, num_layers=3,
            num_heads=2, d_kv=16, d_ff=64, dropout_rate=0.0),
    _t5film_inputs, lambda n: [s / 1000.0 for s in steps_1000(n)], note="returns the spectrogram logits tensor")


# --- RFD4-Proteina (no upstream model test; config from the signature with a minimal feature set): protein
# backbone + local latents, two times. INCREASING t in [0, 1] (the pipeline's clean estimate is x + (1 - t) v; its
# scheduler runs t from 1e-3 up to 1); both times set to t. Output 0 is the backbone velocity.
def _rfd4_inputs(t: torch.Tensor) -> dict[str, Any]:
    n = 12
    cond = {"is_in_context_conditioning": torch.zeros(B, n, dtype=torch.bool),
            "supports_local_latent": torch.ones(B, n, dtype=torch.bool)}
    return {"bb_ca": randn(B, n, 3, seed=1), "local_latents": randn(B, n, 8, seed=2), "bb_ca_time": tb(t, B),
            "local_latents_time": tb(t, B), "padding_mask": torch.ones(B, n, dtype=torch.bool),
            "token_type": randint(0, 7, B, n, seed=3), "conditioning": cond, "return_dict": False}


RFD4 = ZooModel(
    "RFD4ProteinaTransformer",
    builder("RFD4ProteinaTransformer", nlayers=4, token_dim=32, nheads=2, dim_cond=16, pair_repr_dim=8, latent_dim=8,
            token_type_emb_dim=8, cath_emb_dim=8, t_emb_dim=16, seq_sep_dim=8, xt_pair_dist_dim=8,
            feats_seq=("xt_bb_ca", "xt_local_latents", "token_type"),
            feats_cond_seq=("time_emb_bb_ca", "time_emb_local_latents"),
            feats_pair_repr=("xt_bb_ca_pair_dists",), feats_pair_cond=("time_emb_bb_ca", "time_emb_local_latents"),
            update_pair_repr_every_n=2, tri_mult_c=8, num_sequence_classes=20),
    _rfd4_inputs, increasing, note="no upstream model test; INCREASING t in [0, 1]: 0 = noise -> 1 = clean")


# --- PriorTransformer (test_models_prior.py): the unCLIP / Kandinsky 2.x diffusion prior. It denoises a CLIP image
# embedding per step (UnCLIPScheduler / DDPM: discrete t on the 1000 scale) rather than a latent image.
def _prior_inputs(t: torch.Tensor) -> dict[str, Any]:
    return {"hidden_states": randn(B, 8, seed=1), "timestep": tb(t, B), "proj_embedding": randn(B, 8, seed=2),
            "encoder_hidden_states": randn(B, 7, 8, seed=3), "return_dict": False}


PRIOR = ZooModel(
    "PriorTransformer",
    builder("PriorTransformer", fill=("positional_embedding", "prd_embedding"), num_attention_heads=2,
            attention_head_dim=4, num_layers=3, embedding_dim=8, num_embeddings=7, additional_embeddings=4),
    _prior_inputs, steps_1000, note="diffusion prior over CLIP image embeddings (2-D output), not a latent denoiser")

ENTRIES = [ACE_STEP, LONGCAT_AUDIO, MINIMAX_MUSIC3, STABLE_AUDIO, STABLE_AUDIO3, T5FILM, RFD4, PRIOR]
