"""modulated_conv2d: both paths against a per-sample float64 reference built from StyleGAN2's
eq. 1-3, their gradients and double backward against autograd of ``ref``, and ``impl``.

The reference builds each sample's weight ``w''_n`` explicitly and convolves that sample alone;
for ``up=2`` it writes the transposed convolution as what it is (zero insertion, then
``conv2d`` with padding ``k - 1``) and blurs with the padding of StyleGAN2's upsampling layer
(``(1, 1)`` per side for k=3, ``(2, 2)`` for k=1), independently of the op's own formulas.

Tolerances, relative to the largest reference value: fp32 ``(atol 2e-5, rtol 1e-5)`` covers fp32
summation over at most 48 * 9 terms and the rsqrt; bf16 runs the whole op in bf16 (modulated
weights, demodulation, convolution and blur each round to 8 significant bits, unit roundoff
2^-9) on bf16-rounded inputs and is compared with the float64 reference of those same rounded
inputs, so only the op's own rounding is measured: a handful of roundings of ~4e-3 each, within
``(atol 3e-2, rtol 3e-2)``. Gradients are compared in float64 (``1e-9``), where both paths are
exact up to summation order.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from scalegan.ops import _impl, modulated_conv2d
from scalegan.ops._impl import auto_choice, resolve_impl
from scalegan.ops.upfirdn2d import setup_filter, upfirdn2d

TOLERANCE = {torch.float32: (2e-5, 1e-5), torch.bfloat16: (3e-2, 3e-2)}

# (N, C_in, C_out, H, W): minimal, odd / prime, larger
SHAPES = [(1, 1, 1, 4, 4), (3, 5, 7, 7, 7), (3, 5, 7, 5, 5), (4, 32, 48, 16, 16)]
SHAPE_IDS = ["x".join(map(str, s)) for s in SHAPES]
BLUR_PAD = {3: 1, 1: 2}  # StyleGAN2's upsampling layer: blur padding per side, by kernel size
# the module (scalegan.ops.modulated_conv2d is the function, the package re-exports it)
mc = importlib.import_module("scalegan.ops.modulated_conv2d")


def reference(x, weight, styles, demodulate, up, eps=1e-8):
    """Per sample: ``w''_n`` from eq. 1-3, then conv2d (up=1) or zero insertion + conv2d + the
    [1, 3, 3, 1] blur with gain 4 (up=2)."""
    k = weight.shape[-1]
    out = []
    for n in range(x.shape[0]):
        w = weight * styles[n][None, :, None, None]  # (C_out, C_in, k, k), eq. 1
        if demodulate:
            w = w / torch.sqrt((w ** 2).sum(dim=(1, 2, 3), keepdim=True) + eps)  # eq. 3
        xn = x[n: n + 1]
        if up == 1:
            out.append(F.conv2d(xn, w, padding=k // 2))
            continue
        h, wd = xn.shape[2:]
        u = xn.new_zeros(1, xn.shape[1], 2 * h - 1, 2 * wd - 1)
        u[:, :, ::2, ::2] = xn
        y = F.conv2d(u, w, padding=k - 1)  # (1, C_out, 2H + k - 2, 2W + k - 2)
        f = setup_filter((1, 3, 3, 1), dtype=x.dtype)
        out.append(upfirdn2d(y, f, pad=(BLUR_PAD[k],) * 4, gain=4.0))
    return torch.cat(out)


def _inputs(shape, k, dtype=torch.float64, seed=0):
    n, c_in, c_out, h, w = shape
    gen = torch.Generator().manual_seed(seed + sum(shape) + k)
    x = torch.randn(n, c_in, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(c_out, c_in, k, k, generator=gen, dtype=torch.float64)
    styles = torch.randn(n, c_in, generator=gen, dtype=torch.float64) + 1
    return [t.to(dtype) for t in (x, weight, styles)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("demodulate", [True, False], ids=["demod", "nodemod"])
@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("k", [3, 1])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_forward_matches_per_sample_reference(impl, shape, k, up, demodulate, dtype):
    x, weight, styles = _inputs(shape, k, dtype)
    want = reference(x.double(), weight.double(), styles.double(), demodulate, up)
    got = modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, impl=impl)
    n, _, c_out, h, w = shape
    assert got.shape == (n, c_out, up * h, up * w) and got.dtype == dtype
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(got.double(), want, rtol=rtol,
                               atol=atol * want.abs().max().item())


def _grads(impl, x, weight, styles, demodulate, up, r):
    """First-order gradients of ``sum(r * y)``, and the R1-shaped double backward: the
    gradients of ``|d sum(r * y^2) / dx|^2`` (nonzero in x, since y^2 is not linear in x)."""
    x, weight, styles = (t.detach().requires_grad_(True) for t in (x, weight, styles))
    y = modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, impl=impl)
    first = torch.autograd.grad((r * y).sum(), (x, weight, styles))
    y = modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, impl=impl)
    (gx,) = torch.autograd.grad((r * y.square()).sum(), x, create_graph=True)
    second = torch.autograd.grad(gx.square().sum(), (x, weight, styles))
    return first, second


@pytest.mark.parametrize("demodulate", [True, False], ids=["demod", "nodemod"])
@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("k", [3, 1])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_gradients_and_double_backward_match_ref(shape, k, up, demodulate):
    x, weight, styles = _inputs(shape, k, seed=1)
    n, _, c_out, h, w = shape
    r = torch.randn(n, c_out, up * h, up * w, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(2))
    got = _grads("cpu", x, weight, styles, demodulate, up, r)
    want = _grads("ref", x, weight, styles, demodulate, up, r)
    for order, g_order, w_order in zip(("first", "double"), got, want, strict=True):
        for name, g, ref in zip(("x", "weight", "styles"), g_order, w_order, strict=True):
            scale = ref.abs().max().item()
            assert scale > 0, f"{order} grad {name} vanished: the test would not see errors"
            # the 1e-12 floor: with one input channel demodulation nearly cancels the style
            # (w'' = s w / sqrt(s^2 |w|^2 + eps)), its gradient is ~1e-8, only eps's share
            torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-9 * scale + 1e-12,
                                       msg=lambda m, o=order, nm=name: f"{o} grad {nm}: {m}")


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_gradcheck_and_gradgradcheck(impl, up):
    x, weight, styles = (t.requires_grad_(True) for t in _inputs((2, 2, 3, 3, 3), 3, seed=3))

    def fn(x, weight, styles):
        y = modulated_conv2d(x, weight, styles, up=up, impl=impl)
        return y * y  # nonlinear in x, so the double backward has an x term to check

    assert torch.autograd.gradcheck(fn, (x, weight, styles))
    assert torch.autograd.gradgradcheck(fn, (x, weight, styles))


def test_padding_for_up1():
    x, weight, styles = _inputs((2, 3, 4, 5, 5), 3, seed=4)
    for impl in ("ref", "cpu"):
        y = modulated_conv2d(x, weight, styles, padding=0, impl=impl)
        # the "valid" convolution is the interior of the zero-padded one
        want = reference(x, weight, styles, True, 1)[..., 1:-1, 1:-1]
        torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="padding"):
        modulated_conv2d(x, weight, styles, up=2, padding=1)


def test_triton_raises_naming_the_available_impls():
    x, weight, styles = _inputs((1, 2, 2, 4, 4), 3, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"triton.*auto \| ref \| cpu"):
        modulated_conv2d(x, weight, styles, impl="triton")


def test_auto_follows_the_table(monkeypatch):
    x, weight, styles = _inputs((2, 3, 4, 5, 5), 3, dtype=torch.float32)
    row = auto_choice("modulated_conv2d", "cpu")
    assert row.impl in ("ref", "cpu") and "benchmarks/modulated_conv2d.py" in row.evidence
    assert resolve_impl("auto", x, "modulated_conv2d") == row.impl
    called = []
    for impl in ("ref", "cpu"):
        real = getattr(mc, f"modulated_conv2d_{impl}")
        monkeypatch.setattr(mc, f"modulated_conv2d_{impl}",
                            lambda *a, _real=real, _impl=impl, **kw: called.append(_impl)
                            or _real(*a, **kw))
    modulated_conv2d(x, weight, styles)
    monkeypatch.setattr(_impl, "AUTO_TABLE", (
        _impl.AutoChoice("modulated_conv2d", "*", "*", "ref", "a table naming the ref path"),))
    modulated_conv2d(x, weight, styles)
    assert called == [row.impl, "ref"]
