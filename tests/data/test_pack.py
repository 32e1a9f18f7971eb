"""Tests for scalegan.data.pack and scalegan.data.demo (images -> WebDataset shards)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
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
from scalegan.data.pack import PackError, pack_arrays, pack_folder, to_square_rgb

from conftest import decode_member, wait_for_first_shard

REPO_ROOT = Path(__file__).resolve().parents[2]

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def px(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(img.getpixel(xy))


def close(a, b, tol: int) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


def reopen(img: Image.Image, tmp_path: Path, name: str, **save) -> Image.Image:
    """Save to disk and read back, so the test sees the mode a real file decodes to."""
    path = tmp_path / name
    img.save(path, **save)
    out = Image.open(path)
    out.load()
    return out


def gradient_rgb(seed: int, size=(12, 8)) -> Image.Image:
    """A distinct, non-uniform RGB image per seed (w x h = size)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def read_shards(out: Path) -> list[dict]:
    """The top level's samples: ``__key__``, ``json`` (parsed) and ``image`` (R, R, 3) uint8."""
    import webdataset as wds

    index = json.loads((out / "index.json").read_text())
    urls = [str(out / s["name"]) for s in index["shards"]]
    return [{"__key__": s["__key__"], "json": json.loads(s["json"]),
             "image": decode_member(s, index["resolution"])}
            for s in wds.WebDataset(urls, shardshuffle=False)]


def hash_tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: sha256 of each file, "dir" for each directory."""
    return {
        p.relative_to(root).as_posix(): (
            "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
    }


def check_complete(out: Path, num_samples: int) -> dict:
    """index.json matches the shards of every level in ``out`` (names, counts, sha256); nothing
    else is there."""
    index = json.loads((out / "index.json").read_text())
    assert index["num_samples"] == num_samples
    assert index["levels"][0]["shards"] == index["shards"]
    for level in index["levels"]:
        assert sum(s["count"] for s in level["shards"]) == num_samples
        for shard in level["shards"]:
            data = (out / shard["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert names == {"index.json"} | {s["name"] for lv in index["levels"] for s in lv["shards"]}
    return index


# ---------------------------------------------------------------------------------------------
# Conversion of awkward modes
# ---------------------------------------------------------------------------------------------


def test_grayscale_l_to_rgb(tmp_path):
    img = Image.new("L", (8, 8), 40)
    img.putpixel((7, 7), 200)
    out = to_square_rgb(reopen(img, tmp_path, "l.png"), 8)
    assert out.mode == "RGB" and out.size == (8, 8)
    assert px(out, (0, 0)) == (40, 40, 40)
    assert px(out, (7, 7)) == (200, 200, 200)


def test_la_composited_on_white(tmp_path):
    img = Image.new("LA", (8, 8), (100, 255))
    img.putpixel((0, 0), (100, 0))  # fully transparent -> white
    img.putpixel((1, 0), (0, 128))  # half-transparent black -> mid grey
    src = reopen(img, tmp_path, "la.png")
    assert src.mode == "LA"
    out = to_square_rgb(src, 8)
    assert out.mode == "RGB"
    assert px(out, (0, 0)) == WHITE
    assert close(px(out, (1, 0)), (127, 127, 127), 1)
    assert px(out, (5, 5)) == (100, 100, 100)


def test_rgba_composited_on_white(tmp_path):
    img = Image.new("RGBA", (8, 8), (10, 20, 30, 255))
    img.putpixel((2, 3), (10, 20, 30, 0))
    out = to_square_rgb(reopen(img, tmp_path, "rgba.png"), 8)
    assert px(out, (2, 3)) == WHITE  # not (10, 20, 30), not black
    assert px(out, (0, 0)) == (10, 20, 30)


@pytest.mark.parametrize("transparent", [True, False])
def test_palette_with_and_without_transparency(tmp_path, transparent):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red, 1 blue
    img.putpixel((4, 4), 1)
    save = {"transparency": 1} if transparent else {}
    src = reopen(img, tmp_path, "p.png", **save)
    assert src.mode == "P"
    out = to_square_rgb(src, 8)
    assert out.mode == "RGB"
    assert px(out, (0, 0)) == RED
    assert px(out, (4, 4)) == (WHITE if transparent else BLUE)


def test_cmyk_known_colour(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    assert px(to_square_rgb(cmyk, 8), (3, 3)) == RED
    # A real CMYK JPEG file (lossy, so allow a little slack).
    out = to_square_rgb(reopen(cmyk, tmp_path, "cmyk.jpg", quality=95), 8)
    assert close(px(out, (3, 3)), RED, 6)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 32768], [65535, 257]], dtype=np.uint16).repeat(4, 0).repeat(4, 1)  # 8x8
    src = reopen(Image.fromarray(arr), tmp_path, "g16.png")
    assert src.mode.startswith("I")  # a genuine 16-bit grayscale PNG
    out = to_square_rgb(src, 8)
    assert px(out, (0, 0)) == BLACK
    assert px(out, (7, 7)) == (1, 1, 1)
    assert px(out, (0, 7)) == WHITE  # 65535 -> 255
    mid = px(out, (7, 0))  # 32768 -> ~128; PIL's convert("L") would clip it to 255
    assert close(mid, (128, 128, 128), 1)


@pytest.mark.parametrize("mode", ["I;16B", "I"])
def test_other_sixteen_bit_modes(mode):
    values = np.array([[0, 32768], [65535, 0]], dtype=np.uint16).repeat(2, 0).repeat(2, 1)  # 4x4
    if mode == "I;16B":
        img = Image.frombytes("I;16B", (4, 4), values.astype(">u2").tobytes())
    else:
        img = Image.fromarray(values.astype(np.int32))
    assert img.mode == mode
    out = to_square_rgb(img, 4)
    assert px(out, (0, 3)) == WHITE
    assert close(px(out, (3, 0)), (128, 128, 128), 1)


def test_one_bit(tmp_path):
    img = Image.new("1", (8, 8), 0)
    img.putpixel((5, 2), 1)
    src = reopen(img, tmp_path, "bw.png")
    assert src.mode == "1"
    out = to_square_rgb(src, 8)
    assert out.mode == "RGB"
    assert px(out, (0, 0)) == BLACK
    assert px(out, (5, 2)) == WHITE


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (8, 8), RED)
    img.paste(BLUE, (4, 0, 8, 8))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180
    src = tmp_path / "rot" / "r.png"
    src.parent.mkdir()
    img.save(src, exif=exif)
    summary = pack_folder(src.parent, tmp_path / "out", 8)
    assert summary.num_samples == 1
    got = read_shards(tmp_path / "out")[0]["image"]
    assert tuple(got[4, 1]) == BLUE and tuple(got[4, 6]) == RED


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


def test_crop_keeps_centre():
    img = Image.new("RGB", (48, 16), RED)  # three 16x16 blocks: red | green | blue
    img.paste(GREEN, (16, 0, 32, 16))
    img.paste(BLUE, (32, 0, 48, 16))
    out = to_square_rgb(img, 8, fit="crop")
    assert out.size == (8, 8)
    arr = np.asarray(out).astype(int)
    assert np.abs(arr - np.array(GREEN)).max() <= 1
    # Same for a tall image.
    tall = to_square_rgb(img.transpose(Image.Transpose.ROTATE_90), 8, fit="crop")
    assert np.abs(np.asarray(tall).astype(int) - np.array(GREEN)).max() <= 1


def test_pad_adds_black_borders():
    img = Image.new("RGB", (32, 16), (200, 100, 50))
    out = to_square_rgb(img, 32, fit="pad")
    arr = np.asarray(out)
    assert out.size == (32, 32)
    assert (arr[:8] == 0).all() and (arr[24:] == 0).all()  # 8 black rows above and below
    assert (arr[8:24] == (200, 100, 50)).all()
    small = np.asarray(to_square_rgb(img, 16, fit="pad")).astype(int)
    assert small.shape == (16, 16, 3)
    # After a 2x Lanczos downscale the outermost rows are still near-black, the middle unchanged.
    assert small[0].max() <= 10 and small[15].max() <= 10
    assert np.abs(small[8] - (200, 100, 50)).max() <= 2


def test_upscale_gives_resolution_squared():
    out = to_square_rgb(gradient_rgb(0, size=(5, 7)), 64)
    assert out.size == (64, 64) and out.mode == "RGB"


def test_bad_fit_names_value():
    with pytest.raises(PackError, match="stretch"):
        to_square_rgb(Image.new("RGB", (4, 4)), 4, fit="stretch")


# ---------------------------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------------------------


def test_unreadable_files_are_skipped_and_listed(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    gradient_rgb(1).save(src / "good1.png")
    gradient_rgb(2).save(src / "good2.png")
    noise = np.random.default_rng(0).integers(0, 256, 4000, np.uint8)
    (src / "corrupt.jpg").write_bytes(noise.tobytes())
    full = io.BytesIO()
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
    Image.fromarray(noise).save(full, "PNG")
    (src / "truncated.png").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    (src / "empty.png").write_bytes(b"")

    summary = pack_folder(src, tmp_path / "out", 8)

    bad = {"corrupt.jpg", "truncated.png", "empty.png"}
    assert summary.num_samples == 2
    assert {s["path"] for s in summary.skipped} == bad
    assert all(s["reason"] for s in summary.skipped)
    text = summary.to_text()
    assert "2 samples" in text and "3 skipped" in text
    for name in bad:
        assert name in text
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert {s["path"] for s in index["skipped"]} == bad
    sources = [s["json"]["source"] for s in read_shards(tmp_path / "out")]
    assert sources == ["good1.png", "good2.png"]
    assert capsys.readouterr().out == ""  # quiet unless verbose


def test_all_unreadable_is_an_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"")
    with pytest.raises(PackError, match="a.png"):
        pack_folder(src, tmp_path / "out", 8)
    assert not (tmp_path / "out" / "index.json").exists()


# ---------------------------------------------------------------------------------------------
# Shards, index, determinism
# ---------------------------------------------------------------------------------------------


def make_tree(src: Path) -> list[str]:
    """Seven images in nested folders (mixed extensions/case) plus non-images.

    Returns the image paths relative to ``src`` in sorted order.
    """
    rels = ["b/x/1.png", "a/2.PNG", "a/10.png", "c.bmp", "d.webp", "e/f.JPEG", "g.png"]
    for i, rel in enumerate(rels):
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = {".png": "PNG", ".bmp": "BMP", ".webp": "WEBP", ".jpeg": "JPEG"}[path.suffix.lower()]
        extra = {"lossless": True} if fmt == "WEBP" else {}
        gradient_rgb(10 + i, size=(12 + i, 8)).save(path, format=fmt, **extra)
    (src / "notes.txt").write_text("not an image")
    (src / "a" / "x.gif").write_bytes(b"GIF89a")
    return sorted(rels)


def test_shard_split_index_and_readback(tmp_path):
    src = tmp_path / "src"
    rels = make_tree(src)
    out = tmp_path / "out"
    summary = pack_folder(src, out, 8, shard_size=3)

    assert summary.num_samples == 7 and summary.resolution == 8 and summary.skipped == []
    assert [s["count"] for s in summary.shards] == [3, 3, 1]
    assert [s["name"] for s in summary.shards] == ["000000.tar", "000001.tar", "000002.tar"]
    assert "7 samples in 3 shards at 8x8" in summary.to_text()

    index = json.loads((out / "index.json").read_text())
    assert index["num_samples"] == 7 and index["resolution"] == 8 and index["fit"] == "crop"
    assert index["shards"] == summary.shards
    for shard in index["shards"]:
        assert hashlib.sha256((out / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]

    samples = read_shards(out)
    assert [s["__key__"] for s in samples] == [f"{i:08d}" for i in range(7)]
    assert [s["json"]["source"] for s in samples] == rels
    for rel, sample in zip(rels, samples, strict=True):
        expected = np.asarray(to_square_rgb(Image.open(src / rel), 8))
        assert sample["image"].shape == (8, 8, 3) and sample["image"].dtype == np.uint8
        np.testing.assert_array_equal(sample["image"], expected)


def test_rerun_is_byte_identical(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_tree(src)
    a = pack_folder(src, tmp_path / "a", 8, shard_size=3)
    # Move the clock an hour on so any wall-clock timestamp leaking into the tars would differ.
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600.0)
    b = pack_folder(src, tmp_path / "b", 8, shard_size=3)
    assert a.shards == b.shards
    for shard in a.shards:
        name = shard["name"]
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    index_a, index_b = (tmp_path / d / "index.json" for d in "ab")
    assert index_a.read_bytes() == index_b.read_bytes()


def test_rerun_with_fewer_samples_removes_stale_shards(tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    out = tmp_path / "out"
    pack_folder(src, out, 8, shard_size=2)  # 4 shards
    summary = pack_folder(src, out, 8, shard_size=5)  # 2 shards
    assert sorted(p.name for p in out.iterdir()) == ["000000.tar", "000001.tar", "index.json"]
    assert [s["count"] for s in summary.shards] == [5, 2]
    assert len(read_shards(out)) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no build dir left


def test_verbose_prints(tmp_path, capsys):
    src = tmp_path / "src"
    make_tree(src)
    pack_folder(src, tmp_path / "out", 4, shard_size=4, verbose=True)
    assert "000001.tar" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_missing_src(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(PackError, match="nope"):
        pack_folder(missing, tmp_path / "out", 8)


def test_src_is_a_file(tmp_path):
    f = tmp_path / "file.png"
    gradient_rgb(0).save(f)
    with pytest.raises(PackError, match="file.png"):
        pack_folder(f, tmp_path / "out", 8)


def test_empty_src(tmp_path):
    src = tmp_path / "emptydir"
    (src / "sub").mkdir(parents=True)
    (src / "readme.txt").write_text("hi")
    with pytest.raises(PackError, match="emptydir"):
        pack_folder(src, tmp_path / "out", 8)


@pytest.mark.parametrize("resolution", [100, 0, -8, 2, 8192, 8.0, "64", True])
def test_bad_resolution(tmp_path, resolution):
    src = tmp_path / "src"
    src.mkdir()
    gradient_rgb(0).save(src / "a.png")
    with pytest.raises(PackError, match=repr(resolution).replace(".", r"\.")):
        pack_folder(src, tmp_path / "out", resolution)


def test_bad_fit_and_shard_size(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    gradient_rgb(0).save(src / "a.png")
    with pytest.raises(PackError, match="squash"):
        pack_folder(src, tmp_path / "out", 8, fit="squash")
    with pytest.raises(PackError, match="shard_size"):
        pack_folder(src, tmp_path / "out", 8, shard_size=0)


# ---------------------------------------------------------------------------------------------
# In-memory arrays and the demo dataset
# ---------------------------------------------------------------------------------------------


def test_pack_arrays_dtypes_and_channels(tmp_path):
    gray8 = np.full((6, 6), 50, np.uint8)
    gray16 = np.full((6, 6), 65535, np.uint16)
    flt = np.full((6, 6, 3), 0.5)
    rgba = np.zeros((6, 6, 4), np.uint8)  # fully transparent -> white
    images = [gray8, gray16, flt, rgba]
    summary = pack_arrays(images, tmp_path / "out", 4, fit="pad", names=list("abcd"))
    assert summary.num_samples == 4
    samples = read_shards(tmp_path / "out")
    assert [s["json"]["source"] for s in samples] == list("abcd")
    assert (samples[0]["image"] == 50).all()
    assert (samples[1]["image"] == 255).all()
    assert (np.abs(samples[2]["image"].astype(int) - 128) <= 1).all()
    assert (samples[3]["image"] == 255).all()


@pytest.mark.parametrize(
    "bad, needle",
    [
        (np.zeros((4, 4), np.int64), "int64"),
        (np.full((4, 4), 2.0), "1"),
        (np.zeros((4, 4, 2), np.uint8), r"\(4, 4, 2\)"),
    ],
)
def test_pack_arrays_rejects_bad_arrays(tmp_path, bad, needle):
    out = tmp_path / "out"
    with pytest.raises(PackError, match=needle):
        pack_arrays([np.zeros((4, 4), np.uint8), bad], out, 4)
    # The half-written pack is dropped with its build directory; OUT never appeared.
    assert list(tmp_path.iterdir()) == []


def test_failed_rerun_keeps_previous_pack(tmp_path):
    out = tmp_path / "out"
    pack_arrays([np.zeros((4, 4), np.uint8)] * 3, out, 4)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.png").write_bytes(b"not a png")
    with pytest.raises(PackError, match="broken.png"):
        pack_folder(src, out, 4)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_demo_faces_are_the_first_hundred():
    from skimage.data import lfw_subset

    from scalegan.data.demo import demo_faces

    faces = demo_faces()
    assert faces.shape == (100, 25, 25) and faces.dtype == np.uint8
    np.testing.assert_array_equal(faces, np.rint(lfw_subset()[:100] * 255).astype(np.uint8))


def test_pack_demo(tmp_path):
    from scalegan.data.demo import pack_demo

    summary = pack_demo(tmp_path / "demo")
    assert summary.num_samples == 100 and summary.resolution == 32
    assert [s["count"] for s in summary.shards] == [25, 25, 25, 25]
    samples = read_shards(tmp_path / "demo")
    assert len(samples) == 100 and samples[0]["image"].shape == (32, 32, 3)
    assert samples[7]["json"]["source"] == "lfw_subset/007"


def test_demo_without_skimage_names_the_package(monkeypatch):
    from scalegan.data import demo

    monkeypatch.setitem(sys.modules, "skimage", None)  # makes `import skimage` raise ImportError
    with pytest.raises(ImportError, match="pip install scikit-image"):
        demo.demo_faces()


def _two_class_folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for name, seeds in (("cats", (1, 2)), ("dogs", (3,))):
        (src / name).mkdir(parents=True)
        for seed in seeds:
            gradient_rgb(seed).save(src / name / f"{seed}.png")
    return src


def test_labels_from_class_folders(tmp_path):
    src = _two_class_folder(tmp_path)
    pack_folder(src, tmp_path / "out", 8, labels="dirs")
    metas = [s["json"] for s in read_shards(tmp_path / "out")]
    assert [(m["source"], m["label"]) for m in metas] == [
        ("cats/1.png", 0), ("cats/2.png", 0), ("dogs/3.png", 1)]
    assert json.loads((tmp_path / "out" / "index.json").read_text())["classes"] == ["cats", "dogs"]


def test_labels_from_a_file_class_ids_and_attributes(tmp_path):
    src = _two_class_folder(tmp_path)
    table = tmp_path / "labels.json"
    table.write_text(json.dumps({"cats/1.png": 4, "cats/2.png": 2, "dogs/3.png": 0}))
    pack_folder(src, tmp_path / "ids", 8, labels=table)
    metas = {s["json"]["source"]: s["json"] for s in read_shards(tmp_path / "ids")}
    assert [metas[k]["label"] for k in ("cats/1.png", "cats/2.png", "dogs/3.png")] == [4, 2, 0]
    attributes = {"cats/1.png": [1, 0], "cats/2.png": [0.5, 1], "dogs/3.png": [0, 0]}
    table.write_text(json.dumps(attributes))
    pack_folder(src, tmp_path / "attrs", 8, labels=table)
    metas = {s["json"]["source"]: s["json"] for s in read_shards(tmp_path / "attrs")}
    assert metas["cats/2.png"]["attributes"] == [0.5, 1.0]
    assert metas["dogs/3.png"]["attributes"] == [0.0, 0.0]


@pytest.mark.parametrize("table, match", [
    ({"cats/1.png": 0, "cats/2.png": 0}, r"no entry for image 'dogs/3.png'"),
    ({"cats/1.png": 0, "cats/2.png": "tabby", "dogs/3.png": 1}, r"'cats/2.png' -> 'tabby'"),
    ({"cats/1.png": -1, "cats/2.png": 0, "dogs/3.png": 1}, r"'cats/1.png' -> -1"),
    # one kind of label per pack, and one attribute length
    ({"cats/1.png": 0, "cats/2.png": [1.0], "dogs/3.png": 1},
     r"labels\.json mixes class ids and attribute lists: 'cats/1.png' .*, 'cats/2.png'"),
    ({"cats/1.png": [1, 0], "cats/2.png": 3, "dogs/3.png": 1},
     r"labels\.json mixes class ids and attribute lists: 'cats/1.png' .*, 'cats/2.png'"),
    ({"cats/1.png": [1, 0], "cats/2.png": [1, 0], "dogs/3.png": [1, 0, 1]},
     r"labels\.json: 'dogs/3.png' has 3 attributes but 'cats/1.png' has 2"),
])
def test_bad_labels_file_names_the_image(tmp_path, table, match):
    src = _two_class_folder(tmp_path)
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(table))
    with pytest.raises(PackError, match=match):
        pack_folder(src, tmp_path / "out", 8, labels=path)
    assert not (tmp_path / "out" / "index.json").exists()  # nothing written


def test_labels_dirs_needs_class_folders(tmp_path):
    src = tmp_path / "flat"
    src.mkdir()
    gradient_rgb(0).save(src / "a.png")
    with pytest.raises(PackError, match=r"a.png is not inside a class folder"):
        pack_folder(src, tmp_path / "out", 8, labels="dirs")


# ---------------------------------------------------------------------------------------------
# index.json: channels, labels, attribute_dim
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels, kind, dim", [
    (None, None, None),
    ("dirs", "label", None),
    ({"cats/1.png": 1, "cats/2.png": 0, "dogs/3.png": 5}, "label", None),
    ({"cats/1.png": [1, 0, 2], "cats/2.png": [0.5, 1, 0], "dogs/3.png": [0, 0, 0]},
     "attributes", 3),
])
def test_index_says_channels_and_what_the_labels_are(tmp_path, labels, kind, dim):
    src = _two_class_folder(tmp_path)
    if isinstance(labels, dict):
        (tmp_path / "labels.json").write_text(json.dumps(labels))
        labels = tmp_path / "labels.json"
    pack_folder(src, tmp_path / "out", 8, labels=labels)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["channels"] == 3
    assert index["labels"] == kind  # null without labels
    assert index.get("attribute_dim", "absent") == (dim if dim is not None else "absent")
    assert ("classes" in index) == (labels == "dirs")
    if kind is not None:
        assert all(kind in s["json"] for s in read_shards(tmp_path / "out"))


# ---------------------------------------------------------------------------------------------
# Re-packing into an existing OUT: built beside it, swapped in only when complete
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_repack_failing_midway_leaves_old_pack_byte_identical(tmp_path, monkeypatch, error):
    src = tmp_path / "src"
    make_tree(src)
    out = tmp_path / "out"
    pack_folder(src, out, 8, shard_size=2)  # 4 shards + index.json
    before = hash_tree(out)
    real_encode, calls = pack._encode_levels, []

    def failing_encode(full, levels):
        calls.append(1)
        if len(calls) > 3:  # two shards of 1 are finished, the third is half-written
            raise error
        return real_encode(full, levels)

    monkeypatch.setattr(pack, "_encode_levels", failing_encode)
    with pytest.raises(type(error)):
        pack_folder(src, out, 4, shard_size=1, fit="pad", workers=1)
    assert len(calls) == 4
    assert hash_tree(out) == before
    check_complete(out, 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no build dir left


def test_sigkill_midway_leaves_old_pack_and_next_pack_clears_the_leftover(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(300):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(src / f"{i:03d}.png")
    out = tmp_path / "out"
    pack_arrays([np.full((4, 4), v, np.uint8) for v in (0, 100, 200)], out, 4, shard_size=2)
    before = hash_tree(out)
    # Encoding is slowed down a little so the kill reliably lands in the middle of the pack.
    script = (
        "import sys, time\n"
        "import scalegan.data.pack as pack\n"
        "encode = pack._encode_levels\n"
        "def slow(full, levels):\n"
        "    time.sleep(0.005)\n"
        "    return encode(full, levels)\n"
        "pack._encode_levels = slow\n"
        "pack.pack_folder(sys.argv[1], sys.argv[2], 8, shard_size=10, workers=1)\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen([sys.executable, "-c", script, str(src), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    build = tmp_path / f".out.packing-{proc.pid}"
    try:
        wait_for_first_shard(proc, build, poll=0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert (build / "000000.tar").is_file()  # the killed pack left its build directory
    assert hash_tree(out) == before
    assert json.loads((out / "index.json").read_text())["num_samples"] == 3
    assert [s["json"]["source"] for s in read_shards(out)] == ["0", "1", "2"]

    summary = pack_folder(src, out, 8, shard_size=10)
    assert not build.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    assert summary.num_samples == 300 and len(summary.shards) == 30
    check_complete(out, 300)
    assert len(read_shards(out)) == 300


def test_dead_packers_build_dirs_are_removed_live_ones_kept(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead, live = int(done.stdout), os.getppid()  # the first has exited and been reaped
    leftovers = [f".out.packing-{dead}", f".out.packing-{dead}.old", f".out.packing-{live}",
                 f".other.packing-{dead}"]
    for name in leftovers:
        (tmp_path / name).mkdir()
        (tmp_path / name / "000000.tar").write_bytes(b"partial")
    pack_arrays([np.zeros((4, 4), np.uint8)], tmp_path / "out", 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out", f".out.packing-{live}", f".other.packing-{dead}"])
    assert (tmp_path / f".out.packing-{live}" / "000000.tar").read_bytes() == b"partial"


@pytest.mark.parametrize("foreign", ["notes.txt", "keep.tar", "12345.tar", "sub/", "000009.tar/"])
def test_foreign_entries_in_out_are_refused_before_reading(tmp_path, monkeypatch, foreign):
    src = tmp_path / "src"
    make_tree(src)
    out = tmp_path / "out"
    pack_folder(src, out, 4, shard_size=3)
    name = foreign.rstrip("/")
    if foreign.endswith("/"):
        (out / name).mkdir()
        (out / name / "mine.txt").write_text("keep me")
    else:
        (out / name).write_text("keep me")
    before = hash_tree(out)
    real_load, loads = pack._load_image, []
    monkeypatch.setattr(pack, "_load_image", lambda *a: loads.append(a) or real_load(*a))
    with pytest.raises(PackError, match=rf"{name}.*written by scalegan pack .*or empty"):
        pack_folder(src, out, 8, workers=1)  # one process: the spy sees every read
    assert loads == []  # refused before any image was read
    assert hash_tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_foreign_entries_refused_for_arrays_too(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("zz.txt", "photo.jpg", "index.json"):
        (out / name).write_text("x")
    consumed = []

    def images():
        for i in range(3):
            consumed.append(i)
            yield np.zeros((4, 4), np.uint8)

    with pytest.raises(PackError, match=r"'photo\.jpg' \(and 1 other entry\)"):
        pack_arrays(images(), out, 4)
    assert consumed == []
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "photo.jpg", "zz.txt"]


def test_empty_out_or_old_temp_files_are_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    pack_arrays([np.zeros((4, 4), np.uint8)] * 3, out, 4)
    check_complete(out, 3)
    # temp files that packs building in place inside OUT left when interrupted are ours too
    (out / ".000007.tar.tmp").write_bytes(b"x")
    (out / ".index.json.tmp").write_bytes(b"x")
    pack_arrays([np.zeros((4, 4), np.uint8)] * 2, out, 4)
    check_complete(out, 2)


def test_repack_keeps_out_permissions(tmp_path):
    out = tmp_path / "out"
    pack_arrays([np.zeros((4, 4), np.uint8)], out, 4)
    out.chmod(0o750)
    pack_arrays([np.zeros((4, 4), np.uint8)] * 2, out, 4)
    assert out.stat().st_mode & 0o777 == 0o750


def test_rename_exchange_swaps_and_repack_never_removes_out(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("from a")
    (b / "y").write_text("from b")
    pack._exchange(a, b)  # Linux >= 3.15 on the test machines: the atomic path must work
    assert [p.name for p in a.iterdir()] == ["y"] and [p.name for p in b.iterdir()] == ["x"]

    out = tmp_path / "out"
    pack_arrays([np.zeros((4, 4), np.uint8)], out, 4)
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda *args: renames.append(args) or real_rename(*args))
    pack_arrays([np.full((4, 4), 9, np.uint8)] * 2, out, 4)
    assert renames == []  # one exchange: OUT was never missing
    check_complete(out, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EINVAL])
def test_repack_without_rename_exchange_falls_back_to_renames(tmp_path, monkeypatch, err):
    out = tmp_path / "out"
    pack_arrays([np.zeros((4, 4), np.uint8)] * 3, out, 4)

    def unsupported(a, b):
        raise OSError(err, os.strerror(err), str(a), None, str(b))

    monkeypatch.setattr(pack, "_exchange", unsupported)
    pack_arrays([np.full((4, 4), 200, np.uint8)] * 5, out, 4, shard_size=2)
    check_complete(out, 5)
    assert all((s["image"] == 200).all() for s in read_shards(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------------------------------------
# File names that are not valid UTF-8
# ---------------------------------------------------------------------------------------------

needs_byte_names = pytest.mark.skipif(sys.platform != "linux",
                                      reason="file names that are not UTF-8 need Linux")


@needs_byte_names
def test_non_utf8_file_name_is_packed_with_escaped_source(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    src.mkdir()
    gradient_rgb(1).save(src / "good.png")
    raw_src = os.fsencode(src)
    png = io.BytesIO()
    gradient_rgb(2).save(png, format="PNG")
    with open(os.path.join(raw_src, b"bad\xff.png"), "wb") as f:
        f.write(png.getvalue())
    with open(os.path.join(raw_src, b"worse\xfe.png"), "wb") as f:
        f.write(b"not a png")
    out = tmp_path / "out"
    pack_arrays([np.zeros((4, 4), np.uint8)], out, 4)
    old_index = (out / "index.json").read_bytes()
    seen = []
    real_swap = pack._swap_in

    def swap_spy(new, dest):  # what OUT holds right before the new pack goes in
        seen.append((dest / "index.json").read_bytes())
        return real_swap(new, dest)

    monkeypatch.setattr(pack, "_swap_in", swap_spy)
    table = tmp_path / "labels.json"
    table.write_text(json.dumps({"bad\\xff.png": 1, "good.png": 0, "worse\\xfe.png": 2}))
    summary = pack_folder(src, out, 8, labels=table, verbose=True)

    assert seen == [old_index]
    samples = read_shards(out)
    assert [(s["json"]["source"], s["json"]["label"]) for s in samples] == [
        ("bad\\xff.png", 1), ("good.png", 0)]
    np.testing.assert_array_equal(samples[0]["image"],
                                  np.asarray(to_square_rgb(gradient_rgb(2), 8)))
    assert [s["path"] for s in summary.skipped] == ["worse\\xfe.png"]
    index = check_complete(out, 2)
    assert [s["path"] for s in index["skipped"]] == ["worse\\xfe.png"]
    assert "worse\\xfe.png" in summary.to_text()
    assert "skipped worse\\xfe.png" in capsys.readouterr().out


@needs_byte_names
def test_non_utf8_class_folder_name_is_escaped(tmp_path):
    src = tmp_path / "src"
    (src / "dog").mkdir(parents=True)
    gradient_rgb(1).save(src / "dog" / "1.png")
    cafe = os.path.join(os.fsencode(src), b"caf\xe9")
    os.mkdir(cafe)
    gradient_rgb(2).save(os.fsdecode(os.path.join(cafe, b"2.png")))
    pack_folder(src, tmp_path / "out", 8, labels="dirs")
    index = json.loads((tmp_path / "out" / "index.json").read_text(encoding="utf-8"))
    assert index["classes"] == ["caf\\xe9", "dog"]
    metas = [s["json"] for s in read_shards(tmp_path / "out")]
    assert [(m["source"], m["label"]) for m in metas] == [("caf\\xe9/2.png", 0), ("dog/1.png", 1)]
