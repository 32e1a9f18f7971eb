"""Images from a checkpoint's averaged networks: from noise (reproducible by seed) or from a
folder of input images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scalegan.config import ConfigError, config_from_dict
from scalegan.families import Family, build_family
from scalegan.monitor.grid import image_format, save_grid, to_uint8
from scalegan.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    ModelState,
    resolve_checkpoint,
    verify,
)
from scalegan.train.schedule import Phase


def checkpoint_config(path: Path, meta: dict):
    """The Config a checkpoint was written with; CheckpointError naming its meta.json when this
    version of scalegan cannot read it."""
    try:
        return config_from_dict(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path / 'meta.json'}: its config does not fit this version of "
                              f"scalegan ({e})") from None


def load_inference(checkpoint: str | Path, meta: dict | None = None
                   ) -> tuple[Family, dict[str, torch.nn.Module], dict]:
    """The family of a checkpoint, its inference networks (the averaged copies ``<name>_ema``,
    eval mode) by name, and the checkpoint's meta (config, phase, counters).

    The checkpoint is verified first (meta.json's checksum, size and CRC32 of the DCP files) and
    read through the safe loaders; CheckpointError names the file and what is wrong. ``meta``:
    what ``verify`` returned for it already."""
    path = resolve_checkpoint(checkpoint)
    meta = meta or verify(path, scope="dcp")
    cfg = checkpoint_config(path, meta)
    family = build_family(cfg)
    built = family.build_networks()
    nets = {name: built[name] for name in family.inference_networks()}
    # reads only the averaged copies' tensors
    CheckpointManager.load(path, {f"{name}_ema": ModelState(net) for name, net in nets.items()})
    return family, {n: net.eval().requires_grad_(False) for n, net in nets.items()}, meta


def load_generator(checkpoint: str | Path, meta: dict | None = None
                   ) -> tuple[torch.nn.Module, dict]:
    """G_ema of a noise-to-image checkpoint (eval mode) and the checkpoint's meta."""
    _, nets, meta = load_inference(checkpoint, meta)
    return nets["G"], meta


INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_input_images(folder: str | Path, resolution: int, channels: int
                      ) -> tuple[list[Path], torch.Tensor]:
    """The images of ``folder`` (sorted by name) as (N, channels, R, R) in [-1, 1]; ValueError
    naming the file that is not an image, or not ``resolution`` square, or has another number
    of channels."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--input {folder} is not a directory of images")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not files:
        raise ValueError(f"--input {folder} holds no files")
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                mode, size = im.mode, im.size
                arr = np.asarray(im)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"--input: {f} is not an image PIL can read ({e})") from None
        got = {"L": 1, "RGB": 3}.get(mode)
        if got != channels:
            raise ValueError(f"--input: {f} has mode {mode} ({got or 'an unsupported number of'}"
                             f" channel(s)); the model takes {channels}-channel images "
                             f"({'L' if channels == 1 else 'RGB'})")
        if size != (resolution, resolution):
            raise ValueError(f"--input: {f} is {size[0]}x{size[1]}; the model takes "
                             f"{resolution}x{resolution} images")
        arrays.append(arr.reshape(resolution, resolution, channels))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return files, x


@torch.no_grad()
def generate(checkpoint: str | Path, num: int = 64, out: str | Path = "grid.png", seed: int = 0,
             individual: bool = False, batch: int = 32, label: int | None = None,
             embedding: list[float] | None = None, stages: str = "final",
             input: str | Path | None = None, direction: str | None = None) -> list[Path]:
    """Write ``num`` images of the checkpoint's averaged networks at its phase: one grid at
    ``out``, or ``out/000000.png ...`` with ``individual``. Latents come from ``seed`` alone.

    Conditional models draw class ``label`` (default: every class in turn) or the attribute
    vector ``embedding``. A multi-stage model (StackGAN) writes its last stage, or with
    ``stages="all"`` every stage side by side (each enlarged to the last stage's size).
    ``input``: a folder of images to translate, upscale or reconstruct instead (families that
    take images; ``direction`` for two-way translators): one output per input, same name, in the
    folder ``out``.
    """
    if input is None and num < 1:
        raise ValueError(f"--num {num}: the number of images must be at least 1")
    out = Path(out)
    if (individual or input is not None) and out.exists() and not out.is_dir():
        which = "--individual writes one PNG per image" if individual else \
            "--input writes one PNG per input image"
        raise ValueError(f"--out {out} is an existing file; {which} into a folder")
    if not individual and input is None and out.is_dir():
        raise ValueError(f"--out {out} is a directory; give the grid's file name (e.g. "
                         f"{out / 'grid.png'}), or add --individual for one PNG per image")
    if stages not in ("final", "all"):
        raise ValueError(f"stages={stages!r}: expected final | all")
    family, nets, meta = load_inference(checkpoint)
    options = {"label": label, "embedding": embedding, "stages": stages, "batch": batch,
               "direction": direction}
    if input is not None:
        files, x = read_input_images(input, family.input_resolution(options),
                                     family.mc.img_channels)
        images = torch.cat([family.from_images(nets, xb, options) for xb in x.split(batch)])
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for f, arr in zip(files, to_uint8(images), strict=True):
            paths.append(out / f"{f.stem}.png")
            Image.fromarray(arr).save(paths[-1])
        return paths
    if not individual and not family.on_points:
        image_format(out)
    phase = Phase(meta["phase"]["resolution"], meta["phase"]["alpha"])
    images = family.generate(nets, num, seed, phase, options)
    if family.on_points:  # 2-D points: one scatter plot over the mixture's modes
        if individual:
            raise ValueError("--individual: a 2-D model's samples are drawn as one scatter plot")
        family.write_samples(images, [out])
        return [out]
    if not individual:
        return [save_grid(images, out)]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(to_uint8(images)):
        paths.append(out / f"{i:06d}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths
