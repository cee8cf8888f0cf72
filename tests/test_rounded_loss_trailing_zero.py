"""A loss rounded to a few decimals is warned about from its values; its grid is read from the base
loss alone, so one whose base value ends in a 0 (``round(loss, 3)`` giving 0.120, written 0.12) is
missed, one base loss in ten: trying finer grids until the differences fit was tried and dropped,
since a hinge or an L1 loss at a round base loss then read as rounded (its differences exact
multiples of mu, the estimate exact)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import zoracle as zo
import zoracle._estimators as est_module

D = 6
C = np.random.default_rng(4).uniform(0.2, 0.4, D)              # the partials
X0 = np.random.default_rng(3).standard_normal(D)                # generic params (not short numbers)


def rounded_at(base):
    offset = base + 4e-4 - float(C @ X0)                        # the unrounded loss at X0: base + 0.0004

    def loss(x):
        return round(float(C @ x) + offset, 3)
    return loss


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())  # (given once per oracle code: each test its own)


@pytest.mark.parametrize("base", [0.127, 1.503, 2.061])
def test_a_rounded_loss_is_warned_about_whatever_its_last_decimals(base):
    f = rounded_at(base)
    assert f(X0) == base
    with pytest.warns(UserWarning, match=r"are multiples of 0\.001 \(a loss rounded to 3 decimals"):
        zo.estimate_gradient(f, X0, zo.CGE(mu=5e-3))


def test_an_unrounded_loss_is_not_warned_about():
    offset = 0.12 - float(C @ X0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zo.estimate_gradient(lambda x: float(C @ x) + offset, X0, zo.CGE(mu=5e-3))


@pytest.mark.parametrize("x0", [np.linspace(-1, 0.5, 20), np.full(20, -2.0)])
def test_a_hinge_loss_at_a_round_base_loss_is_not_called_rounded(x0):
    """sum(max(0, 1 - v)) at these params is 25.0 or 60.0, and each difference is -mu exactly (a
    slope of -1): multiples of 0.001 at mu = 1e-3 like a loss rounded to 3 decimals, but the
    estimate is exact (the gradient -1 in every coordinate)."""
    def hinge(p):
        return sum(max(0, 1.0 - v) for v in p)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = zo.estimate_gradient(hinge, x0, zo.CGE(mu=1e-3))
    np.testing.assert_allclose(est.grad, -1.0, rtol=1e-9)
