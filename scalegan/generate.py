"""Images from a checkpoint's G_ema, reproducible by seed."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from PIL import Image

from scalegan.config import ConfigError, config_from_dict
from scalegan.data.points import mixture
from scalegan.models import build_models
from scalegan.monitor.grid import image_format, save_grid, to_uint8
from scalegan.monitor.scatter import save_scatter
from scalegan.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    ModelState,
    resolve_checkpoint,
    verify,
)
from scalegan.train.objectives import build_objective
from scalegan.train.schedule import Phase


def checkpoint_config(path: Path, meta: dict):
    """The Config a checkpoint was written with; CheckpointError naming its meta.json when this
    version of scalegan cannot read it."""
    try:
        return config_from_dict(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path / 'meta.json'}: its config does not fit this version of "
                              f"scalegan ({e})") from None


def load_generator(checkpoint: str | Path, meta: dict | None = None
                   ) -> tuple[torch.nn.Module, dict]:
    """G_ema of a checkpoint (eval mode) and the checkpoint's meta (config, phase, counters).

    The checkpoint is verified first (meta.json's checksum, size and CRC32 of the DCP files) and
    read through the safe loaders; CheckpointError names the file and what is wrong. ``meta``:
    what ``verify`` returned for it already."""
    path = resolve_checkpoint(checkpoint)
    meta = meta or verify(path, scope="dcp")
    cfg = checkpoint_config(path, meta)
    G, _ = build_models(cfg.model)
    CheckpointManager.load(path, {"G_ema": ModelState(G)})  # reads only G_ema's tensors
    return G.eval().requires_grad_(False), meta


def _conditions(cfg, num: int, label: int | None,
                embedding: list[float] | None) -> torch.Tensor | None:
    """The condition of each generated image; ValueError naming the option when it does not fit
    the model."""
    mc = cfg.model
    if mc.condition == "none":
        if label is not None or embedding is not None:
            raise ValueError("--label / --embedding: this model is unconditional "
                             "(model.condition=none)")
        return None
    if mc.condition == "label":
        if embedding is not None:
            raise ValueError("--embedding: this model is conditioned on class labels; use --label")
        if label is None:
            return torch.arange(num) % mc.num_classes  # every class in turn
        if not 0 <= label < mc.num_classes:
            raise ValueError(f"--label {label} is out of range: the model has "
                             f"model.num_classes={mc.num_classes} (0 .. {mc.num_classes - 1})")
        return torch.full((num,), label, dtype=torch.int64)
    if label is not None:
        raise ValueError("--label: this model is conditioned on vectors; use --embedding")
    if embedding is None or len(embedding) != mc.embedding_dim:
        got = "none" if embedding is None else f"{len(embedding)} values"
        raise ValueError(f"--embedding needs model.embedding_dim={mc.embedding_dim} "
                         f"comma-separated values, got {got}")
    return torch.tensor(embedding, dtype=torch.float32).expand(num, -1)


@torch.no_grad()
def generate(checkpoint: str | Path, num: int = 64, out: str | Path = "grid.png", seed: int = 0,
             individual: bool = False, batch: int = 32, label: int | None = None,
             embedding: list[float] | None = None, stages: str = "final") -> list[Path]:
    """Write ``num`` images from G_ema at the checkpoint's phase: one grid PNG at ``out``, or
    ``out/000000.png ...`` with ``individual``. Latents come from ``seed`` alone.

    Conditional models draw class ``label`` (default: every class in turn) or the attribute
    vector ``embedding``. StackGAN writes its last stage, or with ``stages="all"`` every stage
    side by side (each enlarged to the last stage's size).
    """
    if num < 1:
        raise ValueError(f"--num {num}: the number of images must be at least 1")
    out = Path(out)
    if individual and out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; --individual writes one PNG per "
                         f"image into a folder")
    if not individual and out.is_dir():
        raise ValueError(f"--out {out} is a directory; give the grid's file name (e.g. "
                         f"{out / 'grid.png'}), or add --individual for one PNG per image")
    G, meta = load_generator(checkpoint)
    cfg = config_from_dict(meta["config"])
    if not individual and cfg.model.arch != "mlp":
        image_format(out)
    if stages not in ("final", "all"):
        raise ValueError(f"stages={stages!r}: expected final | all")
    if stages == "all" and cfg.model.arch != "stackgan":
        raise ValueError(f"--stages all: model.arch={cfg.model.arch} has a single stage")
    cond = _conditions(cfg, num, label, embedding)
    phase = Phase(meta["phase"]["resolution"], meta["phase"]["alpha"])
    objective = build_objective(cfg, contextlib.nullcontext)
    z = torch.randn(num, G.latent_dim, generator=torch.Generator().manual_seed(seed))
    kw = {"stages": stages} if cfg.model.arch == "stackgan" else {}
    images = torch.cat([
        objective.display(G, zb, None if cond is None else cond[i:i + batch], phase, **kw)
        for i, zb in zip(range(0, num, batch), z.split(batch), strict=True)])
    if cfg.model.arch == "mlp":  # 2-D points: one scatter plot over the mixture's modes
        if individual:
            raise ValueError("--individual: a 2-D model's samples are drawn as one scatter plot")
        centers, std = mixture(cfg.data.points)
        return [save_scatter(images, out, centers=centers, radius=3 * std)]
    if not individual:
        return [save_grid(images, out)]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(to_uint8(images)):
        paths.append(out / f"{i:06d}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths
