"""A quadratic oracle with every capability and a known gradient (for tests and docs)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._backend import namespace
from .._errors import ArgumentError


class QuadraticOracle:
    r"""``l(x) = 0.5 x^T A x + b^T x + c`` with exact Batch, Coordinate and Split capabilities.

    ``grad(x) = A x + b``; the Hessian is ``A`` (symmetrized). ``blocks`` splits the
    coordinates into contiguous ranges; ``prefix`` returns ``A x`` (not depending on any
    single coordinate's perturbation) so ``suffix`` evaluates perturbations in closed form:
    ``l(x + s e_i) = l(x) + s (Ax + b)_i + s^2 A_ii / 2``.
    """

    #: its batch, coordinate_losses and suffix are the plain call's closed forms: zoracle's one-time
    #: check of a fast path against the plain call (one query more) is not made
    fast_paths_checked = True

    def __init__(self, A, b=None, c: float = 0.0, blocks=None):
        xp = namespace(A)
        try:
            A = xp.asarray(A, dtype=xp.float64)
        except (TypeError, ValueError) as exc:
            raise ArgumentError(f"`A` must be a real (d, d) matrix, got {type(A).__name__} ({exc})") from None
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ArgumentError(f"`A` must be a square (d, d) matrix, got shape {tuple(A.shape)}")
        self.A = 0.5 * (A + A.T)
        d = A.shape[0]
        try:
            self.b = xp.zeros(d) if b is None else xp.asarray(b, dtype=xp.float64)
        except (TypeError, ValueError) as exc:
            raise ArgumentError(f"`b` must be a real vector of length {d} or None, got {type(b).__name__} ({exc})") from None
        if tuple(self.b.shape) != (d,):
            raise ArgumentError(f"`b` must have shape ({d},) to match `A` {tuple(A.shape)}, got {tuple(self.b.shape)}")
        try:
            self.c = float(c)
        except (TypeError, ValueError):
            raise ArgumentError(f"`c` must be a real number, got {c!r}") from None
        if blocks is None:
            blocks = [slice(0, d)]
        self.blocks = list(blocks)

    def __repr__(self) -> str:
        # the default repr (an address) was all a failing property test's report showed of the oracle
        return f"QuadraticOracle(d={self.A.shape[0]}, blocks={len(self.blocks)}, c={self.c!r})"

    def __call__(self, x) -> float:
        x = x.astype(self.A.dtype)
        return float(0.5 * x @ self.A @ x + self.b @ x + self.c)

    def grad(self, x: Any) -> Any:
        """The exact gradient ``A x + b`` at ``x``."""
        return self.A @ x.astype(self.A.dtype) + self.b

    def hessian(self) -> Any:
        """The exact Hessian ``A`` (symmetrized)."""
        return self.A

    def batch(self, X: Any) -> Any:
        """The losses of the ``(k, d)`` rows of ``X``, shape ``(k,)`` (:class:`~zoracle.BatchOracle`)."""
        xp = namespace(X)
        X = X.astype(self.A.dtype)
        return 0.5 * xp.einsum("ki,ij,kj->k", X, self.A, X) + X @ self.b + self.c

    def coordinate_losses(self, x: Any, coords: Any, step: Any) -> Any:
        """The losses at ``x + step * e_i`` for each ``i`` in ``coords``, in closed form
        (:class:`~zoracle.CoordinateOracle`)."""
        xp = namespace(x)
        x64 = x.astype(self.A.dtype)
        c = xp.asarray(coords)
        # the representable step in the caller's dtype, as a perturbed copy would see it
        s = ((x[c] + x.dtype.type(step)) - x[c]).astype(self.A.dtype)
        g = self.A @ x64 + self.b
        return self(x) + s * g[c] + 0.5 * s**2 * self.A[c, c]

    def prefix(self, x, block: int):
        """The features ``A x`` entering ``block`` (the same for every block)."""
        return self.A @ x.astype(self.A.dtype)

    def suffix(self, features, x, block: int, coords, step):
        """:meth:`coordinate_losses` of ``x``, ``coords`` and ``step``, each coordinate inside
        ``block`` (else ValueError); ``features`` are not needed by the closed form."""
        blk = self.blocks[block]
        c = np.asarray(coords)
        if ((c < blk.start) | (c >= blk.stop)).any():
            raise ValueError(f"coords outside block {block}")
        return self.coordinate_losses(x, coords, step)
