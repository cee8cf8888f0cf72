"""zoracle.AskTell as a pycma, nevergrad or scikit-optimize user meets it: their idioms are taken where
they are unambiguous (``tell(X, losses)`` with X the asked points, a torch tensor, a list of lists, one
point's loss alone) and refused naming the argument and the fix otherwise (a changed point, swapped
arguments, one point of many, other libraries' options and names); and the run's warnings point at
the caller's line (they pointed at zoracle's own, inside the run's thread), where its filters act."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

import zoracle as zo

X0 = np.linspace(-1.0, 1.0, 6)
SETTINGS = dict(epochs=3, optimizer=zo.sgd(0.05), progress=False, rng=0)


def f(x):
    return float(((x - 3) ** 2).sum() + np.sin(3 * x).sum())


def same(opt):
    """``opt``'s result is train's with f, bit for bit."""
    want = zo.train(f, X0, **SETTINGS)
    assert np.array_equal(opt.result.params, want.params) and opt.result.nfev == want.nfev


@pytest.mark.parametrize("as_given", [
    lambda X: X,  # pycma's es.tell(X, fvalues), with X the array asked
    lambda X: list(X),  # pycma's list of solutions
    lambda X: X.tolist(),  # scikit-optimize's list of lists
])
def test_tell_points_then_losses_is_the_plain_tell(as_given):
    opt = zo.AskTell(X0, **SETTINGS)
    while not opt.done:
        X = opt.ask()
        opt.tell(as_given(X), [f(x) for x in X])
    same(opt)


def test_a_point_changed_after_ask_is_refused_naming_its_row_and_the_points_stay_asked():
    opt = zo.AskTell(X0, **SETTINGS)
    X = opt.ask()
    losses = [f(x) for x in X]
    clipped = X.copy()
    clipped[2, 1] = 0.0  # (a bound repaired the way pycma users do: another point than the asked one)
    says = r"^tell\(X, losses\): row 2 of X is not row 2 of the points the last ask\(\) returned \(coordinate 1 is "
    with pytest.raises(zo.ArgumentError, match=says + r"0.0, asked -0.595; 1 of the 7 rows"):
        opt.tell(clipped, losses)
    with pytest.raises(zo.ArgumentError, match="row 0 of X"):
        opt.tell(X.astype(np.float32), losses)  # rounded: other points too
    opt.tell(X, losses)  # the points stayed asked
    while not opt.done:
        X = opt.ask()
        opt.tell([f(x) for x in X])
    same(opt)


@pytest.mark.parametrize("args, says", [
    (lambda X, L: (L, X), r"as X \(shape \(7,\)\), .*the points come first, then their losses: tell\(X, losses\)"),
    (lambda X, L: (X[0], L[0]), r"as X \(shape \(6,\)\), .*one point and its loss \(nevergrad's and scikit-optimize's "
                                r"tell\(x, loss\)\) is no tell here: an ask\(\) returns the 7 points"),
    (lambda X, L: (X[:3], L), r"as X \(shape \(3, 6\)\), where the points of the last ask\(\) are \(7, 6\)"),
    (lambda X, L: ([[1.0], [1.0, 2.0]], L), r"as X \(no array of numbers\)"),
])
def test_points_that_are_not_the_asked_array_are_refused_saying_the_fix(args, says):
    opt = zo.AskTell(X0, **SETTINGS)
    X = opt.ask()
    L = [f(x) for x in X]
    with pytest.raises(zo.ArgumentError, match=r"^tell\(X, losses\) got .*" + says):
        opt.tell(*args(X, L))
    opt.tell(L)
    opt.close()


@pytest.mark.parametrize("call, says", [
    (lambda opt, X, L: opt.tell(X, L, None), r"tell\(\) got 3 arguments by position: it takes tell\(losses\), or "
                                             r"tell\(X, losses\)"),
    (lambda opt, X, L: opt.tell(X, L, copy=True), r"tell\(\) got `copy`=True: it takes tell\(losses\)"),
    (lambda opt, X, L: opt.tell(X, function_values=L), r"tell\(\) got `function_values`=\[56.8, .*: it takes"),
])
def test_other_libraries_options_of_tell_are_refused(call, says):
    opt = zo.AskTell(X0, **SETTINGS)
    X = opt.ask()
    L = [f(x) for x in X]
    with pytest.raises(zo.ArgumentError, match=says) as info:
        call(opt, X, L)
    assert isinstance(info.value, TypeError)
    opt.tell(L)
    opt.close()


@pytest.mark.parametrize("told", [
    lambda X: np.array([[f(x)] for x in X]),  # a column, (n, 1)
    lambda X: [[f(x)] for x in X],  # a list of lists of one loss each
])
def test_a_column_of_losses_is_taken(told):
    opt = zo.AskTell(X0, **SETTINGS)
    while not opt.done:
        opt.tell(told(opt.ask()))
    same(opt)


def test_torch_losses_are_taken():
    torch = pytest.importorskip("torch")
    opt = zo.AskTell(X0, **SETTINGS)
    tells = 0
    while not opt.done:
        X = opt.ask()
        if tells % 2:
            opt.tell([torch.tensor(f(x), dtype=torch.float64) for x in X])  # 0-d tensors
        else:
            opt.tell(torch.tensor([f(x) for x in X], dtype=torch.float64, requires_grad=True))
        tells += 1
    same(opt)


@pytest.mark.parametrize("make", [np.asarray, float])
def test_one_number_for_many_points_is_refused(make):
    opt = zo.AskTell(X0, **SETTINGS)
    X = opt.ask()
    with pytest.raises(zo.OracleError, match=r"expected 7 losses, got shape \(\): one number for all 7 queries"):
        opt.tell(make(f(X[0])))
    opt.close()


def quartic(x):
    return float((x ** 4).sum())


@pytest.mark.parametrize("tell", [
    lambda opt, X: opt.tell(quartic(X[0])),  # a number
    lambda opt, X: opt.tell(np.asarray(quartic(X[0]))),  # a NumPy 0-d array
    lambda opt, X: opt.tell(X[0], quartic(X[0])),  # nevergrad's tell(x, loss)
])
def test_the_loss_of_one_asked_point_is_taken_alone(tell):
    """A diverged run's probes ask one point each: its loss alone is unambiguous (it was refused as
    "expected 1 losses, got shape ()")."""
    settings = dict(epochs=40, optimizer=zo.sgd(10.0), progress=False)
    with pytest.raises(zo.ArgumentError, match="training diverged") as want:
        zo.train(quartic, np.ones(3), **settings)
    opt = zo.AskTell(np.ones(3), **settings)
    ones = 0
    with pytest.raises(zo.ArgumentError, match="training diverged") as got:
        while not opt.done:
            X = opt.ask()
            if len(X) == 1:
                ones += 1
                tell(opt, X)
            else:
                opt.tell([quartic(x) for x in X])
    assert ones and str(got.value) == str(want.value)


@pytest.mark.parametrize("name, says", [
    ("stop", r"AskTell has no `stop`: the run's end is .done: `while not opt.done:`"),
    ("provide_recommendation", r"AskTell has no `provide_recommendation`: .params is the run's current parameters"),
    ("optimize", r"zo.train\(f, params, ...\) is the same run"),
])
def test_other_libraries_names_say_what_ask_tell_has(name, says):
    with zo.AskTell(X0, **SETTINGS) as opt:
        with pytest.raises(AttributeError, match=says):
            getattr(opt, name)
        assert not hasattr(opt, name)
        with pytest.raises(AttributeError, match="'AskTell' object has no attribute 'nonesuch'"):
            opt.nonesuch
        with pytest.raises(zo.ZoracleError, match="the run has not ended: ask"):
            opt.result  # pycma's es.result before the end: refused, .params and .history named


# The run's warnings: issued at the caller's line (the constructor's or tell()'s), where its filters act

def flat(opt):
    """Tell constant losses (every gradient estimate 0: train warns at each epoch's end)."""
    while not opt.done:
        X = opt.ask()
        opt.tell([1.0] * len(X))


def tiny_mu():
    return zo.AskTell(np.zeros(6), mu=1e-30, **SETTINGS)  # (train warns of the mu before the first query)


def line_of(fn, text):
    """The line of ``fn``'s source holding ``text``."""
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


def test_the_runs_warnings_point_at_the_callers_lines():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = tiny_mu()
        made = caught[:]
        flat(opt)
    assert [str(w.message)[:12] for w in made] == ["train: CGE's"]
    assert (made[0].filename, made[0].lineno) == (__file__, line_of(tiny_mu, "zo.AskTell("))
    told = [w for w in caught[len(made):] if "was 0 to within the loss's rounding" in str(w.message)]
    assert len(told) == 1  # (said once per run)
    assert {(w.filename, w.lineno) for w in told} == {(__file__, line_of(flat, "opt.tell("))}


def test_a_warning_made_an_error_raises_at_the_tell_and_the_run_goes_on():
    opt = zo.AskTell(X0, **SETTINGS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="every gradient estimate of epoch 0"):
            opt.tell([1.0] * len(opt.ask()))
    X = opt.ask()  # the step was told: the run asks the next one's points
    opt.tell([f(x) for x in X])
    assert [r["step"] for r in opt.history.steps] == [0, 1]
    opt.close()


def test_a_warning_made_an_error_raises_from_the_constructor():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="CGE's mu = 1e-30"):
            tiny_mu()


def test_a_default_filter_shows_a_warning_once_for_its_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            flat(tiny_mu())
    assert sum("CGE's mu" in str(w.message) for w in caught) == 1
    assert sum("epoch 0 (1 step) was 0 to within the loss's rounding" in str(w.message) for w in caught) == 1
    assert {w.filename for w in caught} == {__file__}
