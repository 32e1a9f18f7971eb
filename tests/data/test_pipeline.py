"""The streaming pipeline: coverage per epoch, determinism, exact restart, bad data."""

from __future__ import annotations

import io
import logging
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds

from scalegan.data.pipeline import DataError, ImageStream, decode_image, expand_shards

from conftest import png_bytes


def read_epoch0(stream: ImageStream) -> dict[int, list[str]]:
    """Keys each role delivered in epoch 0, reading until every role has moved to epoch 1."""
    seen: dict[int, list[str]] = {r: [] for r in range(stream.num_roles)}
    done: set[int] = set()
    while len(done) < stream.num_roles:
        role = stream.batches % stream.num_roles
        keys = stream.next_batch().keys
        if stream.roles[role].epoch >= 1:
            done.add(role)
        else:
            seen[role] += keys
    return seen


def test_two_ranks_two_workers_see_every_sample_once_per_epoch(shards, monkeypatch):
    urls = shards(num_shards=4, per_shard=5, resolution=8)
    all_keys = {f"{i:08d}" for i in range(20)}
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        stream = ImageStream(urls, batch_size=1, resolution=8, seed=3, num_workers=2,
                             shuffle_buffer=4)
        seen = read_epoch0(stream)
        stream.close()
        assert all(seen[r] for r in seen), f"rank {rank}: a worker delivered nothing: {seen}"
        per_rank.append([k for r in seen for k in seen[r]])
    together = per_rank[0] + per_rank[1]
    assert len(together) == len(set(together)), "a sample was delivered twice in one epoch"
    assert set(together) == all_keys
    assert not set(per_rank[0]) & set(per_rank[1])


def _take(stream: ImageStream, n: int) -> list[tuple[torch.Tensor, list[str]]]:
    return [stream.next_batch()[:2] for _ in range(n)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_restart_from_state_continues_exactly(shards, num_workers):
    urls = shards(num_shards=4, per_shard=7, resolution=16)
    kw = dict(batch_size=3, resolution=8, seed=1, num_workers=num_workers, shuffle_buffer=5,
              xflip=True)
    straight = ImageStream(urls, **kw)
    reference = _take(straight, 25)  # > one epoch (28 samples / 3 per batch)
    straight.close()

    first = ImageStream(urls, **kw)
    _take(first, 11)
    state = first.state_dict()
    first.close()
    resumed = ImageStream(urls, **kw)
    resumed.load_state_dict(state)
    for (want_img, want_keys), (img, keys) in zip(reference[11:], _take(resumed, 14), strict=True):
        assert keys == want_keys
        assert torch.equal(img, want_img)
    resumed.close()


def test_epochs_are_shuffled_differently_and_seeded(shards):
    urls = shards(num_shards=2, per_shard=8, resolution=8)
    def keys(seed):
        s = ImageStream(urls, batch_size=16, resolution=8, seed=seed, shuffle_buffer=16)
        out = [s.next_batch()[1] for _ in range(2)]
        s.close()
        return out
    a, b = keys(0), keys(0)
    assert a == b
    assert sorted(a[0]) == sorted(a[1]) and a[0] != a[1]
    assert keys(1) != a


def test_box_downsampling_and_range(shards):
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = decode_image(png_bytes(img), 8)
    want = img.reshape(8, 2, 8, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert out.shape == (8, 8, 3)
    assert np.abs(out.astype(np.float64) - want).max() <= 0.5 + 1e-9  # box average, rounded
    stream = ImageStream(shards(1, 4, 16), batch_size=4, resolution=4)
    batch = stream.next_batch().images
    assert batch.shape == (4, 3, 4, 4) and batch.min() >= -1 and batch.max() <= 1


def test_corrupt_sample_is_skipped_and_counted(tmp_path, caplog):
    path = tmp_path / "000000.tar"
    rng = np.random.default_rng(0)
    with wds.TarWriter(str(path)) as sink:
        for i in range(5):
            data = b"not a png at all" if i == 2 else png_bytes(
                rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
            sink.write({"__key__": f"{i:08d}", "png": data})
    stream = ImageStream([str(path)], batch_size=4, resolution=8, shuffle_buffer=1)
    with caplog.at_level(logging.WARNING):
        keys = stream.next_batch().keys
    assert keys == ["00000000", "00000001", "00000003", "00000004"]
    assert stream.skipped == 1
    assert "00000002" in caplog.text and "000000.tar" in caplog.text


def test_truncated_tar_warns_and_stream_goes_on(shards, tmp_path, caplog):
    good = shards(num_shards=1, per_shard=4, resolution=8)[0]
    bad = tmp_path / "bad.tar"
    data = open(shards(num_shards=1, per_shard=4, resolution=8, seed=9)[0], "rb").read()
    # keep the first two members whole and cut into the third
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
    cut = members[2].offset_data + 10
    bad.write_bytes(data[:cut])
    stream = ImageStream([str(bad), good], batch_size=1, resolution=8, shuffle_buffer=1)
    with caplog.at_level(logging.WARNING):
        batches = [stream.next_batch() for _ in range(7)]
    assert "bad.tar" in caplog.text
    # epoch 0: the 2 whole samples before the cut, all 4 of the good tar (both number from 0)
    epoch0 = [b.keys[0] for b in batches if b.epochs[0] == 0]
    assert sorted(epoch0) == ["00000000", "00000000", "00000001", "00000001", "00000002",
                              "00000003"]
    assert batches[-1].epochs == [1]


def test_empty_and_missing_shard_lists_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="data.shards is empty"):
        expand_shards("")
    with pytest.raises(DataError, match=r"4 of 4 shards do not exist: .*000000\.tar"):
        expand_shards(str(tmp_path / "{000000..000003}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="matched no shards"):
        expand_shards(str(tmp_path / "empty"))


def test_too_few_shards_for_workers_is_a_clear_error(shards):
    with pytest.raises(DataError, match="fewer than ranks x workers"):
        ImageStream(shards(num_shards=1, per_shard=2, resolution=8), 1, 8, num_workers=2)


def test_resolution_change_restarts_at_position(shards):
    urls = shards(num_shards=2, per_shard=6, resolution=16)
    a = ImageStream(urls, batch_size=2, resolution=16, seed=0)
    ref = [a.next_batch() for _ in range(4)]
    b = ImageStream(urls, batch_size=2, resolution=16, seed=0)
    b.next_batch()
    b.next_batch()
    b.set_resolution(8)
    img, keys = b.next_batch()[:2]
    assert keys == ref[2][1] and img.shape[-1] == 8
    want = torch.nn.functional.avg_pool2d((ref[2][0] + 1) * 127.5, 2)
    assert (img + 1).mul(127.5).sub(want).abs().max() <= 0.5 + 1e-4
