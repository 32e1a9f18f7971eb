"""MLP pair for 2-D data: shapes, a hand-written reference forward, minibatch discrimination."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scalegan.models import count_parameters
from scalegan.models.mlp import MLPDiscriminator, MLPGenerator
from scalegan.ops.minibatch_discrimination import minibatch_discrimination_ref

# fp32 matmuls of width <= 64 against the same ops in another order: a few ulps of O(1) values.
ATOL, RTOL = 1e-5, 1e-5


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _reference_g(G: MLPGenerator, z: torch.Tensor) -> torch.Tensor:
    """ReLU after every linear layer but the last."""
    layers = _linears(G)
    x = z
    for lin in layers[:-1]:
        x = torch.relu(F.linear(x, lin.weight, lin.bias))
    return F.linear(x, layers[-1].weight, layers[-1].bias)


def _reference_d(D: MLPDiscriminator, x: torch.Tensor) -> torch.Tensor:
    """LeakyReLU(0.2) hidden layers, then the mean (not sum) of exp(-L1) similarities to the other
    samples from the definition of minibatch discrimination, then the output layer."""
    layers = _linears(D)
    h = x
    for lin in layers[:-1]:
        h = F.leaky_relu(F.linear(h, lin.weight, lin.bias), 0.2)
    if D.mbdisc is not None:
        T = D.mbdisc.T / D.mbdisc.in_features ** 0.5
        o = minibatch_discrimination_ref(h, T) / max(1, x.shape[0] - 1)
        h = torch.cat([h, o], dim=1)
    return F.linear(h, layers[-1].weight, layers[-1].bias).squeeze(1)


@pytest.mark.parametrize("latent_dim,out_dim,hidden,layers", [(2, 2, 16, 1), (5, 3, 32, 3)])
def test_generator_shapes_and_reference(latent_dim, out_dim, hidden, layers):
    torch.manual_seed(0)
    G = MLPGenerator(latent_dim, out_dim, hidden, layers)
    assert len(_linears(G)) == layers + 1 and G.latent_dim == latent_dim
    z = torch.randn(7, latent_dim)
    x = G(z)
    assert x.shape == (7, out_dim)
    torch.testing.assert_close(x, _reference_g(G, z), atol=ATOL, rtol=RTOL)
    # resolution and alpha are accepted and ignored (the trainer passes them to every model)
    assert torch.equal(G(z, 64, 0.3), x)


@pytest.mark.parametrize("kernels", [0, 5])
@pytest.mark.parametrize("n", [1, 2, 13])
def test_discriminator_shapes_and_reference(kernels, n):
    torch.manual_seed(1)
    D = MLPDiscriminator(2, hidden=24, layers=2, mbdisc_kernels=kernels, mbdisc_dim=3,
                         ops_impl="cpu")
    x = torch.randn(n, 2)
    logits = D(x)
    assert logits.shape == (n,)
    torch.testing.assert_close(logits, _reference_d(D, x), atol=ATOL, rtol=RTOL)
    assert torch.equal(D(x, 32, 0.5), logits)


def test_parameter_count_with_and_without_mbdisc():
    hidden, layers, kernels, dim = 32, 3, 6, 4
    plain = MLPDiscriminator(2, hidden, layers)
    with_mbd = MLPDiscriminator(2, hidden, layers, mbdisc_kernels=kernels, mbdisc_dim=dim)
    base = (2 * hidden + hidden) + (layers - 1) * (hidden * hidden + hidden) + (hidden + 1)
    assert count_parameters(plain) == base
    # T (hidden, kernels, dim), plus one output weight per appended similarity
    assert count_parameters(with_mbd) == base + hidden * kernels * dim + kernels
    assert count_parameters(MLPGenerator(3, 2, hidden, layers)) == (
        (3 * hidden + hidden) + (layers - 1) * (hidden * hidden + hidden) + (2 * hidden + 2))


def test_no_batchnorm():
    for m in (MLPGenerator(2), MLPDiscriminator(mbdisc_kernels=4)):
        assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())


def test_plain_discriminator_is_per_sample_and_mbdisc_couples_the_batch():
    torch.manual_seed(2)
    x = torch.randn(6, 2)
    for kernels, coupled in ((0, False), (4, True)):
        D = MLPDiscriminator(2, 16, 2, mbdisc_kernels=kernels, mbdisc_dim=4)
        moved = x.clone()
        moved[3] += 0.5  # move another sample of the batch
        changed = not torch.allclose(D(moved)[0], D(x)[0], atol=0, rtol=1e-6)
        assert changed == coupled
        xg = x.clone().requires_grad_(True)
        D(xg)[0].backward()
        assert xg.grad[0].abs().sum() > 0
        assert (torch.count_nonzero(xg.grad[1:]) > 0) == coupled


@pytest.mark.parametrize("kernels", [0, 4])
def test_gradients_reach_every_parameter_of_both_networks(kernels):
    torch.manual_seed(3)
    G = MLPGenerator(4, hidden=16, layers=2)
    D = MLPDiscriminator(hidden=16, layers=2, mbdisc_kernels=kernels, mbdisc_dim=4)
    F.softplus(-D(G(torch.randn(9, 4)))).mean().backward()
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_r1_double_backward_matches_reference():
    torch.manual_seed(4)
    D = MLPDiscriminator(hidden=16, layers=2, mbdisc_kernels=3, mbdisc_dim=4, ops_impl="cpu")
    x = torch.randn(8, 2)

    def r1_grads(forward):
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(forward(xr).sum(), xr, create_graph=True)
        # The output bias does not move the input gradient: its gradient is 0 (materialised).
        return torch.autograd.grad(g.square().sum(), list(D.parameters()), allow_unused=True,
                                   materialize_grads=True)

    for got, want in zip(r1_grads(D), r1_grads(lambda v: _reference_d(D, v)), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"z must have shape \(N, 3\)"):
        MLPGenerator(3)(torch.randn(2, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2\)"):
        MLPDiscriminator()(torch.randn(2, 2, 1))
    with pytest.raises(ValueError, match="mbdisc_kernels"):
        MLPDiscriminator(mbdisc_kernels=-1)
    with pytest.raises(ValueError, match="layers"):
        MLPGenerator(2, layers=0)
