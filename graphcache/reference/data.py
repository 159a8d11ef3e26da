"""Digits data shared by the reference denoiser and the judge: scikit-learn's ``load_digits``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 16
NUM_CLASSES = 10


def load_digits_tensors(size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)``: images (N, 1, size, size) in [-1, 1], bilinear-upsampled from 8x8."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return images.clamp(0, 1) * 2 - 1, labels


def split_indices(n: int, holdout: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed train / held-out split of ``n`` items."""
    order = np.random.default_rng(seed).permutation(n)
    cut = round(n * (1 - holdout))
    return order[:cut], order[cut:]
