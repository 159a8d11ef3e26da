"""A Flux-shaped (MMDiT) denoiser for the CLI: diffusers FluxTransformer2DModel with a small random config.

Two stacks: dual-stream blocks (image + text) then single-stream blocks; graphcache finds both.

    graphcache optimize examples/flux.py --policy fora --set granularity=block
"""

from __future__ import annotations

import torch
from diffusers import FluxTransformer2DModel


def build(dual: int = 2, single: int = 4, tokens: int = 64, text_tokens: int = 16):
    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=dual, num_single_layers=single, attention_head_dim=32,
        num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=64, axes_dims_rope=[8, 12, 12],
    ).eval()
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(1, tokens, 16, generator=g)
    text = torch.randn(1, text_tokens, 64, generator=g)
    pooled = torch.randn(1, 64, generator=g)
    img_ids = torch.zeros(tokens, 3)
    img_ids[:, 1] = torch.arange(tokens) // 8
    img_ids[:, 2] = torch.arange(tokens) % 8

    def inputs(t: float) -> dict:
        return {
            "hidden_states": latent,
            "encoder_hidden_states": text,
            "pooled_projections": pooled,
            "timestep": torch.tensor([t / 1000.0]),  # Flux takes sigma-scale timesteps
            "img_ids": img_ids,
            "txt_ids": torch.zeros(text_tokens, 3),
        }

    return model, inputs
