"""Shards over HTTP: a dropped connection is retried and the epoch still holds every sample once;
a shard that always fails is reported and skipped, and the run goes on."""

from __future__ import annotations

import collections
import json
import logging

import numpy as np
import pytest
from http_server import serve

from scalegan.config import load_config
from scalegan.data.pack import pack_arrays
from scalegan.data.pipeline import ImageStream, open_shards
from scalegan.train.trainer import Trainer


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    out = tmp_path_factory.mktemp("remote") / "pack"
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(24)]
    pack_arrays(images, out, 16, shard_size=6, min_resolution=8)  # 4 shards per level
    return out


def _epoch0(stream: ImageStream) -> list[str]:
    keys = []
    while any(r.epoch == 0 for r in stream.roles):
        batch = stream.next_batch()
        keys += [k for k, e in zip(batch.keys, batch.epochs, strict=True) if e == 0]
    return keys


@pytest.mark.parametrize("workers", [0, 2])
def test_a_dropped_connection_is_retried_and_every_sample_seen_once(pack, workers):
    level = pack / "r8" / "000001.tar"
    with serve(pack, drop_once={"r8/000001.tar": level.stat().st_size // 2}) as (base, requests):
        shards = open_shards(base + "index.json")  # index.json itself read over HTTP
        assert shards.level_for(8).urls[1] == base + "r8/000001.tar"
        stream = ImageStream(shards, batch_size=4, resolution=8, seed=2, num_workers=workers,
                             shuffle_buffer=8, retries=3, backoff=0.0)
        keys = _epoch0(stream)
        stream.close()
    counts = collections.Counter(keys)
    assert sorted(counts) == [f"{i:08d}" for i in range(24)] and set(counts.values()) == {1}
    tries = [outcome for path, outcome in requests if path == "/r8/000001.tar"]
    # the drop, then the rest of the shard from the next unread sample; the other requests are
    # later epochs, which the workers read ahead (and may ask for before the retry)
    assert "dropped" in tries[0] and sum(t.startswith("206 from") for t in tries) == 1
    assert sorted(tries[1:])[:-1] == ["200"] * (len(tries) - 2)
    assert stream.failed_shards == 0


def test_a_shard_that_always_fails_is_reported_and_skipped(pack, caplog):
    with serve(pack, always_fail={"r8/000002.tar"}) as (base, requests), \
            caplog.at_level(logging.WARNING):
        stream = ImageStream(open_shards(base + "index.json"), batch_size=4, resolution=8,
                             seed=2, shuffle_buffer=8, retries=2, backoff=0.0)
        keys = _epoch0(stream)
        more = stream.next_batch()  # and the stream goes on into the next epoch
        stream.close()
    lost = {f"{i:08d}" for i in range(12, 18)} - set(keys)  # shard 2 holds samples 12..17
    assert lost and set(keys) == {f"{i:08d}" for i in range(24)} - lost
    assert len(keys) == len(set(keys))
    assert len(more.keys) == 4
    tries = [o for p, o in requests if p == "/r8/000002.tar"]
    assert len(tries) >= 3  # 1 + 2 retries in epoch 0 (and again when epoch 1 reaches it)
    assert "giving up on shard" in caplog.text and "r8/000002.tar" in caplog.text
    assert stream.failed_shards >= 1


def test_training_goes_on_past_a_shard_that_always_fails(pack, tmp_path, caplog):
    with serve(pack, always_fail={"000001.tar"}) as (base, _), caplog.at_level(logging.ERROR):
        cfg = load_config("configs/demo_faces32_pggan.yaml", [
            f"runs_dir={tmp_path}", "name=remote", f"data.shards={base}index.json",
            "data.retries=1", "data.retry_backoff=0", "data.num_workers=0",
            "data.shuffle_buffer=4", "model.resolution=16", "model.channel_base=64",
            "model.channel_max=16", "model.latent_dim=8", "train.batch_size=8",
            "train.schedule.start_resolution=16", "train.total_kimg=1",
            "log.every_steps=3", "log.wandb=disabled", "log.progress=false",
            "checkpoint.every_kimg=100", "log.sample_every_kimg=100"])
        trainer = Trainer(cfg)
        trainer.train(max_steps=6)  # 48 images: two epochs of the 24
        trainer.close()
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").open()]
    assert rows[-1]["step"] == 6 and rows[-1]["data_failed_shards"] >= 1
    assert "giving up on shard" in caplog.text and "000001.tar" in caplog.text
