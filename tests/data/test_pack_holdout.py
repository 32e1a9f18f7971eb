"""Tests for ``scalegan pack --holdout N``: the held-out pack in OUT/holdout, chosen by the SHA-256
of the source names, and ``scalegan.data.holdout.holdout_shards``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import scalegan.data.pack as pack
from scalegan.cli import main
from scalegan.data.demo import pack_demo
from scalegan.data.holdout import count_or_fraction, held_out, holdout_shards
from scalegan.data.pack import PackError, pack_arrays, pack_folder
from scalegan.data.pipeline import check_pack, decode_sample, open_shards
from scalegan.data.shards import iter_tar_samples

DEMO_NAMES = [f"lfw_subset/{i:03d}" for i in range(100)]


def smallest_hashes(names: list[str], count: int) -> set[str]:
    """The reference choice: the ``count`` names with the smallest hex SHA-256 of their bytes."""
    return set(sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())[:count])


def read_pack(directory: Path, resolution: int) -> list[tuple[str, str, bytes]]:
    """(``__key__``, source, pixel bytes) per sample of the level stored at ``resolution``, read
    as training reads it: ``open_shards`` on the directory, the project's tar reader and
    decoder."""
    level = open_shards(str(directory)).level_for(resolution)
    assert level.resolution == resolution
    samples = []
    for url in level.urls:
        for sample in iter_tar_samples(url):
            image = decode_sample(sample, resolution)
            assert image is not None and image.shape == (resolution, resolution, 3)
            samples.append((sample["__key__"], json.loads(sample["json"])["source"],
                            image.tobytes()))
    return samples


def tree_bytes(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root``: the bytes of each file, None for each directory."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*"))}


def load_index(directory: Path) -> dict:
    return json.loads((directory / "index.json").read_text())


@pytest.fixture(scope="module")
def unsplit(tmp_path_factory) -> Path:
    """The 100 demo faces packed at 32 without a held-out set: the reference."""
    out = tmp_path_factory.mktemp("unsplit") / "faces"
    pack_demo(out, resolution=32)
    return out


# ---------------------------------------------------------------------------------------------
# The split: 80 + 20 demo faces, disjoint, together the unsplit pack
# ---------------------------------------------------------------------------------------------


def test_cli_demo_holdout_splits_the_faces_80_20(tmp_path, capsys, unsplit):
    out = tmp_path / "faces"
    assert main(["pack", "demo", str(out), "--resolution", "32", "--holdout", "20"]) == 0
    printed = capsys.readouterr().out
    assert f"80 samples in 4 shards at 32x32, 0 skipped -> {out}" in printed
    assert f"+ 20 held out in 1 shard -> {out / 'holdout'}" in printed

    index, held_index = load_index(out), load_index(out / "holdout")
    assert index["num_samples"] == 80 and index["holdout"] == {"dir": "holdout",
                                                               "num_samples": 20}
    assert held_index["num_samples"] == 20 and held_index["holdout_of"] == ".."
    assert "holdout" not in held_index
    for key in ("resolution", "fit", "channels", "labels", "format"):
        assert held_index[key] == index[key], key
    assert ([(lv["resolution"], lv["encoding"]) for lv in held_index["levels"]]
            == [(lv["resolution"], lv["encoding"]) for lv in index["levels"]]
            == [(32, "rgb"), (16, "rgb"), (8, "rgb")])
    for directory in (out, out / "holdout"):  # the shards index.json lists, and nothing else
        listed = {"index.json"} | {s["name"] for lv in load_index(directory)["levels"]
                                   for s in lv["shards"]}
        files = {p.relative_to(directory).as_posix() for p in directory.rglob("*")
                 if p.is_file()}
        if directory == out:
            files = {f for f in files if not f.startswith("holdout/")}
        assert files == listed

    train, held, whole = (read_pack(d, 32) for d in (out, out / "holdout", unsplit))
    assert len(train) == 80 and len(held) == 20 and len(whole) == 100
    assert len({pixels for _, _, pixels in whole}) == 100  # the faces differ from each other
    assert {pixels for *_, pixels in train}.isdisjoint(pixels for *_, pixels in held)
    # together exactly the unsplit pack, each face under its own source name
    assert sorted((s, p) for _, s, p in train + held) == sorted((s, p) for _, s, p in whole)
    assert {s for _, s, _ in held} == smallest_hashes(DEMO_NAMES, 20)
    # each pack in source order, keyed from 00000000
    for samples in (train, held):
        assert [k for k, _, _ in samples] == [f"{i:08d}" for i in range(len(samples))]
        assert [s for _, s, _ in samples] == sorted(s for _, s, _ in samples)
    # a smaller level holds the same faces, reduced
    whole16 = {s: p for _, s, p in read_pack(unsplit, 16)}
    assert {s: p for _, s, p in read_pack(out / "holdout", 16)} == {
        s: whole16[s] for _, s, _ in held}


def test_both_packs_open_and_check_for_training(tmp_path):
    out = tmp_path / "faces"
    summary = pack_demo(out, resolution=32, holdout=20, min_resolution=32)
    assert summary.num_holdout == 20 and summary.num_samples == 80
    assert summary.holdout.out_dir == str(out / "holdout")
    for directory, count in ((out, 80), (out / "holdout", 20)):
        check_pack(str(directory), 32)
        shard_set = open_shards(str(directory))
        assert sum(1 for url in shard_set.urls for _ in iter_tar_samples(url)) == count
        assert sum(s["count"] for s in load_index(directory)["shards"]) == count


def test_same_holdout_for_one_and_two_workers_and_for_the_fraction(tmp_path, capsys):
    runs = {"w1": ["--holdout", "20", "--workers", "1"],
            "w2": ["--holdout", "20", "--workers", "2"],
            "fraction": ["--holdout", "0.2", "--workers", "1"]}
    for name, options in runs.items():
        assert main(["pack", "demo", str(tmp_path / name), "--resolution", "32",
                     "--min-resolution", "16", *options]) == 0
    assert capsys.readouterr().out.count("+ 20 held out in 1 shard") == 3
    trees = [tree_bytes(tmp_path / name) for name in runs]
    assert trees[0] == trees[1] == trees[2]
    assert "holdout/index.json" in trees[0] and "holdout/r16/000000.tar" in trees[0]


# ---------------------------------------------------------------------------------------------
# Folders: the choice follows the names' hashes, not the order of the files
# ---------------------------------------------------------------------------------------------


def shuffled_folder(src: Path, count: int, seed: int = 0) -> dict[str, tuple[int, int, int]]:
    """``count`` solid-colour PNGs under shuffled, nested names; {relative path: colour}."""
    rng = np.random.default_rng(seed)
    colours = {}
    for i, n in enumerate(rng.permutation(1000)[:count]):
        rel = f"{'ab'[i % 2]}/img_{n:03d}.png"
        colour = (int(n % 256), (37 * i) % 256, 255 - i)
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 6), colour).save(src / rel)
        colours[rel] = colour
    return colours


def test_folder_holdout_is_the_smallest_hashes_of_the_relative_paths(tmp_path):
    src = tmp_path / "src"
    colours = shuffled_folder(src, 12)
    out = tmp_path / "out"
    summary = pack_folder(src, out, 8, holdout=0.3, workers=1, min_resolution=8)
    expected = smallest_hashes(list(colours), 4)  # round(0.3 * 12) = round(3.6) = 4
    assert summary.num_holdout == 4 and summary.num_samples == 8
    for directory, names in ((out / "holdout", expected), (out, set(colours) - expected)):
        samples = read_pack(directory, 8)
        assert [s for _, s, _ in samples] == sorted(names)
        for _, source, pixels in samples:  # each sample holds its own file's colour
            image = np.frombuffer(pixels, np.uint8).reshape(8, 8, 3)
            assert (image == colours[source]).all(), source


def test_unreadable_held_out_file_makes_the_holdout_smaller(tmp_path, capsys):
    src = tmp_path / "src"
    colours = shuffled_folder(src, 10, seed=1)
    chosen = sorted(smallest_hashes(list(colours), 3))
    (src / chosen[1]).write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["pack", str(src), str(out), "--resolution", "8", "--holdout", "3",
                 "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"7 samples in 1 shard at 8x8, 0 skipped -> {out}" in printed
    assert "+ 2 held out in 1 shard" in printed and "(1 of the 3 chosen unreadable)" in printed
    assert f"skipped {chosen[1]} (held out): " in printed
    assert [s for _, s, _ in read_pack(out / "holdout", 8)] == [chosen[0], chosen[2]]
    assert [s["path"] for s in load_index(out / "holdout")["skipped"]] == [chosen[1]]
    assert load_index(out)["skipped"] == [] and load_index(out)["holdout"]["num_samples"] == 2


def test_no_readable_held_out_file_is_an_error(tmp_path):
    src = tmp_path / "src"
    colours = shuffled_folder(src, 5, seed=2)
    (chosen,) = smallest_hashes(list(colours), 1)
    (src / chosen).write_bytes(b"broken")
    with pytest.raises(PackError, match=rf"--holdout: none of the 1 image chosen .*{chosen}"):
        pack_folder(src, tmp_path / "out", 8, holdout=1, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_fraction_rounds_to_at_least_one(tmp_path):
    images = [np.full((4, 4), 20 * i, np.uint8) for i in range(10)]
    summary = pack_arrays(images, tmp_path / "out", 4, holdout=0.01)
    assert summary.num_holdout == 1 and summary.num_samples == 9
    # default names are the indexes as strings
    assert [s for _, s, _ in read_pack(tmp_path / "out" / "holdout", 4)] == sorted(
        smallest_hashes([str(i) for i in range(10)], 1))


# ---------------------------------------------------------------------------------------------
# Bad values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, message", [
    ("0", "--holdout 0: a count of images must be >= 1"),
    ("-1", "--holdout -1: a count of images must be >= 1"),
    ("100", "--holdout 100 holds out 100 of the 100 images, leaving none to train on"),
    ("1.5", "--holdout 1.5: give a count of images (an integer >= 1) or a fraction in (0, 1)"),
    ("0.999", "--holdout 0.999 holds out 100 of the 100 images"),
])
def test_cli_bad_holdout_exits_2_naming_the_value(tmp_path, capsys, value, message):
    assert main(["pack", "demo", str(tmp_path / "out"), "--holdout", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scalegan: error: ") and message in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [0, 4, 7, 1.0, 0.0, -0.5, float("nan"), True, "2"])
def test_library_bad_holdout_raises_before_reading(tmp_path, monkeypatch, value):
    src = tmp_path / "src"
    shuffled_folder(src, 4)
    loads = []
    monkeypatch.setattr(pack, "_load_image", lambda *a: loads.append(a))
    with pytest.raises(PackError, match=r"^--holdout "):
        pack_folder(src, tmp_path / "out", 8, holdout=value, workers=1)
    assert loads == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_cli_holdout_that_is_not_a_number_and_built_in_splits(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["pack", "demo", str(tmp_path / "out"), "--holdout", "some"])
    assert info.value.code == 2
    assert "argument --holdout: invalid count_or_fraction value: 'some'" in (
        capsys.readouterr().err)
    assert main(["pack", "demo-split", str(tmp_path / "out"), "--holdout", "5"]) == 2
    assert "--holdout applies to an image folder or 'demo'; demo-split" in (
        capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_count_or_fraction_parses_counts_and_fractions():
    assert count_or_fraction("20") == 20 and isinstance(count_or_fraction("20"), int)
    assert count_or_fraction("0.2") == 0.2 and isinstance(count_or_fraction("0.2"), float)
    with pytest.raises(ValueError):
        count_or_fraction("a fifth")


def test_duplicate_names_cannot_be_split_by_name(tmp_path):
    images = [np.zeros((4, 4), np.uint8)] * 3
    with pytest.raises(PackError, match=r"--holdout chooses .* 'x' names more than one image"):
        pack_arrays(images, tmp_path / "out", 4, names=["x", "y", "x"], holdout=1)
    with pytest.raises(PackError, match=r"names has 2 entries for 3 images"):
        pack_arrays(images, tmp_path / "out", 4, names=["x", "y"], holdout=1)
    assert list(tmp_path.iterdir()) == []


def test_held_out_does_not_depend_on_the_order():
    names = [f"n{i}" for i in range(30)]
    assert held_out(names, 7) == held_out(names[::-1], 7) == smallest_hashes(names, 7)


# ---------------------------------------------------------------------------------------------
# Repacking: the held-out set is ours, foreign entries in it are not
# ---------------------------------------------------------------------------------------------


def small_pack(out: Path, holdout: int | None = 2, count: int = 6) -> None:
    images = [np.full((8, 8), 30 * i, np.uint8) for i in range(count)]
    pack_arrays(images, out, 8, min_resolution=4, shard_size=2, holdout=holdout)


def test_repack_without_holdout_removes_it_and_with_it_adds_it(tmp_path):
    out = tmp_path / "out"
    small_pack(out)
    assert (out / "holdout" / "r4").is_dir() and load_index(out)["num_samples"] == 4
    small_pack(out, holdout=None)
    assert sorted(p.name for p in out.iterdir()) == [
        "000000.tar", "000001.tar", "000002.tar", "index.json", "r4"]
    assert "holdout" not in load_index(out) and load_index(out)["num_samples"] == 6
    small_pack(out, holdout=3)
    assert load_index(out / "holdout")["num_samples"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no build directory left


@pytest.mark.parametrize("foreign", ["holdout/notes.txt", "holdout/r4/x.tar", "holdout/sub/",
                                     "holdout/holdout/", "r4/holdout/"])
@pytest.mark.parametrize("repack_holdout", [None, 2])
def test_foreign_entry_in_the_holdout_is_refused(tmp_path, foreign, repack_holdout):
    out = tmp_path / "out"
    small_pack(out)
    name = foreign.rstrip("/")
    if foreign.endswith("/"):
        (out / name).mkdir()
        (out / name / "000000.tar").write_bytes(b"keep me")
    else:
        (out / name).write_text("keep me")
    before = tree_bytes(out)
    with pytest.raises(PackError, match=rf"holds '{name}'.*written by scalegan pack"):
        small_pack(out, holdout=repack_holdout)
    assert tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_holdout_file_or_link_is_foreign(tmp_path):
    out = tmp_path / "out"
    small_pack(out, holdout=None)
    (out / "holdout").write_text("a file")
    with pytest.raises(PackError, match=r"holds 'holdout'"):
        small_pack(out)
    (out / "holdout").unlink()
    (tmp_path / "elsewhere").mkdir()
    (out / "holdout").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PackError, match=r"holds 'holdout'"):
        small_pack(out)


def test_failing_repack_leaves_out_and_its_holdout_as_they_were(tmp_path, monkeypatch):
    out = tmp_path / "out"
    small_pack(out, holdout=3, count=8)
    before = tree_bytes(out)
    real, calls = pack._encode_levels, []

    def failing(full, levels):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk on fire")
        return real(full, levels)

    monkeypatch.setattr(pack, "_encode_levels", failing)
    with pytest.raises(OSError, match="disk on fire"):
        small_pack(out, holdout=2)
    assert tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------------------------------------
# holdout_shards
# ---------------------------------------------------------------------------------------------


def test_holdout_shards_finds_the_held_out_pack(tmp_path):
    out = tmp_path / "out"
    small_pack(out)
    assert holdout_shards(str(out)) == str(out / "holdout")
    assert holdout_shards(f" {out / 'index.json'} ") == str(out / "holdout")
    assert open_shards(holdout_shards(str(out))).urls == [str(out / "holdout" / "000000.tar")]
    plain = tmp_path / "plain"
    small_pack(plain, holdout=None)
    assert holdout_shards(str(plain)) is None
    assert holdout_shards(str(plain / "index.json")) is None
    assert holdout_shards(str(out / "holdout")) is None  # the held-out pack has none itself
    for spec in (f"{out}/{{000000..000001}}.tar", f"{out},{plain}", str(out / "000000.tar"),
                 "https://host/out/index.json", "pipe:cat x.tar", str(tmp_path / "missing"),
                 ""):
        assert holdout_shards(spec) is None, spec


@pytest.mark.parametrize("entry", [{"dir": "../elsewhere"}, {"dir": "/abs"}, {"dir": ""},
                                   {"num_samples": 3}, "holdout", None])
def test_holdout_shards_ignores_malformed_entries(tmp_path, entry):
    out = tmp_path / "out"
    small_pack(out)
    index = load_index(out)
    index["holdout"] = entry
    (out / "index.json").write_text(json.dumps(index))
    assert holdout_shards(str(out)) is None
    (out / "index.json").write_text("{not json")
    assert holdout_shards(str(out)) is None
