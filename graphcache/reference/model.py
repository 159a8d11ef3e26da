"""The reference denoiser: a small class-conditional diffusers ``DiTTransformer2DModel`` for 16x16 digits."""

from __future__ import annotations

from typing import Any

from .data import IMAGE_SIZE, NUM_CLASSES

NULL_CLASS = NUM_CLASSES  # label index of the unconditional (classifier-free guidance) embedding

DIT_CONFIG: dict[str, Any] = {
    "sample_size": IMAGE_SIZE,
    "patch_size": 2,
    "in_channels": 1,
    "out_channels": 1,
    "num_layers": 6,
    "num_attention_heads": 4,
    "attention_head_dim": 48,
    "num_embeds_ada_norm": NUM_CLASSES,
    "norm_num_groups": 1,
}

SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "clip_sample": False,
}


def build_denoiser() -> Any:
    """A freshly initialised reference DiT whose label tables do not drop labels on their own.

    diffusers' ``LabelEmbedding`` drops labels per block in training mode; classifier-free guidance
    training drops them once per sample instead (in the training loop), so every block sees the same label.
    """
    from diffusers import DiTTransformer2DModel
    from diffusers.models.embeddings import LabelEmbedding

    model = DiTTransformer2DModel(**DIT_CONFIG)
    for module in model.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0
    return model
