"""A Stable-Diffusion-shaped U-Net for the CLI: diffusers UNet2DConditionModel, random weights, text
cross-attention, a CFG pair per call.

    graphcache optimize examples/unet.py                     # the default policy 'auto' takes DeepCache here
    graphcache optimize examples/unet.py --policy deepcache
    graphcache bench --model examples/unet.py --policy deepcache --policy 'deepcache{skip=3}'
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel


def build(batch: int = 2, size: int = 32):
    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=size, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16,
    ).eval()
    gen = torch.Generator().manual_seed(1)
    latent = torch.randn(batch, 4, size, size, generator=gen)
    text = torch.randn(batch, 8, 64, generator=gen)

    def inputs(t: float) -> dict:
        return {"sample": latent, "timestep": torch.full((batch,), int(t)), "encoder_hidden_states": text}

    return model, inputs
