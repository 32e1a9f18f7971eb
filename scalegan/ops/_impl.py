"""Choosing an op's implementation: ``impl="auto" | "ref" | "cpu" | "triton"``.

* ``ref``: the plain-torch reference twin, written for clarity, the definition of the op.
* ``cpu``: the fast path made of torch ops (it runs on any device; it is what ``auto`` picks
  off CUDA).
* ``triton``: the Triton kernels; on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``
  (how the tests check them on a machine without a GPU).
* ``auto``: ``triton`` for CUDA tensors when Triton is installed, else ``cpu``; a CUDA tensor
  falling back to ``cpu`` is reported once per op.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch

log = logging.getLogger(__name__)

IMPLS = ("auto", "ref", "cpu", "triton")


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """Triton kernels run on CPU tensors (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _warn_fallback(op: str) -> None:
    log.warning("%s: Triton is not installed, using the torch path (impl='cpu') on CUDA", op)


def resolve_impl(impl: str, x: torch.Tensor, op: str) -> str:
    """The implementation ``op`` runs for ``x``; a clear error for one that cannot run."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl={impl!r} is not one of {' | '.join(IMPLS)}")
    if impl == "auto":
        if x.is_cuda and triton_available():
            return "triton"
        if x.is_cuda:
            _warn_fallback(op)
        return "cpu"
    if impl == "triton":
        if not triton_available():
            raise RuntimeError(f"{op}: impl='triton' needs the triton package (pip install triton)")
        if not x.is_cuda and not triton_interpreted():
            raise RuntimeError(f"{op}: impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 to "
                               f"run the kernels on CPU tensors (slow; for tests)")
    return impl
