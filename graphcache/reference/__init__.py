"""The shipped reference model: a digits DiT trained here, its pipeline, and its judge."""

from .pipeline import DigitsPipeline, load_denoiser, load_pipeline

__all__ = ["DigitsPipeline", "load_denoiser", "load_pipeline"]
