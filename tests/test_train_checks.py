"""train's checks of its inputs: an eval_fn value too large for a float, the tiny-mu warning for a
plain callable at float32 params, and how often a schedule is called before the first query."""

from __future__ import annotations

import collections

import numpy as np
import pytest

import zoracle as zo


def _quad(p):
    return float(np.sum(p.astype(np.float64) ** 2))


@pytest.mark.parametrize("value, shown", [(10**400, r"is 1000000000\d*\.\.\. \(too large for a float\)"),
                                          ({"acc": 10**5000}, r"for 'acc' is <int of about 5001 digits> \(too large")],
                         ids=["10**400", "10**5000 in a dict"])
def test_an_eval_fn_int_too_large_for_a_float_stops_the_run_naming_eval_fn(value, shown):
    # float(10**400) raised OverflowError from deep inside train, and the run's work was lost
    with pytest.warns(UserWarning, match=r"the value `eval_fn` returned at epoch 0 " + shown) as rec:
        r = zo.train(_quad, np.ones(3), epochs=2, eval_fn=lambda p: value, progress=False)
    assert r.stopped and len(r.history.column("epoch", "epoch")) == 0
    assert all(len(str(w.message)) < 400 for w in rec)  # the value shortened


def _loss_data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((20, 5)), np.ones(5, np.float32)


def test_tiny_mu_is_quiet_for_a_float32_params_callable_that_computes_in_float64():
    # mu = 1e-6 is 8 float32 spacings at 1, but this loss is a float64 computation: its differences
    # over the (exact) float32 steps resolve the gradient, and the warning was false
    a, p = _loss_data()

    def loss(x):
        return float(np.mean((a @ x.astype(np.float64) - 1) ** 2))

    true = 2 * a.T @ (a @ np.ones(5) - 1) / 20
    g = zo.estimate_gradient(loss, p, zo.CGE(mu=1e-6)).grad
    assert np.linalg.norm(g - true) / np.linalg.norm(true) < 1e-4  # what the warning said was lost
    r = zo.train(loss, p, estimator=zo.CGE(mu=1e-6), optimizer=zo.sgd(0.01), epochs=2, progress=False)  # quiet
    assert loss(r.params) < loss(p)


def test_tiny_mu_still_warns_for_a_float32_loss_returned_as_a_python_float():
    # the true positive kept: NumPy computes this loss in float32 (float() hides its type)
    a, p = _loss_data()
    a = a.astype(np.float32)

    def loss(x):
        return float(np.mean((a @ x - 1) ** 2))

    with pytest.warns(UserWarning, match=r"mu = 1e-06 is 8\.39 float spacings of float32 at 1"):
        zo.train(loss, p, estimator=zo.CGE(mu=1e-6), optimizer=zo.sgd(0.01), progress=False)


def test_a_schedule_is_called_once_a_step_before_the_run_and_once_when_it_runs():
    # fingerprint and the every-step check each called it at steps 0, 1, 2: three calls of step 0
    calls = collections.Counter()

    def mu(t):
        calls["mu", t] += 1
        return 5e-3

    def lr(t):
        calls["lr", t] += 1
        return 0.1

    zo.train(_quad, np.ones(3), epochs=3, mu=mu, schedule=lr, progress=False)
    assert calls == {(k, t): 2 for k in ("mu", "lr") for t in range(3)}


def test_a_run_of_no_steps_calls_the_mu_schedule_once():
    # the tiny- and huge-mu warnings each called it for step 0
    calls = collections.Counter()

    def mu(t):
        calls[t] += 1
        return 5e-3

    zo.train(_quad, np.ones(3), epochs=0, mu=mu, progress=False)
    assert calls == {0: 1}
