"""Upsample, FIR-filter, downsample: the resampling of StyleGAN2 (Karras et al. 2020).

``upfirdn2d(x, f, up, down, pad, gain)`` on ``x`` ``(N, C, H, W)`` with a 2-D filter ``f``
``(fh, fw)``, every channel alike:

1. upsample by zero insertion: ``u[.., up*i, up*j] = x[.., i, j]``, zeros elsewhere, so ``u`` is
   ``(H * up, W * up)`` (``up - 1`` zeros follow every pixel, the last one too);
2. pad ``u`` with zeros by ``pad = (x0, x1, y0, y1)`` (left, right, top, bottom); a negative
   entry crops that many pixels instead;
3. convolve with ``f * gain`` as a true convolution (the filter flipped), keeping the "valid"
   positions: ``v[p, q] = sum_{a, b} u_pad[p + a, q + b] * f[fh - 1 - a, fw - 1 - b] * gain``;
4. keep every ``down``-th pixel: ``y = v[.., ::down, ::down]``.

The output is ``((H * up + y0 + y1 - fh) // down + 1, (W * up + x0 + x1 - fw) // down + 1)``.
Upsampling by zero insertion scales the mean by ``1 / up**2``, so a ``gain`` of ``up**2``
restores it (:func:`upsample2d` does so). Everything is plain torch ops (pad, grouped conv2d,
slicing), so autograd differentiates it to any order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def setup_filter(f: Sequence[float] | torch.Tensor = (1, 3, 3, 1), normalize: bool = True,
                 gain: float = 1.0, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 2-D FIR filter ``(fh, fw)`` from 1-D taps ``f`` (their outer product, a separable
    filter) or a 2-D ``f`` as given; with ``normalize`` divided by its sum (so it sums to 1),
    then multiplied by ``gain``."""
    f = torch.as_tensor(f, dtype=dtype, device=device)
    if f.ndim == 1:
        f = torch.outer(f, f)
    if f.ndim != 2 or f.numel() == 0:
        raise ValueError(f"setup_filter: taps must be 1-D or 2-D and non-empty, got "
                         f"{tuple(f.shape)}")
    if normalize:
        f = f / f.sum()
    return f * gain


def _check_pad(pad: Sequence[int]) -> tuple[int, int, int, int]:
    if len(pad) != 4:
        raise ValueError(f"upfirdn2d: pad must be (x0, x1, y0, y1), got {pad!r}")
    return tuple(int(p) for p in pad)


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1,
              pad: Sequence[int] = (0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with the FIR ``f * gain``, downsample (see the
    module docstring). ``x`` ``(N, C, H, W)``, ``f`` ``(fh, fw)`` -> ``(N, C, H', W')``."""
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d: x must be (N, C, H, W), got {tuple(x.shape)}")
    if f.ndim != 2:
        raise ValueError(f"upfirdn2d: f must be a 2-D filter (fh, fw), got {tuple(f.shape)}")
    if up < 1 or down < 1:
        raise ValueError(f"upfirdn2d: up and down must be >= 1, got up={up}, down={down}")
    x0, x1, y0, y1 = _check_pad(pad)
    n, c, h, w = x.shape
    if up > 1:  # (N, C, H, 1, W, 1) padded to (N, C, H, up, W, up): zeros after every pixel
        x = F.pad(x.reshape(n, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, (max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)))
    x = x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]
    fh, fw = f.shape
    if x.shape[2] < fh or x.shape[3] < fw:
        raise ValueError(f"upfirdn2d: the padded input {tuple(x.shape[2:])} is smaller than the "
                         f"filter {(fh, fw)}")
    # conv2d correlates, so the flipped filter makes it a true convolution
    weight = (f.to(x.dtype) * gain).flip(0, 1)[None, None].expand(c, 1, fh, fw)
    x = F.conv2d(x, weight, groups=c)
    return x[:, :, ::down, ::down] if down > 1 else x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2, gain: float = 1.0) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, C, H * up, W * up)``: zero insertion, then the FIR ``f`` with
    gain ``gain * up**2`` (which keeps the mean), padded so that the filter is centred:
    ``p = fw - up`` split as ``(p + 1) // 2 + up - 1`` before and ``p // 2`` after."""
    fh, fw = f.shape
    px, py = fw - up, fh - up
    pad = ((px + 1) // 2 + up - 1, px // 2, (py + 1) // 2 + up - 1, py // 2)
    return upfirdn2d(x, f, up=up, pad=pad, gain=gain * up ** 2)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2,
                 gain: float = 1.0) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, C, H // down, W // down)`` (for ``H``, ``W`` multiples of
    ``down``): the FIR ``f * gain``, then every ``down``-th pixel, padded with
    ``p = fw - down`` split as ``(p + 1) // 2`` before and ``p // 2`` after."""
    fh, fw = f.shape
    px, py = fw - down, fh - down
    pad = ((px + 1) // 2, px // 2, (py + 1) // 2, py // 2)
    return upfirdn2d(x, f, down=down, pad=pad, gain=gain)
