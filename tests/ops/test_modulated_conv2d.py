"""modulated_conv2d: the cpu and triton paths against a per-sample float64 reference built from
StyleGAN2's eq. 1-3, their gradients and double backward against autograd of ``ref``, and
``impl``. The triton cases (their tolerances are stated above them) run in Triton's interpreter
without a GPU.

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


def test_unknown_impl_raises_naming_the_available_impls():
    x, weight, styles = _inputs((1, 2, 2, 4, 4), 3, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"impl='fast'.*auto \| ref \| cpu \| triton"):
        modulated_conv2d(x, weight, styles, impl="fast")


def test_triton_needs_cuda_or_the_interpreter(monkeypatch):
    x, weight, styles = _inputs((1, 2, 2, 4, 4), 3, dtype=torch.float32)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if _impl.triton_available():
        with pytest.raises(RuntimeError, match="needs CUDA tensors, or TRITON_INTERPRET=1"):
            modulated_conv2d(x, weight, styles, impl="triton")
    else:
        with pytest.raises(RuntimeError, match="needs the triton package"):
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


# --------------------------------------------------------------------------------------- Triton
#
# Without a GPU the kernel runs in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set in
# conftest); with one, compiled on CUDA tensors with fp32 dots held to "ieee" (no TF32). The
# interpreter computes fp32 dots exactly in fp32 and the bf16 path with exact products and fp32
# sums (as a tensor core), so the forward tolerances are the cpu path's (TOLERANCE above: the
# bf16 path rounds x * s, the output and the blur to bf16). Gradients: in float64 (the kernel
# takes float64 under the interpreter only) both paths are exact up to summation order, 1e-9;
# in fp32 the backward and double backward chain a few fp32 convolutions and sums, each ~1e-7 of
# the magnitudes: (atol 1e-5 of max |reference|, rtol 1e-4); bf16 first-order gradients round
# the scaled gradient, the scaled input and each result to bf16 (a few u = 2^-9): (3e-2, 3e-2).

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not _impl.triton_available(), reason="triton is not installed")
# (N, C_in, C_out, H, W): minimal, odd / prime, larger
TRITON_SHAPES = [(1, 1, 1, 4, 4), (3, 5, 7, 7, 7), (2, 32, 48, 16, 16)]
TRITON_IDS = ["x".join(map(str, s)) for s in TRITON_SHAPES]


def _triton(x, weight, styles, demodulate=True, up=1):
    return modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, impl="triton")


def _triton_direct(x, weight, styles, demodulate=True, up=1):
    """The triton path without the dispatch (which sends float64 to the cpu path)."""
    return mc.modulated_conv2d_triton(x, weight, styles, demodulate=demodulate, up=up)


def _grads_of(fn, x, weight, styles, demodulate, up, r):
    """``_grads`` for any function of ``(x, weight, styles, demodulate, up)``."""
    x, weight, styles = (t.detach().requires_grad_(True) for t in (x, weight, styles))
    y = fn(x, weight, styles, demodulate, up)
    first = torch.autograd.grad((r.to(y.dtype) * y).sum(), (x, weight, styles))
    y = fn(x, weight, styles, demodulate, up)
    (gx,) = torch.autograd.grad((r.to(y.dtype) * y.square()).sum(), x, create_graph=True)
    second = torch.autograd.grad(gx.square().sum(), (x, weight, styles))
    return first, second


def _ref_fn(x, weight, styles, demodulate, up):
    return mc.modulated_conv2d_ref(x, weight, styles, demodulate=demodulate, up=up)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("demodulate", [True, False], ids=["demod", "nodemod"])
@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("k", [3, 1])
@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=TRITON_IDS)
def test_triton_forward_matches_per_sample_reference(shape, k, up, demodulate, dtype):
    x, weight, styles = (t.to(DEVICE) for t in _inputs(shape, k, dtype))
    want = reference(x.double(), weight.double(), styles.double(), demodulate, up)
    with torch.backends.cudnn.flags(allow_tf32=False):
        got = _triton(x, weight, styles, demodulate, up)
    n, _, c_out, h, w = shape
    assert got.shape == (n, c_out, up * h, up * w) and got.dtype == dtype
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(got.double(), want, rtol=rtol,
                               atol=atol * want.abs().max().item())


def _compare_grads(got, want, atol, rtol, floor=0.0):
    for order, g_order, w_order in zip(("first", "double"), got, want, strict=False):
        for name, g, ref in zip(("x", "weight", "styles"), g_order, w_order, strict=True):
            scale = ref.abs().max().item()
            assert scale > 0, f"{order} grad {name} vanished: the test would not see errors"
            assert g.dtype == ref.dtype or g.dtype in (torch.float32, torch.bfloat16)
            torch.testing.assert_close(g.double().cpu(), ref, rtol=rtol,
                                       atol=atol * scale + floor,
                                       msg=lambda m, o=order, nm=name: f"{o} grad {nm}: {m}")


# every (k, up, demodulate) on the minimal and the odd shape; the larger one at 3x3, demodulated
GRAD_CASES = ([(s, k, up, dm) for s in TRITON_SHAPES[:2] for k in (3, 1) for up in (1, 2)
               for dm in (True, False)]
              + [(TRITON_SHAPES[2], 3, up, True) for up in (1, 2)])


@needs_triton
@pytest.mark.skipif(DEVICE != "cpu", reason="float64 runs in the interpreter only; on a GPU "
                    "test_triton_gradients_fp32 checks the same gradients")
@pytest.mark.parametrize("shape, k, up, demodulate", GRAD_CASES,
                         ids=[f"{'x'.join(map(str, c[0]))}-k{c[1]}-up{c[2]}-"
                              f"{'demod' if c[3] else 'nodemod'}" for c in GRAD_CASES])
def test_triton_gradients_and_double_backward_float64(shape, k, up, demodulate):
    x, weight, styles = _inputs(shape, k, seed=1)
    n, _, c_out, h, w = shape
    r = torch.randn(n, c_out, up * h, up * w, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(2))
    got = _grads_of(_triton_direct, x, weight, styles, demodulate, up, r)
    want = _grads_of(_ref_fn, x, weight, styles, demodulate, up, r)
    # the 1e-12 floor as in test_gradients_and_double_backward_match_ref (one input channel)
    _compare_grads(got, want, 1e-9, 1e-9, floor=1e-12)


@needs_triton
@pytest.mark.parametrize("demodulate", [True, False], ids=["demod", "nodemod"])
@pytest.mark.parametrize("up", [1, 2])
def test_triton_gradients_fp32(up, demodulate):
    """Through the public dispatch in fp32: first-order gradients and the double backward."""
    shape, k = TRITON_SHAPES[1], 3
    x, weight, styles = (t.to(DEVICE) for t in _inputs(shape, k, torch.float32, seed=5))
    n, _, c_out, h, w = shape
    r = torch.randn(n, c_out, up * h, up * w, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(6)).to(DEVICE)
    with torch.backends.cudnn.flags(allow_tf32=False):
        got = _grads_of(_triton, x, weight, styles, demodulate, up, r)
    want = _grads_of(_ref_fn, *(t.double().cpu() for t in (x, weight, styles)), demodulate, up,
                     r.cpu())
    assert all(g.dtype == torch.float32 for order in got for g in order)
    _compare_grads(got, want, 1e-5, 1e-4)


@needs_triton
@pytest.mark.parametrize("up", [1, 2])
def test_triton_gradients_bf16(up):
    """bf16 first-order gradients (the double backward's deeper bf16 chain is checked in fp32
    and float64) against the float64 reference of the same rounded inputs."""
    shape, k = TRITON_SHAPES[1], 3
    x, weight, styles = (t.to(DEVICE) for t in _inputs(shape, k, torch.bfloat16, seed=7))
    n, _, c_out, h, w = shape
    r = torch.randn(n, c_out, up * h, up * w, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(8)).to(DEVICE)
    leaves = [t.detach().requires_grad_(True) for t in (x, weight, styles)]
    got = torch.autograd.grad((r.to(torch.bfloat16) * _triton(*leaves, up=up)).sum(), leaves)
    assert all(g.dtype == torch.bfloat16 for g in got)
    ref_leaves = [t.detach().double().cpu().requires_grad_(True) for t in (x, weight, styles)]
    want = torch.autograd.grad((r.cpu() * _ref_fn(*ref_leaves, True, up)).sum(), ref_leaves)
    _compare_grads((got,), (want,), 3e-2, 3e-2)


@needs_triton
@pytest.mark.skipif(DEVICE != "cpu", reason="float64 runs in the interpreter only")
@pytest.mark.parametrize("up", [1, 2])
def test_triton_gradcheck_and_gradgradcheck_float64(up):
    """The interpreter computes float64 ``tl.dot`` (numpy), so the kernel path is checked by
    finite differences to the second order (``fast_mode``: random projections, the interpreter
    being slow)."""
    x, weight, styles = (t.requires_grad_(True) for t in _inputs((2, 2, 3, 3, 3), 3, seed=3))

    def fn(x, weight, styles):
        y = _triton_direct(x, weight, styles, up=up)
        return y * y

    assert torch.autograd.gradcheck(fn, (x, weight, styles), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, weight, styles), fast_mode=True)


@needs_triton
def test_triton_float64_runs_the_cpu_path_through_the_dispatch(monkeypatch):
    x, weight, styles = _inputs((2, 3, 4, 5, 5), 3)
    called = []
    real = mc.modulated_conv2d_cpu
    monkeypatch.setattr(mc, "modulated_conv2d_cpu",
                        lambda *a, **kw: called.append("cpu") or real(*a, **kw))
    modulated_conv2d(x.to(DEVICE), weight.to(DEVICE), styles.to(DEVICE), impl="triton")
    assert called == ["cpu"]


@needs_triton
def test_triton_refuses_padding_outside_the_kernel_modes():
    x, weight, styles = (t.to(DEVICE) for t in _inputs((1, 2, 2, 5, 5), 3, torch.float32))
    with pytest.raises(ValueError, match=r"padding in \[0, 2\]"):
        modulated_conv2d(x, weight, styles, padding=3, impl="triton")
    y = modulated_conv2d(x, weight, styles, padding=0, impl="triton")
    want = reference(x.double(), weight.double(), styles.double(), True, 1)[..., 1:-1, 1:-1]
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=2e-5 * want.abs().max().item())


@needs_triton
def test_triton_under_autocast_computes_in_bf16_and_keeps_grad_dtypes():
    x, weight, styles = (t.to(DEVICE) for t in _inputs((2, 5, 7, 6, 6), 3, torch.float32))
    leaves = [t.detach().requires_grad_(True) for t in (x, weight, styles)]
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        y = modulated_conv2d(*leaves, impl="triton")
    assert y.dtype == torch.bfloat16
    grads = torch.autograd.grad(y.float().sum(), leaves)
    assert all(g.dtype == torch.float32 for g in grads)
    ref_leaves = [t.detach().double().cpu().requires_grad_(True) for t in (x, weight, styles)]
    want_y = reference(*ref_leaves, True, 1)
    want = torch.autograd.grad(want_y.sum(), ref_leaves)
    # the inputs are rounded to bf16 inside the op (not beforehand): a few more roundings than
    # the bf16 cases above, within the same (3e-2, 3e-2)
    atol, rtol = TOLERANCE[torch.bfloat16]
    for got, ref in zip((y, *grads), (want_y, *want), strict=True):
        torch.testing.assert_close(got.double().cpu(), ref, rtol=rtol,
                                   atol=atol * ref.abs().max().item())


# ------------------------------------------------------------- launches on meta tensors (no run)

class _Recorder:
    """Stands in for the autotuned kernel and its ``.fn``: records ``kernel[grid](*args,
    **kwargs)`` (autotuned: a grid function of the config) and ``kernel.fn[grid](...)``."""

    def __init__(self, kernel):
        self.configs = kernel.configs
        self.fn = self
        self.launches = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            grids = ([grid({**kwargs, **c.all_kwargs()}) for c in self.configs]
                     if callable(grid) else [grid])
            self.launches.append((grids, args, kwargs))
        return launch


@pytest.fixture
def recorder(monkeypatch):
    kernels = importlib.import_module("scalegan.kernels.modulated_conv2d")
    rec = _Recorder(kernels._scaled_conv2d_kernel)
    monkeypatch.setattr(kernels, "_scaled_conv2d_kernel", rec)
    return kernels, rec


@needs_triton
def test_aot_launches_reach_every_mode_and_flag(recorder):
    """What the AOT compile test (tests/ops/test_aot_compile.py) compiles: every kernel mode the
    backward and double backward use, with and without each scale, every dtype and dot
    precision, int64 offsets where 2^31 elements are reached, grids within CUDA's limits."""
    kernels, rec = recorder
    for launch in kernels.aot_launches():
        launch()
    assert kernels.TENSOR_CORE_KERNELS == ("_scaled_conv2d_kernel",)
    seen: dict = {}
    for grids, args, kwargs in rec.launches:
        seen.setdefault("mode", set()).add((kwargs["STRIDE"], kwargs["UP"]))
        seen.setdefault("dtype", set()).add(args[0].dtype)
        for key in ("KSIZE", "HAS_IN_SCALE", "HAS_OUT_SCALE", "INT64", "INPUT_PRECISION"):
            seen.setdefault(key, set()).add(kwargs[key])
        x, y = args[0], args[4]
        assert kwargs["INT64"] == (max(x.numel(), y.numel()) >= 2**31)
        for grid in grids:
            assert 0 < grid[0] < 2**31 and 0 < grid[1] <= 65535, grid
    assert seen["mode"] == {(1, 1), (2, 1), (1, 2)}
    assert seen["dtype"] == {torch.float32, torch.bfloat16, torch.float16}
    assert seen["KSIZE"] == {1, 3}
    assert seen["INPUT_PRECISION"] == {"tf32", "ieee"}
    for flag in ("HAS_IN_SCALE", "HAS_OUT_SCALE", "INT64"):
        assert seen[flag] == {True, False}, flag


@needs_triton
def test_grid_beyond_cuda_limits_is_refused(recorder):
    kernels, _ = recorder
    # 64 * 65536 + 1 output channels: more than 65535 blocks of 64 on grid axis 1
    x = torch.empty(1, 1, 1, 1, device="meta")
    w = torch.empty(64 * 65536 + 1, 1, 1, 1, device="meta")
    with pytest.raises(ValueError, match="exceeds CUDA's limits"):
        with torch.backends.cudnn.flags(allow_tf32=False):
            kernels.scaled_conv2d_forward(x, w, None, None)
