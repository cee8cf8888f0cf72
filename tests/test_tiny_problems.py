"""Tiny and degenerate problems, as a user's first experiments are: d = 1..3 parameters, one step,
a loss that is constant or exactly 0 everywhere. Each estimator either estimates what the samples
say or refuses in zoracle's words."""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import zoracle as zo

_CONSTANTS = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -3.5]), st.integers(-5, 5),
                       st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False))
# (an int loss is warned about as coarse by CGE and RGE, which difference it: floats only where they train)
_FLOAT_CONSTANTS = _CONSTANTS.map(float)


@given(d=st.integers(1, 3), population=st.one_of(st.none(), st.integers(2, 6)), value=_CONSTANTS,
       sigma=st.floats(1e-3, 10.0), seed=st.integers(0, 2**31))
def test_snes_on_a_constant_loss_takes_a_finite_random_step(d, population, value, sigma, seed):
    """Every sample of a constant loss ties and ranks by sample order: a random step, as reference SNES
    implementations take (an estimate of 0 there froze SNES on a 0-1 error's plateaus, h377), finite,
    with finite positive widths and the loss the samples returned."""
    p = np.linspace(-0.5, 0.5, d)
    est = zo.estimate_gradient(lambda x: value, p, zo.SNES(mu=sigma, population=population), rng=seed)
    assert est.grad.shape == (d,) and np.all(np.isfinite(est.grad))
    assert np.all(np.isfinite(est.state)) and np.all(est.state > 0)
    assert est.loss == pytest.approx(float(value), rel=1e-15, abs=0)  # (the mean of n equal losses: to an ulp)


def test_layer_ratios_refusing_non_finite_scores_shows_them_and_the_fix():
    scores = np.array([0.5, np.nan, -np.inf])
    with pytest.raises(zo.ArgumentError, match=r"`scores` must be finite, got 2 non-finite of 3 \(scores\[1\] = nan\); "
                                               r".*np\.nan_to_num\(scores\)"):
        zo.layer_ratios(scores, [slice(0, 1), slice(1, 3)], 0.5)


_ESTIMATORS = {"CGE forward": zo.CGE(), "CGE central": zo.CGE(scheme="central"), "RGE q=1": zo.RGE(directions=1),
               "RGE q>d": zo.RGE(directions=5), "RGE ranks": zo.RGE(directions=3, shaping="ranks")}
_OPTIMIZERS = {"sgd": zo.sgd(0.1), "momentum": zo.sgd(0.1, momentum=0.9), "adam": zo.adam(0.1),
               "sign": zo.sign_sgd(0.1)}


@given(d=st.integers(1, 3), estimator=st.sampled_from(sorted(_ESTIMATORS)),
       optimizer=st.sampled_from(sorted(_OPTIMIZERS)), value=_FLOAT_CONSTANTS, start=st.sampled_from([0.0, 0.5, -2.0]),
       dtype=st.sampled_from([np.float64, np.float32]))
def test_a_constant_loss_leaves_params_with_every_estimator_and_optimizer_and_says_so(d, estimator, optimizer, value,
                                                                                      start, dtype):
    """A loss that is the same everywhere (0, a constant, a loss wired to nothing) gives nothing to
    follow: every differencing estimator (SNES, which ranks samples, takes a random step) estimates 0, the params come back as they went in, and the run says why."""
    p = np.full(d, start, dtype=dtype)
    with pytest.warns(UserWarning, match=r"every gradient estimate of epoch 0 \(2 steps\) was 0 to within "
                                         r"the loss's rounding"):
        res = zo.train(lambda x: value, p, estimator=_ESTIMATORS[estimator], optimizer=_OPTIMIZERS[optimizer],
                       steps_per_epoch=2, rng=0, progress=False)
    np.testing.assert_array_equal(res.params, p)
    assert res.params.dtype == p.dtype and res.steps == 2 and len(res.history.steps) == 2
