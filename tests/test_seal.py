"""The checksum a split task takes of the parameters at its end (``seal``): for every dtype, moved by
a write into any one of them, and the same for the same bits. (Its cost, float32 summed as 64-bit
words, is measured, not tested: no timed tests.)"""

from __future__ import annotations

import numpy as np
import pytest

from zoracle._plan import seal


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("d", [1, 7, 8, 13, 64])
def test_a_write_into_any_one_parameter_moves_the_seal(dtype, d):
    x = np.random.default_rng(d).standard_normal(d).astype(dtype)
    before = seal(x)
    for i in range(d):
        y = x.copy()
        y[i] = -y[i] if y[i] != 0 else 1
        assert seal(y) != before, (dtype, d, i)
        y[i] = x[i]
        assert seal(y) == before
    assert seal(x[::-1].copy()[::-1]) == before  # a copy of the same bits
