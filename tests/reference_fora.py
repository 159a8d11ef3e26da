"""An independent FORA for diffusers' DiT, written as a plain forward (no graphs), to check the passes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dit_forward(model, x, t, y, cache: dict, compute: bool, granularity: str) -> torch.Tensor:
    """diffusers DiTTransformer2DModel.forward, with FORA reuse on cached steps."""
    h = model.pos_embed(x)
    h_in = h
    if granularity == "stack" and not compute:
        h = h_in + cache["residual"]
    else:
        for i, block in enumerate(model.transformer_blocks):
            h = _block(block, h, t, y, cache, i, compute, granularity)
        if compute:
            cache["residual"] = h - h_in
    cond = model.transformer_blocks[0].norm1.emb(t, y, hidden_dtype=h.dtype)
    shift, scale = model.proj_out_1(F.silu(cond)).chunk(2, dim=1)
    h = model.norm_out(h) * (1 + scale[:, None]) + shift[:, None]
    h = model.proj_out_2(h)
    p, c = model.patch_size, model.out_channels
    side = int(h.shape[1] ** 0.5)
    h = h.reshape(-1, side, side, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", h).reshape(-1, c, side * p, side * p)


def _block(block, h, t, y, cache, i, compute, granularity):
    norm_h, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(h, t, y, hidden_dtype=h.dtype)
    if compute or granularity == "stack":
        attn = block.attn1(norm_h)
        cache[(i, "attn")] = attn
    else:
        attn = cache[(i, "attn")]
    h = gate_msa.unsqueeze(1) * attn + h
    norm_h = block.norm3(h) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    if compute or granularity == "stack":
        ff = block.ff(norm_h)
        cache[(i, "ff")] = ff
    else:
        ff = cache[(i, "ff")]
    return gate_mlp.unsqueeze(1) * ff + h
