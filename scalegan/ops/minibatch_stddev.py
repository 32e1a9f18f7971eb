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

Implementations (``impl``): ``ref`` plain torch, differentiated by autograd; ``cpu`` torch ops
that save the deviations ``d = x - mean`` and ``s = sqrt(var + eps)`` from the forward, so the
input gradient is ``dL/dstats / (E * G) * d / s`` (two elementwise ops), and a double backward
(R1, WGAN-GP) that is one analytic formula (:class:`_GroupStddevGrad`); ``triton`` the kernels of
``scalegan.kernels.minibatch_stddev`` for the statistic, its input gradient and that gradient's
backward. (``torch.var_mean`` is not used: on the CPU its reduction over the small group axis
runs 10-40x slower than mean, subtract, square, mean.) Both fast paths stay differentiable to any
order: a third derivative recomputes the double backward in torch ops on the graph of ``x``.
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
    stats = group_stddev(xs, g, num_channels, impl, eps).to(x.dtype)  # (groups, F)
    first = dist.get_rank() * n if world > 1 else 0  # this rank's first sample in xs
    if first % g == 0 and n % g == 0:  # whole groups: a broadcast, cheaper than a gather
        if world > 1:
            stats = stats[first // g:(first + n) // g]
        y = stats[:, None, :, None, None].expand(n // g, g, num_channels, h, w)
        y = y.reshape(n, num_channels, h, w)
    else:
        group_of = torch.arange(first, first + n, device=x.device) // g
        y = stats[group_of][:, :, None, None].expand(n, num_channels, h, w)
    return torch.cat([x, y], dim=1)  # (N, C + F, H, W)


def group_stddev(x: torch.Tensor, group_size: int, num_channels: int, impl: str,
                 eps: float = 1e-8) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N // G, F)`` fp32 (fp64 for fp64 input): mean over each channel
    group and all pixels of the per-feature std over each group of G consecutive samples."""
    if impl == "ref":
        return group_stddev_ref(x, group_size, num_channels, eps)
    if impl == "cpu" and not (torch.is_grad_enabled() and x.requires_grad):
        # nothing to differentiate: the reference's ops, in place on their own temporaries
        y = _grouped(x, group_size, num_channels)
        y = y - y.mean(dim=1, keepdim=True)
        return y.square_().mean(dim=1).add_(eps).sqrt_().mean(dim=(2, 3, 4))
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


def _deviations(x: torch.Tensor, group_size: int, num_channels: int,
                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``d = x - mean`` over each group ``(groups, G, F, C/F, H, W)`` and ``s = sqrt(mean_k d_k^2
    + eps)`` ``(groups, 1, F, C/F, H, W)``, fp32 (fp64 for fp64). Not differentiable: in-place
    ops on its own temporaries (no autograd graph may be recording)."""
    y = _grouped(x, group_size, num_channels)
    d = y - y.mean(dim=1, keepdim=True)
    return d, (d * d).mean(dim=1, keepdim=True).add_(eps).sqrt_()


def _input_grad(x: torch.Tensor, grad_stats: torch.Tensor, d: torch.Tensor | None,
                s: torch.Tensor | None, group_size: int, num_channels: int, eps: float,
                impl: str) -> torch.Tensor:
    """dL/dx ``(N, C, H, W)`` in x's dtype: ``dx_k = grad / (E * G) * d_k / s`` with ``E = C/F *
    H * W``; from the saved ``d`` and ``s`` (cpu) or the kernel (triton)."""
    if impl == "triton":
        from scalegan.kernels import minibatch_stddev as kernels

        return kernels.group_stddev_backward(x, grad_stats, group_size, num_channels, eps)
    per_pair = d[0, 0, 0].numel() * group_size  # E * G
    coef = grad_stats.to(d.dtype)[:, None, :, None, None, None] / per_pair
    return (d * (coef / s)).reshape(x.shape).to(x.dtype)


class _GroupStddev(torch.autograd.Function):
    """``x`` -> the statistic ``(groups, F)``. Saves ``x`` (and, on the cpu path, ``d`` and ``s``:
    the backward is then two elementwise ops). Its backward is :class:`_GroupStddevGrad` when a
    graph of it is wanted (R1, WGAN-GP), else the same computation without a node."""

    @staticmethod
    def forward(ctx, x, group_size, num_channels, eps, impl):
        ctx.args = group_size, num_channels, eps, impl
        if impl == "triton":
            from scalegan.kernels import minibatch_stddev as kernels

            ctx.save_for_backward(x)
            return kernels.group_stddev_forward(x, group_size, num_channels, eps)
        d, s = _deviations(x, group_size, num_channels, eps)
        ctx.save_for_backward(x, d, s)
        return s.mean(dim=(1, 3, 4, 5))  # (groups, F)

    @staticmethod
    def backward(ctx, grad_stats):
        x, *saved = ctx.saved_tensors
        d, s = saved if saved else (None, None)  # triton: the kernel recomputes them
        if torch.is_grad_enabled():
            grad_x = _GroupStddevGrad.apply(x, grad_stats, d, s, *ctx.args)
        else:
            grad_x = _input_grad(x, grad_stats, d, s, *ctx.args)
        return grad_x, None, None, None, None


class _GroupStddevGrad(torch.autograd.Function):
    """``(x, dL/dstats)`` -> dL/dx, with the analytic backward (per element, over the members k
    of a group, ``c = dL/dstats / (E * G)``, ``u = dL/d(dL/dx)``)::

        dL/dx_k      = c / s * ((u_k - mean_j u_j) - d_k * sum_j u_j d_j / (G * s^2))
        dL/d(dstats) = sum over the pair's elements of sum_j u_j d_j / s / (E * G)

    from the saved ``d`` and ``s`` (cpu) or the kernel (triton). When that backward must itself
    be differentiable (a third derivative), it is the same formula in torch ops on ``d`` and
    ``s`` recomputed from ``x`` in the graph."""

    @staticmethod
    def forward(ctx, x, grad_stats, d, s, group_size, num_channels, eps, impl):
        ctx.args = group_size, num_channels, eps, impl
        ctx.save_for_backward(x, grad_stats, d, s)
        return _input_grad(x, grad_stats, d, s, group_size, num_channels, eps, impl)

    @staticmethod
    def backward(ctx, u):
        x, grad_stats, d, s = ctx.saved_tensors
        group_size, num_channels, eps, impl = ctx.args
        if torch.is_grad_enabled():
            y = _grouped(x, group_size, num_channels)
            d = y - y.mean(dim=1, keepdim=True)
            s = (d.square().mean(dim=1, keepdim=True) + eps).sqrt()
        elif impl == "triton":
            from scalegan.kernels import minibatch_stddev as kernels

            gx, ggrad = kernels.group_stddev_backward_backward(x, grad_stats, u, group_size,
                                                               num_channels, eps)
            return gx, ggrad.to(grad_stats.dtype), None, None, None, None, None, None
        gx, ggrad = _input_grad_backward(u, grad_stats, d, s, group_size, num_channels)
        return (gx.reshape(x.shape).to(x.dtype), ggrad.to(grad_stats.dtype),
                None, None, None, None, None, None)


def _input_grad_backward(u: torch.Tensor, grad_stats: torch.Tensor, d: torch.Tensor,
                         s: torch.Tensor, group_size: int,
                         num_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`_GroupStddevGrad`'s backward in torch ops: dL/dx grouped ``(groups, G, F, C/F,
    H, W)`` and dL/d(dstats) ``(groups, F)``, in ``d``'s dtype."""
    per_pair = d[0, 0, 0].numel() * group_size  # E * G
    u = _grouped(u, group_size, num_channels).to(d.dtype)
    ud = (u * d).sum(dim=1, keepdim=True)  # (groups, 1, F, C/F, H, W)
    inv_s = s.reciprocal()
    scale = grad_stats.to(d.dtype)[:, None, :, None, None, None] / per_pair * inv_s  # c / s
    gx = scale * (u - u.mean(dim=1, keepdim=True) - d * (ud * inv_s.square() / group_size))
    return gx, (ud * inv_s).sum(dim=(1, 3, 4, 5)) / per_pair
