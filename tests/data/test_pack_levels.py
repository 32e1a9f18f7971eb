"""Tests for the multi-resolution packs of scalegan.data.pack (index.json format 2): the levels
and their encodings, byte-identical output for any number of workers, interrupting a pool, the
progress bar, and the rR/ level directories in OUT."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import scalegan.data.pack as pack
from scalegan.cli import main
from scalegan.data.pack import PackError, pack_arrays, pack_folder, to_square_rgb

from conftest import decode_member, wait_for_first_shard

REPO_ROOT = Path(__file__).resolve().parents[2]
MEMBERS = {"png": "png", "rgb": "rgb", "jpeg": "jpg"}


# ---------------------------------------------------------------------------------------------
# Helpers: sources, and a reader of the stored levels independent of the packer
# ---------------------------------------------------------------------------------------------


def photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """A smooth but detailed RGB image (w x h = size): coarse noise upscaled bicubically plus a
    diagonal ramp, so box reduces at every factor differ and JPEG errors stay small."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8))
    arr = np.asarray(coarse.resize(size, Image.BICUBIC)).astype(np.int32)
    ramp = (np.add.outer(np.arange(size[1]), np.arange(size[0])) % 64)[..., None]
    return Image.fromarray(np.clip(arr // 2 + ramp * 2, 0, 255).astype(np.uint8))


def make_sources(src: Path, n: int, corrupt: tuple[int, ...] = ()) -> list[str]:
    """``n`` image files of mixed sizes and modes (RGB, L, RGBA), with unreadable files at the
    positions ``corrupt`` (in sorted order). Returns the readable names, sorted."""
    src.mkdir(parents=True)
    good = []
    for i in range(n):
        name = f"{i:04d}.png"
        if i in corrupt:
            (src / name).write_bytes(b"not an image %d" % i)
            continue
        img = photo(i, (40 + i % 5 * 7, 36 + i % 3 * 11))
        img = img.convert(("RGB", "L", "RGBA")[i % 3])
        img.save(src / name)
        good.append(name)
    return good


def read_level(out: Path, level: dict) -> list[list[dict]]:
    """Per shard of ``level``, its raw samples in tar order (members as bytes)."""
    import webdataset as wds

    return [list(wds.WebDataset(str(out / s["name"]), shardshuffle=False))
            for s in level["shards"]]


def load_index(out: Path) -> dict:
    return json.loads((out / "index.json").read_text())


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Levels: each one is full.reduce(packed // R) of the full-size image
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["png", "rgb", "auto"])
def test_lossless_levels_are_pil_reduce_of_the_full_image_bit_for_bit(tmp_path, encoding):
    names = make_sources(tmp_path / "src", 6)
    out = tmp_path / "out"
    pack_folder(tmp_path / "src", out, 32, min_resolution=4, encoding=encoding, shard_size=4,
                workers=1)
    index = load_index(out)
    assert [lv["resolution"] for lv in index["levels"]] == [32, 16, 8, 4]
    fulls = [to_square_rgb(Image.open(tmp_path / "src" / n), 32) for n in names]
    halving_differs = False
    for level in index["levels"]:
        r = level["resolution"]
        assert level["encoding"] == ("rgb" if encoding == "auto" else encoding)
        samples = [s for shard in read_level(out, level) for s in shard]
        assert [json.loads(s["json"])["source"] for s in samples] == names
        for full, sample in zip(fulls, samples, strict=True):
            assert MEMBERS[level["encoding"]] in sample
            expected = np.asarray(full.reduce(32 // r))  # PIL directly: one box reduce
            np.testing.assert_array_equal(decode_member(sample, r), expected)
            halved = full
            while halved.size[0] > r:
                halved = halved.reduce(2)
            halving_differs |= not np.array_equal(np.asarray(halved), expected)
    assert halving_differs  # the sources tell one reduce from repeated halving


def test_jpeg_levels_are_close_to_the_reduce_and_record_the_quality(tmp_path):
    names = make_sources(tmp_path / "src", 5)
    sizes = {}
    for quality in (90, 30):
        out = tmp_path / f"q{quality}"
        pack_folder(tmp_path / "src", out, 32, min_resolution=8, encoding="jpeg",
                    jpeg_quality=quality, workers=1)
        index = load_index(out)
        assert [(lv["resolution"], lv["encoding"], lv["jpeg_quality"])
                for lv in index["levels"]] == [(32, "jpeg", quality), (16, "jpeg", quality),
                                               (8, "jpeg", quality)]
        sizes[quality] = sum(len(s["jpg"]) for lv in index["levels"]
                             for shard in read_level(out, lv) for s in shard)
    fulls = [to_square_rgb(Image.open(tmp_path / "src" / n), 32) for n in names]
    for level in load_index(tmp_path / "q90")["levels"]:
        r = level["resolution"]
        samples = [s for shard in read_level(tmp_path / "q90", level) for s in shard]
        for full, sample in zip(fulls, samples, strict=True):
            assert "jpg" in sample and sample["jpg"][:2] == b"\xff\xd8"
            expected = np.asarray(full.reduce(32 // r)).astype(int)
            err = np.abs(decode_member(sample, r).astype(int) - expected)
            # quality 90, no chroma subsampling, on these sources: measured mean abs error
            # 1.4-6.0 (larger at smaller levels, which hold more detail per pixel), max 7-24
            assert err.mean() <= 8.0 and err.max() <= 40, (r, err.mean(), err.max())
            # and well below what the reduce shifted by one pixel differs by (9.4-33)
            shifted = np.abs(np.roll(expected, 1, axis=1) - expected).mean()
            assert err.mean() < 0.5 * shifted, (r, err.mean(), shifted)
    assert sizes[30] < sizes[90]  # the quality reaches the encoder


def test_index_levels_shards_and_bytes_match_the_files(tmp_path):
    make_sources(tmp_path / "src", 7, corrupt=(3,))
    out = tmp_path / "out"
    summary = pack_folder(tmp_path / "src", out, 16, min_resolution=4, shard_size=4, workers=1)
    index = load_index(out)
    assert index["format"] == 2 and index["num_samples"] == 6 and index["resolution"] == 16
    assert [s["path"] for s in index["skipped"]] == ["0003.png"]
    assert summary.levels == index["levels"]
    assert index["levels"][0]["shards"] == index["shards"]
    assert [s["name"] for s in index["shards"]] == ["000000.tar", "000001.tar"]
    files = set()
    for level in index["levels"]:
        r = level["resolution"]
        prefix = "" if r == 16 else f"r{r}/"
        assert [s["name"] for s in level["shards"]] == [f"{prefix}000000.tar",
                                                        f"{prefix}000001.tar"]
        assert [s["count"] for s in level["shards"]] == [4, 2]
        for shard in level["shards"]:
            data = (out / shard["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        assert level["bytes"] == sum((out / s["name"]).stat().st_size for s in level["shards"])
        files |= {s["name"] for s in level["shards"]}
    assert set(tree_bytes(out)) == files | {"index.json"}
    assert "levels: 16 rgb" in summary.to_text()


def test_every_level_holds_the_same_keys_json_and_order(tmp_path):
    src = tmp_path / "src"
    make_sources(src, 9, corrupt=(0, 5))
    labels = {f"{i:04d}.png": i % 4 for i in range(9)}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    out = tmp_path / "out"
    pack_folder(src, out, 32, min_resolution=8, shard_size=3, labels=tmp_path / "labels.json",
                workers=1)
    levels = load_index(out)["levels"]
    top = [[(s["__key__"], s["json"]) for s in shard] for shard in read_level(out, levels[0])]
    assert [k for shard in top for k, _ in shard] == [f"{i:08d}" for i in range(7)]
    assert json.loads(top[0][0][1]) == {"source": "0001.png", "label": 1}
    for level in levels[1:]:
        shards = read_level(out, level)
        assert [[(s["__key__"], s["json"]) for s in shard] for shard in shards] == top
        assert all(set(s) == {"__key__", "__url__", "__local_path__", "json", "rgb"}
                   for shard in shards for s in shard)


def test_auto_stores_rgb_up_to_256_and_png_above(tmp_path):
    out = tmp_path / "out"
    arrays = [np.asarray(photo(i, (70, 60))) for i in range(2)]
    pack_arrays(arrays, out, 512, min_resolution=128)
    levels = load_index(out)["levels"]
    assert [(lv["resolution"], lv["encoding"]) for lv in levels] == [
        (512, "png"), (256, "rgb"), (128, "rgb")]
    assert pack.AUTO_RGB_MAX_RESOLUTION == 256
    full = to_square_rgb(Image.fromarray(arrays[1]), 512)
    for level in levels:
        sample = read_level(out, level)[0][1]
        r = level["resolution"]
        np.testing.assert_array_equal(decode_member(sample, r), np.asarray(full.reduce(512 // r)))


def test_min_resolution_equal_to_resolution_is_one_level(tmp_path):
    out = tmp_path / "out"
    pack_arrays([np.zeros((5, 5), np.uint8)] * 3, out, 16, min_resolution=16, encoding="png")
    index = load_index(out)
    assert index["format"] == 2
    assert [(lv["resolution"], lv["encoding"]) for lv in index["levels"]] == [(16, "png")]
    assert sorted(p.name for p in out.iterdir()) == ["000000.tar", "index.json"]


def test_default_min_resolution_is_8_or_the_resolution(tmp_path):
    pack_arrays([np.zeros((5, 5), np.uint8)], tmp_path / "a", 64)
    assert [lv["resolution"] for lv in load_index(tmp_path / "a")["levels"]] == [64, 32, 16, 8]
    pack_arrays([np.zeros((5, 5), np.uint8)], tmp_path / "b", 4)
    assert [lv["resolution"] for lv in load_index(tmp_path / "b")["levels"]] == [4]


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_resolution", [3, 6, 2, 0, -8, 64, 8.0, "8", True])
def test_bad_min_resolution_names_the_value(tmp_path, min_resolution):
    (tmp_path / "src").mkdir()
    photo(0, (8, 8)).save(tmp_path / "src" / "a.png")
    match = rf"min_resolution must be a power of two from 4 to the resolution \(32\), got " \
            rf"{repr(min_resolution).replace('.', r'.')}"
    with pytest.raises(PackError, match=match):
        pack_folder(tmp_path / "src", tmp_path / "out", 32, min_resolution=min_resolution)
    with pytest.raises(PackError, match=match):
        pack_arrays([np.zeros((4, 4), np.uint8)], tmp_path / "out", 32,
                    min_resolution=min_resolution)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written


@pytest.mark.parametrize("kwargs, match", [
    ({"encoding": "webp"}, r"encoding must be one of auto, png, rgb, jpeg, got 'webp'"),
    ({"jpeg_quality": 0}, r"jpeg_quality must be an integer from 1 to 100, got 0"),
    ({"jpeg_quality": 101}, r"jpeg_quality .* got 101"),
    ({"workers": 0}, r"workers must be an integer >= 1, got 0"),
    ({"workers": 1.5}, r"workers .* got 1\.5"),
])
def test_bad_options_name_the_value(tmp_path, kwargs, match):
    with pytest.raises(PackError, match=match):
        pack_arrays([np.zeros((4, 4), np.uint8)], tmp_path / "out", 16, **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options, message", [
    (["--min-resolution", "12"],
     "min_resolution must be a power of two from 4 to the resolution (32), got 12"),
    (["--jpeg-quality", "80"], "--jpeg-quality 80 applies to --encoding jpeg only (got "
                               "--encoding auto)"),
])
def test_cli_bad_level_options_exit_2(tmp_path, capsys, options, message):
    (tmp_path / "src").mkdir()
    photo(0, (8, 8)).save(tmp_path / "src" / "a.png")
    code = main(["pack", str(tmp_path / "src"), str(tmp_path / "out"), "--resolution", "32",
                 *options])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Workers: byte-identical output, same skips and errors, Ctrl-C kills the pool
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def pools(monkeypatch):
    """The start methods of the process pools created (via multiprocessing.get_context)."""
    created = []
    real = multiprocessing.get_context

    def spy(method=None):
        created.append(method)
        return real(method)

    monkeypatch.setattr(pack.multiprocessing, "get_context", spy)
    return created


@pytest.mark.parametrize("encoding", ["auto", "jpeg"])
def test_one_and_two_workers_write_byte_identical_packs(tmp_path, pools, encoding):
    src = tmp_path / "src"
    make_sources(src, 40, corrupt=(7, 33))
    one = pack_folder(src, tmp_path / "one", 64, min_resolution=8, shard_size=9, workers=1,
                      encoding=encoding)
    assert pools == []  # one worker: no pool
    two = pack_folder(src, tmp_path / "two", 64, min_resolution=8, shard_size=9, workers=2,
                      encoding=encoding)
    assert pools == ["spawn"]
    assert one.skipped == two.skipped and [s["path"] for s in one.skipped] == [
        "0007.png", "0033.png"]
    assert load_index(tmp_path / "one")["levels"] == load_index(tmp_path / "two")["levels"]
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")  # index.json included
    assert len(tree_bytes(tmp_path / "one")) == 1 + 4 * 5  # 4 levels of 5 shards


def test_cli_workers_1_and_2_write_byte_identical_shards(tmp_path, capsys):
    src = tmp_path / "src"
    make_sources(src, 36, corrupt=(4,))
    for n in ("1", "2"):
        assert main(["pack", str(src), str(tmp_path / f"w{n}"), "--resolution", "32",
                     "--shard-size", "10", "--workers", n]) == 0
    printed = capsys.readouterr().out
    assert printed.count("35 samples in 4 shards at 32x32, 1 skipped") == 2
    levels = [load_index(tmp_path / f"w{n}")["levels"] for n in "12"]
    sha = [[(lv["resolution"], [s["sha256"] for s in lv["shards"]]) for lv in ls] for ls in levels]
    assert sha[0] == sha[1] and [r for r, _ in sha[0]] == [32, 16, 8]
    assert tree_bytes(tmp_path / "w1") == tree_bytes(tmp_path / "w2")


def test_bad_array_in_a_worker_raises_the_same_error(tmp_path, pools):
    arrays = [np.full((6, 6), i, np.uint8) for i in range(40)]
    arrays[25] = np.zeros((6, 6, 2), np.uint8)
    messages = []
    for workers in (1, 2):
        with pytest.raises(PackError) as info:
            pack_arrays(arrays, tmp_path / f"out{workers}", 8, workers=workers)
        messages.append(str(info.value))
    assert pools == ["spawn"]
    assert messages[0] == messages[1] == (
        "image 25: expected shape HxW, HxWx3 or HxWx4, got (6, 6, 2)")
    assert list(tmp_path.iterdir()) == []  # no OUT, no build directory


@pytest.mark.parametrize("num_names, match", [
    (19, "names has 19 entries but there are more images"),
    (21, "names has 21 entries but there were 20 images"),
])
def test_names_that_do_not_match_the_images_are_refused_with_any_workers(tmp_path, num_names,
                                                                         match):
    arrays = (np.full((4, 4), i, np.uint8) for i in range(20))  # no len(): counted as read
    for workers in (1, 2):
        with pytest.raises(PackError, match=match):
            pack_arrays(arrays, tmp_path / "out", 4, workers=workers,
                        names=[f"n{i}" for i in range(num_names)])
        arrays = (np.full((4, 4), i, np.uint8) for i in range(20))
    assert list(tmp_path.iterdir()) == []


def test_cli_passes_level_options_to_the_demo_sets(tmp_path, capsys):
    assert main(["pack", "demo", str(tmp_path / "faces"), "--encoding", "png",
                 "--min-resolution", "16"]) == 0
    assert "levels: 32 png" in capsys.readouterr().out
    levels = load_index(tmp_path / "faces")["levels"]
    assert [(lv["resolution"], lv["encoding"]) for lv in levels] == [(32, "png"), (16, "png")]


def test_interrupt_kills_the_pool_and_leaves_out_untouched(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_sources(src, 60)
    out = tmp_path / "out"
    pack_arrays([np.zeros((4, 4), np.uint8)] * 3, out, 8)
    before = tree_bytes(out)
    real_write, written, children = pack._ShardSink.write, [], []

    def interrupted_write(self, meta, image):
        written.append(1)
        if len(written) == 40:  # 10 samples in (4 levels each)
            children.extend(p.pid for p in multiprocessing.active_children())
            raise KeyboardInterrupt
        return real_write(self, meta, image)

    monkeypatch.setattr(pack._ShardSink, "write", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        pack_folder(src, out, 32, shard_size=4, workers=2)
    assert len(children) >= 2  # the pool's workers were running
    for pid in children:  # terminated and reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no build directory


def _live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies (from /proc)."""
    live = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(entry))
    return live


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_ctrl_c_on_the_cli_stops_workers_and_leaves_out_untouched(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(200):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), np.uint8)).save(src / f"{i:03d}.png")
    out = tmp_path / "out"
    pack_arrays([np.zeros((4, 4), np.uint8)] * 3, out, 8)
    before = tree_bytes(out)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", ""))
                                        if p)
    # PNG at 512 and every level keeps the two workers busy for ~8 s in all
    proc = subprocess.Popen(
        [sys.executable, "-m", "scalegan.cli", "pack", str(src), str(out), "--resolution", "512",
         "--encoding", "png", "--shard-size", "5", "--workers", "2", "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        # as from a terminal: a shell's background job (CI started with `&`) inherits SIGINT
        # ignored, and then Python installs no KeyboardInterrupt handler at all
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    build = tmp_path / f".out.packing-{proc.pid}"
    try:
        wait_for_first_shard(proc, build)
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C: the whole process group
        interrupted = time.monotonic()
        _, err = proc.communicate(timeout=60)
        stopped_after = time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err.decode(errors="replace")
    assert "scalegan: interrupted" in err.decode()
    # promptly, without packing the rest (~8 s for the whole pack here; measured 0.25 s)
    assert stopped_after < 4.0
    deadline = time.monotonic() + 10
    while _live_group_members(proc.pid):  # workers and helpers gone, not merely orphaned
        assert time.monotonic() < deadline, _live_group_members(proc.pid)
        time.sleep(0.05)
    assert tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


_BIG_RESULT_JOB = """
def job(size):
    return b"x" * size  # one worker result far larger than a pipe's buffer
"""

_STOP_MID_MESSAGE = """
import pathlib, sys
from scalegan.data.pack import _ordered_map
import bigjob

def bytes_read():
    return int(pathlib.Path("/proc/self/io").read_text().split("rchar:")[1].split()[0])

if __name__ == "__main__":
    size = int(sys.argv[1])
    start = bytes_read()
    try:
        with _ordered_map(bigjob.job, [size] * 32, 2, 32):
            while bytes_read() - start < size // 4:  # this process is reading a result
                pass
            received = bytes_read() - start
            raise RuntimeError("stop")
    except RuntimeError:
        print("stopped", received, flush=True)
"""


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="reads /proc/self/io (Linux)")
def test_workers_killed_while_sending_a_result_do_not_hang_the_exit(tmp_path):
    # A worker terminated in the middle of sending its result leaves the executor's manager thread
    # blocked for ever on the rest of that message, and interpreter exit waits on that thread:
    # the pack printed "interrupted" and never ended. Stop the pool while a 64 MB result is
    # being received (its first quarter read) and require the process to exit at once.
    (tmp_path / "bigjob.py").write_text(_BIG_RESULT_JOB)
    (tmp_path / "driver.py").write_text(_STOP_MID_MESSAGE)
    size = 64 << 20
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), str(tmp_path),
                                                    env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(size)], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")
    word, received = out.decode().split()
    assert word == "stopped"
    assert size // 4 <= int(received) < size  # stopped in the middle of the message
    assert _live_group_members(proc.pid) == []


# ---------------------------------------------------------------------------------------------
# Progress bar
# ---------------------------------------------------------------------------------------------


def test_progress_bar_counts_images_and_skips(tmp_path, capsys):
    make_sources(tmp_path / "src", 6, corrupt=(1, 4))
    pack_folder(tmp_path / "src", tmp_path / "quiet", 16, workers=1, progress=False)
    assert capsys.readouterr().err == ""
    pack_folder(tmp_path / "src", tmp_path / "out", 16, workers=1, progress=True)
    captured = capsys.readouterr()
    final = captured.err.replace("\r", "\n").strip().splitlines()[-1]
    assert "6/6" in final and "img/s" in final and "skipped=2" in final, final
    assert captured.out == ""


# ---------------------------------------------------------------------------------------------
# OUT: rR/ directories of a previous pack are ours, anything else in them is not
# ---------------------------------------------------------------------------------------------


def test_repack_replaces_level_directories(tmp_path):
    out = tmp_path / "out"
    pack_arrays([np.zeros((5, 5), np.uint8)] * 3, out, 32, min_resolution=4)
    assert sorted(p.name for p in out.iterdir()) == [
        "000000.tar", "index.json", "r16", "r4", "r8"]
    pack_arrays([np.zeros((5, 5), np.uint8)] * 2, out, 16)
    assert sorted(p.name for p in out.iterdir()) == ["000000.tar", "index.json", "r8"]
    assert [lv["resolution"] for lv in load_index(out)["levels"]] == [16, 8]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("foreign", ["r8/notes.txt", "r8/sub/", "r8/000000.tar/", "r8/x.tar"])
def test_foreign_entry_in_a_level_directory_is_refused(tmp_path, monkeypatch, foreign):
    make_sources(tmp_path / "src", 3)
    out = tmp_path / "out"
    pack_folder(tmp_path / "src", out, 16, shard_size=2, workers=1)
    name = foreign.rstrip("/")
    if foreign.endswith("/"):
        if (out / name).exists():
            (out / name).unlink()
        (out / name).mkdir()
    else:
        (out / name).write_text("keep me")
    before = tree_bytes(out)
    real_load, loads = pack._load_image, []
    monkeypatch.setattr(pack, "_load_image", lambda *a: loads.append(a) or real_load(*a))
    with pytest.raises(PackError, match=rf"holds '{name}'.*written by scalegan pack"):
        pack_folder(tmp_path / "src", out, 16, workers=1)
    assert loads == []  # refused before any image was read
    assert tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


@pytest.mark.parametrize("entry", ["r8", "rx/", "r08/"])
def test_entries_that_only_look_like_level_directories_are_refused(tmp_path, entry):
    out = tmp_path / "out"
    pack_arrays([np.zeros((4, 4), np.uint8)], out, 4)
    name = entry.rstrip("/")
    if entry.endswith("/"):
        (out / name).mkdir()
        (out / name / "000000.tar").write_bytes(b"x")
    else:
        (out / name).write_text("a file, not a level directory")
    with pytest.raises(PackError, match=rf"holds '{name}'"):
        pack_arrays([np.zeros((4, 4), np.uint8)], out, 4)
