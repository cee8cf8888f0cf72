"""Review of the session's later commits (h358): the fast-path check's tolerance read from the
precision the losses carry took a float64 loss with few significant bits by chance (a count's mean,
a quadratic at integer params and a power-of-two mu) for a narrow float's rounding, and a wrong
batch passed; stacklevels of warnings converted to warn()."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import zoracle as zo


class Quad:
    """A float64 quadratic, its batch off by ``offset``: a wrong fast path."""

    def __init__(self, offset):
        self.offset = offset

    def __call__(self, x):
        return float(np.sum((np.asarray(x) - 3.0) ** 2))

    def batch(self, X):
        return np.sum((np.asarray(X) - 3.0) ** 2, axis=1) + self.offset


class CountMean:
    """Misclassified samples of 4, counted by the plain call and averaged by the batch (another loss)."""

    S = np.array([[1.0, 2.0], [-1.0, 1.0], [2.0, -3.0], [0.5, 0.5]])
    Y = np.array([1, -1, 1, -1])

    def __call__(self, x):
        return float(np.sum((self.S @ np.asarray(x)) * self.Y < 0))

    def batch(self, X):
        return np.mean((np.asarray(X) @ self.S.T) * self.Y < 0, axis=1).astype(np.float64)


@pytest.mark.filterwarnings("ignore:estimate_gradient:UserWarning")  # (a count's grid: warned about elsewhere)
@pytest.mark.parametrize("oracle, mu", [
    (Quad(0.5), 0.25),  # losses of 7 significant bits: the tolerance was 4x the loss
    (Quad(2.0 ** -7), 2.0 ** -6),  # 15 bits, exactly: 0.4% of the loss
    (CountMean(), 2.0),  # 3 bits: a mean where the plain call takes a sum
])
def test_a_wrong_batch_of_a_float64_loss_with_few_bits_is_refused(oracle, mu):
    with pytest.warns(RuntimeWarning, match=f"{type(oracle).__name__}: its `batch` disagrees with its plain call"):
        res = zo.train(oracle, np.array([1.0, 2.0]), steps_per_epoch=1, estimator=zo.CGE(mu=mu),
                       optimizer=zo.sgd(0.01), rng=0, progress=False)
    assert res.nfev == 3 + 2 + 2  # the base, 2 batched queries, the check asked twice, the 2 again by plain calls


@pytest.mark.parametrize("mu", [0.25, 2.0 ** -6])
def test_a_sound_batch_of_a_float64_loss_with_few_bits_passes(mu):
    res = zo.train(Quad(0.0), np.array([1.0, 2.0]), steps_per_epoch=1, estimator=zo.CGE(mu=mu),
                   optimizer=zo.sgd(0.01), rng=0, progress=False)
    assert res.nfev == 3 + 1


def half(x) -> float:  # a float16 model's loss, returned as a Python float
    return float(np.float16(np.sum(np.asarray(x, dtype=np.float16) ** 2) + np.float16(0.3)))


class HalfDeclared:  # the same, its compute dtype declared narrower than float64 params
    compute_dtype = np.float32

    def __call__(self, x):
        return half(x)


@pytest.mark.parametrize("call", [
    lambda x: zo.train(half, x, steps_per_epoch=1, estimator=zo.CGE(5e-3), optimizer=zo.sgd(0.01), rng=0,
                       progress=False),  # was zoracle/_run_loop.py
    lambda x: zo.estimate_gradient(HalfDeclared(), x, zo.CGE(5e-3)),  # was zoracle/_estimators.py
    lambda x: zo.estimate_gradient(half, x, zo.CGE(5e-3)),
])
def test_the_coarse_losses_warning_shows_the_users_line(call, monkeypatch):
    import zoracle._estimators as est_module

    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        call(np.random.default_rng(0).standard_normal(4))
    coarse = [w for w in got if "significant bits" in str(w.message)]
    assert len(coarse) == 1 and coarse[0].filename == __file__, [(w.filename, str(w.message)[:60]) for w in got]


@pytest.mark.parametrize("oracle", [
    lambda x: max(float(np.sum(np.asarray(x) ** 2)), 0.01),  # a floor: flat at 0.01 near 0
    lambda x: 0.05,  # a constant a person wrote
    lambda x: 1e-6,
])
def test_a_flat_loss_at_a_round_decimal_is_not_taken_for_a_rounded_one(oracle, monkeypatch):
    """Every difference 0 at a base loss of 2 decimals or more was told as "a loss rounded to 2
    decimals" (the fix named: return it unrounded), for a loss that is sound and flat there."""
    import zoracle._estimators as est_module

    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = zo.estimate_gradient(oracle, np.random.default_rng(0).standard_normal(5) * 0.01, zo.CGE(1e-3))
    assert not est.grad.any()
