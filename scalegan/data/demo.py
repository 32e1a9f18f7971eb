"""Tiny real-photo demo dataset: the face crops shipped inside scikit-image.

``skimage.data.lfw_subset()`` holds 200 grayscale 25x25 crops from Labeled Faces in the Wild;
the first 100 are faces and the last 100 are non-face patches, so only the first 100 are used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from scalegan.data.pack import PackSummary, pack_arrays

__all__ = ["DEMO_SETS", "NUM_FACES", "demo_faces", "pack_demo", "pack_demo_digits",
           "pack_demo_domains", "pack_demo_split"]

NUM_FACES = 100  # lfw_subset(): images [0, 100) are faces, [100, 200) are not


def _lfw_subset() -> np.ndarray:
    """(200, 25, 25) float64 in [0, 1] from scikit-image (imported lazily: optional dependency)."""
    try:
        from skimage import data as skdata
    except ImportError as exc:
        raise ImportError(
            "the demo dataset needs the scikit-image package: pip install scikit-image "
            "(or pip install 'scalegan[demo]')"
        ) from exc
    return skdata.lfw_subset()


def demo_faces() -> np.ndarray:
    """The 100 LFW face photographs from scikit-image as uint8 grayscale, shape (100, 25, 25)."""
    faces = np.asarray(_lfw_subset()[:NUM_FACES], dtype=np.float64)
    return np.rint(np.clip(faces, 0.0, 1.0) * 255.0).astype(np.uint8)


def pack_demo(out: str | os.PathLike, resolution: int = 32, shard_size: int = 25,
              holdout: int | float | None = None, **options: Any) -> PackSummary:
    """Pack :func:`demo_faces` into WebDataset shards in ``out`` (sources ``lfw_subset/000``...).

    ``holdout``: a count or a fraction of the 100 faces to write to ``out/holdout`` instead,
    chosen by the SHA-256 of their source names (see :func:`~scalegan.data.pack.pack_folder`).
    ``options``: :func:`~scalegan.data.pack.pack_arrays`'s keywords for the stored levels and
    how to run (``min_resolution``, ``encoding``, ``jpeg_quality``, ``workers``, ``progress``),
    as for every demo set here.
    """
    faces = demo_faces()
    names = [f"lfw_subset/{i:03d}" for i in range(len(faces))]
    return pack_arrays(list(faces), out, resolution, shard_size=shard_size, names=names,
                       holdout=holdout, **options)


# -------------------------------------------------------------- built-in splits with held-out sets

HOLDOUT = 10
"""Faces held out of training by the split demo sets (the last ones)."""


def pack_demo_split(out: str | os.PathLike, resolution: int = 32, shard_size: int = 25,
                    **options: Any) -> dict[str, PackSummary]:
    """The demo faces as ``out/train`` (the first 90) and ``out/holdout`` (the last 10): a
    held-out set for families judged on their inputs (super-resolution)."""
    faces, out = demo_faces(), Path(out)
    cut = NUM_FACES - HOLDOUT
    return {part: pack_arrays(list(faces[sl]), out / part, resolution, shard_size=shard_size,
                              names=[f"lfw_subset/{i:03d}" for i in range(NUM_FACES)[sl]],
                              **options)
            for part, sl in (("train", slice(0, cut)), ("holdout", slice(cut, None)))}


def pack_demo_domains(out: str | os.PathLike, resolution: int = 32, shard_size: int = 25,
                      **options: Any) -> dict[str, PackSummary]:
    """Two unpaired image domains from the demo faces, for translation models: ``out/a`` holds
    faces 0-39 as photographed, ``out/b`` the photographic negatives (255 - v) of the other
    faces 40-79, and ``out/a_holdout``, ``out/b_holdout`` the same of faces 80-89 and 90-99. No
    face appears in both domains, so nothing pairs them."""
    faces, out = demo_faces(), Path(out)
    parts = {"a": (slice(0, 40), False), "b": (slice(40, 80), True),
             "a_holdout": (slice(80, 90), False), "b_holdout": (slice(90, 100), True)}
    summaries = {}
    for part, (sl, negative) in parts.items():
        images = [255 - f if negative else f for f in faces[sl]]
        names = [f"lfw_subset/{i:03d}{'-negative' if negative else ''}"
                 for i in range(NUM_FACES)[sl]]
        summaries[part] = pack_arrays(images, out / part, resolution, shard_size=shard_size,
                                      names=names, **options)
    return summaries


def pack_demo_digits(out: str | os.PathLike, resolution: int = 8, shard_size: int = 500,
                     **options: Any) -> dict[str, PackSummary]:
    """scikit-learn's 1797 8x8 digits as ``out/train`` (a stratified 75%) and ``out/holdout``
    (25%, ``digit_split``), each sample with its digit as its ``label`` (classes "0" .. "9"):
    small images for autoencoders and class-conditional models."""
    from scalegan.data.digits import digit_images, digit_split

    images, labels = digit_images()
    out = Path(out)
    return {part: pack_arrays(list(images[idx]), out / part, resolution, shard_size=shard_size,
                              names=[f"digits/{i:04d}" for i in idx], labels=labels[idx],
                              classes=[str(d) for d in range(10)], **options)
            for part, idx in zip(("train", "holdout"), digit_split(), strict=True)}


DEMO_SETS = {"demo-split": (pack_demo_split, 32), "demo-domains": (pack_demo_domains, 32),
             "demo-digits": (pack_demo_digits, 8)}
"""`scalegan pack <name> OUT`: built-in sets with held-out parts, and their default resolution."""
