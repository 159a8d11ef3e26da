"""Quality metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphcache.quality import class_accuracy, frechet_distance, psnr, ssim


def test_psnr_of_a_uniform_error():
    ref = torch.zeros(3, 16, 16)
    assert psnr(ref + 0.1, ref).tolist() == pytest.approx([20.0] * 3, abs=1e-4)
    assert torch.isinf(psnr(ref, ref)).all()


def test_ssim_identity_and_constant_images():
    x = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0))
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    a, b = torch.full((1, 16, 16), 0.2), torch.full((1, 16, 16), 0.6)
    c1 = 0.01**2  # constant images: variance terms vanish, SSIM = luminance term
    assert float(ssim(a, b)[0]) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), rel=1e-6)


def test_ssim_drops_with_noise():
    x = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(1))
    small, large = ssim((x + 0.05 * noise).clamp(0, 1), x), ssim((x + 0.3 * noise).clamp(0, 1), x)
    assert (small < 1).all() and (large < small).all()


def test_frechet_distance_of_shifted_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 4))
    shift = np.array([1.0, -2.0, 0.0, 0.5])
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # same covariance, shifted mean: distance = |shift|^2 (sampling noise ~1e-2 at this size)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), abs=2e-2)


def test_class_accuracy():
    logits = torch.eye(10)[[1, 2, 3, 3]]
    assert class_accuracy(logits, torch.tensor([1, 2, 3, 4])) == 0.75
