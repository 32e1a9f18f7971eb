"""One whole PGGAN training step with ``model.ops_impl=auto`` against ``ref``, timed in one run on
this machine's CPU (fp32).

The step is the progressive family's (``scalegan.families._image.ImageGAN``) at a fixed
resolution with alpha = 1, in its phase order, each phase with its own backward and Adam step:

* D: ``d_loss("wgan_gp")`` (drift 0.001) on real images and G's fakes, plus 10 x the WGAN-GP
  gradient penalty on interpolates (``losses.gradient_penalty``: a double backward through D);
* R1: ``gamma / 2 * ||dD(real)/dreal||^2`` (``losses.r1_penalty``, gamma 10; the trainer runs it
  every ``loss.r1_interval`` steps, here every step);
* G: ``g_loss("wgan_gp")`` through the frozen D.

Networks: :class:`ProgressiveGenerator` and :class:`ProgressiveDiscriminator` with the
ffhq1024 configs' schedule (``channel_base`` 16384, latent 512, RGB, minibatch stddev in groups
of 4) with ``channel_max`` capped at 128 (ffhq1024 has 512: 16x the multiply-adds, minutes per
step on two cores), so 128 feature maps at every resolution up to 64^2; batch 16. Two copies of
G and D are built, ``ops_impl="ref"`` and ``"auto"``, the second loading the first's state dict;
each has its own Adam (lr 1e-3, betas (0, 0.99)). Each pair of steps runs both on the same inputs,
in alternating order; after ``--warmup`` pairs, ``--pairs`` are timed. Printed per resolution:
the median step time of each, the ratio ref / auto of the medians and the interquartile range
of the per-pair ratios; the last line holds both resolutions' ratios.

    python benchmarks/pggan_step.py [--pairs 10] [--warmup 3] [--resolutions 32,64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scalegan import losses
from scalegan.config import ModelConfig
from scalegan.models.progressive import ProgressiveDiscriminator, ProgressiveGenerator

BATCH = 16
GP_WEIGHT, DRIFT, R1_GAMMA = 10.0, 0.001, 10.0


def build(resolution: int, ops_impl: str, state: dict | None = None):
    """G, D and their Adam optimizers; ``state`` (G's and D's state dicts) loaded if given."""
    mc = ModelConfig(arch="progressive", resolution=resolution, img_channels=3, latent_dim=512,
                     channel_base=16384, channel_max=128, mbstd_group_size=4, ops_impl=ops_impl)
    g, d = ProgressiveGenerator(mc), ProgressiveDiscriminator(mc)
    if state is not None:
        g.load_state_dict(state["G"])
        d.load_state_dict(state["D"])
    opt = {name: torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.0, 0.99))
           for name, net in (("G", g), ("D", d))}
    return g, d, opt


def train_step(g, d, opt, real: torch.Tensor, z_d: torch.Tensor, z_g: torch.Tensor,
               mix: torch.Tensor) -> None:
    """D phase (WGAN-GP loss with drift and the gradient penalty), R1 phase, G phase."""
    res = real.shape[-1]

    def disc(x):
        return d(x, res, 1.0)

    g.requires_grad_(False)
    d.requires_grad_(True)
    with torch.no_grad():
        fake = g(z_d, res, 1.0)
    loss = losses.d_loss("wgan_gp", disc(real), disc(fake), drift=DRIFT)
    loss = loss + GP_WEIGHT * losses.gradient_penalty(disc, real, fake, mix).mean()
    opt["D"].zero_grad(set_to_none=True)
    loss.backward()
    opt["D"].step()

    x = real.detach().requires_grad_(True)
    r1 = losses.r1_penalty(disc(x), x).mean() * (R1_GAMMA / 2)
    opt["D"].zero_grad(set_to_none=True)
    r1.backward()
    opt["D"].step()

    g.requires_grad_(True)
    d.requires_grad_(False)
    loss = losses.g_loss("wgan_gp", disc(g(z_g, res, 1.0)))
    opt["G"].zero_grad(set_to_none=True)
    loss.backward()
    opt["G"].step()


def compare(resolution: int, pairs: int, warmup: int) -> float:
    """Time ``pairs`` step pairs at ``resolution``; print the figures; the ratio ref / auto."""
    torch.manual_seed(0)
    ref = build(resolution, "ref")
    state = {"G": ref[0].state_dict(), "D": ref[1].state_dict()}
    auto = build(resolution, "auto", state)
    gen = torch.Generator().manual_seed(1)
    times: dict[str, list[float]] = {"ref": [], "auto": []}
    for i in range(warmup + pairs):
        inputs = (torch.rand(BATCH, 3, resolution, resolution, generator=gen) * 2 - 1,
                  torch.randn(BATCH, 512, generator=gen), torch.randn(BATCH, 512, generator=gen),
                  torch.rand(BATCH, generator=gen))
        order = (("ref", ref), ("auto", auto)) if i % 2 == 0 else (("auto", auto), ("ref", ref))
        for name, nets in order:
            t0 = time.perf_counter()
            train_step(*nets, *inputs)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    t_ref, t_auto = statistics.median(times["ref"]), statistics.median(times["auto"])
    per_pair = [r / a for r, a in zip(times["ref"], times["auto"], strict=True)]
    q1, _, q3 = statistics.quantiles(per_pair, n=4)
    print(f"{resolution}^2: step ref {t_ref * 1e3:.0f} ms, auto {t_auto * 1e3:.0f} ms (medians of "
          f"{pairs}); ref / auto {t_ref / t_auto:.2f}x, per-pair ratios IQR {q1:.2f}-{q3:.2f}",
          flush=True)
    return t_ref / t_auto


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--resolutions", default="32,64")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, fp32, batch {BATCH}, "
          f"128 feature maps (ffhq1024 widths capped), WGAN-GP + R1 + G step")
    ratios = {r: compare(r, args.pairs, args.warmup)
              for r in (int(s) for s in args.resolutions.split(","))}
    print("ref / auto: " + ", ".join(f"{r}^2 {x:.2f}x" for r, x in ratios.items()))


if __name__ == "__main__":
    main()
