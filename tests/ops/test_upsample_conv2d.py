"""upsample_conv2d: the cpu and Triton paths against the plain reference (interpolate + conv2d).

Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1,
set in conftest), so their shapes stay small; with one they run compiled on CUDA tensors. The
cpu path's tolerances are relative to the largest reference value: fp32 differs only by
summation order; bf16 inputs are compared with the fp32 reference computed from the same bf16
values, so the tolerance covers bf16 rounding of the output and gradients. The Triton tests take
theirs from :func:`tolerance` and compare with a float64 reference.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from scalegan.ops import upsample_conv2d
from scalegan.ops._impl import triton_available
from scalegan.ops.upsample_conv2d import phase_weights, phase_weights_grad, upsample_conv2d_ref

# dtype -> (atol as a fraction of max |reference|, rtol)
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2)}

# (N, C_in, H, W, C_out): minimal, non-aligned (odd and prime sizes), larger
SHAPES = {
    "cpu": [(1, 1, 1, 1, 1), (2, 3, 5, 7, 5), (3, 17, 9, 6, 19), (4, 64, 16, 16, 48)],
}
CASES = [(impl, shape) for impl, shapes in SHAPES.items() for shape in shapes]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def _kernels():
    """The kernel module (imported lazily: the cpu tests run without triton)."""
    return importlib.import_module("scalegan.kernels.upsample_conv2d")


def _run(impl, x, w, b, activation, gain, grad_y):
    x, w, b = (t.detach().requires_grad_(True) for t in (x, w, b))
    y = upsample_conv2d(x, w, b, activation, 0.2, gain, impl=impl)
    grads = torch.autograd.grad(y, (x, w, b), grad_y.to(y.dtype))
    return [t.float() for t in (y, *grads)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("activation, gain", [(None, 1.0), ("lrelu", 1.41)])
@pytest.mark.parametrize("impl, shape", CASES, ids=[f"{i}-{'x'.join(map(str, s))}"
                                                    for i, s in CASES])
def test_matches_reference(impl, shape, activation, gain, dtype):
    n, c_in, h, w, c_out = shape
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(n, c_in, h, w, generator=gen).to(dtype)
    weight = (torch.randn(c_out, c_in, 3, 3, generator=gen) / (3 * c_in ** 0.5)).to(dtype)
    bias = torch.randn(c_out, generator=gen).to(dtype)
    grad_y = torch.randn(n, c_out, 2 * h, 2 * w, generator=gen)
    want = _run("ref", x.float(), weight.float(), bias.float(), activation, gain, grad_y)
    got = _run(impl, x, weight, bias, activation, gain, grad_y)
    for name, g, r in zip(("output", "grad x", "grad weight", "grad bias"), got, want,
                          strict=True):
        if name != "output" and dtype == torch.bfloat16 and activation:
            # a pre-activation that bf16 rounds across zero takes the other slope (1 vs 0.2),
            # moving ~2% of the gradients by O(1): bf16 gradients are checked without the
            # activation, the slope logic in fp32
            continue
        atol, rtol = TOLERANCE[dtype]
        scale = r.abs().max().item() + 1e-12
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol * scale,
                                   msg=lambda m, name=name: f"{impl} {name}: {m}")


# --------------------------------------------------------------------------------------- Triton

def tolerance(dtype: torch.dtype, tf32: bool) -> tuple[float, float]:
    """``(atol as a fraction of max |reference|, rtol)`` for the Triton path against a float64
    reference computed from the same (rounded) inputs, from the precision policy:

    * fp32, "ieee" dots: fp32 products and sums; only the summation order differs, an error of
      ~sqrt(K) * 2^-24 of the magnitudes for K <= a few thousand terms: 1e-5.
    * fp32, "tf32" dots (GPU, ``torch.backends.cudnn.allow_tf32``): both operands are rounded to
      10 explicit mantissa bits (2^-11 each), so a product is off by up to ~2^-10 = 1e-3 and a
      sum of random-signed terms by about as much of its own size: 5e-3.
    * bf16 / fp16: products of 16-bit values are exact in the fp32 accumulator; what is left is
      rounding to the 16-bit format, unit roundoff u = 2^-8 (bf16, 8 significant bits) or
      2^-11 (fp16, 11 bits): the output once; in the backward dL/dy * gain * slope once before
      the dot and the gradient once after. ~3u: bf16 1.2e-2 -> 2e-2, fp16 1.5e-3 -> 4e-3.
    """
    if dtype == torch.float32:
        return (5e-3, 5e-3) if tf32 else (1e-5, 1e-5)
    return {torch.bfloat16: (2e-2, 2e-2), torch.float16: (4e-3, 4e-3)}[dtype]


def _foldable_weight(c_out: int, c_in: int, gen: torch.Generator) -> torch.Tensor:
    """(C_out, C_in, 3, 3) of the form m * 2^-e with |m| <= 63 and 2^-e ~ 1 / (16 * 3 *
    sqrt(C_in)): the folded phase weights (sums of up to 4 taps, |m| < 256) are then exact in
    bf16 and fp16, so the kernel's pre-activation equals the reference's up to fp32 summation
    order and the leaky ReLU's slope choice agrees (folding rounded weights would move
    pre-activations near zero across it)."""
    step = 2.0 ** -round(math.log2(16 * 3 * math.sqrt(c_in)))
    m = (torch.randn(c_out, c_in, 3, 3, generator=gen) * 16).round().clamp(-63, 63)
    return m * step


def _inputs(shape, dtype, bias: bool, seed: int):
    n, c_in, h, w, c_out = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=gen).to(dtype)
    weight = _foldable_weight(c_out, c_in, gen).to(dtype)
    b = torch.randn(c_out, generator=gen).to(dtype) if bias else None
    grad_y = torch.randn(n, c_out, 2 * h, 2 * w, generator=gen).to(dtype)
    return [None if t is None else t.to(DEVICE) for t in (x, weight, b, grad_y)]


def _grads(fn, x, weight, b, grad_y):
    leaves = [t.detach().requires_grad_(True) for t in (x, weight, b) if t is not None]
    y = fn(leaves[0], leaves[1], leaves[2] if b is not None else None)
    return y, torch.autograd.grad(y, leaves, grad_y.to(y.dtype))


def _check_against_reference(x, weight, b, grad_y, activation, gain, dtype, tf32):
    y, grads = _grads(lambda x, w, b: upsample_conv2d(x, w, b, activation, 0.2, gain,
                                                      impl="triton"), x, weight, b, grad_y)
    want_y, want = _grads(lambda x, w, b: upsample_conv2d_ref(x, w, b, activation, 0.2, gain),
                          x.double(), weight.double(), None if b is None else b.double(),
                          grad_y.double())
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    atol, rtol = tolerance(dtype, tf32)
    names = ("output", "grad x", "grad weight", "grad bias")
    for name, got, ref in zip(names, (y, *grads), (want_y, *want), strict=False):
        scale = ref.abs().max().item() + 1e-12
        torch.testing.assert_close(got.double(), ref, rtol=rtol, atol=atol * scale,
                                   msg=lambda m, name=name: f"triton {name}: {m}")


# (N, C_in, H, W, C_out): minimal; odd and prime; two column tiles (W > 64); channels over
# several K steps and several output-channel / input-channel blocks; larger
TRITON_SHAPES = [(1, 1, 1, 1, 1), (2, 3, 5, 7, 5), (3, 17, 9, 6, 19), (1, 3, 2, 67, 4),
                 (1, 67, 3, 2, 70), (2, 40, 12, 10, 36)]
# activation, gain, bias: plain conv; the models' leaky ReLU with its gain; a negative gain
# (the saved sign must be the pre-activation's, not the output's)
EPILOGUES = [(None, 1.0, False), ("lrelu", 1.41, True)]
TRITON_CASES = ([(s, torch.float32, *e) for s in TRITON_SHAPES for e in EPILOGUES]
                + [(s, torch.bfloat16, *e) for s in TRITON_SHAPES for e in EPILOGUES]
                + [(s, torch.float16, "lrelu", 1.41, True) for s in TRITON_SHAPES[1:4]]
                + [(TRITON_SHAPES[2], torch.float32, "lrelu", -0.7, True),
                   (TRITON_SHAPES[2], torch.bfloat16, "lrelu", -0.7, False)])


def _case_id(case):
    shape, dtype, activation, gain, bias = case
    return (f"{'x'.join(map(str, shape))}-{str(dtype)[6:]}-{activation or 'linear'}-g{gain}"
            f"{'-bias' if bias else ''}")


@needs_triton
@pytest.mark.parametrize("shape, dtype, activation, gain, bias", TRITON_CASES,
                         ids=[_case_id(c) for c in TRITON_CASES])
def test_triton_matches_reference(shape, dtype, activation, gain, bias):
    x, weight, b, grad_y = _inputs(shape, dtype, bias, seed=sum(shape))
    # on a GPU the fp32 dots follow torch's TF32 flag; this test holds them to "ieee"
    with torch.backends.cudnn.flags(allow_tf32=False):
        _check_against_reference(x, weight, b, grad_y, activation, gain, dtype, tf32=False)


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="TF32 dots exist only on a GPU (the interpreter computes fp32 exactly)")
def test_triton_tf32_on_gpu():
    x, weight, b, grad_y = _inputs((4, 96, 16, 16, 80), torch.float32, True, seed=1)
    with torch.backends.cudnn.flags(allow_tf32=True):
        # the output with the activation; the gradients without it, since TF32's ~1e-3 error
        # moves pre-activations near zero to the other slope
        y = upsample_conv2d(x, weight, b, "lrelu", 0.2, 1.41, impl="triton")
        want = upsample_conv2d_ref(x.double(), weight.double(), b.double(), "lrelu", 0.2, 1.41)
        atol, rtol = tolerance(torch.float32, tf32=True)
        torch.testing.assert_close(y.double(), want, rtol=rtol,
                                   atol=atol * want.abs().max().item())
        _check_against_reference(x, weight, b, grad_y, None, 1.41, torch.float32, tf32=True)


@needs_triton
def test_triton_under_autocast_computes_in_bf16_and_keeps_grad_dtypes():
    x, weight, b, grad_y = _inputs((2, 5, 4, 6, 3), torch.float32, True, seed=3)
    x = x.to(torch.bfloat16).float()  # values autocast's rounding leaves unchanged
    leaves = [t.detach().requires_grad_(True) for t in (x, weight, b)]
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        y = upsample_conv2d(*leaves, "lrelu", 0.2, 1.41, impl="triton")
    assert y.dtype == torch.bfloat16
    grads = torch.autograd.grad(y, leaves, grad_y.to(y.dtype))
    assert all(g.dtype == torch.float32 for g in grads)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in (x, weight, b)]
    want_y = upsample_conv2d_ref(*ref_leaves, "lrelu", 0.2, 1.41)
    want = torch.autograd.grad(want_y, ref_leaves, grad_y.double())
    atol, rtol = tolerance(torch.bfloat16, tf32=False)
    for got, ref in zip((y, *grads), (want_y, *want), strict=True):
        torch.testing.assert_close(got.double(), ref, rtol=rtol,
                                   atol=atol * ref.abs().max().item())


@needs_triton
def test_triton_double_backward_is_refused():
    x, weight, b, _ = _inputs((1, 2, 2, 2, 2), torch.float32, True, seed=4)
    x.requires_grad_(True)
    y = upsample_conv2d(x, weight, b, "lrelu", impl="triton")
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


# ------------------------------------------------------------- launches on meta tensors (no run)

class _Recorder:
    """Stands in for an autotuned kernel and its ``.fn``: records ``kernel[grid](*args,
    **kwargs)`` (autotuned: a grid function of the config) and ``kernel.fn[grid](...)`` (one
    fixed config: a grid tuple)."""

    def __init__(self, kernel):
        self.configs = kernel.configs
        self.__name__ = kernel.fn.__name__
        self.fn = self
        self.launches = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((grid, args, kwargs))
        return launch

    def grids(self):
        """The grid of every recorded launch (under every config if autotuned), with its
        kwargs."""
        out = []
        for grid, _, kwargs in self.launches:
            if callable(grid):
                out += [(grid({**kwargs, **c.all_kwargs()}), kwargs) for c in self.configs]
            else:
                out.append((grid, kwargs))
        return out


KERNEL_NAMES = ("_upsample_conv2d_fwd_kernel", "_upsample_conv2d_bwd_input_kernel",
                "_upsample_conv2d_bwd_weight_kernel")


@pytest.fixture
def recorders(monkeypatch):
    recs = {}
    for name in KERNEL_NAMES:
        recs[name] = _Recorder(getattr(_kernels(), name))
        monkeypatch.setattr(_kernels(), name, recs[name])
    return recs


def _meta_launch(shape, dtype=torch.bfloat16, lrelu=True):
    n, c_in, h, w, c_out = shape
    x = torch.empty(n, c_in, h, w, device="meta", dtype=dtype)
    w4 = torch.empty(4 * c_out, c_in, 2, 2, device="meta", dtype=dtype)
    bias = torch.empty(c_out, device="meta", dtype=dtype)
    sign = torch.empty(n, c_out, 2 * h, 2 * w, device="meta", dtype=torch.uint8) if lrelu else None
    y = _kernels().upsample_conv2d_forward(x, w4, bias, lrelu, 0.2, 1.41, sign_out=sign)
    assert y.shape == (n, c_out, 2 * h, 2 * w) and y.dtype == dtype
    gx, gw4, gb = _kernels().upsample_conv2d_backward(y, x, w4, sign, True, 0.2, 1.41)
    assert gx.shape == x.shape and gw4.shape == w4.shape and gb.shape == (c_out,)


@needs_triton
@pytest.mark.parametrize("shape, int64", [
    ((4, 64, 16, 16, 64), False),
    # 33 * 64 * 1024 * 1024 output elements > 2^31: int64 offsets
    ((33, 64, 512, 512, 64), True),
    # one image's input and output each > 2^31 elements
    ((1, 2048, 1024, 1024, 16), True),
])
def test_large_shapes_take_int64_offsets_and_valid_grids(recorders, shape, int64):
    _meta_launch(shape)
    n, c_in, h, w, c_out = shape
    for name, rec in recorders.items():
        assert len(rec.launches) == 1, name
        for grid, kwargs in rec.grids():
            assert kwargs["INT64"] is int64, name
            assert 0 < grid[0] < 2**31 and all(0 < g <= 65535 for g in grid[1:]), (name, grid)
            # a compiled launch: autotuned, 16-bit dots
            assert kwargs["FP16_DOT"] is False and kwargs["INPUT_PRECISION"] == "ieee"
    # the forward's grid covers every (row phase, pixel tile) and channel block
    block_w = min(64, max(4, 1 << (w - 1).bit_length()))
    for _, kwargs in recorders["_upsample_conv2d_fwd_kernel"].grids():
        assert kwargs["BLOCK_W"] == block_w
    for grid, c in zip((g for g, _ in recorders["_upsample_conv2d_fwd_kernel"].grids()),
                       recorders["_upsample_conv2d_fwd_kernel"].configs, strict=True):
        rows = c.kwargs["BLOCK_P"] // block_w
        assert grid == (2 * n * -(-h // rows) * -(-w // block_w), -(-c_out // c.kwargs["BLOCK_CO"]))


@needs_triton
def test_grid_beyond_cuda_limits_is_refused(recorders):
    # 64 * 65536 + 1 output channels: more than 65535 blocks of 64 on grid axis 1
    c_out = 64 * 65536 + 1
    x = torch.empty(1, 1, 1, 1, device="meta")
    w4 = torch.empty(4 * c_out, 1, 2, 2, device="meta")
    _kernels().upsample_conv2d_forward(x, w4, None, False, 0.2, 1.0)
    with pytest.raises(ValueError, match="exceeds CUDA's limits"):
        recorders["_upsample_conv2d_fwd_kernel"].grids()


@needs_triton
def test_fp32_dots_follow_torch_tf32_flag_on_gpu_launches(recorders):
    for allow in (True, False):
        with torch.backends.cudnn.flags(allow_tf32=allow):
            _meta_launch((2, 8, 4, 4, 8), dtype=torch.float32, lrelu=False)
    for rec in recorders.values():
        assert [kw["INPUT_PRECISION"] for _, _, kw in rec.launches] == ["tf32", "ieee"]
        # TF32: tensor-core tiles, autotuned; "ieee": FMA units, one fixed register-light config
        (tf32_grid, _, _), (ieee_grid, _, ieee_kwargs) = rec.launches
        assert callable(tf32_grid) and not callable(ieee_grid) and "num_warps" in ieee_kwargs


@needs_triton
def test_aot_launches_cover_the_specialisations(recorders):
    launches = _kernels().aot_launches()
    assert all(callable(f) for f in launches)
    for f in launches:
        f()
    assert set(_kernels().TENSOR_CORE_KERNELS) == set(KERNEL_NAMES)
    for name, rec in recorders.items():
        seen = {}
        for _, args, kwargs in rec.launches:
            seen.setdefault("dtype", set()).add(args[0].dtype)
            for k, v in kwargs.items():
                seen.setdefault(k, set()).add(v)
            seen.setdefault("aligned", set()).update(a % 16 == 0 for a in args
                                                     if isinstance(a, int) and a > 1)
        assert seen["dtype"] == {torch.float32, torch.bfloat16, torch.float16}, name
        assert seen["INPUT_PRECISION"] == {"tf32", "ieee"}, name
        assert seen["BLOCK_W"] == {4, 8, 16, 32, 64}, name
        assert seen["aligned"] == {True, False}, name
        for flag in ("LRELU", "INT64", "HAS_BIAS", "STORE_SIGN"):
            if flag in seen:
                assert seen[flag] == {True, False}, (name, flag)


# ----------------------------------------------------------------------------- op-level checks

def test_phase_weights_grad_is_the_adjoint():
    # <phase_weights(w), v> == <w, phase_weights_grad(v)> for every w, v
    w, v = torch.randn(5, 3, 3, 3, dtype=torch.float64), torch.randn(20, 3, 2, 2,
                                                                     dtype=torch.float64)
    lhs = (phase_weights(w) * v).sum()
    rhs = (w * phase_weights_grad(v)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=0)


@pytest.mark.parametrize("impl", ["ref", "cpu"])
@pytest.mark.parametrize("activation", [None, "lrelu"])
def test_gradcheck_float64(impl, activation):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: upsample_conv2d(x, w, b, activation, 0.2, 1.3, impl=impl), (x, w, b))


def test_under_autocast_grads_keep_their_dtypes():
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = upsample_conv2d(x, w, None, "lrelu", impl="cpu")
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=torch.randn(2, 3, 4), weight=torch.randn(4, 3, 3, 3)), r"x must be \(N, C_in"),
    (dict(x=torch.randn(2, 3, 4, 4), weight=torch.randn(4, 2, 3, 3)), r"weight must be"),
    (dict(x=torch.randn(2, 3, 4, 4), weight=torch.randn(4, 3, 5, 5)), r"weight must be"),
    (dict(x=torch.randn(2, 3, 4, 4), weight=torch.randn(4, 3, 3, 3), bias=torch.randn(3)),
     r"bias must be \(4,\)"),
    (dict(x=torch.randn(2, 3, 4, 4), weight=torch.randn(4, 3, 3, 3), activation="relu"),
     r"activation='relu'"),
    (dict(x=torch.randn(2, 3, 4, 4), weight=torch.randn(4, 3, 3, 3), impl="fast"),
     r"impl='fast' is not one of"),
])
def test_bad_input_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        upsample_conv2d(**kwargs)
