"""The one place scalegan reaches into ZeRO's private attributes checks them at start-up."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from scalegan.parallel.deepspeed import ZeroAdapter  # noqa: E402


def _engine(**optimizer_attrs):
    engine = SimpleNamespace(optimizer=SimpleNamespace(**optimizer_attrs),
                             _backward_prologue=None, _backward_epilogue=None,
                             _running_engine_backward=False)
    return engine


def test_a_zero_optimizer_without_the_attributes_is_refused_with_the_version_needed():
    engine = _engine(optimizer=None, check_grad_overflow=False)  # no flat partitions
    with pytest.raises(RuntimeError, match=r"network D has no single_partition_of_fp32_groups"
                                           r".*needs DeepSpeed 0\.19\.x"):
        ZeroAdapter(engine, 2, "D")
    engine = _engine(fp32_partitioned_groups_flat=[], sub_group_to_group_id={}, optimizer=None)
    del engine._backward_epilogue  # what a joint backward of several engines calls
    with pytest.raises(RuntimeError, match="network G has no engine._backward_epilogue"):
        ZeroAdapter(engine, 3, "G")


def test_the_attributes_it_needs_are_checked_and_overflow_checking_turned_on():
    engine = _engine(single_partition_of_fp32_groups=[], optimizer=None,
                     check_grad_overflow=False)
    ZeroAdapter(engine, 1, "G")
    assert engine.optimizer.check_grad_overflow is True
