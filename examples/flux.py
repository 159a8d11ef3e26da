"""A Flux-shaped (MMDiT) denoiser for the CLI: diffusers FluxTransformer2DModel with a small random config.

Two stacks: dual-stream blocks (image + text) then single-stream blocks; graphcache finds both.

    graphcache optimize examples/flux.py --policy fora --set granularity=block
"""

from __future__ import annotations

from graphcache.random_models import flux_shaped


def build(dual: int = 2, single: int = 4, tokens: int = 64, text_tokens: int = 16):
    return flux_shaped(dual, single, tokens, text_tokens)
