"""Small denoisers for the tests: diffusers classes with random configs and a hand-written DiT."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def tiny_dit(num_layers: int = 3, batch: int = 2, seed: int = 0) -> tuple[nn.Module, Any]:
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    model = DiTTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=num_layers, num_attention_heads=2,
        attention_head_dim=16, num_embeds_ada_norm=10, norm_num_groups=1,
    ).eval()
    x = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed + 1))
    labels = torch.arange(batch) % 10

    def inputs(t: float) -> dict[str, Any]:
        return {"hidden_states": x, "timestep": torch.full((batch,), int(t), dtype=torch.long), "class_labels": labels}

    return model, inputs


def tiny_flux(dual: int = 2, single: int = 3) -> tuple[nn.Module, Any]:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=dual, num_single_layers=single, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6],
    ).eval()
    g = torch.Generator().manual_seed(1)
    x, text, pooled = torch.randn(1, 16, 16, generator=g), torch.randn(1, 8, 32, generator=g), torch.randn(1, 32,
                                                                                                          generator=g)

    def inputs(t: float) -> dict[str, Any]:
        return {"hidden_states": x, "encoder_hidden_states": text, "pooled_projections": pooled,
                "timestep": torch.tensor([t / 1000.0]), "img_ids": torch.zeros(16, 3), "txt_ids": torch.zeros(8, 3)}

    return model, inputs


def tiny_sd3(num_layers: int = 3) -> tuple[nn.Module, Any]:
    """SD3's MMDiT: its last joint block is built differently (context_pre_only), so the stack is n-1."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    model = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=num_layers, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=16,
        out_channels=4, pos_embed_max_size=16,
    ).eval()
    g = torch.Generator().manual_seed(1)
    x, text, pooled = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 6, 32, generator=g), torch.randn(1, 16,
                                                                                                          generator=g)

    def inputs(t: float) -> dict[str, Any]:
        return {"hidden_states": x, "encoder_hidden_states": text, "pooled_projections": pooled,
                "timestep": torch.tensor([t])}

    return model, inputs


def tiny_pixart(num_layers: int = 3) -> tuple[nn.Module, Any]:
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    model = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, num_layers=num_layers,
        norm_num_groups=1, cross_attention_dim=32, sample_size=8, caption_channels=24,
    ).eval()
    g = torch.Generator().manual_seed(1)
    x, text = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 24, generator=g)

    def inputs(t: float) -> dict[str, Any]:
        return {"hidden_states": x, "encoder_hidden_states": text, "timestep": torch.tensor([int(t)]),
                "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}

    return model, inputs


class _Layer(nn.Module):
    """adaLN-zero transformer layer written from scratch (no diffusers, unusual names)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.mod = nn.Linear(width, 6 * width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, b1, g1, s2, b2, g2 = self.mod(F.silu(c)).unsqueeze(1).chunk(6, dim=-1)
        h = F.layer_norm(x, x.shape[-1:]) * (1 + s1) + b1
        q, k, v = self.qkv(h).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        x = x + g1 * self.proj(a)
        h = F.layer_norm(x, x.shape[-1:]) * (1 + s2) + b2
        return x + g2 * self.down(F.gelu(self.up(h)))


class _RopeLayer(_Layer):
    """Rotary embeddings written in place, as Wan, CogView4 and EasyAnimate write them
    (``out[..., 0::2] = ...`` into an ``empty_like``, ``k[..., n:] = ...``)."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, b1, g1, s2, b2, g2 = self.mod(F.silu(c)).unsqueeze(1).chunk(6, dim=-1)
        h = F.layer_norm(x, x.shape[-1:]) * (1 + s1) + b1
        q, k, v = self.qkv(h).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        angles = torch.arange(x.shape[1], dtype=torch.float32)[:, None] * torch.arange(q.shape[-1] // 2) * 0.1
        cos, sin = angles.cos(), angles.sin()
        rotated = torch.empty_like(q)
        rotated[..., 0::2] = q[..., 0::2] * cos - q[..., 1::2] * sin
        rotated[..., 1::2] = q[..., 0::2] * sin + q[..., 1::2] * cos
        k = k.clone()
        half = k.shape[-1] // 2
        k[..., half:] = k[..., half:] * cos[:, : k.shape[-1] - half]
        a = F.scaled_dot_product_attention(rotated, k, v).transpose(1, 2).flatten(2)
        x = x + g1 * self.proj(a)
        h = F.layer_norm(x, x.shape[-1:]) * (1 + s2) + b2
        return x + g2 * self.down(F.gelu(self.up(h)))


class _TorchMHALayer(nn.Module):
    """adaLN layer around ``torch.nn.MultiheadAttention`` (its output's strides differ at batch 1)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.mod = nn.Linear(width, 6 * width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, b1, g1, s2, b2, g2 = self.mod(F.silu(c)).unsqueeze(1).chunk(6, dim=-1)
        h = F.layer_norm(x, x.shape[-1:]) * (1 + s1) + b1
        x = x + g1 * self.attn(h, h, h, need_weights=False)[0]
        h = F.layer_norm(x, x.shape[-1:]) * (1 + s2) + b2
        return x + g2 * self.down(F.gelu(self.up(h)))


LAYERS = {"plain": _Layer, "rope": _RopeLayer, "mha": _TorchMHALayer}


class HandWrittenDiT(nn.Module):
    def __init__(self, width: int = 32, depth: int = 4, heads: int = 2, channels: int = 4,
                 trunk_name: str = "trunk", layer: str = "plain") -> None:
        super().__init__()
        self.width = width
        self.trunk_name = trunk_name
        self.embed_in = nn.Linear(channels, width)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        kinds = [("plain", "rope")[k % 2] for k in range(depth)] if layer == "alternating" else [layer] * depth
        self.add_module(trunk_name, nn.ModuleList([LAYERS[kind](width, heads) for kind in kinds]))
        self.head = nn.Linear(width, channels)

    def forward(self, latent: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        half = self.width // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        angles = noise_level.float()[:, None] * freqs[None]
        c = self.time_mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))
        x = self.embed_in(latent)
        for layer in getattr(self, self.trunk_name):
            x = self.between_blocks(layer(x, c))
        return self.head(F.layer_norm(x, x.shape[-1:]))

    def between_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Glue after each block (identity; a subclass puts data-dependent Python there)."""
        return x


def hand_written_dit(batch: int = 2, trunk_name: str = "trunk", layer: str = "plain") -> tuple[nn.Module, Any]:
    """``layer``: ``plain``, ``rope`` (rotary embeddings written in place), ``mha`` (nn.MultiheadAttention) or
    ``alternating`` (plain and rope layers in turn: the repeated unit is a pair of calls, as in Latte)."""
    torch.manual_seed(0)
    model = HandWrittenDiT(trunk_name=trunk_name, layer=layer).eval()
    x = torch.randn(batch, 10, 4, generator=torch.Generator().manual_seed(1))

    def inputs(t: float) -> dict[str, Any]:
        return {"latent": x, "noise_level": torch.full((batch,), t)}

    return model, inputs


class ConvNet(nn.Module):
    """No stack of repeated blocks: each layer has a different shape."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 4, 3, padding=1)
        self.t = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        emb = self.t(torch.cat([timestep.float()[:, None].sin().expand(-1, 8), timestep.float()[:, None].cos()
                                .expand(-1, 8)], -1))
        return self.c(F.relu(self.b(F.relu(self.a(x))) + emb[:, :, None, None]))


def conv_net() -> tuple[nn.Module, Any]:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    return ConvNet().eval(), lambda t: {"x": x, "timestep": torch.full((2,), t)}


def tiny_unet(batch: int = 2, seed: int = 0) -> tuple[nn.Module, Any]:
    """diffusers' ``UNet2DConditionModel`` (Stable Diffusion's class), random config: 2 levels, cross-attention."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    model = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    x, text = torch.randn(batch, 4, 8, 8, generator=gen), torch.randn(batch, 5, 32, generator=gen)

    def inputs(t: float) -> dict[str, Any]:
        return {"sample": x, "timestep": torch.full((batch,), int(t)), "encoder_hidden_states": text}

    return model, inputs


class HandWrittenUNet(nn.Module):
    """A U-Net in plain torch with its own names: two skips (concat along channels), timestep FiLM."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.enc = nn.Conv2d(8, 8, 3, padding=1)
        self.shrink = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.core = nn.Conv2d(16, 16, 3, padding=1)
        self.grow = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec = nn.Conv2d(16, 8, 3, padding=1)
        self.rim = nn.Conv2d(16, 3, 3, padding=1)
        self.film = nn.Linear(8, 16)

    def forward(self, image: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        freqs = level.float()[:, None] * torch.arange(1, 5, dtype=torch.float32)
        scale = self.film(torch.cat([freqs.sin(), freqs.cos()], -1))[:, :, None, None]
        s0 = self.stem(image)
        s1 = F.silu(self.enc(s0))
        deep = F.silu(self.core(F.silu(self.shrink(s1))) * (1 + scale))
        up = F.silu(self.dec(torch.cat([self.grow(deep), s1], 1)))
        return self.rim(torch.cat([up, s0], 1))


def hand_written_unet(batch: int = 2) -> tuple[nn.Module, Any]:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return HandWrittenUNet().eval(), lambda t: {"image": x, "level": torch.full((batch,), t)}


class _Attention(nn.Module):
    def __init__(self, width: int, context: int, heads: int = 2, manual: bool = False) -> None:
        super().__init__()
        self.heads, self.manual = heads, manual
        self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(context, width), nn.Linear(context, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        q, k, v = (p(s).unflatten(-1, (self.heads, -1)).transpose(1, 2) for p, s in ((self.q, x), (self.k, ctx),
                                                                                       (self.v, ctx)))
        if self.manual:  # softmax(q k^T / sqrt(d)) v written out
            a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v)
        return self.out(a.transpose(1, 2).flatten(2))


class _VideoLayer(nn.Module):
    """Latte-style layer on a [B, frames * patches, C] stream: attention within each frame (spatial), across
    frames at each patch (temporal), to text tokens (cross), then an MLP; adaLN gates."""

    def __init__(self, width: int, frames: int, text: int, manual: bool = False) -> None:
        super().__init__()
        self.frames = frames
        self.mod = nn.Linear(width, 4 * width)
        self.spatial, self.temporal, self.cross = (_Attention(width, c, manual=manual) for c in (width, width, text))
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor, c: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        f, p = self.frames, n // self.frames
        s1, g1, s2, g2 = self.mod(F.silu(c)).unsqueeze(1).chunk(4, dim=-1)
        h = (F.layer_norm(x, (w,)) * (1 + s1)).reshape(b * f, p, w)
        x = x + g1 * self.spatial(h, h).reshape(b, n, w)
        h = F.layer_norm(x, (w,)).reshape(b, f, p, w).transpose(1, 2).reshape(b * p, f, w)
        x = x + self.temporal(h, h).reshape(b, p, f, w).transpose(1, 2).reshape(b, n, w)
        x = x + self.cross(F.layer_norm(x, (w,)), text)
        return x + g2 * self.mlp(F.layer_norm(x, (w,)) * (1 + s2))


class HandWrittenVideoDiT(nn.Module):
    def __init__(self, width: int = 32, depth: int = 3, frames: int = 3, text: int = 24, manual: bool = False) -> None:
        super().__init__()
        self.width = width
        self.embed = nn.Linear(4, width)
        self.time = nn.Linear(width, width)
        self.layers = nn.ModuleList([_VideoLayer(width, frames, text, manual) for _ in range(depth)])
        self.head = nn.Linear(width, 4)

    def forward(self, video: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * torch.arange(1, self.width // 2 + 1, dtype=torch.float32)
        c = self.time(torch.cat([angles.sin(), angles.cos()], -1))
        x = self.embed(video)
        for layer in self.layers:
            x = layer(x, c, prompt)
        return self.head(F.layer_norm(x, x.shape[-1:]))


def hand_written_video_dit(batch: int = 2, manual: bool = False) -> tuple[nn.Module, Any]:
    """Spatial, temporal and cross-attention in every layer: 3 frames of 4 patches, 5 text tokens
    (``manual``: attention written as softmax(q k^T) v instead of the fused op)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, text = torch.randn(batch, 12, 4, generator=g), torch.randn(batch, 5, 24, generator=g)
    model = HandWrittenVideoDiT(manual=manual).eval()
    return model, lambda t: {"video": x, "t": torch.full((batch,), t), "prompt": text}
