"""The data pipeline's images/s at every training resolution: multi-resolution packs against the
decode bound, a folder loader and the stream as it was before, measured in one run.

Data: ``--images`` face-like RGB photographs of ``--resolution``^2 written as PNG files into a
temporary folder. Image ``i`` is demo face ``i % 100`` (``scalegan.data.demo.demo_faces()``, 25x25
grayscale) in variant ``i // 100`` (12 variants per face at 1,200 images): a seeded crop of 80-100%
of the face at a random offset (small shifts and zooms), mirrored in odd variants, tinted by
per-channel gains (a warm colour cast, which makes it RGB), upscaled with PIL LANCZOS, then seeded
Gaussian "film grain" (sigma 3 levels) is added. The grain is what makes the PNGs about as large
and as slow to decode as camera photographs' (real 256^2 face PNGs are ~100-150 kB; the mean is
printed; 107 kB here); without it the smooth upscaled faces compress to less than half of that
(47 kB at 256^2). Everything is seeded (``--seed``): the same files every run.

Packs, each timed (``--workers`` processes): (a) one PNG level at the packed resolution
(``min_resolution`` = resolution, ``encoding="png"``), what packing gave before multi-resolution
packs; (b) the default multi-resolution pack (``min_resolution`` default, ``encoding="auto"``).

Columns, images/s at each training resolution R from 8 up to the packed one:

* **pure decode**: ``scalegan.data.pipeline.decode_sample(sample, R)`` on the samples of the level
  the stream reads from pack (b) (``ShardSet.level_for(R)``), read into memory first and decoded
  one after another in this process, times ``--workers`` (one per core): no I/O, no IPC.
* **decode bound**: the same decode in a ``multiprocessing.Pool(workers).imap(..., chunksize=1)``
  over the in-memory samples, each decoded uint8 array returned to the parent (PIL decode +
  reduce in a 2-process pool, the bound a loader cannot beat without batching its IPC).
* **batched bound**: the same pool with ``--batch`` samples per task (``chunksize=batch``): the
  per-task IPC is paid once per batch, as a batching loader pays it; a stricter bound at the
  small resolutions, where a task's overhead is larger than its decode.
* **folder loader**: a torch ``Dataset`` over the PNG files (PIL open, convert RGB, integer box
  ``reduce`` to R, ``np.array`` -> uint8 HWC tensor), ``DataLoader(batch, workers, shuffle=True,
  persistent_workers=True)``, default collate: what torchvision's ImageFolder does.
* **today**: the stream of commit 808e612 (before multi-resolution packs), loaded from git as the
  module ``scalegan_pipeline_before``, reading pack (a): it decodes the full-size PNG, reduces it
  and returns float images, as it did. Missing when git or the commit is not available.
* **new single-res** / **new multi-res**: ``scalegan.data.pipeline.ImageStream`` on pack (a) /
  pack (b), batches taken with ``next_uint8()`` (the float conversion runs on the training
  device); the level read from pack (b) and its encoding are shown.

Every stream or loader is timed from its 4th batch (after ``3`` warm-up batches that include the
workers' start) until ``--images`` more images have been delivered (one epoch) and at least
``MIN_SECONDS`` have passed (the fast rows run several epochs, so their figures are not a few
milliseconds' worth). The configurations
run one after another, never two at once, each once. Before the table, the CPU seconds other
processes used while each row was measured (read from /proc/stat): the cores are shared, and a
row where they took more than a few percent of the machine is slowed down by them. The ratios
of the multi-res stream to the other columns follow, then the issue's checks (multi-res >= 0.9 x
decode bound and >= 1.3 x folder loader at every R, multi-res >= 8 x today at 16^2), and the
headline on the last line.

    python benchmarks/data_pipeline.py [--resolution 256] [--images 1200] [--shard-size 100]
                                       [--batch 32] [--workers 2] [--smoke]

After the checks, the layout comparison: one process reading and decoding the two lowest levels
from the pack's own layout (one shard set per level) and from one tar per shard holding every
level of each sample (built from the pack for the comparison).

``--smoke``: 48 images at 32^2, shards of 8, batch 8, resolutions 8..32 (well under a minute).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import webdataset as wds
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from scalegan.data.demo import NUM_FACES, demo_faces
from scalegan.data.pack import pack_folder
from scalegan.data.pipeline import IMAGE_FIELDS, ImageStream, decode_sample, open_shards

REPO = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "808e612"
BEFORE_MODULE = "scalegan_pipeline_before"
GRAIN_SIGMA = 3.0  # film grain, in 8-bit levels
CROP_RANGE = (0.8, 1.0)  # fraction of the 25x25 face a variant crops
WARMUP_BATCHES = 3
MIN_SECONDS = 1.0  # each stream or loader is timed for at least this long (not with --smoke)
_min_seconds = MIN_SECONDS
MIN_TRAIN_RESOLUTION = 8
# The thresholds: the multi-res stream against the decode bound, the folder loader, and
# the stream before at 16^2.
BOUND_SHARE, FOLDER_GAIN, TODAY_GAIN, TODAY_AT = 0.9, 1.3, 8.0, 16

COLUMNS = ("R", "level read (encoding)", "pure decode", "decode bound", "batched bound",
           "folder loader", "today", "new single-res", "new multi-res", "multi-res / bound",
           "multi-res / batched bound", "multi-res / pure", "multi-res / folder",
           "multi-res / today")


# ------------------------------------------------------------------------------------------ data


def make_face(job: tuple[int, np.ndarray, int, int, str]) -> int:
    """Write one face-like PNG (see the module docstring); returns its size in bytes.

    ``job``: (image index, the 25x25 uint8 face, resolution, seed, path)."""
    index, face, resolution, seed, path = job
    rng = np.random.default_rng([seed, index])
    side = face.shape[0] * rng.uniform(*CROP_RANGE)
    x0, y0 = rng.uniform(0.0, face.shape[0] - side, size=2)
    gains = np.array([1.0, 1.0 - rng.uniform(0.05, 0.2), 1.0 - rng.uniform(0.15, 0.35)])
    gains *= rng.uniform(0.85, 1.15)
    rgb = np.clip(np.rint(face[..., None] * gains), 0, 255).astype(np.uint8)  # (25, 25, 3)
    img = Image.fromarray(rgb)
    if (index // NUM_FACES) % 2:
        img = ImageOps.mirror(img)
    img = img.resize((resolution, resolution), Image.LANCZOS, box=(x0, y0, x0 + side, y0 + side))
    grain = rng.normal(0.0, GRAIN_SIGMA, size=(resolution, resolution, 3))
    noisy = np.clip(np.rint(np.asarray(img, dtype=np.float64) + grain), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(path, format="PNG")
    return os.path.getsize(path)


def make_faces(folder: Path, count: int, resolution: int, seed: int, workers: int) -> list[Path]:
    """``count`` face PNGs in ``folder`` (names ``%05d.png`` of their index), in name order."""
    folder.mkdir(parents=True)
    faces = demo_faces()
    paths = [folder / f"{i:05d}.png" for i in range(count)]
    jobs = [(i, faces[i % NUM_FACES], resolution, seed, str(p)) for i, p in enumerate(paths)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        sizes = list(pool.imap(make_face, jobs, chunksize=8))
    print(f"data: {count:,} face PNGs at {resolution}^2 ({min(count, NUM_FACES)} demo faces x "
          f"up to {-(-count // NUM_FACES)} variants, film grain sigma {GRAIN_SIGMA:g}), mean "
          f"{sum(sizes) / count:,.0f} bytes/image", flush=True)
    return paths


def pack_both(src: Path, work: Path, resolution: int, shard_size: int,
              workers: int) -> tuple[Path, Path]:
    """Pack (a) single-resolution PNG and (b) the default multi-resolution pack; print the time
    of each and their ratio."""
    packs, seconds = {}, {}
    for name, options in (("a", dict(min_resolution=resolution, encoding="png")),
                          ("b", dict())):
        out = work / f"pack_{name}"
        t0 = time.perf_counter()
        summary = pack_folder(src, out, resolution, shard_size=shard_size, workers=workers,
                              progress=False, **options)
        seconds[name] = time.perf_counter() - t0
        packs[name] = out
        levels = ", ".join(f"{v['resolution']} {v['encoding']} {v['bytes'] / 1e6:.1f} MB"
                           for v in summary.levels)
        print(f"pack ({name}) {'single' if name == 'a' else 'multi'}-res: {seconds[name]:.1f} s "
              f"for {summary.num_samples:,} images with {workers} workers "
              f"({summary.num_samples / seconds[name]:,.0f} img/s); levels {levels}", flush=True)
    print(f"pack time multi-res / single-res: {seconds['b'] / seconds['a']:.2f}x", flush=True)
    return packs["a"], packs["b"]


# ----------------------------------------------------------------------------- decode-only rates


def read_level(urls: tuple[str, ...]) -> list[dict]:
    """The samples of a level's shards in memory, each as its key and image member."""
    samples = []
    for sample in wds.WebDataset(list(urls), shardshuffle=False):
        member = next(k for k in IMAGE_FIELDS if k in sample)
        samples.append({"__key__": sample["__key__"], member: sample[member]})
    return samples


def pure_decode_rate(samples: list[dict], resolution: int, cores: int) -> float:
    """Images/s of ``decode_sample`` over ``samples`` in this process, times ``cores``."""
    decode_sample(samples[0], resolution)
    t0 = time.perf_counter()
    for sample in samples:
        decode_sample(sample, resolution)
    return cores * len(samples) / (time.perf_counter() - t0)


def decode_bound_rate(samples: list[dict], resolution: int, workers: int,
                      chunksize: int = 1) -> float:
    """Images/s of ``decode_sample`` in a ``workers``-process pool, ``chunksize`` samples per
    task, each decoded array returned to this process (after a warm-up round that starts the
    workers)."""
    fn = functools.partial(decode_sample, resolution=resolution)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(fn, samples[:2 * workers], chunksize=1)
        t0 = time.perf_counter()
        count = sum(image is not None
                    for image in pool.imap(fn, samples, chunksize=chunksize))
        seconds = time.perf_counter() - t0
    if count != len(samples):
        raise RuntimeError(f"{len(samples) - count} of {len(samples)} samples did not decode")
    return count / seconds


# ------------------------------------------------------------------------- loaders and streams


def delivery_rate(next_batch_size: Callable[[], int], images: int) -> float:
    """Images/s delivered by ``next_batch_size`` (takes one batch, returns its size), timed from
    the batch after ``WARMUP_BATCHES`` until ``images`` more images have come."""
    for _ in range(WARMUP_BATCHES):
        next_batch_size()
    count, t0 = 0, time.perf_counter()
    while count < images or time.perf_counter() - t0 < _min_seconds:
        count += next_batch_size()
    return count / (time.perf_counter() - t0)


class FolderImages(Dataset):
    """Image files as (R, R, 3) uint8 tensors, loaded like torchvision's ImageFolder does: PIL
    open, convert to RGB, box filter to R (an integer ``reduce`` when R divides the size)."""

    def __init__(self, paths: list[Path], resolution: int):
        self.paths, self.resolution = paths, resolution

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        r = self.resolution
        with Image.open(self.paths[i]) as img:
            img = img.convert("RGB")
            if img.width % r == 0 and img.height % r == 0:
                img = img.reduce((img.width // r, img.height // r))
            else:
                img = img.resize((r, r), Image.BOX)
            return torch.from_numpy(np.array(img, dtype=np.uint8))  # (R, R, 3)


def folder_loader_rate(paths: list[Path], resolution: int, batch: int, workers: int,
                       images: int, seed: int) -> float:
    """Images/s of a shuffling DataLoader over the files (workers kept across epochs)."""
    loader = DataLoader(FolderImages(paths, resolution), batch_size=batch, shuffle=True,
                        num_workers=workers, persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(seed))

    def endless() -> Iterator[torch.Tensor]:
        while True:
            yield from loader

    batches = endless()
    try:
        return delivery_rate(lambda: len(next(batches)), images)
    finally:
        batches.close()
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()


def source_version() -> str:
    """The commit measured and the files of ``scalegan/`` changed since it (from git), so that a
    printed table says which code it measured."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True, timeout=60).stdout
        status = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                 "scalegan"], capture_output=True, text=True, check=True,
                                timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "scalegan: no git checkout"
    changed = [line[3:] for line in status.splitlines()]
    return f"scalegan at {head.strip()}" + (
        f" with uncommitted changes to {', '.join(changed)}" if changed else "")


def load_stream_before(work: Path) -> ModuleType | str:
    """The pipeline module of commit ``BEFORE_COMMIT`` as ``scalegan_pipeline_before``, or the
    reason it is unavailable."""
    try:
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{BEFORE_COMMIT}:scalegan/data/pipeline.py"],
            capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or str(e)
        return f"git show {BEFORE_COMMIT}:scalegan/data/pipeline.py failed: {detail.strip()}"
    path = work / f"{BEFORE_MODULE}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(BEFORE_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[BEFORE_MODULE] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the old module no longer imports against today's package
        del sys.modules[BEFORE_MODULE]
        return f"the pipeline of {BEFORE_COMMIT} does not import: {type(e).__name__}: {e}"
    return module


def before_rate(module: ModuleType, urls: list[str], resolution: int, batch: int, workers: int,
                images: int) -> float:
    """Images/s of the stream before multi-resolution packs, float batches as it returned them."""
    stream = module.ImageStream(urls, batch, resolution, num_workers=workers,
                                shuffle_buffer=1000, xflip=True)
    try:
        return delivery_rate(lambda: stream.next_batch().images.shape[0], images)
    finally:
        stream.close()


def stream_rate(pack: Path, resolution: int, batch: int, workers: int, images: int,
                seed: int) -> float:
    """Images/s of today's ``ImageStream`` on ``pack``, uint8 batches as the workers deliver."""
    stream = ImageStream(open_shards(str(pack)), batch_size=batch, resolution=resolution,
                         seed=seed, num_workers=workers, shuffle_buffer=1000, xflip=True)
    try:
        return delivery_rate(lambda: stream.next_uint8()["images"].shape[0], images)
    finally:
        stream.close()


# ---------------------------------------------------------------------------------------- report


def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds every process on the machine has used since boot, CPU seconds this process
    and its reaped children have used), or None where /proc/stat is missing. Their difference
    over a row is what other processes took from the shared cores while it was measured."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = fields
    machine = (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF,
              resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
    return machine, own


def measure(resolution: int, paths: list[Path], pack_a: Path, pack_b: Path,
            before: ModuleType | str, args: argparse.Namespace) -> dict:
    """Every column's figure at training resolution ``resolution``, and the CPU seconds other
    processes used meanwhile (``"others"``, None when unknown) over its wall seconds."""
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    index_a = json.loads((pack_a / "index.json").read_text())
    index_b = json.loads((pack_b / "index.json").read_text())
    level = open_shards(str(pack_b)).level_for(resolution)
    encoding = {v["resolution"]: v["encoding"] for v in index_b["levels"]}[level.resolution]
    row = {"R": resolution, "level": f"{level.resolution} ({encoding})"}
    samples = read_level(level.urls)
    row["pure"] = pure_decode_rate(samples, resolution, args.workers)
    row["bound"] = decode_bound_rate(samples, resolution, args.workers)
    row["batched"] = decode_bound_rate(samples, resolution, args.workers, chunksize=args.batch)
    del samples
    row["folder"] = folder_loader_rate(paths, resolution, args.batch, args.workers, args.images,
                                       args.seed)
    urls_a = [str(pack_a / s["name"]) for s in index_a["shards"]]
    row["today"] = (None if isinstance(before, str) else
                    before_rate(before, urls_a, resolution, args.batch, args.workers, args.images))
    row["single"] = stream_rate(pack_a, resolution, args.batch, args.workers, args.images,
                                args.seed)
    row["multi"] = stream_rate(pack_b, resolution, args.batch, args.workers, args.images,
                               args.seed)
    cpu1, row["seconds"] = cpu_seconds(), time.perf_counter() - t0
    row["others"] = None if None in (cpu0, cpu1) else max(
        0.0, (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1]))
    print(f"{resolution}^2 measured: multi-res {row['multi']:,.0f} img/s", file=sys.stderr,
          flush=True)
    return row


def compare_layouts(pack: Path, out: Path, resolutions: list[int]) -> list[tuple]:
    """Images/s reading and decoding level R in one process from (i) the pack's own layout, one
    shard set per level, and (ii) the other layout the format could have had: one tar per shard
    holding every level of each sample (``rgb``, ``r128.rgb``, ..., built here from the pack)."""
    shards = open_shards(str(pack))
    out.mkdir()
    top = shards.levels[0]
    for i in range(len(shards)):
        levels = [[s for s in _tar(v.urls[i])] for v in shards.levels]
        with wds.TarWriter(str(out / f"{i:06d}.tar"), mtime=0) as sink:
            for samples in zip(*levels, strict=True):
                merged = {"__key__": samples[0]["__key__"], "json": samples[0]["json"]}
                for v, sample in zip(shards.levels, samples, strict=True):
                    member = next(k for k in IMAGE_FIELDS if k in sample)
                    merged[member if v is top else f"r{v.resolution}.{member}"] = sample[member]
                sink.write(merged)
    rows = []
    for r in resolutions:
        own = _read_rate(shards.level_for(r).urls, r, "")
        one = _read_rate([str(out / f"{i:06d}.tar") for i in range(len(shards))], r, f"r{r}.")
        rows.append((r, own, one))
    return rows


def _tar(url: str) -> Iterator[dict]:
    from scalegan.data.shards import iter_tar_samples

    return iter_tar_samples(url)


def _read_rate(urls: list[str], resolution: int, prefix: str) -> float:
    count, t0 = 0, time.perf_counter()
    for url in urls:
        for sample in _tar(url):
            member = next(k for k in sample if k.startswith(prefix) and k.endswith("rgb"))
            decode_sample({"rgb": sample[member]}, resolution)
            count += 1
    return count / (time.perf_counter() - t0)


def print_layouts(rows: list[tuple]) -> None:
    """The layout comparison: the pack's per-level shard sets against one tar of all levels."""
    print("\nlevel layouts, one process reading and decoding level R (images/s):")
    print("| R | one shard set per level (the pack's) | one tar with every level | ratio |")
    print("|---:|---:|---:|---:|")
    for r, own, one in rows:
        print(f"| {r} | {own:,.0f} | {one:,.0f} | {own / one:.1f}x |")


def print_others(rows: list[dict]) -> None:
    """How much of the machine other processes took while each row was measured: figures from
    a row where that is more than a few percent are slowed down by them."""
    if any(r["others"] is None for r in rows):
        print("CPU used by other processes: unknown (no /proc/stat)")
        return
    cores = os.cpu_count() or 1
    print("CPU used by other processes while measuring: " + ", ".join(
        f"{r['R']}^2 {r['others']:.1f} core-s in {r['seconds']:.1f} s "
        f"({r['others'] / (r['seconds'] * cores):.0%})" for r in rows))


def _rate_cell(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def _ratio(a: float, b: float | None) -> float | None:
    return None if b is None else a / b


def _ratio_cell(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2f}x" if x >= 0.1 else f"{x:.2g}x"


def print_table(rows: list[dict]) -> None:
    print("\nimages/s (pure decode: one process x cores; ratios: new multi-res / column)")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "|".join("---:" for _ in COLUMNS) + "|")
    for r in rows:
        cells = [str(r["R"]), r["level"], *(_rate_cell(r[k]) for k in (
            "pure", "bound", "batched", "folder", "today", "single", "multi")),
                 *(_ratio_cell(_ratio(r["multi"], r[k])) for k in (
                     "bound", "batched", "pure", "folder", "today"))]
        print("| " + " | ".join(cells) + " |")


def _verdict(ok: bool) -> str:
    return "holds" if ok else "does not hold"


def print_checks(rows: list[dict], before: ModuleType | str) -> tuple[float, float, float | None]:
    """The issue's checks, one line each; returns (min multi-res / bound, multi-res / folder at
    the packed resolution, multi-res / today at 16^2 or None)."""
    by_bound = min(rows, key=lambda r: r["multi"] / r["bound"])
    by_folder = min(rows, key=lambda r: r["multi"] / r["folder"])
    low_bound = by_bound["multi"] / by_bound["bound"]
    low_folder = by_folder["multi"] / by_folder["folder"]
    print(f"check multi-res >= {BOUND_SHARE} x decode bound at every R: min "
          f"{low_bound:.2f} at {by_bound['R']}^2: {_verdict(low_bound >= BOUND_SHARE)}")
    print(f"check multi-res >= {FOLDER_GAIN} x folder loader at every R: min "
          f"{low_folder:.2f} at {by_folder['R']}^2: {_verdict(low_folder >= FOLDER_GAIN)}")
    at16 = next((r for r in rows if r["R"] == TODAY_AT), None)
    vs_today = None if at16 is None else _ratio(at16["multi"], at16["today"])
    if vs_today is None:
        reason = before if isinstance(before, str) else f"no {TODAY_AT}^2 row"
        print(f"check multi-res >= {TODAY_GAIN:g} x today at {TODAY_AT}^2: unavailable ({reason})")
    else:
        print(f"check multi-res >= {TODAY_GAIN:g} x today at {TODAY_AT}^2: {vs_today:.2f}: "
              f"{_verdict(vs_today >= TODAY_GAIN)}")
    by_batched = min(rows, key=lambda r: r["multi"] / r["batched"])
    low_batched = by_batched["multi"] / by_batched["batched"]
    print(f"stricter: multi-res >= {BOUND_SHARE} x batched bound at every R: min "
          f"{low_batched:.2f} at {by_batched['R']}^2: {_verdict(low_batched >= BOUND_SHARE)}")
    return low_bound, rows[-1]["multi"] / rows[-1]["folder"], vs_today


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=256, help="packed resolution")
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true",
                    help="48 images at 32^2, shards of 8, batch 8: checks the script runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.resolution, args.images, args.shard_size, args.batch = 32, 48, 8, 8
    r = args.resolution
    if r < TODAY_AT or r & (r - 1):
        ap.error(f"--resolution must be a power of two >= {TODAY_AT}, got {r}")
    if args.images < 1 or args.batch < 1 or args.workers < 1 or args.shard_size < 1:
        ap.error("--images, --batch, --workers and --shard-size must be >= 1")
    if -(-args.images // args.shard_size) < args.workers:
        ap.error(f"{args.images} images in shards of {args.shard_size} give fewer shards than "
                 f"--workers={args.workers}: every worker needs one")
    return args


def main(argv: list[str] | None = None) -> None:
    global _min_seconds
    args = parse_args(argv)
    _min_seconds = 0.0 if args.smoke else MIN_SECONDS
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.workers} workers, batch "
          f"{args.batch}, shards of {args.shard_size}; timed over {args.images:,} images after "
          f"{WARMUP_BATCHES} warm-up batches", flush=True)
    print(source_version(), flush=True)
    resolutions = [MIN_TRAIN_RESOLUTION << k
                   for k in range(args.resolution.bit_length() - MIN_TRAIN_RESOLUTION.bit_length()
                                  + 1)]
    with tempfile.TemporaryDirectory(prefix="scalegan-data-bench-") as tmp:
        work = Path(tmp)
        paths = make_faces(work / "src" / "faces", args.images, args.resolution, args.seed,
                           args.workers)
        pack_a, pack_b = pack_both(work / "src", work, args.resolution, args.shard_size,
                                   args.workers)
        before = load_stream_before(work)
        if isinstance(before, str):
            print(f"today: column unavailable ({before})", flush=True)
        rows = [measure(r, paths, pack_a, pack_b, before, args) for r in resolutions]
        layouts = compare_layouts(pack_b, work / "one_tar", resolutions[:2])
    print_others(rows)
    print_table(rows)
    low_bound, top_folder, vs_today = print_checks(rows, before)
    print_layouts(layouts)
    today = "n/a" if vs_today is None else f"{vs_today:.1f}x"
    print(f"headline: {TODAY_AT}^2 multi-res pack vs today: {today}; {args.resolution}^2 vs "
          f"folder loader: {top_folder:.1f}x; min over R of multi-res / decode bound: "
          f"{low_bound:.2f}")


if __name__ == "__main__":
    main()
