"""Scatter plots of 2-D samples (the point-mixture benchmarks) as PNG, drawn with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def scatter_image(points: torch.Tensor, centers: torch.Tensor | None = None,
                  radius: float = 0.0, extent: float | None = None,
                  size: int = 512) -> Image.Image:
    """``points`` (N, 2) as dark dots on white, the square [-extent, extent]^2 (default: the
    largest |coordinate| of the centers, or of the points, plus 20%); each of ``centers`` (K, 2)
    is circled with ``radius`` (e.g. 3 sigma) in red."""
    pts = points.detach().float().cpu().numpy()
    ref = centers.detach().float().cpu().numpy() if centers is not None else pts
    if extent is None:
        extent = 1.2 * float(np.abs(ref).max()) + radius if len(ref) else 1.0
    extent = max(extent, 1e-6)

    def to_px(xy: np.ndarray) -> np.ndarray:  # y points up
        return np.stack([(xy[:, 0] / extent + 1) * size / 2,
                         (1 - xy[:, 1] / extent) * size / 2], axis=1)

    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    if centers is not None:
        r = radius / extent * size / 2
        for x, y in to_px(ref):
            draw.ellipse((x - r, y - r, x + r, y + r), outline=(220, 40, 40))
    for x, y in to_px(pts[np.isfinite(pts).all(1)]):
        draw.rectangle((x - 1, y - 1, x + 1, y + 1), fill=(20, 20, 90))
    return img


def save_scatter(points: torch.Tensor, path: str | Path, **kwargs) -> Path:
    """Write ``scatter_image`` to ``path`` (PNG) atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    scatter_image(points, **kwargs).save(tmp, format="PNG")
    tmp.replace(path)
    return path
