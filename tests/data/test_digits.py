"""Stacked digits: pixel mapping, draws, the classifier and mode coverage.

References are independent of the module: the pixel scale by float rounding of sklearn's raw
values, KL by its formula on hand-made histograms, and coverage of real data by the occupancy
formula.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from scalegan.data.digits import (
    NUM_MODES,
    DigitClassifier,
    digit_images,
    digit_precision,
    digit_split,
    mode_coverage,
    stacked_digits,
    to_signed,
)


@pytest.fixture(scope="module")
def classifier() -> DigitClassifier:
    return DigitClassifier().fit(seed=0)


def _channels_first_signed(images: np.ndarray) -> np.ndarray:
    return to_signed(images).transpose(0, 3, 1, 2)  # (N, 8, 8, 3) -> (N, 3, 8, 8)


# ------------------------------------------------------------------------------------ the images


def test_pixel_mapping_rounds_sixteenths_to_bytes():
    raw = load_digits()
    images, labels = digit_images()
    want = np.floor(raw.images * 255.0 / 16.0 + 0.5)  # round half up, in float
    assert images.dtype == np.uint8 and images.shape == (1797, 8, 8)
    np.testing.assert_array_equal(images, want)
    np.testing.assert_array_equal(labels, raw.target)
    # the three values the docstring names: 0 -> 0, 8 -> 127.5 rounded up, 16 -> 255
    for v, u in ((0, 0), (8, 128), (16, 255)):
        assert set(images[raw.images == v].tolist()) == {u}


def test_stacked_digits_channels_are_images_of_their_labels():
    images, labels = stacked_digits(500, seed=3)
    assert images.shape == (500, 8, 8, 3) and images.dtype == np.uint8
    assert labels.shape == (500, 3) and labels.dtype == np.int64
    pool, pool_labels = digit_images()
    classes_of: dict[bytes, set[int]] = {}
    for img, label in zip(pool, pool_labels, strict=True):
        classes_of.setdefault(img.tobytes(), set()).add(int(label))
    for i in range(len(images)):
        for c in range(3):
            channel = np.ascontiguousarray(images[i, :, :, c])
            assert int(labels[i, c]) in classes_of.get(channel.tobytes(), set()), (i, c)


def test_stacked_digits_are_seeded_uniform_and_independent_across_channels():
    a_img, a_lab = stacked_digits(20000, seed=5)
    b_img, b_lab = stacked_digits(20000, seed=5)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(stacked_digits(100, seed=6)[1], a_lab[:100])
    # each class holds 174..183 of the 1797 images, so a uniform draw gives shares 0.097..0.102;
    # a share's sampling std at n = 20000 is 0.0021
    shares = np.stack([np.bincount(a_lab[:, c], minlength=10) / len(a_lab) for c in range(3)])
    assert np.all(np.abs(shares - 0.1) < 0.01)
    # independent channels agree on the digit with probability sum_k p_k^2 ~ 0.100 (one shared
    # draw would make it 1); std of the rate 0.0021
    for c0, c1 in ((0, 1), (0, 2), (1, 2)):
        assert abs(np.mean(a_lab[:, c0] == a_lab[:, c1]) - 0.1) < 0.01


# --------------------------------------------------------------------------------- the classifier


def test_classifier_held_out_accuracy(classifier):
    # measured: 0.9778 (440 of 450 held-out digits, split seed 0)
    assert classifier.test_accuracy == pytest.approx(440 / 450, abs=1e-9)


def test_classifier_reads_each_channel_of_real_stacked_digits(classifier):
    images, labels = stacked_digits(10000, seed=11)
    predicted = classifier.predict_stacked(_channels_first_signed(images))
    assert predicted.shape == (10000, 3) and predicted.dtype == np.int64
    accuracy = (predicted == labels).mean(axis=0)
    # measured 0.992, 0.993, 0.990: 3/4 of the pool is training data (0.996), 1/4 held out (0.978)
    assert np.all(accuracy >= 0.98), accuracy


def test_classifier_inputs(classifier):
    images, _ = stacked_digits(64, seed=2)
    x = _channels_first_signed(images)
    want = classifier.predict_stacked(x)
    np.testing.assert_array_equal(classifier.predict_stacked(torch.from_numpy(x)), want)
    np.testing.assert_array_equal(classifier.predict(x[:, 1]), want[:, 1])
    # values beyond [-1, 1] are clipped first; unclipped, the scaled images read differently
    scaled = 3 * x
    clipped = classifier.predict_stacked(np.clip(scaled, -1, 1))
    np.testing.assert_array_equal(classifier.predict_stacked(scaled), clipped)
    unclipped = classifier.model.predict(scaled.reshape(-1, 64)).reshape(-1, 3)
    assert np.any(unclipped != clipped)
    with pytest.raises(ValueError, match="to_signed"):
        classifier.predict(images[..., 0])  # uint8 pixels
    with pytest.raises(ValueError, match=r"\(N, 3, 8, 8\)"):
        classifier.predict_stacked(x.transpose(0, 2, 3, 1))  # channels last
    with pytest.raises(RuntimeError, match="fit"):
        DigitClassifier().predict(x[:, 0])


# ------------------------------------------------------------------------------ digit precision


def test_digit_split_is_a_stratified_partition():
    train, test = digit_split(seed=0)
    assert len(train) == 1347 and len(test) == 450
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    _, labels = digit_images()
    per_class = np.bincount(labels, minlength=10)
    assert np.all(np.abs(np.bincount(labels[test], minlength=10) - per_class / 4) <= 1)
    assert not np.array_equal(digit_split(seed=1)[1], test)


def _precision_brute_force(queries_u8: np.ndarray, k: int) -> float:
    """Kynkaanniemi precision with exact integer distances: squared distances on the 0..255
    scale are integers, and the [-1, 1] scale only divides them all by 127.5 ** 2."""
    pool, _ = digit_images()
    train, _ = digit_split(seed=0)
    centers = pool[train].reshape(len(train), 64).astype(np.int64)
    queries = queries_u8.reshape(len(queries_u8), 64).astype(np.int64)
    radii_sq = np.sort(_squared_distances(centers, centers), axis=1)[:, k]  # col 0: itself
    inside = _squared_distances(queries, centers) <= radii_sq  # (Q, 1347)
    return float(np.mean(inside.any(axis=1)))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, 64), (B, 64) int64 -> (A, B) exact squared distances |a|^2 + |b|^2 - 2 a.b."""
    return (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T


def test_digit_precision_against_brute_force():
    pool, _ = digit_images()
    train, test = digit_split(seed=0)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (200, 8, 8), dtype=np.uint8)
    blends = ((pool[test[:225]].astype(np.int64) + pool[test[225:]]) // 2).astype(np.uint8)
    for queries, want in ((pool[test], 0.884), (noise, 0.0), (blends, None)):
        got = digit_precision(to_signed(queries))
        assert got == pytest.approx(_precision_brute_force(queries, k=3), abs=1e-12)
        if want is not None:  # measured: 398 of the 450 held-out digits; no noise image
            assert got == pytest.approx(want, abs=0.001)
    assert digit_precision(torch.from_numpy(to_signed(pool[train[:50]]))) == 1.0  # own balls
    # clipping: pushing pixels beyond [-1, 1] changes nothing
    held_out = to_signed(pool[test])
    assert digit_precision(held_out * 5) == digit_precision(np.clip(held_out * 5, -1, 1))


# ---------------------------------------------------------------------------------- mode coverage


def _all_triples() -> np.ndarray:
    return np.array([(a, b, c) for a in range(10) for b in range(10) for c in range(10)])


def test_mode_coverage_of_hand_made_histograms():
    uniform = mode_coverage(np.repeat(_all_triples(), 3, axis=0))
    assert uniform["modes"] == NUM_MODES and abs(uniform["kl"]) < 1e-12
    single = mode_coverage(np.tile([[4, 0, 7]], (25, 1)))
    assert single["modes"] == 1 and single["kl"] == pytest.approx(math.log(1000), rel=1e-12)
    # q = (3/4, 1/4) on two triples: KL = 3/4 log(1000 * 3/4) + 1/4 log(1000 * 1/4)
    two = mode_coverage(np.array([[0, 0, 0]] * 3 + [[1, 2, 3]]))
    assert two["modes"] == 2
    assert two["kl"] == pytest.approx(0.75 * math.log(750) + 0.25 * math.log(250), rel=1e-12)
    # a triple is ordered: (1, 2, 3), (3, 2, 1) and (2, 1, 3) are three modes, equally frequent
    perm = mode_coverage(torch.tensor([[1, 2, 3], [3, 2, 1], [2, 1, 3]]))
    assert perm["modes"] == 3 and perm["kl"] == pytest.approx(math.log(1000 / 3), rel=1e-12)


def test_mode_coverage_rejects_bad_triples():
    for bad in (np.zeros((0, 3), int), np.zeros((4, 2), int), np.array([[0, 0, 10]]),
                np.array([[0, -1, 0]]), np.zeros((2, 3))):
        with pytest.raises(ValueError, match="mode_coverage"):
            mode_coverage(bad)


def test_real_stacked_digits_cover_every_mode(classifier):
    n = 10000
    images, _ = stacked_digits(n, seed=13)
    coverage = mode_coverage(classifier.predict_stacked(_channels_first_signed(images)))
    # occupancy: 1000 * (1 - (1 - 1/1000) ** n) = 999.95 modes expected for uniform triples; the
    # classifier's ~1% errors per channel only move mass between triples, keeping q near uniform
    expected_modes = NUM_MODES * (1 - (1 - 1 / NUM_MODES) ** n)
    assert expected_modes == pytest.approx(999.95, abs=0.01)
    assert coverage["modes"] >= 997  # measured 1000
    # the plug-in KL of n uniform draws is (K - 1) / (2 n) = 0.050 on average (std 0.002);
    # class imbalance and classifier errors add ~0.002. measured 0.052
    assert abs(coverage["kl"] - (NUM_MODES - 1) / (2 * n)) < 0.01, coverage
