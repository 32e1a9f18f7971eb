"""Evaluating a generator against real images: FID / KID / precision-recall, spread over ranks.

Real images stream from the shards once, each rank reading its share of them (shard ``i`` on rank
``i % world``), decoded and box-filtered to the evaluated resolution exactly as the training data
is. Generated images come from latents drawn for the whole set from ``seed`` and split into equal
contiguous slices per rank (equal, so that a sharded G_ema runs the same collectives on every
rank). Every rank's features are gathered and put back in global order (real: shard, then
position in the shard; generated: latent index), so the numbers do not depend on the number of
ranks. The metrics are computed on rank 0 and broadcast.

Conditional models generate image ``i`` with the condition of real image ``i mod N_real``, so the
generated set has the real set's class (or attribute) distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds
from torch import nn

from scalegan.config import Config, EvalConfig
from scalegan.data.holdout import holdout_shards
from scalegan.data.pipeline import (
    DataError,
    decode_sample,
    expand_shards,
    read_index,
    read_label,
)
from scalegan.metrics.features import FeatureExtractor, build_extractor
from scalegan.metrics.fid import fid_from_features
from scalegan.metrics.kid import kid_from_features
from scalegan.metrics.pr import precision_recall
from scalegan.parallel.env import DistEnv
from scalegan.train.schedule import Phase

LOWER_IS_BETTER = {"fid": True, "kid": True, "precision": False, "recall": False}
"""How each headline value ranks checkpoints (``pr`` ranks by precision)."""


@dataclass
class RealSet:
    """Features of the real images in global order, their labels, and what was skipped."""
    features: np.ndarray
    labels: torch.Tensor | None
    skipped: int
    resolution: int


def extractor_for(ec: EvalConfig, device: torch.device) -> FeatureExtractor:
    """The configured feature extractor (MissingWeightsError if the Inception file is absent)."""
    return build_extractor(ec.extractor, ec.weights or None, device=device)


# ------------------------------------------------------------------------------------ gathering


def _gather_rows(rows: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Concatenate every rank's ``rows`` (any number of rows, same trailing shape), rank order."""
    if not env.distributed:
        return rows
    device = env.device
    count = torch.tensor([rows.shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(env.world_size)]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    padded = torch.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype, device=device)
    padded[:rows.shape[0]] = rows.to(device)
    parts = [torch.empty_like(padded) for _ in range(env.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).cpu()


# ----------------------------------------------------------------------------------- real images


def _shard_counts(spec: str, urls: list[str]) -> list[int] | None:
    """Samples per shard from a pack's index.json, when ``spec`` is such a directory."""
    index = Path(spec) / "index.json"
    if "," in spec or not index.is_file():
        return None
    counts = {s["name"]: s["count"] for s in read_index(Path(spec))["shards"]
              if isinstance(s.get("count"), int)}
    named = [counts.get(Path(u).name) for u in urls]
    return None if any(c is None for c in named) else named


def real_features(spec: str, resolution: int, extractor: FeatureExtractor, env: DistEnv, *,
                  num: int = 0, batch_size: int = 64, label_key: str | None = None,
                  key: str = "eval.real", allow_unindexed: bool = False) -> RealSet:
    """Features of the first ``num`` real images of ``spec`` in shard order (0: all of them)."""
    urls = expand_shards(spec, key=key, allow_unindexed=allow_unindexed)
    counts = _shard_counts(spec, urls)
    if num and counts is not None:  # only the shards holding the first num samples
        ends = np.cumsum(counts)
        urls = urls[:int(np.searchsorted(ends, num)) + 1]
    offsets = [0, *np.cumsum(counts).tolist()] if counts is not None else None
    features, order, labels, images = [], [], [], []
    skipped = 0

    def flush() -> None:
        if images:
            batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(env.device)
            with torch.inference_mode():
                features.append(extractor(batch.float().div(127.5).sub(1.0)).float().cpu())
            images.clear()

    for shard in range(env.rank, len(urls), env.world_size):
        samples = wds.DataPipeline(wds.SimpleShardList([urls[shard]]),
                                   wds.tarfile_to_samples(handler=wds.warn_and_continue))
        for position, sample in enumerate(samples):
            if num and offsets is not None and offsets[shard] + position >= num:
                break
            image = decode_sample(sample, resolution)
            if image is None:  # corrupt: counted and skipped
                skipped += 1
                continue
            images.append(image)
            order.append((shard, position))
            if label_key is not None:
                labels.append(read_label(sample, label_key))
            if len(images) == batch_size:
                flush()
    flush()
    dim = extractor.feature_dim
    feats = torch.cat(features) if features else torch.zeros(0, dim)
    index = torch.tensor(order, dtype=torch.int64).reshape(-1, 2)
    feats, index = _gather_rows(feats, env), _gather_rows(index, env)
    perm = torch.from_numpy(np.lexsort((index[:, 1].numpy(), index[:, 0].numpy())))
    keep = perm[:num] if num else perm
    out_labels = None
    if label_key is not None:
        dtype = torch.int64 if label_key == "label" else torch.float32
        mine = torch.tensor(labels, dtype=dtype)
        if label_key == "label":
            mine = mine.reshape(-1)
        out_labels = _gather_rows(mine, env)[keep]
    total_skipped = skipped
    if env.distributed:
        t = torch.tensor([skipped], device=env.device)
        dist.all_reduce(t)
        total_skipped = int(t.item())
    if len(keep) < 2:
        raise DataError(f"{key}={spec!r}: {len(keep)} real image(s) could be read; metrics "
                        f"need at least 2")
    return RealSet(feats[keep].numpy(), out_labels, total_skipped, resolution)


# ------------------------------------------------------------------------------ generated images


def _networks(G: nn.Module | dict[str, nn.Module]) -> dict[str, nn.Module]:
    return G if isinstance(G, dict) else {"G": G}


@torch.no_grad()
def fake_features(G: nn.Module | dict[str, nn.Module], cfg: Config, phase: Phase,
                  extractor: FeatureExtractor, env: DistEnv, *, num: int, batch_size: int,
                  seed: int, conditions: torch.Tensor | None = None,
                  family=None) -> np.ndarray:
    """Features of ``num`` images of the generator ``G`` (a module, or the family's inference
    networks by name; the final stage of a multi-stage G) from latents of ``seed``; image ``i``
    gets ``conditions[i % len(conditions)]``."""
    from scalegan.families import build_family

    family = family or build_family(cfg)
    nets = _networks(G)
    gen = torch.Generator().manual_seed(seed)
    z_all = torch.randn(num, cfg.model.latent_dim, generator=gen)
    image_seeds = torch.randint(0, 2 ** 62, (num,), generator=gen)  # what else an image draws
    per_rank = math.ceil(num / env.world_size)
    mine = torch.arange(env.rank * per_rank, (env.rank + 1) * per_rank) % num  # last: wraps
    chunks = []
    for idx in mine.split(batch_size):
        cond = None
        if conditions is not None:
            cond = conditions[idx % len(conditions)].to(env.device)
        images = family.metric_images(nets, z_all[idx].to(env.device), cond, phase,
                                      seeds=image_seeds[idx])
        chunks.append(extractor(images.float()).float().cpu())
    feats = _gather_rows(torch.cat(chunks), env)
    return feats[:num].numpy()


# --------------------------------------------------------------------------------------- metrics


def compute_metrics(real: np.ndarray, fake: np.ndarray, ec: EvalConfig) -> dict[str, float]:
    """The metrics of ``ec.metrics`` from real and generated features."""
    out: dict[str, float] = {}
    for metric in ec.metric_list:
        if metric == "fid":
            out["fid"] = fid_from_features(real, fake)
        elif metric == "kid":
            kid = kid_from_features(real, fake, num_subsets=ec.kid_subsets,
                                    subset_size=ec.kid_subset_size, seed=ec.seed)
            out["kid"], out["kid_std"] = kid.mean, kid.std
        elif metric == "pr":
            pr = precision_recall(real[:ec.pr_samples], fake[:ec.pr_samples], k=ec.pr_k)
            out["precision"], out["recall"] = pr.precision, pr.recall
    return out


def headline(ec: EvalConfig, family=None) -> str:
    """The value that ranks checkpoints: the first metric's (precision for pr)."""
    if family is not None and family.metrics:
        return next(iter(family.metrics))
    return {"fid": "fid", "kid": "kid", "pr": "precision"}[ec.metric_list[0]]


def lower_is_better(key: str, family=None) -> bool:
    """Whether a lower ``key`` ranks a checkpoint higher."""
    if family is not None and key in family.metrics:
        return family.metrics[key]
    return LOWER_IS_BETTER[key]


def holdout_spec(cfg: Config) -> str | None:
    """The held-out real images of a run (``data.holdout``): the pack's own held-out set for
    ``auto`` (None when it has none), None for ``none``, else the spec as given."""
    spec = cfg.data.holdout
    if spec in ("", "none"):
        return None
    if spec == "auto":
        return holdout_shards(cfg.data.shards) if cfg.data.source == "shards" else None
    return spec


def real_spec(cfg: Config, ec: EvalConfig) -> tuple[str, str]:
    """The real images evaluation compares with, and the config key that named them:
    ``eval.real``, else the held-out set (``data.holdout``), else the training shards."""
    if ec.real:
        return ec.real, "eval.real"
    holdout = holdout_spec(cfg)
    if holdout:
        return holdout, "data.holdout"
    return cfg.data.shards, "data.shards"


def evaluate(G: nn.Module | dict[str, nn.Module], cfg: Config, phase: Phase, env: DistEnv,
             extractor: FeatureExtractor | None, real: RealSet | None = None,
             ec: EvalConfig | None = None, family=None) -> tuple[dict[str, float], RealSet]:
    """Metrics of the generator ``G`` (or the family's inference networks by name) at
    ``phase`` against the real shards of ``ec`` (default: cfg.eval; see ``real_spec``);
    returns them and the real features, for reuse while the resolution stays the same. A
    family with metrics of its own (``Family.metrics``: PSNR, reconstruction error) computes
    those instead. Every rank calls this; every rank gets the results."""
    from scalegan.families import build_family

    ec = ec or cfg.eval
    family = family or build_family(cfg)
    if family.metrics:
        return family.evaluate(_networks(G), env, ec, phase), real
    label_key = {"none": None, "label": "label",
                 "embedding": "attributes"}[getattr(cfg.model, "condition", "none")]
    if real is None or real.resolution != phase.resolution:
        spec, key = real_spec(cfg, ec)
        real = real_features(spec, phase.resolution, extractor, env, num=ec.num_real,
                             batch_size=ec.batch_size, label_key=label_key, key=key,
                             allow_unindexed=cfg.data.allow_unindexed)
    fake = fake_features(G, cfg, phase, extractor, env, num=ec.num_fake,
                         batch_size=ec.batch_size, seed=ec.seed, conditions=real.labels,
                         family=family)
    results = [None]
    if env.is_main:
        results[0] = {**compute_metrics(real.features, fake, ec),
                      "num_real": float(len(real.features)), "num_fake": float(len(fake)),
                      "real_skipped": float(real.skipped)}
    if env.distributed:
        dist.broadcast_object_list(results, src=0)
    return results[0], real
