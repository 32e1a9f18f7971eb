"""minibatch_discrimination: the cpu and Triton paths against the (N, N, B, C) reference.

Triton kernels run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set by
conftest) unless a GPU is present, so their shapes stay tiny (N <= 40, B <= 5, C <= 7).

Inputs: ``T`` is scaled by ``1 / (sqrt(A) * C)`` so the L1 distances are O(1) and ``exp(-d)`` is
not vanishingly small (with unit-scale ``M`` and C = 16, ``K`` would be ~1e-8 and every
comparison would pass trivially). The loss is ``(o * w).sum()`` with random ``w``, so
``g[i] != g[j]`` and both terms of the backward are checked; ``w`` holds bf16-representable values
so that a bf16 output's gradient is exactly ``w``, as the fp32 reference's is.

Tolerances are on ``max |actual - expected| / max |expected|`` (per tensor). Measured worst cases
over the shapes below and 5 seeds: fp32 4.2e-7 (forward and gradients); bf16 3.5e-3, which is the
rounding of the bf16 output / gradients (half an ulp is up to 2**-8 = 3.9e-3 relative).
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from scalegan.ops._impl import triton_available, triton_interpreted
from scalegan.ops.minibatch_discrimination import (
    MinibatchDiscrimination,
    minibatch_discrimination,
)

# the module itself (to lower ELEMENT_BUDGET): scalegan.ops re-exports the function under the
# module's name, so ``from scalegan.ops import minibatch_discrimination`` is the function
md = importlib.import_module("scalegan.ops.minibatch_discrimination")

# dtype, max error relative to the largest expected magnitude
TOLERANCES = [
    (torch.float32, 2e-6),
    (torch.bfloat16, 8e-3),
]

SHAPES_SMALL = [  # (N, A, B, C)
    (2, 1, 1, 1),  # minimal: one pair
    (7, 5, 3, 5),  # odd / prime sizes, C not a power of 2
    (13, 5, 3, 5),
    (37, 5, 3, 5),  # N a bit over the kernels' BLOCK_I = 32 and several BLOCK_J = 16 tiles
]
SHAPE_LARGE_CPU = (64, 32, 8, 16)
SHAPE_LARGE_TRITON = (40, 8, 5, 7)  # C = 7 padded to 8; as large as the interpreter allows

TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not triton_available() or not (torch.cuda.is_available() or triton_interpreted()),
    reason="needs triton, and CUDA or TRITON_INTERPRET=1")


def _inputs(n, a, b, c, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, a, generator=g)
    T = torch.randn(a, b, c, generator=g) / (math.sqrt(a) * c)
    w = torch.randn(n, b, generator=g).bfloat16().float()
    return features.to(device, dtype), T.to(device, dtype), w.to(device)


def _run(impl, features, T, w, **kwargs):
    """o, d(o * w).sum()/dfeatures, .../dT."""
    features = features.detach().requires_grad_()
    T = T.detach().requires_grad_()
    o = minibatch_discrimination(features, T, impl=impl, **kwargs)
    grads = torch.autograd.grad((o.float() * w).sum(), (features, T))
    return (o, *grads)


def _close(actual, expected, tol, what=""):
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    actual = actual.detach().to(expected.dtype).cpu()
    expected = expected.detach().cpu()
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert scale > 0, f"{what}: expected is all zeros, the comparison would be vacuous"
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} * max |expected| {scale:.3g}"


def _check_against_ref(impl, shape, dtype, tol, device="cpu"):
    for seed in range(2):
        features, T, w = _inputs(*shape, seed=seed, dtype=dtype, device=device)
        # the reference in fp32 from the same (possibly bf16-rounded) values
        expected = _run("ref", features.float().cpu(), T.float().cpu(), w.cpu())
        actual = _run(impl, features, T, w)
        assert actual[0].dtype == dtype and actual[1].dtype == dtype and actual[2].dtype == dtype
        for name, a, e in zip(("o", "dfeatures", "dT"), actual, expected, strict=True):
            _close(a, e, tol, f"{impl} {shape} {dtype} seed {seed} {name}")


@pytest.mark.parametrize("dtype,tol", TOLERANCES)
@pytest.mark.parametrize("shape", SHAPES_SMALL + [SHAPE_LARGE_CPU])
def test_cpu_matches_ref(shape, dtype, tol):
    _check_against_ref("cpu", shape, dtype, tol)


@needs_triton
@pytest.mark.parametrize("dtype,tol", TOLERANCES)
@pytest.mark.parametrize("shape", SHAPES_SMALL + [SHAPE_LARGE_TRITON])
def test_triton_matches_ref(shape, dtype, tol):
    _check_against_ref("triton", shape, dtype, tol, device=TRITON_DEVICE)


def test_ref_matches_direct_loops():
    """The reference itself against the formula written as Python loops (float64)."""
    features, T, _ = _inputs(5, 3, 2, 3, dtype=torch.float64)
    m = (features @ T.reshape(3, 6)).reshape(5, 2, 3)
    expected = torch.zeros(5, 2, dtype=torch.float64)
    for i in range(5):
        for b in range(2):
            for j in range(5):
                if j != i:
                    expected[i, b] += math.exp(-(m[i, b] - m[j, b]).abs().sum().item())
    torch.testing.assert_close(minibatch_discrimination(features, T, impl="ref"), expected,
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("budget", [1, 64, 338, 2000])
def test_cpu_blocking_matches_ref(budget, monkeypatch):
    """A lowered element budget splits the work into several b- and row-blocks, uneven ones too.
    N = 13, B = 3, C = 5: the forward (169 distances per b) takes rows 4, 4, 4, 1 at budget 64,
    one row at a time at 1, b in blocks 2, 1 at 338 and all at once at 2000; the backward
    (845 differences per b) takes rows 5, 5, 3 at 338, one row at 64 and 1, b blocks 2, 1 at
    2000."""
    monkeypatch.setattr(md, "ELEMENT_BUDGET", budget)
    _check_against_ref("cpu", (13, 5, 3, 5), torch.float32, 2e-6)


@pytest.mark.parametrize("n,b,per_pair,budget", [(13, 3, 1, 64), (13, 3, 5, 338), (13, 3, 5, 2000),
                                                 (512, 64, 16, 2**22), (512, 64, 1, 2**22)])
def test_blocks_stay_within_budget(n, b, per_pair, budget):
    b_block, row_block = md._blocks(n, b, per_pair, budget)
    assert 1 <= b_block <= b and 1 <= row_block <= n
    assert b_block * row_block * n * per_pair <= budget


def test_cpu_saves_only_m_not_pairs():
    """What the cpu path's graph keeps: the matmul's inputs and M, nothing of size N * N."""
    n, a, b, c = SHAPE_LARGE_CPU
    features, T, _ = _inputs(n, a, b, c)
    features.requires_grad_()
    T.requires_grad_()
    saved = {"ref": 0, "cpu": 0}
    for impl in saved:

        def pack(t, impl=impl):
            saved[impl] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            minibatch_discrimination(features, T, impl=impl)
    assert saved["ref"] >= n * n * b * c  # the hooks do see the reference's broadcast
    assert saved["cpu"] <= n * a + a * b * c + n * b * c


@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_gradcheck_float64(impl, monkeypatch):
    monkeypatch.setattr(md, "ELEMENT_BUDGET", 40)  # several blocks in the cpu path
    features, T, _ = _inputs(5, 3, 2, 3, seed=1, dtype=torch.float64)
    features.requires_grad_()
    T.requires_grad_()

    def fn(f, t):
        return minibatch_discrimination(f, t, impl=impl)

    assert torch.autograd.gradcheck(fn, (features, T))
    assert torch.autograd.gradgradcheck(fn, (features, T))


def _double_backward(impl, features, T):
    """The R1 pattern: grad w.r.t. the input with create_graph, then grad of its square."""
    features = features.detach().requires_grad_()
    T = T.detach().requires_grad_()
    out = minibatch_discrimination(features, T, impl=impl)
    (g1,) = torch.autograd.grad(out.pow(2).sum(), features, create_graph=True)
    return (g1, *torch.autograd.grad((g1**2).sum(), (features, T)))


@pytest.mark.parametrize("impl,dtype,tol", [
    ("cpu", torch.float64, 1e-10),
    ("triton", torch.float32, 1e-5),  # fp32 kernel forward + torch backward vs float64 ref
])
@pytest.mark.parametrize("shape", [(2, 1, 1, 1), (13, 5, 3, 5)])
def test_double_backward_matches_ref(impl, dtype, tol, shape, monkeypatch):
    monkeypatch.setattr(md, "ELEMENT_BUDGET", 100)  # several blocks in the torch backward
    features, T, _ = _inputs(*shape, seed=2, dtype=torch.float64)
    expected = _double_backward("ref", features, T)
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    actual = _double_backward(impl, features.to(device, dtype), T.to(device, dtype))
    for name, a, e in zip(("g1", "d2features", "d2T"), actual, expected, strict=True):
        _close(a, e, tol, f"{impl} {shape} {name}")


def test_ref_double_backward_against_finite_differences():
    """The reference's second-order gradients are the ones the other paths are compared with."""
    features, T, _ = _inputs(4, 3, 2, 3, seed=3, dtype=torch.float64)
    features.requires_grad_()
    T.requires_grad_()

    def g1_sq(f, t):
        out = minibatch_discrimination(f, t, impl="ref")
        (g1,) = torch.autograd.grad(out.pow(2).sum(), f, create_graph=True)
        return (g1**2).sum()

    assert torch.autograd.gradcheck(g1_sq, (features, T))


@pytest.mark.parametrize("impl", ["ref", "cpu", pytest.param("triton", marks=needs_triton)])
def test_layer_shape_state_and_output(impl):
    n, a, b, c = 9, 6, 4, 3
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    torch.manual_seed(0)
    reference = MinibatchDiscrimination(a, b, c, impl="ref")
    layer = MinibatchDiscrimination(a, b, c, impl=impl).to(device)
    ref_state = reference.state_dict()
    state = layer.state_dict()
    assert list(state) == list(ref_state) == ["T"]
    assert {k: v.shape for k, v in state.items()} == {"T": torch.Size([a, b, c])}
    layer.load_state_dict(ref_state)
    x = torch.randn(n, a)
    out = layer(x.to(device))
    assert out.shape == (n, a + b)
    assert torch.equal(out[:, :a].cpu(), x)
    expected = reference(x)
    _close(out, expected, 2e-6, f"layer {impl}")
    # equalized learning rate: T ~ N(0, 1) stored, T / sqrt(in_features) applied
    direct = minibatch_discrimination(x, reference.T / math.sqrt(a), impl="ref")
    torch.testing.assert_close(expected[:, a:], direct, rtol=1e-6, atol=0)


@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_bad_shapes_name_the_shapes(impl):
    with pytest.raises(ValueError, match=r"\(4, 5, 1\)"):
        minibatch_discrimination(torch.randn(4, 5, 1), torch.randn(5, 2, 3), impl=impl)
    with pytest.raises(ValueError, match=r"\(5, 6\)"):
        minibatch_discrimination(torch.randn(4, 5), torch.randn(5, 6), impl=impl)
    with pytest.raises(ValueError, match=r"\(6, 2, 3\).*\(4, 5\)"):
        minibatch_discrimination(torch.randn(4, 5), torch.randn(6, 2, 3), impl=impl)
    with pytest.raises(ValueError, match=r"\(0, 5\)"):
        minibatch_discrimination(torch.randn(0, 5), torch.randn(5, 2, 3), impl=impl)


def test_unknown_impl_raises():
    with pytest.raises(ValueError, match="bogus"):
        minibatch_discrimination(torch.randn(4, 5), torch.randn(5, 2, 3), impl="bogus")
    with pytest.raises(ValueError, match="bogus"):
        MinibatchDiscrimination(5, 2, 3, impl="bogus")(torch.randn(4, 5))
