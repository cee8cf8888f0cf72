"""What a script ported from scipy.optimize meets first: SciPy's keyword names for the function and
the point, OptimizeResult's fields and keys, a loss of shape (1, 1), and `callbacks=False`."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

import zoracle as zo


class Counted:
    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return float(np.sum((x - 3.0) ** 2))


@pytest.mark.parametrize("call, missing, hinted", [
    (lambda f, x: zo.train(fun=f, x0=x, progress=False), "`oracle` and `params`", ("fun", "x0")),
    (lambda f, x: zo.train(f, x0=x, progress=False), "`params`", ("x0",)),
    (lambda f, x: zo.train(x0=x, fun=f, epochs=3), "`oracle` and `params`", ("fun", "x0")),
])
def test_scipys_names_for_the_function_and_the_point_get_zoracles_hint(call, missing, hinted):
    """minimize(fun=f, x0=x) ported as train(fun=f, x0=x) got Python's own "train() missing 2
    required positional arguments: 'oracle' and 'params'" before zoracle's hint for `fun` and `x0`."""
    fun = Counted()
    with pytest.raises(zo.ArgumentError, match=rf"^`train` is missing {missing}: pass the function and the point "
                                               r"first, by position: train\(oracle, params, \.\.\.\)") as info:
        call(fun, np.zeros(2))
    assert isinstance(info.value, TypeError)  # what Python raised: `except TypeError` still catches it
    text = str(info.value)
    for name in hinted:
        assert f"`train` has no argument `{name}`" in text
    assert "the loss function is the first argument, `oracle`" in text or "fun" not in hinted
    assert fun.calls == 0


def test_approx_fprimes_names_and_a_bare_call_get_the_hint_too():
    fun = Counted()
    with pytest.raises(zo.ArgumentError, match=r"^`estimate_gradient` is missing `oracle` and `params`: .*"
                                               r"estimate_gradient\(oracle, params, \.\.\.\); .*no argument `f`: "
                                               r"the loss function is the first argument"):
        zo.estimate_gradient(f=fun, xk=np.zeros(2))
    with pytest.raises(zo.ArgumentError, match=r"^`train` is missing `oracle` and `params`: [^;]*$"):
        zo.train()
    with pytest.raises(zo.ArgumentError, match=r"^`estimate_gradient` is missing `params`: "):
        zo.estimate_gradient(fun)
    assert fun.calls == 0


def test_the_signatures_keep_oracle_and_params_required_and_keywords_still_bind_them():
    """The runtime placeholder is no default in help(), inspect or a type checker (the slow mypy
    and pyright tests of tests/test_packaging.py check that `zo.train()` stays refused there)."""
    for fn in (zo.train, zo.estimate_gradient):
        sig = inspect.signature(fn)
        assert [sig.parameters[n].default for n in ("oracle", "params")] == [inspect.Parameter.empty] * 2
        assert "<required>" not in str(sig)
    assert inspect.signature(zo.estimate_gradient).parameters["estimator"].default is None
    res = zo.train(oracle=Counted(), params=np.zeros(2), epochs=3, progress=False)
    assert res.steps == 3
    est = zo.estimate_gradient(oracle=Counted(), params=np.zeros(2))
    np.testing.assert_allclose(est.grad, -6.0, atol=1e-2)


@pytest.mark.parametrize("name, hint", [
    ("njev", "every query is a loss value, counted in result.nfev"),
    ("nhev", "every query is a loss value"),
    ("hess_inv", "train keeps no Hessian"),
    ("hess", "train keeps no Hessian"),
    ("maxcv", "train takes no constraints"),
])
def test_more_of_optimizeresults_fields_say_where_train_keeps_them(name, hint):
    res = zo.train(Counted(), np.zeros(2), progress=False)
    with pytest.raises(AttributeError, match=rf"'{name}' \(a field of SciPy's OptimizeResult\): .*{hint}"):
        getattr(res, name)
    assert not hasattr(res, name)


def test_reading_a_result_as_scipys_dict_names_the_attribute():
    """OptimizeResult is a dict: res["x"] gave Python's bare "'TrainResult' object is not subscriptable"."""
    res = zo.train(Counted(), np.zeros(2), progress=False)
    with pytest.raises(TypeError, match=r"^'TrainResult' object is not subscriptable; result\['x'\] is SciPy's "
                                        r"OptimizeResult's: the parameters are result.params$"):
        res["x"]
    with pytest.raises(TypeError, match=r"result\['fun'\] is SciPy's .*evaluate your loss at result.params"):
        res["fun"]
    with pytest.raises(TypeError, match=r"not subscriptable: read the attribute, result.nfev$"):
        res["nfev"]
    with pytest.raises(TypeError, match=r"^'TrainResult' object is not subscriptable$"):
        res[0]
    # still no sequence: iterating or unpacking it fails as before
    with pytest.raises(TypeError, match=r"^'TrainResult' object is not iterable$"):
        list(res)
    with pytest.raises(TypeError, match="not iterable"):
        "x" in res  # noqa: B015
    assert res.nfev == 3


@pytest.mark.parametrize("shape", [(1, 1), (1, 1, 1)])
def test_a_one_element_loss_of_more_dimensions_is_refused_naming_item(shape):
    """SciPy takes a loss of shape (1, 1); zoracle refuses it (docs/training.md), and said only
    "expected a scalar, got shape (1, 1)"."""
    def loss(x):
        return np.full(shape, np.sum((x - 3.0) ** 2))

    fix = re.escape("return `loss.item()`, a float (a 1-element array of more dimensions, which SciPy takes, is refused")
    with pytest.raises(zo.OracleError, match=re.escape(f"expected a scalar, got shape {shape}: ") + fix):
        zo.train(loss, np.zeros(2), progress=False)
    with pytest.raises(zo.OracleError, match=fix):
        zo.estimate_gradient(loss, np.zeros(2))
    # the fix named runs
    assert zo.train(lambda x: loss(x).item(), np.zeros(2), progress=False).steps == 1


@pytest.mark.parametrize("shape", [(0,), (3, 0)])
def test_an_empty_loss_is_told_what_to_return(shape):
    """An empty array's refusal said "an empty array holds no loss", and no fix."""
    with pytest.raises(zo.OracleError, match=re.escape(f"expected a scalar, got shape {shape}: an empty array holds "
                                                       "no loss (a mask or a batch that selected nothing?): return "
                                                       "one number, a float")):
        zo.estimate_gradient(lambda x: np.zeros(shape), np.zeros(2))


def test_a_loss_of_several_values_is_told_to_reduce_it():
    with pytest.raises(zo.OracleError, match=r"expected a scalar, got shape \(2, 3\): reduce it to one number "
                                             r"\(`\.mean\(\)`\)"):
        zo.train(lambda x: np.ones((2, 3)) * float(x @ x), np.zeros(2), progress=False)
    assert zo.train(lambda x: np.array([float(x @ x)]), np.zeros(2), progress=False).steps == 1  # (1,): taken


def test_callbacks_false_is_in_the_annotation_and_the_docs_as_it_runs():
    """`callbacks=verbose and [printer]` runs (False: no callback), while its annotation refused
    False under mypy and pyright (tests/data/strict_user_script.py checks the typed call)."""
    assert zo.train(Counted(), np.zeros(2), callbacks=False, progress=False).steps == 1
    annotation = inspect.signature(zo.train).parameters["callbacks"].annotation
    assert "Literal[False]" in str(annotation) and "None" in str(annotation)
    assert "callbacks : sequence of callable, None or False" in zo.train.__doc__


def test_a_result_given_where_a_list_goes_is_still_refused_by_name():
    """`__iter__ = None` keeps a TrainResult (now with __getitem__) no iterable; zoracle's own
    argument checks read it so (hasattr alone found the None and iterated it)."""
    res = zo.train(Counted(), np.zeros(2), progress=False)
    with pytest.raises(zo.ArgumentError, match=r"`callbacks` must be a list of callables .*got TrainResult"):
        zo.train(Counted(), np.zeros(2), callbacks=res, progress=False)
    with pytest.raises(zo.ArgumentError, match=r"`blocks` must be a sequence of parameter blocks"):
        zo.train(Counted(), np.zeros(2), blocks=res, sparsity=0.5, progress=False)
    with pytest.raises(zo.ArgumentError, match=r"`blocks` must be records with name, slice and kind"):
        zo.recipes.layer_scales(res, np.zeros(2))
    assert not np.iterable(res) and np.asarray(res).shape == ()
