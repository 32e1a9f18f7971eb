"""What ``impl="auto"`` costs against the reference, for every fused op at every shape the shipped
configs use, timed in one run on this machine's CPU (fp32).

Shapes come from the configs themselves: each config whose ``model.arch`` is progressive,
stackgan, dcgan or mlp builds its networks on the meta device (the ``ref`` ops, no memory) and
runs every phase of its family's training step once at the final resolution on a micro-batch of
one sample per stream; forward pre-hooks on the op modules record what each op receives:

* ``upsample_conv2d`` (:class:`UpConv2d`): ``(N, C_in, C_out, H, W)``, H x W the input;
* ``minibatch_stddev`` (D's last block): ``(N, C, H, W)`` with its group size and channels;
* ``minibatch_discrimination`` (``model.mbdisc_kernels > 0``): ``(N, A, B, C)``.

``N`` is the per-rank micro-batch, ``train.batch_size / train.grad_accum / ranks``, where the
configs that train in bf16 (the multi-GPU ones, written for one 8-GPU node; ``--gpus``) have 8
ranks and the CPU demos one. Shapes are deduplicated. A shape whose reference forward+backward
would take more than ``--budget`` multiply-adds (the widest and the 1024^2 levels: up to ~20 s
per run here at their batch) is timed at batch 1 instead, with at most 2 repeats, marked
``(of N<k>)``; the ratios are what to read.

Each op runs forward + backward (to every input: x, weight and bias; features and T; the
gradient of ``upsample_conv2d``'s output comes in the output's memory format, as the next layer's
backward gives it) and, for the
D-side ops (minibatch stddev and discrimination, which R1 and WGAN-GP differentiate through), a
double backward: ``s = <op(x), r>``, ``g = ds/dx`` with ``create_graph=True``, then the gradient
of ``s + ||g||^2``. ``ref`` and ``cpu`` alternate, median of ``--repeats`` after one warm-up;
``auto`` is whichever of the two ``resolve_impl`` picks for that input (recorded from the op's own
call), so its time is that path's. The last line is the worst auto / ref ratio.

Rows run from the upsampling shapes, largest last, to the D-side ops: those are timed on the
heap the large shapes left (glibc serves their temporaries from it instead of fresh pages), as
in a training process; timed alone (``--configs``) the small ops' figures differ by up to ~1.5x.

    python benchmarks/ops_auto.py [--repeats 5] [--configs 'configs/*.yaml']
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib
import statistics
import time
from pathlib import Path

import torch
from model_memory import MetaServices, one_image_batches

import scalegan.ops._impl as impl_module
from scalegan.config import load_config
from scalegan.families import build_family
from scalegan.models.layers import MinibatchStddev, UpConv2d
from scalegan.ops import (
    MinibatchDiscrimination,
    minibatch_discrimination,
    minibatch_stddev,
    upsample_conv2d,
)

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("progressive", "stackgan", "dcgan", "mlp")
OPS = ("upsample_conv2d", "minibatch_stddev", "minibatch_discrimination")


# ------------------------------------------------------------------------------ shapes of configs


def config_shapes(path: str, gpus: int) -> set[tuple]:
    """``{(op, shape)}`` the networks of the config at ``path`` call, batch dimension first: the
    per-rank micro-batch, with ``gpus`` ranks for a bf16 (GPU) config and one otherwise."""
    cfg = load_config(path)
    if cfg.model.arch not in ARCHS:
        return set()
    cfg = load_config(path, ["model.ops_impl=ref"])  # the ref ops run on the meta device
    ranks = gpus if cfg.train.precision == "bf16" else 1
    n = max(1, cfg.train.batch_size // cfg.train.grad_accum // ranks)
    family = build_family(cfg, MetaServices())
    with torch.device("meta"):
        nets = family.build_networks()
    seen: set[tuple] = set()

    def record(module, args):
        x = args[0]
        if isinstance(module, UpConv2d):
            seen.add(("upsample_conv2d", (n, x.shape[1], module.out_channels, *x.shape[2:])))
        elif isinstance(module, MinibatchStddev):
            seen.add(("minibatch_stddev", (n, *x.shape[1:], module.group_size,
                                           module.num_channels)))
        elif isinstance(module, MinibatchDiscrimination):
            seen.add(("minibatch_discrimination", (n, module.in_features, module.num_kernels,
                                                   module.kernel_dim)))

    hooks = [m.register_forward_pre_hook(record) for net in nets.values() for m in net.modules()
             if isinstance(m, (UpConv2d, MinibatchStddev, MinibatchDiscrimination))]
    stage = family.stage(int(cfg.train.total_kimg * 1000))  # the final resolution
    mb = family.micro_batch(one_image_batches(family, cfg), family.svc)
    for spec in family.phases():
        for name, net in nets.items():
            net.requires_grad_(name in spec.trains)
        with contextlib.suppress(RuntimeError, NotImplementedError):  # no meta kernel: the
            spec.loss(nets, mb, stage)                                 # forward ran already
    for h in hooks:
        h.remove()
    return seen


# ---------------------------------------------------------------------------------------- timing


def make_case(op: str, shape: tuple, gen: torch.Generator):
    """``run(impl)``: one forward + backward (+ double backward for the D-side ops) of ``op``."""
    if op == "upsample_conv2d":
        n, c_in, c_out, h, w = shape
        x = torch.randn(n, c_in, h, w, generator=gen).requires_grad_(True)
        weight = (torch.randn(c_out, c_in, 3, 3, generator=gen) / (3 * c_in ** 0.5))
        weight.requires_grad_(True)
        bias = torch.randn(c_out, generator=gen).requires_grad_(True)
        grad_y = torch.randn(n, c_out, 2 * h, 2 * w, generator=gen)
        grad_y_cl = grad_y.contiguous(memory_format=torch.channels_last)

        def run(impl):
            y = upsample_conv2d(x, weight, bias, "lrelu", impl=impl)
            torch.autograd.grad(y, (x, weight, bias), grad_y if y.is_contiguous() else grad_y_cl)
        return run
    if op == "minibatch_stddev":
        n, c, h, w, group, channels = shape
        x = torch.randn(n, c, h, w, generator=gen).requires_grad_(True)
        r = torch.randn(n, c + channels, h, w, generator=gen)
        return _double_backward(lambda impl: minibatch_stddev(x, group, channels, impl=impl),
                                r, (x,))
    n, a, b, c = shape
    features = torch.randn(n, a, generator=gen).requires_grad_(True)
    t = (torch.randn(a, b, c, generator=gen) / a ** 0.5).requires_grad_(True)
    r = torch.randn(n, b, generator=gen)
    return _double_backward(lambda impl: minibatch_discrimination(features, t, impl=impl), r,
                            (features, t))


def _double_backward(op, r: torch.Tensor, inputs: tuple[torch.Tensor, ...]):
    def run(impl):
        s = (op(impl) * r).sum()
        (g,) = torch.autograd.grad(s, inputs[0], create_graph=True)
        torch.autograd.grad(s + g.square().sum(), inputs)
    return run


class _Picked(Exception):
    pass


def auto_pick(run, op: str) -> str:
    """The implementation ``impl="auto"`` resolves to inside the op for this case's input (the
    op's own ``resolve_impl`` call, with its size class; the op is stopped right there)."""
    original = impl_module.resolve_impl
    picked = []

    def spy(impl, x, name, *args, **kwargs):
        out = original(impl, x, name, *args, **kwargs)
        if name == op:
            picked.append(out)
            raise _Picked
        return out

    modules = [importlib.import_module(f"scalegan.ops.{name}") for name in OPS]
    modules = [m for m in modules if getattr(m, "resolve_impl", None) is original]
    for m in modules:
        m.resolve_impl = spy
    try:
        run("auto")
    except _Picked:
        pass
    finally:
        for m in modules:
            m.resolve_impl = original
    return picked[0]


def label(op: str, shape: tuple) -> str:
    if op == "upsample_conv2d":
        n, c_in, c_out, h, w = shape
        return f"N{n} {c_in}->{c_out} {h}x{w}"
    if op == "minibatch_stddev":
        n, c, h, w, group, channels = shape
        return f"N{n} C{c} {h}x{w} G{group} F{channels}"
    n, a, b, c = shape
    return f"N{n} A{a} B{b} C{c}"


def time_case(run, repeats: int) -> dict[str, float]:
    """Median seconds per impl, ``ref`` and ``cpu`` alternating after one warm-up round."""
    times: dict[str, list[float]] = {"ref": [], "cpu": []}
    for i in range(repeats + 1):
        for impl, out in times.items():
            t0 = time.perf_counter()
            run(impl)
            if i:
                out.append(time.perf_counter() - t0)
    return {impl: statistics.median(t) for impl, t in times.items()}


def ref_macs(op: str, shape: tuple) -> float:
    """Multiply-adds of the reference forward + backward, roughly (for the batch cap)."""
    if op == "upsample_conv2d":
        n, c_in, c_out, h, w = shape
        return 3 * n * c_in * c_out * 9 * 4 * h * w
    if op == "minibatch_discrimination":
        n, a, b, c = shape
        return 6 * n * n * b * c + 3 * n * a * b * c
    return 10 * shape[0] * shape[1] * shape[2] * shape[3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=str(ROOT / "configs" / "*.yaml"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gpus", type=int, default=8, help="ranks of the bf16 (GPU) configs")
    ap.add_argument("--budget", type=float, default=1e11,
                    help="reference multiply-adds above which a shape is timed at batch 1")
    args = ap.parse_args()
    cases: dict[tuple, list[str]] = {}
    for path in sorted(glob.glob(args.configs)):
        for case in config_shapes(path, args.gpus):
            cases.setdefault(case, []).append(Path(path).stem)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, fp32; "
          f"{len(cases)} shapes from {args.configs}")
    print(f"{'op':<26}{'shape':<30}{'ref ms':>10}{'cpu ms':>10}{'auto':>6}{'auto/ref':>10}"
          f"  configs")
    worst = None
    gen = torch.Generator().manual_seed(0)
    for (op, shape) in sorted(cases, key=lambda c: (OPS.index(c[0]), ref_macs(*c))):
        timed, repeats, name = shape, args.repeats, label(op, shape)
        if ref_macs(op, shape) > args.budget and shape[0] > 1:
            timed, repeats = (1, *shape[1:]), min(args.repeats, 2)
            name = f"{label(op, timed)} (of N{shape[0]})"
        run = make_case(op, timed, gen)
        pick = auto_pick(run, op)
        t = time_case(run, repeats)
        ratio = t[pick] / t["ref"]
        if worst is None or ratio > worst[0]:
            worst = ratio, op, name
        print(f"{op:<26}{name:<30}{t['ref'] * 1e3:>10.2f}{t['cpu'] * 1e3:>10.2f}{pick:>6}"
              f"{ratio:>10.2f}  {','.join(cases[(op, shape)])}", flush=True)
    print(f"worst auto/ref: {worst[0]:.2f} ({worst[1]} {worst[2]})")


if __name__ == "__main__":
    main()
