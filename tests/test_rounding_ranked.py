"""Rank-shaped RGE and SNES judge "0" by the losses' rounding, as plain RGE does.

Ranks order losses a few units of their last place apart as far apart as any: on a loss flat up to
rounding, a rank-shaped RGE or a SNES step is a step of full size in a random direction, its entries
nowhere near 0, and the epoch-of-zeros warning (which read them by ``grad != 0``) never came. Where
the CPU's rounding left those losses exactly equal it did come for rank-shaped RGE (tied ranks give
exactly 0), so the same run was warned about on one CPU and not on another. The estimates are
judged by the losses they are built from, before any ranks: every difference within the losses'
rounding, the whole estimate is rounding (``_rounding`` inf), as plain RGE's.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import zoracle as zo

MU = 5e-3
D = 6
W = np.linspace(-1.0, 1.0, D)
FLAT = "was 0 to within the loss's rounding"


def _nudged(value: float, k: int, dtype=np.float32) -> float:
    """``value`` moved by ``k`` units of its last place in ``dtype`` (a Python float, as a float32 model's
    losses come back)."""
    v = dtype(value)
    for _ in range(abs(k)):
        v = np.nextafter(v, dtype(np.inf) if k > 0 else dtype(-np.inf))
    return float(v)


def _ulp_noise(p) -> float:
    """3.0 moved by -1, 0 or +1 units of float32's last place, a deterministic function of ``p``: what
    another CPU's rounding makes of a loss that does not depend on ``p``."""
    return _nudged(3.0, int.from_bytes(np.ascontiguousarray(p).tobytes()[-3:], "little") % 3 - 1)


def _slope(scale: float):
    """float32 losses of ``3 + scale * w @ p``."""
    return lambda p: float(np.float32(3.0 + scale * float(W @ p)))


#: a slope so shallow that a step of these estimators (w @ step about mu * |w| * N(0, 1)) moves the float32
#: loss by a unit or two of its last place at most: c + tiny * x, flat up to rounding
TINY = float(np.spacing(np.float32(3.0))) / (2 * MU * float(np.linalg.norm(W)))
#: a slope whose differences are tens of units of the loss's last place: small, and no rounding
SMALL = 64 * float(np.spacing(np.float32(3.0))) / MU

ESTIMATORS = {"ranks forward": zo.RGE(mu=MU, directions=4, shaping="ranks"),
              "ranks central": zo.RGE(mu=MU, directions=4, scheme="central", shaping="ranks"),
              "snes": zo.SNES(mu=MU, population=8)}
LOSSES = {"ulp noise": _ulp_noise, "c + tiny * x": _slope(TINY)}


def _said(loss, estimator, optimizer=None) -> list:
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        zo.train(loss, np.zeros(D), epochs=2, steps_per_epoch=3, estimator=estimator,
                 optimizer=optimizer or zo.adam(0.01), rng=0, progress=False)
    return [str(w.message) for w in got if FLAT in str(w.message)]


def _plain(estimator):
    """The plain RGE that queries the points ``estimator`` queries (SNES: Gaussian directions at mu)."""
    if isinstance(estimator, zo.SNES):
        return zo.RGE(mu=estimator.mu, directions=estimator.population)
    return zo.RGE(mu=estimator.mu, directions=estimator.directions, scheme=estimator.scheme)


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_a_loss_flat_up_to_rounding_is_warned_about_as_plain_rge_warns(name, loss):
    estimator, fn = ESTIMATORS[name], LOSSES[loss]
    # the reference: plain RGE on the same loss calls every estimate of the epoch rounding
    assert len(_said(fn, _plain(estimator), zo.sgd(0.1))) == 1
    # the ranked estimate itself is no 0: the losses differ, by rounding, and their ranks make a full step
    est = zo.estimate_gradient(fn, np.zeros(D), estimator, rng=0)
    assert np.abs(est.grad).max() > 10 * float(np.spacing(np.float32(3.0))) / MU, est.grad
    assert est._rounding == np.inf
    said = _said(fn, estimator)
    assert len(said) == 1 and "every gradient estimate of epoch 0 (3 steps)" in said[0], said
    # (its steps are no rounding-sized moves: the message does not say they moved nothing)
    assert "a random step of full size" in said[0] and "moved no parameter" not in said[0]


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_a_real_slope_is_not_called_rounding(name):
    estimator = ESTIMATORS[name]
    fn = _slope(SMALL)
    assert zo.estimate_gradient(fn, np.zeros(D), estimator, rng=0)._rounding == 0.0
    assert _said(fn, estimator) == []
    assert _said(_slope(1.0), estimator) == []


def test_an_exactly_constant_loss_is_warned_about_with_snes_whose_tied_samples_still_step():
    # SNES ranks tied samples by sample order (a random step, as reference SNES does: kept), and
    # rank-shaped RGE gives their tied ranks exactly 0: both are warned about alike now
    est = zo.estimate_gradient(lambda p: 2.5, np.zeros(D), ESTIMATORS["snes"], rng=0)
    assert np.any(est.grad != 0) and est._rounding == np.inf
    for estimator in ESTIMATORS.values():
        assert len(_said(lambda p: 2.5, estimator)) == 1


# ---- the judgement does not depend on the order the queries came back in ------------------------

class Answers:
    """A loss that returns ``values`` in the order it is called (a plain callable is called at the base
    point, then at each direction's +mu, then, central, at each one's -mu)."""

    def __init__(self, values):
        self.values, self.calls = list(values), 0

    def __call__(self, p) -> float:
        self.calls += 1
        return self.values[self.calls - 1]


def _judged(values, estimator) -> float:
    oracle = Answers(values)
    with warnings.catch_warnings():  # (a loss on a coarse grid is warned about: the judgement is the point)
        warnings.simplefilter("ignore")
        est = zo.estimate_gradient(oracle, np.zeros(3), estimator, rng=0)
    assert oracle.calls == len(values)
    return est._rounding


_BASES = st.sampled_from([3.0, 0.7, 1234.567, -2.718281828, 1.0])
_ULPS = st.integers(-8, 8)


@given(base=_BASES, dtype=st.sampled_from([np.float32, np.float64]), central=st.booleans(),
       ulps=st.lists(st.tuples(_ULPS, _ULPS), min_size=1, max_size=5), data=st.data())
def test_an_rge_judgement_is_the_same_for_any_order_of_its_directions_ranked_or_not(base, dtype, central, ulps,
                                                                                    data):
    q = len(ulps)
    plus = [_nudged(base, a, dtype) for a, _ in ulps]
    minus = [_nudged(base, b, dtype) for _, b in ulps]
    f0 = _nudged(base, 0, dtype)
    order = data.draw(st.permutations(range(q)))
    flips = data.draw(st.lists(st.booleans(), min_size=q, max_size=q))
    if central:
        pairs = [(minus[i], plus[i]) if flip else (plus[i], minus[i]) for i, flip in zip(order, flips)]
        again = [f0, *[a for a, _ in pairs], *[b for _, b in pairs]]
        values = [f0, *plus, *minus]
    else:
        values, again = [f0, *plus], [f0, *[plus[i] for i in order]]
    scheme = "central" if central else "forward"
    plain = _judged(values, zo.RGE(mu=MU, directions=q, scheme=scheme))
    assert plain in (0.0, np.inf)
    assert _judged(values, zo.RGE(mu=MU, directions=q, scheme=scheme, shaping="ranks")) == plain
    assert _judged(again, zo.RGE(mu=MU, directions=q, scheme=scheme, shaping="ranks")) == plain
    assert _judged(again, zo.RGE(mu=MU, directions=q, scheme=scheme)) == plain


@given(base=_BASES, dtype=st.sampled_from([np.float32, np.float64]), ulps=st.lists(_ULPS, min_size=2, max_size=8),
       data=st.data())
def test_a_snes_judgement_is_the_same_for_any_order_of_its_samples(base, dtype, ulps, data):
    values = [_nudged(base, k, dtype) for k in ulps]
    again = data.draw(st.permutations(values))
    snes = zo.SNES(mu=MU, population=len(values))
    judged = _judged(values, snes)
    assert judged in (0.0, np.inf) and _judged(again, snes) == judged
    # as a forward RGE judges its directions against a base loss at the extreme of largest magnitude (the
    # widest last place of them): every pair of samples within rounding of each other
    ref = max(values, key=abs)
    assert judged == _judged([ref, *values], zo.RGE(mu=MU, directions=len(values)))


_LOSS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),                      # float64 numbers, mostly
    st.floats(width=32, allow_nan=False, allow_infinity=False),          # float32 numbers
    st.sampled_from([0.0, -0.0, 2.0**-126, 2.0**-127, 2.0**-149, float(np.finfo(np.float32).max),
                     float(np.finfo(np.float32).max) * (1 + 2.0**-30), 2.0**128, 1 / 3, 3.0]),
)


@given(st.lists(_LOSS, max_size=12))
def test_float32_numbers_in_numpy_is_loss_bits_test_in_python(values):
    """``float32_numbers`` (NumPy, for an RGE or SNES step's q losses) says what ``loss_bits``'s Python loop
    says: every value a float32 number inside float32's normal range (0, inf and NaN pass over)."""
    from zoracle._grid import float32_numbers, loss_bits

    assert float32_numbers(np.array(values, dtype=np.float64)) == (loss_bits(values, 53) == 24)
