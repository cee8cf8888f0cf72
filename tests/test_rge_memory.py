"""RGE's dense blocks of perturbed parameters stay within `budget_bytes` (measured with
tracemalloc, which sees NumPy's buffers; no timing)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import zoracle as zo
from zoracle import _plan


class Cheap:
    """A loss that allocates nothing of the block's size: the peak is the estimate's own."""

    def __call__(self, x):
        return float(x[0])


class CheapBatch(Cheap):
    def batch(self, X):
        return X[:, 0].astype(np.float64)


@pytest.mark.parametrize("oracle, dtype, scheme", [
    (CheapBatch(), np.float64, "central"),
    (CheapBatch(), np.float32, "forward"),
    (Cheap(), np.float64, "forward"),
])
def test_rge_blocks_are_not_held_two_at_a_time(monkeypatch, oracle, dtype, scheme):
    """The previous block (and its perturbed parameters) was still alive while the next one was
    drawn and perturbed, and ``params + step * U`` made a temporary of the block's size beside
    both: the peak was 2.2x the budget (35.1 MiB for 16 MiB at d = 2e5), where the CGE batch path
    keeps one chunk at a time."""
    # the rows of the current directions are cached (up to 64 MiB) to spare the second draw: off
    # here, so that what is measured is the blocks the budget bounds
    monkeypatch.setattr(_plan._ROWS, "default", 0)
    d, rows = 20_000, 64
    budget = d * (np.dtype(dtype).itemsize + 8) * rows  # `rows` directions and their perturbed parameters
    x = np.random.default_rng(0).standard_normal(d).astype(dtype)
    est = zo.RGE(mu=1e-2, directions=3 * rows, scheme=scheme)  # three full blocks
    tracemalloc.start()
    try:
        got = zo.estimate_gradient(oracle, x, est, rng=0, budget_bytes=budget)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.nfev == 1 + 3 * rows * len(est.steps)
    # the block, plus a few O(d) vectors (params' copy, the sums, the gradient): not two blocks
    assert peak <= 1.1 * budget, (peak / budget, peak, budget)
