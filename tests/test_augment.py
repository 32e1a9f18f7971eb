"""ADA and DiffAugment (scalegan.augment) against results written here from their definitions:
pixel-exact geometry on small known images (expected images built by index arithmetic, reflection
about the edges or zero fill), colour matrices against float64 formulas, first and second
derivatives (gradcheck / gradgradcheck), p = 0 as the identity, RNG consumption independent of p,
two gloo ranks against one process, and the probability of applying a transform."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scalegan.augment import AdaSettings, ada_augment, augment, diff_augment, local_draw

# The documented column layout of ada_augment's three draws (apply uniforms, uniform parameters,
# normal parameters), written out here so that the tests check the contract, not the module.
APPLY = ("xflip", "rotate90", "xint", "scale", "rotate_pre", "aniso", "rotate_post", "xfrac",
         "brightness", "contrast", "lumaflip", "hue", "saturation")
UNIFORM = ("xflip", "rotate90", "xint_x", "xint_y", "rotate_pre", "rotate_post", "lumaflip", "hue")
NORMAL = ("scale", "aniso", "xfrac_x", "xfrac_y", "brightness", "contrast", "saturation")

GEOM_ATOL = 1e-5  # centre-to-centre maps: float32 rounding of cos/sin and of the grid only
ONLY = {t: replace(AdaSettings(), **{o: 0.0 for o in ("xflip", "rotate90", "xint", "scale",
                                                        "rotate", "aniso", "xfrac", "brightness",
                                                        "contrast", "lumaflip", "hue",
                                                        "saturation") if o != t})
        for t in ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness",
                  "contrast", "lumaflip", "hue", "saturation")}


def scripted_draw(*calls: tuple):
    """A draw that returns the given ``(fn, values)`` in order, checking fn and shape."""
    queue = list(calls)

    def draw(fn, n, *shape):
        assert queue, f"unexpected extra draw {fn.__name__}{(n, *shape)}"
        want_fn, values = queue.pop(0)
        assert fn is want_fn, (fn, want_fn)
        assert tuple(values.shape) == (n, *shape), (values.shape, n, shape)
        return values

    draw.remaining = queue
    return draw


def _columns(n: int, names: tuple, values: dict, default: float) -> torch.Tensor:
    out = torch.full((n, len(names)), default)
    for name, v in values.items():
        out[:, names.index(name)] = torch.as_tensor(v, dtype=torch.float32)
    return out


def ada_draw(n: int, apply=(), uniform=None, normal=None):
    """ADA's three draws for ``n`` images: with p = 1 and multipliers 1 exactly the transforms
    in ``apply`` happen (apply uniform 0 < 1; 1.0 is never below a probability <= 1)."""
    apply_u = _columns(n, APPLY, {a: 0.0 for a in apply}, 1.0)
    return scripted_draw((torch.rand, apply_u),
                         (torch.rand, _columns(n, UNIFORM, uniform or {}, 0.5)),
                         (torch.randn, _columns(n, NORMAL, normal or {}, 0.0)))


def known_image(size: int, channels: int = 1) -> list:
    """Nested lists [c][i][j] of distinct values in [-1, 1]."""
    m = size * size * channels - 1
    return [[[2 * (c * size * size + i * size + j) / m - 1 for j in range(size)]
             for i in range(size)] for c in range(channels)]


def as_images(*imgs: list) -> torch.Tensor:
    return torch.tensor(imgs, dtype=torch.float32)


def mirror(k: int, size: int) -> int:
    """Index k of the image mirrored about its outer edges (-1 -> 0, size -> size - 1)."""
    while not 0 <= k < size:
        k = -1 - k if k < 0 else 2 * size - 1 - k
    return k


def remap(img: list, source) -> list:
    """``out[c][i][j] = img[c][source(i, j)]``."""
    size = len(img[0])
    return [[[ch[r][s] for j in range(size) for r, s in [source(i, j)]] for i in range(size)]
            for ch in img]


def rot90_source(k: int, size: int):
    """Output (i, j) reads this input pixel after rotating clockwise on screen by k * 90
    degrees (x right, y down: (x, y) -> (-y, x) for k = 1)."""
    n = size - 1
    return [lambda i, j: (i, j), lambda i, j: (n - j, i), lambda i, j: (n - i, n - j),
            lambda i, j: (j, n - i)][k]


# --- geometry, hand-computed -------------------------------------------------------------------

@pytest.mark.parametrize("size", [4, 5])
def test_xflip_mirrors_or_keeps(size):
    img = known_image(size, 3)
    x = as_images(img, img)
    y = ada_augment(x, 1.0, ada_draw(2, ["xflip"], {"xflip": torch.tensor([0.75, 0.25])}))
    flipped = remap(img, lambda i, j: (i, size - 1 - j))
    torch.testing.assert_close(y, as_images(flipped, img), atol=GEOM_ATOL, rtol=0)


@pytest.mark.parametrize("size", [4, 5])
def test_rotate90_every_multiple_in_one_batch(size):
    img = known_image(size, 1)
    u = torch.tensor([0.125, 0.375, 0.625, 0.875])  # k = floor(4u) = 0, 1, 2, 3
    y = ada_augment(as_images(*[img] * 4), 1.0, ada_draw(4, ["rotate90"], {"rotate90": u}))
    want = as_images(*[remap(img, rot90_source(k, size)) for k in range(4)])
    torch.testing.assert_close(y, want, atol=GEOM_ATOL, rtol=0)


def test_rot90_by_one_is_clockwise_on_a_literal_image():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]) / 4
    y = ada_augment(x, 1.0, ada_draw(1, ["rotate90"], {"rotate90": 0.3}))
    torch.testing.assert_close(y, torch.tensor([[[[3.0, 1.0], [4.0, 2.0]]]]) / 4,
                               atol=GEOM_ATOL, rtol=0)


def test_xint_literal_4x4_with_reflection():
    # xint_max 0.25 on 4x4: t = round((2u - 1) * 1); u 0.9 -> +1 (content right), 0.1 -> -1 (up)
    x = torch.arange(16.0).reshape(1, 1, 4, 4) / 15
    settings = replace(AdaSettings(), xint_max=0.25)
    y = ada_augment(x, 1.0, ada_draw(1, ["xint"], {"xint_x": 0.9, "xint_y": 0.1}), settings)
    want = torch.tensor([[4, 4, 5, 6], [8, 8, 9, 10], [12, 12, 13, 14], [12, 12, 13, 14.0]]) / 15
    torch.testing.assert_close(y[0, 0], want, atol=GEOM_ATOL, rtol=0)


@pytest.mark.parametrize("ux, uy, tx, ty", [(0.7, 0.1, 1, -2), (0.8, 0.99, 2, 3),
                                            (0.0, 0.5, -3, 0)])
def test_xint_moves_content_by_t_and_mirrors_at_the_edges(ux, uy, tx, ty):
    # xint_max 0.6 on 5x5: t = round((2u - 1) * 3)
    img = known_image(5, 3)
    settings = replace(AdaSettings(), xint_max=0.6)
    y = ada_augment(as_images(img), 1.0,
                    ada_draw(1, ["xint"], {"xint_x": ux, "xint_y": uy}), settings)
    want = remap(img, lambda i, j: (mirror(i - ty, 5), mirror(j - tx, 5)))
    torch.testing.assert_close(y, as_images(want), atol=GEOM_ATOL, rtol=0)


@pytest.mark.parametrize("which", ["rotate_pre", "rotate_post", "both"])
def test_rotate_by_a_quarter_turn_matches_rot90(which):
    # theta = (2u - 1) * pi: u = 0.75 -> pi / 2; both at u = 0.625 -> pi / 4 + pi / 4
    img = known_image(5, 3)
    if which == "both":
        draw = ada_draw(1, ["rotate_pre", "rotate_post"],
                        {"rotate_pre": 0.625, "rotate_post": 0.625})
    else:
        draw = ada_draw(1, [which], {which: 0.75})
    y = ada_augment(as_images(img), 1.0, draw)
    torch.testing.assert_close(y, as_images(remap(img, rot90_source(1, 5))),
                               atol=GEOM_ATOL, rtol=0)


def test_fractional_moves_interpolate_bilinearly():
    # in[i][j] = 4i + j on 4x4 (a plane, so bilinear reads it exactly inside the image)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # scale 2 = 2^(5 * 0.2): output centres x in {-1.5, -.5, .5, 1.5} read x / 2, i.e. column
    # indices s = {0.75, 1.25, 1.75, 2.25} (and the same rows)
    s = [0.75, 1.25, 1.75, 2.25]
    y = ada_augment(x, 1.0, ada_draw(1, ["scale"], normal={"scale": 5.0}))
    torch.testing.assert_close(y[0, 0], torch.tensor([[4 * a + b for b in s] for a in s]),
                               atol=1e-5, rtol=0)
    # aniso 2: x scaled by 2 (columns s), y by 1/2: rows read y * 2 -> indices {-1.5, .5, 2.5,
    # 4.5}, mirrored about the edges -> {.5, .5, 2.5, 2.5}
    r = [0.5, 0.5, 2.5, 2.5]
    y = ada_augment(x, 1.0, ada_draw(1, ["aniso"], normal={"aniso": 5.0}))
    torch.testing.assert_close(y[0, 0], torch.tensor([[4 * a + b for b in s] for a in r]),
                               atol=1e-5, rtol=0)
    # xfrac: t = N * 0.125 * 4 = 0.5 px right: out[i][j] = (in[i][j - 1] + in[i][j]) / 2, the
    # column left of the image being column 0
    y = ada_augment(x, 1.0, ada_draw(1, ["xfrac"], normal={"xfrac_x": 1.0}))
    want = [[(4 * i + max(j - 1, 0) + 4 * i + j) / 2 for j in range(4)] for i in range(4)]
    torch.testing.assert_close(y[0, 0], torch.tensor(want), atol=1e-5, rtol=0)


def test_geometry_composes_in_the_published_order():
    # xflip then rot90 (k = 1): out = rot(flip(img)); the other order would give a transpose
    img = known_image(4, 1)
    y = ada_augment(as_images(img), 1.0, ada_draw(1, ["xflip", "rotate90"],
                                                  {"xflip": 0.75, "rotate90": 0.3}))
    flipped = remap(img, lambda i, j: (i, 3 - j))
    torch.testing.assert_close(y, as_images(remap(flipped, rot90_source(1, 4))),
                               atol=GEOM_ATOL, rtol=0)


# --- colour against float64 formulas -----------------------------------------------------------

V = torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64)


def rgb_apply(m: torch.Tensor, x: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", m, x) + offset


def hue_matrix(theta: float) -> torch.Tensor:
    """Rotation about V by theta as the exponential of theta times V's cross-product matrix."""
    k = torch.tensor([[0, -V[2], V[1]], [V[2], 0, -V[0]], [-V[1], V[0], 0]], dtype=torch.float64)
    return torch.linalg.matrix_exp(theta * k)


def colour_cases(x: torch.Tensor) -> dict:
    """name -> (apply, uniform, normal, expected) for 3-channel ``x``."""
    luma = torch.outer(V, V)
    eye = torch.eye(3, dtype=torch.float64)
    mean_c = x.mean(dim=1, keepdim=True)
    return {
        "brightness": (["brightness"], {}, {"brightness": 5.0}, x + 1.0),          # b = 5 * 0.2
        "contrast": (["contrast"], {}, {"contrast": 2.0}, x * 2.0),                # 2^(2 * .5)
        "lumaflip": (["lumaflip"], {"lumaflip": 0.75}, {}, x - 2 * mean_c),       # i = 1
        "lumaflip_off": (["lumaflip"], {"lumaflip": 0.25}, {}, x),                # i = 0
        "hue_third": (["hue"], {"hue": 5 / 6}, {}, x[:, [2, 0, 1]]),              # 2 pi / 3
        "hue": (["hue"], {"hue": 0.3}, {}, rgb_apply(hue_matrix(-0.4 * math.pi), x)),
        "saturation": (["saturation"], {}, {"saturation": 1.0}, mean_c + 2 * (x - mean_c)),
        "saturation_matrix": (["saturation"], {}, {"saturation": -0.5},
                              rgb_apply(luma + (eye - luma) * 2 ** -0.5, x)),
    }


def test_colour_transforms_alone():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 3, 3, generator=gen, dtype=torch.float64) * 2 - 1
    for name, (apply, u, z, want) in colour_cases(x).items():
        y = ada_augment(x, 1.0, ada_draw(2, apply, u, z))
        torch.testing.assert_close(y, want, atol=1e-6, rtol=0, msg=name)


def test_colour_transforms_compose_in_order():
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(1, 3, 2, 2, generator=gen, dtype=torch.float64) * 2 - 1
    names = ["brightness", "contrast", "lumaflip", "hue", "saturation"]
    y = ada_augment(x, 1.0, ada_draw(1, names, {"lumaflip": 0.75, "hue": 0.3},
                                     {"brightness": -1.0, "contrast": 0.6, "saturation": 0.4}))
    want = x - 0.2                                                       # brightness
    want = want * 2 ** 0.3                                               # contrast
    want = want - 2 * want.mean(dim=1, keepdim=True)                     # lumaflip
    want = rgb_apply(hue_matrix(-0.4 * math.pi), want)                   # hue
    mean = want.mean(dim=1, keepdim=True)
    want = mean + 2 ** 0.4 * (want - mean)                               # saturation
    torch.testing.assert_close(y, want, atol=1e-6, rtol=0)


def test_single_channel_colour():
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(2, 1, 3, 3, generator=gen, dtype=torch.float64) * 2 - 1
    every = ["brightness", "contrast", "lumaflip", "hue", "saturation"]
    draw = ada_draw(2, every, {"lumaflip": 0.75, "hue": 0.3}, {"brightness": 1.0,
                                                                 "contrast": 2.0,
                                                                 "saturation": 1.0})
    y = ada_augment(x, 1.0, draw)
    assert not draw.remaining  # hue and saturation drew their numbers too
    torch.testing.assert_close(y, -(x + 0.2) * 2.0, atol=1e-6, rtol=0)
    y = ada_augment(x, 1.0, ada_draw(2, ["hue", "saturation"], {"hue": 0.3},
                                     {"saturation": 1.0}))
    assert torch.equal(y, x)


# --- DiffAugment -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [5, 8])
@pytest.mark.parametrize("ux, uy", [(0.9, 0.1), (0.0, 0.99), (0.5, 0.5)])
def test_diffaugment_translation_zero_fill(size, ux, uy):
    # m = int(size / 8 + 0.5) = 1 for 5 and 8; t = floor(3u) - 1
    tx, ty = math.floor(3 * ux) - 1, math.floor(3 * uy) - 1
    img = known_image(size, 3)
    draw = scripted_draw((torch.rand, torch.tensor([[ux, uy]])))
    y = diff_augment(as_images(img), draw, "translation")
    want = [[[ch[i - ty][j - tx] if 0 <= i - ty < size and 0 <= j - tx < size else 0.0
              for j in range(size)] for i in range(size)] for ch in img]
    torch.testing.assert_close(y, as_images(want), atol=0, rtol=0)


def test_diffaugment_translation_reaches_two_pixels_on_16():
    # m = int(16 / 8 + 0.5) = 2: u = 0 -> t = -2 (content left / up)
    img = known_image(16, 1)
    draw = scripted_draw((torch.rand, torch.tensor([[0.0, 0.0]])))
    y = diff_augment(as_images(img), draw, "translation")
    want = [[[ch[i + 2][j + 2] if i < 14 and j < 14 else 0.0 for j in range(16)]
             for i in range(16)] for ch in img]
    torch.testing.assert_close(y, as_images(want), atol=0, rtol=0)


def test_diffaugment_cutout_literal():
    # 4x4: side k = 2, centre c = floor(5u), rows / columns c - 1 .. c clipped to the image
    x = torch.ones(2, 1, 4, 4)
    draw = scripted_draw((torch.rand, torch.tensor([[0.0, 0.5], [0.99, 0.3]])))
    y = diff_augment(x, draw, "cutout")
    want0 = [[1, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]]  # cx 0, cy 2
    want1 = [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]  # cx 4, cy 1
    torch.testing.assert_close(y[:, 0], torch.tensor([want0, want1], dtype=torch.float32),
                               atol=0, rtol=0)


def test_diffaugment_cutout_odd_side():
    # 5x5: k = int(2.5 + 0.5) = 3, centre c = floor(5u) in 0..4, rows / columns c - 1 .. c + 1
    x = torch.ones(1, 2, 5, 5)
    draw = scripted_draw((torch.rand, torch.tensor([[0.5, 0.1]])))  # cx 2, cy 0
    y = diff_augment(x, draw, "cutout")
    want = [[0.0 if i <= 1 and 1 <= j <= 3 else 1.0 for j in range(5)] for i in range(5)]
    torch.testing.assert_close(y, torch.tensor([[want, want]]), atol=0, rtol=0)


def test_diffaugment_color_formulas():
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(2, 3, 3, 3, generator=gen, dtype=torch.float64) * 2 - 1
    u = torch.tensor([[0.1, 0.8, 0.3], [0.7, 0.25, 0.9]])
    y = diff_augment(x, scripted_draw((torch.rand, u)), "color")
    ud = u.double()
    want = x + (ud[:, 0] - 0.5)[:, None, None, None]
    mean = want.mean(dim=1, keepdim=True)
    want = (want - mean) * 2 * ud[:, 1, None, None, None] + mean
    mean = want.mean(dim=(1, 2, 3), keepdim=True)
    want = (want - mean) * (ud[:, 2, None, None, None] + 0.5) + mean
    torch.testing.assert_close(y, want, atol=1e-6, rtol=0)


def test_diffaugment_draws_in_policy_order():
    x = torch.zeros(3, 3, 8, 8)
    draw = scripted_draw((torch.rand, torch.rand(3, 2)), (torch.rand, torch.rand(3, 3)),
                         (torch.rand, torch.rand(3, 2)))
    diff_augment(x, draw, "cutout, color,translation")
    assert not draw.remaining


# --- errors, identity, dtype -------------------------------------------------------------------

def test_errors_name_the_value():
    x = torch.zeros(1, 3, 4, 4)
    draw = local_draw(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="'cutmix'"):
        diff_augment(x, draw, "color,cutmix")
    with pytest.raises(ValueError, match="'adaptive'"):
        augment(x, "adaptive", 0.5, draw)
    with pytest.raises(ValueError, match="'bgcf'"):
        AdaSettings.preset("bgcf")
    with pytest.raises(ValueError, match="AdaSettings.scale_std"):
        AdaSettings(scale_std=-1.0)
    with pytest.raises(ValueError, match="C=2"):
        ada_augment(torch.zeros(1, 2, 4, 4), 1.0, draw)
    with pytest.raises(ValueError, match="p=1.5"):
        ada_augment(x, 1.5, draw)


def test_presets_keep_their_group():
    groups = {"blit": {"xflip", "rotate90", "xint"},
              "geom": {"scale", "rotate", "aniso", "xfrac"},
              "color": {"brightness", "contrast", "lumaflip", "hue", "saturation"}}
    every = set().union(*groups.values())
    for name, kept in [*groups.items(), ("bgc", every)]:
        s = AdaSettings.preset(name)
        assert {t for t in every if getattr(s, t) == 1.0} == kept, name
        assert {t for t in every if getattr(s, t) == 0.0} == every - kept, name
        assert s.scale_std == 0.2 and s.contrast_std == 0.5
    assert AdaSettings.preset("bgc") == AdaSettings()


@pytest.mark.parametrize("channels", [1, 3])
def test_p0_and_none_are_the_identity(channels):
    gen = torch.Generator().manual_seed(8)
    x = torch.rand(6, channels, 5, 5, generator=gen) * 2 - 1
    assert torch.equal(ada_augment(x, 0.0, local_draw(torch.Generator().manual_seed(1))), x)
    assert torch.equal(augment(x, "fixed", torch.tensor(0.0),
                               local_draw(torch.Generator().manual_seed(1))), x)

    def no_draw(*args):
        raise AssertionError("kind='none' must not draw")

    assert torch.equal(augment(x, "none", 1.0, no_draw), x)


def test_dtype_is_kept():
    gen = torch.Generator().manual_seed(9)
    x = (torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1).bfloat16()
    for kind in ("ada", "diffaugment"):
        ref = augment(x.float(), kind, 1.0, local_draw(torch.Generator().manual_seed(2)))
        y = augment(x, kind, 1.0, local_draw(torch.Generator().manual_seed(2)))
        assert y.dtype == torch.bfloat16 and y.shape == x.shape
        torch.testing.assert_close(y.float(), ref, atol=2e-2, rtol=1e-2)


# --- derivatives -------------------------------------------------------------------------------

def _seeded_ada(settings: AdaSettings, p: float = 1.0):
    """ada_augment with the same draws at every call (gradcheck evaluates many times)."""
    def fn(x):
        return ada_augment(x, p, local_draw(torch.Generator().manual_seed(11)), settings)
    return fn


def _seeded_diff(policy: str):
    def fn(x):
        return diff_augment(x, local_draw(torch.Generator().manual_seed(12)), policy)
    return fn


@pytest.mark.parametrize("transform", sorted(ONLY))
def test_gradcheck_each_ada_transform(transform):
    gen = torch.Generator().manual_seed(13)
    x = (torch.rand(3, 3, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_()
    fn = _seeded_ada(ONLY[transform])
    assert not torch.allclose(fn(x), x)  # the transform did something
    assert torch.autograd.gradcheck(fn, (x,))


@pytest.mark.parametrize("policy", ["color", "translation", "cutout"])
def test_gradcheck_each_diffaugment_entry(policy):
    gen = torch.Generator().manual_seed(14)
    x = (torch.rand(2, 3, 5, 5, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradcheck(_seeded_diff(policy), (x,))


@pytest.mark.parametrize("channels", [1, 3])
def test_gradcheck_and_gradgradcheck_whole_ada_pipeline(channels):
    gen = torch.Generator().manual_seed(15)
    x = torch.rand(2, channels, 5, 5, generator=gen, dtype=torch.float64) * 2 - 1
    assert torch.autograd.gradcheck(_seeded_ada(AdaSettings()), (x.clone().requires_grad_(),))
    small = x[:1, :, :4, :4].clone().requires_grad_()
    assert torch.autograd.gradgradcheck(_seeded_ada(AdaSettings()), (small,))


def test_gradgradcheck_diffaugment():
    gen = torch.Generator().manual_seed(16)
    x = (torch.rand(1, 3, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradcheck(_seeded_diff("color,translation,cutout"), (x,))
    assert torch.autograd.gradgradcheck(_seeded_diff("color,translation,cutout"), (x,))


def test_r1_through_ada_matches_a_finite_difference():
    # R1's take: d/dw of |d D(aug(x)) / dx|^2 for a nonlinear D, against central differences
    gen = torch.Generator().manual_seed(17)
    x = (torch.rand(2, 3, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_()
    w = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64)
    aug = _seeded_ada(AdaSettings())

    def penalty(w):
        d = torch.tanh(aug(x) * w).sum()
        (g,) = torch.autograd.grad(d, x, create_graph=True)
        return g.square().sum()

    assert torch.autograd.gradcheck(penalty, (w.requires_grad_(),))


# --- randomness --------------------------------------------------------------------------------

def test_same_state_same_output_and_consumption_independent_of_p():
    gen = torch.Generator().manual_seed(18)
    x = torch.rand(5, 3, 6, 6, generator=gen) * 2 - 1
    for kind in ("ada", "diffaugment"):
        a = augment(x, kind, 0.7, local_draw(torch.Generator().manual_seed(3)))
        b = augment(x, kind, 0.7, local_draw(torch.Generator().manual_seed(3)))
        assert torch.equal(a, b), kind
    states = []
    for p in (0.0, 0.3, 1.0):
        g = torch.Generator().manual_seed(4)
        for settings in (AdaSettings(), AdaSettings.preset("blit")):
            ada_augment(x, p, local_draw(g), settings)
        states.append(g.get_state())
    assert torch.equal(states[0], states[1]) and torch.equal(states[0], states[2])
    assert not torch.equal(states[0], torch.Generator().manual_seed(4).get_state())


def _fraction(changed: torch.Tensor) -> float:
    return changed.double().mean().item()


def test_apply_probability_xflip_and_rotation_pair():
    n, p = 4000, 0.5
    x = torch.tensor([[0.0, 1.0], [0.5, -1.0]]).expand(n, 1, 2, 2)
    y = ada_augment(x, p, local_draw(torch.Generator().manual_seed(5)), ONLY["xflip"])
    flipped = torch.isclose(y, x.flip(3), atol=1e-5).flatten(1).all(dim=1)
    kept = torch.allclose(y[~flipped], x[~flipped], atol=1e-5)
    q = p * 0.5  # applied with p, then a flip half the time
    assert kept and abs(_fraction(flipped) - q) < 4 * math.sqrt(q * (1 - q) / n)
    # each of the two rotations with 1 - sqrt(1 - p): at least one with probability p
    y = ada_augment(x, p, local_draw(torch.Generator().manual_seed(6)), ONLY["rotate"])
    rotated = (y - x).abs().flatten(1).amax(dim=1) > 1e-4
    assert abs(_fraction(rotated) - p) < 4 * math.sqrt(p * (1 - p) / n)


# --- two gloo ranks against one process --------------------------------------------------------

def _whole_batch() -> torch.Tensor:
    return torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(19)) * 2 - 1


def _augment_all(images: torch.Tensor, rank: int, world: int) -> dict:
    out = {}
    for kind in ("ada", "diffaugment"):
        draw = local_draw(torch.Generator().manual_seed(20), rank=rank, world=world)
        out[kind] = torch.cat([augment(images, kind, 0.6, draw) for _ in range(2)])
    return out


def _rank_entry(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        images = _whole_batch()
        n = images.shape[0] // world
        mine = _augment_all(images[rank * n:(rank + 1) * n], rank, world)
        gathered = {}
        for kind, y in mine.items():
            parts = [torch.empty_like(y) for _ in range(world)]
            dist.all_gather(parts, y)
            # each part holds two calls of n images: put the calls back in global order
            gathered[kind] = torch.cat([torch.cat([t[c * n:(c + 1) * n] for t in parts])
                                        for c in range(2)])
        torch.save(gathered, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip the interpreter's teardown, where gloo's threads can abort the process


def test_two_ranks_match_one_process(tmp_path):
    mp.spawn(_rank_entry, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    want = _augment_all(_whole_batch(), 0, 1)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for kind in want:
            torch.testing.assert_close(got[kind], want[kind], atol=1e-6, rtol=0,
                                       msg=f"rank {rank} {kind}")
