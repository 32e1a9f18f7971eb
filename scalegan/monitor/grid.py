"""Sample grids: a batch of images in [-1, 1] -> one PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float in [-1, 1] -> (N, H, W, C) uint8; one channel is repeated to RGB."""
    if images.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(images.shape)}")
    x = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).numpy()


def image_grid(images: torch.Tensor, ncols: int | None = None, min_side: int = 0) -> Image.Image:
    """Tile (N, C, H, W) images in [-1, 1] into a grid of ``ncols`` columns (default: square).

    Tiles smaller than ``min_side`` are enlarged with nearest-neighbour so tiny images stay
    visible without being blurred.
    """
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.zeros((nrows * h, ncols * w, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = arr[i]
    img = Image.fromarray(grid)
    if min_side and h < min_side:
        scale = math.ceil(min_side / h)
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


IMAGE_FORMATS = {".png": ("PNG", {}), ".jpg": ("JPEG", {"quality": 95}),
                 ".jpeg": ("JPEG", {"quality": 95}), ".webp": ("WEBP", {"lossless": True})}
"""File name suffix -> the format an image is written in, and its options."""


def image_format(path: str | Path) -> tuple[str, dict]:
    """The format ``path``'s suffix asks for; ValueError naming the path otherwise."""
    try:
        return IMAGE_FORMATS[Path(path).suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: cannot tell the image format from the name; end it with "
                         f"{', '.join(IMAGE_FORMATS)}") from None


def save_grid(images: torch.Tensor, path: str | Path, ncols: int | None = None,
              min_side: int = 64) -> Path:
    """Write ``image_grid`` to ``path`` atomically, in the format of its suffix (.png, .jpg,
    .webp); returns the path."""
    path = Path(path)
    fmt, options = image_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image_grid(images, ncols, min_side).save(tmp, format=fmt, **options)
    tmp.replace(path)
    return path
