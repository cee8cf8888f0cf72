"""Oracles whose arithmetic is coarser than the float they return: a float16 or bfloat16 model's
``float(loss)``, ``round(loss, 3)``, a count as a float. Their type says float64, and the warning
about coarse loss types passed them: with the default mu most differences were 0 and the estimate
noise (on a 283-parameter MLP, CGE's estimate correlated 0.48, 0.07 and 0.52 with the float64
gradient), silently. They are now judged by their values. And the fast-path check compared a float16
model's batch with its plain call at float64's rounding: a sound batch was refused."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import zoracle as zo
import zoracle._estimators as est_module

D = 8
_rng = np.random.default_rng(0)
A = _rng.standard_normal((40, D))
Y = _rng.standard_normal(40)
X0 = _rng.standard_normal(D)  # generic params: not points where a polynomial is computed exactly


def mse(x) -> float:
    return float(np.mean((A @ np.asarray(x, dtype=np.float64) - Y) ** 2))


def true_grad(x) -> np.ndarray:
    return 2 * A.T @ (A @ x - Y) / len(Y)


def half(x) -> float:  # a float16 model, its loss returned as a Python float (loss.item())
    r = A.astype(np.float16) @ np.asarray(x, dtype=np.float16) - Y.astype(np.float16)
    return float(np.mean(r * r, dtype=np.float16))


def bfloat16(x) -> float:
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(np.array(x, dtype=np.float32)).bfloat16()
    r = torch.from_numpy(A.astype(np.float32)).bfloat16() @ t - torch.from_numpy(Y.astype(np.float32)).bfloat16()
    return float((r * r).mean())


def rounded(x) -> float:
    return round(mse(x), 3)


def count(x) -> float:
    return float(np.sum((A @ np.asarray(x, dtype=np.float64)) * Y < 0))  # misclassified samples, as a float


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())  # (given once per oracle: each test its own)


@pytest.mark.parametrize("oracle, names, mu", [
    (half, r"carry only 11 significant bits \(float16 keeps 11.*near the base loss \S+ they are 0\.\d+ apart", 5e-3),
    (bfloat16, r"carry only 8 significant bits", 5e-3),
    (rounded, r"are multiples of 0\.001 \(a loss rounded to 3 decimals, or printed so\)", 5e-3),
    (count, r"are whole numbers \(a count", 0.3),  # (at the default mu no sample changes side: flat, not judged)
])
@pytest.mark.parametrize("make", [zo.CGE, lambda mu: zo.CGE(mu, scheme="central"), lambda mu: zo.RGE(mu, directions=20)])
def test_a_python_float_coarser_than_its_type_is_warned_about_naming_cause_and_fix(oracle, names, mu, make):
    """No warning before (its type is float64): the estimate trained on rounding."""
    fix = r"raise mu|surrogate"
    with pytest.warns(UserWarning, match=rf"estimate_gradient: the oracle's losses {names}.*(?:{fix})"):
        zo.estimate_gradient(oracle, X0, make(mu), rng=0)


def test_the_warning_counts_the_zero_differences_and_states_the_resolution():
    with pytest.warns(UserWarning) as got:
        est = zo.estimate_gradient(half, X0)
    zeros = int(np.count_nonzero(est.grad == 0))
    assert zeros > 0
    assert f"({zeros} of the {D} differences were exactly 0)" in str(got[0].message)
    step = float(np.spacing(np.float16(abs(est.loss))))  # float16's spacing at the base loss: the grid
    assert f"they are {step:.3g} apart" in str(got[0].message)
    assert f"resolves a partial derivative only to {step / 5e-3:.3g}" in str(got[0].message)


def test_a_loss_printed_to_6_decimals_is_warned_about_where_every_difference_is_0():
    """At mu = 1e-8 a loss printed with %.6f moves by no printed digit: the estimate is exactly 0,
    which a flat loss gives too; a base loss of 6 decimals tells the rounding (docs/executors.md)."""
    printed = lambda x: float("%.6f" % mse(x))  # noqa: E731
    with pytest.warns(UserWarning, match=r"are multiples of 1e-06 \(a loss rounded to 6 decimals, or printed so\).*"
                                         rf"\({D} of the {D} differences were exactly 0\).*%\.17g"):
        est = zo.estimate_gradient(printed, X0, zo.CGE(mu=1e-8))
    assert not est.grad.any()


def test_it_is_warned_about_on_process_workers_too():
    """The values come back from the workers: no type has to travel."""
    from zoracle.executors import JoblibExecutor

    with JoblibExecutor(2, backend="loky") as ex:
        with pytest.warns(UserWarning, match="carry only 11 significant bits"):
            got = zo.estimate_gradient(half, X0, executor=ex)
    assert np.array_equal(got.grad, zo.estimate_gradient(half, X0).grad)  # (warned once: the serial one is silent)


def test_it_is_warned_about_once_per_oracle_in_a_run():
    with pytest.warns(UserWarning, match="are multiples of 0.001") as got:
        zo.train(rounded, X0, steps_per_epoch=5, optimizer=zo.sgd(1e-2), progress=False)
    assert len([w for w in got if "multiples of" in str(w.message)]) == 1


def test_a_larger_mu_that_resolves_the_grid_is_not_warned_about_and_estimates_the_gradient():
    """The fix the warning names works: a loss rounded to 4 decimals resolves partials to 0.02 at the
    default mu (warned), to 2e-4 at mu = 0.5 (the quadratic's central difference is exact there)."""
    four = lambda x: round(mse(x), 4)  # noqa: E731
    with pytest.warns(UserWarning, match="multiples of 0.0001"):
        zo.estimate_gradient(four, X0, zo.CGE(scheme="central"))
    est_module._COARSE_WARNED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = zo.estimate_gradient(four, X0, zo.CGE(mu=0.5, scheme="central"))
    np.testing.assert_allclose(est.grad, true_grad(X0), atol=1e-4)


@pytest.mark.parametrize("oracle, params, estimator", [
    (mse, X0, zo.CGE()),  # float64: generic values
    (lambda x: float(np.float32(mse(x))), X0, zo.CGE()),  # float32's 24 bits: judged by type only, as before
    (half, X0.astype(np.float32), zo.RGE(directions=4, shaping="ranks")),  # ranks read the losses' order only
    (lambda x: float(x @ x), np.ones(D), zo.CGE(mu=1e-3)),  # exact at short points: 8.002001 is no rounding
    (lambda x: float(x @ np.arange(1.0, D + 1)), np.ones(D), zo.CGE(mu=2.0**-10)),  # (a dyadic mu: few bits)
    (lambda x: 3.0, X0, zo.CGE()),  # flat: every difference 0, nothing told
    (lambda x: 0.1, X0, zo.CGE()),  # (one decimal: a flat loss may be a round number)
    (lambda x: 0.0, X0, zo.RGE(directions=3)),
])
def test_values_that_are_no_coarse_rounding_are_not_warned_about(oracle, params, estimator):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zo.estimate_gradient(oracle, params, estimator, rng=0)


@pytest.mark.parametrize("estimator", [zo.CGE(), zo.CGE(scheme="central"), zo.RGE(directions=4)])
def test_sgd_from_zeros_on_a_quadratic_is_not_warned_about(estimator):
    """Its first steps are near-decimals (0.02, then 0.0396), where the quadratic's losses are
    decimals of 4 and 8 places, exactly (11.5248): no rounding of the oracle."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zo.train(lambda x: float(((x - 1.0) ** 2).sum()), np.zeros(12), epochs=3, estimator=estimator,
                 optimizer=zo.sgd(0.01), rng=0, progress=False)


def test_a_float32_loss_at_float32_params_is_judged_by_its_values():
    """Its type passes (float32 at float32 params); a float16 model's loss cast to float32 does not."""
    with pytest.warns(UserWarning, match="carry only 11 significant bits"):
        zo.estimate_gradient(lambda x: np.float32(half(x)), X0.astype(np.float32))


def test_a_float16_loss_type_is_still_warned_about_by_its_type():
    with pytest.warns(UserWarning, match="the oracle returns float16 losses") as got:
        zo.estimate_gradient(lambda x: np.float16(half(x)), X0)
    assert len(got) == 1  # not twice (by type and by value)


class HalfModel:
    """A float16 model: its plain call sums the squared residuals in order, its batch with NumPy's
    pairwise sum, both returned as float64 (sound: the gap is float16's rounding, a unit of its last
    place, 0.1% of the loss)."""

    def __call__(self, x):
        r = A.astype(np.float16) @ np.asarray(x, dtype=np.float16) - Y.astype(np.float16)
        s = np.float16(0)
        for v in r * r:
            s = np.float16(s + v)
        return float(s / np.float16(len(r)))

    def batch(self, X):
        R = np.asarray(X, dtype=np.float16) @ A.astype(np.float16).T - Y.astype(np.float16)
        return np.mean(R * R, axis=1, dtype=np.float16).astype(np.float64)


class HalfSummed(HalfModel):  # another loss: a sum over the 40 samples where the plain call takes their mean
    def batch(self, X):
        return 40 * super().batch(X)


@pytest.mark.filterwarnings("ignore:estimate_gradient:UserWarning")  # (the coarse losses, warned about above)
@pytest.mark.parametrize("seed", [2, 5, 6, 7])  # seeds whose probed query rounds otherwise in the batch
def test_a_float16_models_sound_batch_passes_the_fast_path_check(seed):
    """The check's tolerance was float64's (the losses' type) and refused the batch (a RuntimeWarning,
    an error here); it is float16's, read from the losses, and the batch is used: one query more."""
    x = np.random.default_rng(seed).standard_normal(D)
    res = zo.train(HalfModel(), x, steps_per_epoch=2, estimator=zo.CGE(mu=0.05), optimizer=zo.sgd(0.01),
                   rng=0, progress=False)
    assert res.nfev == 2 * (D + 1) + 1


@pytest.mark.filterwarnings("ignore:estimate_gradient:UserWarning")
def test_a_float16_models_wrong_batch_is_still_refused():
    with pytest.warns(RuntimeWarning, match="HalfSummed: its `batch` disagrees with its plain call"):
        zo.train(HalfSummed(), X0, steps_per_epoch=2, estimator=zo.CGE(mu=0.05), optimizer=zo.sgd(0.01),
                 rng=0, progress=False)
