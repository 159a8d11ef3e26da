"""Random-config diffusers denoisers of known shapes, for the examples, the benchmarks and the side by side with
diffusers' hooks: seeded, so every user of one gets the same weights and inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def flux_shaped(dual: int = 2, single: int = 4, tokens: int = 64, text_tokens: int = 16, heads: int = 4,
                head_dim: int = 32) -> tuple[torch.nn.Module, Callable[[float], dict[str, Any]]]:
    """A ``FluxTransformer2DModel`` (``dual`` dual-stream then ``single`` single-stream blocks, width
    ``heads * head_dim``, 128 by default) in eval mode and its inputs at a timestep on the 1000 scale (Flux itself
    takes ``t / 1000``). The rotary axes split ``head_dim`` as Flux does, a quarter then three eighths twice."""
    from diffusers import FluxTransformer2DModel

    if head_dim % 16:
        raise ValueError(f"head_dim must be a multiple of 16 (the rotary axes split it 2:3:3), got {head_dim}")
    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=dual, num_single_layers=single, attention_head_dim=head_dim,
        num_attention_heads=heads, joint_attention_dim=64, pooled_projection_dim=64,
        axes_dims_rope=[head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8],
    ).eval()
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(1, tokens, 16, generator=g)
    text = torch.randn(1, text_tokens, 64, generator=g)
    pooled = torch.randn(1, 64, generator=g)
    img_ids = torch.zeros(tokens, 3)
    img_ids[:, 1] = torch.arange(tokens) // 8
    img_ids[:, 2] = torch.arange(tokens) % 8

    def inputs(t: float) -> dict[str, Any]:
        return {"hidden_states": latent, "encoder_hidden_states": text, "pooled_projections": pooled,
                "timestep": torch.tensor([t / 1000.0]), "img_ids": img_ids, "txt_ids": torch.zeros(text_tokens, 3)}

    return model, inputs
