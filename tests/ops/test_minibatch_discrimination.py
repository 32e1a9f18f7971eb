"""minibatch_discrimination: the cpu and Triton paths against the (N, N, B, C) reference.

Triton kernels run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set by
conftest) unless a GPU is present, so their shapes stay small (N <= 67, or C = 300 at N = 3).

Every path is compared on the output ``o``, the first-order gradients (``dfeatures``, ``dT``)
of ``L1 = (o**2 * w).sum()`` and the double backward of R1 / WGAN-GP: with ``gx = dL1/dfeatures``
taken with ``create_graph=True``, the gradients of ``(gx * v).sum()`` w.r.t. ``features`` and
``T``. ``L1`` is quadratic in ``o`` so that ``g = dL1/do = 2 o w`` depends on the inputs, as it
does in a D whose later layers are not linear: the double backward's ``dg`` term is then part
of the result (with a linear ``L1`` it would be dropped and go unchecked). The expected values
are autograd of the reference in float64 on the CPU, from the same (possibly bf16-rounded) input
values.

Inputs: ``T`` is scaled by ``1 / (sqrt(A) * C)`` so the L1 distances are O(1) and ``exp(-d)`` is
not vanishingly small (with unit-scale ``M`` and C = 16, ``K`` would be ~1e-8 and every
comparison would pass trivially). ``w`` is random, so ``g[i] != g[j]`` and both terms of the
backward are checked; ``v`` holds bf16-representable values so that a bf16 ``gx``'s gradient is
exactly ``v``, as the reference's is.

Tolerances are on ``max |actual - expected| / max |expected|`` (per tensor), from the precision
policy: M and the pairwise part are computed in fp32 for fp32 and bf16 inputs alike (no
``tl.dot`` in these kernels), so fp32 is limited by fp32 rounding of sums over N and C terms
(measured worst case over the shapes below and 5 seeds, cpu and Triton, all five tensors:
4.9e-7; tolerance 2e-6), and bf16 by roundings to 8 significant bits (half an ulp is up to
2**-8 = 3.9e-3 relative): of ``o``, which enters ``g = 2 o w``, of the bf16 gradient of ``o``,
and of the bf16 results, the errors of single terms growing relative to a result's maximum
where the sums over b and c cancel (measured worst 3.2e-3 for ``o``, 1.1e-2 for
``dfeatures``; tolerance 2e-2). On a GPU with TF32 matmuls allowed, the projection
``features @ T`` and its backward round their inputs to 10 mantissa bits (2**-11 relative),
which adds about 1e-3 relative to every value; those cases get 2e-3 more.
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
from scalegan.parallel.env import DistEnv

from parallel.spawn import run_ranks

# the module itself (to lower ELEMENT_BUDGET): scalegan.ops re-exports the function under the
# module's name, so ``from scalegan.ops import minibatch_discrimination`` is the function
md = importlib.import_module("scalegan.ops.minibatch_discrimination")

DTYPES = [torch.float32, torch.bfloat16]

SHAPES_SMALL = [  # (N, A, B, C)
    (2, 1, 1, 1),  # minimal: one pair
    (7, 5, 3, 5),  # odd / prime sizes, C not a power of 2
    (13, 5, 3, 5),
    (37, 5, 3, 5),  # N a bit over the kernels' 32-row tiles: a partial i tile and j tile
]
SHAPE_LARGE_CPU = (64, 32, 8, 16)
SHAPE_LARGE_TRITON = (67, 8, 3, 7)  # three tiles of rows each way, the last one of 3 rows

TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not triton_available() or not (torch.cuda.is_available() or triton_interpreted()),
    reason="needs triton, and CUDA or TRITON_INTERPRET=1")

NAMES = ("o", "dfeatures", "dT", "d2features", "d2T")


def _tolerance(dtype: torch.dtype, device: str) -> float:
    """Relative tolerance for ``dtype`` on ``device``; see the module docstring."""
    tol = {torch.float32: 2e-6, torch.bfloat16: 2e-2}[dtype]
    if device == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        tol += 2e-3
    return tol


def _inputs(n, a, b, c, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, a, generator=g)
    T = torch.randn(a, b, c, generator=g) / (math.sqrt(a) * c)
    w = torch.randn(n, b, generator=g).bfloat16().float()
    v = torch.randn(n, a, generator=g).bfloat16().float()
    return features.to(device, dtype), T.to(device, dtype), w.to(device), v.to(device)


def _first_loss(o, w):
    """``L1 = (o**2 * w).sum()``: ``g = dL1/do = 2 o w`` depends on the inputs."""
    return (o.to(w.dtype).square() * w).sum()


def _run(impl, features, T, w, v, **kwargs):
    """o, the gradients of L1 and those of (gx * v).sum(), gx = dL1/dfeatures."""
    features = features.detach().requires_grad_()
    T = T.detach().requires_grad_()
    o = minibatch_discrimination(features, T, impl=impl, **kwargs)
    gx, gT = torch.autograd.grad(_first_loss(o, w), (features, T), create_graph=True)
    d2 = torch.autograd.grad((gx.to(v.dtype) * v).sum(), (features, T))
    return (o, gx, gT, *d2)


def _expected(features, T, w, v):
    """The reference's autograd in float64 on the CPU."""
    return _run("ref", *(t.detach().cpu().double() for t in (features, T, w, v)))


def _close(actual, expected, tol, what=""):
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    actual = actual.detach().to(expected.dtype).cpu()
    expected = expected.detach().cpu()
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert scale > 0, f"{what}: expected is all zeros, the comparison would be vacuous"
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} * max |expected| {scale:.3g}"


def _check_against_ref(impl, shape, dtype, device="cpu", seeds=(0, 1)):
    tol = _tolerance(dtype, device)
    for seed in seeds:
        inputs = _inputs(*shape, seed=seed, dtype=dtype, device=device)
        expected = _expected(*inputs)
        actual = _run(impl, *inputs)
        assert all(a.dtype == dtype for a in actual)
        for name, a, e in zip(NAMES, actual, expected, strict=True):
            _close(a, e, tol, f"{impl} {shape} {dtype} seed {seed} {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES_SMALL + [SHAPE_LARGE_CPU])
def test_cpu_matches_ref(shape, dtype):
    _check_against_ref("cpu", shape, dtype)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES_SMALL + [SHAPE_LARGE_TRITON])
def test_triton_matches_ref(shape, dtype):
    _check_against_ref("triton", shape, dtype, device=TRITON_DEVICE)


@pytest.mark.parametrize("impl", ["cpu", pytest.param("triton", marks=needs_triton)])
def test_large_kernel_dim(impl):
    """C = 300: the kernels' register tile is BLOCK_I x BLOCK_J whatever C is."""
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    _check_against_ref(impl, (3, 4, 2, 300), torch.float32, device=device, seeds=(0,))


def test_ref_matches_direct_loops():
    """The reference itself against the formula written as Python loops (float64)."""
    features, T, _, _ = _inputs(5, 3, 2, 3, dtype=torch.float64)
    m = (features @ T.reshape(3, 6)).reshape(5, 2, 3)
    expected = torch.zeros(5, 2, dtype=torch.float64)
    for i in range(5):
        for b in range(2):
            for j in range(5):
                if j != i:
                    expected[i, b] += math.exp(-(m[i, b] - m[j, b]).abs().sum().item())
    torch.testing.assert_close(minibatch_discrimination(features, T, impl="ref"), expected,
                               rtol=1e-12, atol=0)


def test_double_backward_formula_matches_autograd_of_the_backward():
    """The analytic double backward (Q, dg, dM2) against autograd of the backward written in
    differentiable torch ops, with the sign held constant, in float64 on M and g directly."""
    gen = torch.Generator().manual_seed(4)
    m = torch.randn(9, 2, 4, dtype=torch.float64, generator=gen) / 4
    g = torch.randn(9, 2, dtype=torch.float64, generator=gen)
    h = torch.randn(9, 2, 4, dtype=torch.float64, generator=gen)
    mr, gr = m.clone().requires_grad_(), g.clone().requires_grad_()
    diff = mr[:, None] - mr[None, :]  # (N, N, B, C)
    k = torch.exp(-diff.abs().sum(-1))  # (N, N, B)
    dm = -((gr[:, None] + gr[None, :]) * k)[..., None].mul(diff.detach().sign()).sum(1)
    expected = torch.autograd.grad((dm * h).sum(), (mr, gr))
    torch.testing.assert_close(md.pairwise_similarity_backward(m, g), dm.detach(), rtol=1e-12,
                               atol=1e-14)
    actual = md.pairwise_similarity_double_backward(m, g, h, budget=50)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("budget", [1, 64, 338, 2000])
def test_cpu_blocking_matches_ref(budget, monkeypatch):
    """A lowered element budget splits the work into several b- and row-blocks, uneven ones too.
    N = 13, B = 3, C = 5: the forward (169 distances per b) takes rows 4, 4, 4, 1 at budget 64,
    one row at a time at 1, b in blocks 2, 1 at 338 and all at once at 2000; the backward and
    double backward (845 differences per b) take rows 5, 5, 3 at 338, one row at 64 and 1, b
    blocks 2, 1 at 2000."""
    monkeypatch.setattr(md, "ELEMENT_BUDGET", budget)
    _check_against_ref("cpu", (13, 5, 3, 5), torch.float32)


@pytest.mark.parametrize("n,b,per_pair,budget", [(13, 3, 1, 64), (13, 3, 5, 338), (13, 3, 5, 2000),
                                                 (512, 64, 16, 2**22), (512, 64, 1, 2**22)])
def test_blocks_stay_within_budget(n, b, per_pair, budget):
    b_block, row_block = md._blocks(n, b, per_pair, budget)
    assert 1 <= b_block <= b and 1 <= row_block <= n
    assert b_block * row_block * n * per_pair <= budget


@pytest.mark.parametrize("impl", ["cpu", pytest.param("triton", marks=needs_triton)])
def test_graph_keeps_no_pairs(impl):
    """What the graph saves, through the forward and a create_graph backward (R1): the
    matmul's inputs, M, g and small things, nothing of size N * N; the reference's does hold
    the (N, N, B, C) broadcast."""
    n, a, b, c = (40, 8, 3, 5) if impl == "triton" else SHAPE_LARGE_CPU
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    features, T, w, _ = _inputs(n, a, b, c, device=device)
    features.requires_grad_()
    T.requires_grad_()
    saved = {"ref": 0, impl: 0}
    for which in saved:

        def pack(t, which=which):
            saved[which] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            o = minibatch_discrimination(features, T, impl=which)
            torch.autograd.grad((o * w).sum(), (features, T), create_graph=True)
    assert saved["ref"] >= n * n * b * c  # the hooks do see the reference's broadcast
    assert saved[impl] <= 3 * (n * a + a * b * c) + 4 * n * b * c


@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_gradcheck_float64(impl, monkeypatch):
    monkeypatch.setattr(md, "ELEMENT_BUDGET", 40)  # several blocks in the cpu path
    features, T, _, _ = _inputs(5, 3, 2, 3, seed=1, dtype=torch.float64)
    features.requires_grad_()
    T.requires_grad_()

    def fn(f, t):
        return minibatch_discrimination(f, t, impl=impl)

    assert torch.autograd.gradcheck(fn, (features, T))
    assert torch.autograd.gradgradcheck(fn, (features, T))


def test_ref_double_backward_against_finite_differences():
    """The reference's second-order gradients are the ones the other paths are compared with."""
    features, T, _, _ = _inputs(4, 3, 2, 3, seed=3, dtype=torch.float64)
    features.requires_grad_()
    T.requires_grad_()

    def g1_sq(f, t):
        out = minibatch_discrimination(f, t, impl="ref")
        (g1,) = torch.autograd.grad(out.pow(2).sum(), f, create_graph=True)
        return (g1**2).sum()

    assert torch.autograd.gradcheck(g1_sq, (features, T))


@pytest.mark.parametrize("impl", ["cpu", pytest.param("triton", marks=needs_triton)])
def test_third_order_is_refused(impl):
    """The double backward is once_differentiable: a third derivative raises, not a wrong
    value."""
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    features, T, w, v = _inputs(5, 3, 2, 3, device=device)
    features.requires_grad_()
    o = minibatch_discrimination(features, T, impl=impl)
    (gx,) = torch.autograd.grad((o * w).sum(), features, create_graph=True)
    (g2,) = torch.autograd.grad((gx * v).sum(), features, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(g2.sum(), features)


class _Recorder:
    """Stands in for a @triton.jit kernel: ``kernel[grid](*args, **kwargs)`` records the launch
    (as the AOT compiler does) instead of running it."""

    def __init__(self, name):
        self.name = name
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((grid, args, kwargs))


def test_aot_launches_on_meta_respect_cuda_limits(monkeypatch):
    """Every call aot_launches() lists runs on meta tensors (host logic only), with grids within
    CUDA's limits; N and C divisible by 16 and not are both reached. B = 70000 (> 65535, the
    limit of grid axes 1 and 2) goes on axis 0."""
    from scalegan.kernels import minibatch_discrimination as k

    kernels = {name: _Recorder(name)
               for name in ("_mbd_fwd_kernel", "_mbd_bwd_kernel", "_mbd_bwd_bwd_kernel")}
    for name, rec in kernels.items():
        monkeypatch.setattr(k, name, rec)
    assert k.TENSOR_CORE_KERNELS == ()
    for call in k.aot_launches():
        call()
    m = torch.empty(40, 70000, 3, device="meta")
    g = torch.empty(40, 70000, device="meta")
    assert k.minibatch_discrimination_forward(m).shape == (40, 70000)
    assert k.minibatch_discrimination_backward(m, g).shape == m.shape
    dm2, dg = k.minibatch_discrimination_double_backward(m, g, m)
    assert dm2.shape == m.shape and dg.shape == (40, 70000)
    for rec in kernels.values():
        assert rec.launches, f"{rec.name} never launched"
        ints = set()
        for grid, args, _ in rec.launches:
            assert len(grid) == 1 and 1 <= grid[0] < 2**31
            assert all(a.dtype == torch.float32 for a in args if isinstance(a, torch.Tensor))
            ints |= {a % 16 == 0 for a in args if isinstance(a, int)}
        assert ints == {True, False}, rec.name
        assert rec.launches[-1][0] == (70000 * 2,)  # B x two tiles of 32 rows


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a real launch of B > 65535 programs "
                    "per row tile needs a GPU (the interpreter has no grid limits)")
def test_more_kernels_than_a_grid_axis_holds_on_gpu():
    """B = 70000 kernels: the grid's B x row-tiles axis is axis 0, so the launch is valid."""
    _check_against_ref("triton", (3, 2, 70000, 2), torch.float32, device="cuda", seeds=(0,))


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
    assert layer.num_others(n) == n - 1  # no process group: this batch only


def _across_ranks(env: DistEnv, features, T, w, v, impl) -> dict:
    n = features.shape[0] // env.world_size
    mine = slice(env.rank * n, (env.rank + 1) * n)
    x = features[mine].clone().requires_grad_()
    t = T.clone().requires_grad_()
    o = minibatch_discrimination(x, t, impl=impl, across_ranks=True)
    # every rank takes the R1-like double backward together (the gather's backward is a
    # collective)
    gx, gt = torch.autograd.grad(_first_loss(o, w[mine]), (x, t), create_graph=True)
    d2x, d2t = torch.autograd.grad((gx * v[mine]).sum(), (x, t))
    layer = MinibatchDiscrimination(4, 2, 3, across_ranks=True)
    return {"o": o.detach(), "gx": gx.detach(), "gt": gt.detach(), "d2x": d2x, "d2t": d2t,
            "num_others": layer.num_others(n)}


@pytest.mark.parametrize("impl", ["ref", "cpu", pytest.param("triton", marks=needs_triton)])
def test_across_two_ranks_equals_one_process_on_the_whole_batch(impl, tmp_path):
    """Two gloo ranks with 5 samples each against one process on all 10: each rank's o and
    features gradients (first and second order) are its rows of the whole batch's; T is
    replicated, so its gradients summed over the ranks are the whole batch's (what DDP's
    all-reduce forms, up to its mean). float64 (ref, cpu): equal to rounding; Triton takes fp32
    (float64 would run the cpu path), where the two runs' matmuls over 5 and 10 rows may round
    differently: fp32 tolerance."""
    dtype = torch.float32 if impl == "triton" else torch.float64
    tol = 2e-6 if impl == "triton" else 1e-12
    features, T, w, v = _inputs(10, 4, 2, 3, seed=5, dtype=dtype)
    whole = _run(impl, features, T, w, v)
    ranks = run_ranks(2, _across_ranks, features, T, w, v, impl, tmp_path=tmp_path)
    for key, i in (("o", 0), ("gx", 1), ("d2x", 3)):
        got = torch.cat([r[key] for r in ranks])
        _close(got, whole[i], tol, f"{impl} {key}")
    for key, i in (("gt", 2), ("d2t", 4)):
        _close(ranks[0][key] + ranks[1][key], whole[i], tol, f"{impl} {key}")
    assert [r["num_others"] for r in ranks] == [9, 9]
    # without gathering, each rank's samples would only be compared among themselves
    alone = minibatch_discrimination(features[:5], T, impl=impl)
    assert not torch.allclose(alone, whole[0][:5])


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
