"""The bundled scikit-learn digits (1797 8x8 images, no download), split and scaled.

Reusable by every app: :func:`load_digits_split` gives stratified train/test arrays as
``(N, 1, 8, 8)`` float32 images in [0, 1] and int64 labels; :func:`per_class` draws a small
class-balanced subset (ZO-GraSP scores on about 25 samples per class).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Digits", "load_digits_split", "per_class"]


@dataclass(frozen=True)
class Digits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.y_train.max()) + 1


def load_digits_split(test_size: float = 0.2, seed: int = 0, flat: bool = False) -> Digits:
    """Stratified split of ``sklearn.datasets.load_digits``.

    Parameters
    ----------
    test_size : float
        Share of each class held out (default 20%: 1438 train / 359 test).
    seed : int
        Seeds the split.
    flat : bool
        ``(N, 64)`` instead of ``(N, 1, 8, 8)``.
    """
    from sklearn.datasets import load_digits

    if not 0 < test_size < 1:
        raise ValueError(f"`test_size` must be in (0, 1), got {test_size!r}")
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, size=int(round(test_size * len(idx))), replace=False)] = True
    x = x.reshape(len(y), -1) if flat else x[:, None]
    return Digits(x[~test], y[~test], x[test], y[test])


def per_class(x, y, n: int = 25, seed: int = 0):
    """``n`` samples per class (all of a class if it has fewer), in a fixed shuffled order."""
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n] for c in np.unique(y)])
    idx = rng.permutation(idx)
    return x[idx], y[idx]
