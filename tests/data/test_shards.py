"""Reading tar shards from local paths, http(s) URLs and pipe: commands, with retries.

The references are the members written into each tar here with ``tarfile`` (keys, extensions,
bytes), WebDataset's own tar reader for the key/extension convention, and byte offsets taken from
the written tar: a reader that received the first ``c`` bytes of a shard can have yielded exactly
the samples whose following header (or, for the last one, the end-of-archive block) lies within
them. No test sleeps: ``sleep`` is a recorder.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import socket
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from http_server import serve
from webdataset import tariterators

from scalegan.config import ConfigError, DataConfig
from scalegan.data.shards import (
    ShardReadError,
    is_remote,
    iter_tar_samples,
    join_url,
    read_json,
)

BLOCK = 512  # tar header / block size


def make_samples(n: int = 5, seed: int = 0, size: int = 768) -> list[tuple[str, dict[str, bytes]]]:
    """``n`` samples as the stream reads them: an ``rgb`` member (16x16x3 random bytes by
    default) and a ``json``."""
    rng = np.random.default_rng(seed)
    return [(f"{i:08d}", {"rgb": rng.integers(0, 256, size, dtype=np.uint8).tobytes(),
                          "json": json.dumps({"label": i}).encode()}) for i in range(n)]


def write_tar(path: Path, samples, mode: str = "w") -> Path:
    """Members ``KEY.EXT`` in sample order, written with tarfile (mtime 0, as the packer)."""
    with tarfile.open(path, mode) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
    return path


def expected(samples, url: str, start: int = 0, stop: int | None = None) -> list[dict]:
    return [{"__key__": key, "__url__": url, "__index__": i, **members}
            for i, (key, members) in enumerate(samples)][start:stop]


def readable_counts(path: Path) -> list[int]:
    """For each sample i, the bytes a reader needs to have received to know it complete: the
    next sample's first header, or for the last sample the first end-of-archive block."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        end = tar.offset  # after the last member's data: where the end-of-archive blocks begin
    starts, seen = [], set()
    for m in members:
        key = m.name.split(".")[0]
        if key not in seen:
            seen.add(key)
            starts.append(m.offset)
    return [s + BLOCK for s in starts[1:]] + [end + BLOCK]


def samples_within(path: Path, received: int) -> int:
    return sum(need <= received for need in readable_counts(path))


def sample_start(path: Path, i: int) -> int:
    """Byte offset of the first header of sample ``i``."""
    return readable_counts(path)[i - 1] - BLOCK if i else 0


class Sleeps(list):
    """Records the waits instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def shard(tmp_path) -> tuple[Path, list]:
    samples = make_samples(5)
    return write_tar(tmp_path / "000000.tar", samples), samples


# ------------------------------------------------------------------------------------------ local


def test_local_reads_every_sample_in_order(shard):
    path, samples = shard
    got = list(iter_tar_samples(str(path)))
    assert got == expected(samples, str(path))
    url = path.as_uri()
    assert list(iter_tar_samples(url)) == expected(samples, url)


@pytest.mark.parametrize("start", [0, 1, 3, 4, 5, 9])
def test_start_skips_exactly(shard, start):
    path, samples = shard
    got = list(iter_tar_samples(str(path), start=start))
    assert got == expected(samples, str(path), start=start)


def test_keys_and_extensions_follow_webdataset(tmp_path):
    """Multi-dot extensions, directories in keys, upper-case extensions, a member without an
    extension, a directory entry, a __meta__ member: the samples WebDataset's own reader gives."""
    path = tmp_path / "mixed.tar"
    with tarfile.open(path, "w") as tar:
        def add(name, data=b"", kind=tarfile.REGTYPE):
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(data)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("__meta__", b"{}")
        add("a", kind=tarfile.DIRTYPE)
        add("a/000001.seg.png", b"seg")
        add("a/000001.JPG", b"jpg")
        add("a/000001.json", b"{}")
        add("README", b"no extension")
        add("000002.rgb", b"x" * 12)
        add("a.b/000003.cls", b"7")
    ours = list(iter_tar_samples(str(path)))
    with open(path, "rb") as f:
        theirs = list(tariterators.group_by_keys(tariterators.tar_file_expander(
            [{"url": str(path), "stream": f}])))
    assert [s.pop("__index__") for s in ours] == list(range(len(theirs)))
    assert ours == theirs
    assert ours[0] == {"__key__": "a/000001", "__url__": str(path), "seg.png": b"seg",
                       "jpg": b"jpg", "json": b"{}"}


def test_truncated_local_tar_yields_complete_samples_without_retrying(shard, tmp_path):
    path, samples = shard
    data = path.read_bytes()
    sample3 = sample_start(path, 3)
    # mid-data of sample 3's first member; exactly at sample 3's header; mid-header
    for cut in (sample3 + BLOCK + 100, sample3, sample3 + 200):
        cut_path = tmp_path / f"cut{cut}.tar"
        cut_path.write_bytes(data[:cut])
        sleeps, got = Sleeps(), []
        with pytest.raises(ShardReadError) as info:
            for s in iter_tar_samples(str(cut_path), sleep=sleeps):
                got.append(s)
        n = samples_within(path, cut)
        assert n == (3 if cut > sample3 + BLOCK else 2)
        assert got == expected(samples, str(cut_path), stop=n)
        err = info.value
        assert (err.url, err.attempts, err.samples_read, sleeps) == (str(cut_path), 1, n, [])
        assert "truncated" in err.error or "unexpected end of data" in err.error


def test_garbage_header_midway_is_malformed(shard, tmp_path):
    path, samples = shard
    data = bytearray(path.read_bytes())
    at = sample_start(path, 2)
    data[at:at + BLOCK] = b"\xff" * BLOCK  # fails the checksum; tarfile alone would stop quietly
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    got = []
    with pytest.raises(ShardReadError) as info:
        for s in iter_tar_samples(str(bad), sleep=Sleeps()):
            got.append(s)
    assert got == expected(samples, str(bad), stop=1)
    assert info.value.attempts == 1 and f"invalid tar header at byte {at}" in info.value.error


def test_duplicate_member_and_missing_file_are_not_retried(tmp_path):
    dup = write_tar(tmp_path / "dup.tar", [("k", {"png": b"1"})] + [("k", {"png": b"2"})])
    for url, words in ((str(dup), "second 'png' member"), (str(tmp_path / "nope.tar"), "No such")):
        sleeps = Sleeps()
        with pytest.raises(ShardReadError) as info:
            list(iter_tar_samples(url, sleep=sleeps))
        assert info.value.attempts == 1 and words in info.value.error and sleeps == []


def test_bad_arguments_are_named():
    for kwargs, word in (({"retries": -1}, "retries"), ({"backoff": -1.0}, "backoff"),
                         ({"timeout": 0}, "timeout"), ({"start": -2}, "start")):
        with pytest.raises(ValueError, match=word):
            next(iter_tar_samples("x.tar", **kwargs))
    with pytest.raises(ValueError, match="unsupported URL scheme 's3'.*pipe:aws s3 cp"):
        next(iter_tar_samples("s3://bucket/x.tar"))
    with pytest.raises(ConfigError, match="data.retries"):
        DataConfig(retries=-1)
    with pytest.raises(ConfigError, match="data.retry_backoff"):
        DataConfig(retry_backoff=-0.5)
    assert (DataConfig().retries, DataConfig().retry_backoff) == (5, 1.0)


def test_error_keeps_its_fields_when_copied():
    err = ShardReadError("u.tar", 3, "OSError: x", 7)
    for again in (copy.copy(err), copy.deepcopy(err)):
        assert (again.url, again.attempts, again.error, again.samples_read, str(again)) == (
            "u.tar", 3, "OSError: x", 7, str(err))


# ------------------------------------------------------------------------------------------- http


def test_http_reads_the_same_samples_as_local(shard):
    path, samples = shard
    with serve(path.parent) as (base, log):
        url = base + path.name
        assert list(iter_tar_samples(url)) == expected(samples, url)
        assert list(iter_tar_samples(url, start=2)) == expected(samples, url, start=2)
    assert log == [("/000000.tar", "200")] * 2


@pytest.mark.parametrize("ranges", [True, False])
def test_http_drop_midway_resumes_after_last_sample(shard, ranges, caplog):
    path, samples = shard
    drop_at = sample_start(path, 1) + 700  # inside the 2nd sample's rgb bytes
    sleeps = Sleeps()
    with serve(path.parent, drop_once={path.name: drop_at}, ranges=ranges) as (base, log):
        url = base + path.name
        with caplog.at_level(logging.WARNING, logger="scalegan.data.shards"):
            got = list(iter_tar_samples(url, backoff=0.25, sleep=sleeps))
    assert got == expected(samples, url)
    assert sleeps == [0.25]
    # sample 0 was yielded (sample 1's header came), so the retry starts at sample 1
    assert log == [("/000000.tar", f"200 dropped after {drop_at} bytes"),
                   ("/000000.tar", f"206 from {sample_start(path, 1)}" if ranges else "200")]
    [record] = caplog.records
    assert url in record.getMessage() and "attempt 1 of 6" in record.getMessage()
    assert "0.25 s" in record.getMessage()


def test_http_reset_midway_resumes(shard):
    """A reset (RST) rather than a close: the bytes received before it may be lost, so where
    the retry starts varies, but the samples come out whole, in order, each once."""
    path, samples = shard
    sleeps = Sleeps()
    with serve(path.parent, drop_once={path.name: sample_start(path, 3) + 700},
               reset=True) as (base, log):
        got = list(iter_tar_samples(base + path.name, sleep=sleeps, log_retry=False))
    assert got == expected(samples, base + path.name)
    assert sleeps == [1.0] and len(log) == 2 and "dropped" in log[0][1]


def test_http_drop_later_resumes_with_a_range_request(tmp_path):
    samples = make_samples(6)
    path = write_tar(tmp_path / "000000.tar", samples)
    drop_at = sample_start(path, 4) + 300  # mid-header of sample 4: samples 0-2 yielded
    with serve(tmp_path, drop_once={path.name: drop_at}) as (base, log):
        got = list(iter_tar_samples(base + path.name, sleep=Sleeps()))
    assert got == expected(samples, base + path.name)
    assert log == [("/000000.tar", f"200 dropped after {drop_at} bytes"),
                   ("/000000.tar", f"206 from {sample_start(path, 3)}")]


def test_http_gzip_shard_resumes_from_its_start(tmp_path):
    """Tar offsets in a compressed shard are not the file's: the retry reads it from its start
    (incompressible members keep those offsets inside the file, where a Range would be served)."""
    samples = make_samples(5, size=16384)
    path = write_tar(tmp_path / "000000.tar.gz", samples, mode="w:gz")
    with serve(tmp_path, drop_once={path.name: path.stat().st_size // 2}) as (base, log):
        got = list(iter_tar_samples(base + path.name, sleep=Sleeps(), log_retry=False))
    assert got == expected(samples, base + path.name)
    assert [outcome.split()[0] for _, outcome in log] == ["200", "200"]


def test_http_always_failing_yields_what_it_can(shard, caplog):
    path, samples = shard
    half = path.stat().st_size // 2
    n = samples_within(path, half)
    assert 0 < n < 5
    sleeps, got = Sleeps(), []
    with serve(path.parent, always_fail={path.name}) as (base, log):
        url = base + path.name
        with pytest.raises(ShardReadError) as info:
            for s in iter_tar_samples(url, retries=7, sleep=sleeps, log_retry=False):
                got.append(s)
    assert got == expected(samples, url, stop=n)
    err = info.value
    assert (err.url, err.attempts, err.samples_read) == (url, 8, n)
    size, resume = path.stat().st_size, sample_start(path, n)
    assert err.error == (f"_SourceError: the connection closed after {half - resume} of "
                         f"{size - resume} bytes")
    assert sleeps == [1, 2, 4, 8, 16, 32, 60]  # 1 s doubled, capped at 60 s
    assert log == [("/000000.tar", f"200 dropped after {half} bytes")] + [
        ("/000000.tar", f"206 from {resume} dropped after {half - resume} bytes")] * 7
    assert not [r for r in caplog.records if r.name == "scalegan.data.shards"]  # log_retry=False


@pytest.mark.parametrize("code, attempts", [(404, 1), (403, 1), (410, 1), (503, 3), (500, 3)])
def test_http_status_permanent_or_retried(shard, code, attempts):
    path, _ = shard
    sleeps = Sleeps()
    with serve(path.parent, status={path.name: code}) as (base, log):
        with pytest.raises(ShardReadError) as info:
            list(iter_tar_samples(base + path.name, retries=2, backoff=0.5, sleep=sleeps))
    assert (info.value.attempts, info.value.samples_read) == (attempts, 0)
    assert f"HTTP Error {code}" in info.value.error
    assert sleeps == [0.5, 1.0][:attempts - 1] and len(log) == attempts


def test_connection_refused_and_timeout_are_retried():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ShardReadError) as info:
        list(iter_tar_samples(f"http://127.0.0.1:{port}/a.tar", retries=1, sleep=Sleeps(),
                              log_retry=False))
    assert info.value.attempts == 2 and "refused" in info.value.error.lower()
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        t0 = time.perf_counter()
        with pytest.raises(ShardReadError) as info:
            list(iter_tar_samples(f"http://127.0.0.1:{silent.getsockname()[1]}/a.tar",
                                  retries=1, timeout=0.2, sleep=Sleeps(), log_retry=False))
        assert time.perf_counter() - t0 < 5
    assert info.value.attempts == 2 and "timed out" in info.value.error


def test_http_timeout_midway_yields_what_arrived(shard):
    """A server that stops sending mid-body: the samples received whole before the timeout are
    yielded, then the retry (same stall) times out too."""
    path, samples = shard
    stop = sample_start(path, 3) + 700
    got = []
    with serve(path.parent, stall={path.name: stop}) as (base, log):
        with pytest.raises(ShardReadError) as info:
            for s in iter_tar_samples(base + path.name, retries=1, timeout=0.2, sleep=Sleeps(),
                                      log_retry=False):
                got.append(s)
    n = samples_within(path, stop)
    assert n == 3 and got == expected(samples, base + path.name, stop=n)
    assert (info.value.attempts, info.value.samples_read) == (2, n)
    assert info.value.error == "TimeoutError: timed out"
    resume = sample_start(path, n)
    assert log == [("/000000.tar", f"200 stalled after {stop} bytes"),
                   ("/000000.tar", f"206 from {resume} stalled after {stop - resume} bytes")]


# ------------------------------------------------------------------------------------------- pipe


def test_pipe_cat_reads_the_shard(shard):
    path, samples = shard
    url = f"pipe:cat '{path}'"
    assert list(iter_tar_samples(url)) == expected(samples, url)
    assert list(iter_tar_samples(url, start=4)) == expected(samples, url, start=4)


def test_pipe_exiting_non_zero_is_a_failure(shard):
    path, samples = shard
    url = f"pipe:cat '{path}'; exit 3"
    sleeps, got = Sleeps(), []
    with pytest.raises(ShardReadError) as info:
        for s in iter_tar_samples(url, retries=2, sleep=sleeps, log_retry=False):
            got.append(s)
    assert got == expected(samples, url)  # each once, though the shard was read three times
    err = info.value
    assert (err.attempts, err.samples_read, sleeps) == (3, 5, [1, 2])
    assert "exited with status 3" in err.error


def test_pipe_output_after_the_tar_is_read_to_its_end(shard):
    """Bytes after the end-of-archive marker, more than a pipe holds (64 KiB): read past, so
    that the command can finish and its status be known (a regression would block: bounded)."""
    path, samples = shard
    url = f"pipe:cat '{path}'; head -c 300000 /dev/zero; exit 4"
    result = {}

    def read():
        try:
            list(iter_tar_samples(url, retries=0))
        except ShardReadError as e:
            result["error"] = e.error

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert result == {"error": "_SourceError: the command exited with status 4"}


def test_pipe_cut_short_by_a_failing_command(shard):
    path, samples = shard
    cut = sample_start(path, 2) + 600
    url = f"pipe:head -c {cut} '{path}'; exit 7"
    got = []
    with pytest.raises(ShardReadError) as info:
        for s in iter_tar_samples(url, retries=1, sleep=Sleeps(), log_retry=False):
            got.append(s)
    assert got == expected(samples, url, stop=samples_within(path, cut))
    assert "exited with status 7" in info.value.error  # the command's failure, not tar's


def test_pipe_abandoned_midway_is_killed(shard, tmp_path):
    path, _ = shard
    pidfile = tmp_path / "pid"
    it = iter_tar_samples(f"pipe:sleep 30 & echo $$ > '{pidfile}'; cat '{path}'; wait")
    t0 = time.perf_counter()
    assert next(it)["__index__"] == 0
    it.close()
    assert time.perf_counter() - t0 < 5
    pgid = int(pidfile.read_text())
    deadline = time.monotonic() + 5  # SIGKILLed children take a moment to finish exiting
    while live_in_group(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert live_in_group(pgid) == []  # the shell, its sleep and (if still running) its cat


def live_in_group(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that are not zombies (Linux /proc)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


# ------------------------------------------------------------------------------ json, URL helpers


def test_read_json_over_http_survives_a_drop(tmp_path):
    index = {"num_samples": 3, "shards": [{"name": "000000.tar", "count": 3}], "format": 2}
    (tmp_path / "index.json").write_text(json.dumps(index))
    sleeps = Sleeps()
    with serve(tmp_path, drop_once={"index.json": 10}) as (base, log):
        assert read_json(base + "index.json", sleep=sleeps) == index
        assert read_json(base + "index.json", sleep=sleeps) == index  # dropped only once
    assert sleeps == [1.0] and [o for _, o in log] == ["200 dropped after 10 bytes", "200", "200"]
    assert read_json(str(tmp_path / "index.json")) == index
    assert read_json(f"pipe:cat '{tmp_path / 'index.json'}'") == index
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_json(str(tmp_path / "bad.json"))
    with serve(tmp_path, status={"index.json": 404}) as (base, _):
        with pytest.raises(ShardReadError, match="HTTP Error 404"):
            read_json(base + "index.json", sleep=sleeps)


def test_join_url(tmp_path):
    assert join_url("http://h:8/data/pack/index.json", "r64/000003.tar") == \
        "http://h:8/data/pack/r64/000003.tar"
    assert join_url("https://h/data/pack/", "000000.tar") == "https://h/data/pack/000000.tar"
    assert join_url("https://h/data/pack", "000000.tar") == "https://h/data/pack/000000.tar"
    assert join_url("https://h/x/index.json?sig=1", "a b.tar") == "https://h/x/a%20b.tar"
    assert join_url(str(tmp_path / "index.json"), "r8/000001.tar") == \
        str(tmp_path / "r8" / "000001.tar")
    assert join_url(str(tmp_path), "000001.tar") == str(tmp_path / "000001.tar")
    assert join_url((tmp_path / "index.json").as_uri(), "r8/000001.tar") == \
        (tmp_path / "r8" / "000001.tar").as_uri()
    with pytest.raises(ValueError, match="pipe: command"):
        join_url("pipe:curl -s http://h/index.json", "000000.tar")
    for bad in ("../secret.tar", "/etc/x.tar", "a//b.tar", "http://evil/x.tar", ""):
        with pytest.raises(ValueError, match="relative path"):
            join_url("http://h/index.json", bad)


def test_is_remote():
    assert all(map(is_remote, ["http://h/a.tar", "HTTPS://h/a.tar", "pipe:cat a.tar"]))
    assert not any(map(is_remote, ["a.tar", "/d/a.tar", "file:///d/a.tar", "pipeline/a.tar"]))
