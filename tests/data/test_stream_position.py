"""The global data position: a run saved at one world size and worker count continues at another
and still reads every sample of the epoch exactly once."""

from __future__ import annotations

import collections

import pytest

from scalegan.data.pipeline import DONE, ImageStream, deal, merge_positions


def _stream(urls, monkeypatch, rank: int, world: int, workers: int) -> ImageStream:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    return ImageStream(urls, batch_size=2, resolution=8, seed=5, num_workers=workers,
                       shuffle_buffer=8, xflip=True)


def _epoch_keys(stream: ImageStream, batches: int | None = None, epoch: int = 0) -> list[str]:
    """Keys of ``epoch`` delivered in ``batches`` batches, or (None) until every role of the
    stream has moved past ``epoch``."""
    keys: list[str] = []
    taken = 0
    while (taken < batches) if batches is not None else any(
            r.epoch <= epoch for r in stream.roles):
        batch = stream.next_batch()
        keys += [k for k, e in zip(batch.keys, batch.epochs, strict=True) if e == epoch]
        taken += 1
    return keys


@pytest.mark.parametrize("world,workers", [(1, 1), (4, 1), (2, 0)])
def test_saved_at_2x2_and_resumed_at_another_layout_sees_each_sample_once(
        shards, monkeypatch, world, workers):
    urls = shards(num_shards=8, per_shard=5, resolution=8)  # 40 samples
    before, states = [], []
    for rank in (0, 1):
        stream = _stream(urls, monkeypatch, rank, 2, 2)
        before += _epoch_keys(stream, batches=5)  # 2 ranks x 5 batches x 2 = 20 of 40
        states.append(stream.state_dict())
        stream.close()
    assert len(before) == len(set(before)) == 20
    after = []
    for rank in range(world):
        stream = _stream(urls, monkeypatch, rank, world, workers)
        stream.load_state_dict({"ranks": states})
        after += _epoch_keys(stream)
        stream.close()
    counts = collections.Counter(before + after)
    assert sorted(counts) == [f"{i:08d}" for i in range(40)], "a sample of the epoch was lost"
    assert set(counts.values()) == {1}, f"read twice: {[k for k, c in counts.items() if c > 1]}"


def test_resume_at_the_same_layout_from_every_ranks_position_is_exact(shards, monkeypatch):
    urls = shards(num_shards=4, per_shard=7, resolution=8)
    stream = _stream(urls, monkeypatch, 1, 2, 2)
    straight = [stream.next_batch() for _ in range(12)]
    stream.close()
    states = []
    for rank in (0, 1):
        first = _stream(urls, monkeypatch, rank, 2, 2)
        for _ in range(5):
            first.next_batch()
        states.append(first.state_dict())
        first.close()
    resumed = _stream(urls, monkeypatch, 1, 2, 2)
    resumed.load_state_dict({"ranks": states})
    for want in straight[5:]:
        got = resumed.next_batch()
        assert got.keys == want.keys and got.images.equal(want.images)
    resumed.close()


def test_a_second_change_of_layout_still_reads_each_sample_once(shards, monkeypatch):
    """2 x 1 -> 3 x 1 -> 1 x 0 within one epoch (the merged position is itself merged)."""
    urls = shards(num_shards=6, per_shard=4, resolution=8)  # 24 samples
    seen: list[str] = []
    states = []
    for rank in (0, 1):
        s = _stream(urls, monkeypatch, rank, 2, 1)
        seen += _epoch_keys(s, batches=2)
        states.append(s.state_dict())
        s.close()
    middle = []
    for rank in range(3):
        s = _stream(urls, monkeypatch, rank, 3, 1)
        s.load_state_dict({"ranks": states})
        seen += _epoch_keys(s, batches=1)
        middle.append(s.state_dict())
        s.close()
    last = _stream(urls, monkeypatch, 0, 1, 0)
    last.load_state_dict({"ranks": middle})
    seen += _epoch_keys(last)
    last.close()
    assert sorted(seen) == [f"{i:08d}" for i in range(24)]


def test_merge_counts_follow_the_roles_epochs():
    """Hand-built positions of 2 roles over 4 shards: role 0 moved on to epoch 1 (its epoch-0
    slice is done), role 1 took 3 samples of one shard and finished another."""
    seed = 0
    slice0 = deal(seed, 0, 4, {}, 0, 2)
    slice1 = deal(seed, 0, 4, {}, 1, 2)
    (a, _), (b, _) = slice1
    next0 = deal(seed, 1, 4, {}, 0, 2)  # role 0's slice of epoch 1
    role0 = {"epoch": 1, "index": 2, "counts": {str(next0[0][0]): 2}, "done": []}
    role1 = {"epoch": 0, "index": 9, "counts": {str(a): 6, str(b): 3}, "done": [a]}
    ranks = [{"rank": 0, "num_shards": 4, "bases": {}, "roles": [role0]},
             {"rank": 1, "num_shards": 4, "bases": {}, "roles": [role1]}]
    first, bases = merge_positions(ranks, seed)
    assert first == 0
    assert bases[0] == {slice0[0][0]: DONE, slice0[1][0]: DONE, a: DONE, b: 3}
    assert bases[1] == {next0[0][0]: 2}  # role 1 has not begun its slice of epoch 1
    assert [s for s, _ in deal(seed, 0, 4, bases[0], 0, 1)] == [b]
    assert deal(seed, 0, 4, bases[0], 0, 1) == [(b, 3)]


@pytest.mark.parametrize("world,workers", [(1, 1), (3, 1)])
def test_a_role_already_in_the_next_epoch_is_merged_exactly(shards, monkeypatch, world,
                                                            workers):
    """7 shards over 4 roles: the role dealt one shard runs into epoch 1 while the others are
    still in epoch 0; after the resume both epochs hold each sample exactly once."""
    urls = shards(num_shards=7, per_shard=5, resolution=8)  # 35 samples
    before: dict[int, list[str]] = {0: [], 1: []}
    states = []
    for rank in (0, 1):
        stream = _stream(urls, monkeypatch, rank, 2, 2)
        for _ in range(6):
            batch = stream.next_batch()
            for key, epoch in zip(batch.keys, batch.epochs, strict=True):
                before[epoch].append(key)
        states.append(stream.state_dict())
        stream.close()
    assert before[1], "no role reached epoch 1 before the save"
    after: dict[int, list[str]] = {0: [], 1: []}
    for rank in range(world):
        stream = _stream(urls, monkeypatch, rank, world, workers)
        stream.load_state_dict({"ranks": states})
        while any(r.epoch <= 1 for r in stream.roles):
            batch = stream.next_batch()
            for key, epoch in zip(batch.keys, batch.epochs, strict=True):
                if epoch <= 1:
                    after[epoch].append(key)
        stream.close()
    for epoch in (0, 1):
        seen = collections.Counter(before[epoch] + after[epoch])
        assert sorted(seen) == [f"{i:08d}" for i in range(35)], f"epoch {epoch} lost samples"
        assert set(seen.values()) == {1}, f"epoch {epoch} read a sample twice"
