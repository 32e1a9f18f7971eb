"""Full-reference image quality: PSNR and SSIM of outputs against their ground truth.

Both take images in [-1, 1] (the training scale) and measure them in [0, 1]. SSIM is Wang et al.
2004's: an 11x11 Gaussian window of standard deviation 1.5, K1 = 0.01, K2 = 0.03, the population
(co)variances, averaged over the positions where the window fits inside the image and over the
channels (what scikit-image's ``structural_similarity(..., gaussian_weights=True,
use_sample_covariance=False, data_range=1)`` computes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.double() + 1) / 2).clamp(0, 1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image PSNR in dB of ``x`` against ``y`` (N, C, H, W) in [-1, 1], peak 1 in [0, 1]
    (inf for identical images)."""
    mse = (_unit(x) - _unit(y)).square().mean(dim=(1, 2, 3))
    return 10 * torch.log10(1 / mse)


def _window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-t.square() / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per image mean SSIM of ``x`` against ``y`` (N, C, H, W) in [-1, 1]; images need
    H, W >= ``size``."""
    if min(x.shape[-2:]) < size:
        raise ValueError(f"ssim: images of {tuple(x.shape[-2:])} are smaller than the "
                         f"{size}x{size} window")
    a, b = _unit(x), _unit(y)
    c = a.shape[1]
    w = _window(size, sigma).to(a.device).expand(c, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a.square()
    var_b = blur(b * b) - mu_b.square()
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = k1 ** 2, k2 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a.square() + mu_b.square() + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3))
