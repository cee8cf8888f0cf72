"""SNES's sums over its population stay within `budget_bytes` (plus the rows SNES keeps drawn),
measured with tracemalloc, which sees NumPy's buffers; no timing. The bits are pinned by
tests/test_snes.py and tests/test_estimators.py."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import zoracle as zo
from zoracle import _estimators, _plan


class CheapBatch:
    """A loss that allocates nothing of the block's size: the peak is the estimate's own."""

    def __call__(self, x):
        return float(x[0])

    def batch(self, X):
        return X[:, 0].astype(np.float64)


def _peak(x, est, budget) -> int:
    zo.estimate_gradient(CheapBatch(), x[:8], zo.SNES(mu=1e-2), rng=0)  # first-call imports: not the estimate's
    tracemalloc.start()
    try:
        got = zo.estimate_gradient(CheapBatch(), x, est, rng=0, budget_bytes=budget)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.nfev == est.population and np.all(np.isfinite(got.grad)) and np.all(got.state > 0)
    return peak


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kept", [False, True], ids=["no-rows-kept", "rows-kept"])
def test_snes_width_sum_squares_the_block_in_place(monkeypatch, dtype, kept):
    """The width sum ``sum_i u_i (z_i^2 - 1)`` made ``Z * Z - 1.0``, a block-sized array beside
    the block: the sums peaked at 2.4x the budget (38.2 MiB for 16 MiB at d = 2e5, no rows kept),
    on top of the rows SNES keeps drawn for them."""
    d, rows = 20_000, 64
    budget = d * 8 * rows  # the sums' float64 block of `rows` directions (the queries': half of it)
    est = zo.SNES(mu=1e-2, population=3 * rows)  # three full blocks
    kept_bytes = 0
    if kept:  # SNES's reservation keeps every sample's row (a separate, documented cost)
        kept_bytes = est.population * d * 8
    else:  # no rows kept: what is measured is the blocks the budget bounds
        monkeypatch.setattr(_plan._ROWS, "default", 0)
        monkeypatch.setattr(_estimators, "reserve_rows", lambda root, nbytes: None)
    x = np.random.default_rng(0).standard_normal(d).astype(dtype)
    peak = _peak(x, est, budget)
    # the block, plus a few O(d) vectors (sigma, the sums, a product): not two blocks
    assert peak - kept_bytes <= 1.3 * budget, ((peak - kept_bytes) / budget, peak, budget)
