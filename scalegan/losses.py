"""Adversarial losses and regularisers.

All functions take discriminator logits of shape (N,) and return a scalar mean over the batch, so
that gradient accumulation over micro-batches divides by the number of micro-batches only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LOSS_KINDS = ("nonsaturating", "wgan_gp", "hinge")


def d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor,
           drift: float = 0.0) -> torch.Tensor:
    """Discriminator loss on (N,) logits.

    nonsaturating: softplus(D(fake)) + softplus(-D(real))   (Goodfellow et al. 2014)
    hinge:         relu(1 - D(real)) + relu(1 + D(fake))    (Lim & Ye 2017)
    wgan_gp:       D(fake) - D(real) + drift * D(real)^2    (Gulrajani 2017; drift from Karras 2018)
    """
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "nonsaturating":
        loss = F.softplus(fake_logits) + F.softplus(-real_logits)
    elif kind == "hinge":
        loss = F.relu(1.0 - real_logits) + F.relu(1.0 + fake_logits)
    elif kind == "wgan_gp":
        loss = fake_logits - real_logits + drift * real_logits.square()
    else:
        raise ValueError(f"unknown loss kind {kind!r}: expected one of {LOSS_KINDS}")
    return loss.mean()


def g_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss on (N,) logits: softplus(-D(fake)) (non-saturating) or -D(fake)."""
    fake_logits = fake_logits.float()
    if kind == "nonsaturating":
        return F.softplus(-fake_logits).mean()
    if kind in ("hinge", "wgan_gp"):
        return (-fake_logits).mean()
    raise ValueError(f"unknown loss kind {kind!r}: expected one of {LOSS_KINDS}")


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): ||dD(x)/dx||^2 per real sample, shape (N,).

    ``real_images`` must require grad and ``real_logits`` be computed from it. The graph is kept
    (create_graph=True) so the penalty can be minimised w.r.t. D's weights.
    """
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_images, create_graph=True)
    return grad.float().square().flatten(1).sum(1)


def gradient_penalty(discriminator: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """WGAN-GP penalty (||dD(x_hat)/dx_hat|| - 1)^2 on interpolates, shape (N,).

    ``discriminator`` maps images (N, C, H, W) to logits (N,); ``mix`` (N,) in [0, 1] are the
    mixing weights x_hat = mix * real + (1 - mix) * fake, drawn by the caller (seeded).
    """
    eps = mix.reshape(-1, 1, 1, 1).to(real.dtype)
    mixed = (eps * real.detach() + (1.0 - eps) * fake.detach()).requires_grad_(True)
    logits = discriminator(mixed)
    (grad,) = torch.autograd.grad(logits.float().sum(), mixed, create_graph=True)
    return (grad.float().flatten(1).norm(dim=1) - 1.0).square()
