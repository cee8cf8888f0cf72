"""The fix an OracleError names for a batch's losses of the wrong shape fits the call it answered."""

import numpy as np
import pytest

import zoracle as zo


class _Squeezing:
    """A batch oracle that squeezes its result: a one-row call returns a 0-d array."""

    def __call__(self, x):
        return float(x @ x)

    def batch(self, rows):
        return np.squeeze((rows * rows).sum(axis=1))


def test_a_one_row_result_squeezed_to_a_scalar_is_told_to_return_a_1_array():
    """A one-row call answered by a 0-d array was told "one number for all 1 queries (a loss reduced
    over them, `.mean()`?)": nothing was reduced; the row's loss was squeezed."""
    with pytest.raises(zo.OracleError) as info:
        zo.estimate_gradient(_Squeezing(), np.ones(3), zo.RGE(directions=1), rng=0)
    msg = str(info.value)
    assert "expected 1 losses, got shape ()" in msg
    assert "squeezed" in msg and "np.atleast_1d(losses)" in msg
    assert "one number for all" not in msg and ".mean()" not in msg
