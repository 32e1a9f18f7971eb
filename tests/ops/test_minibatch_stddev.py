"""minibatch_stddev: the cpu and Triton paths against the plain reference (output, input gradient
and the double backward R1 / WGAN-GP take); across two ranks against one process over the
concatenated batch; the kernels' launch grids and int64 addressing at sizes no test can run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from scalegan.kernels import minibatch_stddev as kernels

from scalegan.ops import minibatch_stddev
from scalegan.parallel.env import DistEnv

from parallel.spawn import run_ranks

# Triton paths run on CUDA tensors when there is a GPU, else on CPU tensors in the interpreter
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (dtype, atol as a fraction of the reference's largest magnitude, rtol). The kernels have no
# tl.dot (no TF32 question) and every path, the reference included, computes in fp32 from the
# same input values and rounds to the input's dtype at the same points (the statistic maps, dL/dx,
# the double backward's result). fp32 therefore differs by summation order only (1e-5). bf16: a
# value that differs in the last fp32 bits may round to the neighbouring bf16 (2^-8 = 0.4%
# apart), and the double backward starts from a rounded dL/dx and rounds again: 1% allows
# about two such steps and is still far below a missing term of the derivative.
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 1e-2)}

# (N, C, H, W, group_size, num_channels): minimal, non-aligned (odd, prime), a group of the whole
# batch, larger, and one whose channel group (E = 37 * 49 = 1813 elements) spans several element
# blocks with a partial last one
SHAPES = [(1, 1, 1, 1, 4, 1), (6, 5, 3, 7, 3, 1), (12, 9, 5, 5, 4, 3), (13, 7, 3, 3, 13, 7),
          (16, 32, 8, 8, 4, 2), (8, 37, 7, 7, 4, 1)]


def _run(impl, x, group_size, num_channels, head, probe):
    """Output, dL/dx and the double backward through it, for a D-like head on the statistic maps
    alone (the copied input channels would swamp the op's own derivatives) whose gradient at the
    maps depends on x (it squares them: second derivatives flow through both the op's input
    gradient and the gradient it receives)."""
    x = x.detach().requires_grad_(True)
    y = minibatch_stddev(x, group_size, num_channels, impl=impl)
    maps = y[:, x.shape[1]:].float()  # (N, F, H, W)
    (grad,) = torch.autograd.grad((maps.square() * head).sum(), x, create_graph=True)
    (grad2,) = torch.autograd.grad((grad.float() * probe).sum(), x)
    return y.detach().float(), grad.detach().float(), grad2.float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", ["cpu", "triton"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, impl, dtype):
    n, c, h, w, group, channels = shape
    gen = torch.Generator().manual_seed(n * c)
    x = torch.randn(n, c, h, w, generator=gen).to(DEVICE, dtype)
    head = torch.randn(n, channels, h, w, generator=gen).to(DEVICE)
    probe = torch.randn(n, c, h, w, generator=gen).to(DEVICE)
    atol, rtol = TOLERANCE[dtype]
    want = _run("ref", x, group, channels, head, probe)
    got = _run(impl, x, group, channels, head, probe)
    for name, g, r in zip(("output", "grad x", "double backward"), got, want, strict=True):
        torch.testing.assert_close(g, r, atol=atol * float(r.abs().max()), rtol=rtol,
                                   msg=lambda m, name=name: f"{impl} {name}: {m}")


@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_gradcheck_float64(impl):
    # gradgradcheck also perturbs the incoming gradient: the cpu path's dL/d(dL/dstats) term
    x = torch.randn(8, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: minibatch_stddev(x, 4, 2, impl=impl), (x,))
    assert torch.autograd.gradgradcheck(lambda x: minibatch_stddev(x, 4, 2, impl=impl), (x,))


@pytest.mark.parametrize("impl", ["cpu", "triton"])
def test_third_derivative_matches_reference(impl):
    # the analytic double backward must itself be differentiable, and correctly so: its saved
    # intermediates depend on x too (a path that dropped them would give a wrong third derivative)
    dtype = torch.float64 if impl == "cpu" else torch.float32
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8, 6, 3, 3, generator=gen, dtype=dtype).to(DEVICE)
    results = []
    for which in ("ref", impl):
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(minibatch_stddev(xi, 4, 2, impl=which).square().sum(), xi,
                                   create_graph=True)
        (g2,) = torch.autograd.grad(g.square().sum(), xi, create_graph=True)
        (g3,) = torch.autograd.grad((g2 * xi).sum(), xi)
        results.append(g3)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(results[1], results[0], rtol=tol,
                               atol=tol * float(results[0].abs().max()))


def test_no_grad_forward_matches_reference():
    # without a graph to record the cpu path takes its in-place route
    x = torch.randn(12, 10, 3, 3)
    with torch.no_grad():
        got = minibatch_stddev(x, 4, 2, impl="cpu")
    torch.testing.assert_close(got, minibatch_stddev(x, 4, 2, impl="ref"), atol=1e-6, rtol=1e-6)


def test_groups_are_consecutive_samples():
    x = torch.randn(8, 3, 2, 2)
    y = torch.cat([x[:4], x[4:] * 10])
    a, b = minibatch_stddev(x, 4, 1, impl="cpu"), minibatch_stddev(y, 4, 1, impl="cpu")
    torch.testing.assert_close(a[:4], b[:4])  # the first group does not see the second
    torch.testing.assert_close(b[4:, 3], a[4:, 3] * 10, rtol=1e-4, atol=0)


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` is recorded, not run."""

    def __init__(self, name, sink):
        self.name, self.sink = name, sink

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.sink.append((self.name, grid, args, kwargs))


KERNELS = ("_group_stddev_fwd_kernel", "_group_stddev_bwd_kernel",
           "_group_stddev_bwd_bwd_kernel")


def _capture(monkeypatch, x, group_size, num_channels):
    launches = []
    for name in KERNELS:
        monkeypatch.setattr(kernels, name, _Recorder(name, launches))
    grad = torch.empty(x.shape[0] // group_size, num_channels, device=x.device)
    kernels.group_stddev_forward(x, group_size, num_channels, 1e-8)
    kernels.group_stddev_backward(x, grad, group_size, num_channels, 1e-8)
    kernels.group_stddev_backward_backward(x, grad, x, group_size, num_channels, 1e-8)
    return launches


@pytest.mark.parametrize("shape", [(64, 4096, 128, 128, 4, 1), (16, 512, 4, 4, 4, 1),
                                   (4, 3, 1, 5, 4, 3), (10, 6, 2, 2, 5, 2)],
                         ids=["2^32-elements", "ffhq-4x4", "tiny", "odd"])
def test_launch_grid_covers_the_input_within_limits(shape, monkeypatch):
    n, c, h, w, group, channels = shape
    x = torch.empty(n, c, h, w, device="meta")  # never allocated, never run
    pairs, e = n // group * channels, c // channels * h * w
    launches = _capture(monkeypatch, x, group, channels)
    assert [name for name, *_ in launches] == list(KERNELS)
    for name, grid, args, kwargs in launches:
        block = kwargs["BLOCK_E"]
        assert len(grid) == 1 and 0 < grid[0] < 2**31, (name, grid)  # axis 0 only
        assert grid[0] == pairs * -(-e // block), (name, grid)  # one program per element block
        assert args[-2] == grid[0] // pairs  # NUM_BLOCKS
        # as many programs as the target asks where the input has the elements for them
        assert grid[0] >= min(kernels.TARGET_PROGRAMS, pairs * -(-e // kernels.BLOCKS_E[-1]))


_TTIR_SCRIPT = textwrap.dedent("""
    import json, re, sys
    import torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from scalegan.kernels import minibatch_stddev as kernels

    launches = []
    class Recorder:
        def __init__(self, fn):
            self.fn = fn
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.fn, grid, args, kwargs))
    for name in sys.argv[1:]:
        setattr(kernels, name, Recorder(getattr(kernels, name)))
    x = torch.empty(64, 4096, 128, 128, device="meta")  # 2^32 elements, E = 2^26 per group
    grad = torch.empty(16, 1, device="meta")
    kernels.group_stddev_forward(x, 4, 1, 1e-8)
    kernels.group_stddev_backward(x, grad, 4, 1, 1e-8)
    kernels.group_stddev_backward_backward(x, grad, x, 4, 1, 1e-8)
    out = {}
    for fn, grid, args, kwargs in launches:
        sig = {}
        for name, value in zip(fn.arg_names, args):
            if isinstance(value, torch.Tensor):
                sig[name] = "*fp32"
            elif isinstance(value, int):
                sig[name] = "i64" if abs(value) >= 2**31 else "i32"
            else:
                sig[name] = "fp32"
        sig.update({k: "constexpr" for k in kwargs})
        constexprs = {(fn.arg_names.index(k),): v for k, v in kwargs.items()}
        compiled = triton.compile(ASTSource(fn, sig, constexprs), target=GPUTarget("cuda", 80, 32))
        # offset types of every tt.addptr on a tensor of pointers (the per-element addresses)
        out[fn.__name__] = re.findall(r"tt\\.addptr [^\\n]*: tensor<\\d+x!tt\\.ptr<f32>>, "
                                      r"tensor<\\d+x(i\\d+)>", compiled.asm["ttir"])
    print(json.dumps(out))
""")


def test_element_addresses_are_int64_in_the_compiled_kernels():
    # compiled for sm_80 (no GPU needed) in a process without the interpreter, from the launches
    # an input of 2^32 elements makes; every per-element address must be formed in int64
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _TTIR_SCRIPT, *KERNELS], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    offsets = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(offsets) == sorted(KERNELS)
    for name, types in offsets.items():
        assert types and set(types) == {"i64"}, (name, types)


def test_aot_launches_reach_every_dtype_and_block(monkeypatch):
    launches = []
    for name in KERNELS:
        monkeypatch.setattr(kernels, name, _Recorder(name, launches))
    for call in kernels.aot_launches():
        call()
    assert kernels.TENSOR_CORE_KERNELS == ()
    seen = {(name, args[0].dtype, kwargs["BLOCK_E"]) for name, _, args, kwargs in launches}
    assert seen == {(name, dtype, block) for name in KERNELS for block in kernels.BLOCKS_E
                    for dtype in (torch.float32, torch.bfloat16, torch.float16)}
    ints = [a for *_, args, _ in launches for a in args if isinstance(a, int)]
    assert any(a % 16 == 0 for a in ints) and any(a % 16 and a != 1 for a in ints)
    assert any(a >= 2**31 for a in ints)  # int64 arguments
    assert any(args[-6] == 1 for *_, args, _ in launches)  # G = 1, specialised to a constant
    assert any(args[0].numel() >= 2**31 for *_, args, _ in launches)


def _across_ranks(env: DistEnv, cases: list, impl: str) -> list[dict]:
    results = []
    for x, weight in cases:
        n = x.shape[0] // env.world_size
        mine = slice(env.rank * n, (env.rank + 1) * n)
        xi = x[mine].clone().requires_grad_(True)
        y = minibatch_stddev(xi, 4, 2, impl=impl, across_ranks=True)
        (y * weight[mine]).sum().backward()
        results.append({"y": y.detach(), "grad": xi.grad})
    return results


@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_across_two_ranks_equals_one_process_on_the_whole_batch(impl, tmp_path):
    # 2 samples per rank: every group spans both ranks; 4: each rank holds a whole group
    gen = torch.Generator().manual_seed(0)
    cases = [(torch.randn(2 * per_rank, 6, 3, 3, dtype=torch.float64, generator=gen),
              torch.randn(2 * per_rank, 8, 3, 3, dtype=torch.float64, generator=gen))
             for per_rank in (2, 4)]
    ranks = run_ranks(2, _across_ranks, cases, impl, tmp_path=tmp_path)
    for case, (x, weight) in enumerate(cases):
        per_rank = x.shape[0] // 2
        whole = x.clone().requires_grad_(True)
        y = minibatch_stddev(whole, 4, 2, impl=impl)
        (y * weight).sum().backward()
        for r, got in enumerate(ranks):
            mine = slice(per_rank * r, per_rank * (r + 1))
            torch.testing.assert_close(got[case]["y"], y.detach()[mine], rtol=1e-12, atol=0)
            torch.testing.assert_close(got[case]["grad"], whole.grad[mine], rtol=1e-10,
                                       atol=1e-14)
    # without gathering, each rank's pair would be its own group: a different statistic
    x = cases[0][0]
    assert not torch.allclose(minibatch_stddev(x[:2], 4, 2, impl=impl),
                              minibatch_stddev(x, 4, 2, impl=impl)[:2])
