"""upfirdn2d against a numpy loop written from the definition (zero insertion, pad / crop, true
convolution, decimation), in float64: the two agree to float64 rounding (atol 1e-12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalegan.ops.upfirdn2d import downsample2d, setup_filter, upfirdn2d, upsample2d


def upfirdn2d_loop(x: np.ndarray, f: np.ndarray, up: int, down: int, pad, gain: float):
    """The definition, one output pixel at a time: ``y[p, q] = gain * sum_{a, b}
    u[p*down + a - y0, q*down + b - x0] * f[fh-1-a, fw-1-b]`` where ``u`` is the zero-inserted
    input (``u[up*i, up*j] = x[i, j]``) and reads outside ``[0, H*up) x [0, W*up)`` are zero."""
    x0, x1, y0, y1 = pad
    n, c, h, w = x.shape
    fh, fw = f.shape
    out_h = (h * up + y0 + y1 - fh) // down + 1
    out_w = (w * up + x0 + x1 - fw) // down + 1
    y = np.zeros((n, c, out_h, out_w))
    for p in range(out_h):
        for q in range(out_w):
            for a in range(fh):
                for b in range(fw):
                    r, s = p * down + a - y0, q * down + b - x0
                    if 0 <= r < h * up and 0 <= s < w * up and r % up == 0 and s % up == 0:
                        y[:, :, p, q] += x[:, :, r // up, s // up] * f[fh - 1 - a, fw - 1 - b]
    return y * gain


# (N, C, H, W), taps, up, down, pad (x0, x1, y0, y1), gain
CASES = [
    ((1, 1, 4, 4), (1, 3, 3, 1), 1, 1, (0, 0, 0, 0), 1.0),
    ((2, 3, 5, 7), (1, 3, 3, 1), 2, 1, (2, 1, 2, 1), 4.0),
    ((1, 2, 7, 5), (1, 3, 3, 1), 1, 2, (1, 1, 1, 1), 1.0),
    ((2, 1, 5, 6), (1, 2, 5), 3, 2, (2, -1, -2, 3), 0.7),  # odd filter, negative pad, up 3
    ((1, 2, 6, 3), [[1, 2], [3, 5], [-1, 4]], 2, 3, (1, 0, 0, 2), 1.5),  # non-separable 3x2
]


@pytest.mark.parametrize("shape, taps, up, down, pad, gain", CASES)
def test_matches_loop_reference(shape, taps, up, down, pad, gain):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, dtype=torch.float64, generator=gen)
    f = setup_filter(taps, normalize=False, dtype=torch.float64)
    want = upfirdn2d_loop(x.numpy(), f.numpy(), up, down, pad, gain)
    got = upfirdn2d(x, f, up=up, down=down, pad=pad, gain=gain)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


def test_setup_filter_is_the_normalised_outer_product():
    f = setup_filter((1, 3, 3, 1), gain=2.0, dtype=torch.float64)
    taps = np.array([1.0, 3.0, 3.0, 1.0])
    np.testing.assert_allclose(f.numpy(), 2.0 * np.outer(taps, taps) / 64.0, rtol=1e-15)
    assert abs(setup_filter((1, 2, 5)).sum().item() - 1.0) < 1e-6
    assert abs(setup_filter([[1, 2], [3, 4]], normalize=False).sum().item() - 10.0) < 1e-6


def test_normalised_filter_preserves_the_sum_away_from_borders():
    # with enough zero padding every input pixel lands whole in the output: sum(y) = sum(x) for a
    # filter of sum 1, and up**2 * sum(x) for upsample2d's gain (the mean over H*up x W*up)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, generator=gen)
    f = setup_filter(dtype=torch.float64)
    y = upfirdn2d(x, f, pad=(3, 3, 3, 3))
    torch.testing.assert_close(y.sum(dim=(2, 3)), x.sum(dim=(2, 3)), rtol=1e-12, atol=1e-12)
    y = upfirdn2d(x, f, up=2, pad=(3, 3, 3, 3), gain=4.0)
    torch.testing.assert_close(y.sum(dim=(2, 3)), 4 * x.sum(dim=(2, 3)), rtol=1e-12, atol=1e-12)
    const = torch.full((1, 1, 8, 8), 2.5, dtype=torch.float64)
    # a constant image stays constant inside (the border sees the zero padding)
    inner = upsample2d(const, f)[..., 3:-3, 3:-3]
    torch.testing.assert_close(inner, torch.full_like(inner, 2.5), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("h, w", [(4, 4), (5, 7), (16, 8)])
@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 1)])
def test_resample_output_sizes(h, w, taps):
    x = torch.randn(2, 3, h, w)
    f = setup_filter(taps)
    assert upsample2d(x, f).shape == (2, 3, 2 * h, 2 * w)
    assert upsample2d(x, f, up=4).shape == (2, 3, 4 * h, 4 * w)
    assert downsample2d(x, f).shape == (2, 3, h // 2, w // 2)


def test_upsample2d_and_downsample2d_are_the_padded_upfirdn2d():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, generator=gen)
    f = setup_filter(dtype=torch.float64)
    want = upfirdn2d_loop(x.numpy(), f.numpy(), 2, 1, (2, 1, 2, 1), 4.0)
    np.testing.assert_allclose(upsample2d(x, f).numpy(), want, rtol=0, atol=1e-12)
    want = upfirdn2d_loop(x.numpy(), f.numpy(), 1, 2, (1, 1, 1, 1), 1.0)
    np.testing.assert_allclose(downsample2d(x, f).numpy(), want, rtol=0, atol=1e-12)


def test_second_order_gradients():
    # upfirdn2d is linear in x: gradgradcheck checks the double backward R1 takes through it
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    f = setup_filter(dtype=torch.float64)
    for fn in (lambda t: upfirdn2d(t, f, up=2, down=1, pad=(2, 1, -1, 2), gain=4.0) ** 2,
               lambda t: downsample2d(t, f) ** 2):
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))
