"""A script ported from scipy.optimize (minimize, approx_fprime) to zoracle: the arguments scipy
takes and zoracle does not are refused before any query, naming zoracle's way to say the same."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import approx_fprime, minimize

import zoracle as zo


class Counted:
    def __init__(self):
        self.calls = 0

    def __call__(self, x, a=3.0):
        self.calls += 1
        return float(np.sum((x - a) ** 2))


@pytest.mark.parametrize("name, value, fix", [
    ("callback", lambda xk: None, "callbacks=[fn], fn(event, record, params)"),
    ("args", (3.0,), "lambda x: fun(x, *args)"),
    ("constraints", {"type": "ineq", "fun": sum}, "bounds=(lo, hi)"),
    ("options", {"maxiter": 5}, "maxiter is `epochs`"),
    ("maxiter", 5, "`epochs`"),
    ("maxfev", 50, "`max_queries`"),
    ("method", "Nelder-Mead", "optimizer="),
    ("jac", None, "estimates the gradient from loss queries"),
    ("tol", 1e-8, "no convergence test"),
    ("x0", np.zeros(2), "`params`"),
])
def test_scipy_keywords_are_refused_before_any_query_naming_zoracles_way(name, value, fix):
    """Python's own TypeError said "unexpected keyword argument 'callback'" beside `callbacks`,
    and nothing of where `args`, `constraints` or `options={'maxiter': ...}` go."""
    fun = Counted()
    with pytest.raises(zo.ArgumentError, match=rf"`train` has no argument `{name}`: .*{re.escape(fix)}") as info:
        zo.train(fun, np.zeros(2), progress=False, **{name: value})
    assert isinstance(info.value, TypeError)  # what Python raised before: `except TypeError` still catches it
    assert fun.calls == 0


def test_a_misspelt_keyword_names_the_nearest_argument():
    with pytest.raises(zo.ArgumentError, match=r"no argument `callbak`: the nearest name it takes is `callbacks`"
                                               r".*no argument `max_queries_`: the nearest name it takes is "
                                               r"`max_queries`"):
        zo.train(Counted(), np.zeros(2), progress=False, callbak=[], max_queries_=10)
    with pytest.raises(zo.ArgumentError, match=r"no argument `zzz`: see help\(zo.train\)"):
        zo.train(Counted(), np.zeros(2), zzz=1)


def test_scipys_positional_args_are_refused_naming_the_oracle_binding():
    """minimize(fun, x0, (a,)) passes args by position; train's arguments after params are keyword-only."""
    with pytest.raises(zo.ArgumentError, match=r"`train` takes 2 arguments by position \(oracle, params\), got 3"
                                               r".*lambda x: fun\(x, \*args\)"):
        zo.train(Counted(), np.zeros(2), (3.0,))
    # and the binding it names runs as scipy's args did
    fun = Counted()
    res = zo.train(lambda x: fun(x, *(1.0,)), np.zeros(2), epochs=40, optimizer=zo.sgd(0.1), progress=False)
    ref = minimize(fun, np.zeros(2), args=(1.0,))
    np.testing.assert_allclose(res.params, ref.x, atol=1e-2)


def test_the_signatures_are_the_functions_own():
    """help(zo.train), the API pages and tab completion read the wrapped function's parameters."""
    names = list(inspect.signature(zo.train).parameters)
    assert names[:2] == ["oracle", "params"] and "callbacks" in names and "max_queries" in names
    assert list(inspect.signature(zo.estimate_gradient).parameters)[:3] == ["oracle", "params", "estimator"]
    assert zo.train.__doc__.startswith("Train ``params``") and zo.train.__name__ == "train"


def test_hints_name_only_arguments_that_exist():
    """Every `name` a hint points train's (or estimate_gradient's) user at is one it takes, and no
    hint hides a name it takes."""
    from zoracle._foreign_args import GRADIENT_HINTS, TRAIN_HINTS

    for fn, hints in ((zo.train, TRAIN_HINTS), (zo.estimate_gradient, GRADIENT_HINTS)):
        takes = set(inspect.signature(fn).parameters)
        assert not takes & set(hints)
        named = {n for text in hints.values() for n in re.findall(r"`([a-z_]+)`", text)}
        assert named - {"mu"} <= takes, named - takes


def test_every_argument_of_minimize_and_approx_fprime_has_a_hint():
    """docs/training.md says every keyword minimize takes is refused naming zoracle's way."""
    from scipy.optimize import approx_fprime as fprime

    from zoracle._foreign_args import GRADIENT_HINTS, TRAIN_HINTS

    # (bounds: train takes it, as minimize does)
    assert set(inspect.signature(minimize).parameters) - {"fun", "x0", "bounds"} <= set(TRAIN_HINTS)
    assert "bounds" in inspect.signature(zo.train).parameters
    assert set(inspect.signature(fprime).parameters) - {"f", "xk"} <= set(GRADIENT_HINTS)
    assert {"fun", "x0"} <= set(TRAIN_HINTS) and {"f", "xk"} <= set(GRADIENT_HINTS)


def test_a_plain_function_takes_one_step_an_epoch_as_the_maxiter_hint_says():
    assert zo.train(Counted(), np.zeros(2), epochs=7, progress=False).steps == 7


def test_approx_fprime_order_and_names_are_refused_naming_the_fix():
    fun, x = Counted(), np.array([0.5, 2.0])
    with pytest.raises(zo.ArgumentError, match=r"got a ndarray first and a callable second \(scipy approx_fprime's "
                                               r"order, \(xk, f\)\): swap them, estimate_gradient\(f, xk\)"):
        zo.estimate_gradient(x, fun)
    with pytest.raises(zo.ArgumentError, match=r"a number here is scipy approx_fprime's epsilon: pass "
                                               r"estimator=zo.CGE\(mu=1e-06\)"):
        zo.estimate_gradient(fun, x, 1e-6)
    with pytest.raises(zo.ArgumentError, match=r"no argument `epsilon`: .*estimator=zo.CGE\(mu=...\)"):
        zo.estimate_gradient(fun, x, epsilon=1e-6)
    with pytest.raises(zo.ArgumentError, match=r"takes 3 arguments by position .*lambda x: fun\(x, \*args\)"):
        zo.estimate_gradient(fun, x, zo.CGE(), 1.0)  # approx_fprime(xk, f, epsilon, *args)
    assert fun.calls == 0
    # the fix named: the same gradient as scipy's
    got = zo.estimate_gradient(fun, x, zo.CGE(mu=1e-6, scheme="central")).grad
    np.testing.assert_allclose(got, approx_fprime(x, fun, 1.49e-8), atol=1e-5)


def test_a_train_call_in_approx_fprime_order_is_refused_too():
    with pytest.raises(zo.ArgumentError, match=r"swap them, train\(f, xk\)"):
        zo.train(np.zeros(2), Counted())


@pytest.mark.parametrize("x0", [3.0, 3, [[1.0, 2.0]]])
def test_a_number_or_nested_list_as_params_is_shown_a_fix_that_works(x0):
    """minimize(fun, 3.0) runs; train(fun, 3.0) named np.asarray(params, dtype=np.float64), which
    gives a 0-d array that train refuses in turn."""
    with pytest.raises(zo.ArgumentError, match=r"use np.asarray\(params, dtype=np.float64\)\.ravel\(\)$"):
        zo.train(Counted(), x0, progress=False)
    params = np.asarray(x0, dtype=np.float64).ravel()  # the fix, as shown
    assert zo.train(Counted(), params, progress=False).steps == 1


def test_a_flat_list_is_still_shown_asarray_alone():
    with pytest.raises(zo.ArgumentError, match=r"use np.asarray\(params, dtype=np.float64\)$"):
        zo.train(Counted(), [1.0, 2.0], progress=False)


@pytest.mark.parametrize("arg", ["xk", "intermediate_result"])
def test_a_scipy_callback_is_refused_with_how_to_port_it(arg):
    ns: dict = {}
    exec(f"def cb({arg}):\n    return None", ns)
    with pytest.raises(zo.ArgumentError, match=r"give it the parameters \(event, record, params\); one written for "
                                               r"scipy's minimize.*`params` as xk and record\['loss'\] as fun"):
        zo.train(Counted(), np.zeros(2), callbacks=[ns["cb"]], progress=False)
    # a callback of two parameters is no scipy one: no such note
    with pytest.raises(zo.ArgumentError) as info:
        zo.train(Counted(), np.zeros(2), callbacks=[lambda a, b: None], progress=False)
    assert "scipy" not in str(info.value)


def test_the_docs_have_a_coming_from_scipy_section():
    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    assert "## Coming from SciPy" in text


def test_estimate_gradient_with_bounds_points_to_train_bounds():
    """zo.train took bounds= (session 75) and estimate_gradient did not: its refusal said only
    "has no argument `bounds`", where the way on is train's box."""
    with pytest.raises(zo.ArgumentError, match=r"zo\.train\(\.\.\., bounds=\(lo, hi\)\)"):
        zo.estimate_gradient(lambda x: float(x @ x), np.ones(3), bounds=(0.0, 1.0))
