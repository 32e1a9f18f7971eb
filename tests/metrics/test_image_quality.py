"""PSNR and SSIM against scikit-image's implementations (an independent reference)."""

from __future__ import annotations

import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from scalegan.metrics.image_quality import psnr, ssim


def _pair(channels: int, size: int = 24):
    gen = torch.Generator().manual_seed(channels)
    y = torch.rand(3, channels, size, size, generator=gen, dtype=torch.float64) * 2 - 1
    x = (y + 0.2 * torch.randn(y.shape, generator=gen, dtype=torch.float64)).clamp(-1, 1)
    return x, y


@pytest.mark.parametrize("channels", [1, 3])
def test_psnr_and_ssim_match_scikit_image(channels):
    x, y = _pair(channels)
    got_p, got_s = psnr(x, y), ssim(x, y)
    for i in range(len(x)):
        a = ((x[i] + 1) / 2).permute(1, 2, 0).numpy()
        b = ((y[i] + 1) / 2).permute(1, 2, 0).numpy()
        want_p = peak_signal_noise_ratio(b, a, data_range=1.0)
        want_s = structural_similarity(b, a, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, channel_axis=2)
        assert abs(got_p[i].item() - want_p) < 1e-9
        assert abs(got_s[i].item() - want_s) < 1e-9, (got_s[i].item(), want_s)


def test_identical_images_score_perfectly_and_small_images_are_refused():
    _, y = _pair(1)
    assert torch.isinf(psnr(y, y)).all()
    assert torch.allclose(ssim(y, y), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        ssim(y[..., :8, :8], y[..., :8, :8])
    assert torch.isfinite(psnr(y, -y)).all()
