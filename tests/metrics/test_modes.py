"""mode_stats against a per-sample loop of its definition and the mixtures' known statistics."""

from __future__ import annotations

import math

import pytest
import torch

from scalegan.data.points import MIXTURES, mixture, sample_mixture
from scalegan.metrics.modes import mode_stats

# Share of a 2-D isotropic Gaussian within 3 std of its mean: the squared radius in std units is
# chi-square with 2 degrees of freedom, P(r < 3) = 1 - exp(-9 / 2).
WITHIN_3_STD_2D = 1 - math.exp(-4.5)  # 0.98889


def _reference(samples: torch.Tensor, centers: torch.Tensor, std: float, nsigma: float,
               min_count: int) -> dict:
    """The VEEGAN / PacGAN rule, one sample at a time in Python floats."""
    counts = [0] * len(centers)
    for x, y in samples.tolist():
        dists = [math.hypot(x - cx, y - cy) for cx, cy in centers.tolist()]
        k = min(range(len(dists)), key=dists.__getitem__)
        if dists[k] < nsigma * std:
            counts[k] += 1
    total = sum(counts)
    kl = sum(c / total * math.log(len(counts) * c / total) for c in counts if c)
    return {"modes": sum(c >= min_count for c in counts), "high_quality": total / len(samples),
            "kl": kl, "counts": counts}


def _binomial_tol(p: float, n: int, sigmas: float = 5.0) -> float:
    return sigmas * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("name", sorted(MIXTURES))
@pytest.mark.parametrize("min_count", [1, 20])
def test_matches_per_sample_reference(name, min_count):
    centers, std = mixture(name)
    gen = torch.Generator().manual_seed(1)
    # Mixture samples plus wide noise, so that both sides of the 3-std boundary are populated.
    samples = torch.cat([sample_mixture(name, 1500, gen),
                         centers[torch.randint(len(centers), (1000,), generator=gen)]
                         + 4 * std * torch.randn(1000, 2, generator=gen)])
    got = mode_stats(samples, centers, std, min_count=min_count)
    want = _reference(samples, centers, std, 3.0, min_count)
    assert got["counts"] == want["counts"]
    assert got["modes"] == want["modes"]
    assert got["high_quality"] == pytest.approx(want["high_quality"], abs=1e-12)
    assert got["kl"] == pytest.approx(want["kl"], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", sorted(MIXTURES))
def test_samples_of_the_mixture_cover_every_mode(name):
    centers, std = mixture(name)
    n = 20000
    stats = mode_stats(sample_mixture(name, n, torch.Generator().manual_seed(0)), centers, std)
    assert stats["modes"] == len(centers)
    # Binomial spread of the share at n = 20000 is 0.0007; 5 sigma.
    assert abs(stats["high_quality"] - WITHIN_3_STD_2D) < _binomial_tol(WITHIN_3_STD_2D, n)
    # Equal weights: the histogram is near uniform (KL ~ (K - 1) / (2 n) for multinomial noise).
    assert stats["kl"] < 10 * (len(centers) - 1) / (2 * n)


@pytest.mark.parametrize("nsigma", [1.0, 2.0])
def test_nsigma_follows_the_2d_formula(nsigma):
    centers, std = mixture("grid25")
    n = 20000
    samples = sample_mixture("grid25", n, torch.Generator().manual_seed(2))
    share = 1 - math.exp(-nsigma ** 2 / 2)
    got = mode_stats(samples, centers, std, nsigma=nsigma)["high_quality"]
    assert abs(got - share) < _binomial_tol(share, n)


def test_three_modes_only():
    centers, std = mixture("grid25")
    gen = torch.Generator().manual_seed(3)
    picked = torch.tensor([0, 12, 24])
    samples = centers[picked[torch.randint(3, (2500,), generator=gen)]]
    samples = samples + std * torch.randn(2500, 2, generator=gen)
    stats = mode_stats(samples, centers, std)
    assert stats["modes"] == 3
    assert [k for k, c in enumerate(stats["counts"]) if c] == picked.tolist()
    # All mass on 3 of 25 modes, about equally: KL close to log(25 / 3).
    assert stats["kl"] == pytest.approx(math.log(25 / 3), abs=0.01)


def test_min_count_ignores_stray_samples():
    centers, std = mixture("ring8")
    samples = torch.cat([centers[0].expand(100, 2), centers[1].expand(100, 2),
                         centers[2].expand(1, 2)])  # one stray sample on mode 2
    assert mode_stats(samples, centers, std)["modes"] == 3  # the papers' rule: one is enough
    assert mode_stats(samples, centers, std, min_count=2)["modes"] == 2
    assert mode_stats(samples, centers, std, min_count=101)["modes"] == 0


def test_uniform_noise_is_low_quality():
    centers, std = mixture("grid25")
    n = 50000
    samples = torch.rand(n, 2, generator=torch.Generator().manual_seed(4)) * 10 - 5
    # 25 discs of radius 3 std inside the 10 x 10 square (none crosses its edge).
    share = 25 * math.pi * (3 * std) ** 2 / 100  # 0.0177
    stats = mode_stats(samples, centers, std)
    assert abs(stats["high_quality"] - share) < _binomial_tol(share, n)
    assert stats["modes"] == 25  # 35 samples per mode on average: every mode is hit


def test_boundary_and_kl_extremes():
    centers, std = mixture("grid25")
    offset = torch.tensor([[1.0, 0.0]]) * std
    inside = centers + 2.99 * offset
    outside = centers + 3.01 * offset
    stats = mode_stats(torch.cat([inside, outside]), centers, std)
    assert stats["high_quality"] == 0.5 and stats["counts"] == [1] * 25
    assert stats["kl"] == 0.0  # exactly uniform
    one_mode = mode_stats(centers[:1].expand(10, 2), centers, std)
    assert one_mode["kl"] == pytest.approx(math.log(25), rel=1e-12)
    none = mode_stats(outside, centers, std)
    assert none["modes"] == 0 and none["high_quality"] == 0.0 and math.isnan(none["kl"])


def test_bad_inputs_raise():
    centers, std = mixture("ring8")
    with pytest.raises(ValueError, match="samples"):
        mode_stats(torch.zeros(5, 3), centers, std)
    with pytest.raises(ValueError, match="min_count"):
        mode_stats(torch.zeros(5, 2), centers, std, min_count=0)
