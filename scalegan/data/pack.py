"""Pack images into WebDataset tar shards for training, at the packed resolution and below.

Layout written to OUT (index.json format 2)::

    OUT/000000.tar, OUT/000001.tar, ...   the packed resolution R, up to ``shard_size`` samples each
    OUT/r<R/2>/000000.tar, ...            the same samples at R/2, R/4, ... down to min_resolution
    OUT/index.json                        {"num_samples", "resolution", "shards", "skipped",
                                           "fit", "channels", "labels"[, "attribute_dim"]
                                           [, "classes"], "format": 2, "levels"}

Each sample has ``__key__`` = ``%08d`` of its global index, an image member and ``json`` =
``{"source": <relative path or name>}``, plus, when packing with labels, ``"label": <class id>`` or
``"attributes": [numbers]``. Shard i of every level holds the same samples in the same order with
the same ``__key__`` and ``json``; only the image differs. The image member is ``png`` (PNG
bytes), ``jpg`` (JPEG bytes) or ``rgb`` (the raw ``R x R x 3`` uint8 pixels, row-major HWC,
``3*R*R`` bytes). The image at level R is ``full.reduce(packed // R)`` of the full-size RGB image
(PIL's integer box filter in one call), so a lossless level holds exactly what a reader would get
by decoding the full-size image and reducing it.

``"levels"`` lists the stored levels, largest first: ``{"resolution", "encoding", ["jpeg_quality"],
"shards", "bytes"}``; the first is the packed resolution and its ``"shards"`` are the top-level
``"shards"``; the others name their shards ``rR/NNNNNN.tar``. ``"encoding"`` is ``"rgb"``,
``"png"`` or ``"jpeg"``; ``encoding="auto"`` stores raw RGB up to
:data:`AUTO_RGB_MAX_RESOLUTION` and PNG above it (measured: see that constant).

In index.json, ``"channels"`` is always 3 (RGB) and ``"labels"`` says what every sample's JSON
carries: ``"label"``, ``"attributes"`` (all vectors of length ``"attribute_dim"``) or ``null``;
``"classes"`` lists the class names when the classes come from folders (``--labels dirs``).
``"shards"`` holds ``{"name", "count", "sha256"}`` per shard and ``"skipped"``
``{"path", "reason"}`` per unreadable file. A source path whose bytes are not valid UTF-8 is
stored with those bytes escaped as ``\\xNN`` (also the key for it in a labels file).

With ``holdout`` (``--holdout N``), the N sources with the smallest SHA-256 of their source name
(:mod:`scalegan.data.holdout`) are chosen before any image is read and written, in source order,
to ``OUT/holdout/``: a complete pack of its own (index.json, shards, rR/ levels; the same
resolution, levels, encoding and labels), whose index.json adds ``"holdout_of": ".."``. OUT holds
only the other images, and its index.json adds ``"holdout": {"dir": "holdout", "num_samples"}``.
A chosen source that cannot be read is skipped (listed in the holdout's ``"skipped"``), so the
held-out set is that much smaller; no other image takes its place.

OUT holds nothing else: a pack (with its held-out set) is built in a directory beside OUT
(``.OUT.packing-PID``) and swapped in for OUT only when complete (an atomic exchange on Linux), so
an interrupted pack leaves the previous one untouched. A non-empty OUT holding other files is
refused; a previous held-out set is replaced (or removed) with the rest of OUT.

Images are read, resized, reduced and encoded in ``workers`` processes; the main process writes
the samples in source order, so the output is deterministic: packing the same input twice, with
any number of workers, gives byte-identical shards (fixed tar mtime/owner, PNG and JPEG encoded
here with fixed options, files visited in sorted order).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from scalegan.data.holdout import HOLDOUT_DIR, held_out
from scalegan.fs import fsync_dir

__all__ = [
    "AUTO_RGB_MAX_RESOLUTION",
    "ENCODINGS",
    "IMAGE_EXTENSIONS",
    "PackError",
    "PackSummary",
    "pack_arrays",
    "pack_folder",
    "to_square_rgb",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
FITS = ("crop", "pad")
MIN_RESOLUTION, MAX_RESOLUTION = 4, 4096
INDEX_NAME = "index.json"
SHARD_PATTERN = "%06d.tar"
CHANNELS = 3  # every pack stores RGB
FORMAT = 2  # index.json with "levels"
DEFAULT_MIN_RESOLUTION = 8
ENCODINGS = ("auto", "png", "rgb", "jpeg")
DEFAULT_JPEG_QUALITY = 95

AUTO_RGB_MAX_RESOLUTION = 256
"""``encoding="auto"`` stores a level as raw RGB up to this resolution and as PNG above it.

Raw RGB costs no decode at all, where PNG decode (PIL open + convert + np.asarray, one core) takes
0.1-1.7 ms per image at 64-256; up to 256 raw RGB is at most ~2x the PNG bytes on photographs
(196,608 bytes at 256). Above 256 raw grows to 0.8 and 3.1 MB per image (2.3x and 3.1x PNG on
photographs, 10-15x on smooth faces: ~55 GB for 70k images at 512, ~220 GB at 1024), and the PNG
decode it would save can be spread over the data loader's workers. Measured in one run
(2026-12, 2 cores), 100 demo faces (25x25 grayscale upscaled with Lanczos) and 4 colour photos
from scikit-image (astronaut, chelsea, coffee, rocket, 300-512 px upscaled), packed at 1024 and
reduced to each level, bytes and microseconds per image:

    level | faces png B | photos png B |   rgb B | faces png us | photos png us | rgb us
     1024 |     205,281 |    1,007,381 | 3145728 |       11,687 |        23,913 |    4.0
      512 |      75,771 |      348,195 |  786432 |        3,265 |         6,783 |    2.1
      256 |      26,994 |      102,145 |  196608 |          909 |         1,718 |    0.8
      128 |      10,335 |       28,282 |   49152 |          297 |           489 |    0.7
       64 |       4,280 |        7,936 |   12288 |          118 |           192 |    0.5
       32 |       1,920 |        2,314 |    3072 |           60 |            84 |    0.5
       16 |         688 |          725 |     768 |           41 |            60 |    0.5
        8 |         238 |          258 |     192 |           38 |            51 |    0.5

The faces compress far better than photographs (upscaled grayscale), so the photos' ratio decides.
"""

# The image member of a sample for each stored encoding.
_MEMBERS = {"png": "png", "rgb": "rgb", "jpeg": "jpg"}
# Samples handed to a worker process at a time: amortises the pipe round trip for small images
# while keeping the ordered results flowing for large ones. Fixed, so output never depends on it.
_CHUNK_SIZE = 16
# The only entries an existing OUT may hold (it is replaced as a whole): shards and index.json,
# the rR/ directories of smaller levels (holding only shards), a holdout/ directory holding the
# same, plus the temp files that versions building in place left behind when interrupted.
_SHARD_RE = re.compile(r"^[0-9]{6,}\.tar$")
_LEVEL_DIR_RE = re.compile(r"^r[1-9][0-9]*$")
_LEGACY_TMP_RE = re.compile(r"^\.[0-9]{6,}\.tar\.tmp$|^\.index\.json\.tmp$")

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# errno of renameat2 where the exchange is unsupported (no syscall, or not on this filesystem).
_NO_EXCHANGE = frozenset({errno.ENOSYS, errno.EINVAL, errno.ENOTSUP})

# Fixed tar metadata so that shards are byte-identical across runs and machines.
_TAR_OPTIONS = dict(user="scalegan", group="scalegan", mtime=0, compress=False, encoder=False)
# Fixed PNG options; Pillow writes no timestamp chunk unless asked to.
_PNG_OPTIONS = dict(format="PNG", optimize=False, compress_level=6)
# Fixed JPEG options (quality is added per pack): no chroma subsampling, so colour detail survives
# at small levels; baseline Huffman tables, no EXIF or other metadata.
_JPEG_OPTIONS = dict(format="JPEG", subsampling=0, optimize=False, progressive=False)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class PackError(ValueError):
    """Bad input to the packer; the message names the offending path or value."""


@dataclass
class PackSummary:
    """What a pack run produced (mirrors ``OUT/index.json`` plus the output directory).

    ``holdout`` is the summary of the held-out pack in ``OUT/holdout`` (its ``skipped``: the
    chosen sources that could not be read), or None when nothing was held out.
    """

    num_samples: int
    resolution: int
    shards: list[dict] = field(default_factory=list)  # [{"name", "count", "sha256"}]
    skipped: list[dict] = field(default_factory=list)  # [{"path", "reason"}]
    out_dir: str = ""
    # index.json's "levels": [{"resolution", "encoding", ["jpeg_quality"], "shards", "bytes"}]
    levels: list[dict] = field(default_factory=list)
    holdout: PackSummary | None = None

    @property
    def num_holdout(self) -> int:
        """Images written to the held-out pack (0 when nothing was held out)."""
        return 0 if self.holdout is None else self.holdout.num_samples

    def to_text(self) -> str:
        """Human-readable summary: counts, the held-out set, one line for the stored levels, one
        per skipped file."""
        lines = [
            f"{_plural(self.num_samples, 'sample')} in {_plural(len(self.shards), 'shard')} "
            f"at {self.resolution}x{self.resolution}, {len(self.skipped)} skipped -> {self.out_dir}"
        ]
        held = self.holdout
        if held is not None:
            chosen = held.num_samples + len(held.skipped)
            lines.append(
                f"  + {held.num_samples} held out in {_plural(len(held.shards), 'shard')} -> "
                f"{held.out_dir}" + (f" ({len(held.skipped)} of the {chosen} chosen unreadable)"
                                     if held.skipped else ""))
        if self.levels:
            lines.append("  levels: " + ", ".join(
                f"{lv['resolution']} {lv['encoding']}"
                + (f" q{lv['jpeg_quality']}" if "jpeg_quality" in lv else "")
                + f" ({_megabytes(lv['bytes'])})" for lv in self.levels))
        lines += [f"  skipped {s['path']}: {s['reason']}" for s in self.skipped]
        if held is not None:
            lines += [f"  skipped {s['path']} (held out): {s['reason']}" for s in held.skipped]
        return "\n".join(lines)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _power_of_two(value: Any, low: int, high: int) -> int | None:
    """``value`` as int if it is a power of two in [low, high], else None."""
    if _is_int(value) and low <= int(value) <= high and (int(value) & (int(value) - 1)) == 0:
        return int(value)
    return None


def _check_resolution(resolution: Any) -> int:
    """Return ``resolution`` as int if it is a power of two in [4, 4096], else raise PackError."""
    r = _power_of_two(resolution, MIN_RESOLUTION, MAX_RESOLUTION)
    if r is None:
        raise PackError(
            f"resolution must be a power of two from {MIN_RESOLUTION} to {MAX_RESOLUTION}, "
            f"got {resolution!r}"
        )
    return r


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_min_resolution(min_resolution: Any, resolution: int) -> int:
    """``min_resolution`` as int: a power of two from 4 to ``resolution``; None means
    :data:`DEFAULT_MIN_RESOLUTION`, or ``resolution`` when that is smaller."""
    if min_resolution is None:
        return min(DEFAULT_MIN_RESOLUTION, resolution)
    m = _power_of_two(min_resolution, MIN_RESOLUTION, resolution)
    if m is None:
        raise PackError(
            f"min_resolution must be a power of two from {MIN_RESOLUTION} to the resolution "
            f"({resolution}), got {min_resolution!r}"
        )
    return m


def _check_encoding(encoding: Any) -> str:
    if encoding not in ENCODINGS:
        raise PackError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    return encoding


def _check_jpeg_quality(quality: Any) -> int:
    if not _is_int(quality) or not 1 <= quality <= 100:
        raise PackError(f"jpeg_quality must be an integer from 1 to 100, got {quality!r}")
    return int(quality)


def _check_workers(workers: Any) -> int:
    """``workers`` as int >= 1; None means one per CPU core."""
    if workers is None:
        return os.cpu_count() or 1
    if not _is_int(workers) or workers < 1:
        raise PackError(f"workers must be an integer >= 1, got {workers!r}")
    return int(workers)


def _check_fit(fit: Any) -> str:
    if fit not in FITS:
        raise PackError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    return fit


def _holdout_count(holdout: Any, num_images: int) -> int:
    """How many of ``num_images`` images ``holdout`` holds out: a count (int >= 1), or a fraction
    in (0, 1) of them, rounded to the nearest (halves to even) and at least 1. PackError naming
    the value unless at least one image is left to train on."""
    if _is_int(holdout):
        count = int(holdout)
        if count < 1:
            raise PackError(f"--holdout {holdout!r}: a count of images must be >= 1 (or give a "
                            f"fraction in (0, 1))")
    elif isinstance(holdout, (float, np.floating)) and 0.0 < holdout < 1.0:
        count = max(1, round(float(holdout) * num_images))
    else:
        raise PackError(f"--holdout {holdout!r}: give a count of images (an integer >= 1) or a "
                        f"fraction in (0, 1)")
    if count >= num_images:
        raise PackError(f"--holdout {holdout!r} holds out {count} of the "
                        f"{_plural(num_images, 'image')}, leaving none to train on; hold out "
                        f"fewer than {num_images}")
    return count


def _choose_holdout(holdout: Any, sources: list[str]) -> frozenset[str] | None:
    """The sources ``holdout`` keeps out of training (see :func:`_holdout_count`), None for no
    held-out set. The choice is by name, so every name must be unique."""
    if holdout is None:
        return None
    count = _holdout_count(holdout, len(sources))
    seen: set[str] = set()
    for source in sources:
        if source in seen:
            raise PackError(f"--holdout chooses images by their source name, but "
                            f"{source!r} names more than one image")
        seen.add(source)
    return held_out(sources, count)


def _check_shard_size(shard_size: Any) -> int:
    is_int = isinstance(shard_size, (int, np.integer)) and not isinstance(shard_size, bool)
    if not is_int or shard_size < 1:
        raise PackError(f"shard_size must be an integer >= 1, got {shard_size!r}")
    return int(shard_size)


# --------------------------------------------------------------------------------------------
# Conversion: any PIL image -> square RGB uint8
# --------------------------------------------------------------------------------------------


def _scale16_to_8(arr: np.ndarray) -> np.ndarray:
    """Map 16-bit values [0, 65535] to uint8 [0, 255] (65535 -> 255), rounding to nearest.

    Values outside the 16-bit range (possible in PIL mode "I", which is int32) are clipped.
    """
    arr = np.clip(arr.astype(np.float64), 0, 65535)
    return np.rint(arr / 257.0).astype(np.uint8)  # 65535 / 257 == 255 exactly


def _float_to_8(arr: np.ndarray) -> np.ndarray:
    """Map floats in [0, 1] to uint8 [0, 255], rounding to nearest; out-of-range values clip."""
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0)
    return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def _composite_on_white(img: Image.Image) -> Image.Image:
    """Flatten an image with alpha (any mode PIL can turn into RGBA) onto a white background."""
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any supported PIL mode to 8-bit RGB (same size).

    16-bit grayscale is rescaled here because PIL's own ``convert("L")`` clips instead of
    scaling (32768 would become 255).
    """
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        gray = Image.fromarray(_scale16_to_8(np.asarray(img)))
        return gray.convert("RGB")
    if mode == "F":
        # Float images (e.g. some TIFFs) are taken to be in [0, 1].
        return Image.fromarray(_float_to_8(np.asarray(img))).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        # Palette/L/RGB images with a tRNS entry also go through RGBA so transparent
        # pixels end up white rather than whatever colour sits under them.
        return _composite_on_white(img)
    if mode == "RGB":
        return img
    try:
        return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...
    except (ValueError, OSError) as exc:
        raise PackError(f"unsupported image mode {mode!r}: {exc}") from exc


def _fit_square(img: Image.Image, fit: str) -> Image.Image:
    """Make ``img`` square: centre-crop to the shorter side, or pad with black to the longer one."""
    w, h = img.size
    if w == h:
        return img
    if fit == "crop":
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        return img.crop((left, top, left + s, top + s))
    s = max(w, h)
    canvas = Image.new(img.mode, (s, s), 0)
    canvas.paste(img, ((s - w) // 2, (s - h) // 2))
    return canvas


def to_square_rgb(img: Image.Image, resolution: int, fit: str = "crop") -> Image.Image:
    """Convert a PIL image to an RGB uint8 image of ``resolution x resolution`` pixels.

    Steps: apply EXIF orientation, convert the mode to RGB (alpha composited on white, 16-bit
    scaled to 8-bit), make square with ``fit`` ("crop" = centre crop, "pad" = black borders),
    then resize with Lanczos.
    """
    _check_fit(fit)
    if not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise PackError(f"resolution must be a positive integer, got {resolution!r}")
    img = ImageOps.exif_transpose(img)
    img = _fit_square(_to_rgb(img), fit)
    if img.size != (resolution, resolution):
        # reducing_gap lets PIL box-reduce by an integer factor first on big downscales,
        # which is much faster and (at 3.0) visually indistinguishable from plain Lanczos.
        img = img.resize((int(resolution), int(resolution)), Image.LANCZOS, reducing_gap=3.0)
    return img


# --------------------------------------------------------------------------------------------
# Sources: per image, a job run in a worker (read, convert, resize, encode every level)
# --------------------------------------------------------------------------------------------


def _find_images(src: Path) -> list[str]:
    """Relative POSIX paths of image files under ``src``, sorted (so packing is deterministic).

    Names that are not valid UTF-8 come back with surrogate escapes (as os.walk returns them),
    so they still open the real file; :func:`_printable_name` gives the name to store.
    """
    found = []
    for dirpath, _dirnames, filenames in os.walk(src):
        for name in filenames:
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath, name).relative_to(src).as_posix())
    return sorted(found)


def _load_image(path: Path, resolution: int) -> Image.Image:
    """Open and fully decode ``path``; raises whatever PIL raises on a bad file."""
    with Image.open(path) as img:
        # JPEG only: let the decoder downscale by DCT while keeping >= 2x the target size,
        # which saves most of the decode time for large photos without hurting quality.
        img.draft(None, (2 * resolution, 2 * resolution))
        img.load()  # force full decode so truncated files fail here, not later
        # copy() keeps mode, palette and info (EXIF, transparency) but not the open file handle.
        return img.copy()


def _printable_name(name: str) -> str:
    """``name`` with the bytes that are not valid UTF-8 (surrogate escapes) written as ``\\xNN``.

    Valid names come back unchanged; the result can always be encoded as UTF-8.
    """
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (Windows names)
        raw = name.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def _folder_job(job: tuple[str, str], resolution: int, fit: str,
                levels: tuple[_Level, ...]) -> tuple[str, tuple[bytes, ...] | None, str | None]:
    """Read one image file (``job`` = (path, printable name)) and encode it at every level.

    Returns (name, encoded levels, None), or (name, None, reason) when the file cannot be read.
    Runs in a worker process (or in this one for a single worker).
    """
    path, name = job
    try:
        full = to_square_rgb(_load_image(Path(path), resolution), resolution, fit)
    except Exception as exc:  # noqa: BLE001 - untrusted files make PIL raise nearly anything
        return name, None, _reason(exc)
    return name, _encode_levels(full, levels), None


def _reason(exc: BaseException) -> str:
    msg = str(exc).strip()
    return msg if msg else type(exc).__name__


def _array_to_image(arr: Any, index: int) -> Image.Image:
    """Turn an HxW, HxWx3 or HxWx4 array (uint8, uint16, or float in [0, 1]) into a PIL image."""
    arr = np.asarray(arr)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise PackError(f"image {index}: expected shape HxW, HxWx3 or HxWx4, got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise PackError(f"image {index}: empty image of shape {arr.shape}")
    if arr.dtype == np.uint8:
        data = arr
    elif arr.dtype == np.uint16:
        data = _scale16_to_8(arr)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
            raise PackError(
                f"image {index}: float images must be finite and in [0, 1], "
                f"got range [{np.nanmin(arr)}, {np.nanmax(arr)}]"
            )
        data = _float_to_8(arr)
    else:
        raise PackError(f"image {index}: dtype must be uint8, uint16 or float, got {arr.dtype}")
    return Image.fromarray(np.ascontiguousarray(data))


def _array_job(job: tuple[int, Any], resolution: int, fit: str,
               levels: tuple[_Level, ...]) -> tuple[bytes, ...]:
    """Encode one in-memory image (``job`` = (index, array)) at every level; a bad array raises
    PackError naming its index (a caller bug, not a file to skip)."""
    index, arr = job
    return _encode_levels(to_square_rgb(_array_to_image(arr, index), resolution, fit), levels)


def _name_arrays(encoded: Iterator[tuple[bytes, ...]], names: list[str] | None) -> Iterator[tuple]:
    """(source name, encoded levels, None) per array: its ``names`` entry, else its index."""
    count = 0
    for i, members in enumerate(encoded):
        if names is not None and i >= len(names):
            raise PackError(f"names has {len(names)} entries but there are more images")
        yield (names[i] if names is not None else str(i)), members, None
        count += 1
    if names is not None and count != len(names):
        raise PackError(f"names has {len(names)} entries but there were {count} images")


# --------------------------------------------------------------------------------------------
# Levels and encodings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Level:
    """One stored resolution: its encoding, and where its shards go relative to OUT."""

    resolution: int
    encoding: str  # "png" | "rgb" | "jpeg"
    jpeg_quality: int | None = None
    subdir: str = ""  # "" for the packed resolution, else "rR"

    @property
    def member(self) -> str:
        """The sample's image member: "png", "rgb" or "jpg"."""
        return _MEMBERS[self.encoding]

    def entry(self) -> dict:
        """The level's fields in index.json, before "shards" and "bytes"."""
        entry = {"resolution": self.resolution, "encoding": self.encoding}
        if self.jpeg_quality is not None:
            entry["jpeg_quality"] = self.jpeg_quality
        return entry


def _plan_levels(resolution: int, min_resolution: int, encoding: str,
                 jpeg_quality: int) -> tuple[_Level, ...]:
    """The packed resolution and each halving down to ``min_resolution``, largest first, with
    the encoding of each (``"auto"``: raw RGB up to AUTO_RGB_MAX_RESOLUTION, PNG above)."""
    levels, r = [], resolution
    while r >= min_resolution:
        enc = encoding
        if enc == "auto":
            enc = "rgb" if r <= AUTO_RGB_MAX_RESOLUTION else "png"
        levels.append(_Level(r, enc, jpeg_quality if enc == "jpeg" else None,
                             "" if r == resolution else f"r{r}"))
        r //= 2
    return tuple(levels)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, **_PNG_OPTIONS)
    return buf.getvalue()


def _encode(img: Image.Image, level: _Level) -> bytes:
    """``img`` as the bytes of ``level``'s image member."""
    if level.encoding == "rgb":
        return img.tobytes()  # mode RGB: row-major HWC uint8, 3 * R * R bytes
    if level.encoding == "png":
        return _png_bytes(img)
    buf = io.BytesIO()
    img.save(buf, quality=level.jpeg_quality, **_JPEG_OPTIONS)
    return buf.getvalue()


def _encode_levels(full: Image.Image, levels: tuple[_Level, ...]) -> tuple[bytes, ...]:
    """``full`` (RGB, the packed resolution = ``levels[0]``) encoded at every level.

    Each smaller level is ``full.reduce(packed // R)``: one integer box reduce from the full-size
    image (not repeated halving, which rounds twice), so it equals what a reader computes from
    the full-size image.
    """
    packed = levels[0].resolution
    if full.mode != "RGB" or full.size != (packed, packed):
        raise PackError(f"expected an RGB {packed}x{packed} image, got {full.mode} {full.size}")
    return tuple(
        _encode(full if lv.resolution == packed else full.reduce(packed // lv.resolution), lv)
        for lv in levels)


# --------------------------------------------------------------------------------------------
# Workers: per-image work in processes, results in source order
# --------------------------------------------------------------------------------------------


def _ignore_sigint() -> None:
    """Worker start-up: Ctrl-C reaches the whole process group, and only the main process acts
    on it (it cancels what is left and kills the workers), so workers add no tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _ordered_map(fn: Callable, jobs: Iterable, workers: int, total: int | None):
    """Yield an iterator of ``fn(job)`` for each job, in the order of ``jobs``.

    One worker (or a number of jobs that fits in one chunk): computed here, no processes.
    Otherwise ``workers`` fresh ("spawn") processes take fixed chunks of jobs
    (``ProcessPoolExecutor.map``, ordered; ``jobs`` is consumed up front), so the results do not
    depend on the number of workers. An exception raised in a worker is raised here when its
    result is reached; a worker that dies (killed, or a script that starts processes without a
    ``__main__`` guard) raises BrokenProcessPool rather than hanging. On any exception in the
    body, Ctrl-C included, the workers are killed and reaped before the exception goes on.
    """
    if total is not None:
        workers = min(workers, -(-total // _CHUNK_SIZE))
    if workers <= 1:
        yield map(fn, jobs)
        return
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_ignore_sigint)
    try:
        yield executor.map(fn, jobs, chunksize=_CHUNK_SIZE)
    except BaseException:
        _kill_workers(executor)
        raise
    executor.shutdown()


def _kill_workers(executor: ProcessPoolExecutor) -> None:
    """Stop ``executor`` now: drop the chunks not started, terminate and reap its processes.

    The executor has no public way to reach its processes before Python 3.14
    (``terminate_workers``, which does not reap them); without ``_processes`` this falls back to
    waiting for the running chunks to finish.

    A worker killed while sending its (large: encoded images) result leaves the executor's
    manager thread blocked for ever in the middle of reading that message, since this process
    holds the result pipe's other end too; interpreter exit then waits on that thread. Closing
    this process's write end, once no worker is left, turns the wait into end-of-file: the
    manager sees a broken pool and ends, and is joined here.
    """
    processes = list((getattr(executor, "_processes", None) or {}).values())
    # shutdown() drops the executor's references to both
    writer = getattr(getattr(executor, "_result_queue", None), "_writer", None)
    manager = getattr(executor, "_executor_manager_thread", None)
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(ValueError, ProcessLookupError):  # already closed or gone
            process.terminate()
    for process in processes:
        with contextlib.suppress(ValueError):
            process.join()
    if not processes:
        executor.shutdown(wait=True)
        return
    if writer is not None:
        writer.close()
    if manager is not None:
        manager.join()


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


class _HashingFile:
    """Write-only file wrapper that sha256-hashes and counts everything written (tar needs only
    write)."""

    def __init__(self, fileobj):
        self.fileobj = fileobj
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.fileobj.write(data)


class _ShardSink:
    """Writes one level's samples into NNNNNN.tar shards in ``build / level.subdir``.

    ``out`` is only used to name the shards in verbose messages.
    """

    def __init__(self, build: Path, out: Path, level: _Level, shard_size: int, verbose: bool):
        self.directory = build / level.subdir
        self.prefix = f"{level.subdir}/" if level.subdir else ""
        self.out, self.member = out, level.member
        self.shard_size, self.verbose = shard_size, verbose
        self.shards: list[dict] = []
        self.total = 0
        self.bytes = 0
        self._writer = None
        self._file = None
        self._hasher: _HashingFile | None = None
        self._count = 0

    def write(self, meta: bytes, image: bytes) -> None:
        """Append the next sample: its ``json`` member ``meta`` and its image bytes."""
        import webdataset as wds  # heavy import, only needed when writing

        if self._writer is None:
            name = SHARD_PATTERN % len(self.shards)
            self._file = open(self.directory / name, "wb")
            self._hasher = _HashingFile(self._file)
            self._writer = wds.TarWriter(self._hasher, **_TAR_OPTIONS)
            self._count = 0
        self._writer.write({"__key__": f"{self.total:08d}", "json": meta, self.member: image})
        self._count += 1
        self.total += 1
        if self._count >= self.shard_size:
            self._finish_shard()

    def close(self) -> None:
        if self._writer is not None:
            self._finish_shard()

    def abort(self) -> None:
        """Close a half-written shard after an error (the build directory is removed anyway)."""
        if self._writer is not None:
            self._hasher.fileobj = io.BytesIO()  # let tarfile write its end blocks nowhere
            try:
                self._writer.close()
            finally:
                self._file.close()
                self._writer = self._file = self._hasher = None

    def _finish_shard(self) -> None:
        self._writer.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = self.prefix + SHARD_PATTERN % len(self.shards)
        sha256 = self._hasher.sha256.hexdigest()
        self.shards.append({"name": name, "count": self._count, "sha256": sha256})
        self.bytes += self._hasher.bytes
        if self.verbose:
            print(f"wrote {self.out / name} ({_plural(self._count, 'sample')})", flush=True)
        self._writer = self._file = self._hasher = None


def _write_index(directory: Path, index: dict) -> None:
    with open(directory / INDEX_NAME, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


# --- The output directory: checked up front, built beside OUT, swapped in at the end --------


def _is_ours(entry: os.DirEntry) -> bool:
    """True for the regular files that this packer (or an interrupted older version) writes."""
    return entry.is_file(follow_symlinks=False) and (
        entry.name == INDEX_NAME or bool(_SHARD_RE.match(entry.name))
        or bool(_LEGACY_TMP_RE.match(entry.name)))


def _foreign_entries(out: Path, holdout: bool = True) -> list[str]:
    """Entries of ``out`` (as paths relative to it) that no pack wrote: anything but our files
    and rR/ level directories, anything but NNNNNN.tar files inside a level directory, and, in a
    holdout/ directory (``holdout``: allowed here, not inside another), anything foreign to a
    pack."""
    foreign = []
    with os.scandir(out) as entries:
        for e in entries:
            if _is_ours(e):
                continue
            if _LEVEL_DIR_RE.match(e.name) and e.is_dir(follow_symlinks=False):
                with os.scandir(e.path) as inner:
                    foreign += [f"{e.name}/{i.name}" for i in inner
                                if not (i.is_file(follow_symlinks=False)
                                        and _SHARD_RE.match(i.name))]
            elif holdout and e.name == HOLDOUT_DIR and e.is_dir(follow_symlinks=False):
                foreign += [f"{e.name}/{name}"
                            for name in _foreign_entries(Path(e.path), holdout=False)]
            else:
                foreign.append(e.name)
    return sorted(foreign)


def _check_only_ours(out: Path) -> None:
    """Raise PackError if directory ``out`` holds anything a pack did not write.

    The whole of OUT is replaced by the new pack, so anything else in it would be deleted.
    """
    foreign = _foreign_entries(out)
    if foreign:
        more = f" (and {_plural(len(foreign) - 1, 'other entry')})" if len(foreign) > 1 else ""
        raise PackError(
            f"output directory {out} holds {_printable_name(foreign[0])!r}{more}, which "
            f"scalegan pack did not write; OUT must be a directory written by scalegan pack "
            f"(only {INDEX_NAME}, NNNNNN.tar, rR/NNNNNN.tar and {HOLDOUT_DIR}/ holding the same) "
            f"or empty, because packing replaces all of it"
        )


def _temp_dir_re(out: Path) -> re.Pattern:
    """Names of the build directories of packs into ``out``: ``.OUT.packing-PID[.old]``."""
    return re.compile(rf"^\.{re.escape(out.name)}\.packing-([0-9]+)(?:\.old)?$")


def _temp_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.packing-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists; True when that cannot be told (never delete then)."""
    if pid == os.getpid():
        return True
    if os.name != "posix" or pid <= 0:
        return True  # on Windows os.kill(pid, 0) would terminate the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists but belongs to another user
        return True
    return True


def _remove_dead_temp_dirs(out: Path) -> None:
    """Delete build directories beside ``out`` left by packs whose process is gone."""
    pattern = _temp_dir_re(out)
    try:
        entries = list(os.scandir(out.parent))
    except FileNotFoundError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not _pid_alive(pid):  # this process's own: see _pack
            shutil.rmtree(entry.path, ignore_errors=True)


def _prepare_out(out: str | os.PathLike) -> Path:
    """Check OUT before any image is read, and clear away dead packs' build directories."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PackError(f"output path exists and is not a directory: {out}")
    if out.is_dir():
        _check_only_ours(out)
    _remove_dead_temp_dirs(_real_out(out))
    return out


def _real_out(out: Path) -> Path:
    """OUT with symlinks resolved: the directory entry that is actually replaced."""
    return Path(os.path.realpath(out))


@functools.cache
def _renameat2():
    """libc's renameat2, or None where there is none (not Linux, or an old C library)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> None:
    """Atomically swap the directory entries ``a`` and ``b`` (Linux renameat2 RENAME_EXCHANGE).

    Raises OSError with errno ENOSYS where renameat2 is missing, EINVAL where the filesystem
    does not support the exchange.
    """
    fn = _renameat2()
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", str(a), None, str(b))
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a), None, str(b))


def _swap_in(new: Path, out: Path) -> Path | None:
    """Put the finished pack ``new`` in place of ``out``; return where the old pack now is.

    OUT missing: a plain rename. OUT present: one atomic exchange, so OUT always holds either
    the old or the new pack; where the exchange is unsupported, two renames (OUT is briefly
    missing between them).
    """
    if not os.path.lexists(out):
        try:
            os.rename(new, out)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise  # else OUT appeared meanwhile: swap with it below
        else:
            fsync_dir(out.parent)
            return None
    try:
        _exchange(new, out)
    except OSError as exc:
        if exc.errno not in _NO_EXCHANGE:
            raise
    else:
        fsync_dir(out.parent)
        return new
    old = new.with_name(new.name + ".old")
    shutil.rmtree(old, ignore_errors=True)  # a leftover of this pid that is not in use
    os.rename(out, old)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old, out)
        raise
    fsync_dir(out.parent)
    return old


@dataclass(frozen=True)
class _Options:
    """How to pack, validated: the levels to store, shard size, fit, and how to run."""

    resolution: int
    levels: tuple[_Level, ...]
    shard_size: int
    fit: str
    workers: int
    progress: bool
    verbose: bool


def _options(resolution: Any, shard_size: Any, fit: Any, min_resolution: Any, encoding: Any,
             jpeg_quality: Any, workers: Any, progress: bool | None, verbose: bool) -> _Options:
    """Validate the keyword arguments shared by pack_folder and pack_arrays (PackError naming
    the bad value) before anything is read or written."""
    resolution = _check_resolution(resolution)
    levels = _plan_levels(resolution, _check_min_resolution(min_resolution, resolution),
                          _check_encoding(encoding), _check_jpeg_quality(jpeg_quality))
    if progress is None:
        progress = sys.stderr is not None and sys.stderr.isatty()
    return _Options(resolution, levels, _check_shard_size(shard_size), _check_fit(fit),
                    _check_workers(workers), bool(progress), verbose)


@dataclass
class _Work:
    """The images to pack: ``fn(job)`` for each of ``jobs`` (``total`` of them, when known) runs
    in a worker; ``name_results`` turns the ordered results into (source name, encoded levels or
    None, skip reason or None) in the main process. ``what`` names the source in errors."""

    fn: Callable
    jobs: Iterable
    total: int | None
    name_results: Callable[[Iterator], Iterator[tuple]]
    what: str


class _PackBuilder:
    """One pack being built in ``directory`` (the build directory, or its holdout/): the shards
    of every level and the sources that could not be read. ``out`` is where the pack will be,
    for messages."""

    def __init__(self, directory: Path, out: Path, opts: _Options):
        self.directory, self.out, self.opts = directory, out, opts
        self.sinks = [_ShardSink(directory, out, lv, opts.shard_size, opts.verbose and i == 0)
                      for i, lv in enumerate(opts.levels)]
        self.skipped: list[dict] = []

    @property
    def total(self) -> int:
        return self.sinks[0].total

    def make_dirs(self) -> None:
        self.directory.mkdir(exist_ok=True)
        for lv in self.opts.levels[1:]:
            (self.directory / lv.subdir).mkdir()

    def write(self, meta: bytes, members: tuple[bytes, ...]) -> None:
        """Append one sample: its JSON ``meta`` and its image at every level."""
        for sink, image in zip(self.sinks, members, strict=True):
            sink.write(meta, image)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def abort(self) -> None:
        for sink in self.sinks:
            sink.abort()

    def levels(self) -> list[dict]:
        """index.json's "levels" (call after close)."""
        return [{**lv.entry(), "shards": sink.shards, "bytes": sink.bytes}
                for lv, sink in zip(self.opts.levels, self.sinks, strict=True)]

    def index(self, label_kind: str | None, attribute_dim: int | None,
              classes: list[str] | None, **extra: Any) -> dict:
        """The pack's index.json, ``extra`` fields last (call after close)."""
        index = {
            "num_samples": self.total,
            "resolution": self.opts.resolution,
            "shards": self.sinks[0].shards,
            "skipped": self.skipped,
            "fit": self.opts.fit,
            "channels": CHANNELS,
            "labels": label_kind,
        }
        if attribute_dim is not None:
            index["attribute_dim"] = attribute_dim
        if classes is not None:
            index["classes"] = classes
        index["format"] = FORMAT
        index["levels"] = self.levels()
        return {**index, **extra}

    def fsync(self) -> None:
        for lv in self.opts.levels[1:]:
            fsync_dir(self.directory / lv.subdir)
        fsync_dir(self.directory)

    def summary(self, holdout: PackSummary | None = None) -> PackSummary:
        return PackSummary(self.total, self.opts.resolution, self.sinks[0].shards, self.skipped,
                           str(self.out), self.levels(), holdout)


def _pack(
    work: _Work, out: Path, opts: _Options, labels: dict[str, dict] | None = None,
    classes: list[str] | None = None, label_kind: str | None = None,
    attribute_dim: int | None = None, holdout: frozenset[str] | None = None,
) -> PackSummary:
    """Pack ``work`` into every level's shards and index.json in a build directory beside
    ``out``, then swap it in for ``out``. ``labels`` maps a source to the fields added to its
    sample's JSON, ``label_kind``/``attribute_dim`` describe them for index.json. The sources in
    ``holdout`` go to the held-out pack in the build directory's holdout/ instead.

    On any error (Ctrl-C included) the worker pool is terminated, the build directory removed
    and ``out`` left as it was.
    """
    real_out = _real_out(out)
    build = _temp_dir(real_out)
    real_out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(build, ignore_errors=True)  # a leftover of this pid that is not in use
    build.mkdir()
    main = _PackBuilder(build, out, opts)
    held = (_PackBuilder(build / HOLDOUT_DIR, out / HOLDOUT_DIR, opts) if holdout is not None
            else None)
    builders = [main] if held is None else [main, held]
    old = None
    try:
        for builder in builders:
            builder.make_dirs()
        with (_ordered_map(work.fn, work.jobs, opts.workers, work.total) as results,
              tqdm(total=work.total, desc="pack", unit="img", file=sys.stderr,
                   disable=not opts.progress) as bar):
            bar.set_postfix(skipped=0, refresh=False)
            for source, members, reason in work.name_results(results):
                target = held if held is not None and source in holdout else main
                if members is None:
                    target.skipped.append({"path": source, "reason": reason})
                    if opts.verbose:
                        note = " (held out)" if target is held else ""
                        print(f"skipped {source}{note}: {reason}", flush=True)
                    bar.set_postfix(skipped=sum(len(b.skipped) for b in builders),
                                    refresh=False)
                else:
                    extra = labels.get(source, {}) if labels else {}
                    target.write(json.dumps({"source": source, **extra},
                                            ensure_ascii=False).encode("utf-8"), members)
                bar.update()
        for builder in builders:
            builder.close()
        _check_readable(main, held, work.what)
        index_fields = (label_kind, attribute_dim, classes)
        extra = {}
        if held is not None:
            _write_index(held.directory, held.index(*index_fields, holdout_of=".."))
            held.fsync()
            extra["holdout"] = {"dir": HOLDOUT_DIR, "num_samples": held.total}
        _write_index(build, main.index(*index_fields, **extra))
        main.fsync()
        if real_out.is_dir():
            _check_only_ours(real_out)  # again: something may have been put there meanwhile
            with contextlib.suppress(OSError):  # keep OUT's permissions
                os.chmod(build, stat.S_IMODE(os.stat(real_out).st_mode))
        old = _swap_in(build, real_out)
    except BaseException:
        for builder in builders:
            builder.abort()
        shutil.rmtree(build, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # a failure here leaves it to the next pack
    return main.summary(held.summary() if held is not None else None)


def _check_readable(main: _PackBuilder, held: _PackBuilder | None, what: str) -> None:
    """PackError when the training pack or the held-out pack got no image at all."""
    if main.total == 0:
        skipped = main.skipped + (held.skipped if held is not None else [])
        detail = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5])
        where = " outside the held-out set" if held is not None and held.total else ""
        raise PackError(
            f"no readable images in {what}{where} ({len(skipped)} skipped: {detail})")
    if held is not None and held.total == 0:
        detail = "; ".join(f"{s['path']}: {s['reason']}" for s in held.skipped[:5])
        raise PackError(f"--holdout: none of the {_plural(len(held.skipped), 'image')} chosen "
                        f"to hold out could be read ({detail})")


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def pack_folder(
    src: str | os.PathLike,
    out: str | os.PathLike,
    resolution: int,
    *,
    shard_size: int = 1000,
    fit: str = "crop",
    labels: str | os.PathLike | None = None,
    verbose: bool = False,
    min_resolution: int | None = None,
    encoding: str = "auto",
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    workers: int | None = None,
    progress: bool | None = None,
    holdout: int | float | None = None,
) -> PackSummary:
    """Pack every image under ``src`` (recursive, sorted by relative path) into shards in ``out``.

    Images become ``resolution x resolution`` RGB uint8 images (see :func:`to_square_rgb`),
    stored at ``resolution`` and at every halving down to ``min_resolution`` (a power of two
    from 4 to ``resolution``; default 8, or ``resolution`` when that is smaller; equal to
    ``resolution``: one level), each level ``full.reduce(resolution // R)``. ``encoding``:
    ``"png"``, ``"rgb"`` (raw pixels), ``"jpeg"`` (at ``jpeg_quality``, lossy) or ``"auto"``
    (raw RGB up to :data:`AUTO_RGB_MAX_RESOLUTION`, PNG above).

    Unreadable files are skipped and listed in ``PackSummary.skipped``. ``labels``: ``"dirs"``
    (class = the image's top-level folder under ``src``, ids in sorted name order), or a JSON
    file mapping each image's relative path to a class id, or each to a list of numbers
    (attributes, all of one length). Bytes of a path that are not valid UTF-8 appear as
    ``\\\\xNN`` in the stored source and in the labels file's keys.

    ``workers`` processes (default: one per CPU core; 1 = no pool) read, resize and encode the
    images; the shards are byte-identical for any number of workers. The processes are started
    with the "spawn" method (no fork of a process that may hold threads), so a script calling
    this with more than one worker must do so under ``if __name__ == "__main__":``.
    ``progress``: a tqdm bar on stderr (images done, images/s, skipped so far); default when
    stderr is a terminal.

    ``holdout``: a count of images (int >= 1), or a fraction in (0, 1) of the image files found
    (rounded to the nearest, halves to even; at least 1), to write to ``out/holdout`` instead of
    ``out``: the files whose relative path (the stored source) has the smallest SHA-256. They are
    chosen among the files found, before any is read, so an unreadable one among them makes the
    held-out set smaller (``PackSummary.holdout.skipped``). PackError unless at least one file
    is left to train on.

    ``out`` must not exist, be empty, or hold a previous pack (which is replaced, its held-out
    set included, only once the new one is complete); anything else in it raises PackError
    before any image is read.
    """
    opts = _options(resolution, shard_size, fit, min_resolution, encoding, jpeg_quality, workers,
                    progress, verbose)
    src_path = Path(src)
    if not src_path.exists():
        raise PackError(f"source directory does not exist: {src_path}")
    if not src_path.is_dir():
        raise PackError(f"source is not a directory: {src_path}")
    rel_paths = _find_images(src_path)
    if not rel_paths:
        exts = ", ".join(sorted(e[1:] for e in IMAGE_EXTENSIONS))
        raise PackError(f"no image files ({exts}) found under {src_path}")
    names = [_printable_name(rel) for rel in rel_paths]
    held = _choose_holdout(holdout, names)
    label_fields, classes, kind, dim = (_read_labels(labels, names) if labels
                                        else (None, None, None, None))
    out_path = _prepare_out(out)
    work = _Work(
        functools.partial(_folder_job, resolution=opts.resolution, fit=opts.fit,
                          levels=opts.levels),
        [(str(src_path / rel), name) for rel, name in zip(rel_paths, names, strict=True)],
        len(rel_paths), iter, str(src_path))
    return _pack(work, out_path, opts, label_fields, classes, kind, dim, held)


def _read_labels(labels: str | os.PathLike, rel_paths: list[str]
                 ) -> tuple[dict[str, dict], list[str] | None, str, int | None]:
    """Per image (by printable relative path), the JSON fields of its label; the class names
    for ``"dirs"``; what the labels are (``"label"`` or ``"attributes"``); the attribute length.
    """
    if str(labels) == "dirs":
        flat = [p for p in rel_paths if "/" not in p]
        if flat:
            raise PackError(f"--labels dirs: {flat[0]} is not inside a class folder (every image "
                            f"must be under SRC/<class>/)")
        classes = sorted({p.split("/", 1)[0] for p in rel_paths})
        ids = {name: i for i, name in enumerate(classes)}
        return {p: {"label": ids[p.split("/", 1)[0]]} for p in rel_paths}, classes, "label", None
    path = Path(labels)
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PackError(f"labels file {path}: {e}") from None
    if not isinstance(table, dict):
        raise PackError(f"labels file {path}: expected an object mapping image paths to labels")
    fields: dict[str, dict] = {}
    kind = first = dim = None
    for rel in rel_paths:
        if rel not in table:
            raise PackError(f"labels file {path} has no entry for image {rel!r}")
        value = table[rel]
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            fields[rel], this = {"label": value}, "label"
        elif (isinstance(value, list) and value
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            fields[rel], this = {"attributes": [float(v) for v in value]}, "attributes"
        else:
            raise PackError(f"labels file {path}: {rel!r} -> {value!r} is neither a class id "
                            f"(int >= 0) nor a non-empty list of numbers")
        if kind is None:
            kind, first = this, rel
            dim = len(value) if this == "attributes" else None
        elif this != kind:
            raise PackError(
                f"labels file {path} mixes class ids and attribute lists: {first!r} has "
                f"{_describe_label(table[first])}, {rel!r} has {_describe_label(value)} "
                f"(use one kind for every image)")
        elif this == "attributes" and len(value) != dim:
            raise PackError(
                f"labels file {path}: {rel!r} has {_plural(len(value), 'attribute')} but "
                f"{first!r} has {dim} (every attribute list must have the same length)")
    return fields, None, kind, dim


def _describe_label(value: Any) -> str:
    return f"a class id ({value!r})" if isinstance(value, int) else "an attribute list"


def pack_arrays(
    images: Iterable[Any],
    out: str | os.PathLike,
    resolution: int,
    *,
    shard_size: int = 1000,
    fit: str = "crop",
    names: list[str] | None = None,
    verbose: bool = False,
    labels: Iterable[int] | None = None,
    classes: list[str] | None = None,
    min_resolution: int | None = None,
    encoding: str = "auto",
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    workers: int | None = 1,
    progress: bool | None = None,
    holdout: int | float | None = None,
) -> PackSummary:
    """Pack in-memory images into shards in ``out``, at the same levels and encodings as
    :func:`pack_folder` (``min_resolution``, ``encoding``, ``jpeg_quality``, ``progress``), and
    with a held-out set in ``out/holdout`` chosen by source name as there (``holdout``; every
    name must then be unique, and ``images`` is read into a list once ``out`` is checked).

    ``images``: iterable of numpy arrays, each HxW (grayscale), HxWx3 or HxWx4 (alpha composited
    on white), dtype uint8, uint16 (full 16-bit range) or float in [0, 1]. ``names`` (one per
    image) become the ``source`` field; default is the array's index as a string. ``labels``
    (one class id per image, with the class names ``classes``) are stored as each sample's
    ``"label"``, as ``--labels`` does. Bad arrays raise PackError naming their index (they are
    caller bugs, not files to skip).

    ``workers`` defaults to 1 here (no pool): every array would be copied through a pipe to a
    worker process, which pays off only for many large images; None means one per CPU core
    (started as :func:`pack_folder` starts them, and ``images`` is then read in full up front).
    The shards are byte-identical for any number of workers.
    """
    opts = _options(resolution, shard_size, fit, min_resolution, encoding, jpeg_quality, workers,
                    progress, verbose)
    if isinstance(images, np.ndarray) and images.ndim == 0:
        raise PackError("images must be an iterable of arrays, got a 0-d array")
    names = list(names) if names is not None else None
    label_fields = None
    if labels is not None:
        labels = [int(v) for v in labels]
        keys = names if names is not None else [str(i) for i in range(len(labels))]
        if len(keys) != len(labels):
            raise PackError(f"labels has {len(labels)} entries for {len(keys)} names")
        bad = [v for v in labels if v < 0 or (classes is not None and v >= len(classes))]
        if bad:
            raise PackError(f"label {bad[0]} is out of range (class ids are 0 .. "
                            f"{len(classes) - 1 if classes else 'n'})")
        label_fields = {k: {"label": v} for k, v in zip(keys, labels, strict=True)}
    out_path = _prepare_out(out)
    held = None
    if holdout is not None:
        images = list(images)  # the choice needs every name, and a fraction the count
        if names is not None and len(names) != len(images):
            raise PackError(f"names has {len(names)} entries for {len(images)} images")
        held = _choose_holdout(holdout, names if names is not None
                               else [str(i) for i in range(len(images))])
    total = len(images) if hasattr(images, "__len__") else None
    work = _Work(
        functools.partial(_array_job, resolution=opts.resolution, fit=opts.fit,
                          levels=opts.levels),
        enumerate(images), total, functools.partial(_name_arrays, names=names),
        "the given arrays")
    if label_fields is None:
        return _pack(work, out_path, opts, holdout=held)
    return _pack(work, out_path, opts, label_fields, classes, "label", holdout=held)
