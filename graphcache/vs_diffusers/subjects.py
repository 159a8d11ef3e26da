"""The side by side's denoisers (:class:`Subject`): a model and how one DDIM step calls it, built with random
weights (DiT, Flux-shaped, PixArt) or from a model file's ``(model, inputs)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

MODELS = ("dit", "flux", "pixart")

Status = Callable[[str], None]  # where progress goes


def quiet(_: str) -> None:
    pass


@dataclasses.dataclass
class Clock:
    """Where the denoising loop is (a pipeline's ``current_timestep`` / step index), for the diffusers hooks
    whose configs read it through callbacks (PAB, FasterCache)."""

    step: int = 0
    t: float = 0.0


@dataclasses.dataclass
class Subject:
    """A denoiser and how one DDIM step calls it. ``kind`` ("dit" / "flux") picks the module names the
    diffusers configs and the computed-step probe use; ``timestep_scale`` brings the model's timestep input
    onto the 1000 scale (Flux takes t / 1000)."""

    name: str
    kind: str
    model: torch.nn.Module
    kwargs: Callable[[torch.Tensor, torch.Tensor], dict[str, Any]]  # (latent, scheduler t) -> the call's kwargs
    latent: torch.Tensor
    timestep_scale: float = 1.0

    def call(self, fn: Callable[..., Any], latent: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return fn(**self.kwargs(latent, t)).sample  # type: ignore[no-any-return]

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Subject:
        """The same subject on ``device``: the model and every input tensor moved there, the model, the latent
        and the floating inputs in ``dtype`` (None: as they are) except the timestep and the position ids,
        which the models read in float32 themselves."""
        model = self.model.to(device=device, dtype=dtype)
        kwargs = self.kwargs

        def moved(key: str, value: Any) -> Any:
            if isinstance(value, dict):
                return {k: moved(k, v) for k, v in value.items()}
            if not isinstance(value, torch.Tensor):
                return value
            keep = key == "timestep" or key.endswith("ids") or not value.is_floating_point()
            return value.to(device=device, dtype=None if keep else dtype)

        def on_device(latent: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
            return {k: moved(k, v) for k, v in kwargs(latent, t).items()}

        return dataclasses.replace(self, model=model, kwargs=on_device,
                                   latent=self.latent.to(device=device, dtype=dtype))

    def probe(self, model: torch.nn.Module) -> torch.nn.Module:
        """A module only a computed step runs under every method (the last block's attention query)."""
        if self.kind == "flux":
            return model.single_transformer_blocks[-1].attn.to_q  # type: ignore[index,union-attr]
        return model.transformer_blocks[-1].attn1.to_q  # type: ignore[index,union-attr]


def subject_from_inputs(name: str, kind: str, model: torch.nn.Module, inputs: Callable[[float], dict[str, Any]],
                        timestep_scale: float = 1.0) -> Subject:
    """A :class:`Subject` from a model file's ``(model, inputs)`` (``inputs(t)``: the denoiser's keyword
    arguments at timestep ``t``, batch 1): ``hidden_states`` is the latent the loop updates."""
    model = model.eval().requires_grad_(False)
    latent = inputs(999.0)["hidden_states"].clone()

    def kwargs(latent: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
        return {**inputs(float(t)), "hidden_states": latent}

    return Subject(name, kind, model, kwargs, latent, timestep_scale)


def dit(hidden: int = 512, layers: int = 12) -> Subject:
    """A class-conditional ``DiTTransformer2DModel`` with random weights (32x32x4 latent, class 3)."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    model = DiTTransformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=layers, num_attention_heads=8,
        attention_head_dim=hidden // 8, num_embeds_ada_norm=10, norm_num_groups=1,
    )
    labels = torch.tensor([3])
    latent = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))

    def inputs(t: float) -> dict[str, Any]:
        return {"hidden_states": latent, "timestep": torch.tensor([int(t)]), "class_labels": labels}

    return subject_from_inputs(f"DiT {hidden}x{layers}", "dit", model, inputs)


def flux(dual: int = 4, single: int = 8, tokens: int = 256, text_tokens: int = 16, heads: int = 4,
         head_dim: int = 32) -> Subject:
    """A Flux-shaped ``FluxTransformer2DModel`` with random weights (:func:`graphcache.random_models.flux_shaped`,
    examples/flux.py's config and seeds; width ``heads * head_dim``)."""
    from graphcache.random_models import flux_shaped

    model, inputs = flux_shaped(dual, single, tokens, text_tokens, heads, head_dim)
    width = "" if (heads, head_dim) == (4, 32) else f" width {heads * head_dim}, {tokens} tokens"
    return subject_from_inputs(f"Flux {dual}+{single}{width}", "flux", model, inputs, timestep_scale=1000.0)


def pixart(hidden: int = 512, layers: int = 12, text_tokens: int = 16) -> Subject:
    """A ``PixArtTransformer2DModel`` with random weights (AdaLN-single, self- and cross-attention per block;
    32x32x4 latent, a fixed random caption embedding)."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    model = PixArtTransformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=layers, num_attention_heads=8,
        attention_head_dim=hidden // 8, cross_attention_dim=hidden, caption_channels=64,
        norm_type="ada_norm_single", use_additional_conditions=False,
    )
    g = torch.Generator().manual_seed(1)
    latent, caption = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, text_tokens, 64, generator=g)

    def inputs(t: float) -> dict[str, Any]:
        return {"hidden_states": latent, "encoder_hidden_states": caption, "timestep": torch.tensor([int(t)]),
                "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}

    return subject_from_inputs(f"PixArt {hidden}x{layers}", "pixart", model, inputs)


def subject(key: str) -> Subject:
    """The benchmark's models: ``dit`` (DiT 512x12), ``flux`` (Flux 4+8) or ``pixart`` (PixArt 512x12)."""
    if key not in MODELS:
        raise ValueError(f"unknown model {key!r}; choose from {', '.join(MODELS)}")
    builders: dict[str, Callable[[], Subject]] = {"dit": dit, "flux": flux, "pixart": pixart}
    return builders[key]()

