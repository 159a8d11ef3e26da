"""A DiT denoiser for the CLI: diffusers DiTTransformer2DModel, random weights, class-conditional.

    graphcache optimize examples/dit.py --policy fora --set interval=3
"""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel


def build(num_layers: int = 6, hidden: int = 128, batch: int = 2):
    torch.manual_seed(0)
    heads = 4
    model = DiTTransformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=num_layers,
        num_attention_heads=heads, attention_head_dim=hidden // heads, num_embeds_ada_norm=10, norm_num_groups=1,
    ).eval()
    latent = torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(batch) % 10

    def inputs(t: float, seed: int | None = None) -> dict:
        # seed: other inputs of the same shapes (graphcache tune checks its choice on seed=1)
        other = torch.Generator().manual_seed(1000 + (seed or 0))
        x = latent if seed is None else torch.randn(batch, 4, 16, 16, generator=other)
        return {
            "hidden_states": x,
            "timestep": torch.full((batch,), int(t), dtype=torch.long),
            "class_labels": labels,
        }

    return model, inputs
