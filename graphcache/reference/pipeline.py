"""A pixel-space diffusers pipeline around the reference digits denoiser."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from ..errors import GraphcacheError
from .model import NULL_CLASS, SCHEDULER_CONFIG, build_denoiser

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "dit_digits.safetensors"
DEFAULT_CALIBRATION = Path(__file__).parent / "weights" / "calibration.json"  # TeaCache / MagCache fits


class DigitsPipeline(DiffusionPipeline):
    """Class-conditional digit generation: ``pipe(class_labels=[3, 7], num_inference_steps=50)``.

    Pixel space (no VAE), epsilon prediction, DDIM sampling, classifier-free guidance when
    ``guidance_scale != 1`` (the conditional and unconditional halves run as one batch).
    """

    model_cpu_offload_seq = "transformer"

    def __init__(self, transformer: torch.nn.Module, scheduler: DDIMScheduler) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: list[int] | torch.Tensor,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.5,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        progress: bool = False,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        return_dict: bool = False,
    ) -> Any:
        """Digits of ``class_labels``, ``(N, 32, 32)`` in [0, 1]: a NumPy array (``output_type="np"``) or a
        tensor (``"pt"``). Unlike diffusers' pipelines the default returns the images themselves (graphcache's
        bench and tests read them so); ``return_dict=True`` gives diffusers' ``ImagePipelineOutput``."""
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        if labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) >= NULL_CLASS:
            raise GraphcacheError(f"class_labels must be digits 0..{NULL_CLASS - 1}, got {labels.tolist()}")
        cfg = guidance_scale != 1.0
        config = self.transformer.config
        shape = (labels.numel(), config.in_channels, config.sample_size, config.sample_size)
        sample = randn_tensor(shape, generator=generator, dtype=torch.float32)
        model_labels = torch.cat([labels, torch.full_like(labels, NULL_CLASS)]) if cfg else labels
        self.scheduler.set_timesteps(num_inference_steps)
        steps = self.progress_bar(self.scheduler.timesteps) if progress else self.scheduler.timesteps
        for t in steps:
            model_in = torch.cat([sample, sample]) if cfg else sample
            timestep = torch.full((model_in.shape[0],), int(t), dtype=torch.long)
            eps = self.transformer(model_in, timestep=timestep, class_labels=model_labels).sample
            if cfg:
                eps_c, eps_u = eps.chunk(2)
                eps = eps_u + guidance_scale * (eps_c - eps_u)
            sample = self.scheduler.step(eps, t, sample).prev_sample
            if callback is not None:
                callback(len(self.scheduler.timesteps), int(t), sample)
        images = ((sample.clamp(-1, 1) + 1) / 2)[:, 0]
        result = images if output_type == "pt" else images.cpu().numpy().astype(np.float32)
        if return_dict:
            from diffusers import ImagePipelineOutput

            return ImagePipelineOutput(images=result)
        return result


def save_denoiser(model: torch.nn.Module, path: Path) -> None:
    """Save the denoiser's weights as fp16 safetensors (half the size, same samples)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "graphcache-reference-dit", "version": "1"})


def load_denoiser(path: Path = DEFAULT_WEIGHTS) -> torch.nn.Module:
    """The reference DiT with the shipped (or given) weights, in fp32 eval mode."""
    if not Path(path).exists():
        raise GraphcacheError(
            f"reference weights not found at {path}; run `python examples/train_reference.py -o {path}`"
        )
    model = build_denoiser()
    state = {k: v.to(torch.float32) for k, v in read_safetensors(path).items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise GraphcacheError(
            f"{path} does not hold reference DiT weights ({str(err).splitlines()[0]}); use the shipped file or "
            "retrain with `python examples/train_reference.py`"
        ) from err
    return model.eval().requires_grad_(False)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or a GraphcacheError naming the file when it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise GraphcacheError(f"{path} is not a readable safetensors file ({err}); restore or regenerate it") from err


def load_pipeline(weights: Path = DEFAULT_WEIGHTS) -> DigitsPipeline:
    """The reference pipeline: trained digits DiT + DDIM (clip_sample off, as guidance needs)."""
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    pipe = DigitsPipeline(transformer=load_denoiser(weights), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=False, desc="denoise")
    return pipe
