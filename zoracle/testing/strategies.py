"""Hypothesis strategies for property-testing zoracle and your own oracles (needs hypothesis)."""

from __future__ import annotations

import numbers

import numpy as np
try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("zoracle.testing.strategies needs hypothesis: pip install -e '.[test]'") from exc

from .._errors import ArgumentError
from ._quadratic import QuadraticOracle

__all__ = ["params_arrays", "quadratic_oracles", "quadratic_problems"]


def params_arrays(dim=st.integers(1, 50), dtype=np.float64, scale: float = 10.0):
    """Finite 1-D parameter arrays of the given ``dtype``, entries in ``[-scale, scale]`` (rounded
    inwards to float32: the entries are float32 values), their length drawn from ``dim`` (a
    strategy of ints)."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 0 < scale < np.inf:
        raise ArgumentError(f"`scale` must be a finite number > 0, got {scale!r}")
    hi = np.float32(min(float(scale), float(np.finfo(np.float32).max)))
    if float(hi) > scale:  # rounded up to the nearest float32: one step back
        hi = np.nextafter(hi, np.float32(0))
    hi = float(hi)
    return dim.flatmap(
        lambda d: st.lists(
            st.floats(-hi, hi, allow_nan=False, allow_infinity=False, width=32), min_size=d, max_size=d
        ).map(lambda v: np.asarray(v, dtype=dtype))
    )


@st.composite
def quadratic_oracles(draw, dim=st.integers(1, 50), n_blocks=st.integers(1, 4), psd: bool = False):
    """``QuadraticOracle`` with random A (symmetric; PSD if ``psd``), b, and contiguous blocks: its
    dimension drawn from ``dim`` and its number of blocks from ``n_blocks`` (strategies of ints;
    at most the dimension)."""
    d = draw(dim)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((d, d))
    A = M @ M.T / d if psd else 0.5 * (M + M.T)
    b = rng.standard_normal(d)
    k = min(draw(n_blocks), d)
    cuts = sorted(rng.choice(np.arange(1, d), size=k - 1, replace=False).tolist()) if k > 1 else []
    edges = [0, *cuts, d]
    blocks = [slice(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
    return QuadraticOracle(A, b, c=float(rng.standard_normal()), blocks=blocks)


@st.composite
def quadratic_problems(draw, dim=st.integers(1, 50), **kw):
    """``(oracle, params)`` pairs with a known gradient ``oracle.grad(params)``: the oracle from
    :func:`quadratic_oracles` with ``dim`` and ``**kw`` (``n_blocks``, ``psd``)."""
    oracle = draw(quadratic_oracles(dim=dim, **kw))
    d = oracle.A.shape[0]
    seed = draw(st.integers(0, 2**32 - 1))
    x = np.random.default_rng(seed).uniform(-3, 3, size=d)
    return oracle, x
