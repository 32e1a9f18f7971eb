"""2-D mixtures: geometry against the papers' formulas, sample statistics, rank-sliced stream."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scalegan.data.points import MIXTURES, PointStream, mixture, sample_mixture


def test_ring8_geometry():
    centers, std = mixture("ring8")
    want = [(2 * math.cos(2 * math.pi * k / 8), 2 * math.sin(2 * math.pi * k / 8))
            for k in range(8)]
    assert centers.dtype == torch.float32 and centers.shape == (8, 2)
    torch.testing.assert_close(centers, torch.tensor(want), atol=1e-6, rtol=0)
    assert std == 0.02


def test_grid25_geometry():
    centers, std = mixture("grid25")
    want = {(x, y) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)}
    assert centers.shape == (25, 2)
    assert {tuple(c) for c in centers.tolist()} == want  # exact: small integers
    assert std == 0.05


def test_mixture_returns_a_fresh_tensor():
    centers, _ = mixture("grid25")
    centers.zero_()
    assert mixture("grid25")[0].abs().sum() > 0


def test_unknown_mixture_raises():
    with pytest.raises(ValueError, match="ring8 \\| grid25"):
        mixture("ring9")


@pytest.mark.parametrize("name", sorted(MIXTURES))
def test_samples_have_equal_weights_and_the_stated_std(name):
    centers, std = mixture(name)
    n = 50000
    x = sample_mixture(name, n, torch.Generator().manual_seed(0))
    assert x.shape == (n, 2) and x.dtype == torch.float32
    mode = torch.cdist(x.double(), centers.double()).argmin(1)  # modes are >= 38 std apart
    k = len(centers)
    share = torch.bincount(mode, minlength=k).double() / n
    # Multinomial share of 1/K at n draws: 5 binomial sigmas.
    assert (share - 1 / k).abs().max() < 5 * math.sqrt((1 / k) * (1 - 1 / k) / n)
    for j in range(k):
        pts = x[mode == j].double()
        # Mean of m normals: standard error std / sqrt(m); 5 of them.
        torch.testing.assert_close(pts.mean(0), centers[j].double(),
                                   atol=5 * std / math.sqrt(len(pts)), rtol=0)
        # Sample std of ~2000-6000 normals: relative spread 1 / sqrt(2 m) <= 1.6%; 6% allowed.
        torch.testing.assert_close(pts.std(0), torch.full((2,), std, dtype=torch.float64),
                                   atol=0, rtol=0.06)


def test_sampling_is_deterministic_given_the_generator():
    a = sample_mixture("ring8", 100, torch.Generator().manual_seed(7))
    b = sample_mixture("ring8", 100, torch.Generator().manual_seed(7))
    c = sample_mixture("ring8", 100, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _take(stream: PointStream, n: int) -> list[tuple[torch.Tensor, list[str]]]:
    return [stream.next_batch()[:2] for _ in range(n)]


def test_two_ranks_together_see_the_single_process_batch():
    single = _take(PointStream("grid25", 8, seed=3), 4)
    ranks = [_take(PointStream("grid25", 4, seed=3, rank=r, world=2), 4) for r in range(2)]
    for b in range(4):
        points = torch.cat([ranks[0][b][0], ranks[1][b][0]])
        keys = ranks[0][b][1] + ranks[1][b][1]
        assert torch.equal(points, single[b][0])
        assert keys == single[b][1]
    assert not torch.equal(ranks[0][0][0], ranks[1][0][0])


def test_batches_shapes_keys_and_variety():
    stream = PointStream("ring8", 16, seed=0)
    (x0, k0), (x1, k1) = _take(stream, 2)
    assert x0.shape == (16, 2) and x0.dtype == torch.float32
    assert k0 == [f"ring8-0-{i}" for i in range(16)] and k1[0] == "ring8-1-0"
    assert not torch.equal(x0, x1)
    other_seed = PointStream("ring8", 16, seed=1).next_batch()[0]
    assert not torch.equal(x0, other_seed)


def test_state_dict_resume_gives_the_same_next_batch():
    stream = PointStream("grid25", 8, seed=5)
    _take(stream, 3)
    state = json.loads(json.dumps(stream.state_dict()))  # must survive JSON
    expected = _take(stream, 2)
    resumed = PointStream("grid25", 8, seed=5)
    resumed.load_state_dict(state)
    for (x, keys), (y, keys2) in zip(_take(resumed, 2), expected, strict=True):
        assert torch.equal(x, y) and keys == keys2


def test_resume_on_another_world_size_keeps_the_global_position():
    stream = PointStream("grid25", 8, seed=5)
    _take(stream, 3)
    state = stream.state_dict()
    want = stream.next_batch()[0]
    halves = []
    for r in range(2):
        rank_stream = PointStream("grid25", 4, seed=5, rank=r, world=2)
        rank_stream.load_state_dict(state)
        halves.append(rank_stream.next_batch()[0])
    assert torch.equal(torch.cat(halves), want)


def test_resume_on_another_mixture_raises():
    state = PointStream("ring8", 4).state_dict()
    with pytest.raises(ValueError, match="ring8"):
        PointStream("grid25", 4).load_state_dict(state)


def test_image_stream_interface():
    stream = PointStream("ring8", 4, seed=0)
    before = stream.state_dict()
    stream.set_resolution(64)  # no-op
    assert stream.state_dict() == before and stream.skipped == 0
    stream.close()
    assert stream.next_batch()[0].shape == (4, 2)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"rank": 2, "world": 2},
                                    {"rank": 0, "world": 0}])
def test_bad_arguments_raise(kwargs):
    args = {"name": "ring8", "batch_size": 4} | kwargs
    with pytest.raises(ValueError):
        PointStream(**args)
