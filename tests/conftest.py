"""Shared fixtures: tiny WebDataset shards written straight into tmp_path."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors. The variable is read
# when a kernel is defined, so it is set before any test imports scalegan.kernels.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def decode_member(sample: dict, resolution: int) -> np.ndarray:
    """A raw tar sample's one image member (png, jpg or raw rgb bytes) as (R, R, 3) uint8."""
    members = [m for m in ("png", "jpg", "rgb") if m in sample]
    assert len(members) == 1, sorted(sample)
    data = sample[members[0]]
    if members[0] == "rgb":
        assert len(data) == 3 * resolution * resolution
        return np.frombuffer(data, np.uint8).reshape(resolution, resolution, 3)
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "RGB" and img.size == (resolution, resolution)
        return np.asarray(img)


def wait_for_first_shard(proc, build: Path, poll: float = 0.01) -> None:
    """Wait until a running ``scalegan pack`` (``proc``) has completed its first shard in its
    build directory ``build`` (000001.tar exists); fail if it ends first or takes over 60 s."""
    deadline = time.monotonic() + 60
    while not (build / "000001.tar").exists():
        if proc.poll() is not None:
            pytest.fail(f"pack ended (rc {proc.returncode}) before it could be interrupted: "
                        f"{proc.stderr.read().decode(errors='replace')}")
        assert time.monotonic() < deadline, "no shard appeared in the build directory"
        time.sleep(poll)


def write_shards(directory: Path, num_shards: int, per_shard: int, resolution: int,
                 seed: int = 0, index: bool = True) -> list[str]:
    """``num_shards`` tars of ``per_shard`` random RGB PNGs keyed 00000000, 00000001, ..., and
    (``index``) the index.json `scalegan pack` writes beside them."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    urls = []
    for s in range(num_shards):
        path = directory / f"{s:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                img = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
                sink.write({"__key__": f"{s * per_shard + i:08d}", "png": png_bytes(img)})
        urls.append(str(path))
    if index:
        shards = [{"name": Path(u).name, "count": per_shard,
                   "sha256": hashlib.sha256(Path(u).read_bytes()).hexdigest()} for u in urls]
        (directory / "index.json").write_text(json.dumps(
            {"num_samples": num_shards * per_shard, "resolution": resolution, "channels": 3,
             "labels": None, "shards": shards, "skipped": [], "fit": "crop"}, indent=2))
    return urls


@pytest.fixture
def shards(tmp_path: Path):
    """Factory: shards(num_shards, per_shard, resolution) -> list of tar paths."""
    def make(num_shards: int = 4, per_shard: int = 6, resolution: int = 16, seed: int = 0):
        return write_shards(tmp_path / f"shards_{num_shards}_{per_shard}_{resolution}_{seed}",
                            num_shards, per_shard, resolution, seed)
    return make
