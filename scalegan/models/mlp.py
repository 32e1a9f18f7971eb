"""Fully connected generator and discriminator: 2-D toy data (mode-collapse benchmarks) and small
images (the original GAN of Goodfellow et al. 2014).

The mixture-of-Gaussians benchmarks (2-D ring and 2-D grid, see :mod:`scalegan.data.points`) are
run with small MLPs. The PacGAN release, for example, uses a generator of four 400-unit ReLU
layers with BatchNorm and a discriminator of three 200-unit maxout layers (5 pieces). Here both
networks are plain ``nn.Linear`` stacks: ReLU in G, LeakyReLU(0.2) (or maxout) in D, and no
BatchNorm anywhere, since BatchNorm couples the samples of a batch (and the batches of
data-parallel ranks). The only cross-sample coupling is the optional minibatch-discrimination
layer (Salimans et al. 2016) before D's output layer, which is there to make D see mode collapse.

On images (``out_shape`` / ``in_shape`` ``(C, R, R)``), G's ``C * R * R`` outputs go through tanh
and are reshaped to images, and D flattens its input; D's maxout units (Goodfellow et al. 2013)
and dropout on the inputs of its layers give the original GAN's discriminator.

Conditioning on class labels (``num_classes > 0``; ``cond`` a LongTensor ``(N,)`` of class ids,
``None`` for an unconditional model): G reads ``concat(z, embed(cond))`` (Mirza & Osindero 2014);
D joins ``embed(cond)`` to its input (``cond_d="concat"``, Mirza & Osindero) or adds
``<embed(cond), phi>`` to its logit, ``phi`` its last hidden features (``cond_d="projection"``,
Miyato & Koyama 2018). An unconditional model has exactly the parameters (and state-dict keys) it
had before conditioning existed. PyTorch's default initialisation throughout.

Same call signature as the image models (``G(z, resolution, alpha, cond)``,
``D(x, resolution, alpha, cond, noise)``) so the trainer can treat them alike; ``alpha`` is
ignored, and so is ``resolution`` on points (on images it must be ``R`` when given).
"""

from __future__ import annotations

import math
import operator

import torch
from torch import nn

from scalegan.models.layers import check_labels
from scalegan.ops import MinibatchDiscrimination

__all__ = ["MLPGenerator", "MLPDiscriminator"]

LRELU_SLOPE = 0.2


def _check_input(x: torch.Tensor, dim: int, name: str, who: str) -> None:
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{who}: {name} must have shape (N, {dim}), got {tuple(x.shape)}")


def _check_sizes(who: str, **sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{who}: {name} must be >= 1, got {value}")


def _image_shape(shape, name: str, who: str) -> tuple[int, int, int] | None:
    """``shape`` as a ``(C, R, R)`` tuple of positive ints (None stays None)."""
    if shape is None:
        return None
    try:
        dims = tuple(operator.index(v) for v in shape)
    except TypeError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1 or dims[1] != dims[2]:
        raise ValueError(f"{who}: {name} must be (C, R, R) (channels, then a square image side), "
                         f"got {shape!r}")
    return dims  # type: ignore[return-value]


def _check_resolution(resolution, shape: tuple[int, int, int] | None, who: str) -> None:
    """On images, a given ``resolution`` must be the image side; on points it is ignored."""
    if shape is None or resolution is None:
        return
    try:
        r = operator.index(resolution) if not isinstance(resolution, bool) else None
    except TypeError:
        r = None
    if r != shape[1]:
        raise ValueError(f"{who}: resolution={resolution!r} must equal the image side {shape[1]} "
                         f"(or be None)")


def _check_conditioning(who: str, num_classes: int, cond_dim: int) -> None:
    if num_classes < 0 or num_classes == 1:
        raise ValueError(f"{who}: num_classes must be 0 (unconditional) or >= 2, got {num_classes}")
    if num_classes:
        _check_sizes(who, cond_dim=cond_dim)


class MLPGenerator(nn.Module):
    """Generator ``z`` ``(N, latent_dim)`` -> points ``(N, out_dim)``, unbounded, or images
    ``(N, *out_shape)`` in [-1, 1].

    ``layers`` hidden layers of ``hidden`` units (Linear + ReLU), then a linear output layer:
    ``layers + 1`` ``nn.Linear`` modules in all, in ``self.net``. PyTorch's default
    initialisation.

    Points (``out_shape=None``): ``out_dim`` outputs (default 2) with no squashing: the mixtures'
    modes lie up to 4 away from the origin. Images (``out_shape=(C, R, R)``): ``C * R * R``
    outputs (``out_dim`` is then ignored), tanh, reshaped to ``(N, C, R, R)`` (``self.net`` then
    ends with the ``nn.Tanh``).

    Conditional (``num_classes >= 2``): ``self.embed`` ``nn.Embedding(num_classes, cond_dim)``,
    and the first layer reads ``concat(z, embed(cond))`` ``(N, latent_dim + cond_dim)``.
    """

    def __init__(self, latent_dim: int, out_dim: int = 2, hidden: int = 128, layers: int = 3,
                 *, out_shape: tuple[int, int, int] | None = None, num_classes: int = 0,
                 cond_dim: int = 128) -> None:
        super().__init__()
        who = "MLPGenerator"
        self.out_shape = _image_shape(out_shape, "out_shape", who)
        if self.out_shape is not None:
            out_dim = math.prod(self.out_shape)  # images: out_dim is ignored
        _check_sizes(who, latent_dim=latent_dim, out_dim=out_dim, hidden=hidden, layers=layers)
        _check_conditioning(who, num_classes, cond_dim)
        self.latent_dim = latent_dim
        self.out_dim = out_dim
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, cond_dim) if num_classes else None
        modules: list[nn.Module] = []
        width = latent_dim + (cond_dim if num_classes else 0)
        for _ in range(layers):
            modules += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        modules.append(nn.Linear(width, out_dim))
        if self.out_shape is not None:
            modules.append(nn.Tanh())
        self.net = nn.Sequential(*modules)

    def forward(self, z: torch.Tensor, resolution: int | None = None, alpha: float = 1.0,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(z, self.latent_dim, "z", "MLPGenerator")
        _check_resolution(resolution, self.out_shape, "MLPGenerator")
        check_labels(cond, self.num_classes, z.shape[0], "MLPGenerator")
        if self.embed is not None:
            z = torch.cat([z, self.embed(cond).to(z.dtype)], dim=1)  # (N, latent + cond_dim)
        x = self.net(z)  # (N, out_dim)
        if self.out_shape is not None:
            x = x.reshape(-1, *self.out_shape)  # (N, C, R, R)
        return x


class Maxout(nn.Module):
    """Maxout units (Goodfellow et al. 2013): ``(N, units * pieces)`` -> ``(N, units)``, unit
    ``u`` the max of inputs ``u * pieces`` .. ``u * pieces + pieces - 1`` (the preceding linear
    layer's consecutive outputs)."""

    def __init__(self, pieces: int) -> None:
        super().__init__()
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (-1, self.pieces)).amax(dim=2)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


class MLPDiscriminator(nn.Module):
    """Discriminator points ``(N, in_dim)`` or images ``(N, *in_shape)`` -> logits ``(N,)``.

    ``self.features``: ``layers`` hidden layers of ``hidden`` units, ``(N, in_dim)`` ->
    ``(N, hidden)``: Linear + LeakyReLU(0.2) or, with ``maxout=k`` (k >= 2), maxout layers:
    ``Linear(width, hidden * k)`` + :class:`Maxout` (the max over each unit's k pieces). With
    ``mbdisc_kernels > 0``, ``self.mbdisc`` (a :class:`~scalegan.ops.MinibatchDiscrimination`
    layer with ``mbdisc_kernels`` kernels of ``mbdisc_dim`` values, run by ``ops_impl``) appends,
    for every sample, its similarity to the other samples of the batch: ``(N, hidden)`` ->
    ``(N, hidden + mbdisc_kernels)``; with ``mbdisc_across_ranks`` the other samples are those of
    every data-parallel rank (gathered), ``world * N - 1`` of them. Then ``self.out``, a linear
    layer to one logit. PyTorch's default initialisation. Images (``in_shape=(C, R, R)``) are
    flattened: ``in_dim`` is then ``C * R * R`` (the argument is ignored).

    The appended similarities are divided by ``N - 1``: the mean of ``exp(-||M_i - M_j||_1)``
    over the other samples, in [0, 1], instead of the layer's sum, in [0, N - 1]. The sum's scale
    grows with the per-rank batch (and so changes with the number of data-parallel ranks), and
    next to hidden features of order 1 it stalled training on the 25-mode grid: measured with
    G_ema at batch 128, 8 kernels of 4, seed 0, the sum gave 21 / 25 modes and 40% high-quality
    samples after 8000 steps where the mean gave 25 / 25 and 93% (after 4000 steps: sum 22 and
    26%, mean 25 and 79%, ``log1p`` of the sum 23 and 73%).

    Dropout (``dropout=p``, inverted): on the inputs of every hidden layer and of the output
    layer, ``noise_size = in_dim + hidden * layers`` units in all. Its masks come from the
    caller, so that they can be drawn from a generator shared by every rank: ``noise``
    ``(N, noise_size)`` of uniform [0, 1) draws, unit ``j`` of sample ``i`` kept iff
    ``noise[i, j] >= p`` and kept units scaled by ``1 / (1 - p)``. Columns ``[0, in_dim)`` are
    the input's, then ``hidden`` columns for the input of each later hidden layer and, last, the
    output layer's (the last hidden features, before minibatch discrimination, which sees them
    dropped). ``noise=None`` applies no dropout (evaluation). The label embedding joined to the
    input (concat) is never dropped.

    Conditional (``num_classes >= 2``): ``cond_d="concat"``: ``self.embed``
    ``nn.Embedding(num_classes, cond_dim)``, joined to the (flattened) input of the first layer;
    ``cond_d="projection"``: ``self.embed`` ``nn.Embedding(num_classes, hidden)`` and
    ``logit = out(phi [, mbdisc]) + <embed(cond), phi>``, ``phi`` the last hidden features (after
    dropout).

    Without minibatch discrimination ``D(x)[i]`` depends on ``x[i]`` only; with it, on the whole
    batch given to one call (so real and fake batches, passed separately, are judged as batches).
    """

    def __init__(self, in_dim: int = 2, hidden: int = 128, layers: int = 3,
                 mbdisc_kernels: int = 0, mbdisc_dim: int = 16, ops_impl: str = "auto", *,
                 in_shape: tuple[int, int, int] | None = None, maxout: int = 0,
                 dropout: float = 0.0, num_classes: int = 0, cond_dim: int = 128,
                 cond_d: str = "projection", mbdisc_across_ranks: bool = False) -> None:
        super().__init__()
        who = "MLPDiscriminator"
        self.in_shape = _image_shape(in_shape, "in_shape", who)
        if self.in_shape is not None:
            in_dim = math.prod(self.in_shape)  # images: in_dim is ignored
        _check_sizes(who, in_dim=in_dim, hidden=hidden, layers=layers, mbdisc_dim=mbdisc_dim)
        if mbdisc_kernels < 0:
            raise ValueError(f"{who}: mbdisc_kernels must be >= 0 (0 disables), "
                             f"got {mbdisc_kernels}")
        if maxout < 0 or maxout == 1:
            raise ValueError(f"{who}: maxout must be 0 (LeakyReLU units) or >= 2 pieces, "
                             f"got {maxout}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{who}: dropout must be in [0, 1), got {dropout}")
        _check_conditioning(who, num_classes, cond_dim)
        if num_classes and cond_d not in ("concat", "projection"):
            raise ValueError(f"{who}: cond_d must be 'concat' or 'projection', got {cond_d!r}")
        self.in_dim = in_dim
        self.hidden = hidden
        self.layers = layers
        self.maxout = maxout
        self.dropout = float(dropout)
        self.num_classes = num_classes
        self.cond_d = cond_d if num_classes else None
        self.embed: nn.Embedding | None = None
        if self.cond_d is not None:  # joined to the input (concat) or to phi (projection)
            self.embed = nn.Embedding(num_classes, cond_dim if self.cond_d == "concat" else hidden)
        modules: list[nn.Module] = []
        width = in_dim + (cond_dim if self.cond_d == "concat" else 0)
        for _ in range(layers):
            if maxout:
                modules += [nn.Linear(width, hidden * maxout), Maxout(maxout)]
            else:
                modules += [nn.Linear(width, hidden), nn.LeakyReLU(LRELU_SLOPE)]
            width = hidden
        self.features = nn.Sequential(*modules)
        self.mbdisc = (MinibatchDiscrimination(hidden, mbdisc_kernels, mbdisc_dim, impl=ops_impl,
                                               across_ranks=mbdisc_across_ranks)
                       if mbdisc_kernels > 0 else None)
        self.out = nn.Linear(hidden + mbdisc_kernels, 1)

    @property
    def noise_size(self) -> int:
        """Units dropout may drop, the width of ``noise``: ``in_dim + hidden * layers``."""
        return self.in_dim + self.hidden * self.layers

    def _drop(self, h: torch.Tensor, noise: torch.Tensor | None, start: int) -> torch.Tensor:
        """Inverted dropout of ``h`` ``(N, W)`` with the noise columns ``start .. start + W``."""
        if noise is None or self.dropout == 0.0:
            return h
        keep = noise[:, start:start + h.shape[1]] >= self.dropout
        return h.masked_fill(~keep, 0) * (1.0 / (1.0 - self.dropout))

    def forward(self, x: torch.Tensor, resolution: int | None = None, alpha: float = 1.0,
                cond: torch.Tensor | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        who = "MLPDiscriminator"
        if self.in_shape is not None:
            if x.ndim != 4 or tuple(x.shape[1:]) != self.in_shape:
                c, r, _ = self.in_shape
                raise ValueError(f"{who}: x must have shape (N, {c}, {r}, {r}), "
                                 f"got {tuple(x.shape)}")
            _check_resolution(resolution, self.in_shape, who)
            x = x.flatten(1)  # (N, in_dim)
        _check_input(x, self.in_dim, "x", who)
        check_labels(cond, self.num_classes, x.shape[0], who)
        if noise is not None and (noise.ndim != 2 or tuple(noise.shape) != (x.shape[0],
                                                                             self.noise_size)
                                  or not noise.is_floating_point()):
            raise ValueError(f"{who}: noise must be a float tensor of shape (N, noise_size) = "
                             f"({x.shape[0]}, {self.noise_size}), got {tuple(noise.shape)}")
        h = self._drop(x, noise, 0)  # (N, in_dim)
        if self.cond_d == "concat":
            h = torch.cat([h, self.embed(cond).to(h.dtype)], dim=1)  # (N, in_dim + cond_dim)
        start = self.in_dim
        for i in range(self.layers):
            if i:
                h = self._drop(h, noise, start)
                start += self.hidden
            h = self.features[2 * i + 1](self.features[2 * i](h))  # (N, hidden)
        phi = self._drop(h, noise, start)  # (N, hidden): the output layer's input
        h = phi
        if self.mbdisc is not None:
            h = self.mbdisc(h)  # (N, hidden + mbdisc_kernels)
            # The layer's similarities are sums over the other samples (N - 1, or those of every
            # rank with mbdisc_across_ranks): make them means.
            n_other = max(1, self.mbdisc.num_others(x.shape[0]))
            h = torch.cat([h[:, :self.hidden], h[:, self.hidden:] / n_other], dim=1)
        logits = self.out(h).squeeze(1)  # (N,)
        if self.cond_d == "projection":
            logits = logits + (self.embed(cond) * phi).sum(1)  # + <embed(y), phi(x)>
        return logits
