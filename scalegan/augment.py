"""Differentiable augmentation of every image the discriminator sees: ADA and DiffAugment.

Both are batched tensor ops on ``(N, C, H, W)`` images in [-1, 1], linear in the images, so the
generator trains through them and R1 / WGAN-GP differentiate ``D(augment(x))`` with respect to
``x`` to second order (``F.grid_sample`` supports double backward with respect to its input;
the tests run ``gradgradcheck`` on both pipelines).

Randomness. Every per-image number comes from ``draw(fn, n, *shape)``, ``fn`` being
``torch.rand`` or ``torch.randn``: it returns this rank's ``n`` rows of a draw made for the
global batch (the trainer's ``draw``, or :func:`local_draw`), so the augmentations do not depend
on the world size. A call draws the same numbers whatever ``p`` and the values drawn, so runs with
different ``p`` stay in step and a resumed run repeats the draws. The calls, in order:

- :func:`ada_augment`: ``draw(torch.rand, n, 13)`` the "apply" uniforms (columns in the order of
  :data:`ADA_APPLY`), ``draw(torch.rand, n, 8)`` the uniform parameters (:data:`ADA_UNIFORM`),
  ``draw(torch.randn, n, 7)`` the normal parameters (:data:`ADA_NORMAL`). Transform ``t`` is
  applied to image ``i`` iff ``apply[i, t] < p * multiplier``.
- :func:`diff_augment`: one ``draw(torch.rand, n, k)`` per policy entry, in policy order: color
  ``k = 3`` (brightness, saturation, contrast), translation ``k = 2`` (x, y), cutout ``k = 2``
  (centre x, centre y).

ADA (Karras et al. 2020, "Training GANs with limited data"), the "bgc" transforms with their
published distributions and order. Geometry is in pixel units about the image centre, ``x`` to
the right and ``y`` down: a rotation by ``theta`` moves the point ``(x, y)`` to
``(x cos theta - y sin theta, x sin theta + y cos theta)`` (clockwise on screen), a translation
by ``t`` moves content by ``+t``. The geometric transforms of an image compose into one 3x3
matrix, and output pixel ``q`` reads the input at ``G^-1 q``: one bilinear resample with
``F.grid_sample(padding_mode="reflection", align_corners=False)``, which mirrors the image about
its outer edges (the input at column ``-1`` is column ``0``). Transforms that map pixel centres
onto pixel centres (x-flip, multiples of 90 degrees, integer translations) therefore reproduce
the pixels. The colour transforms compose into one 4x4 matrix acting on RGB. Departures from the
published pipeline:

- no 2x upsampling with a wavelet filter before the resample and downsampling after it (the
  published anti-aliasing): one bilinear resample at the image's resolution, which blurs
  fractional moves slightly more and aliases under strong downscaling;
- its padding reflects about the edge pixels' centres (column ``-1`` is column ``1``); here the
  image is mirrored about its edges, the edge pixel repeated;
- the image-space filtering, additive noise and cutout transforms are not included.

Single-channel images take brightness, contrast and lumaflip (which negates the image); hue and
saturation draw their numbers and leave them unchanged (a grey pixel lies on the axis they act
about).

DiffAugment (Zhao et al. 2020): colour (brightness, saturation, contrast), integer translation
by up to 1/8 of the side with zero fill, cutout of a square of half the side with zeros.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

Draw = Callable[..., torch.Tensor]
"""``draw(fn, n, *shape) -> (n, *shape)``: this rank's rows of ``fn(global_n, *shape)``."""

AUGMENT_KINDS = ("none", "ada", "fixed", "diffaugment")
DIFF_AUGMENT_POLICIES = ("color", "translation", "cutout")

# Column layout of ada_augment's three draws (see the module docstring).
ADA_APPLY = ("xflip", "rotate90", "xint", "scale", "rotate_pre", "aniso", "rotate_post", "xfrac",
             "brightness", "contrast", "lumaflip", "hue", "saturation")
ADA_UNIFORM = ("xflip", "rotate90", "xint_x", "xint_y", "rotate_pre", "rotate_post", "lumaflip",
               "hue")
ADA_NORMAL = ("scale", "aniso", "xfrac_x", "xfrac_y", "brightness", "contrast", "saturation")

_GROUPS = {
    "blit": ("xflip", "rotate90", "xint"),
    "geom": ("scale", "rotate", "aniso", "xfrac"),
    "color": ("brightness", "contrast", "lumaflip", "hue", "saturation"),
}
_PRESETS = {"blit": ("blit",), "geom": ("geom",), "color": ("color",),
            "bgc": ("blit", "geom", "color")}


def local_draw(generator: torch.Generator, device: torch.device | str | None = None,
               rank: int = 0, world: int = 1) -> Draw:
    """A ``draw`` on one generator: ``draw(fn, n, *shape)`` is
    ``fn(n * world, *shape, generator=generator)[rank * n:(rank + 1) * n]`` on ``device``.
    Ranks that share a seed get the rows one process would get for the whole batch."""
    if not 0 <= rank < world:
        raise ValueError(f"local_draw: rank={rank} is not in [0, world={world})")

    def draw(fn: Callable[..., torch.Tensor], n: int, *shape: int) -> torch.Tensor:
        full = fn(n * world, *shape, generator=generator)
        return full[rank * n:(rank + 1) * n].to(device)

    return draw


@dataclass(frozen=True)
class AdaSettings:
    """ADA's transforms: a probability multiplier per transform (applied with probability
    ``p * multiplier``) and the published strengths. Translations are fractions of the image
    side, angles fractions of pi, ``*_std`` the std of a normal draw (of ``log2`` of the factor
    for scale, aniso, contrast and saturation)."""

    xflip: float = 1.0
    """Mirror horizontally (with probability 1/2 once applied)."""
    rotate90: float = 1.0
    """Rotate by a uniformly drawn multiple of 90 degrees."""
    xint: float = 1.0
    """Integer translation, up to ``xint_max`` of the side."""
    scale: float = 1.0
    """Isotropic scaling by ``2 ** (N(0, 1) * scale_std)``."""
    rotate: float = 1.0
    """Rotation by a uniform angle (twice: before and after aniso, each with probability
    ``1 - sqrt(1 - p * rotate)``)."""
    aniso: float = 1.0
    """Scale x by ``s = 2 ** (N(0, 1) * aniso_std)`` and y by ``1 / s``."""
    xfrac: float = 1.0
    """Fractional translation by ``N(0, 1) * xfrac_std`` of the side."""
    brightness: float = 1.0
    """Add ``N(0, 1) * brightness_std`` to every channel."""
    contrast: float = 1.0
    """Multiply by ``2 ** (N(0, 1) * contrast_std)``."""
    lumaflip: float = 1.0
    """Mirror RGB about the plane normal to the luma axis (with probability 1/2 once applied)."""
    hue: float = 1.0
    """Rotate RGB about the luma axis by a uniform angle."""
    saturation: float = 1.0
    """Scale RGB away from the luma axis by ``2 ** (N(0, 1) * saturation_std)``."""
    xint_max: float = 0.125
    """Largest integer translation, a fraction of the side."""
    scale_std: float = 0.2
    rotate_max: float = 1.0
    """Largest rotation angle, a fraction of pi."""
    aniso_std: float = 0.2
    xfrac_std: float = 0.125
    brightness_std: float = 0.2
    contrast_std: float = 0.5
    hue_max: float = 1.0
    """Largest hue rotation angle, a fraction of pi."""
    saturation_std: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"AdaSettings.{f.name} must be a finite number >= 0, "
                                 f"got {value!r}")

    @classmethod
    def preset(cls, name: str) -> AdaSettings:
        """The published transform groups: "blit" (xflip, rotate90, xint), "geom" (scale,
        rotate, aniso, xfrac), "color" (brightness, contrast, lumaflip, hue, saturation) or
        "bgc" (all three); the multipliers of the transforms left out are 0."""
        if name not in _PRESETS:
            raise ValueError(f"unknown ADA preset {name!r}: expected one of {tuple(_PRESETS)}")
        return replace(cls(), **{t: 0.0 for group, names in _GROUPS.items()
                                 if group not in _PRESETS[name] for t in names})


def augment(images: torch.Tensor, kind: str, p: float | torch.Tensor, draw: Draw,
            ada: AdaSettings = AdaSettings(),
            policy: str = "color,translation,cutout") -> torch.Tensor:
    """Augment ``images`` ``(N, C, H, W)`` for the discriminator: ``kind`` "none" (unchanged,
    nothing drawn), "ada" or "fixed" (:func:`ada_augment` with probability ``p``; the caller
    adapts ``p`` or holds it fixed), "diffaugment" (:func:`diff_augment` with ``policy``,
    ``p`` ignored). Same shape, dtype and device as ``images``."""
    if kind == "none":
        return images
    if kind in ("ada", "fixed"):
        return ada_augment(images, p, draw, ada)
    if kind == "diffaugment":
        return diff_augment(images, draw, policy)
    raise ValueError(f"unknown augmentation kind {kind!r}: expected one of {AUGMENT_KINDS}")


def _check_images(images: torch.Tensor, name: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{name}: images must be (N, C, H, W), got shape {tuple(images.shape)}")


def _draw(draw: Draw, fn: Callable[..., torch.Tensor], n: int, k: int,
          like: torch.Tensor) -> torch.Tensor:
    """``draw(fn, n, k)`` checked to be ``(n, k)``, in ``like``'s dtype and on its device."""
    out = draw(fn, n, k)
    if tuple(out.shape) != (n, k):
        raise ValueError(f"draw({fn.__name__}, {n}, {k}) returned shape {tuple(out.shape)}, "
                         f"expected ({n}, {k}): this rank's rows of the global draw")
    return out.to(dtype=like.dtype, device=like.device)


def _compute_dtype(images: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if images.dtype == torch.float64 else torch.float32


# --- ADA ---------------------------------------------------------------------------------------

def _eye(n: int, size: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(size, dtype=like.dtype, device=like.device).expand(n, size, size)


def _matrices(rows: list[list[torch.Tensor | float]], like: torch.Tensor) -> torch.Tensor:
    """A batch of matrices ``(n, R, R)`` from nested rows of ``(n,)`` tensors or constants."""
    n = like.shape[0]
    return torch.stack([torch.stack([torch.as_tensor(v, dtype=like.dtype,
                                                     device=like.device).expand(n)
                                     for v in row], dim=-1) for row in rows], dim=-2)


def _gated(apply: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``m`` where ``apply`` (``(n,)`` bool), the identity elsewhere."""
    return torch.where(apply[:, None, None], m, _eye(m.shape[0], m.shape[-1], m))


def _translate_inv(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Inverse of the translation by ``(tx, ty)``: ``(n, 3, 3)``."""
    return _matrices([[1, 0, -tx], [0, 1, -ty], [0, 0, 1]], tx)


def _scale_inv(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """Inverse of scaling x by ``sx`` and y by ``sy`` about the centre: ``(n, 3, 3)``."""
    return _matrices([[1 / sx, 0, 0], [0, 1 / sy, 0], [0, 0, 1]], sx)


def _rotate_inv(theta: torch.Tensor) -> torch.Tensor:
    """Inverse of the rotation by ``theta`` (radians, see the module docstring): ``(n, 3, 3)``."""
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrices([[c, s, 0], [-s, c, 0], [0, 0, 1]], theta)


def _geometry_inv(apply: dict[str, torch.Tensor], u: dict[str, torch.Tensor],
                  z: dict[str, torch.Tensor], s: AdaSettings, h: int, w: int) -> torch.Tensor:
    """The inverse of every image's composed geometric transform, ``(n, 3, 3)`` in pixel units
    about the centre (the identity for an image no geometric transform applies to)."""
    one = torch.ones_like(u["xflip"])
    flip = 1 - 2 * torch.floor(u["xflip"] * 2)                        # -1: mirrored
    quarter = torch.floor(u["rotate90"] * 4) * (math.pi / 2)
    tx = torch.round((2 * u["xint_x"] - 1) * s.xint_max * w)
    ty = torch.round((2 * u["xint_y"] - 1) * s.xint_max * h)
    zoom = torch.exp2(z["scale"] * s.scale_std)
    theta_pre = (2 * u["rotate_pre"] - 1) * math.pi * s.rotate_max
    stretch = torch.exp2(z["aniso"] * s.aniso_std)
    theta_post = (2 * u["rotate_post"] - 1) * math.pi * s.rotate_max
    fx, fy = z["xfrac_x"] * s.xfrac_std * w, z["xfrac_y"] * s.xfrac_std * h
    # applied first to the image -> leftmost in G^-1 = T1^-1 T2^-1 ... Tk^-1
    steps = [("xflip", _scale_inv(flip, one)),
             ("rotate90", _rotate_inv(quarter)),
             ("xint", _translate_inv(tx, ty)),
             ("scale", _scale_inv(zoom, zoom)),
             ("rotate_pre", _rotate_inv(theta_pre)),
             ("aniso", _scale_inv(stretch, 1 / stretch)),
             ("rotate_post", _rotate_inv(theta_post)),
             ("xfrac", _translate_inv(fx, fy))]
    g_inv = _eye(one.shape[0], 3, one)
    for name, m in steps:
        g_inv = g_inv @ _gated(apply[name], m)
    return g_inv


def _resample(images: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
    """Output pixel ``q`` (centre, pixel units about the image centre) reads ``images`` at
    ``g_inv @ q``: bilinear, mirrored about the edges. ``images`` ``(n, C, H, W)``."""
    n, _, h, w = images.shape
    kw = dict(dtype=images.dtype, device=images.device)
    ys = torch.arange(h, **kw) + (0.5 - h / 2)
    xs = torch.arange(w, **kw) + (0.5 - w / 2)
    centres = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w),
                           torch.ones(h, w, **kw)], dim=-1)               # (H, W, 3)
    src = torch.einsum("nij,hwj->nhwi", g_inv, centres)[..., :2]          # (n, H, W, 2)
    grid = src / torch.tensor([w / 2, h / 2], **kw)                       # edges at -1, 1
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def _color_matrix(apply: dict[str, torch.Tensor], u: dict[str, torch.Tensor],
                  z: dict[str, torch.Tensor], s: AdaSettings) -> torch.Tensor:
    """Every image's composed colour transform, ``(n, 4, 4)`` acting on ``(r, g, b, 1)``."""
    n = u["hue"].shape[0]
    like = u["hue"]
    v = torch.full((3,), 1 / math.sqrt(3), dtype=like.dtype, device=like.device)
    vvt = torch.outer(v, v)                                               # onto the luma axis
    eye3 = torch.eye(3, dtype=like.dtype, device=like.device)

    def affine(m3: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """(n, 3, 3) and (n, 3) -> (n, 4, 4)."""
        out = _eye(n, 4, like).clone()
        out[:, :3, :3] = m3
        if t is not None:
            out[:, :3, 3] = t
        return out

    b = z["brightness"] * s.brightness_std
    c = torch.exp2(z["contrast"] * s.contrast_std)
    i = torch.floor(u["lumaflip"] * 2)
    theta = (2 * u["hue"] - 1) * math.pi * s.hue_max
    sat = torch.exp2(z["saturation"] * s.saturation_std)
    # rotation about v by theta (Rodrigues): cos I + sin [v]x + (1 - cos) v v^T
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]],
                         dtype=like.dtype, device=like.device) / math.sqrt(3)
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    steps = [("brightness", affine(eye3.expand(n, 3, 3), b[:, None].expand(n, 3))),
             ("contrast", affine(c[:, None, None] * eye3)),
             ("lumaflip", affine(eye3 - 2 * vvt * i[:, None, None])),
             ("hue", affine(cos * eye3 + sin * cross + (1 - cos) * vvt)),
             ("saturation", affine(vvt + (eye3 - vvt) * sat[:, None, None]))]
    m = _eye(n, 4, like)
    for name, step in steps:
        m = _gated(apply[name], step) @ m                                 # later ones on the left
    return m


def _grey_affine(apply: dict[str, torch.Tensor], u: dict[str, torch.Tensor],
                 z: dict[str, torch.Tensor], s: AdaSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Single channel: ``x -> a * x + o`` per image (brightness, contrast, lumaflip), ``(n,)``."""
    b = torch.where(apply["brightness"], z["brightness"] * s.brightness_std, 0.0)
    c = torch.where(apply["contrast"], torch.exp2(z["contrast"] * s.contrast_std), 1.0)
    sign = torch.where(apply["lumaflip"], 1 - 2 * torch.floor(u["lumaflip"] * 2), 1.0)
    return sign * c, sign * c * b


def ada_augment(images: torch.Tensor, p: float | torch.Tensor, draw: Draw,
                settings: AdaSettings = AdaSettings()) -> torch.Tensor:
    """ADA's augmentations of ``images`` ``(N, C, H, W)`` (C = 1 or 3 when a colour transform is
    enabled), each transform applied to each image with probability ``p * multiplier`` (see the
    module docstring). ``p`` a float or a 0-d tensor in [0, 1]. Differentiable to second order
    in ``images``; same shape, dtype and device. Images no transform touches are returned
    bit-exact (``p = 0``: the input)."""
    _check_images(images, "ada_augment")
    n, ch, h, w = images.shape
    dtype = _compute_dtype(images)
    x = images.to(dtype)
    kw = dict(dtype=dtype, device=images.device)
    apply_u = _draw(draw, torch.rand, n, len(ADA_APPLY), x)
    u = dict(zip(ADA_UNIFORM, _draw(draw, torch.rand, n, len(ADA_UNIFORM), x).unbind(1),
                 strict=True))
    z = dict(zip(ADA_NORMAL, _draw(draw, torch.randn, n, len(ADA_NORMAL), x).unbind(1),
                 strict=True))

    if not isinstance(p, torch.Tensor) and not 0 <= p <= 1:
        raise ValueError(f"ada_augment: p={p!r} is not a probability in [0, 1]")
    p = torch.as_tensor(p, **kw)
    s = settings
    p_rot = 1 - torch.sqrt(torch.clamp(1 - p * s.rotate, min=0))  # P(at least one) = p * rotate
    prob = {name: p * getattr(s, name) for name in ADA_APPLY if name not in ("rotate_pre",
                                                                             "rotate_post")}
    prob["rotate_pre"] = prob["rotate_post"] = p_rot
    apply = {name: apply_u[:, k] < prob[name] for k, name in enumerate(ADA_APPLY)}

    if any(getattr(s, t) > 0 for t in _GROUPS["blit"] + _GROUPS["geom"]):
        g_inv = _geometry_inv(apply, u, z, s, h, w)
        moved = torch.stack([apply[t] for t in ADA_APPLY[:8]], dim=1).any(dim=1)
        x = torch.where(moved[:, None, None, None], _resample(x, g_inv), x)

    if any(getattr(s, t) > 0 for t in _GROUPS["color"]):
        colored = torch.stack([apply[t] for t in ADA_APPLY[8:]], dim=1).any(dim=1)
        if ch == 3:
            m = _color_matrix(apply, u, z, s)
            y = torch.einsum("nij,njhw->nihw", m[:, :3, :3], x) + m[:, :3, 3, None, None]
        elif ch == 1:
            a, o = _grey_affine(apply, u, z, s)
            y = x * a[:, None, None, None] + o[:, None, None, None]
        else:
            raise ValueError(f"ada_augment: colour transforms need C = 1 or 3 channels, got "
                             f"C={ch} (shape {tuple(images.shape)}); set the colour "
                             f"multipliers to 0 (AdaSettings.preset('blit') / 'geom')")
        x = torch.where(colored[:, None, None, None], y, x)
    return x.to(images.dtype)


# --- DiffAugment -------------------------------------------------------------------------------

def _parse_policy(policy: str) -> list[str]:
    entries = [e.strip() for e in policy.split(",") if e.strip()]
    for e in entries:
        if e not in DIFF_AUGMENT_POLICIES:
            raise ValueError(f"unknown DiffAugment policy entry {e!r} in policy={policy!r}: "
                             f"expected entries among {DIFF_AUGMENT_POLICIES}")
    return entries


def _diff_color(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Brightness ``x + (u0 - 0.5)``, saturation ``(x - mean_C) * 2 u1 + mean_C``, contrast
    ``(x - mean_CHW) * (u2 + 0.5) + mean_CHW``; ``u`` ``(n, 3)``."""
    u = u[:, :, None, None, None]                                         # (n, 3, 1, 1, 1)
    x = x + (u[:, 0] - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (2 * u[:, 1]) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (u[:, 2] + 0.5) + mean


def _diff_translate(x: torch.Tensor, u: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Move each image by ``t = floor(u * (2 m + 1)) - m`` pixels per axis, ``m =
    int(side * ratio + 0.5)`` (``u`` ``(n, 2)``: x, y): ``out[i, j] = x[i - ty, j - tx]``,
    zero where that is outside the image."""
    n, c, h, w = x.shape
    out, valid = x, torch.ones(n, h, w, dtype=torch.bool, device=x.device)
    for dim, size, col in ((3, w, 0), (2, h, 1)):
        m = int(size * ratio + 0.5)
        t = torch.floor(u[:, col] * (2 * m + 1)).long() - m              # (n,) in [-m, m]
        src = torch.arange(size, device=x.device) - t[:, None]           # (n, size)
        ok = (src >= 0) & (src < size)
        index = src.clamp(0, size - 1)
        if dim == 3:
            out = out.gather(3, index[:, None, None, :].expand(n, c, h, w))
            valid = valid & ok[:, None, :]
        else:
            out = out.gather(2, index[:, None, :, None].expand(n, c, h, w))
            valid = valid & ok[:, :, None]
    return torch.where(valid[:, None], out, 0.0)


def _diff_cutout(x: torch.Tensor, u: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero a ``k x k`` square per image, ``k = int(side * ratio + 0.5)``, covering
    ``[c - k // 2, c - k // 2 + k)`` clipped to the image, centre ``c = floor(u * (side + 1 -
    k % 2))`` per axis (``u`` ``(n, 2)``: x, y)."""
    n, _, h, w = x.shape
    inside = []
    for size, col in ((h, 1), (w, 0)):
        k = int(size * ratio + 0.5)
        lo = torch.floor(u[:, col] * (size + 1 - k % 2)).long() - k // 2   # (n,)
        pos = torch.arange(size, device=x.device)
        inside.append((pos >= lo[:, None]) & (pos < lo[:, None] + k))    # (n, size)
    cut = inside[0][:, :, None] & inside[1][:, None, :]                  # (n, H, W)
    return torch.where(cut[:, None], 0.0, x)


def diff_augment(images: torch.Tensor, draw: Draw,
                 policy: str = "color,translation,cutout") -> torch.Tensor:
    """DiffAugment of ``images`` ``(N, C, H, W)``: the comma-separated ``policy`` entries
    ("color", "translation", "cutout") applied to every image in order (see the module
    docstring). Differentiable to second order; same shape, dtype and device."""
    _check_images(images, "diff_augment")
    entries = _parse_policy(policy)
    n = images.shape[0]
    dtype = _compute_dtype(images)
    x = images.to(dtype)
    for entry in entries:
        if entry == "color":
            x = _diff_color(x, _draw(draw, torch.rand, n, 3, x))
        elif entry == "translation":
            x = _diff_translate(x, _draw(draw, torch.rand, n, 2, x))
        else:
            x = _diff_cutout(x, _draw(draw, torch.rand, n, 2, x))
    return x.to(images.dtype)
