"""Minibatch standard deviation (PGGAN / StyleGAN2), optionally over the batch of every rank.

The batch is split into groups of ``G = min(group_size, N)`` consecutive samples (sample ``i`` is
in group ``i // G``), so a batch cut into micro-batches or per-rank shards whose sizes are
multiples of ``G`` gets the same statistics as the whole batch (StyleGAN2 strides instead, which
ties the statistic to how the batch is split). For each group, the std over the group of every
feature (``sqrt(var + eps)``, biased variance; eps keeps the gradient finite when all samples of
a group are equal, e.g. G = 1) is averaged over the ``C / num_channels`` channels of each channel
group and over all pixels: ``num_channels`` scalars per group, appended to every sample of the
group as constant feature maps.

``across_ranks=True`` forms the groups over the batch of all data-parallel ranks (gathered, in
rank order, gradients flowing back to every rank): with one or two images per GPU at 1024^2 the
groups of one rank's batch would be too small to mean anything.

Implementations (``impl``): ``ref`` plain torch; ``cpu`` one ``var_mean`` pass and a hand-written
backward that saves only the input; ``triton`` kernels for the statistic and its backward. The
hand-written backwards are torch expressions when a double backward is asked for (R1, WGAN-GP).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from scalegan.ops._impl import resolve_impl


def _group_size(n: int, group_size: int) -> int:
    if group_size < 1:
        raise ValueError(f"minibatch_stddev: group_size must be >= 1, got {group_size}")
    g = min(group_size, n)
    if n % g != 0:
        raise ValueError(f"minibatch_stddev: batch size N={n} is not divisible by the group size "
                         f"min(group_size={group_size}, N)={g}; use a per-device batch that is a "
                         f"multiple of {group_size} or smaller than it")
    return g


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, num_channels: int = 1,
                     impl: str = "auto", across_ranks: bool = False,
                     eps: float = 1e-8) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` -> ``(N, C + num_channels, H, W)``: ``x`` and the statistic maps.

    ``N`` (the batch of all ranks with ``across_ranks``) must be divisible by
    ``min(group_size, N)``; with ``across_ranks`` every rank must pass the same ``N``.
    """
    if x.ndim != 4:
        raise ValueError(f"minibatch_stddev expects (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if num_channels < 1 or c % num_channels != 0:
        raise ValueError(f"minibatch_stddev: C={c} channels cannot be split into "
                         f"num_channels={num_channels} equal groups")
    impl = resolve_impl(impl, x, "minibatch_stddev")
    world = dist.get_world_size() if across_ranks and dist.is_initialized() else 1
    xs = x
    if world > 1:
        from torch.distributed.nn.functional import all_gather

        xs = torch.cat(all_gather(x.contiguous()))  # (world * N, C, H, W), rank order
    g = _group_size(xs.shape[0], group_size)
    stats = group_stddev(xs, g, num_channels, impl, eps)  # (groups, F) in fp32
    first = dist.get_rank() * n if world > 1 else 0  # this rank's first sample in xs
    group_of = torch.arange(first, first + n, device=x.device) // g
    y = stats[group_of].to(x.dtype)[:, :, None, None].expand(n, num_channels, h, w)
    return torch.cat([x, y], dim=1)  # (N, C + F, H, W)


def group_stddev(x: torch.Tensor, group_size: int, num_channels: int, impl: str,
                 eps: float = 1e-8) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N // G, F)`` fp32: mean over each channel group and all pixels of
    the per-feature std over each group of G consecutive samples."""
    if impl == "ref":
        return group_stddev_ref(x, group_size, num_channels, eps)
    return _GroupStddev.apply(x, group_size, num_channels, eps, impl)


def _grouped(x: torch.Tensor, group_size: int, num_channels: int) -> torch.Tensor:
    n, c, h, w = x.shape
    # low-precision inputs: the variance of small deviations needs fp32; the statistic is tiny
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return x.reshape(n // group_size, group_size, num_channels, c // num_channels, h, w)


def group_stddev_ref(x: torch.Tensor, group_size: int, num_channels: int,
                     eps: float = 1e-8) -> torch.Tensor:
    """The definition in plain torch ops."""
    y = _grouped(x, group_size, num_channels)  # (groups, G, F, C/F, H, W)
    y = y - y.mean(dim=1, keepdim=True)  # deviation from the group mean
    y = y.square().mean(dim=1)  # (groups, F, C/F, H, W) biased variance over the group
    return (y + eps).sqrt().mean(dim=(2, 3, 4))  # (groups, F)


def _stats_backward(x: torch.Tensor, grad_stats: torch.Tensor, group_size: int,
                    num_channels: int, eps: float) -> torch.Tensor:
    """dL/dx from dL/dstats, in differentiable torch ops:
    ``dx_k = grad / (C/F * H * W) * (x_k - mean) / (G * std)`` for member k of a group."""
    y = _grouped(x, group_size, num_channels)
    var, mean = torch.var_mean(y, dim=1, correction=0, keepdim=True)
    per_element = y[0, 0, 0].numel()  # C/F * H * W
    coef = grad_stats.to(y.dtype)[:, None, :, None, None, None] / (per_element * group_size)
    return (coef * (y - mean) / (var + eps).sqrt()).reshape(x.shape).to(x.dtype)


class _GroupStddev(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group_size, num_channels, eps, impl):
        ctx.save_for_backward(x)
        ctx.args = group_size, num_channels, eps, impl
        if impl == "triton":
            from scalegan.kernels import minibatch_stddev as kernels

            return kernels.group_stddev_forward(x, group_size, num_channels, eps)
        var = torch.var_mean(_grouped(x, group_size, num_channels), dim=1, correction=0)[0]
        return (var + eps).sqrt().mean(dim=(2, 3, 4))  # (groups, F)

    @staticmethod
    def backward(ctx, grad_stats):
        (x,) = ctx.saved_tensors
        group_size, num_channels, eps, impl = ctx.args
        if impl == "triton" and not torch.is_grad_enabled():
            from scalegan.kernels import minibatch_stddev as kernels

            grad_x = kernels.group_stddev_backward(x, grad_stats, group_size, num_channels, eps)
        else:  # the cpu path, and any double backward: differentiable torch ops
            grad_x = _stats_backward(x, grad_stats, group_size, num_channels, eps)
        return grad_x, None, None, None, None
