"""Tiny real-photo demo dataset: the face crops shipped inside scikit-image.

``skimage.data.lfw_subset()`` holds 200 grayscale 25x25 crops from Labeled Faces in the Wild;
the first 100 are faces and the last 100 are non-face patches, so only the first 100 are used.
"""

from __future__ import annotations

import os

import numpy as np

from scalegan.data.pack import PackSummary, pack_arrays

__all__ = ["NUM_FACES", "demo_faces", "pack_demo"]

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


def pack_demo(out: str | os.PathLike, resolution: int = 32, shard_size: int = 25) -> PackSummary:
    """Pack :func:`demo_faces` into WebDataset shards in ``out`` (sources ``lfw_subset/000``...)."""
    faces = demo_faces()
    names = [f"lfw_subset/{i:03d}" for i in range(len(faces))]
    return pack_arrays(list(faces), out, resolution, shard_size=shard_size, names=names)
