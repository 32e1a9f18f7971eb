"""`scalegan export`: a checkpoint's averaged generator as one file that torch alone loads.

The file is a ``torch.export`` program (:func:`torch.export.save`, a zip archive) of
:class:`LatentToImage`: ``images = G(z, truncation_psi)`` with

* ``z`` ``(N, latent_dim)`` float32, any ``N >= 1``; ``scalegan generate --seed S --num N``
  draws ``torch.randn(N, latent_dim, generator=torch.Generator().manual_seed(S))``;
* ``truncation_psi`` a 0-dim float32 tensor: ``w <- w_avg + psi * (w - w_avg)`` toward the tracked
  ``w_avg`` on the first ``truncation_cutoff`` styles (fixed at export, all by default;
  ``torch.tensor(1.0)``: no truncation);
* ``images`` ``(N, img_channels, R, R)`` float32, nominally in ``[-1, 1]`` (not clamped), made
  with the constant noise maps, so the same inputs always give the same images.

The modulated convolutions are exported as their ``cpu`` path (plain convolutions between two
scalings), so the program is ordinary ATen operators. The archive holds ``scalegan.json``
(architecture, shapes, truncation cutoff, the checkpoint it came from, how to call it)::

    extra = {"scalegan.json": ""}
    G = torch.export.load(open("G.pt2", "rb"), extra_files=extra).module()
    images = G(torch.randn(4, z_dim, generator=torch.Generator().manual_seed(0)),
               torch.tensor(0.7))

(``torch.export.load`` given a path warns unless it ends in ``.pt2``; an open file never does.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import nn

from scalegan.fs import fsync_dir
from scalegan.generate import load_inference, require_w_space

METADATA_FILE = "scalegan.json"
"""Name of the metadata member of the archive (``extra_files``)."""


class LatentToImage(nn.Module):
    """``(z (N, latent_dim), truncation_psi ()) -> images (N, C, R, R)``: StyleGAN2's mapping,
    truncation toward ``w_avg`` (styles ``0 .. truncation_cutoff - 1``, or all), then synthesis
    with the constant noise maps."""

    def __init__(self, G: nn.Module, truncation_cutoff: int | None = None) -> None:
        super().__init__()
        self.G, self.truncation_cutoff = G, truncation_cutoff

    def forward(self, z: torch.Tensor, truncation_psi: torch.Tensor) -> torch.Tensor:
        mapping = self.G.mapping
        ws = mapping(z, update_w_avg=False)  # (N, num_ws, w_dim)
        # lerp is exact at psi = 1 (ws) and psi = 0 (w_avg), as the truncation of generate
        psi = truncation_psi.to(ws.dtype)
        if self.truncation_cutoff is None:
            ws = mapping.w_avg.to(ws.dtype).lerp(ws, psi)
        else:
            k = self.truncation_cutoff
            ws = torch.cat([mapping.w_avg.to(ws.dtype).lerp(ws[:, :k], psi), ws[:, k:]], dim=1)
        return self.G.synthesis(ws, noise_mode="const")  # (N, C, R, R)


def exportable_generator(family, G: nn.Module) -> nn.Module:
    """A copy of ``G`` whose modulated convolutions run the ``cpu`` path (plain torch ops
    whatever ``model.ops_impl`` the run trained with), in eval mode, on the CPU."""
    mc = dataclasses.replace(family.mc, ops_impl="cpu")
    bf16 = family.cfg.train.precision == "bf16"
    copy = family.networks(mc, bf16=bf16)["G"]
    copy.load_state_dict(G.state_dict())
    return copy.eval().requires_grad_(False)


def export_generator(checkpoint: str | Path, out: str | Path,
                     truncation_cutoff: int | None = None) -> tuple[Path, dict]:
    """Write the checkpoint's G_ema as :class:`LatentToImage` in one ``torch.export`` archive
    at ``out`` (atomically: a temporary file beside it, then a rename); returns the path and
    the metadata stored in it. ValueError naming the option for families it does not support
    or a cutoff out of range."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give the file's name (e.g. "
                         f"{out / 'G.pt2'})")
    family, nets, meta = load_inference(checkpoint)
    require_w_space(family, "export")
    cutoff = family.truncation_cutoff(truncation_cutoff)
    G = exportable_generator(family, nets["G"])
    module = LatentToImage(G, cutoff).eval()
    mc = family.mc
    probe = torch.randn(2, mc.latent_dim, generator=torch.Generator().manual_seed(0))
    psi = torch.tensor(0.5)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(module, (probe, psi), dynamic_shapes=({0: batch}, None))
        # the program must compute what the eager generator computes (a single-sample batch
        # too: the batch dimension is dynamic)
        for z in (probe, probe[:1]):
            want = nets["G"](z, truncation_psi=0.5, truncation_cutoff=cutoff,
                             noise_mode="const")
            got = program.module()(z, psi)
            if not torch.allclose(got, want, rtol=0, atol=1e-5):
                raise RuntimeError(f"export: the exported program differs from the generator "
                                   f"by {(got - want).abs().max().item():.3g}")
    metadata = {
        "format": "torch.export program of scalegan.export.LatentToImage",
        "call": "G(z, truncation_psi) -> images",
        "z": f"(N, {mc.latent_dim}) float32",
        "truncation_psi": "0-dim float32 tensor; 1.0 = no truncation, 0.0 = the w_avg image",
        "truncation_cutoff": cutoff,
        "images": f"(N, {mc.img_channels}, {mc.resolution}, {mc.resolution}) float32 in about "
                  f"[-1, 1], constant noise",
        "seeds": "scalegan generate --seed S --num N uses torch.randn(N, latent_dim, "
                 "generator=torch.Generator().manual_seed(S))",
        "arch": family.arch, "resolution": mc.resolution, "img_channels": mc.img_channels,
        "latent_dim": mc.latent_dim, "w_dim": mc.w_dim, "num_ws": mc.num_ws,
        "checkpoint": str(checkpoint), "step": meta.get("step"),
        "images_seen": meta.get("images_seen"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.export.save(program, f,
                              extra_files={METADATA_FILE: json.dumps(metadata, indent=1)})
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(out.parent)
    return out, metadata
