"""A run that failed, and the same objects used again: an oracle, executor or TorchOracle that a
failure (an exception of the user's, Ctrl-C) left half-updated gives another result than fresh
objects; and the user's exception, from a worker process too, shows the line that raised it."""

from __future__ import annotations

import contextlib
import os
import traceback
import warnings

import numpy as np
import pytest

import zoracle as zo
from zoracle.executors import JoblibExecutor

torch = pytest.importorskip("torch")
from zoracle.adapters.torch import TorchOracle  # noqa: E402


class SolverDiverged(Exception):
    """The user's own exception class."""


class NeedsCode(Exception):
    """An exception that does not unpickle: its __init__ takes another argument than its args."""

    def __init__(self, code, text):
        super().__init__(f"{text} (code {code})")
        self.code = code


def _deep(n, kind):
    if n:
        return _deep(n - 1, kind)
    if kind == "plain":
        raise SolverDiverged("the solver diverged")  # the user's line: SOLVER-DIVERGED-HERE
    raise NeedsCode(7, "the solver diverged")  # the user's line: SOLVER-DIVERGED-HERE


class FailsInWorkers:
    """A loss that raises the user's exception, ``depth`` frames down its own helpers, in any
    process but the one that made it (every query runs on a worker, so the retry fails too)."""

    def __init__(self, kind="plain", depth=0):
        self.driver, self.kind, self.depth = os.getpid(), kind, depth

    def __call__(self, x):
        if os.getpid() != self.driver:
            _deep(self.depth, self.kind)
        return float(np.sum((x - 1.0) ** 2))


@pytest.fixture(scope="module")
def loky2():
    with JoblibExecutor(2) as ex:
        yield ex


@pytest.mark.parametrize("kind, depth", [("plain", 0), ("plain", 20), ("needs_code", 0)])
def test_an_error_from_a_process_worker_shows_the_line_that_raised_it(kind, depth, loky2):
    """The OracleError from a process worker named the query and the cause, but its traceback
    ended in zoracle's scheduler: the oracle's own frames stayed in the worker (its text was kept,
    and dropped), so nothing showed where the user's code raised. And the text kept the outermost
    8 frames of the worker's stack, which cut off a raise deeper down (a model's forward)."""
    with pytest.raises(zo.OracleError) as info:
        zo.estimate_gradient(FailsInWorkers(kind, depth), np.zeros(3), zo.CGE(), executor=loky2)
    err = info.value
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    assert "SOLVER-DIVERGED-HERE" in text and "in _deep" in text
    if kind == "plain":
        assert isinstance(err.cause, SolverDiverged) and err.__cause__ is err.cause
    else:  # it does not unpickle in the driver: its type and text as a RuntimeError, as before
        assert isinstance(err.cause, RuntimeError) and "NeedsCode: the solver diverged (code 7)" in str(err)
        assert "NeedsCode" in text


def test_a_threaded_error_keeps_its_own_traceback():
    """On threads the exception is the oracle's own object, with its real traceback: nothing added."""
    with JoblibExecutor(2, backend="threading") as ex:
        with pytest.raises(zo.OracleError) as info:
            zo.estimate_gradient(lambda x: _deep(0, "plain"), np.zeros(3), zo.CGE(), executor=ex)
    cause = info.value.__cause__
    assert isinstance(cause, SolverDiverged) and cause.__traceback__ is not None and cause.__cause__ is None


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_the_same_executor_after_a_failed_run_trains_as_a_fresh_one(backend, tmp_path, loky2):
    """An oracle that raised in the middle of a run (after the retry), then the same executor
    and oracle object again: the result a fresh executor gives, bit for bit."""
    flag = tmp_path / "fail"

    class FailsWhileFlagged:
        def __call__(self, x):
            if flag.exists():
                raise SolverDiverged("flagged")
            return float(np.sum(np.sin(x) ** 2 + 0.1 * x))

    def run(oracle, ex, callbacks=()):
        return zo.train(oracle, np.zeros(5), epochs=3, estimator=zo.RGE(directions=3), optimizer=zo.adam(0.1),
                        executor=ex, rng=0, progress=False, callbacks=callbacks)

    def fail_from_the_second_step(event, record, params):
        flag.touch()

    ref = run(FailsWhileFlagged(), None)
    oracle = FailsWhileFlagged()
    with JoblibExecutor(2, backend="threading") if backend == "threading" else contextlib.nullcontext(loky2) as ex:
        run(oracle, ex)
        with pytest.raises(zo.OracleError, match="of training step 1 .*flagged"):
            run(oracle, ex, [fail_from_the_second_step])
        flag.unlink()
        again = run(oracle, ex)
    np.testing.assert_array_equal(again.params, ref.params)
    assert again.nfev == ref.nfev


# ---------------------------------------------------------------- TorchOracle's first bind
class Tap(torch.nn.Module):
    """Raises ``error`` at (``once``) or from its ``at``-th forward on (a Ctrl-C, a failing simulator)."""

    def __init__(self, error=KeyboardInterrupt, once=True):
        super().__init__()
        self.n, self.at, self.error, self.once = 0, 0, error, once

    def forward(self, x):
        self.n += 1
        if self.at and (self.n == self.at or (not self.once and self.n > self.at)):
            raise self.error("interrupted in the model")
        return x


def _hooked_net(tap):
    """A model whose split the self-check must retire: a forward pre-hook doubles the last layer's
    input, and the split's closed forms do not run hooks."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), tap, torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    net[3].register_forward_pre_hook(lambda m, inp: (inp[0] * 2,))
    return net


_X = np.random.default_rng(0).standard_normal((8, 3))
_Y = np.array([0, 1, 1, 0, 1, 0, 0, 1])


def _grad(oracle, p):
    return zo.estimate_gradient(oracle.bind((_X, _Y)), p, zo.CGE(mu=1e-6, scheme="central")).grad


def _fresh(make, loss):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the retired split's warning
        tap = Tap()
        oracle = TorchOracle(make(tap), loss)
        p = oracle.initial_params()
        g = _grad(oracle, p)
    return oracle, p, g, tap.n


@pytest.mark.filterwarnings("ignore:TorchOracle. .*full forward:RuntimeWarning")
@pytest.mark.slow
def test_ctrl_c_during_the_split_self_check_leaves_it_to_check_again():
    """Ctrl-C inside the model while the first bind checked the split left it marked as checked:
    the same oracle's next estimate ran on the unchecked split, and a split the check retires (a
    hooked layer) gave gradients 0.2 off, silently."""
    loss = torch.nn.CrossEntropyLoss(reduction="none")
    fresh, p, ref, forwards = _fresh(_hooked_net, loss)
    assert fresh._core.reason is not None  # (the check retires this split)
    for k in range(1, forwards + 1):  # wherever the interrupt lands
        tap = Tap()
        oracle = TorchOracle(_hooked_net(tap), loss)
        tap.at = tap.n + k
        try:
            _grad(oracle, p)
        except KeyboardInterrupt:
            pass
        tap.at = 0
        np.testing.assert_allclose(_grad(oracle, p), ref, rtol=0, atol=1e-9, err_msg=f"interrupted at forward {k}")
        assert oracle._core.reason == fresh._core.reason


def _coupled(calls):
    def loss(out, y):  # per-sample losses coupled through the batch (each divided by their sum)
        calls[0] += 1
        if calls[0] == calls[1]:
            raise KeyboardInterrupt
        ce = torch.nn.functional.cross_entropy(out, y, reduction="none")
        return ce / ce.sum() * len(ce) + ce
    return loss


def test_ctrl_c_in_loss_fn_during_the_first_bind_leaves_it_to_check_again():
    """Ctrl-C in `loss_fn` while the first bind checked whether it couples the rows left the loss
    convention half found: the next bind trusted it, ran the perturbations stacked in one call,
    and a loss coupling the rows gave gradients 0.26 off, silently."""
    def net(_tap):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()

    calls = [0, 0]
    fresh, p, ref, _ = _fresh(net, _coupled(calls))
    for k in range(1, 6):
        calls[:] = [0, k]
        oracle = TorchOracle(net(None), _coupled(calls))
        try:
            _grad(oracle, p)
        except KeyboardInterrupt:
            pass
        calls[1] = 0
        np.testing.assert_allclose(_grad(oracle, p), ref, rtol=0, atol=1e-9, err_msg=f"interrupted at call {k}")


def _plain_net(tap):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), tap, torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()


def test_a_model_error_during_the_self_check_is_raised_and_keeps_the_split():
    """A model whose own forward raised (a simulator inside it that failed) while the first bind
    checked the split: the check blamed the split ("the captured split failed (SolverDiverged:
    ...)"), retired it for the oracle's lifetime, and the same oracle, its model fixed, ran full
    forwards (no feature reuse) with round-off of its own against a fresh oracle."""
    loss = torch.nn.CrossEntropyLoss(reduction="none")
    fresh, p, ref, forwards = _fresh(_plain_net, loss)
    assert not fresh._core.reason  # (this split passes the check)
    for k in range(1, forwards + 1):
        tap = Tap(SolverDiverged, once=False)
        oracle = TorchOracle(_plain_net(tap), loss)
        tap.at = tap.n + k
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                _grad(oracle, p)
            except (SolverDiverged, zo.OracleError):
                pass
        assert not [w for w in seen if "split failed" in str(w.message)], f"failing from forward {k}"
        tap.at = 0
        np.testing.assert_array_equal(_grad(oracle, p), ref, err_msg=f"failing from forward {k}")
        assert oracle._core.reason == fresh._core.reason
