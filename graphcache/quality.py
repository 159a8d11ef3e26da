"""Quality metrics of a generation run: judge accuracy, Frechet distance, PSNR and SSIM vs uncached."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples the judge assigns to the requested class."""
    return float((logits.argmax(1) == labels).float().mean())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a`` and ``b`` (rows = samples)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few samples give singular covariances: handled just below
        covmean = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():  # regularise as the FID reference code does
            eps = np.eye(a.shape[1]) * 1e-6
            covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-sample PSNR in dB of images ``x`` vs ``ref`` (N, H, W); identical images give +inf."""
    mse = ((x - ref) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0, window: int = 7, sigma: float = 1.5
         ) -> torch.Tensor:
    """Per-sample SSIM (Wang et al. 2004) with a Gaussian window, for small (N, H, W) images."""
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]
    a, b = x[:, None].double(), ref[:, None].double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1).float()
