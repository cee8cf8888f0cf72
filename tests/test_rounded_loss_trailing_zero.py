"""A loss rounded to a few decimals whose base value ends in a 0 (``round(loss, 3)`` giving 0.120,
written 0.12): its grid was read from the base loss alone (2 decimals), the differences (steps of
0.001) lay on no such grid, and the coarse loss was not warned about, one base loss in ten."""

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


@pytest.mark.parametrize("base", [0.120, 0.127, 1.500, 2.0])
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
