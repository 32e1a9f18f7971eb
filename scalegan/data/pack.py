"""Pack images into WebDataset tar shards for training.

Layout written to OUT::

    OUT/000000.tar, OUT/000001.tar, ...   each holding up to ``shard_size`` samples
    OUT/index.json                        {"num_samples", "resolution", "shards", "skipped", "fit"}

Each sample has ``__key__`` = ``%08d`` of its global index, ``png`` = PNG bytes of a
``resolution x resolution`` RGB uint8 image and ``json`` = ``{"source": <relative path or name>}``,
plus, when packing with labels, ``"label": <class id>`` or ``"attributes": [numbers]``
(index.json then lists the class names under ``"classes"``).

The output is deterministic: packing the same input twice gives byte-identical shards (fixed tar
mtime/owner, PNG encoded here with fixed options, files visited in sorted order).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = [
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
# Only files that this packer could have written are ever deleted from OUT.
_SHARD_RE = re.compile(r"^\d{6}\.tar$")
_TMP_RE = re.compile(r"^\.\d{6}\.tar\.tmp$|^\.index\.json\.tmp$")

# Fixed tar metadata so that shards are byte-identical across runs and machines.
_TAR_OPTIONS = dict(user="scalegan", group="scalegan", mtime=0, compress=False, encoder=False)
# Fixed PNG options; Pillow writes no timestamp chunk unless asked to.
_PNG_OPTIONS = dict(format="PNG", optimize=False, compress_level=6)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class PackError(ValueError):
    """Bad input to the packer; the message names the offending path or value."""


@dataclass
class PackSummary:
    """What a pack run produced (mirrors ``OUT/index.json`` plus the output directory)."""

    num_samples: int
    resolution: int
    shards: list[dict] = field(default_factory=list)  # [{"name", "count", "sha256"}]
    skipped: list[dict] = field(default_factory=list)  # [{"path", "reason"}]
    out_dir: str = ""

    def to_text(self) -> str:
        """Human-readable summary, one line per skipped file."""
        lines = [
            f"{_plural(self.num_samples, 'sample')} in {_plural(len(self.shards), 'shard')} "
            f"at {self.resolution}x{self.resolution}, {len(self.skipped)} skipped -> {self.out_dir}"
        ]
        lines += [f"  skipped {s['path']}: {s['reason']}" for s in self.skipped]
        return "\n".join(lines)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_resolution(resolution: Any) -> int:
    """Return ``resolution`` as int if it is a power of two in [4, 4096], else raise PackError."""
    ok = isinstance(resolution, (int, np.integer)) and not isinstance(resolution, (bool, np.bool_))
    if ok:
        r = int(resolution)
        ok = MIN_RESOLUTION <= r <= MAX_RESOLUTION and (r & (r - 1)) == 0
    if not ok:
        raise PackError(
            f"resolution must be a power of two from {MIN_RESOLUTION} to {MAX_RESOLUTION}, "
            f"got {resolution!r}"
        )
    return r


def _check_fit(fit: Any) -> str:
    if fit not in FITS:
        raise PackError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    return fit


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
# Sources: each yields (source name, RGB image or None, skip reason or None)
# --------------------------------------------------------------------------------------------


def _find_images(src: Path) -> list[str]:
    """Relative POSIX paths of image files under ``src``, sorted (so packing is deterministic)."""
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


def _folder_samples(src: Path, rel_paths: list[str], resolution: int, fit: str) -> Iterator[tuple]:
    for rel in rel_paths:
        try:
            img = to_square_rgb(_load_image(src / rel, resolution), resolution, fit)
        except Exception as exc:  # noqa: BLE001 - untrusted files make PIL raise nearly anything
            yield rel, None, _reason(exc)
        else:
            yield rel, img, None


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


def _array_samples(
    images: Iterable[Any], names: list[str] | None, resolution: int, fit: str
) -> Iterator[tuple]:
    count = 0
    for i, arr in enumerate(images):
        if names is not None and i >= len(names):
            raise PackError(f"names has {len(names)} entries but there are more images")
        name = names[i] if names is not None else str(i)
        yield name, to_square_rgb(_array_to_image(arr, i), resolution, fit), None
        count += 1
    if names is not None and count != len(names):
        raise PackError(f"names has {len(names)} entries but there were {count} images")


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


class _HashingFile:
    """Write-only file wrapper that sha256-hashes everything written (tar needs only write)."""

    def __init__(self, fileobj):
        self.fileobj = fileobj
        self.sha256 = hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.fileobj.write(data)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, **_PNG_OPTIONS)
    return buf.getvalue()


class _ShardSink:
    """Writes samples into OUT/NNNNNN.tar shards, each made atomic via temp file + os.replace.

    Nothing in OUT is touched until the first sample arrives, so a run that fails before
    producing any sample leaves a previous pack intact.
    """

    def __init__(self, out: Path, shard_size: int, verbose: bool):
        self.out, self.shard_size, self.verbose = out, shard_size, verbose
        self.shards: list[dict] = []
        self.total = 0
        self._writer = None
        self._file = None
        self._hasher: _HashingFile | None = None
        self._count = 0

    def write(self, source: str, img: Image.Image, extra: dict | None = None) -> None:
        import webdataset as wds  # heavy import, only needed when writing

        if self._writer is None:
            if not self.shards:
                self._start_run()
            name = SHARD_PATTERN % len(self.shards)
            self._file = open(self.out / f".{name}.tmp", "wb")
            self._hasher = _HashingFile(self._file)
            self._writer = wds.TarWriter(self._hasher, **_TAR_OPTIONS)
            self._count = 0
        sample = {
            "__key__": f"{self.total:08d}",
            "json": json.dumps({"source": source, **(extra or {})},
                               ensure_ascii=False).encode("utf-8"),
            "png": _png_bytes(img),
        }
        self._writer.write(sample)
        self._count += 1
        self.total += 1
        if self._count >= self.shard_size:
            self._finish_shard()

    def close(self) -> None:
        if self._writer is not None:
            self._finish_shard()

    def abort(self) -> None:
        """Drop a half-written shard (its temp file) after an error."""
        if self._writer is not None:
            self._hasher.fileobj = io.BytesIO()  # let tarfile write its end blocks nowhere
            self._writer.close()
            self._file.close()
            os.unlink(self._file.name)
            self._writer = self._file = self._hasher = None

    def _start_run(self) -> None:
        # An old index would describe shards we are about to overwrite, so remove it first.
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / INDEX_NAME).unlink(missing_ok=True)

    def _finish_shard(self) -> None:
        self._writer.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = SHARD_PATTERN % len(self.shards)
        os.replace(self._file.name, self.out / name)
        sha256 = self._hasher.sha256.hexdigest()
        self.shards.append({"name": name, "count": self._count, "sha256": sha256})
        if self.verbose:
            print(f"wrote {self.out / name} ({_plural(self._count, 'sample')})", flush=True)
        self._writer = self._file = self._hasher = None


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete shard-named tars (NNNNNN.tar) not written by this run, and our leftover temp files."""
    for entry in os.scandir(out):
        if not entry.is_file():
            continue
        if (_SHARD_RE.match(entry.name) and entry.name not in keep) or _TMP_RE.match(entry.name):
            os.unlink(entry.path)


def _write_index(out: Path, index: dict) -> None:
    tmp = out / f".{INDEX_NAME}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / INDEX_NAME)


def _prepare_out(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PackError(f"output path exists and is not a directory: {out}")
    return out


def _pack(
    samples: Iterator[tuple], out: Path, resolution: int, shard_size: int, fit: str, verbose: bool,
    what: str, labels: dict[str, dict] | None = None, classes: list[str] | None = None,
) -> PackSummary:
    """Drain ``samples`` into shards, then write index.json last. ``what`` names the source;
    ``labels`` maps a source to the fields added to its sample's JSON."""
    sink = _ShardSink(out, shard_size, verbose)
    skipped: list[dict] = []
    try:
        for source, img, reason in samples:
            if img is None:
                skipped.append({"path": source, "reason": reason})
                if verbose:
                    print(f"skipped {source}: {reason}", flush=True)
            else:
                sink.write(source, img, labels.get(source) if labels else None)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    if sink.total == 0:
        detail = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5])
        raise PackError(f"no readable images in {what} ({len(skipped)} skipped: {detail})")
    _remove_stale(out, {s["name"] for s in sink.shards})
    index = {
        "num_samples": sink.total,
        "resolution": resolution,
        "shards": sink.shards,
        "skipped": skipped,
        "fit": fit,
    }
    if classes is not None:
        index["classes"] = classes
    _write_index(out, index)
    return PackSummary(sink.total, resolution, sink.shards, skipped, str(out))


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
) -> PackSummary:
    """Pack every image under ``src`` (recursive, sorted by relative path) into shards in ``out``.

    Images become ``resolution x resolution`` RGB uint8 PNGs (see :func:`to_square_rgb`).
    Unreadable files are skipped and listed in ``PackSummary.skipped``. ``labels``: ``"dirs"``
    (class = the image's top-level folder under ``src``, ids in sorted name order), or a JSON
    file mapping each image's relative path to a class id or a list of numbers (attributes).
    """
    resolution = _check_resolution(resolution)
    fit = _check_fit(fit)
    shard_size = _check_shard_size(shard_size)
    src_path = Path(src)
    if not src_path.exists():
        raise PackError(f"source directory does not exist: {src_path}")
    if not src_path.is_dir():
        raise PackError(f"source is not a directory: {src_path}")
    rel_paths = _find_images(src_path)
    if not rel_paths:
        exts = ", ".join(sorted(e[1:] for e in IMAGE_EXTENSIONS))
        raise PackError(f"no image files ({exts}) found under {src_path}")
    label_fields, classes = _read_labels(labels, rel_paths) if labels else (None, None)
    out_path = _prepare_out(out)
    samples = _folder_samples(src_path, rel_paths, resolution, fit)
    return _pack(samples, out_path, resolution, shard_size, fit, verbose, str(src_path),
                 label_fields, classes)


def _read_labels(labels: str | os.PathLike, rel_paths: list[str]
                 ) -> tuple[dict[str, dict], list[str] | None]:
    """Per image, the JSON fields of its label; the class names for ``"dirs"``."""
    if str(labels) == "dirs":
        flat = [p for p in rel_paths if "/" not in p]
        if flat:
            raise PackError(f"--labels dirs: {flat[0]} is not inside a class folder (every image "
                            f"must be under SRC/<class>/)")
        classes = sorted({p.split("/", 1)[0] for p in rel_paths})
        ids = {name: i for i, name in enumerate(classes)}
        return {p: {"label": ids[p.split("/", 1)[0]]} for p in rel_paths}, classes
    path = Path(labels)
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PackError(f"labels file {path}: {e}") from None
    if not isinstance(table, dict):
        raise PackError(f"labels file {path}: expected an object mapping image paths to labels")
    fields = {}
    for rel in rel_paths:
        if rel not in table:
            raise PackError(f"labels file {path} has no entry for image {rel!r}")
        value = table[rel]
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            fields[rel] = {"label": value}
        elif (isinstance(value, list) and value
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            fields[rel] = {"attributes": [float(v) for v in value]}
        else:
            raise PackError(f"labels file {path}: {rel!r} -> {value!r} is neither a class id "
                            f"(int >= 0) nor a non-empty list of numbers")
    return fields, None


def pack_arrays(
    images: Iterable[Any],
    out: str | os.PathLike,
    resolution: int,
    *,
    shard_size: int = 1000,
    fit: str = "crop",
    names: list[str] | None = None,
    verbose: bool = False,
) -> PackSummary:
    """Pack in-memory images into shards in ``out``.

    ``images``: iterable of numpy arrays, each HxW (grayscale), HxWx3 or HxWx4 (alpha composited
    on white), dtype uint8, uint16 (full 16-bit range) or float in [0, 1]. ``names`` (one per
    image) become the ``source`` field; default is the array's index as a string. Bad arrays
    raise PackError naming their index (they are caller bugs, not files to skip).
    """
    resolution = _check_resolution(resolution)
    fit = _check_fit(fit)
    shard_size = _check_shard_size(shard_size)
    if isinstance(images, np.ndarray) and images.ndim == 0:
        raise PackError("images must be an iterable of arrays, got a 0-d array")
    names = list(names) if names is not None else None
    out_path = _prepare_out(out)
    samples = _array_samples(images, names, resolution, fit)
    return _pack(samples, out_path, resolution, shard_size, fit, verbose, "the given arrays")
