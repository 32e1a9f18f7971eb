"""Choosing an op's implementation: ``impl="auto" | "ref" | "cpu" | "triton"``.

* ``ref``: the plain-torch reference twin, written for clarity, the definition of the op.
* ``cpu``: the fast path made of torch ops (it runs on any device).
* ``triton``: the Triton kernels; on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``
  (how the tests check them on a machine without a GPU). Inputs the kernels do not take (float64,
  integer dtypes) run the ``cpu`` path instead, said once in the log.
* ``auto``: the path :data:`AUTO_TABLE` names for the op, the device type and the input's size
  class: the one measured fastest there. A device or size class nobody has measured gets the
  table's ``"*"`` row, which is a torch path: ``auto`` never picks Triton on an architecture
  where a Triton kernel has not been measured faster than torch (``benchmarks/gpu_check.py``
  measures it on a GPU).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

IMPLS = ("auto", "ref", "cpu", "triton")

# dtypes the Triton kernels compute (in fp32, or with bf16 / fp16 tensor-core dots)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class AutoChoice:
    """``auto`` runs ``impl`` for ``op`` on ``device`` (a torch device type or ``"*"``) for
    inputs of ``size_class`` (the op's own classes, or ``"*"``); ``evidence`` is the measurement
    it rests on."""

    op: str
    device: str
    size_class: str
    impl: str
    evidence: str


# Measured on 2026-12-02 on a 2-core CPU (fp32, 2 threads) by benchmarks/ops_auto.py, forward and
# backward (and the double backward where D's R1 / WGAN-GP takes one) at the shapes the shipped
# configs use; "ratio" is the chosen path's time / the other path's. No GPU has been measured: on
# CUDA the torch paths run (the "*" rows) until benchmarks/gpu_check.py shows a Triton kernel
# faster on that architecture.
AUTO_TABLE: tuple[AutoChoice, ...] = (
    AutoChoice("upsample_conv2d", "cpu", "small", "ref",
               "2026-12-02, benchmarks/ops_auto.py, the 11 config shapes of this class (4x4 "
               "inputs; N*H*W < 512; 8x8 with C_in*C_out < 64^2, see size_class): ratio "
               "0.33-0.82"),
    AutoChoice("upsample_conv2d", "cpu", "large", "cpu",
               "2026-12-02, benchmarks/ops_auto.py, the 21 other config shapes (8x8 at N=16 and "
               "64 channels up to 512x512 inputs): ratio 0.33-0.76"),
    AutoChoice("upsample_conv2d", "*", "*", "cpu",
               "no GPU measurement; the phase path does 4/9 of the multiply-adds"),
    AutoChoice("minibatch_stddev", "cpu", "*", "cpu",
               "benchmarks/minibatch_stddev.py (1 thread, N 4-32 x C 16-2560 x 4x4, G=4): ref / "
               "cpu 1.09-1.72x forward+backward, 1.15-1.83x with R1's double backward; forward "
               "(no grad) ~1.0x at C <= 64 (the reference's ops, in place), 1.2-1.4x above"),
    AutoChoice("minibatch_stddev", "*", "*", "cpu",
               "no GPU measurement; its backward is 2 elementwise ops on saved deviations and its "
               "double backward one analytic formula, where the ref replays autograd's chain"),
    AutoChoice("minibatch_discrimination", "*", "*", "cpu",
               "2026-12-02, benchmarks/ops_auto.py, grid25_mlp's N=128 A=128 B=8 C=4 (the only "
               "config with it): ratio 1.05-1.09 in the full table, 0.67-0.79 timed alone "
               "(--repeats 21): a tie; kept because the ref forms N*N*B*C elements (its double "
               "backward's graph too) where the cpu path stays within ELEMENT_BUDGET"),
    AutoChoice("modulated_conv2d", "cpu", "*", "cpu",
               "2026-12-03, benchmarks/modulated_conv2d.py (fp32, 2 threads, N=8, 3x3, "
               "demodulated, median of 5): ref / cpu forward+backward 1.26-10.8x (256->256 at "
               "16x16 and 32x32, 512->512 at 8x8, up=1 and up=2), forward 1.13-9.5x"),
    AutoChoice("modulated_conv2d", "*", "*", "cpu",
               "no GPU measurement; one shared-weight convolution instead of N * C_out "
               "per-sample weights in a grouped one"),
)


def auto_choice(op: str, device: str, size_class: str = "*") -> AutoChoice:
    """The :data:`AUTO_TABLE` row for ``op``: exact device and size class first, then the
    device's ``"*"`` class, then the ``"*"`` device."""
    for dev, cls in ((device, size_class), (device, "*"), ("*", size_class), ("*", "*")):
        for row in AUTO_TABLE:
            if (row.op, row.device, row.size_class) == (op, dev, cls):
                return row
    raise KeyError(f"no AUTO_TABLE row for op {op!r} (device {device!r}, size class "
                   f"{size_class!r})")


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """Triton kernels run on CPU tensors (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _say_once(message: str) -> None:
    log.warning(message)


def resolve_impl(impl: str, x: torch.Tensor, op: str, size_class: str = "*") -> str:
    """The implementation ``op`` runs for ``x`` (of the op's ``size_class``); a clear error for
    one that cannot run."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl={impl!r} is not one of {' | '.join(IMPLS)}")
    asked = impl
    if impl == "auto":
        impl = auto_choice(op, x.device.type, size_class).impl
    if impl != "triton":
        return impl
    if not triton_available():
        if asked == "auto":
            _say_once(f"{op}: Triton is not installed, using the torch path (impl='cpu')")
            return "cpu"
        raise RuntimeError(f"{op}: impl='triton' needs the triton package (pip install triton)")
    if x.dtype not in TRITON_DTYPES:
        _say_once(f"{op}: the Triton kernels do not take {x.dtype}; using the torch path "
                  f"(impl='cpu') for it")
        return "cpu"
    if not x.is_cuda and not triton_interpreted():
        if asked == "auto":
            return "cpu"
        raise RuntimeError(f"{op}: impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 to "
                           f"run the kernels on CPU tensors (slow; for tests)")
    return impl
