"""minibatch_stddev: the cpu and Triton paths against the plain reference; across two ranks
against one process over the concatenated batch."""

from __future__ import annotations

import pytest
import torch

from scalegan.ops import minibatch_stddev
from scalegan.parallel.env import DistEnv

from parallel.spawn import run_ranks

# (dtype, atol, rtol): the statistic is computed in fp32 for both dtypes; bf16 covers the input's
# and the output map's rounding
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 1e-2)}

# (N, C, H, W, group_size, num_channels): minimal, non-aligned (odd, prime), larger
SHAPES = [(1, 1, 1, 1, 4, 1), (6, 5, 3, 7, 3, 1), (12, 9, 5, 5, 4, 3), (13, 7, 3, 3, 13, 7),
          (16, 32, 8, 8, 4, 2)]


def _run(impl, x, group_size, num_channels, weight):
    x = x.detach().requires_grad_(True)
    y = minibatch_stddev(x, group_size, num_channels, impl=impl)
    (grad,) = torch.autograd.grad((y.float() * weight).sum(), x)
    return y.float(), grad.float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", ["cpu", "triton"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, impl, dtype):
    n, c, h, w, group, channels = shape
    gen = torch.Generator().manual_seed(n * c)
    x = torch.randn(n, c, h, w, generator=gen).to(dtype)
    weight = torch.randn(n, c + channels, h, w, generator=gen)
    atol, rtol = TOLERANCE[dtype]
    want = _run("ref", x.float(), group, channels, weight)
    got = _run(impl, x, group, channels, weight)
    for name, g, r in zip(("output", "grad x"), got, want, strict=True):
        torch.testing.assert_close(g, r, atol=atol, rtol=rtol,
                                   msg=lambda m, name=name: f"{impl} {name}: {m}")


@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_gradcheck_float64(impl):
    x = torch.randn(8, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: minibatch_stddev(x, 4, 2, impl=impl), (x,))


@pytest.mark.parametrize("impl", ["cpu", "triton"])
def test_double_backward_matches_reference(impl):
    # R1 differentiates the input gradient of D, which runs through this op
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 6, 4, 4, dtype=torch.float64, generator=gen)
    weight = torch.randn(8, 8, 4, 4, dtype=torch.float64, generator=gen)
    results = []
    for which in ("ref", impl):
        xi = x.clone().requires_grad_(True)
        (g1,) = torch.autograd.grad((minibatch_stddev(xi, 4, 2, impl=which) * weight).sum(), xi,
                                    create_graph=True)
        (g2,) = torch.autograd.grad(g1.square().sum(), xi)
        results.append((g1.detach(), g2))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_groups_are_consecutive_samples():
    x = torch.randn(8, 3, 2, 2)
    y = torch.cat([x[:4], x[4:] * 10])
    a, b = minibatch_stddev(x, 4, 1, impl="cpu"), minibatch_stddev(y, 4, 1, impl="cpu")
    torch.testing.assert_close(a[:4], b[:4])  # the first group does not see the second
    torch.testing.assert_close(b[4:, 3], a[4:, 3] * 10, rtol=1e-4, atol=0)


def _across_ranks(env: DistEnv, x: torch.Tensor, weight: torch.Tensor, impl: str) -> dict:
    n = x.shape[0] // env.world_size
    mine = slice(env.rank * n, (env.rank + 1) * n)
    xi = x[mine].clone().requires_grad_(True)
    y = minibatch_stddev(xi, 4, 2, impl=impl, across_ranks=True)
    (y * weight[mine]).sum().backward()
    return {"y": y.detach(), "grad": xi.grad}


@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_across_two_ranks_equals_one_process_on_the_whole_batch(impl, tmp_path):
    # 2 samples per rank, groups of 4: every group spans both ranks
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 3, 3, dtype=torch.float64, generator=gen)
    weight = torch.randn(4, 8, 3, 3, dtype=torch.float64, generator=gen)
    whole = x.clone().requires_grad_(True)
    y = minibatch_stddev(whole, 4, 2, impl=impl)
    (y * weight).sum().backward()
    ranks = run_ranks(2, _across_ranks, x, weight, impl, tmp_path=tmp_path)
    for r, got in enumerate(ranks):
        torch.testing.assert_close(got["y"], y.detach()[2 * r:2 * r + 2], rtol=1e-12, atol=0)
        torch.testing.assert_close(got["grad"], whole.grad[2 * r:2 * r + 2], rtol=1e-10,
                                   atol=1e-14)
    # without gathering, each rank's pair would be its own group: a different statistic
    alone = minibatch_stddev(x[:2], 4, 2, impl=impl)
    assert not torch.allclose(alone, y.detach()[:2])
