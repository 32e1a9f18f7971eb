"""StackGAN-v2 generator and discriminators; the StackGAN loss terms against hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from scalegan import losses
from scalegan.models.stackgan import StackDiscriminator, StackGenerator


def small(condition="none", num_stages=3, **kw):
    extra = dict(num_classes=5) if condition == "label" else (
        dict(embedding_dim=7) if condition == "embedding" else {})
    G = StackGenerator(num_stages=num_stages, latent_dim=16, gf_dim=4, condition=condition,
                       cond_dim=6, min_channels=2, **extra, **kw)
    D = StackDiscriminator(num_stages=num_stages, df_dim=4, condition=condition, cond_dim=6,
                           **extra)
    return G, D


def cond_for(condition, n):
    if condition == "label":
        return torch.randint(0, 5, (n,))
    if condition == "embedding":
        return torch.randn(n, 7)
    return None


@pytest.mark.parametrize("condition", ["none", "label", "embedding"])
def test_each_stage_emits_its_resolution(condition):
    G, D = small(condition)
    cond = cond_for(condition, 2)
    images, mu, logvar = G(torch.randn(2, 16), cond)
    assert [tuple(im.shape) for im in images] == [(2, 3, 64, 64), (2, 3, 128, 128),
                                                  (2, 3, 256, 256)]
    assert all(im.abs().max() <= 1 for im in images)  # tanh
    assert (mu is None) == (condition != "embedding")
    uncond, cond_logits = D(images, cond)
    assert [tuple(u.shape) for u in uncond] == [(2,)] * 3
    assert (cond_logits is None) == (condition == "none")
    if cond_logits is not None:
        assert [tuple(k.shape) for k in cond_logits] == [(2,)] * 3


def test_five_stages_reach_1024_forward_and_backward():
    G, D = small(num_stages=5)
    images, _, _ = G(torch.randn(1, 16))
    assert images[-1].shape == (1, 3, 1024, 1024)
    uncond, _ = D(images)
    losses.stack_g_loss(uncond).backward()
    missing = [n for n, p in G.named_parameters() if p.grad is None]
    assert not missing and all(torch.isfinite(p.grad).all() for p in G.parameters())


def test_colour_consistency_is_zero_when_stages_agree():
    # a 2x nearest upsample has exactly the same pixel mean and covariance
    lo = torch.rand(3, 3, 8, 8) * 2 - 1
    hi = torch.nn.functional.interpolate(lo, scale_factor=2)
    assert losses.color_consistency(lo, hi).item() == pytest.approx(0.0, abs=1e-12)
    assert losses.color_consistency(lo, hi + 0.1).item() > 0


def test_colour_consistency_against_hand_computation():
    lo = torch.tensor([[[[0.0, 1.0]], [[1.0, 1.0]], [[2.0, 0.0]]]])  # (1, 3, 1, 2)
    hi = torch.tensor([[[[1.0, 1.0]], [[1.0, 3.0]], [[0.0, 0.0]]]])
    # per channel means: lo (0.5, 1, 1), hi (1, 2, 0); |d mu|^2 = 0.25 + 1 + 1 = 2.25
    # deviations lo: (-.5,.5), (0,0), (1,-1); hi: (0,0), (-1,1), (0,0); cov = dev dev^T / 2
    cov_lo = torch.tensor([[0.25, 0.0, -0.5], [0.0, 0.0, 0.0], [-0.5, 0.0, 1.0]])
    cov_hi = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    want = 1.0 * 2.25 + 5.0 * (cov_hi - cov_lo).square().sum().item()
    assert losses.color_consistency(lo, hi).item() == pytest.approx(want, rel=1e-6)


def _bce(x, y):  # -y log s(x) - (1 - y) log (1 - s(x)), by hand
    s = 1 / (1 + math.exp(-x))
    return -(y * math.log(s) + (1 - y) * math.log(1 - s))


def test_unconditional_losses_against_hand_computation():
    real = [torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.0])]
    fake = [torch.tensor([-0.3, 0.7]), torch.tensor([1.0, -2.0])]
    want_d = sum((_bce(r, 1) + _bce(r2, 1)) / 2 + (_bce(f, 0) + _bce(f2, 0)) / 2
                 for (r, r2), (f, f2) in zip([t.tolist() for t in real],
                                             [t.tolist() for t in fake], strict=True))
    assert losses.stack_d_loss(real, fake).item() == pytest.approx(want_d, rel=1e-6)
    want_g = sum((_bce(f, 1) + _bce(f2, 1)) / 2 for f, f2 in [t.tolist() for t in fake])
    assert losses.stack_g_loss(fake).item() == pytest.approx(want_g, rel=1e-6)


def test_conditional_losses_against_hand_computation():
    real, fake, wrong = [torch.tensor([0.5])], [torch.tensor([-0.3])], [torch.tensor([0.2])]
    real_c, fake_c, wrong_c = [torch.tensor([1.5])], [torch.tensor([0.4])], [torch.tensor([-0.6])]
    w = 0.5
    want_d = (_bce(1.5, 1) + _bce(0.4, 0) + _bce(-0.6, 0)
              + w * (_bce(0.5, 1) + _bce(-0.3, 0) + _bce(0.2, 1)))
    got_d = losses.stack_d_loss(real, fake, real_c, fake_c, wrong, wrong_c, uncond_weight=w)
    assert got_d.item() == pytest.approx(want_d, rel=1e-6)
    want_g = _bce(0.4, 1) + w * _bce(-0.3, 1)
    assert losses.stack_g_loss(fake, fake_c, uncond_weight=w).item() == pytest.approx(want_g,
                                                                                      rel=1e-6)


def test_kl_divergence_against_the_closed_form():
    mu, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.2, -0.4]])
    want = sum(0.5 * (math.exp(lv) + m * m - 1 - lv) for m, lv in [(0.5, 0.2), (-1.0, -0.4)])
    assert losses.kl_divergence(mu, logvar).item() == pytest.approx(want, rel=1e-6)
    assert losses.kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0


def test_state_dict_is_the_same_whichever_ops_impl():
    a, _ = small(ops_impl="ref")
    b, _ = small(ops_impl="cpu")
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()}
    b.load_state_dict(a.state_dict())
    a, b = a.double(), b.double()  # float64: the two differ only in summation order
    z = torch.randn(2, 16, dtype=torch.float64)
    for x, y in zip(a(z)[0], b(z)[0], strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-10)
