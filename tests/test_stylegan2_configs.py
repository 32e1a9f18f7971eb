"""The StyleGAN2 configs and what reads them: ``configs/ffhq1024_stylegan2.yaml`` holds config F
as published and its dry run prints the published parameter counts; the widened
``configs/ffhq1024_stylegan2_fsdp.yaml`` has at least 300M parameters in each of G and D; the
counts match a formula written out from the architecture; ``benchmarks/model_memory.py`` counts a
StyleGAN2 exactly (meta device against a built model) and runs every phase on the meta device."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scalegan.cli import main
from scalegan.config import load_config
from scalegan.families.stylegan2 import StyleGAN2

ROOT = Path(__file__).resolve().parents[1]
CONFIG_F = ROOT / "configs" / "ffhq1024_stylegan2.yaml"
WIDE = ROOT / "configs" / "ffhq1024_stylegan2_fsdp.yaml"
SCRIPT = ROOT / "benchmarks" / "model_memory.py"

# StyleGAN2 config F at 1024^2, FFHQ: the published parameter counts of G and D.
PUBLISHED_G, PUBLISHED_D = 30_370_060, 29_011_905

# Config F's training settings as published (StyleGAN2-ADA's cfg "stylegan2" and the defaults of
# its StyleGAN2Loss, training loop and networks), keyed by scalegan's config fields.
PUBLISHED = {
    "model.resolution": 1024, "model.latent_dim": 512, "model.w_dim": 512,
    "model.mapping_layers": 8, "model.mapping_lr_multiplier": 0.01,
    "model.channel_base": 32768, "model.channel_max": 512, "model.mbstd_group_size": 4,
    "model.style_mixing": 0.9, "model.pl_weight": 2.0, "model.pl_interval": 4,
    "model.pl_decay": 0.01, "model.pl_batch_shrink": 2, "model.bf16_resolutions": 4,
    "model.conv_clamp": 256.0, "loss.kind": "nonsaturating", "loss.r1_gamma": 10.0,
    "loss.r1_interval": 16, "optim.kind": "adam", "optim.g_lr": 0.002, "optim.d_lr": 0.002,
    "optim.beta1": 0.0, "optim.beta2": 0.99, "optim.eps": 1e-8, "train.batch_size": 32,
    "train.total_kimg": 25000, "train.ema_halflife_kimg": 10, "train.ema_rampup": 0.0,
    "train.precision": "bf16", "parallel.strategy": "ddp",
}


def formula_counts(mc) -> tuple[int, int]:
    """(G, D) parameters of StyleGAN2 (skip G, residual D) written out from the architecture:
    C_r = min(channel_base // r, channel_max) feature maps at r^2.

    G: the mapping's fully connected layers (latent_dim -> w_dim, then w_dim -> w_dim, each with
    a bias); the 4^2 constant; per modulated 3x3 layer (in -> out) an affine w_dim -> in with
    bias, the out x in x 3 x 3 weight, a noise strength and a bias of out; per toRGB (in -> img)
    an affine, an img x in weight and a bias. The 4^2 block has one 3x3 layer, every other block
    two (C_{r/2} -> C_r up, C_r -> C_r), each block one toRGB.
    D: fromRGB (img -> C_R, with bias); per block r from R down to 8 two 3x3 convs with biases
    (C_r -> C_r, C_r -> C_{r/2}) and a bias-free 1x1 skip (C_r -> C_{r/2}); the epilogue's 3x3
    conv (C_4 + mbstd channels -> C_4), its fully connected C_4 x 16 -> C_4 and C_4 -> 1, with
    biases."""
    ch = {r: min(mc.channel_base // r, mc.channel_max)
          for r in (2 ** k for k in range(2, mc.resolution.bit_length()))}
    w, img = mc.w_dim, mc.img_channels
    ins = [mc.latent_dim] + [w] * (mc.mapping_layers - 1)
    g = sum(i * w + w for i in ins)

    def layer(i: int, o: int) -> int:
        return (w * i + i) + o * i * 9 + 1 + o

    def torgb(i: int) -> int:
        return (w * i + i) + img * i + img

    g += ch[4] * 16 + layer(ch[4], ch[4]) + torgb(ch[4])
    for r in ch:
        if r > 4:
            g += layer(ch[r // 2], ch[r]) + layer(ch[r], ch[r]) + torgb(ch[r])

    R = mc.resolution
    d = img * ch[R] + ch[R]
    for r in ch:
        if r > 4:
            d += (ch[r] * ch[r] * 9 + ch[r]) + (ch[r] * ch[r // 2] * 9 + ch[r // 2]) \
                + ch[r] * ch[r // 2]
    c4 = ch[4]
    d += ((c4 + mc.mbstd_num_channels) * c4 * 9 + c4) + (c4 * 16 * c4 + c4) + (c4 + 1)
    return g, d


def dry_run_counts(capsys, path: Path) -> tuple[int, int]:
    """(G, D) as ``scalegan train PATH --dry-run`` prints them."""
    assert main(["train", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    found = dict(re.findall(r"\b([GD]) ([\d,]+) parameters", out))
    assert set(found) == {"G", "D"}, out
    return int(found["G"].replace(",", "")), int(found["D"].replace(",", ""))


def load_script():
    spec = importlib.util.spec_from_file_location("model_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_formula_counts_the_built_networks():
    """The formula against networks built on the CPU, in several shapes (unequal widths, a
    channel cap that binds, grayscale, a short mapping, two mbstd channels)."""
    for overrides in (["model.resolution=32", "model.channel_base=256", "model.channel_max=16",
                       "model.latent_dim=12", "model.w_dim=10", "model.mapping_layers=2"],
                      ["model.resolution=64", "model.channel_base=512", "model.channel_max=24",
                       "model.img_channels=1", "model.latent_dim=8", "model.w_dim=8",
                       "model.mapping_layers=3", "model.mbstd_num_channels=2"]):
        mc = load_config(CONFIG_F, overrides).model
        nets = StyleGAN2.networks(mc, bf16=True)
        built = tuple(sum(p.numel() for p in nets[n].parameters()) for n in ("G", "D"))
        assert built == formula_counts(mc), overrides


def test_config_f_dry_run_prints_the_published_counts(capsys):
    g, d = dry_run_counts(capsys, CONFIG_F)
    assert abs(g - PUBLISHED_G) <= 0.02 * PUBLISHED_G, g
    assert abs(d - PUBLISHED_D) <= 0.02 * PUBLISHED_D, d
    assert (g, d) == formula_counts(load_config(CONFIG_F, []).model)
    assert g == PUBLISHED_G  # G's architecture is config F's to the parameter


def test_config_f_holds_the_published_settings():
    cfg = load_config(CONFIG_F, [])
    for key, value in PUBLISHED.items():
        section, field = key.split(".")
        assert getattr(getattr(cfg, section), field) == value, key
    assert cfg.model.arch == "stylegan2" and cfg.model.preset == "none"
    assert cfg.data.shards == "shards/ffhq1024" and cfg.data.xflip


def test_fsdp_config_is_config_f_widened_past_300m_each(capsys):
    """The dry run of the widened config, its networks built on the meta device (about 860M
    parameters: no memory, a few seconds)."""
    with torch.device("meta"):
        g, d = dry_run_counts(capsys, WIDE)
    wide = load_config(WIDE, [])
    assert (g, d) == formula_counts(wide.model)
    assert g >= 300e6 and d >= 300e6, (g, d)
    assert wide.parallel.strategy == "fsdp"
    # bf16 parameters would reach the fp32 layers (mapping, 4^2 .. 64^2) of the model
    assert wide.parallel.param_dtype == "fp32"
    for key, value in PUBLISHED.items():
        section, field = key.split(".")
        if key not in ("model.channel_base", "model.channel_max", "parallel.strategy"):
            assert getattr(getattr(wide, section), field) == value, key
    assert (wide.model.channel_base, wide.model.channel_max) == (4 * 32768, 4 * 512)


def test_memory_script_counts_a_stylegan2_exactly():
    """The script's meta-device count equals a model built on the CPU (a small config), its
    FSDP units partition each network's parameters, and on the widened config it agrees with the
    formula."""
    mm = load_script()
    small = load_config(WIDE, ["model.resolution=32", "model.channel_base=512",
                               "model.channel_max=32", "model.latent_dim=16", "model.w_dim=16"])
    family, nets = mm.meta_networks(small)
    assert all(p.is_meta for net in nets.values() for p in net.parameters())
    torch.manual_seed(0)
    built = StyleGAN2.networks(small.model, bf16=True)
    assert mm.parameter_counts(nets) == {n: sum(p.numel() for p in m.parameters())
                                         for n, m in built.items()}
    for name, net in nets.items():
        units = mm.fsdp_units(name, net)
        assert sum(n for _, n in units) == mm.parameter_counts(nets)[name]
    assert {u for u, _ in mm.fsdp_units("G", nets["G"])} >= {"G.mapping",
                                                              "G.synthesis.blocks.32"}
    _, wide_nets = mm.meta_networks(load_config(WIDE, []))
    g, d = formula_counts(load_config(WIDE, []).model)
    assert mm.parameter_counts(wide_nets) == {"G": g, "D": d}
    # the largest unit FSDP gathers (the config's header): D's root, fromRGB 3 -> 128 at 1024^2
    # and the 4^2 epilogue at 2048 feature maps
    units = dict(mm.fsdp_units("D", wide_nets["D"]))
    root = (3 * 128 + 128) + (2049 * 2048 * 9 + 2048) + (2048 * 16 * 2048 + 2048) + (2048 + 1)
    assert units["D (root)"] == root == max(units.values())
    assert max(n for _, n in mm.fsdp_units("G", wide_nets["G"])) < root


def test_memory_script_runs_every_stylegan2_phase(tmp_path):
    """``python benchmarks/model_memory.py`` on a small StyleGAN2: the state table is the counts
    times 16 B / GPUs, and each of the four phases reports its saved activations (no phase
    falls back to "n/a" on the meta device)."""
    overrides = ["model.resolution=64", "model.channel_base=1024", "model.channel_max=64"]
    proc = subprocess.run([sys.executable, str(SCRIPT), str(WIDE), *overrides,
                           "--worlds", "1,4"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    g, d = formula_counts(load_config(WIDE, overrides).model)
    assert f"G {g / 1e6:.1f}M, D {d / 1e6:.1f}M parameters" in out, out
    for w in (1, 4):
        assert f"| {w} | {(g + d) * 16 / w / 1e9:.2f} GB | {g * 4 / w / 1e9:.2f} GB |" in out
    phases = dict(re.findall(r"(D|R1|G|PL) \(trains [GD]\) ([\d.]+) GiB", out))
    assert set(phases) == {"D", "R1", "G", "PL"}, out
    assert "n/a" not in out
    assert all(float(v) > 0 for v in phases.values())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_memory_script_meta_activations_equal_a_cpu_run(precision):
    """The activation figures counted on the meta device (shapes only: noise rows as empty
    tensors, autocast taken as the CPU's) equal the same phases run on the CPU with real tensors
    and real draws, element for element, with and without the bf16 blocks."""
    mm = load_script()

    class CPUServices(mm.MetaServices):
        device = torch.device("cpu")

        def draw(self, fn, n, *shape):
            return fn(n, *shape, generator=self.rng)

    cfg = load_config(WIDE, ["model.resolution=64", "model.channel_base=1024",
                             "model.channel_max=64", "model.ops_impl=ref",
                             f"train.precision={precision}"])
    family, nets = mm.meta_networks(cfg)
    meta = mm.phase_activations(family, nets)
    cpu_family = StyleGAN2(cfg, CPUServices())
    torch.manual_seed(0)
    cpu_family.svc.nets = cpu_nets = cpu_family.build_networks()
    cpu = mm.phase_activations(cpu_family, cpu_nets)
    assert [p[:2] for p in meta] == [("D", "D"), ("R1", "D"), ("G", "G"), ("PL", "G")]
    assert all(isinstance(p[2], int) and p[2] > 0 for p in cpu), cpu
    assert meta == cpu
