"""Tuning a few physical parameters of a simulator that fails outside its valid region."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import zoracle as zo


def _solver(p):
    """Stands in for an integrator defined only for a positive diffusivity ``p[0]``."""
    if p[0] <= 0:
        raise ValueError("the integrator diverged")
    return float((np.log(p[0]) + 13.0) ** 2 + ((p[1] - 800.0) / 100.0) ** 2)


def test_a_failing_query_is_reported_with_its_params():
    """A solver that fails at some parameters stopped the estimate with "oracle raised at
    coordinate 0 (step -1e-05)" and no word of where: the base point was the caller's, but the
    queried point (base plus the step) and, in `train`, the base point after an update were
    nowhere. The error now carries a copy of the query's params and shows them."""
    x = np.array([6e-6, 400.0])
    with pytest.raises(zo.OracleError, match=r"at coordinate 0 \(step -1e-05\), params \[-4\.0+\d*e-06, 400\.0\]: "
                                             r"ValueError: the integrator diverged") as info:
        zo.estimate_gradient(_solver, x, zo.CGE(mu=1e-5, scheme="central"))
    assert info.value.params[1] == 400.0 and info.value.params[0] == (6e-6 - 1e-5)
    assert x.tolist() == [6e-6, 400.0]  # the caller's array, as it was


def test_a_nan_in_training_names_the_updated_params_and_survives_pickling():
    def sim(p):  # NaN below 0, as an integrator returning NaN there
        return float("nan") if p[0] < 0 else float((p[0] + 1.0) ** 2)

    with pytest.raises(zo.OracleError, match=r"the base point \(unperturbed params\) of training step 1 "
                                             r"\(epoch 1, batch 0\), params \[-1\.0\d+\]: expected a finite") as info:
        zo.train(sim, np.array([0.3]), epochs=5, estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.5),
                 progress=False, rng=0)
    err = info.value
    assert err.params.shape == (1,) and err.params[0] < 0
    back = pickle.loads(pickle.dumps(err))  # as it comes back from a process worker
    assert str(back) == str(err) and np.array_equal(back.params, err.params)


def test_a_long_vector_shows_its_first_values_only():
    def bad(p):
        return float("nan")

    with pytest.raises(zo.OracleError, match=r"params \[0\.0, 1\.0, .*19\.0\] \(the first 20 of 500\)") as info:
        zo.estimate_gradient(bad, np.arange(500.0))
    assert info.value.params.shape == (500,) and len(str(info.value)) < 600


def _diverges_below_zero(p):  # (module level: process workers import it)
    if p[0] < 0:
        raise FloatingPointError("the integrator diverged")
    return float(p @ p)


def test_the_params_come_back_from_a_process_worker():
    """A slow simulator runs on process workers: the error they send back keeps the params."""
    from zoracle.executors import JoblibExecutor

    with JoblibExecutor(2) as ex:
        with pytest.raises(zo.OracleError, match=r"at coordinate 0 \(step -0\.5\), params \[-0\.25, 1\.0, 2\.0, 3\.0\]: "
                                                 r"FloatingPointError") as info:
            zo.estimate_gradient(_diverges_below_zero, np.array([0.25, 1.0, 2.0, 3.0]), zo.CGE(mu=0.5, scheme="central"),
                                 executor=ex)
    assert info.value.params.tolist() == [-0.25, 1.0, 2.0, 3.0]
