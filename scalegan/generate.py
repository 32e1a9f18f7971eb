"""Images from a checkpoint's G_ema, reproducible by seed."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from PIL import Image

from scalegan.config import config_from_dict
from scalegan.models import build_models
from scalegan.monitor.grid import save_grid, to_uint8
from scalegan.train.checkpoint import (
    ModelState,
    quiet_single_process,
    read_meta,
    resolve_checkpoint,
)


def load_generator(checkpoint: str | Path) -> tuple[torch.nn.Module, dict]:
    """G_ema of a checkpoint (eval mode) and the checkpoint's meta (config, phase, counters)."""
    path = resolve_checkpoint(checkpoint)
    meta = read_meta(path)
    cfg = config_from_dict(meta["config"])
    G, _ = build_models(cfg.model)
    with quiet_single_process():
        dcp.load({"G_ema": ModelState(G)}, checkpoint_id=path)  # reads only G_ema's tensors
    return G.eval().requires_grad_(False), meta


@torch.no_grad()
def generate(checkpoint: str | Path, num: int = 64, out: str | Path = "grid.png", seed: int = 0,
             individual: bool = False, batch: int = 32) -> list[Path]:
    """Write ``num`` images from G_ema at the checkpoint's phase: one grid PNG at ``out``, or
    ``out/000000.png ...`` with ``individual``. Latents come from ``seed`` alone."""
    G, meta = load_generator(checkpoint)
    res, alpha = meta["phase"]["resolution"], meta["phase"]["alpha"]
    z = torch.randn(num, G.latent_dim, generator=torch.Generator().manual_seed(seed))
    images = torch.cat([G(zb, res, alpha) for zb in z.split(batch)])  # (num, C, res, res)
    out = Path(out)
    if not individual:
        return [save_grid(images, out)]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(to_uint8(images)):
        paths.append(out / f"{i:06d}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths
