"""Stacked digits: a 1000-mode image benchmark of mode collapse, after Stacked MNIST.

Stacked MNIST (Metz et al. 2017, Unrolled GAN; used again by VEEGAN and PacGAN) stacks three
MNIST digits as the R, G, B channels of one image, so the data has 10 x 10 x 10 = 1000 modes, one
per digit triple. A pretrained classifier labels each channel of a generated image; the score is
the number of triples that get at least one of the generated samples, and KL(q || uniform) of the
triples' empirical distribution q (26k samples in the papers).

Here the digits are scikit-learn's bundled 8x8 set (``sklearn.datasets.load_digits``: 1797
grayscale images, integer values 0..16, classes of 174..183 images), so no download is needed and
a GAN trains on them on a CPU in minutes.

Pixel scales, one mapping each way:

* sklearn value ``v`` in 0..16 -> uint8 ``(255 * v + 8) // 16``: ``round(v * 255 / 16)`` with
  halves rounded up, so 0 -> 0, 8 -> 128 (127.5 rounded up), 16 -> 255. These are the images
  :func:`stacked_digits` returns and ``pack_arrays`` stores losslessly as PNG.
* uint8 ``u`` -> ``u / 127.5 - 1`` in [-1, 1]: what the training pipeline feeds to D
  (``scalegan.data.pipeline``) and the range G's images live in. :class:`DigitClassifier` works
  on this scale.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = [
    "NUM_MODES",
    "DigitClassifier",
    "digit_images",
    "digit_precision",
    "digit_split",
    "mode_coverage",
    "stacked_digits",
    "to_signed",
]

NUM_DIGITS = 10
NUM_MODES = NUM_DIGITS ** 3  # one mode per (R, G, B) digit triple


@functools.cache
def _load() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits as ``(images (1797, 8, 8) uint8 in 0..255, labels (1797,) int64)``.

    Cached and read-only: callers share one copy.
    """
    from sklearn.datasets import load_digits  # scikit-learn only needed for this benchmark

    data = load_digits()
    values = data.images.astype(np.int64)  # (1797, 8, 8), integers 0..16 stored as float64
    images = ((255 * values + 8) // 16).astype(np.uint8)  # round(v * 255 / 16), halves up
    labels = data.target.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All of sklearn's digits: ``images`` ``(1797, 8, 8)`` uint8 in 0..255 (the module's mapping
    of 0..16) and ``labels`` ``(1797,)`` int64 digit ids; read-only arrays."""
    return _load()


def to_signed(images: np.ndarray) -> np.ndarray:
    """uint8 pixels 0..255 -> float32 ``u / 127.5 - 1`` in [-1, 1] (the training pipeline's
    scale), any shape."""
    if images.dtype != np.uint8:
        raise TypeError(f"to_signed: expected uint8 pixels, got {images.dtype}")
    return images.astype(np.float32) / 127.5 - 1.0


def stacked_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` stacked-digit images and their digit triples.

    Each of the R, G, B channels is one of sklearn's 1797 digit images, drawn uniformly with
    replacement and independently of the other channels (so a triple's probability is the product
    of its digits' class shares, about 1/1000 each).

    Returns ``images`` ``(n, 8, 8, 3)`` uint8 in 0..255 (see the module docstring for the scale)
    and ``labels`` ``(n, 3)`` int64, ``labels[i, c]`` the digit in channel ``c`` of image ``i``.
    The same ``(n, seed)`` gives the same arrays.
    """
    if n < 0:
        raise ValueError(f"stacked_digits: n must be >= 0, got {n}")
    images, labels = _load()
    draws = np.random.default_rng(seed).integers(0, len(images), size=(n, 3))  # (n, 3)
    stacked = np.ascontiguousarray(images[draws].transpose(0, 2, 3, 1))  # (n, 8, 8, 3)
    return stacked, labels[draws]


def digit_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices into :func:`digit_images` of a stratified 75% / 25% split of the 1797 digits:
    ``(train (1347,), test (450,))`` int64, from ``train_test_split(random_state=seed)``."""
    from sklearn.model_selection import train_test_split

    _, labels = _load()
    train, test = train_test_split(np.arange(len(labels)), test_size=0.25, random_state=seed,
                                   stratify=labels)
    return train, test


class DigitClassifier:
    """Multinomial logistic regression on the 64 pixels of an 8x8 digit, in [-1, 1].

    ``fit(seed)`` fits on the training part of ``digit_split(seed)`` (75% of sklearn's digits,
    stratified) and stores the held-out accuracy in ``test_accuracy``: 0.978 (440 of 450) with
    ``seed=0``.

    Inputs of :meth:`predict` and :meth:`predict_stacked` are floats on the [-1, 1] scale of G's
    images; values outside it are clipped first, as writing the image out would.
    """

    def __init__(self) -> None:
        self.model = None
        self.test_accuracy = math.nan

    def fit(self, seed: int = 0) -> DigitClassifier:
        """Fit on the training part of the split ``seed``; returns ``self``."""
        from sklearn.linear_model import LogisticRegression

        images, labels = _load()
        x = to_signed(images).reshape(len(images), -1)  # (1797, 64)
        train, test = digit_split(seed)
        # C = 1 (sklearn's default): 0.978 held out; C = 0.1 gives 0.962, 0.01 gives 0.942
        self.model = LogisticRegression(C=1.0, max_iter=2000).fit(x[train], labels[train])
        self.test_accuracy = float(self.model.score(x[test], labels[test]))
        return self

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, 10)`` float64 of ``images`` ``(N, 8, 8)`` float in [-1, 1]
        (numpy or torch)."""
        if self.model is None:
            raise RuntimeError("DigitClassifier: call fit() first")
        images = _as_numpy(images)
        is_float = np.issubdtype(images.dtype, np.floating)
        if images.ndim != 3 or images.shape[1:] != (8, 8) or not is_float:
            raise ValueError(f"DigitClassifier: expected float images (N, 8, 8) in [-1, 1] "
                             f"(uint8 pixels: pass to_signed(images)), got "
                             f"{images.dtype} {images.shape}")
        x = np.clip(images.reshape(len(images), 64).astype(np.float32), -1.0, 1.0)  # (N, 64)
        return self.model.predict_proba(x)  # columns are classes 0..9 in order

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Digit ids ``(N,)`` int64 of ``images`` ``(N, 8, 8)`` float in [-1, 1] (numpy or
        torch): the most probable class."""
        return self.probabilities(images).argmax(axis=1).astype(np.int64)

    def predict_stacked(self, images: np.ndarray) -> np.ndarray:
        """Digit triples ``(N, 3)`` int64 of stacked images ``(N, 3, 8, 8)`` float in [-1, 1]
        (channels first, as G outputs them; a torch tensor is accepted): column ``c`` is the
        digit read from channel ``c``."""
        images = _as_numpy(images)
        if images.ndim != 4 or images.shape[1:] != (3, 8, 8):
            raise ValueError(f"DigitClassifier.predict_stacked: expected images (N, 3, 8, 8), "
                             f"got {images.shape}")
        n = len(images)
        return self.predict(images.reshape(n * 3, 8, 8)).reshape(n, 3)


def _as_numpy(array) -> np.ndarray:
    """A numpy array of ``array`` (numpy, list or torch tensor; torch floats become float32)."""
    if hasattr(array, "detach"):  # a torch tensor; torch is not imported for numpy callers
        array = array.detach().cpu()
        return (array.float() if array.is_floating_point() else array).numpy()
    return np.asarray(array)


def digit_precision(images: np.ndarray, k: int = 3, seed: int = 0) -> float:
    """Share of ``images`` ``(M, 8, 8)`` float in [-1, 1] (numpy or torch; clipped to it) that
    look like some real digit: the improved precision of Kynkäänniemi et al. 2019 in pixel space.

    Each digit of the training part of ``digit_split(seed)`` gets a ball whose radius is the
    Euclidean distance (64 pixels on the [-1, 1] scale) to its k-th nearest other training digit;
    an image counts if it lies in at least one ball. Reference values (k = 3, seed 0): 0.88 for
    the 450 held-out digits, 0 for uniform noise in [-1, 1].

    This is not part of the Stacked-MNIST protocol. It is there because the protocol's mode count
    alone cannot tell digits from noise: the classifier gives every image some digit, and uniform
    noise covers all 1000 triples.
    """
    from scalegan.metrics.pr import coverage, knn_radii  # torch only needed here

    images = _as_numpy(images)
    if images.ndim != 3 or images.shape[1:] != (8, 8):
        raise ValueError(f"digit_precision: expected images (M, 8, 8), got {images.shape}")
    pool, _ = _load()
    train, _ = digit_split(seed)
    centers = to_signed(pool[train]).reshape(len(train), 64)  # (1347, 64)
    queries = np.clip(images.reshape(len(images), 64), -1.0, 1.0)  # (M, 64)
    return coverage(queries, centers, knn_radii(centers, k=k))


def mode_coverage(triples: np.ndarray) -> dict:
    """Modes covered by digit triples ``(N, 3)`` with ids 0..9, N >= 1.

    Returns ``"modes"``: the number of distinct triples (of 1000), and ``"kl"``: KL(q || uniform)
    in nats, ``sum_t q_t log(1000 q_t)`` over the triples with ``q_t > 0`` (0 log 0 = 0), where
    ``q_t`` is the share of the N samples with triple t: 0 when all 1000 triples are equally
    frequent, ``log 1000`` = 6.908 when a single triple is.
    """
    triples = _as_numpy(triples)
    if triples.ndim != 2 or triples.shape[1] != 3 or len(triples) == 0:
        raise ValueError(f"mode_coverage: expected triples (N, 3) with N >= 1, "
                         f"got {triples.shape}")
    if not np.issubdtype(triples.dtype, np.integer):
        raise ValueError(f"mode_coverage: expected integer digit ids, got {triples.dtype}")
    if triples.min() < 0 or triples.max() >= NUM_DIGITS:
        raise ValueError(f"mode_coverage: digit ids must be in 0..9, got "
                         f"{triples.min()}..{triples.max()}")
    ids = triples.astype(np.int64) @ np.array([100, 10, 1])  # (N,) triple id, 0..999
    counts = np.bincount(ids, minlength=NUM_MODES)  # (1000,)
    q = counts[counts > 0] / len(ids)
    return {"modes": int(len(q)), "kl": float(np.sum(q * np.log(NUM_MODES * q)))}
