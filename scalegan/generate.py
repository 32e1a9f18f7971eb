"""Images from a checkpoint's averaged networks: from noise (reproducible by seed) or from a
folder of input images; for families with a W space (stylegan2) also truncated, style-mixing
grids and latent walks."""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Iterable, Iterator
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
             input: str | Path | None = None, direction: str | None = None,
             truncation: float | None = None, truncation_cutoff: int | None = None
             ) -> list[Path]:
    """Write ``num`` images of the checkpoint's averaged networks at its phase: one grid at
    ``out``, or ``out/000000.png ...`` with ``individual``. Latents come from ``seed`` alone.

    ``truncation`` (families with a W space): psi of the truncation trick toward the tracked
    ``w_avg`` (1: none, 0: every image the average one), on the first ``truncation_cutoff``
    styles (default: all).

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
    check_truncation(truncation, truncation_cutoff)
    family, nets, meta = load_inference(checkpoint)
    if truncation is not None or truncation_cutoff is not None:
        require_w_space(family, "--truncation" if truncation is not None
                        else "--truncation-cutoff")
        if input is not None:
            raise ValueError("--truncation applies to images generated from noise, not to "
                             "--input")
    options = {"label": label, "embedding": embedding, "stages": stages, "batch": batch,
               "direction": direction, "truncation": truncation,
               "truncation_cutoff": truncation_cutoff}
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


# ------------------------------------------------------------------------------------ W space

MAX_SEEDS = 10_000
"""Most seeds one list may name (a grid or walk of more is a typo in a range)."""


def parse_seeds(text: str, option: str) -> list[int]:
    """``"1,2,3"``, ``"1-4"`` or a mix (``"0-2,7"``) -> the seeds in order; ValueError naming
    ``option`` otherwise (at most :data:`MAX_SEEDS`)."""
    seeds: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if m is None:
            raise ValueError(f"{option} {text!r}: expected comma-separated seeds or ranges "
                             f"of non-negative integers, e.g. 1,2,3 or 1-4")
        first, last = int(m[1]), int(m[2] or m[1])
        if last < first:
            raise ValueError(f"{option} {text!r}: the range {part.strip()} is empty")
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise ValueError(f"{option} {text!r}: more than {MAX_SEEDS} seeds")
        seeds += range(first, last + 1)
    if any(s >= 2 ** 63 for s in seeds):
        raise ValueError(f"{option} {text!r}: seeds must be below 2^63")
    return seeds


def check_truncation(psi: float | None, cutoff: int | None) -> None:
    """ValueError naming the option for a psi that is not finite or a cutoff without psi."""
    if psi is not None and not math.isfinite(psi):
        raise ValueError(f"--truncation {psi}: expected a finite number (1: no truncation, "
                         f"0: the average image)")
    if cutoff is not None and psi is None:
        raise ValueError("--truncation-cutoff truncates the first styles: give --truncation "
                         "PSI too")


def require_w_space(family: Family, option: str) -> None:
    """ValueError naming ``option`` and the arch when ``family`` has no W space (no tracked
    ``w_avg`` to truncate toward, no styles to mix)."""
    if getattr(family, "latent_space", None) != "w":
        raise ValueError(f"{option}: model.arch={family.arch} has no intermediate latent "
                         f"space W (truncation, style mixing and W-space walks need "
                         f"model.arch=stylegan2)")


def mix_images(family: Family, nets: dict, seeds_a: list[int], seeds_b: list[int],
               styles: tuple[int, int], truncation: float = 1.0,
               truncation_cutoff: int | None = None, batch: int = 32) -> torch.Tensor:
    """The tiles of a style-mixing grid, row by row: ``((1 + A) * (1 + B), C, R, R)``.

    Row 0 is a black tile, then the images of ``seeds_b``; row ``1 + a`` is the image of
    ``seeds_a[a]``, then for each ``b`` the synthesis of ``seeds_a[a]``'s styles with styles
    ``styles = [first, last)`` taken from ``seeds_b[b]`` (StyleGAN2-ADA's style_mixing.py
    layout: the columns give the mixed-in styles). Every source's ``w`` is truncated first.
    """
    first, last = styles
    ws_a = family.seed_ws(nets, seeds_a, truncation, truncation_cutoff)  # (A, num_ws, w_dim)
    ws_b = family.seed_ws(nets, seeds_b, truncation, truncation_cutoff)  # (B, num_ws, w_dim)
    mixed = ws_a[:, None].repeat(1, len(seeds_b), 1, 1)  # (A, B, num_ws, w_dim)
    mixed[:, :, first:last] = ws_b[None, :, first:last]
    images = family.synthesize(nets, torch.cat([ws_b, ws_a, mixed.flatten(0, 1)]), batch)
    top, left, cells = images.split([len(seeds_b), len(seeds_a), len(seeds_a) * len(seeds_b)])
    blank = torch.full_like(top[:1], -1.0)
    rows = [torch.cat([blank, top])]
    for a, cell_row in enumerate(cells.split(len(seeds_b))):
        rows.append(torch.cat([left[a:a + 1], cell_row]))
    return torch.cat(rows)


@torch.no_grad()
def style_mix(checkpoint: str | Path, seeds_a: list[int], seeds_b: list[int],
              out: str | Path = "mix.png", styles: str = "coarse", mix_cutoff: int | None = None,
              truncation: float | None = None, truncation_cutoff: int | None = None,
              batch: int = 32) -> Path:
    """Write the style-mixing grid of :func:`mix_images` as one image at ``out``: the styles
    of group ``styles`` (coarse 4^2-8^2, middle 16^2-32^2, fine 64^2+) or ``0 .. mix_cutoff-1``
    from the column seeds ``seeds_b``, the rest from the row seeds ``seeds_a``."""
    if not seeds_a or not seeds_b:
        raise ValueError("--mix SEEDS_A SEEDS_B: both lists need at least one seed")
    check_truncation(truncation, truncation_cutoff)
    image_format(out)
    family, nets, _ = load_inference(checkpoint)
    require_w_space(family, "--mix")
    span = family.style_range(styles, mix_cutoff)
    psi = 1.0 if truncation is None else truncation
    tiles = mix_images(family, nets, seeds_a, seeds_b, span, psi, truncation_cutoff, batch)
    return save_grid(tiles, out, ncols=1 + len(seeds_b))


def walk_ws(ws: torch.Tensor, frames: int) -> torch.Tensor:
    """``frames`` styles on the closed polyline through ``ws`` ``(K, num_ws, w_dim)`` (back to
    the first), evenly spaced in steps: frame ``t`` is ``lerp(ws[i], ws[i + 1], f)`` with
    ``i + f = t * K / frames``, so frame 0 is exactly ``ws[0]``."""
    k = ws.shape[0]
    out = []
    for t in range(frames):
        i, rest = divmod(t * k, frames)
        out.append(ws[i].lerp(ws[(i + 1) % k], rest / frames))
    return torch.stack(out)  # (frames, num_ws, w_dim)


def walk_batches(family: Family, nets: dict, seeds: list[int], frames: int,
                 truncation: float = 1.0, truncation_cutoff: int | None = None,
                 batch: int = 32) -> Iterator[torch.Tensor]:
    """The frames of a latent walk in W through the (truncated) styles of ``seeds`` (linear
    interpolation between consecutive seeds, :func:`walk_ws`), ``(<= batch, C, R, R)`` at a
    time, so a long walk need not be held in memory as floats."""
    ws = family.seed_ws(nets, seeds, truncation, truncation_cutoff)
    for wb in walk_ws(ws, frames).split(batch):
        yield family.synthesize(nets, wb, batch)


def walk_frames(family: Family, nets: dict, seeds: list[int], frames: int,
                truncation: float = 1.0, truncation_cutoff: int | None = None,
                batch: int = 32) -> torch.Tensor:
    """``(frames, C, R, R)``: every frame of :func:`walk_batches`."""
    return torch.cat(list(walk_batches(family, nets, seeds, frames, truncation,
                                       truncation_cutoff, batch)))


VIDEO_SUFFIXES = (".gif", ".mp4")


def video_suffix(out: str | Path) -> str:
    """``.gif`` or ``.mp4``; ValueError naming ``--out`` for another suffix, or for MP4 when
    the imageio-ffmpeg package is missing."""
    suffix = Path(out).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"--out {out}: a latent walk is written as .gif or .mp4 (e.g. "
                         f"--out walk.gif)")
    if suffix == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ValueError(f"--out {out}: writing MP4 needs the imageio-ffmpeg package "
                         f"(pip install imageio-ffmpeg), or write a .gif")
    return suffix


def write_video(batches: Iterable[np.ndarray], out: str | Path, fps: float) -> Path:
    """Write the frames of ``batches`` (arrays ``(B, H, W, 3)`` uint8) with imageio at ``fps``
    frames per second, atomically: a looping GIF (Pillow encodes it from all frames at once),
    or an H.264 MP4 streamed to ffmpeg (needs the imageio-ffmpeg package). A GIF stores
    identical consecutive frames once, for their summed duration."""
    out = Path(out)
    suffix = video_suffix(out)
    import imageio.v2 as iio2
    import imageio.v3 as iio

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{suffix}")  # the writer picks the format by suffix
    try:
        if suffix == ".gif":
            iio.imwrite(tmp, np.concatenate(list(batches)), duration=1000 / fps, loop=0)
        else:
            with iio2.get_writer(tmp, format="FFMPEG", fps=fps) as writer:
                for frames in batches:
                    for frame in frames:
                        writer.append_data(frame)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


@torch.no_grad()
def interpolate(checkpoint: str | Path, seeds: list[int], frames: int,
                out: str | Path = "walk.gif", truncation: float | None = None,
                truncation_cutoff: int | None = None, fps: float = 24.0,
                batch: int = 32) -> Path:
    """Write a latent walk of ``frames`` frames, one image each, through ``seeds`` and back to
    the first (:func:`walk_batches`), as a GIF or MP4 (:func:`write_video`)."""
    if frames < 1:
        raise ValueError(f"--interpolate {frames}: the number of frames must be at least 1")
    if len(seeds) < 2:
        raise ValueError("--interpolate walks between seeds: give at least two, e.g. "
                         "--seeds 1,2,3")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"--fps {fps}: expected a positive number")
    check_truncation(truncation, truncation_cutoff)
    video_suffix(out)
    family, nets, _ = load_inference(checkpoint)
    require_w_space(family, "--interpolate")
    psi = 1.0 if truncation is None else truncation
    batches = walk_batches(family, nets, seeds, frames, psi, truncation_cutoff, batch)
    return write_video((to_uint8(images) for images in batches), out, fps)
