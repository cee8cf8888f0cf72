"""The loss-grid check on every estimate reads the base loss in Python floats: at a base loss on a
short grid (a whole number, as at ``np.ones`` on a quadratic) its NumPy calls on that one value took
about 25 us of a 10-parameter estimate's 60 (a third of the step). Same verdicts, fewer calls."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo
import zoracle._estimators as est_module
from zoracle import _grid


def _values():
    rng = np.random.default_rng(0)
    out = [1.0, 3.0, 0.25, 10.0, 1e4, 0.1, 1e-3, 1e-8, 1e-9, 5e-324, 2.0**-1070, 1e300, -1e308]
    for v in rng.standard_normal(400) * 10.0 ** rng.integers(-12, 12, 400):
        with np.errstate(over="ignore"):  # (float16 of 1e12: inf, left out below)
            out += [float(v), -float(v), round(float(v), int(rng.integers(0, 9))), float(np.float16(v)),
                    float(np.float32(v)), float(round(v))]
    return [v for v in out if v != 0 and np.isfinite(v)]


def test_the_scalar_readings_of_the_base_loss_match_the_array_ones():
    for v in _values():
        low, bits = _grid._short_bits(v)
        assert low == float(_grid._lowest_bit(np.array([v]))[0]), v
        assert bits == int(_grid._bits(np.array([v]))[0]), v
        assert _grid._loss_decimals(v) == _grid._decimals(np.array([v]), np.float64), v


@pytest.mark.parametrize("diffs", [np.full(10, 2.001e-3), np.zeros(10), np.arange(1.0, 11.0)])
def test_a_base_loss_on_a_grid_is_read_without_numpy_calls_on_it(monkeypatch, diffs):
    """The differences are read once (one ``_lowest_bit`` call over them all), the base loss in Python."""
    calls = []
    for name in ("_lowest_bit", "_bits", "_decimals"):
        real = getattr(_grid, name)
        monkeypatch.setattr(_grid, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    _grid.loss_grid(10.0, diffs)
    assert calls.count("_lowest_bit") <= 1 and "_bits" not in calls and "_decimals" not in calls, calls


def test_an_estimate_at_a_whole_number_loss_reads_the_base_loss_in_python(monkeypatch):
    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())
    calls = []
    real = _grid._decimals
    monkeypatch.setattr(_grid, "_decimals", lambda *a, **k: calls.append(a) or real(*a, **k))
    est = zo.estimate_gradient(lambda x: float(x @ x), np.ones(10), zo.CGE())
    assert est.loss == 10.0 and np.allclose(est.grad, 2.0, atol=1e-2)
    assert calls == []
