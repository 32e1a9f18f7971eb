"""Adversarial autoencoder: network shapes and the priors' moments, clusters and determinism."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scalegan.models.aae import (
    CodeDiscriminator,
    Decoder,
    Encoder,
    mixture_layout,
    mixture_means,
    prior_moments,
    sample_mixture,
    sample_prior,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("channels", "res"), [(1, 8), (3, 16)])
def test_shapes(channels, res):
    torch.manual_seed(0)
    E = Encoder(channels, res, code_dim=4, hidden=32)
    Dec = Decoder(4, channels, res, hidden=32, layers=3)
    Dz = CodeDiscriminator(4, hidden=16, layers=1)
    x = torch.rand(5, channels, res, res) * 2 - 1
    z = E(x)
    assert z.shape == (5, 4)
    x_hat = Dec(z)
    assert x_hat.shape == x.shape and x_hat.abs().max() <= 1.0
    assert Dz(z).shape == (5,)
    assert sum(isinstance(m, nn.Linear) for m in Dec.modules()) == 4  # 3 hidden + output


def test_paper_defaults():
    E = Encoder(1, 28, code_dim=8)
    widths = [m.out_features for m in E.modules() if isinstance(m, nn.Linear)]
    assert widths == [1000, 1000, 8]
    assert sum(isinstance(m, nn.ReLU) for m in CodeDiscriminator(8).modules()) == 2


def test_wrong_input_shapes_raise():
    E, Dec, Dz = Encoder(1, 8, 4, hidden=8), Decoder(4, 1, 8, hidden=8), CodeDiscriminator(4, 8)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        E(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        Dec(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        Dz(torch.zeros(2, 4, 1))


@pytest.mark.parametrize("components", [3, 4, 10, 17])
def test_prior_moments_are_identity_as_designed(components):
    for kind, dim in (("gaussian", 1), ("gaussian", 6), ("mixture", 2), ("mixture", 6)):
        mean, cov = prior_moments(kind, dim, components=components)
        assert mean.shape == (dim,) and cov.shape == (dim, dim)
        torch.testing.assert_close(mean, torch.zeros(dim, dtype=torch.float64),
                                   rtol=0, atol=1e-12)
        torch.testing.assert_close(cov, torch.eye(dim, dtype=torch.float64), rtol=0, atol=1e-12)
    radius, std = mixture_layout(components)
    assert radius ** 2 / 2 + std ** 2 == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("kind", "dim"), [("gaussian", 4), ("mixture", 2), ("mixture", 4)])
def test_empirical_moments_match(kind, dim):
    z = sample_prior(kind, 200_000, dim, _gen(0))
    assert z.shape == (200_000, dim) and z.dtype == torch.get_default_dtype()
    z = z.double()
    mean, cov = prior_moments(kind, dim)
    emp_mean = z.mean(dim=0)
    emp_cov = torch.cov(z.T)
    torch.testing.assert_close(emp_mean, mean, rtol=0, atol=0.02)
    torch.testing.assert_close(emp_cov, cov, rtol=0, atol=0.02)


@pytest.mark.parametrize("components", [3, 10])
def test_mixture_samples_cluster_around_their_means(components):
    dim, n = 3, 50_000
    z, labels = sample_mixture(n, dim, _gen(1), components=components)
    assert z.shape == (n, dim) and labels.shape == (n,) and labels.dtype == torch.int64
    means = mixture_means(dim, components)
    radius, std = mixture_layout(components)
    assert torch.linalg.norm(means[:, :2], dim=1).sub(radius).abs().max() < 1e-12
    # equally spaced on the circle: neighbouring means 2 r sin(pi / K) apart
    gaps = torch.linalg.norm(means[:, :2] - means.roll(1, dims=0)[:, :2], dim=1)
    torch.testing.assert_close(gaps, torch.full_like(gaps, 2 * radius
                                                     * math.sin(math.pi / components)))
    nearest = torch.cdist(z.double(), means).argmin(dim=1)
    assert torch.equal(nearest, labels)
    counts = torch.bincount(labels, minlength=components).double()
    assert (counts / n - 1 / components).abs().max() < 0.01  # equal weights
    within = (z[:, :2].double() - means[labels, :2]).std(dim=0)
    torch.testing.assert_close(within, torch.full_like(within, std), rtol=0.02, atol=0)
    # same samples through sample_prior
    assert torch.equal(sample_prior("mixture", n, dim, _gen(1), components=components), z)


@pytest.mark.parametrize("kind", ["gaussian", "mixture"])
def test_prior_is_deterministic_under_a_seeded_generator(kind):
    a = sample_prior(kind, 100, 5, _gen(7))
    b = sample_prior(kind, 100, 5, _gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, sample_prior(kind, 100, 5, _gen(8)))
    g = _gen(7)
    first, second = sample_prior(kind, 100, 5, g), sample_prior(kind, 100, 5, g)
    assert torch.equal(first, a) and not torch.equal(second, a)  # the generator advances


def test_bad_prior_arguments_raise():
    with pytest.raises(ValueError, match="'uniform'"):
        sample_prior("uniform", 4, 2, _gen(0))
    with pytest.raises(ValueError, match="'uniform'"):
        prior_moments("uniform", 2)
    with pytest.raises(ValueError, match="'mixture'.*dim"):
        sample_prior("mixture", 4, 1, _gen(0))
    with pytest.raises(ValueError, match="'mixture'.*dim"):
        prior_moments("mixture", 1)
    with pytest.raises(ValueError, match="components"):
        sample_prior("mixture", 4, 2, _gen(0), components=2)
    assert sample_prior("gaussian", 4, 1, _gen(0)).shape == (4, 1)
