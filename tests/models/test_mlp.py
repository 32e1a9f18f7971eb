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


# ------------------------------------------------------------------------------ MLP on images


def test_unconditional_state_dict_keys_unchanged():
    assert list(MLPGenerator(2, hidden=8, layers=2).state_dict()) == [
        "net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "net.4.weight", "net.4.bias"]
    assert list(MLPDiscriminator(2, 8, 2, mbdisc_kernels=3, mbdisc_dim=2).state_dict()) == [
        "features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias",
        "mbdisc.T", "out.weight", "out.bias"]


def test_image_generator_shapes_tanh_and_reference():
    torch.manual_seed(5)
    G = MLPGenerator(6, hidden=16, layers=2, out_shape=(3, 4, 4))
    assert G.out_dim == 48 and isinstance(G.net[-1], nn.Tanh)
    z = torch.randn(5, 6) * 30  # large inputs saturate the tanh
    img = G(z, 4)
    assert img.shape == (5, 3, 4, 4)
    assert img.abs().max() <= 1.0 and img.abs().max() > 0.99
    torch.testing.assert_close(img, torch.tanh(_reference_g(G, z)).reshape(5, 3, 4, 4),
                               atol=ATOL, rtol=RTOL)
    assert torch.equal(G(z), img)  # resolution None is accepted


def test_image_discriminator_flattens():
    torch.manual_seed(6)
    D = MLPDiscriminator(hidden=16, layers=2, in_shape=(1, 4, 4))
    assert D.in_dim == 16
    x = torch.randn(3, 1, 4, 4)
    logits = D(x, 4)
    assert logits.shape == (3,)
    torch.testing.assert_close(logits, _reference_d(D, x.flatten(1)), atol=ATOL, rtol=RTOL)


def test_image_shape_errors():
    # on images the point widths are ignored (callers may pass the defaults explicitly)
    assert MLPGenerator(4, out_dim=2, out_shape=(1, 2, 2)).out_dim == 4
    assert MLPDiscriminator(in_dim=2, in_shape=(3, 2, 2)).in_dim == 12
    with pytest.raises(ValueError, match=r"in_shape must be \(C, R, R\)"):
        MLPDiscriminator(in_shape=(1, 2, 3))
    G = MLPGenerator(4, out_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="resolution=4 must equal the image side 2"):
        G(torch.randn(2, 4), 4)
    D = MLPDiscriminator(in_shape=(1, 2, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 2, 2\)"):
        D(torch.randn(2, 4))


def test_maxout_by_hand():
    """One maxout layer of 2 units with 3 pieces each, every weight set by hand."""
    D = MLPDiscriminator(2, hidden=2, layers=1, maxout=3).double()
    lin = D.features[0]
    assert (lin.in_features, lin.out_features) == (2, 6)
    with torch.no_grad():
        # unit 0: pieces x0, x1, -x0 - x1; unit 1: x0 + x1, 2 x0 - x1, 0.5
        lin.weight.copy_(torch.tensor([[1., 0.], [0., 1.], [-1., -1.], [1., 1.], [2., -1.],
                                       [0., 0.]]))
        lin.bias.copy_(torch.tensor([0., 0., 0., 0., 0., 0.5]))
        D.out.weight.copy_(torch.tensor([[1., -1.]]))
        D.out.bias.fill_(0.25)
    x = torch.tensor([[1., 2.], [-1., -2.]], dtype=torch.float64)
    # sample 0: unit 0 = max(1, 2, -3) = 2, unit 1 = max(3, 0, 0.5) = 3: 2 - 3 + 0.25
    # sample 1: unit 0 = max(-1, -2, 3) = 3, unit 1 = max(-3, 0, 0.5) = 0.5: 3 - 0.5 + 0.25
    assert D(x).tolist() == [-0.75, 2.75]


def test_maxout_parameter_counts_by_formula():
    c, r, hidden, layers, k, latent = 1, 4, 8, 3, 5, 6
    n_in = c * r * r
    D = MLPDiscriminator(hidden=hidden, layers=layers, in_shape=(c, r, r), maxout=k)
    assert count_parameters(D) == ((n_in * hidden * k + hidden * k)
                                   + (layers - 1) * (hidden * hidden * k + hidden * k)
                                   + (hidden + 1))
    G = MLPGenerator(latent, hidden=hidden, layers=layers, out_shape=(c, r, r))
    assert count_parameters(G) == ((latent * hidden + hidden)
                                   + (layers - 1) * (hidden * hidden + hidden)
                                   + (hidden * n_in + n_in))


def test_maxout_r1_double_backward():
    torch.manual_seed(7)
    D = MLPDiscriminator(hidden=8, layers=2, in_shape=(1, 2, 2), maxout=3).double()
    x = torch.randn(5, 1, 2, 2, dtype=torch.float64)

    def r1_grads(forward):
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(forward(xr).sum(), xr, create_graph=True)
        # biases only pick the winning pieces, they do not enter the input gradient
        return torch.autograd.grad(g.square().sum(), list(D.parameters()), allow_unused=True,
                                   materialize_grads=True)

    got = r1_grads(D)
    for g, want in zip(got, r1_grads(lambda v: _reference_maxout(D, v.flatten(1))), strict=True):
        torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)
    assert all(g.abs().sum() > 0 for g in got[0::2])  # the weights


def _dropout_net() -> MLPDiscriminator:
    """in 2 -> one LeakyReLU unit (weights 1, 1) -> output (weight 1), no biases."""
    D = MLPDiscriminator(2, hidden=1, layers=1, dropout=0.5).double()
    with torch.no_grad():
        D.features[0].weight.fill_(1.0)
        D.features[0].bias.zero_()
        D.out.weight.fill_(1.0)
        D.out.bias.zero_()
    return D


def test_dropout_by_hand():
    D = _dropout_net()
    assert D.noise_size == 2 + 1  # two inputs, one hidden unit
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)

    def run(*noise):
        return D(x, noise=torch.tensor([noise], dtype=torch.float64)).item()

    assert D(x).item() == 3.0  # no noise: no dropout, 1 + 2
    assert run(0.5, 0.9, 0.7) == 12.0  # all kept: (2 * 1 + 2 * 2) * 2, each input scaled by 2
    assert run(0.2, 0.9, 0.7) == 8.0  # x0 dropped: (2 * 2) * 2
    assert run(0.9, 0.49, 0.7) == 4.0  # x1 dropped: (2 * 1) * 2
    assert run(0.9, 0.9, 0.1) == 0.0  # the hidden unit dropped


@pytest.mark.parametrize("maxout", [0, 2])
def test_dropout_equals_zeroed_input(maxout):
    torch.manual_seed(8)
    p = 0.3
    D = MLPDiscriminator(hidden=6, layers=2, in_shape=(1, 2, 2), maxout=maxout,
                         dropout=p).double()
    assert D.noise_size == 4 + 6 * 2
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    kept = p + (1 - p) * torch.rand(3, D.noise_size, dtype=torch.float64)  # all >= p
    all_kept = D(x, noise=kept)
    # every unit kept: the net with each layer's input scaled by 1 / (1 - p)
    h = x.flatten(1)
    for i in range(2):
        h = D.features[2 * i + 1](D.features[2 * i](h / (1 - p)))
    torch.testing.assert_close(all_kept, D.out(h / (1 - p)).squeeze(1), rtol=1e-12, atol=1e-12)
    # input unit j of sample 1 dropped == that input zeroed, every unit kept
    j = 2
    noise = kept.clone()
    noise[1, j] = p / 2
    zeroed = x.clone()
    zeroed.view(3, -1)[1, j] = 0
    torch.testing.assert_close(D(x, noise=noise), D(zeroed, noise=kept), rtol=0, atol=1e-12)
    assert not torch.allclose(D(x, noise=noise)[1], all_kept[1])
    # per-sample masks: any split of the batch (another world size) gives the same logits
    torch.testing.assert_close(torch.cat([D(x[:1], noise=noise[:1]), D(x[1:], noise=noise[1:])]),
                               D(x, noise=noise), rtol=0, atol=1e-12)
    # no noise, or p = 0: no dropout
    torch.testing.assert_close(D(x), _reference_maxout(D, x.flatten(1)), rtol=1e-12, atol=1e-12)


def _reference_maxout(D: MLPDiscriminator, x: torch.Tensor) -> torch.Tensor:
    h = x
    for lin in _linears(D)[:-1]:
        h = F.linear(h, lin.weight, lin.bias)
        h = h.reshape(len(h), -1, D.maxout).max(2).values if D.maxout else F.leaky_relu(h, 0.2)
    return F.linear(h, D.out.weight, D.out.bias).squeeze(1)


def test_dropout_arguments():
    D = MLPDiscriminator(2, 4, 2, dropout=0.5)
    with pytest.raises(ValueError, match=r"noise must be a float tensor of shape \(N, noise_size\) "
                                         r"= \(3, 10\)"):
        D(torch.randn(3, 2), noise=torch.rand(3, 9))
    with pytest.raises(ValueError, match="dropout"):
        MLPDiscriminator(dropout=1.0)
    with pytest.raises(ValueError, match="maxout"):
        MLPDiscriminator(maxout=1)
    plain = MLPDiscriminator(2, 4, 2)  # p = 0: noise accepted, nothing dropped
    x = torch.randn(3, 2)
    assert torch.equal(plain(x, noise=torch.zeros(3, plain.noise_size)), plain(x))


# ----------------------------------------------------------------------- conditioning by label

K = 4


def test_conditional_generator():
    torch.manual_seed(9)
    G = MLPGenerator(3, hidden=8, layers=2, out_shape=(1, 2, 2), num_classes=K, cond_dim=5)
    assert G.embed.weight.shape == (K, 5) and G.net[0].in_features == 3 + 5
    z = torch.randn(2, 3).repeat(2, 1)
    img = G(z, cond=torch.tensor([0, 0, 3, 3]))
    assert img.shape == (4, 1, 2, 2)
    assert not torch.allclose(img[:2], img[2:])
    e = G.embed(torch.tensor([0, 0, 3, 3]))
    torch.testing.assert_close(img, torch.tanh(_reference_g(G, torch.cat([z, e], 1)))
                               .reshape(4, 1, 2, 2), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("cond_d", ["concat", "projection"])
@pytest.mark.parametrize("kernels", [0, 3])
def test_conditional_discriminator_shapes(cond_d, kernels):
    torch.manual_seed(10)
    D = MLPDiscriminator(hidden=8, layers=2, in_shape=(1, 2, 2), num_classes=K, cond_dim=5,
                         cond_d=cond_d, mbdisc_kernels=kernels, mbdisc_dim=2, maxout=2,
                         dropout=0.2)
    x, y = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 3, 3, 0])
    assert D(x, cond=y).shape == (6,)
    assert D(x, cond=y, noise=torch.rand(6, D.noise_size)).shape == (6,)
    if cond_d == "concat":
        assert D.embed.weight.shape == (K, 5) and D.features[0].in_features == 4 + 5
    else:
        assert D.embed.weight.shape == (K, 8) and D.features[0].in_features == 4
    assert D.noise_size == 4 + 8 * 2  # the label is never dropped


def test_projection_is_head_plus_inner_product():
    torch.manual_seed(11)
    D = MLPDiscriminator(hidden=8, layers=2, in_shape=(1, 2, 2), num_classes=K,
                         cond_d="projection", dropout=0.5).double()
    phi = []
    D.out.register_forward_pre_hook(lambda m, args: phi.append(args[0]))
    x, y = torch.randn(5, 1, 2, 2, dtype=torch.float64), torch.tensor([3, 1, 1, 0, 2])
    noise = torch.rand(5, D.noise_size, dtype=torch.float64)
    for kw in ({}, {"noise": noise}):  # phi is the (dropped) input of the output layer
        phi.clear()
        logits = D(x, cond=y, **kw)
        head = D.out(phi[0]).squeeze(1)
        inner = (D.embed.weight[y] * phi[0]).sum(1)
        torch.testing.assert_close(logits, head + inner, rtol=0, atol=1e-12)
        assert inner.abs().min() > 1e-4


@pytest.mark.parametrize("cond_d", ["concat", "projection"])
def test_label_changes_discriminator_output(cond_d):
    torch.manual_seed(12)
    D = MLPDiscriminator(2, hidden=16, layers=2, num_classes=K, cond_d=cond_d).double()
    x = torch.randn(2, 2, dtype=torch.float64).repeat(2, 1)
    d = D(x, cond=torch.tensor([1, 1, 2, 2]))
    change = d[2:] - d[:2]
    assert change.abs().min() > 1e-6 and not torch.allclose(change[0], change[1])


def test_cond_errors_name_the_argument():
    G = MLPGenerator(2, num_classes=K)
    D = MLPDiscriminator(num_classes=K, cond_d="concat")
    z = torch.randn(2, 2)
    with pytest.raises(ValueError, match="MLPGenerator: cond is required"):
        G(z)
    with pytest.raises(ValueError, match="MLPDiscriminator: cond is required"):
        D(z)
    with pytest.raises(ValueError, match="MLPGenerator: cond was given"):
        MLPGenerator(2)(z, cond=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="MLPDiscriminator: cond was given"):
        MLPDiscriminator()(z, cond=torch.tensor([0, 1]))
    for bad in (torch.tensor([0, K]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match=r"cond holds class ids outside \[0, 4\)"):
            G(z, cond=bad)
        with pytest.raises(ValueError, match=r"cond holds class ids outside \[0, 4\)"):
            D(z, cond=bad)
    with pytest.raises(ValueError, match=r"cond must be an integer tensor of shape \(2,\)"):
        D(z, cond=torch.tensor([0]))
    with pytest.raises(ValueError, match="num_classes"):
        MLPGenerator(2, num_classes=1)
    with pytest.raises(ValueError, match="cond_d"):
        MLPDiscriminator(num_classes=K, cond_d="sum")
