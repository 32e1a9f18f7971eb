"""Streaming image batches from WebDataset shards, with a global, resumable data position.

**The order of an epoch is a function of the seed alone.** Epoch ``e`` visits the shards in a
seeded order; every shard's samples come out in a seeded order of their own (a shuffle buffer
over the shard, seeded by the seed, the epoch and the shard), so what has been read of epoch
``e`` is always, for each shard, a prefix of that shard's order: a number per shard. That is the
data position, and it means the same thing at any world size and worker count.

**Each rank and worker takes a deterministic slice of what remains.** A worker plays a *role*;
the ``world x workers`` roles are dealt the epoch's unfinished shards in turn (role ``j`` takes
shards ``j, j + R, j + 2R, ...`` of them, ``R`` roles). A role reads up to four of its shards at
once and takes each next sample from one of them, chosen by its own seeded draw, so a batch mixes
several shards. A role that finishes its slice goes on to its slice of the next epoch.

**Restarts.** The DataLoader hands out batches from its workers in turn, so after ``k`` batches
the next one is role ``k % workers``'s; every batch carries its role's position (epoch, samples
taken, each shard's count), and the rank keeps the last one it consumed. Restarting with the same
ranks and workers, each role re-derives its slice and skips the samples it already delivered
(undecoded), so the run continues bit for bit. Restarting at another world size or worker count,
the saved positions of all ranks are merged into per-shard counts, and the new roles are dealt
what remains of each epoch in progress: every sample of the epoch is still seen exactly once.
The same restart is used when the training resolution changes.

**Multi-resolution packs.** ``scalegan pack`` stores every sample at each halving of its
resolution down to a minimum, in one shard set per level holding the same samples in the same
order (``index.json`` "levels"). The stream reads the smallest stored level at or above the
training resolution, so a 16x16 phase of a 1024x1024 data set decodes 16x16 images. A level is
the packed image box-reduced in one step, which is exactly what decoding the full-size image and
reducing it gives: the served pixels do not depend on which level they came from.

Conditional models also get each sample's label from its JSON (``"label"``, a class id, or
``"attributes"``, a vector: what ``scalegan pack --labels`` writes), and multi-scale models the
same image box-filtered to every scale they train (``pyramid``).
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import braceexpand
import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from scalegan.data.shards import ShardReadError, is_remote, iter_tar_samples, join_url, read_json
from scalegan.train.preemption import blocked, ignore_in_child

log = logging.getLogger(__name__)


class DataError(ValueError):
    """The shard list or the data in it cannot be used; names the shard or the key."""


# ------------------------------------------------------------------------------------ shard lists


def _is_remote(url: str) -> bool:
    return is_remote(url)


def _check_index(data: object, index: str) -> dict:
    shards = data.get("shards") if isinstance(data, dict) else None
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) for s in shards):
        raise DataError(f"{index} has no list of shards ('shards': [{{'name': ...}}, ...]); "
                        f"re-pack the data with `scalegan pack`")
    levels = data.get("levels", [])
    if not isinstance(levels, list) or not all(
            isinstance(v, dict) and isinstance(v.get("resolution"), int)
            and isinstance(v.get("shards"), list) and len(v["shards"]) == len(shards)
            for v in levels):
        raise DataError(f"{index}: 'levels' must list {{'resolution', 'shards'}} entries with "
                        f"as many shards as 'shards' ({len(shards)}); re-pack the data with "
                        f"`scalegan pack`")
    for s in [s for v in levels for s in v["shards"]] + shards:
        name = Path(s.get("name", "") if isinstance(s, dict) else "")
        if not name.parts or name.is_absolute() or ".." in name.parts:
            raise DataError(f"{index} names a shard outside its directory: {s!r}")
    return data


def read_index(directory: Path) -> dict:
    """``directory/index.json`` as ``scalegan pack`` writes it; DataError naming the file when it
    is not JSON or has no list of shards."""
    index = directory / "index.json"
    try:
        data = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{index} is not a readable index of shards ({e}); re-pack the data with "
                        f"`scalegan pack`") from None
    return _check_index(data, str(index))


def read_remote_index(url: str, retries: int = 5, backoff: float = 1.0) -> dict:
    """An index.json given as an http(s) URL, read with retries; DataError naming the URL."""
    try:
        data = read_json(url, retries=retries, backoff=backoff)
    except (ShardReadError, OSError, ValueError) as e:
        raise DataError(f"{url} is not a readable index of shards ({e})") from None
    return _check_index(data, url)


@dataclass(frozen=True)
class Level:
    """One stored resolution of a shard set: shard ``i`` of every level holds the same samples.
    ``resolution`` is None for shards whose size is not recorded (no index.json)."""
    resolution: int | None
    urls: tuple[str, ...]


@dataclass(frozen=True)
class ShardSet:
    """The shards a stream reads: one ``Level`` per stored resolution, largest first."""
    levels: tuple[Level, ...]

    @property
    def urls(self) -> list[str]:
        """The full-size shards."""
        return list(self.levels[0].urls)

    def __len__(self) -> int:
        return len(self.levels[0].urls)

    def level_for(self, resolution: int) -> Level:
        """The smallest stored level at or above ``resolution`` (the smallest level when every
        one is larger; the full-size shards when sizes are not recorded)."""
        known = [v for v in self.levels if v.resolution is not None]
        if len(known) != len(self.levels):
            return self.levels[0]
        above = [v for v in known if v.resolution >= resolution]
        return above[-1] if above else known[0]


def _index_levels(index: dict, url_of) -> tuple[Level, ...]:
    top = Level(index.get("resolution") if isinstance(index.get("resolution"), int) else None,
                tuple(url_of(s["name"]) for s in index["shards"]))
    levels = [Level(v["resolution"], tuple(url_of(s["name"]) for s in v["shards"]))
              for v in index.get("levels", [])]
    if not levels or levels[0].resolution != top.resolution:
        levels.insert(0, top)
    return tuple(sorted(levels, key=lambda v: -v.resolution if v.resolution else 0))


def open_shards(spec: str, key: str = "data.shards", allow_unindexed: bool = False,
                retries: int = 5, backoff: float = 1.0) -> ShardSet:
    """The shard set named by ``spec``: a directory with ``index.json`` (its stored levels too),
    an index.json URL (http/https), a brace pattern ('x/{000000..000031}.tar', local paths, URLs
    or ``pipe:`` commands) or a comma-separated list of these. The levels of a list are those
    every part stores; local shards are checked to exist. A directory of ``*.tar`` files without
    ``index.json`` (an interrupted pack, or a folder that mixes packs) is refused unless
    ``allow_unindexed``."""
    if not spec or not str(spec).strip():
        raise DataError(f"{key} is empty: give a shard directory, a brace pattern such as "
                        f"'shards/{{000000..000009}}.tar', or a comma-separated list of tar files")
    parts: list[tuple[Level, ...]] = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        path = Path(part)
        if _is_remote(part) and part.split("?")[0].endswith(".json"):
            index = read_remote_index(part, retries, backoff)
            parts.append(_index_levels(index, lambda name, base=part: join_url(base, name)))
        elif not _is_remote(part) and path.is_dir():
            if (path / "index.json").is_file():
                index = read_index(path)
                parts.append(_index_levels(index, lambda name, d=path: str(d / name)))
            else:
                tars = sorted(str(p) for p in path.glob("*.tar"))
                if tars and not allow_unindexed:
                    raise DataError(f"{key}: {path} holds {len(tars)} tar file(s) but no "
                                    f"index.json, so nothing says they are one complete pack "
                                    f"(an interrupted `scalegan pack` leaves such a folder); "
                                    f"re-pack, or set data.allow_unindexed=true to train on "
                                    f"every tar in it")
                parts.append((Level(None, tuple(tars)),))
        else:
            parts.append((Level(None, tuple(braceexpand.braceexpand(part))),))
    urls = [u for p in parts for u in p[0].urls]
    if not urls:
        raise DataError(f"{key}={spec!r} matched no shards")
    missing = [u for p in parts for v in p for u in v.urls
               if not _is_remote(u) and not Path(u.removeprefix("file://")).is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        total = sum(len(v.urls) for p in parts for v in p)
        raise DataError(f"{key}={spec!r}: {len(missing)} of {total} shards do not exist: "
                        f"{', '.join(missing[:3])}{more}")
    common = set.intersection(*({v.resolution for v in p} for p in parts))
    if None in common or not common:
        return ShardSet((Level(None, tuple(urls)),))
    return ShardSet(tuple(
        Level(r, tuple(u for p in parts for v in p if v.resolution == r for u in v.urls))
        for r in sorted(common, reverse=True)))


def expand_shards(spec: str, key: str = "data.shards", allow_unindexed: bool = False) -> list[str]:
    """The full-size shards named by ``spec`` as a list of paths/URLs (see ``open_shards``)."""
    return open_shards(spec, key, allow_unindexed).urls


def check_pack(spec: str, resolution: int, *, img_channels: int = 3, condition: str = "none",
               embedding_dim: int = 0, num_classes: int = 0, key: str = "data.shards") -> None:
    """Before training: what each packed directory's index.json records must fit the model
    (the stored resolution at least ``resolution``; RGB data for an RGB model; labels of the kind
    and size a conditional model reads). DataError naming the file, the values and the key.
    Shards given without an index are checked as they are read."""
    for part in str(spec).split(","):
        path = Path(part.strip())
        if not part.strip() or _is_remote(part) or not (path / "index.json").is_file():
            continue
        index_file, index = path / "index.json", read_index(path)
        packed = index.get("resolution")
        if isinstance(packed, int) and packed < resolution:
            raise DataError(f"{index_file}: the images are packed at {packed}x{packed}, smaller "
                            f"than model.resolution={resolution}; re-pack them with "
                            f"`scalegan pack ... --resolution {resolution}` or lower "
                            f"model.resolution")
        channels = index.get("channels")
        if isinstance(channels, int) and channels < img_channels:
            raise DataError(f"{index_file}: the images have {channels} channel(s) but "
                            f"model.img_channels={img_channels}")
        if "labels" not in index or condition == "none":
            continue
        stored = index["labels"]
        wanted = {"label": "label", "embedding": "attributes"}[condition]
        if stored != wanted:
            have = "no labels" if stored is None else f"labels of kind {stored!r}"
            raise DataError(f"{index_file}: the pack holds {have}, but model.condition="
                            f"{condition} reads {wanted!r} (`scalegan pack SRC OUT --labels "
                            f"dirs|FILE.json`)")
        dim = index.get("attribute_dim")
        if condition == "embedding" and isinstance(dim, int) and dim != embedding_dim:
            raise DataError(f"{index_file}: attribute vectors of length {dim}, but "
                            f"model.embedding_dim={embedding_dim}")
        classes = index.get("classes")
        if condition == "label" and isinstance(classes, list) and len(classes) > num_classes:
            raise DataError(f"{index_file} lists {len(classes)} classes but model.num_classes="
                            f"{num_classes}: set model.num_classes={len(classes)}")


# ---------------------------------------------------------------------------------- sample decode


def _reduce(img: Image.Image, resolution: int) -> Image.Image:
    w, h = img.size
    if w != h:
        raise ValueError(f"image is {w}x{h}, not square (pack it with `scalegan pack`)")
    if w < resolution:
        raise DataError(f"image is {w}x{w}, smaller than the training resolution {resolution}")
    if w == resolution:
        return img
    if w % resolution == 0:
        return img.reduce(w // resolution)
    return img.resize((resolution, resolution), Image.BOX)


def decode_image(png: bytes, resolution: int) -> np.ndarray:
    """PNG/JPEG bytes -> (resolution, resolution, 3) uint8, box-filtered down if larger.

    Box (area) filtering is what FID reference implementations use to shrink real images, and an
    integer factor makes it an exact average of pixel blocks.
    """
    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(_reduce(img.convert("RGB"), resolution), dtype=np.uint8)


def decode_rgb(data: bytes, resolution: int) -> np.ndarray:
    """A packed ``rgb`` member (the raw bytes of an R x R x 3 uint8 image) -> (resolution,
    resolution, 3) uint8, box-filtered down as ``decode_image`` does if larger."""
    side = int(round((len(data) / 3) ** 0.5))
    if 3 * side * side != len(data) or side == 0:
        raise ValueError(f"an rgb member of {len(data)} bytes is no square RGB image")
    image = np.frombuffer(data, dtype=np.uint8).reshape(side, side, 3)
    if side == resolution:
        return image
    return np.asarray(_reduce(Image.fromarray(image), resolution), dtype=np.uint8)


IMAGE_FIELDS = ("rgb", "png", "jpg", "jpeg", "webp")


def decode_sample(sample: dict, resolution: int) -> np.ndarray | None:
    """A tar sample's image (rgb/png/jpg/jpeg/webp) as ``decode_image`` gives it, or None, with
    a warning, for a corrupt sample: the caller counts and skips it. A DataError (an image
    smaller than the resolution) is a data set that does not fit the run and is raised."""
    try:
        name = next((k for k in IMAGE_FIELDS if k in sample), None)
        if name is None:
            raise ValueError(f"no image field (has {sorted(k for k in sample if k[0] != '_')})")
        if name == "rgb":
            return decode_rgb(sample[name], resolution)
        return decode_image(sample[name], resolution)
    except DataError:
        raise
    except Exception as exn:  # a corrupt sample is counted and skipped, never fatal
        _warn_corrupt(sample, exn)
        return None


def read_images(spec: str, resolution: int, *, channels: int = 3, num: int = 0,
                key: str = "eval.real", allow_unindexed: bool = False) -> torch.Tensor:
    """The first ``num`` images (0: all) of a small shard set, in shard order, as
    (N, channels, R, R) in [-1, 1] on the CPU (grayscale: the mean of the RGB channels):
    held-out images for the families that judge outputs against inputs. Corrupt samples are
    skipped; DataError when fewer than 1 image can be read."""
    images = []
    for url in open_shards(spec, key, allow_unindexed).level_for(resolution).urls:
        try:
            for sample in iter_tar_samples(url):
                image = decode_sample(sample, resolution)
                if image is not None:
                    images.append(image)
                if num and len(images) >= num:
                    break
        except ShardReadError as e:
            log.warning("skipping the rest of shard %s: %s", url, e.error)
        if num and len(images) >= num:
            break
    if not images:
        raise DataError(f"{key}={spec!r}: no image could be read")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x.mean(1, keepdim=True) if channels == 1 else x


_corrupt_seen = 0
_CORRUPT_WARNINGS = 20
"""Corrupt samples reported one by one in each process; after that, every 1000th."""


def _warn_corrupt(sample: dict, exn: Exception) -> None:
    global _corrupt_seen
    _corrupt_seen += 1
    if _corrupt_seen <= _CORRUPT_WARNINGS or _corrupt_seen % 1000 == 0:
        more = (f" ({_corrupt_seen} corrupt samples in this process so far; reporting every "
                f"1000th)" if _corrupt_seen >= _CORRUPT_WARNINGS else "")
        log.warning("skipping corrupt sample %s in %s: %s%s", sample.get("__key__"),
                    sample.get("__url__"), exn, more)


# --------------------------------------------------------------------------------- labels

LABEL_KEYS = ("label", "attributes")


def read_label(sample: dict, key: str) -> int | list[float]:
    """The ``key`` (``"label"`` or ``"attributes"``) of a sample's JSON; DataError if absent."""
    raw = sample.get("json")
    fields = json.loads(raw) if raw is not None else {}
    if key not in fields:
        where = f"sample {sample.get('__key__')} in {sample.get('__url__')}"
        raise DataError(f"{where} has no {key!r} in its JSON (has {sorted(fields)}): a "
                        f"conditional model needs shards packed with labels "
                        f"(`scalegan pack SRC OUT --labels dirs|FILE.json`)")
    return fields[key]


# -------------------------------------------------------------------------------- the epoch plan

DONE = -1
"""A shard's count once it has been read to its end (in a position's ``bases``)."""
OPEN_SHARDS = 4
"""Shards a role reads at once, drawing each next sample from one of them."""
_MASK = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 64-bit hash of integers (splitmix64 rounds): a per-sample coin without an RNG object, the
    same whichever rank or worker reads the sample."""
    z = 0
    for v in values:
        z = (z + (v & _MASK) + 0x9E3779B97F4A7C15) & _MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        z ^= z >> 31
    return z


def shard_order(seed: int, epoch: int, num_shards: int) -> list[int]:
    """The shards of ``epoch`` in the order they are dealt: a function of the seed alone."""
    order = list(range(num_shards))
    random.Random(f"shards-{seed}-{epoch}").shuffle(order)
    return order


def deal(seed: int, epoch: int, num_shards: int, base: dict[int, int], role: int,
         num_roles: int) -> list[tuple[int, int]]:
    """Role ``role`` of ``num_roles``'s slice of ``epoch``: (shard, samples already taken) for
    every ``num_roles``-th shard of the epoch's order that ``base`` does not mark DONE."""
    remaining = [s for s in shard_order(seed, epoch, num_shards) if base.get(s, 0) != DONE]
    return [(s, base.get(s, 0)) for s in remaining[role::num_roles]]


@dataclass
class RolePosition:
    """Where role ``r`` stands: its ``epoch``, samples of its slice of that epoch taken
    (``index``, corrupt ones included), per shard of the slice opened so far the samples taken
    (``counts``; a prefix of the shard's order), the shards read to their end (``done``), and
    corrupt samples and unreadable shards so far (``skipped``, ``failed``)."""
    epoch: int = 0
    index: int = 0
    skipped: int = 0
    counts: dict[int, int] = field(default_factory=dict)
    done: list[int] = field(default_factory=list)
    failed: int = 0

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "skipped": self.skipped,
                "counts": {str(s): c for s, c in self.counts.items()}, "done": list(self.done),
                "failed": self.failed}

    @classmethod
    def from_json(cls, d: dict) -> RolePosition:
        return cls(int(d["epoch"]), int(d["index"]), int(d.get("skipped", 0)),
                   {int(s): int(c) for s, c in d.get("counts", {}).items()},
                   [int(s) for s in d.get("done", [])], int(d.get("failed", 0)))

    def copy(self) -> RolePosition:
        return RolePosition(self.epoch, self.index, self.skipped, dict(self.counts),
                            list(self.done), self.failed)


class _ShardReader:
    """One shard's samples in its seeded order (a shuffle buffer over the tar, seeded by the
    seed, the epoch and the shard), from sample ``start`` of that order on, one ahead so that
    ``ended`` is known as soon as the last sample is taken."""

    def __init__(self, url: str, shard: int, start: int, *, seed: int, epoch: int, buffer: int,
                 retries: int, backoff: float, on_failure):
        self.url, self.shard, self.count = url, shard, start
        self._retries, self._backoff, self._on_failure = retries, backoff, on_failure
        self._it = self._order(random.Random(f"order-{seed}-{epoch}-{shard}"), buffer)
        for _ in range(start):
            if next(self._it, None) is None:
                break
        self._next = next(self._it, None)

    @property
    def ended(self) -> bool:
        return self._next is None

    def take(self) -> dict:
        sample, self._next = self._next, next(self._it, None)
        self.count += 1
        return sample

    def _order(self, rng: random.Random, size: int) -> Iterator[dict]:
        buf: list[dict] = []
        try:
            for sample in iter_tar_samples(self.url, retries=self._retries,
                                           backoff=self._backoff):
                buf.append(sample)
                if len(buf) >= size:
                    i = rng.randrange(len(buf))
                    buf[i], buf[-1] = buf[-1], buf[i]
                    yield buf.pop()
        except ShardReadError as e:
            self._on_failure(e)
        while buf:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()


class _RoleCursor:
    """A role's walk through its slice of one epoch: up to ``OPEN_SHARDS`` shards open, each
    next sample drawn from one of them by the role's seeded RNG; a shard read to its end gives
    its place to the next one of the slice.

    ``fast_forward(n, pos)`` replays the first ``n`` draws of a walk whose position ``pos`` was
    saved, without reading: a shard ends exactly where ``pos`` says it ended (``done`` with its
    count), and any other shard had not ended by then. The shards open at that point are then
    opened at their counts."""

    def __init__(self, stream: _RoleStream, epoch: int, role: int, num_roles: int):
        self.stream, self.epoch = stream, epoch
        base = stream.bases.get(epoch, {})
        self.slice = deal(stream.seed, epoch, len(stream.urls), base, role, num_roles)
        self.rng = random.Random(f"mix-{stream.seed}-{epoch}-{stream.plan}-{role}-{num_roles}")
        self.next = 0
        self.counts: dict[int, int] = {}
        self.done: list[int] = []
        self.slots: list[list] = []  # [shard, count, reader or None]
        self._saved: RolePosition | None = None

    def fast_forward(self, pos: RolePosition) -> None:
        self._saved = pos
        self._fill()
        for _ in range(pos.index):
            if not self.slots:
                break
            self._draw()
        self._saved = None
        for slot in self.slots:
            slot[2] = self._open(slot[0], slot[1])

    def start(self) -> None:
        self._fill()

    def _open(self, shard: int, start: int) -> _ShardReader:
        st = self.stream
        return _ShardReader(st.urls[shard], shard, start, seed=st.seed, epoch=self.epoch,
                            buffer=st.shard_buffer, retries=st.retries, backoff=st.backoff,
                            on_failure=st.shard_failed)

    def _ended(self, slot: list) -> bool:
        if self._saved is not None:
            shard = slot[0]
            return shard in self._saved.done and slot[1] >= self._saved.counts.get(shard, 0)
        return slot[2].ended

    def _fill(self, at: int | None = None) -> None:
        """Open the slice's next shards into the free slot ``at`` (else up to OPEN_SHARDS),
        passing over shards that end at once."""
        while self.next < len(self.slice) and (at is not None or
                                               len(self.slots) < OPEN_SHARDS):
            shard, start = self.slice[self.next]
            self.next += 1
            slot = [shard, start, None if self._saved is not None else self._open(shard, start)]
            self.counts[shard] = start
            if self._ended(slot):
                self.done.append(shard)
                continue
            if at is None:
                self.slots.append(slot)
            else:
                self.slots.insert(at, slot)
                return

    def _draw(self) -> tuple[int, dict | None]:
        i = self.rng.randrange(len(self.slots))
        slot = self.slots[i]
        sample = slot[2].take() if slot[2] is not None else None
        slot[1] += 1
        self.counts[slot[0]] = slot[1]
        if self._ended(slot):
            self.done.append(slot[0])
            del self.slots[i]
            self._fill(at=i)
        return slot[0], sample

    def take(self) -> tuple[int, dict] | None:
        """(shard, sample) of the next draw, or None when the slice is exhausted."""
        return self._draw() if self.slots else None


class _RoleStream(IterableDataset):
    """Yields batch dicts {"images": (B,R,R,3) uint8, "role", "position", "keys", "epochs",
    "labels"} forever, for the role assigned to this process (see the module docstring).
    ``labels`` (with ``label_key``): int64 (B,) class ids or float32 (B, E) attributes."""

    def __init__(self, stream: ImageStream, urls: list[str]):
        super().__init__()
        self.urls = urls
        self.batch_size, self.resolution = stream.batch_size, stream.resolution
        self.seed, self.xflip, self.label_key = stream.seed, stream.xflip, stream.label_key
        self.shard_buffer = max(1, stream.shuffle_buffer // OPEN_SHARDS)
        self.starts = [r.copy() for r in stream.roles]
        self.bases, self.plan = stream.bases, stream.plan
        self.rank, self.world, self.num_roles = stream.rank, stream.world, stream.num_roles
        self.offset = stream.batches % stream.num_roles
        self.max_skip, self.retries, self.backoff = stream.max_skip, stream.retries, stream.backoff
        self.shared = stream.num_workers > 0
        self._pos: RolePosition | None = None

    def shard_failed(self, e: ShardReadError) -> None:
        log.error("giving up on shard %s after %d attempt(s): %s; %d sample(s) read from it, "
                  "the rest of it is skipped this epoch", e.url, e.attempts, e.error,
                  e.samples_read)
        if self._pos is not None:
            self._pos.failed += 1

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        role = (info.id + self.offset) % self.num_roles if info is not None else 0
        global_role, roles = self.rank * self.num_roles + role, self.world * self.num_roles
        pos = self._pos = self.starts[role].copy()
        batch = _BatchBuilder(self, role)
        run: list[str] = []  # shards of the corrupt samples since the last decodable one
        while True:
            cursor = _RoleCursor(self, pos.epoch, global_role, roles)
            if pos.index:
                cursor.fast_forward(pos)
            else:
                cursor.start()
            usable = pos.index
            while (taken := cursor.take()) is not None:
                shard, sample = taken
                pos.index += 1
                pos.counts, pos.done = cursor.counts, cursor.done
                if batch.add(sample, shard, pos):
                    usable += 1
                    run = []
                else:
                    run.append(str(sample.get("__url__")))
                    if len(run) >= self.max_skip:
                        raise DataError(self._stall(role, run, f"{len(run)} consecutive samples "
                                                    f"(data.max_skip={self.max_skip})"))
                if batch.full:
                    yield batch.emit(pos)
            if usable == 0 and cursor.slice:
                read = f"{len(run)} sample(s), none decodable" if run else "no samples"
                raise DataError(self._stall(role, run, f"a whole epoch ({pos.epoch}): {read}"))
            pos.epoch, pos.index, pos.counts, pos.done = pos.epoch + 1, 0, {}, []

    def _stall(self, role: int, run: list[str], what: str) -> str:
        shards = sorted(set(run)) or sorted(self.urls)
        more = f" and {len(shards) - 5} more" if len(shards) > 5 else ""
        return (f"rank {self.rank} worker role {role} found no decodable image in {what}, from "
                f"{', '.join(shards[:5])}{more} ({len(self.urls)} shards in all): the data set "
                f"has no usable images there; check or re-pack it")


SHARED_BATCH_BYTES = 1 << 20
"""From this size on a worker's batch is built in shared memory and only its handle crosses to
the training process; a smaller one is sent as bytes, which costs less than mapping a segment."""


def _batch_bytes(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape))


class _BatchBuilder:
    """Decodes samples straight into one (B, R, R, 3) uint8 batch (in shared memory when it is
    large and goes to the training process from a worker), mirrored where the sample's coin says
    so."""

    def __init__(self, role_stream: _RoleStream, role: int):
        self.rs, self.role = role_stream, role
        self._new()

    def _new(self) -> None:
        rs = self.rs
        shape = (rs.batch_size, rs.resolution, rs.resolution, 3)
        if rs.shared and _batch_bytes(shape) >= SHARED_BATCH_BYTES:
            self.images = torch.empty(shape, dtype=torch.uint8).share_memory_()
            self.array = self.images.numpy()
        else:
            self.array = self.images = np.empty(shape, dtype=np.uint8)
        self.n, self.keys, self.epochs, self.labels = 0, [], [], []

    @property
    def full(self) -> bool:
        return self.n == self.rs.batch_size

    def add(self, sample: dict, shard: int, pos: RolePosition) -> bool:
        rs = self.rs
        image = decode_sample(sample, rs.resolution)
        if image is None:
            pos.skipped += 1
            return False
        if rs.label_key is not None:
            self.labels.append(read_label(sample, rs.label_key))
        if rs.xflip and _mix(rs.seed, pos.epoch, shard, sample["__index__"]) >> 63:
            image = image[:, ::-1]
        self.array[self.n] = image
        self.n += 1
        self.keys.append(sample["__key__"])
        self.epochs.append(pos.epoch)
        return True

    def emit(self, pos: RolePosition) -> dict:
        out = {"images": self.images, "role": self.role, "position": pos.copy().to_json(),
               "keys": self.keys, "epochs": self.epochs, "labels": None}
        if self.rs.label_key == "label":
            out["labels"] = torch.tensor(self.labels, dtype=torch.int64)
        elif self.rs.label_key == "attributes":
            try:
                out["labels"] = torch.tensor(self.labels, dtype=torch.float32)
            except ValueError:
                raise DataError(f"samples {self.keys} have attribute vectors of different "
                                f"lengths: {sorted({len(v) for v in self.labels})}") from None
        self._new()
        return out


def _as_is(batch: dict) -> dict:
    return batch


def _init_worker(worker_id: int) -> None:
    # Slurm and terminals signal the whole process group: the trainer decides when to stop and
    # shuts its workers down itself.
    ignore_in_child()


# ------------------------------------------------------------------------------ the rank's stream


class Batch(NamedTuple):
    images: torch.Tensor | list[torch.Tensor]
    """(B, 3, R, R) float32 in [-1, 1] on the stream's device; with ``pyramid``, one such tensor
    per scale."""
    keys: list[str]
    """The samples' keys."""
    labels: torch.Tensor | None = None
    """With ``label_key``: int64 (B,) class ids or float32 (B, E) attribute vectors."""
    epochs: list[int] | None = None
    """The epoch each sample was read in."""


def box_pyramid(images: torch.Tensor, pyramid: int) -> list[torch.Tensor]:
    """``images`` (B, C, R, R) and its box-filtered halvings: ``pyramid`` tensors, smallest
    first (R / 2^(pyramid-1), ..., R). Each is the exact mean of 2^k x 2^k pixel blocks of the
    full-size image, the filter the data is shrunk with everywhere else."""
    return [F.avg_pool2d(images, 2 ** k) if k else images for k in reversed(range(pyramid))]


def to_float_images(images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, R, R, 3) uint8 -> (B, 3, R, R) float32 in [-1, 1] on ``device``: the bytes cross to
    the device, and the conversion runs there."""
    device = torch.device(device)
    x = images.to(device, non_blocking=device.type == "cuda")
    out = torch.empty((x.shape[0], 3, x.shape[1], x.shape[2]), dtype=torch.float32,
                      device=device)
    return out.copy_(x.permute(0, 3, 1, 2)).div_(127.5).sub_(1.0)


STATE_VERSION = 2


class ImageStream:
    """Endless, deterministic batches (B, 3, R, R) float32 in [-1, 1] for this rank.

    ``shards`` is a ``ShardSet`` (``open_shards``; its stored levels are used) or a list of tar
    paths/URLs. ``state_dict()`` is this rank's data position (JSON); ``load_state_dict`` takes
    it back, or the list of every rank's (``{"ranks": [...]}``, what a checkpoint stores), at any
    world size and worker count. ``set_resolution`` changes the size images are served at, from
    the next batch on. ``label_key`` ("label" or "attributes") also serves each sample's label
    from its JSON; ``pyramid`` > 1 serves each image at that many scales (halving), see
    ``box_pyramid``. ``device``: where the batches are converted to float and returned.
    """

    def __init__(self, shards: ShardSet | list[str], batch_size: int, resolution: int, *,
                 seed: int = 0, num_workers: int = 0, shuffle_buffer: int = 1000,
                 xflip: bool = False, label_key: str | None = None, pyramid: int = 1,
                 max_skip: int = 1000, retries: int = 5, backoff: float = 1.0,
                 device: torch.device | str = "cpu"):
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        if label_key not in (None, *LABEL_KEYS):
            raise DataError(f"label_key={label_key!r}: expected one of {LABEL_KEYS} or None")
        if pyramid < 1 or resolution % 2 ** (pyramid - 1):
            raise DataError(f"pyramid={pyramid} scales do not fit resolution {resolution}")
        if not isinstance(shards, ShardSet):
            shards = ShardSet((Level(None, tuple(shards)),))
        self.shards = shards
        self.label_key, self.pyramid = label_key, pyramid
        rank, world, _, _ = wds.utils.pytorch_worker_info()
        self.num_roles = max(1, num_workers)
        if len(shards) < world * self.num_roles:
            raise DataError(f"data.shards has {len(shards)} shards, fewer than ranks x workers = "
                            f"{world} x {self.num_roles}: every worker needs at least one shard "
                            f"(pack with a smaller shard size or lower data.num_workers)")
        self.batch_size, self.resolution = batch_size, resolution
        self.seed, self.num_workers = seed, num_workers
        self.shuffle_buffer, self.xflip = shuffle_buffer, xflip
        self.max_skip, self.retries, self.backoff = max_skip, retries, backoff
        self.device = torch.device(device)
        self.rank, self.world = rank, world
        self.roles = [RolePosition() for _ in range(self.num_roles)]
        self.bases: dict[int, dict[int, int]] = {}
        self.plan = 0
        self.batches = 0
        self._iter: Iterator[dict] | None = None

    @property
    def urls(self) -> list[str]:
        return self.shards.urls

    @property
    def skipped(self) -> int:
        """Corrupt samples skipped so far on this rank."""
        return sum(r.skipped for r in self.roles)

    @property
    def failed_shards(self) -> int:
        """Shards given up after their retries so far on this rank (each once per epoch)."""
        return sum(r.failed for r in self.roles)

    def _start(self) -> None:
        level = self.shards.level_for(self.resolution)
        dataset = _RoleStream(self, list(level.urls))
        # small batches: more of them in flight, so that no worker waits on the hand-over
        shape = (self.batch_size, self.resolution, self.resolution, 3)
        prefetch = 2 if _batch_bytes(shape) >= SHARED_BATCH_BYTES else 8
        loader = DataLoader(
            dataset, batch_size=None, num_workers=self.num_workers,
            worker_init_fn=_init_worker if self.num_workers else None,
            collate_fn=_as_is,  # the batches are built already
            prefetch_factor=prefetch if self.num_workers else None,
            pin_memory=self.device.type == "cuda",
        )
        with blocked():  # no worker can die of a stop signal before it ignores them
            self._iter = iter(loader)

    def next_uint8(self) -> dict:
        """The next batch as the workers deliver it: "images" (B, R, R, 3) uint8, "keys",
        "labels", "epochs" (and the role's position, which this call records)."""
        if self._iter is None:
            self._start()
        try:
            batch = next(self._iter)
        except DataError as e:  # from a worker, wrapped in torch's "Caught DataError in ..."
            raise DataError(str(e).rstrip().rsplit("DataError: ", 1)[-1]) from None
        role = batch["role"]
        if self.num_workers:
            assert role == self.batches % self.num_roles, "DataLoader broke round-robin order"
        self.roles[role] = RolePosition.from_json(batch["position"])
        self.batches += 1
        if isinstance(batch["images"], np.ndarray):
            batch["images"] = torch.from_numpy(batch["images"])
        return batch

    def next_batch(self) -> Batch:
        """The next batch: (B, 3, R, R) float32 images in [-1, 1] on the device (one per scale
        with ``pyramid``), their sample keys and, with ``label_key``, their labels."""
        batch = self.next_uint8()
        images = to_float_images(batch["images"], self.device)
        if self.pyramid > 1:
            images = box_pyramid(images, self.pyramid)
        return Batch(images, batch["keys"], batch["labels"], batch["epochs"])

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.next_batch().images

    def set_resolution(self, resolution: int) -> None:
        if resolution != self.resolution:
            self.resolution = resolution
            self.close()

    def close(self, now: bool = False) -> None:
        """Shut the workers down: they finish their current sample and exit, or, ``now`` (after
        a stop signal), are killed at once. A worker still alive after the DataLoader's own
        shutdown (it ignores SIGTERM, see ``_init_worker``) is killed."""
        it, self._iter = self._iter, None
        workers = list(getattr(it, "_workers", None) or [])
        if not workers:
            return
        if now:
            if getattr(it, "_worker_pids_set", False):  # no "worker killed" error for these
                torch.utils.data._utils.signal_handling._remove_worker_pids(id(it))
                it._worker_pids_set = False
            for w in workers:
                w.kill()
        it._shutdown_workers()
        for w in workers:
            if w.is_alive():
                w.kill()
            w.join()

    # ------------------------------------------------------------------------- data position

    def state_dict(self) -> dict:
        """This rank's data position (JSON-serialisable)."""
        return {"version": STATE_VERSION, "batches": self.batches, "world": self.world,
                "rank": self.rank, "num_roles": self.num_roles, "num_shards": len(self.shards),
                "seed": self.seed, "plan": self.plan,
                "bases": {str(e): {str(s): c for s, c in b.items()}
                          for e, b in self.bases.items()},
                "roles": [r.to_json() for r in self.roles]}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``: this rank's ``state_dict()``, or ``{"ranks": [every rank's
        state_dict()]}``. With the same world size and workers the stream continues exactly
        where it stood; otherwise every rank's position is merged and the epochs in progress
        are dealt anew, so that each of their samples is still read exactly once."""
        self.close(now=True)  # whatever the workers had read ahead is dropped
        ranks = state["ranks"] if "ranks" in state else [state]
        if any(r.get("version") != STATE_VERSION for r in ranks):
            # A position from before the global data position: its layout cannot be merged.
            epoch = min(int(p["epoch"]) for r in ranks for p in r["roles"])
            log.warning("data position of an older format: restarting epoch %d from its start",
                        epoch)
            self._restart(epoch, {}, plan=self.plan + 1, skipped=0)
            return
        same = (ranks[0]["world"] == self.world and ranks[0]["num_roles"] == self.num_roles
                and ranks[0]["num_shards"] == len(self.shards))
        mine = next((r for r in ranks if r["rank"] == self.rank), None)
        if same and mine is not None:
            self.roles = [RolePosition.from_json(p) for p in mine["roles"]]
            self.batches, self.plan = int(mine["batches"]), int(mine["plan"])
            self.bases = {int(e): {int(s): c for s, c in b.items()}
                          for e, b in mine["bases"].items()}
            return
        if len(ranks) != ranks[0]["world"]:
            raise DataError(f"the data position holds {len(ranks)} of {ranks[0]['world']} "
                            f"ranks' positions: a position saved at world size "
                            f"{ranks[0]['world']} can only continue at another one from the "
                            f"positions of all its ranks")
        skipped = sum(int(p.get("skipped", 0)) for r in ranks for p in r["roles"])
        if ranks[0]["num_shards"] != len(self.shards):
            epoch = min(int(p["epoch"]) for r in ranks for p in r["roles"])
            log.warning("data position saved for %d shards, the data now has %d: restarting "
                        "epoch %d from its start", ranks[0]["num_shards"], len(self.shards),
                        epoch)
            self._restart(epoch, {}, plan=int(ranks[0]["plan"]) + 1, skipped=skipped)
            return
        epoch, bases = merge_positions(ranks, self.seed)
        log.info("data position saved at %d rank(s) x %d worker role(s), continued at %d x %d: "
                 "epoch %d onward dealt anew", ranks[0]["world"], ranks[0]["num_roles"],
                 self.world, self.num_roles, epoch)
        self._restart(epoch, bases, plan=int(ranks[0]["plan"]) + 1, skipped=skipped)

    def _restart(self, epoch: int, bases: dict[int, dict[int, int]], plan: int,
                 skipped: int) -> None:
        self.roles = [RolePosition(epoch=epoch) for _ in range(self.num_roles)]
        if self.rank == 0:  # the run's corrupt-sample count survives, once
            self.roles[0].skipped = skipped
        self.bases, self.plan, self.batches = bases, plan, 0


def merge_positions(ranks: list[dict], seed: int) -> tuple[int, dict[int, dict[int, int]]]:
    """Every rank's saved position -> (the earliest epoch in progress, per epoch in progress the
    samples taken of each shard: DONE for a shard read to its end, absent for one not begun).

    A role at a later epoch has read its whole slice of this one; a role at this epoch has
    taken what its position says; a role at an earlier epoch has not begun its slice."""
    num_shards, plan_roles = int(ranks[0]["num_shards"]), []
    for r in sorted(ranks, key=lambda r: r["rank"]):
        plan_roles += [RolePosition.from_json(p) for p in r["roles"]]
    old_bases = {int(e): {int(s): c for s, c in b.items()} for e, b in ranks[0]["bases"].items()}
    first = min(p.epoch for p in plan_roles)
    merged: dict[int, dict[int, int]] = {}
    for epoch in range(first, max(p.epoch for p in plan_roles) + 1):
        base = old_bases.get(epoch, {})
        counts = {s: DONE for s, c in base.items() if c == DONE}
        for j, pos in enumerate(plan_roles):
            for shard, start in deal(seed, epoch, num_shards, base, j, len(plan_roles)):
                if pos.epoch > epoch or (pos.epoch == epoch and shard in pos.done):
                    counts[shard] = DONE
                elif pos.epoch == epoch:
                    counts[shard] = pos.counts.get(shard, start)
                else:
                    counts[shard] = start
        merged[epoch] = {s: c for s, c in counts.items() if c != 0}
    return first, merged
