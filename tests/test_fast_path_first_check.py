"""A train run's first estimate through a fast path checks it against the plain call.

An estimate takes the base loss from the plain call and the perturbed losses from a fast path
(``batch``, ``coordinate_losses``, ``prefix`` / ``suffix``). One that computes another loss (the rows
reversed, a constant offset, a sum where the call takes a mean) trained silently to a wrong point.
The run's first estimate through it now asks the plain call once more at one of its query points; a
fast path that disagrees is refused with a warning and the run is the plain calls' run, which the
textbook loop over the plain call is the reference of. A healthy fast path costs one query a run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import zoracle as zo
from zoracle.executors import JoblibExecutor

D = 8
_rng = np.random.default_rng(0)
A = _rng.standard_normal((40, D))
Y = _rng.standard_normal(40)
STEPS, LR, MU = 60, 0.05, 5e-3


def loss(x) -> float:
    return float(np.mean((A @ np.asarray(x, dtype=np.float64) - Y) ** 2))


class Plain:
    def __call__(self, x):
        return loss(x)


class Healthy(Plain):
    def batch(self, X):
        return np.array([loss(r) for r in X])


class Reversed(Healthy):
    def batch(self, X):
        return super().batch(X)[::-1].copy()


class Offset(Healthy):
    def batch(self, X):
        return super().batch(X) + 1e-3


class Summed(Plain):  # a sum over the 40 samples where the plain call takes their mean
    def batch(self, X):
        return np.array([40 * loss(r) for r in X])


class OffsetCoordinates(Plain):
    def coordinate_losses(self, x, coords, step):
        out = []
        for i in coords:
            y = np.array(x)
            y[i] = y[i] + y.dtype.type(step)
            out.append(loss(y) + 1e-3)
        return np.array(out)


class ScaledSplit(Plain):  # prefix / suffix computing a mean over another number of samples
    blocks = [slice(0, 4), slice(4, D)]

    def prefix(self, x, block):
        return None

    def suffix(self, features, x, block, coords, step):
        out = []
        for i in coords:
            y = np.array(x)
            y[i] = y[i] + y.dtype.type(step)
            out.append(loss(y) * 40 / 39)
        return np.array(out)


def textbook(x0, steps=STEPS, lr=LR, mu=MU):
    """Forward-difference SGD over plain calls, written out."""
    x = np.array(x0, dtype=np.float64)
    for _ in range(steps):
        f0 = loss(x)
        g = np.empty(D)
        for i in range(D):
            y = x.copy()
            y[i] = y[i] + mu
            g[i] = (loss(y) - f0) / (y[i] - x[i])
        x = x - lr * g
    return x


def _train(oracle, estimator=None, **kw):
    return zo.train(oracle, np.zeros(D), steps_per_epoch=STEPS, estimator=estimator or zo.CGE(mu=MU),
                    optimizer=zo.sgd(LR), rng=0, progress=False, **kw)


@pytest.mark.parametrize("oracle, method", [(Reversed(), "batch"), (Offset(), "batch"), (Summed(), "batch"),
                                            (OffsetCoordinates(), "coordinate_losses"),
                                            (ScaledSplit(), "prefix and suffix")])
def test_a_fast_path_computing_another_loss_is_refused_and_the_run_is_the_textbook_loop(oracle, method):
    """Each trained silently to another point than the textbook loop (reversed rows: to a loss of 1e16)."""
    with pytest.warns(RuntimeWarning, match=rf"{type(oracle).__name__}: its `{method}` disagrees with its plain call at "
                                            r"params with coordinate \d+ moved by 0.005: `.*` gave [-\d.e+]+, the plain "
                                            r"call [-\d.e+]+ \(asked twice, alike\).*Make `.*` compute the plain call's "
                                            r"loss") as caught:
        res = _train(oracle)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1  # once a run
    assert res.params.tobytes() == textbook(np.zeros(D)).tobytes()
    # the plain calls' run, plus the check's two plain calls and the first estimate's fast queries
    assert res.nfev == STEPS * (D + 1) + 2 + D


@pytest.mark.parametrize("oracle", [Reversed(), Offset(), Summed()])
def test_rge_through_a_disagreeing_batch_is_the_plain_calls_run(oracle):
    est = zo.RGE(mu=MU, directions=6)
    want = _train(Plain(), est)
    with pytest.warns(RuntimeWarning, match=r"its `batch` disagrees with its plain call at params moved 0.005 along "
                                            r"direction \d+"):
        res = _train(oracle, est)
    assert res.params.tobytes() == want.params.tobytes()
    assert res.nfev == want.nfev + 2 + 6


def test_a_process_executor_refuses_it_too():
    with JoblibExecutor(2, backend="threading") as ex:
        with pytest.warns(RuntimeWarning, match=r"Reversed: its `batch` disagrees"):
            res = _train(Reversed(), executor=ex)
    assert res.params.tobytes() == textbook(np.zeros(D)).tobytes()


def test_a_healthy_batch_costs_one_query_a_run_and_changes_nothing():
    """No warning (pytest turns zoracle's into errors), the plain run's params, one query more a run."""
    want = _train(Plain())
    oracle = Healthy()
    for _ in range(2):  # each run checks once
        res = _train(oracle)
        assert res.params.tobytes() == want.params.tobytes()
        assert res.nfev == want.nfev + 1
        assert [r["nfev"] for r in res.history.steps[:2]] == [D + 2, D + 1]
    # estimate_gradient alone checks nothing: its nfev is the estimate's queries
    assert zo.estimate_gradient(oracle, np.zeros(D), zo.CGE(mu=MU)).nfev == D + 1


class Bound:
    """One step's oracle of a data oracle: a fresh object at every bind."""

    def __init__(self, offset):
        self.offset = offset

    def __call__(self, x):
        return loss(x) + self.offset

    def batch(self, X):
        return np.array([loss(r) + self.offset for r in X])


class Data:
    def bind(self, batch):
        return Bound(0.01 * batch)


def test_a_data_oracle_is_checked_once_a_run_whatever_it_binds():
    res = zo.train(Data(), np.zeros(D), batches=list(range(10)), epochs=2, estimator=zo.CGE(mu=MU),
                   optimizer=zo.sgd(LR), rng=0, progress=False)
    assert res.nfev == 20 * (D + 1) + 1


def simulate(theta, rng):  # docs/training.md, 'Noisy black boxes'
    return float(np.sum((theta - 1.0) ** 2 * np.exp(0.3 * rng.standard_normal(theta.size))) + rng.standard_normal())


class Simulator:
    """The documented noisy black box, its bound oracle with a batch: every query of a step sees the
    step's noise."""

    def __call__(self, theta):
        return simulate(theta, np.random.default_rng())

    def bind(self, seed):
        return SeededStep(seed)


class SeededStep:
    def __init__(self, seed):
        self.seed = seed

    def __call__(self, theta):
        return simulate(theta, np.random.default_rng(self.seed))

    def batch(self, thetas):
        return np.array([self(t) for t in thetas])


def seeds(epoch):
    return [1000 * epoch + k for k in range(10)]


def test_the_documented_noisy_black_box_with_a_batch_passes_and_is_the_textbook_loop():
    res = zo.train(Simulator(), np.zeros(4), batches=seeds, epochs=3, estimator=zo.CGE(mu=1e-3),
                   optimizer=zo.sgd(0.1), rng=0, progress=False)
    x = np.zeros(4)
    for epoch in range(3):
        for seed in seeds(epoch):
            f = lambda t: simulate(t, np.random.default_rng(seed))  # noqa: E731
            g = np.array([(f(x + 1e-3 * e) - f(x)) / ((x[i] + 1e-3) - x[i]) for i, e in enumerate(np.eye(4))])
            x = x - 0.1 * g
    assert np.array_equal(res.params, x)
    assert res.nfev == 150 + 1


class FreshNoise(Plain):
    """Noise drawn at every call, its batch's too: the check cannot tell a wrong batch from it."""

    def __init__(self):
        self.rng = np.random.default_rng(5)

    def __call__(self, x):
        return loss(x) + 1e-3 * self.rng.standard_normal()

    def batch(self, X):
        return np.array([loss(r) for r in X]) + 1e-3 * self.rng.standard_normal(len(X))


def test_a_plain_call_that_answers_differently_is_not_judged():
    """Asked twice at one point, the plain call gave two losses: noise, which the run names in a warning
    (tests/test_noisy_oracles.py), as its error path and check_oracle do; the batch is kept, for the
    cost of the two plain calls."""
    with pytest.warns(RuntimeWarning, match="its plain call is not deterministic"):
        res = _train(FreshNoise())
    assert res.nfev == STEPS * (D + 1) + 2


def test_torch_oracle_declares_its_fast_paths_checked():
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle

    class OwnBatch(TorchOracle):
        def batch(self, params_batch):
            return super().batch(params_batch)

    model = torch.nn.Linear(3, 1)
    assert TorchOracle(model, torch.nn.MSELoss(reduction="none")).fast_paths_checked is True
    assert OwnBatch(model, torch.nn.MSELoss(reduction="none")).fast_paths_checked is False


A32 = np.random.default_rng(1).standard_normal((4000, D)).astype(np.float32)
Y32 = np.random.default_rng(2).standard_normal(4000).astype(np.float32)


class Float32Model:
    """A float32 computation, its batch a matrix product (other roundings than the plain call's)."""

    def __init__(self, cast):
        self.cast = cast

    def __call__(self, x):
        r = A32 @ np.asarray(x, dtype=np.float32) - Y32
        return self.cast(np.float32(math.fsum((r * r).tolist()) / len(r)))  # (summed exactly, the batch in float32)

    def batch(self, X):
        R = np.asarray(X, dtype=np.float32) @ A32.T - Y32
        return np.asarray(np.mean(R * R, axis=1)).astype(np.float64 if self.cast is float else np.float32)


@pytest.mark.parametrize("dtype, cast", [(np.float32, np.float32), (np.float64, float)])
def test_a_float32_computation_with_its_own_roundings_passes(dtype, cast):
    """Rounding is no disagreement: float32 losses (or float32 computations returned as float64) whose
    batch rounds otherwise than the plain call are not refused (no warning: pytest makes it an error)."""
    res = zo.train(Float32Model(cast), np.zeros(D, dtype=dtype), steps_per_epoch=20, estimator=zo.CGE(mu=1e-2),
                   optimizer=zo.sgd(LR), rng=0, progress=False)
    assert res.nfev == 20 * (D + 1) + 1
