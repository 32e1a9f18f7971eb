"""How ``impl`` resolves: the ``auto`` table, and inputs the Triton kernels do not take."""

from __future__ import annotations

import logging

import pytest
import torch

from scalegan.ops import _impl, minibatch_discrimination, minibatch_stddev, upsample_conv2d
from scalegan.ops._impl import AUTO_TABLE, AutoChoice, auto_choice, resolve_impl

OPS = ("upsample_conv2d", "minibatch_stddev", "minibatch_discrimination", "modulated_conv2d")


@pytest.mark.parametrize("op", OPS)
def test_auto_never_picks_triton_where_no_gpu_measured_it(op):
    # no row of the shipped table names a GPU measurement, so no row may pick Triton
    assert not [r for r in AUTO_TABLE if r.impl == "triton"]
    assert auto_choice(op, "cuda").impl in ("ref", "cpu")
    assert auto_choice(op, "cpu", "any class").impl in ("ref", "cpu")


def test_every_row_names_its_evidence_and_a_known_impl():
    for row in AUTO_TABLE:
        assert row.op in OPS and row.impl in ("ref", "cpu", "triton") and len(row.evidence) > 20


@pytest.fixture
def triton_everywhere(monkeypatch):
    """A table whose every row picks Triton, as one would after a GPU measurement."""
    rows = tuple(AutoChoice(op, "*", "*", "triton", "test") for op in OPS)
    monkeypatch.setattr(_impl, "AUTO_TABLE", rows)
    _impl._say_once.cache_clear()


@pytest.mark.skipif(not _impl.triton_available() or not _impl.triton_interpreted(),
                    reason="needs triton and TRITON_INTERPRET=1 (set by conftest without a GPU)")
@pytest.mark.parametrize("dtype", [torch.float64, torch.int32])
def test_unsupported_dtypes_take_the_torch_path_under_auto(triton_everywhere, dtype, caplog):
    x = torch.zeros(2, 3, 4, 4, dtype=dtype)
    with caplog.at_level(logging.WARNING, logger="scalegan.ops._impl"):
        assert resolve_impl("auto", x, "upsample_conv2d") == "cpu"
        assert resolve_impl("auto", x, "upsample_conv2d") == "cpu"
        assert resolve_impl("triton", x, "upsample_conv2d") == "cpu"
    said = [r for r in caplog.records if str(dtype) in r.getMessage()]
    assert len(said) == 1, "the fallback is said once"
    assert resolve_impl("auto", x.float(), "upsample_conv2d") == "triton"


@pytest.mark.skipif(not _impl.triton_available() or not _impl.triton_interpreted(),
                    reason="needs triton and TRITON_INTERPRET=1 (set by conftest without a GPU)")
def test_float64_ops_under_a_triton_table_match_the_reference(triton_everywhere):
    # each op, float64, auto resolving to Triton by the table: the torch path runs and agrees
    # with the reference to float64 rounding
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=g)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=g)
    torch.testing.assert_close(upsample_conv2d(x, w, None, "lrelu"),
                               upsample_conv2d(x, w, None, "lrelu", impl="ref"),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(minibatch_stddev(x, 2), minibatch_stddev(x, 2, impl="ref"),
                               rtol=1e-12, atol=1e-12)
    f, T = torch.randn(5, 6, dtype=torch.float64, generator=g), torch.randn(6, 3, 2,
                                                                           dtype=torch.float64,
                                                                           generator=g)
    torch.testing.assert_close(minibatch_discrimination(f, T / 6),
                               minibatch_discrimination(f, T / 6, impl="ref"),
                               rtol=1e-12, atol=1e-12)


def test_an_unknown_impl_is_named():
    with pytest.raises(ValueError, match="impl='fastest' is not one of"):
        resolve_impl("fastest", torch.zeros(1), "upsample_conv2d")
