"""Using a trained StyleGAN2 G: `scalegan generate --truncation / --mix / --interpolate` and
`scalegan export`, each checked against the styles and images built by hand from the model's
mapping and synthesis networks; and the refusals for a run without a W space (dcgan).

One tiny grayscale run (32^2, 8 feature maps, 3 steps of seeded stand-in data) serves every
test. Torch runs on one thread here and in the subprocess that loads the export, so both run the
same kernels (the export test asks for bit-identical images)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from scalegan.cli import main
from scalegan.config import load_config
from scalegan.generate import (
    load_inference,
    mix_images,
    parse_seeds,
    walk_frames,
    walk_ws,
)
from scalegan.monitor.grid import to_uint8
from scalegan.train.schedule import Phase
from scalegan.train.trainer import Trainer

from families.common import FixedStream

ATOL = 1e-6
"""Images checked against hand-built styles: both sides synthesise one image per call, so only
the styles' own arithmetic can differ."""
BATCH_ATOL = 5e-6
"""The same images synthesised in batches of another size: fp32 convolutions sum in another
order for another batch size (measured: up to 1.1e-6 between one image alone and in a batch of
5 or 6)."""


class SavableStream(FixedStream):
    """The seeded stand-in stream with the (empty) state a checkpoint records."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


def tiny_run(root: Path, arch: str) -> Path:
    """Train a tiny 32^2 ``arch`` run for 3 steps and checkpoint it; returns the run dir."""
    overrides = [f"runs_dir={root}", f"name={arch}", f"data.shards={root / 'unused'}",
                 f"model.arch={arch}", "model.resolution=32", "model.img_channels=1",
                 "model.latent_dim=16", "train.batch_size=4", "train.total_kimg=10",
                 "log.wandb=disabled", "log.progress=false"]
    if arch == "stylegan2":
        overrides += ["model.w_dim=16", "model.mapping_layers=2", "model.channel_base=256",
                      "model.channel_max=8", "loss.r1_interval=2", "model.pl_interval=2",
                      "train.ema_halflife_kimg=0.002", "train.ema_rampup=0"]
    else:
        overrides += ["model.channel_base=128", "model.channel_max=16"]
    trainer = Trainer(load_config(None, overrides))
    trainer.streams = {name: SavableStream(trainer.micro_batch, 0, 1, (1, 32), seed=3)
                       for name in trainer.family.streams()}
    trainer.train(max_steps=3)
    trainer.close()
    return root / arch


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {arch: tiny_run(root, arch) for arch in ("stylegan2", "dcgan")}


@pytest.fixture(scope="module")
def loaded(runs):
    family, nets, meta = load_inference(runs["stylegan2"])
    return family, nets, Phase(meta["phase"]["resolution"], meta["phase"]["alpha"])


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def z_of(seed: int, n: int = 1, dim: int = 16) -> torch.Tensor:
    """The latents ``generate --seed seed --num n`` draws."""
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def styles_by_hand(G, z: torch.Tensor) -> torch.Tensor:
    """``(N, num_ws, w_dim)``: for each latent alone, the mapping's layers applied one by one
    to the pixel-normed z, the last layer's w repeated for every style."""
    rows = []
    for x in z.split(1):
        x = x * (x.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        for layer in G.mapping.layers:
            x = layer(x)
        rows.append(x[:, None].repeat(1, G.num_ws, 1))
    return torch.cat(rows)


def synth(G, ws: torch.Tensor) -> torch.Tensor:
    """The images of ``ws``, one synthesis call per image, with the constant noise."""
    return torch.cat([G.synthesis(w[None], noise_mode="const") for w in ws])


def close(got: torch.Tensor, want: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(got, want, rtol=0, atol=atol)


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ----------------------------------------------------------------------------------- truncation

def test_truncation_in_w_toward_the_tracked_average(loaded, capsys):
    family, nets, phase = loaded
    G = nets["G"]
    w_avg = G.mapping.w_avg
    assert w_avg.abs().max() > 1e-3  # tracked during training: truncation has a centre
    z = z_of(5, 6)
    w = styles_by_hand(G, z)  # (6, num_ws, w_dim)

    def generated(**options):
        return family.generate(nets, 6, 5, phase, {"batch": 1, **options})

    # psi = 0: every image is the synthesis of w_avg alone
    average = synth(G, w_avg.expand(1, G.num_ws, -1))
    close(generated(truncation=0.0), average.expand(6, -1, -1, -1))
    # psi = 1: plain generation, the untruncated styles
    plain = generated()
    close(plain, synth(G, w))
    close(generated(truncation=1.0), plain)
    close(family.generate(nets, 6, 5, phase, {"batch": 4}), plain, BATCH_ATOL)
    assert (plain - average).abs().max() > 1e-2
    # psi = 0.5: the midpoint of w and w_avg; with a cutoff, only the first styles
    half = w_avg + 0.5 * (w - w_avg)
    close(generated(truncation=0.5), synth(G, half))
    cut = torch.cat([half[:, :3], w[:, 3:]], dim=1)
    close(generated(truncation=0.5, truncation_cutoff=3), synth(G, cut))

    # the command line: every tile of the psi = 0 grid is the average image
    assert main(["generate", str(family.cfg.run_dir), "--num", "4", "--truncation", "0",
                 "--individual", "--out", "avg"]) == 0
    want = to_uint8(average)[0]
    for i in range(4):
        assert np.array_equal(read_png(Path("avg") / f"{i:06d}.png"), want)
    assert main(["generate", str(family.cfg.run_dir), "--num", "2", "--truncation", "0.5",
                 "--truncation-cutoff", "9", "--out", "x.png"]) == 2
    assert "--truncation-cutoff 9: expected 1 .. 8" in capsys.readouterr().err


# ------------------------------------------------------------------------------- style mixing

@pytest.mark.parametrize("styles,span,psi", [("coarse", (0, 4), 1.0), ("middle", (4, 8), 0.7)])
def test_mix_grid_cells_are_hand_built_styles(loaded, styles, span, psi):
    family, nets, _ = loaded
    G = nets["G"]
    assert family.style_range(styles) == span
    seeds_a, seeds_b = [1, 2], [10, 11, 12]
    tiles = mix_images(family, nets, seeds_a, seeds_b, span, psi, batch=1)
    assert tiles.shape == ((1 + 2) * (1 + 3), 1, 32, 32)
    close(mix_images(family, nets, seeds_a, seeds_b, span, psi, batch=5), tiles, BATCH_ATOL)

    def w_of(seed):  # psi = 1 leaves w as it is (lerp is exact there)
        w = styles_by_hand(G, z_of(seed))
        return w if psi == 1.0 else G.mapping.w_avg + psi * (w - G.mapping.w_avg)

    ncols = 1 + len(seeds_b)
    assert torch.equal(tiles[0], torch.full_like(tiles[0], -1.0))  # the empty corner
    for b, sb in enumerate(seeds_b):  # top row: the B images
        close(tiles[1 + b], synth(G, w_of(sb))[0])
    for a, sa in enumerate(seeds_a):
        close(tiles[(1 + a) * ncols], synth(G, w_of(sa))[0])  # left column: the A images
        for b, sb in enumerate(seeds_b):
            ws = w_of(sa).clone()
            ws[:, span[0]:span[1]] = w_of(sb)[:, span[0]:span[1]]
            cell = tiles[(1 + a) * ncols + 1 + b]
            close(cell, synth(G, ws)[0])
            # a real mix: neither source's image
            assert (cell - tiles[1 + b]).abs().max() > 1e-3
            assert (cell - tiles[(1 + a) * ncols]).abs().max() > 1e-3


def test_mix_command_writes_the_grid(loaded):
    family, nets, _ = loaded
    run = str(family.cfg.run_dir)
    assert main(["generate", run, "--mix", "1,2", "10-12", "--mix-cutoff", "2",
                 "--truncation", "0.8", "--out", "mix.png"]) == 0
    grid = read_png(Path("mix.png"))
    # 3 rows x 4 columns of 32^2 tiles, each shown at 64^2 (the grids' nearest-neighbour 2x)
    assert grid.shape == (3 * 64, 4 * 64, 3)
    tiles = to_uint8(mix_images(family, nets, [1, 2], [10, 11, 12], (0, 2), 0.8))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, 4)
        assert np.array_equal(grid[r * 64:(r + 1) * 64:2, c * 64:(c + 1) * 64:2], tile), i


# ------------------------------------------------------------------------------- latent walks

def test_walk_ws_is_the_closed_polyline():
    ws = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    out = walk_ws(ws, 12)  # 4 frames per segment
    assert out.shape == (12, 4, 5)
    for seg in range(3):
        for j in range(4):
            want = ws[seg] + (j / 4) * (ws[(seg + 1) % 3] - ws[seg])
            close(out[seg * 4 + j], want)
        assert torch.equal(out[seg * 4], ws[seg])  # the seeds' own styles, exactly


def test_interpolation_frames_and_files(loaded):
    family, nets, _ = loaded
    G = nets["G"]
    single = walk_frames(family, nets, [1, 2, 3], 9, batch=1)
    w1, w2 = styles_by_hand(G, z_of(1)), styles_by_hand(G, z_of(2))
    close(single[0], synth(G, w1)[0])
    close(single[1], synth(G, w1 + (w2 - w1) / 3)[0])
    close(single[3], synth(G, w2)[0])
    frames = walk_frames(family, nets, [1, 2, 3], 9)  # one batch, as the command runs
    close(frames, single, BATCH_ATOL)

    run = str(family.cfg.run_dir)
    assert main(["generate", run, "--interpolate", "9", "--seeds", "1-3", "--out",
                 "walk.gif"]) == 0
    gif = iio.imread("walk.gif", index=None)
    assert gif.shape == (9, 32, 32, 3)
    # grayscale frames fit the GIF palette: no quantisation error
    assert np.array_equal(gif, to_uint8(frames))

    assert main(["generate", run, "--interpolate", "9", "--seeds", "1,2,3", "--out",
                 "walk.mp4", "--fps", "12"]) == 0
    mp4 = iio.imread("walk.mp4", index=None, plugin="FFMPEG")
    assert mp4.shape == (9, 32, 32, 3)
    # H.264 is lossy (4:2:0 chroma, quantised DCT): only close to the frames on average
    assert np.abs(mp4.astype(float) - to_uint8(frames)).mean() < 8
    assert not list(Path.cwd().glob(".*tmp*"))  # the temporary files are gone


def test_mp4_without_imageio_ffmpeg_names_the_package(loaded, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "imageio_ffmpeg" else real(name, *a))
    assert main(["generate", str(loaded[0].cfg.run_dir), "--interpolate", "4", "--seeds",
                 "1,2", "--out", "walk.mp4"]) == 2
    assert "imageio-ffmpeg" in capsys.readouterr().err
    assert not Path("walk.mp4").exists()


# -------------------------------------------------------------------------------------- export

LOADER = r"""
import importlib.abc, json, sys
import torch

class NoScalegan(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "scalegan":
            raise ImportError("scalegan must not be needed")

sys.meta_path.insert(0, NoScalegan())
torch.set_num_threads(1)
extra = {"scalegan.json": ""}
with open(sys.argv[1], "rb") as f:
    G = torch.export.load(f, extra_files=extra).module()
meta = json.loads(extra["scalegan.json"])
out = {}
for seed, n, psi in ((7, 3, 0.7), (8, 1, 1.0), (9, 2, 0.0)):
    z = torch.randn(n, meta["latent_dim"], generator=torch.Generator().manual_seed(seed))
    out[f"{seed}"] = G(z, torch.tensor(psi))
torch.save(out, sys.argv[2])
assert not [m for m in sys.modules if m.split(".")[0] == "scalegan"]
print(json.dumps(meta))
"""


def test_export_loads_with_torch_alone_and_matches_generate(loaded, tmp_path, capsys):
    family, nets, phase = loaded
    run = str(family.cfg.run_dir)
    assert main(["export", run, "--out", str(tmp_path / "G.pt")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / "G.pt"),
                           str(tmp_path / "images.pt")], cwd=outside, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (meta["resolution"], meta["img_channels"], meta["latent_dim"]) == (32, 1, 16)
    assert meta["truncation_cutoff"] is None
    exported = torch.load(tmp_path / "images.pt")
    for seed, n, psi in ((7, 3, 0.7), (8, 1, 1.0), (9, 2, 0.0)):
        want = family.generate(nets, n, seed, phase, {"truncation": psi})
        # the same ATen operators on the same inputs and one thread: bit for bit
        assert torch.equal(exported[str(seed)], want), (seed, psi)
    # and the images `scalegan generate` writes for those seeds
    assert main(["generate", run, "--num", "3", "--seed", "7", "--truncation", "0.7",
                 "--individual", "--out", "seven"]) == 0
    for i, tile in enumerate(to_uint8(exported["7"])):
        assert np.array_equal(read_png(Path("seven") / f"{i:06d}.png"), tile)


def test_export_with_a_truncation_cutoff(loaded, tmp_path):
    from scalegan.export import export_generator

    family, nets, phase = loaded
    path, meta = export_generator(family.cfg.run_dir, tmp_path / "G.pt2", truncation_cutoff=2)
    assert meta["truncation_cutoff"] == 2
    G = torch.export.load(path).module()
    z = z_of(4, 2)
    want = family.generate(nets, 2, 4, phase, {"truncation": 0.3, "truncation_cutoff": 2})
    assert torch.equal(G(z, torch.tensor(0.3)), want)


# -------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("args,named", [
    (["--truncation", "0.5"], "--truncation: model.arch=dcgan has no intermediate latent"),
    (["--mix", "1", "2"], "--mix: model.arch=dcgan has no intermediate latent"),
    (["--interpolate", "4", "--seeds", "1,2", "--out", "w.gif"],
     "--interpolate: model.arch=dcgan has no intermediate latent"),
])
def test_w_space_options_refused_without_w_space(runs, args, named, capsys):
    assert main(["generate", str(runs["dcgan"]), *args]) == 2
    assert named in capsys.readouterr().err
    assert not any(Path.cwd().iterdir())


def test_export_refused_without_w_space(runs, capsys):
    assert main(["export", str(runs["dcgan"]), "--out", "G.pt"]) == 2
    assert "export: model.arch=dcgan has no intermediate latent space W" in \
        capsys.readouterr().err
    assert not any(Path.cwd().iterdir())
    Path("folder").mkdir()
    assert main(["export", str(runs["stylegan2"]), "--out", "folder"]) == 2
    assert "--out folder is a directory" in capsys.readouterr().err
    assert main(["export", str(runs["stylegan2"]), "--truncation-cutoff", "0"]) == 2
    assert "--truncation-cutoff 0: expected 1 .. 8" in capsys.readouterr().err
    assert [p.name for p in Path.cwd().iterdir()] == ["folder"]


@pytest.mark.parametrize("args,named", [
    (["--mix", "1", "2", "--mix-styles", "fine"], "--mix-styles fine: a 32^2 model has 8 "
                                                  "styles, none of them fine"),
    (["--mix", "1", "2", "--mix-cutoff", "9"], "--mix-cutoff 9: expected 1 .. 8"),
    (["--mix", "1,x", "2"], "--mix SEEDS_A '1,x': expected comma-separated seeds"),
    (["--mix", "1", "2", "--interpolate", "3"], "--mix and --interpolate"),
    (["--mix", "1", "2", "--individual"], "--individual does not apply to --mix"),
    (["--interpolate", "4"], "--interpolate walks through seeds: give them with --seeds"),
    (["--interpolate", "4", "--seeds", "3"], "give at least two"),
    (["--interpolate", "0", "--seeds", "1,2"], "--interpolate 0: the number of frames"),
    (["--interpolate", "4", "--seeds", "1,2", "--fps", "0"], "--fps 0.0: expected a positive"),
    (["--interpolate", "4", "--seeds", "1,2", "--out", "w.png"], "--out w.png: a latent walk"),
    (["--seeds", "1,2"], "--seeds goes with --interpolate"),
    (["--truncation-cutoff", "2"], "--truncation-cutoff truncates the first styles"),
    (["--truncation", "nan"], "--truncation nan: expected a finite number"),
])
def test_w_space_usage_errors_name_the_option(runs, args, named, capsys):
    assert main(["generate", str(runs["stylegan2"]), *args]) == 2
    assert named in capsys.readouterr().err
    assert not any(Path.cwd().iterdir())


def test_parse_seeds():
    assert parse_seeds("1,2,3", "--seeds") == [1, 2, 3]
    assert parse_seeds("0-2,7, 9 - 10", "--seeds") == [0, 1, 2, 7, 9, 10]
    for bad in ("", "1,,2", "-1", "3-1", "a", "0-99999999999", f"{2 ** 63}"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad, "--seeds")
