"""The loss-grid check (zoracle/_grid.py) at extreme magnitudes: a float64 loss is never called rounded,
narrow or a count because float64 itself resolves the losses differenced no finer than the grid read
(two losses near 1e69 are 0 apart, subnormal losses are multiples of 5e-324), nor because a central
scheme's two losses lie the same distance from the base loss (at a minimum), nor because differences
of a few units of float64 are within the tolerance of 0 steps; the coarse losses it is for, float16,
bfloat16, ``round(loss, k)`` and counts at ordinary magnitudes, still are."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

import zoracle as zo
import zoracle._estimators as est_module
from zoracle import _grid


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())  # (given once per oracle code: each test its own)


def _silent(f, x, estimator):
    est_module._COARSE_WARNED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return zo.estimate_gradient(f, x, estimator, rng=0)


# the reproduction: a base loss of 0.00361 (1e-3 * 1.9**2, 5 decimals), the perturbed ones near 1e69
X = np.array([1.1125369292536007e-308, -1.1754943508222875e-38, -1.9, 1e-40])
C = np.array([5e-324, 1.79397324829917, 1.175494351e-38, 0.99999])


def _poly(z):
    z = np.asarray(z, np.float64)
    return float(C @ z + 1e-3 * z.sum() ** 2)


@pytest.mark.parametrize("estimator", [zo.CGE(mu=1e36, scheme="central"), zo.CGE(mu=1e30, scheme="central"),
                                       zo.RGE(mu=1e36, scheme="central", directions=3)])
def test_central_differences_of_huge_losses_are_not_called_rounded(estimator):
    """Every difference 0 because f(x + mu e) and f(x - mu e) are the same float near 1e69: no grid of
    1e-5 is told by them (warned 'multiples of 1e-05' before, once per oracle: the hypothesis replay
    of tests/test_math_references.py then read as flaky)."""
    assert _poly(X) == pytest.approx(0.00361) and _grid.loss_grid(_poly(X), np.zeros(4)) is not None  # (a flat one is)
    est = _silent(_poly, X, estimator)
    assert est.loss == _poly(X)


@pytest.mark.parametrize("estimator", [zo.CGE(mu=1e-3, scheme="central"),
                                       zo.RGE(mu=1e-3, scheme="central", directions=4)])
def test_a_central_estimate_at_a_minimum_with_a_decimal_value_is_not_called_rounded(estimator):
    """f(a + mu u) == f(a - mu u) at the minimum a: every difference 0, the losses 1e-6 above the base
    loss 0.00361, no multiple of 1e-5."""
    a = np.random.default_rng(0).standard_normal(5)
    est = _silent(lambda z: float(0.00361 + (z - a) @ (z - a)), a, estimator)
    np.testing.assert_allclose(est.grad, 0.0, atol=1e-9)


@pytest.mark.parametrize("scale, mu", [(2.0**-1060, 1e-3), (1e-320, 1e-3), (5e-324, 1.0)])
@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_subnormal_float64_losses_are_not_called_narrow(scale, mu, scheme):
    """Subnormal losses are multiples of 5e-324, as few significant bits as a float16's (warned 'carry only
    16 significant bits' before)."""
    x = np.random.default_rng(1).standard_normal(5)
    _silent(lambda z: float(scale * (z @ z)), x, zo.CGE(mu=mu, scheme=scheme))


def test_the_reading_of_extreme_losses():
    """At the grid check itself: where the losses differenced lie (``far``) decides."""
    assert _grid.loss_grid(0.00361, np.zeros(4)) is not None  # a flat loss of 3 digits: a printed one looks alike
    assert _grid.loss_grid(0.00361, np.zeros(4), far=1e69) is None  # two losses near 1e69: 0 apart whatever the loss
    assert _grid.loss_grid(0.00361, np.zeros(4), far=1e-6) is None  # off the grid of 1e-5: no rounding
    assert _grid.loss_grid(0.00361, np.zeros(4), far=2e-5)[0] == 1e-5  # on it: as a rounded loss's
    assert _grid.loss_grid(0.00361, [1e-5, 0.0], far=math.inf) is None
    assert _grid.loss_grid(0.00361, [1e-5, math.inf]) is None  # (overflowed differences)
    assert _grid.loss_grid(2.0**-1060, [2.0**-1070, 2.0**-1069]) is None  # subnormal: float64's own grid
    assert _grid.loss_grid(1e-323, [5e-324, 1e-323]) is None
    # differences of a unit or two of float64 at a base loss of 1.0: within the tolerance of 0 steps of a grid of
    # 1, no rounding's (a rounded loss's values are equal or a step apart)
    assert _grid.loss_grid(1.0, [2.0**-52, -2.0**-51, 0.0]) is None
    assert _grid.loss_grid(1.0, [1.0, -2.0, 0.0])[0] == 1.0  # (a count's)
    assert _grid.loss_spread(np.array([[1.0, 5.0], [-2.0, 3.0]]), 1.0) == 4.0
    assert _grid.loss_spread(np.empty((2, 0)), 1.0) == 0.0


# ---- hypothesis: float64 losses anywhere are never called coarse; coarse ones at ordinary magnitudes are ----

_decimal = st.integers(-6, 6).flatmap(lambda e: st.integers(-999, 999).map(lambda m: m * 10.0**e))
_coord = st.one_of(st.floats(-1e3, 1e3), _decimal, st.integers(-60, 60).map(lambda e: 2.0**e),
                   st.sampled_from([0.0, 1e-310, 5e-324, 1e15, 1e30]))
_mu = st.one_of(st.sampled_from([1e-12, 1e-8, 1e-3, 5e-3, 0.5, 3.0, 1e8, 1e16, 1e36, 2.0**-10]), st.floats(1e-12, 1e36))
_scale = st.one_of(st.just(1.0), st.integers(-300, 300).map(lambda e: 10.0**e),
                   st.sampled_from([5e-324, 1e-310, 2.0**-1060]))


def _float64_loss(kind, c, a, scale):
    if kind == "poly":
        return lambda z: scale * float(c @ z + a * float(np.sum(z)) ** 2)
    if kind == "cubic":
        return lambda z: scale * float(c @ z ** 3 + a)
    if kind == "minimum":
        return lambda z: scale * float(a + (z - c) @ (z - c))
    if kind == "exp":  # (not so far down that exp's values are 0 beside the base loss: a count looks alike)
        return lambda z: scale * float(np.exp(np.clip(c @ z, -30, 30)) * a)
    return lambda z: scale * float(np.log1p(abs(c @ z)) + a)


_coefs = st.one_of(st.floats(-2, 2), _decimal, st.sampled_from([0.0, 1.0, -0.5]))


@given(xc=st.integers(1, 6).flatmap(lambda d: st.tuples(st.lists(_coord, min_size=d, max_size=d),
                                                        st.lists(_coefs, min_size=d, max_size=d))),
       kind=st.sampled_from(["poly", "cubic", "minimum", "exp", "log"]), mu=_mu, scale=_scale,
       a=st.one_of(st.sampled_from([1e-3, 1.0, 0.25, 0.00361, 0.1]), st.floats(-3, 3)),
       scheme=st.sampled_from(["forward", "central"]), rge=st.booleans())
@example(xc=(X.tolist(), C.tolist()), kind="poly", mu=1e36, scale=1.0, a=1e-3, scheme="central", rge=False)
@example(xc=([0.345584192064786, 0.8216181435011584, 0.33043707618338714],) * 2, kind="minimum", mu=1e-3, scale=1.0,
         a=0.361, scheme="central", rge=True)
@example(xc=([0.345584192064786, 0.8216181435011584, 0.33043707618338714], [0.0] * 3), kind="minimum", mu=1e-3,
         scale=2.0**-1060, a=0.0, scheme="forward", rge=False)
@example(xc=([5e-324], [-0.0027700000000000003]), kind="log", mu=1e-12, scale=1.0, a=1.0, scheme="forward", rge=True)
def test_float64_losses_at_any_magnitude_are_never_called_coarse(xc, kind, mu, scale, a, scheme, rge):
    x, c = (np.asarray(v) for v in xc)
    inner = _float64_loss(kind, c, a, scale)
    seen = []

    def f(z):
        with np.errstate(all="ignore"):
            seen.append(inner(z))
        return seen[-1]

    estimator = zo.RGE(mu=mu, scheme=scheme, directions=3) if rge else zo.CGE(mu=mu, scheme=scheme)
    est_module._COARSE_WARNED.clear()
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        try:
            zo.estimate_gradient(f, x, estimator, rng=0)
        except (zo.ArgumentError, zo.OracleError):  # a step of 0, an overflowed loss: refused, not judged
            return
    coarse = [str(w.message) for w in got if "the oracle's losses" in str(w.message)]
    # (every loss the base one: flat in float64, which a loss printed to 6 decimals at a tiny mu looks like; every
    # one a short decimal up to float64's rounding and some a step from the base one, 0.001 and 0.126 of
    # c @ z**3 + 0.001 at a coordinate 0 and mu = 0.5, as a rounded loss's: exempt only where every coordinate
    # is short, tests/test_low_precision_losses.py)
    short = all(_grid._loss_decimals(v) is not None for v in seen if v) and \
        any(abs(v - seen[0]) > 8 * math.ulp(seen[0]) for v in seen)
    assert not coarse or all(v == seen[0] for v in seen) or short, coarse


def _bfloat16(v: float) -> float:
    """bfloat16's rounding of ``v`` (float32's top 16 bits, to nearest even)."""
    b = int(np.float32(v).view(np.uint32))
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return float(np.uint32(b).view(np.float32))


_COARSE = {
    "float16": lambda v: float(np.float16(v)),
    "bfloat16": _bfloat16,
    "round3": lambda v: round(v, 3),
    "round5": lambda v: round(v, 5),
    "printed6": lambda v: float("%.6f" % v),
    "count": lambda v: float(math.floor(v)),
}


@given(seed=st.integers(0, 2**32 - 1), d=st.integers(2, 8), wrap=st.sampled_from(sorted(_COARSE)),
       offset=st.floats(0.5, 50.0), mu=st.sampled_from([1e-8, 1e-5, 1e-3, 5e-3, 0.05]),
       scheme=st.sampled_from(["forward", "central"]))
def test_coarse_losses_at_ordinary_magnitudes_are_still_read_as_coarse(seed, d, wrap, offset, mu, scheme):
    """The grid check finds the grid of a float16, bfloat16, rounded, printed or counted loss at generic
    params, whatever far its central losses lie (a base loss whose last decimal is 0 is read as a coarser
    grid, which its differences then miss: tests/test_rounded_loss_trailing_zero.py)."""
    rng = np.random.default_rng(seed)
    x, c = rng.standard_normal(d), rng.uniform(-1, 1, d)
    coarse = _COARSE[wrap]
    if wrap == "count":
        offset *= 20  # (counts: a whole number of errors, in steps of a few)

    def f(z):
        return coarse(float(offset + c @ z + 0.5 * z @ z))

    f0 = f(x)
    up = np.array([f(x + mu * e) for e in np.eye(d)])
    if scheme == "forward":
        diffs, far = up - f0, 0.0
    else:
        down = np.array([f(x - mu * e) for e in np.eye(d)])
        diffs, far = up - down, _grid.loss_spread(np.stack([up, down]), f0)
    k = {"round3": 3, "round5": 5, "printed6": 6}.get(wrap)
    assume(f0 != 0 and (k is None or _grid._loss_decimals(f0) == k))  # (a trailing 0: read as fewer decimals)
    assume(k is None or 10.0**-k > np.spacing(np.float32(abs(f0))))  # (finer than float32's: not judged, as float32)
    # (every difference 0 at a short binary, 2.875: a flat loss looks alike)
    assume(np.any(diffs != 0) or (k is not None and _grid._short_bits(f0)[1] > _grid.NARROW_BITS))
    found = _grid.loss_grid(f0, diffs, far)
    assert found is not None, (f0, diffs, far)
    if k is not None:
        assert found[0] == 10.0**-k
