"""Images from a checkpoint's G_ema, reproducible by seed."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from PIL import Image

from scalegan.config import config_from_dict
from scalegan.data.points import mixture
from scalegan.models import build_models
from scalegan.monitor.grid import save_grid, to_uint8
from scalegan.monitor.scatter import save_scatter
from scalegan.train.checkpoint import (
    ModelState,
    quiet_single_process,
    read_meta,
    resolve_checkpoint,
)
from scalegan.train.objectives import build_objective
from scalegan.train.schedule import Phase


def load_generator(checkpoint: str | Path) -> tuple[torch.nn.Module, dict]:
    """G_ema of a checkpoint (eval mode) and the checkpoint's meta (config, phase, counters)."""
    path = resolve_checkpoint(checkpoint)
    meta = read_meta(path)
    cfg = config_from_dict(meta["config"])
    G, _ = build_models(cfg.model)
    with quiet_single_process():
        dcp.load({"G_ema": ModelState(G)}, checkpoint_id=path)  # reads only G_ema's tensors
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
    G, meta = load_generator(checkpoint)
    cfg = config_from_dict(meta["config"])
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
    out = Path(out)
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
