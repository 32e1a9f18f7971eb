"""Streaming image batches from WebDataset shards, with an exact, resumable position.

Each rank reads its own shards (``wds.split_by_node``) and each DataLoader worker its own part of
those (``wds.split_by_worker``). A worker plays a *role*: role ``r`` owns the stream

    epoch e = 0, 1, ...:  shards shuffled by (seed, e) -> this rank's -> role r's -> tar samples
                          -> seeded shuffle buffer (seed, e, rank, r) -> decode -> box-downsample
                          -> seeded x-flip -> batches of ``batch_size``

which depends on nothing but the seed, so a role's position is just (epoch, samples consumed in that
epoch). The DataLoader hands out batches from its workers in turn, so after ``k`` batches the next
batch is role ``k % num_roles``'s; on restart worker ``w`` takes role ``(w + k) % num_roles`` and
skips, undecoded, the samples its role already delivered. That is what makes resume exact, and the
same restart is used when the training resolution changes.

Conditional models also get each sample's label from its JSON (``"label"``, a class id, or
``"attributes"``, a vector: what ``scalegan pack --labels`` writes), and multi-scale models the
same image box-filtered to every scale they train (``pyramid``).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import braceexpand
import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from scalegan.train.preemption import blocked, ignore_in_child

log = logging.getLogger(__name__)


class DataError(ValueError):
    """The shard list or the data in it cannot be used; names the shard or the key."""


# ------------------------------------------------------------------------------------ shard lists


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def read_index(directory: Path) -> dict:
    """``directory/index.json`` as ``scalegan pack`` writes it; DataError naming the file when it
    is not JSON or has no list of shards."""
    index = directory / "index.json"
    try:
        data = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{index} is not a readable index of shards ({e}); re-pack the data with "
                        f"`scalegan pack`") from None
    shards = data.get("shards") if isinstance(data, dict) else None
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) for s in shards):
        raise DataError(f"{index} has no list of shards ('shards': [{{'name': ...}}, ...]); "
                        f"re-pack the data with `scalegan pack`")
    for s in shards:
        name = Path(s["name"])
        if name.is_absolute() or ".." in name.parts:
            raise DataError(f"{index} names a shard outside its directory: {s['name']!r}")
    return data


def expand_shards(spec: str, key: str = "data.shards", allow_unindexed: bool = False) -> list[str]:
    """Turn a shard spec into a list of tar paths/URLs, checking that local files exist.

    ``spec`` is a directory with ``index.json``, a brace pattern ('x/{000000..000031}.tar') or a
    comma-separated list of either. A directory of ``*.tar`` files without ``index.json`` (an
    interrupted pack, or a folder that mixes packs) is refused unless ``allow_unindexed``.
    """
    if not spec or not str(spec).strip():
        raise DataError(f"{key} is empty: give a shard directory, a brace pattern such as "
                        f"'shards/{{000000..000009}}.tar', or a comma-separated list of tar files")
    urls: list[str] = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        path = Path(part)
        if not _is_remote(part) and path.is_dir():
            if (path / "index.json").is_file():
                urls += [str(path / s["name"]) for s in read_index(path)["shards"]]
            else:
                tars = sorted(str(p) for p in path.glob("*.tar"))
                if tars and not allow_unindexed:
                    raise DataError(f"{key}: {path} holds {len(tars)} tar file(s) but no "
                                    f"index.json, so nothing says they are one complete pack "
                                    f"(an interrupted `scalegan pack` leaves such a folder); "
                                    f"re-pack, or set data.allow_unindexed=true to train on "
                                    f"every tar in it")
                urls += tars
        else:
            urls += list(braceexpand.braceexpand(part))
    if not urls:
        raise DataError(f"{key}={spec!r} matched no shards")
    missing = [u for u in urls if not _is_remote(u) and not Path(u).is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DataError(f"{key}={spec!r}: {len(missing)} of {len(urls)} shards do not exist: "
                        f"{', '.join(missing[:3])}{more}")
    return urls


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


def decode_image(png: bytes, resolution: int) -> np.ndarray:
    """PNG/JPEG bytes -> (resolution, resolution, 3) uint8, box-filtered down if larger.

    Box (area) filtering is what FID reference implementations use to shrink real images, and an
    integer factor makes it an exact average of pixel blocks.
    """
    with Image.open(io.BytesIO(png)) as img:
        img = img.convert("RGB")
        w, h = img.size
        if w != h:
            raise ValueError(f"image is {w}x{h}, not square (pack it with `scalegan pack`)")
        if w < resolution:
            raise DataError(f"image is {w}x{w}, smaller than the training resolution {resolution}")
        if w != resolution:
            if w % resolution == 0:
                img = img.reduce(w // resolution)
            else:
                img = img.resize((resolution, resolution), Image.BOX)
        return np.asarray(img, dtype=np.uint8)


def decode_sample(sample: dict, resolution: int) -> np.ndarray | None:
    """A tar sample's image (png/jpg/jpeg/webp) as ``decode_image`` gives it, or None, with a
    warning, for a corrupt sample: the caller counts and skips it. A DataError (an image smaller
    than the resolution) is a data set that does not fit the run and is raised."""
    data = sample.get("png", sample.get("jpg", sample.get("jpeg", sample.get("webp"))))
    try:
        if data is None:
            raise ValueError(f"no image field (has {sorted(k for k in sample if k[0] != '_')})")
        return decode_image(data, resolution)
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
    for url in expand_shards(spec, key=key, allow_unindexed=allow_unindexed):
        samples = wds.DataPipeline(wds.SimpleShardList([url]),
                                   wds.tarfile_to_samples(handler=wds.warn_and_continue))
        for sample in samples:
            image = decode_sample(sample, resolution)
            if image is not None:
                images.append(image)
            if num and len(images) >= num:
                break
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


# ------------------------------------------------------------------------------ one role's stream


@dataclass
class RolePosition:
    """Where role ``r`` stands: samples of ``epoch`` already delivered, corrupt samples so far."""
    epoch: int = 0
    index: int = 0
    skipped: int = 0


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


class _RoleStream(IterableDataset):
    """Yields batches dicts {"images": (B,3,R,R) uint8, "role", "epoch", "index", "skipped",
    "keys", "labels"} forever, for the role assigned to this process (see module docstring).
    ``labels`` (with ``label_key``): int64 (B,) class ids or float32 (B, E) attributes."""

    def __init__(self, urls: list[str], batch_size: int, resolution: int, seed: int,
                 shuffle_buffer: int, xflip: bool, starts: list[RolePosition],
                 label_key: str | None = None, max_skip: int = 1000):
        super().__init__()
        self.urls, self.batch_size, self.resolution = urls, batch_size, resolution
        self.seed, self.shuffle_buffer, self.xflip = seed, shuffle_buffer, xflip
        self.starts = starts
        self.label_key = label_key
        self.max_skip = max_skip

    def _tar_error(self, exn: Exception) -> bool:
        # A truncated or unreadable tar: say so and go on with the next shard.
        log.warning("skipping the rest of a shard after a read error: %r", exn)
        return True

    def _epoch(self, epoch: int, rank: int, role: int) -> Iterator[dict]:
        urls = list(self.urls)
        random.Random(f"shards-{self.seed}-{epoch}").shuffle(urls)  # same order on every rank
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(urls),
            wds.split_by_node,
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=self._tar_error),
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                        rng=random.Random(f"samples-{self.seed}-{epoch}-{rank}-{role}")),
        )
        return iter(pipeline)

    def __iter__(self) -> Iterator[dict]:
        rank, _, role, num_roles = wds.utils.pytorch_worker_info()
        if len(self.starts) != num_roles:
            raise RuntimeError(f"stream built for {len(self.starts)} roles runs with {num_roles}")
        pos = RolePosition(**vars(self.starts[role]))
        images: list[np.ndarray] = []
        keys: list[str] = []
        labels: list = []
        run: list[str] = []  # shards of the corrupt samples since the last decodable one
        while True:
            usable = 0  # decodable samples of this epoch (or delivered before a restart)
            for i, sample in enumerate(self._epoch(pos.epoch, rank, role)):
                if i < pos.index:
                    usable += 1
                    continue  # delivered before the restart: skip without decoding
                pos.index = i + 1
                image = self._decode(sample, pos)
                if image is None:
                    run.append(str(sample.get("__url__")))
                    if len(run) >= self.max_skip:
                        raise DataError(self._stall(rank, role, run, f"{len(run)} consecutive "
                                                    f"samples (data.max_skip={self.max_skip})"))
                    continue
                usable += 1
                run = []
                if self.label_key is not None:
                    labels.append(read_label(sample, self.label_key))
                if self.xflip and random.Random(
                        f"flip-{self.seed}-{pos.epoch}-{rank}-{role}-{i}").random() < 0.5:
                    image = image[:, ::-1]
                images.append(image)
                keys.append(sample["__key__"])
                if len(images) == self.batch_size:
                    yield self._batch(images, keys, labels, role, pos)
                    images, keys, labels = [], [], []
            if usable == 0:
                read = f"{len(run)} sample(s), none decodable" if run else "no samples"
                raise DataError(self._stall(rank, role, run, f"a whole epoch ({pos.epoch}): "
                                            f"{read}"))
            pos.epoch, pos.index = pos.epoch + 1, 0

    def _stall(self, rank: int, role: int, run: list[str], what: str) -> str:
        shards = sorted(set(run)) or sorted(self.urls)
        more = f" and {len(shards) - 5} more" if len(shards) > 5 else ""
        return (f"rank {rank} worker role {role} found no decodable image in {what}, from "
                f"{', '.join(shards[:5])}{more} ({len(self.urls)} shards in all): the data set "
                f"has no usable images there; check or re-pack it")

    def _decode(self, sample: dict, pos: RolePosition) -> np.ndarray | None:
        image = decode_sample(sample, self.resolution)
        pos.skipped += image is None
        return image

    def _batch(self, images: list[np.ndarray], keys: list[str], labels: list, role: int,
               pos: RolePosition) -> dict:
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (B,3,R,R)
        out = {"images": batch, "role": role, "epoch": pos.epoch, "index": pos.index,
               "skipped": pos.skipped, "keys": keys, "labels": None}
        if self.label_key == "label":
            out["labels"] = torch.tensor(labels, dtype=torch.int64)
        elif self.label_key == "attributes":
            try:
                out["labels"] = torch.tensor(labels, dtype=torch.float32)
            except ValueError:
                raise DataError(f"samples {keys} have attribute vectors of different lengths: "
                                f"{sorted({len(v) for v in labels})}") from None
        return out


def _init_worker(num_roles: int, offset: int, worker_id: int) -> None:
    # Slurm and terminals signal the whole process group: the trainer decides when to stop and
    # shuts its workers down itself.
    ignore_in_child()
    # webdataset's split_by_worker reads WORKER/NUM_WORKERS from the environment when set: this is
    # how a restarted worker takes over the role whose turn comes next.
    os.environ["WORKER"] = str((worker_id + offset) % num_roles)
    os.environ["NUM_WORKERS"] = str(num_roles)


# ------------------------------------------------------------------------------ the rank's stream


class Batch(NamedTuple):
    images: torch.Tensor | list[torch.Tensor]
    """(B, 3, R, R) float32 in [-1, 1]; with ``pyramid``, one such tensor per scale."""
    keys: list[str]
    """The samples' keys."""
    labels: torch.Tensor | None = None
    """With ``label_key``: int64 (B,) class ids or float32 (B, E) attribute vectors."""


def box_pyramid(images: torch.Tensor, pyramid: int) -> list[torch.Tensor]:
    """``images`` (B, C, R, R) and its box-filtered halvings: ``pyramid`` tensors, smallest
    first (R / 2^(pyramid-1), ..., R). Each is the exact mean of 2^k x 2^k pixel blocks of the
    full-size image, the filter the data is shrunk with everywhere else."""
    return [F.avg_pool2d(images, 2 ** k) if k else images for k in reversed(range(pyramid))]


class ImageStream:
    """Endless, deterministic batches (B, 3, R, R) float32 in [-1, 1] for this rank.

    ``state_dict()`` is the data position (JSON-serialisable); ``load_state_dict`` restarts there.
    ``set_resolution`` changes the size images are box-filtered to, from the next batch on.
    ``label_key`` ("label" or "attributes") also serves each sample's label from its JSON;
    ``pyramid`` > 1 serves each image at that many scales (halving), see ``box_pyramid``.
    """

    def __init__(self, urls: list[str], batch_size: int, resolution: int, *, seed: int = 0,
                 num_workers: int = 0, shuffle_buffer: int = 1000, xflip: bool = False,
                 label_key: str | None = None, pyramid: int = 1, max_skip: int = 1000):
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        if label_key not in (None, *LABEL_KEYS):
            raise DataError(f"label_key={label_key!r}: expected one of {LABEL_KEYS} or None")
        if pyramid < 1 or resolution % 2 ** (pyramid - 1):
            raise DataError(f"pyramid={pyramid} scales do not fit resolution {resolution}")
        self.label_key, self.pyramid = label_key, pyramid
        rank, world, _, _ = wds.utils.pytorch_worker_info()
        self.num_roles = max(1, num_workers)
        if len(urls) < world * self.num_roles:
            raise DataError(f"data.shards has {len(urls)} shards, fewer than ranks x workers = "
                            f"{world} x {self.num_roles}: every worker needs at least one shard "
                            f"(pack with a smaller shard size or lower data.num_workers)")
        self.urls, self.batch_size, self.resolution = list(urls), batch_size, resolution
        self.seed, self.num_workers = seed, num_workers
        self.shuffle_buffer, self.xflip = shuffle_buffer, xflip
        self.max_skip = max_skip
        self.rank, self.world = rank, world
        self.roles = [RolePosition() for _ in range(self.num_roles)]
        self.batches = 0
        self._iter: Iterator[dict] | None = None

    @property
    def skipped(self) -> int:
        """Corrupt samples skipped so far on this rank."""
        return sum(r.skipped for r in self.roles)

    def _start(self) -> None:
        offset = self.batches % self.num_roles
        dataset = _RoleStream(self.urls, self.batch_size, self.resolution, self.seed,
                              self.shuffle_buffer, self.xflip, starts=list(self.roles),
                              label_key=self.label_key, max_skip=self.max_skip)
        loader = DataLoader(
            dataset, batch_size=None, num_workers=self.num_workers,
            worker_init_fn=functools.partial(_init_worker, self.num_roles, offset),
            prefetch_factor=2 if self.num_workers else None,
        )
        with blocked():  # no worker can die of a stop signal before it ignores them
            self._iter = iter(loader)

    def next_batch(self) -> Batch:
        """The next batch: (B, 3, R, R) float32 images in [-1, 1] (one per scale with
        ``pyramid``), their sample keys and, with ``label_key``, their labels."""
        if self._iter is None:
            self._start()
        try:
            batch = next(self._iter)
        except DataError as e:  # from a worker, wrapped in torch's "Caught DataError in ..."
            raise DataError(str(e).rstrip().rsplit("DataError: ", 1)[-1]) from None
        role = batch["role"]
        if self.num_workers:
            assert role == self.batches % self.num_roles, "DataLoader broke round-robin order"
        self.roles[role] = RolePosition(batch["epoch"], batch["index"], batch["skipped"])
        self.batches += 1
        images = batch["images"].float().div_(127.5).sub_(1.0)
        if self.pyramid > 1:
            images = box_pyramid(images, self.pyramid)
        return Batch(images, batch["keys"], batch["labels"])

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

    def state_dict(self) -> dict:
        return {"batches": self.batches, "world": self.world, "rank": self.rank,
                "roles": [vars(r).copy() for r in self.roles]}

    def load_state_dict(self, state: dict) -> None:
        self.close(now=True)  # whatever the workers had read ahead is dropped
        roles = [RolePosition(**r) for r in state["roles"]]
        if len(roles) == self.num_roles and state.get("world", 1) == self.world:
            self.roles, self.batches = roles, int(state["batches"])
        else:
            # The shard split changed (other world size or worker count): positions no longer
            # map to this layout, so restart at the earliest saved epoch from its beginning.
            epoch = min(r.epoch for r in roles)
            log.warning("data position saved with world=%s, %d workers; now world=%d, %d: "
                        "restarting epoch %d from its start", state.get("world"), len(roles),
                        self.world, self.num_roles, epoch)
            self.roles = [RolePosition(epoch=epoch) for _ in range(self.num_roles)]
            self.batches = 0
