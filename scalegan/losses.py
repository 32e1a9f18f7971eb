"""Adversarial losses and regularisers.

All functions take discriminator logits of shape (N,) and return a scalar mean over the batch, so
that gradient accumulation over micro-batches divides by the number of micro-batches only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from scalegan.config import LOSS_KINDS


def _full(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits in float32; float32 and float64 as they are."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor,
           drift: float = 0.0) -> torch.Tensor:
    """Discriminator loss on (N,) logits, the batch mean of:

    nonsaturating, minimax: softplus(D(fake)) + softplus(-D(real))   (Goodfellow et al. 2014)
    lsgan:   ((D(real) - 1)^2 + D(fake)^2) / 2                       (Mao et al. 2017, 0-1-1)
    hinge:   relu(1 - D(real)) + relu(1 + D(fake))                   (Lim & Ye 2017)
    wgan:    D(fake) - D(real)                                       (Arjovsky et al. 2017)
    wgan_gp: D(fake) - D(real) + drift * D(real)^2                   (Gulrajani 2017; Karras 2018)
    rpgan:   softplus(D(fake_i) - D(real_i)), real and fake paired by position
             (Jolicoeur-Martineau 2019; Huang et al. 2024)
    """
    r, f = _full(real_logits), _full(fake_logits)
    if kind in ("nonsaturating", "minimax"):
        loss = F.softplus(f) + F.softplus(-r)
    elif kind == "lsgan":
        loss = ((r - 1.0).square() + f.square()) / 2
    elif kind == "hinge":
        loss = F.relu(1.0 - r) + F.relu(1.0 + f)
    elif kind == "wgan":
        loss = f - r
    elif kind == "wgan_gp":
        loss = f - r + drift * r.square()
    elif kind == "rpgan":
        loss = F.softplus(f - r)
    else:
        raise ValueError(f"unknown loss kind {kind!r}: expected one of {LOSS_KINDS}")
    return loss.mean()


def g_loss(kind: str, fake_logits: torch.Tensor,
           real_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Generator loss on (N,) logits, the batch mean of:

    nonsaturating: softplus(-D(fake))            (= -log sigmoid D(G(z)))
    minimax:       -softplus(D(fake))            (= log(1 - sigmoid D(G(z))), the saturating one)
    lsgan:         (D(fake) - 1)^2 / 2
    hinge, wgan, wgan_gp: -D(fake)
    rpgan:         softplus(D(real_i) - D(fake_i)) (needs ``real_logits``)
    """
    f = _full(fake_logits)
    if kind == "nonsaturating":
        return F.softplus(-f).mean()
    if kind == "minimax":
        return (-F.softplus(f)).mean()
    if kind == "lsgan":
        return ((f - 1.0).square() / 2).mean()
    if kind in ("hinge", "wgan", "wgan_gp"):
        return (-f).mean()
    if kind == "rpgan":
        if real_logits is None:
            raise ValueError("loss.kind=rpgan: G's loss pairs each fake with a real image's "
                             "logit; real_logits is required")
        return F.softplus(_full(real_logits) - f).mean()
    raise ValueError(f"unknown loss kind {kind!r}: expected one of {LOSS_KINDS}")


def needs_real_logits(kind: str) -> bool:
    """Whether G's loss of ``kind`` reads D's logits of real images (relativistic losses)."""
    return kind == "rpgan"


def r1_penalty(real_logits: torch.Tensor | Sequence[torch.Tensor],
               real_images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): ||dD(x)/dx||^2 per real sample, shape (N,); given fakes
    instead, it is R2 (the same penalty on generated samples).

    ``real_images`` must require grad and ``real_logits`` be computed from it. The graph is kept
    (create_graph=True) so the penalty can be minimised w.r.t. D's weights. A multi-scale D
    (StackGAN) passes its logits and its input images as lists: the gradient of the summed logits
    w.r.t. every image, the squared norms summed.
    """
    logits = [real_logits] if torch.is_tensor(real_logits) else list(real_logits)
    images = [real_images] if torch.is_tensor(real_images) else list(real_images)
    total = sum(_full(x).sum() for x in logits)
    grads = torch.autograd.grad(total, images, create_graph=True)
    return sum(_full(g).square().flatten(1).sum(1) for g in grads)


def gradient_penalty(discriminator: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """WGAN-GP penalty (||dD(x_hat)/dx_hat|| - 1)^2 on interpolates, shape (N,).

    ``discriminator`` maps samples (N, ...) to logits (N,); ``mix`` (N,) in [0, 1] are the
    mixing weights x_hat = mix * real + (1 - mix) * fake, drawn by the caller (seeded).
    """
    eps = mix.reshape(-1, *[1] * (real.ndim - 1)).to(real.dtype)  # images or 2-D points
    mixed = (eps * real.detach() + (1.0 - eps) * fake.detach()).requires_grad_(True)
    logits = discriminator(mixed)
    (grad,) = torch.autograd.grad(_full(logits).sum(), mixed, create_graph=True)
    return (_full(grad).flatten(1).norm(dim=1) - 1.0).square()


# ------------------------------------------------------------------------------ StackGAN-v2 terms


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits.float(),
                                                                              target))


def stack_d_loss(real: list[torch.Tensor], fake: list[torch.Tensor],
                 real_cond: list[torch.Tensor] | None = None,
                 fake_cond: list[torch.Tensor] | None = None,
                 wrong: list[torch.Tensor] | None = None,
                 wrong_cond: list[torch.Tensor] | None = None,
                 uncond_weight: float = 1.0) -> torch.Tensor:
    """Sum over stages of each stage discriminator's loss (StackGAN-v2), logits ``(N,)``.

    Unconditional: ``BCE(real, 1) + BCE(fake, 0)``. Conditional: ``BCE(real_cond, 1) +
    BCE(fake_cond, 0) + BCE(wrong_cond, 0)`` (a real image with another sample's condition) plus
    ``uncond_weight`` times the unconditional terms, where the wrong pair's image counts as real:
    ``BCE(real, 1) + BCE(fake, 0) + BCE(wrong, 1)``. BCE is the mean over the batch.
    """
    total = real[0].new_zeros((), dtype=torch.float32)
    for i in range(len(real)):
        uncond = _bce(real[i], 1.0) + _bce(fake[i], 0.0)
        if real_cond is None:
            total = total + uncond
            continue
        if wrong is not None:
            uncond = uncond + _bce(wrong[i], 1.0)
        cond = _bce(real_cond[i], 1.0) + _bce(fake_cond[i], 0.0)
        if wrong_cond is not None:
            cond = cond + _bce(wrong_cond[i], 0.0)
        total = total + cond + uncond_weight * uncond
    return total


def stack_g_loss(fake: list[torch.Tensor], fake_cond: list[torch.Tensor] | None = None,
                 uncond_weight: float = 1.0) -> torch.Tensor:
    """Sum over stages of G's non-saturating loss: ``BCE(fake, 1)``; conditional:
    ``BCE(fake_cond, 1) + uncond_weight * BCE(fake, 1)``."""
    total = fake[0].new_zeros((), dtype=torch.float32)
    for i in range(len(fake)):
        if fake_cond is None:
            total = total + _bce(fake[i], 1.0)
        else:
            total = total + _bce(fake_cond[i], 1.0) + uncond_weight * _bce(fake[i], 1.0)
    return total


def pixel_mean_cov(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the mean ``(N, C)`` and covariance ``(N, C, C)`` of its pixels (biased)."""
    x = images.float().flatten(2)  # (N, C, P)
    mean = x.mean(dim=2)
    dev = x - mean[:, :, None]
    return mean, dev @ dev.transpose(1, 2) / x.shape[2]


def color_consistency(lower: torch.Tensor, higher: torch.Tensor, mean_weight: float = 1.0,
                      cov_weight: float = 5.0) -> torch.Tensor:
    """StackGAN-v2's colour-consistency regulariser between adjacent stages' images of the same
    latents: batch mean of ``mean_weight * ||mu_hi - mu_lo||^2 + cov_weight * ||S_hi - S_lo||_F^2``
    with each image's pixel mean ``mu`` and covariance ``S`` (the paper's lambda_1 = 1,
    lambda_2 = 5)."""
    mu_lo, cov_lo = pixel_mean_cov(lower)
    mu_hi, cov_hi = pixel_mean_cov(higher)
    return (mean_weight * (mu_hi - mu_lo).square().sum(1)
            + cov_weight * (cov_hi - cov_lo).square().sum((1, 2))).mean()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Batch mean of KL(N(mu, exp(logvar)) || N(0, I)): the conditioning-augmentation term."""
    return (-0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=1)).mean()
