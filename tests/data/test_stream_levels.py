"""Multi-resolution packs: the stream reads the smallest stored level at or above the training
resolution and serves exactly the pixels a single-resolution pack gives."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from scalegan.data.pack import pack_arrays
from scalegan.data.pipeline import ImageStream, decode_image, open_shards
from scalegan.data.shards import iter_tar_samples


def _faces(n: int = 24, size: int = 32) -> list[np.ndarray]:
    """Smooth colour blobs plus noise: every box reduce has pixels that round both ways."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        c = rng.uniform(0.2, 0.8, (3, 2))
        img = np.stack([c[k, 0] + 0.3 * np.sin(6 * xx * c[k, 1] + 3 * yy) for k in range(3)], -1)
        img = img * 255 + rng.normal(0, 6, img.shape)
        out.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    root = tmp_path_factory.mktemp("levels")
    faces = _faces()
    pack_arrays(faces, root / "single", 32, shard_size=6, min_resolution=32, encoding="png")
    pack_arrays(faces, root / "multi", 32, shard_size=6, min_resolution=4)
    pack_arrays(faces, root / "multi_png", 32, shard_size=6, min_resolution=4, encoding="png")
    return root


@pytest.mark.parametrize("kind", ["multi", "multi_png"])
@pytest.mark.parametrize("resolution", [4, 8, 16, 32])
def test_multi_resolution_pack_serves_the_single_resolution_pixels(packs, kind, resolution):
    single, multi = open_shards(str(packs / "single")), open_shards(str(packs / kind))
    assert [v.resolution for v in multi.levels] == [32, 16, 8, 4]
    assert multi.level_for(resolution).resolution == resolution
    assert single.level_for(resolution).resolution == 32
    kw = dict(batch_size=5, resolution=resolution, seed=3, shuffle_buffer=4, xflip=True)
    a, b = ImageStream(single, **kw), ImageStream(multi, **kw)
    for _ in range(6):  # 30 samples: more than the epoch of 24
        want, got = a.next_batch(), b.next_batch()
        assert got.keys == want.keys
        assert torch.equal(got.images, want.images)
    a.close(), b.close()


def test_each_served_image_is_the_full_size_png_box_reduced(packs):
    """Against the decoder of single-resolution packs applied to the full-size PNG."""
    full = {}
    for url in open_shards(str(packs / "single")).urls:
        for sample in iter_tar_samples(url):
            full[sample["__key__"]] = sample["png"]
    stream = ImageStream(open_shards(str(packs / "multi")), batch_size=24, resolution=8)
    batch = stream.next_uint8()
    assert sorted(batch["keys"]) == sorted(full)
    for key, image in zip(batch["keys"], batch["images"], strict=True):
        np.testing.assert_array_equal(image.numpy(), decode_image(full[key], 8))
        with Image.open(io.BytesIO(full[key])) as img:  # and PIL's own one-step box reduce
            np.testing.assert_array_equal(image.numpy(), np.asarray(img.reduce(4)))


def test_below_the_smallest_level_the_stream_reduces_it(packs, tmp_path):
    faces = _faces(n=4)
    pack_arrays(faces, tmp_path / "p", 32, shard_size=4, min_resolution=16)
    shards = open_shards(str(tmp_path / "p"))
    assert shards.level_for(4).resolution == 16
    batch = ImageStream(shards, batch_size=4, resolution=4).next_uint8()
    want = {f"{i:08d}": np.asarray(Image.fromarray(f).reduce(2).reduce(4))
            for i, f in enumerate(faces)}
    for key, image in zip(batch["keys"], batch["images"], strict=True):
        np.testing.assert_array_equal(image.numpy(), want[key])
