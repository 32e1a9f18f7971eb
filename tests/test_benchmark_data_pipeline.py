"""benchmarks/data_pipeline.py: ``--smoke`` prints the whole table (every column, one row per
training resolution), the issue's checks with verdicts that agree with their figures, and the
headline last, whose figures are the table's; the generated faces are seeded and as large as
camera photographs' PNGs."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scalegan.data.pack import AUTO_RGB_MAX_RESOLUTION

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "data_pipeline.py"
# The columns the issue asks for, in its order.
COLUMNS = ["R", "level read (encoding)", "pure decode", "decode bound", "batched bound",
           "folder loader", "today", "new single-res", "new multi-res", "multi-res / bound",
           "multi-res / batched bound", "multi-res / pure", "multi-res / folder",
           "multi-res / today"]
RATES = ["pure decode", "decode bound", "batched bound", "folder loader", "today",
         "new single-res", "new multi-res"]
RATIOS = {"multi-res / bound": "decode bound", "multi-res / batched bound": "batched bound",
          "multi-res / pure": "pure decode",
          "multi-res / folder": "folder loader", "multi-res / today": "today"}
SMOKE_RESOLUTIONS = [8, 16, 32]


def _load_module():
    spec = importlib.util.spec_from_file_location("data_pipeline_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _has_before_commit() -> bool:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", "808e612^{commit}"],
                              capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


def _number(cell: str) -> float | None:
    return None if cell == "n/a" else float(cell.rstrip("x").replace(",", ""))


def _close(printed: float, exact: float) -> bool:
    """A printed ratio against the quotient of the printed rates: ``.2f`` rounding (0.005) plus
    the integer rounding of the rates (well under 1% at the thousands of images/s measured),
    or 5% for the two-significant-digit form of ratios below 0.1."""
    if printed < 0.1:
        return abs(printed - exact) <= 0.05 * exact
    return abs(printed - exact) <= 0.005 + 0.01 * exact


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[list[str], float]:
    env = dict(os.environ, TMPDIR=str(tmp_path_factory.mktemp("bench")))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines(), seconds


def _table(lines: list[str]) -> list[dict[str, str]]:
    start = next(i for i, line in enumerate(lines) if line.startswith("| R |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    assert header == COLUMNS
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(COLUMNS), line
        rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


def test_smoke_prints_every_row_and_column(smoke):
    lines, seconds = smoke
    assert seconds < 60, f"--smoke took {seconds:.0f} s"
    assert any(line.startswith("data: 48 face PNGs at 32^2") for line in lines), lines
    pack_a = next(line for line in lines if line.startswith("pack (a)"))
    pack_b = next(line for line in lines if line.startswith("pack (b)"))
    # (a) one PNG level; (b) every halving down to 8, raw RGB under encoding="auto" at <= 256
    assert re.search(r"levels 32 png [0-9.]+ MB$", pack_a), pack_a
    assert re.search(r"levels 32 rgb [0-9.]+ MB, 16 rgb [0-9.]+ MB, 8 rgb [0-9.]+ MB$",
                     pack_b), pack_b
    rows = _table(lines)
    assert [int(r["R"]) for r in rows] == SMOKE_RESOLUTIONS
    others = next(line for line in lines if line.startswith("CPU used by other processes"))
    assert re.findall(r"([0-9]+)\^2 [0-9.]+ core-s in [0-9.]+ s \([0-9]+%\)", others) == [
        str(r) for r in SMOKE_RESOLUTIONS], others
    today_known = _has_before_commit()
    for row in rows:
        r = int(row["R"])
        encoding = "rgb" if r <= AUTO_RGB_MAX_RESOLUTION else "png"
        assert row["level read (encoding)"] == f"{r} ({encoding})"
        for column in RATES:
            value = _number(row[column])
            if column == "today" and not today_known:
                assert value is None
                continue
            assert value is not None and value > 0, (column, row)
        multi = _number(row["new multi-res"])
        for column, base in RATIOS.items():
            if _number(row[base]) is None:
                assert row[column] == "n/a"
                continue
            exact = multi / _number(row[base])
            assert _close(_number(row[column]), exact), (column, row[column], exact)


def test_smoke_checks_and_headline_agree_with_the_table(smoke):
    lines, _ = smoke
    rows = {int(r["R"]): {k: _number(v) for k, v in r.items() if k != "level read (encoding)"}
            for r in _table(lines)}
    checks = [line for line in lines if line.startswith("check ")]
    assert len(checks) == 3, checks
    min_bound = min(r["multi-res / bound"] for r in rows.values())
    min_folder = min(r["multi-res / folder"] for r in rows.values())
    for check, threshold, figure in ((checks[0], 0.9, min_bound), (checks[1], 1.3, min_folder)):
        m = re.search(r": min ([0-9.]+) at ([0-9]+)\^2: (holds|does not hold)$", check)
        assert m, check
        assert abs(float(m.group(1)) - figure) <= 0.011, (check, figure)
        assert (m.group(3) == "holds") == (float(m.group(1)) >= threshold), check
    today16 = rows[16]["multi-res / today"]
    if today16 is None:
        assert "unavailable" in checks[2]
    else:
        m = re.search(r"today at 16\^2: ([0-9.]+): (holds|does not hold)$", checks[2])
        assert m and abs(float(m.group(1)) - today16) <= 0.011, (checks[2], today16)
        assert (m.group(2) == "holds") == (float(m.group(1)) >= 8), checks[2]
    stricter = next(line for line in lines if line.startswith("stricter: "))
    m = re.search(r": min ([0-9.]+) at ([0-9]+)\^2: (holds|does not hold)$", stricter)
    min_batched = min(r["multi-res / batched bound"] for r in rows.values())
    assert m and abs(float(m.group(1)) - min_batched) <= 0.011, (stricter, min_batched)
    assert (m.group(3) == "holds") == (float(m.group(1)) >= 0.9), stricter
    last = lines[-1]
    m = re.fullmatch(r"headline: 16\^2 multi-res pack vs today: (n/a|[0-9.]+x); 32\^2 vs folder "
                     r"loader: ([0-9.]+)x; min over R of multi-res / decode bound: ([0-9.]+)",
                     last)
    assert m, last
    if today16 is None:
        assert m.group(1) == "n/a"
    else:
        assert abs(float(m.group(1).rstrip("x")) - today16) <= 0.051
    assert abs(float(m.group(2)) - rows[32]["multi-res / folder"]) <= 0.051
    assert abs(float(m.group(3)) - min_bound) <= 0.011


def test_faces_are_seeded_and_sized_like_camera_photos(tmp_path):
    """Real 256^2 face PNGs are ~100-150 kB: the grain must bring the upscaled 25x25 faces to
    that range (80-200 kB accepted over 6 images of different faces and variants); the same
    index and seed give the same bytes, another seed other bytes."""
    bench = _load_module()
    faces = bench.demo_faces()
    sizes = []
    for index in (0, 1, 257, 399, 642, 1199):
        path = tmp_path / f"{index}.png"
        sizes.append(bench.make_face((index, faces[index % 100], 256, 0, str(path))))
        assert sizes[-1] == path.stat().st_size
    assert 80_000 <= sum(sizes) / len(sizes) <= 200_000, sizes
    again, other = tmp_path / "again.png", tmp_path / "other.png"
    bench.make_face((257, faces[57], 256, 0, str(again)))
    bench.make_face((257, faces[57], 256, 1, str(other)))
    assert again.read_bytes() == (tmp_path / "257.png").read_bytes()
    assert other.read_bytes() != again.read_bytes()
