"""zoracle.AskTell as a lab drives it: points evaluated in parallel and told as they complete, a
second thread telling, arguments of train's it does not take, copies, and what a closed one shows."""

from __future__ import annotations

import copy
import inspect
import os
import pickle
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pytest

import zoracle as zo
import zoracle._ask_tell as ask_tell

X0 = np.linspace(-1.0, 1.0, 12)


def f(x):
    return float(((x - 3) ** 2).sum() + np.sin(3 * x).sum())


def timeless(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_losses_told_by_row_as_they_complete_are_the_serial_run():
    """A pool's results collected as they complete come in any order: tell({row: loss}) puts them back."""
    settings = dict(epochs=4, optimizer=zo.adam(0.05), estimator=zo.RGE(directions=6), rng=2, progress=False)
    ref = zo.train(f, X0, **settings)
    opt = zo.AskTell(X0, **settings)
    with ThreadPoolExecutor(4) as pool:
        while not opt.done:
            X = opt.ask()
            futures = {pool.submit(f, x): row for row, x in enumerate(X)}
            done = {futures[fut]: fut.result() for fut in as_completed(futures)}
            opt.tell(dict(reversed(list(done.items()))))  # (any order)
    assert np.array_equal(opt.result.params, ref.params) and opt.result.nfev == ref.nfev
    assert timeless(opt.result.history.steps) == timeless(ref.history.steps)


def test_a_tell_by_row_missing_a_row_or_naming_none_is_refused_and_the_points_stay_asked():
    opt = zo.AskTell(X0, epochs=2, progress=False, rng=0)
    X = opt.ask()
    losses = {row: f(x) for row, x in enumerate(X)}
    with pytest.raises(zo.OracleError, match=r"the 13 points of the last ask\(\): expected one loss for each row "
                                              r"0 to 12 of the points; row\(s\) \[4\] missing: tell them all"):
        opt.tell({k: v for k, v in losses.items() if k != 4})
    with pytest.raises(zo.OracleError, match=r"row\(s\) \[0\] missing; \[13\] no row of them"):
        opt.tell({k + 1: v for k, v in losses.items()})
    with pytest.raises(zo.OracleError, match=r"query 5 of the last ask\(\)"):
        opt.tell({**losses, np.int64(5): np.nan})
    opt.tell({np.int64(k): v for k, v in losses.items()})  # (numpy's integers as rows)
    while not opt.done:
        opt.tell([f(x) for x in opt.ask()])
    assert np.array_equal(opt.result.params, zo.train(f, X0, epochs=2, progress=False, rng=0).params)


def test_a_tell_that_another_threads_tell_answered_first_is_refused(monkeypatch):
    """Two threads tell the same ask(): the one that comes second, once the run has posted its next
    points, would answer those with the old losses. It is refused, and the run goes on as the serial."""
    opt = zo.AskTell(X0, epochs=3, progress=False, rng=0)
    X = opt.ask()
    losses = [f(x) for x in X]
    checked, go_on = threading.Event(), threading.Event()
    check = ask_tell.check_vector

    def slow_check(*args, **kwargs):  # the late thread is held between its checks and its hand-over
        out = check(*args, **kwargs)
        if threading.current_thread().name == "late":
            checked.set()
            go_on.wait(60)
        return out

    monkeypatch.setattr(ask_tell, "check_vector", slow_check)
    errors = []

    def late():
        try:
            opt.tell(losses)
        except zo.ZoracleError as exc:
            errors.append(exc)

    thread = threading.Thread(target=late, name="late")
    thread.start()
    assert checked.wait(60)
    opt.tell(losses)  # (the run takes these and posts the next step's points)
    go_on.set()
    thread.join(60)
    assert len(errors) == 1 and "told already (by another thread's tell()?)" in str(errors[0])
    while not opt.done:
        opt.tell([f(x) for x in opt.ask()])
    assert np.array_equal(opt.result.params, zo.train(f, X0, epochs=3, progress=False, rng=0).params)


def test_params_and_history_of_a_closed_ask_tell_are_where_its_run_stopped():
    opt = zo.AskTell(X0, epochs=6, optimizer=zo.sgd(0.05), progress=False, rng=0)
    for _ in range(3):
        opt.tell([f(x) for x in opt.ask()])
    params, steps = opt.params, opt.history.steps
    opt.ask()
    opt.close()
    assert not np.array_equal(params, X0) and len(steps) == 3
    assert np.array_equal(opt.params, params) and opt.history.steps == steps
    with pytest.raises(zo.ZoracleError, match=r"\.result of a closed AskTell: its run ended before its last step"):
        opt.result
    with pytest.raises(zo.ZoracleError, match=r"tell\(\) on a closed AskTell: start a new one"):
        opt.tell([1.0])


@pytest.mark.parametrize("kwargs, says", [
    (dict(executor=None), "`AskTell` has no argument `executor`: the points are yours to run"),
    (dict(oracle=f), "`AskTell` has no argument `oracle`: AskTell takes no loss function"),
    (dict(x0=X0), "`AskTell` has no argument `x0`: the starting point is the first argument, `params`"),
    (dict(callback=print), "`AskTell` has no argument `callback`: pass callbacks=\\[fn\\]"),
    (dict(epoch=3), "`AskTell` has no argument `epoch`: the nearest name it takes is `epochs`"),
])
def test_arguments_it_does_not_take_are_refused_before_its_thread_starts(kwargs, says):
    threads = threading.active_count()
    with pytest.raises(zo.ArgumentError, match=says) as err:
        zo.AskTell(X0, progress=False, **kwargs)
    assert isinstance(err.value, TypeError) and threading.active_count() == threads


def test_a_loss_function_given_first_trains_way_is_refused():
    with pytest.raises(zo.ArgumentError, match=r"`AskTell` got a function as `params`: AskTell takes no loss "
                                               r"function.*AskTell\(params, \.\.\.\)"):
        zo.AskTell(f, X0)
    with pytest.raises(zo.ArgumentError, match=r"`AskTell` takes 1 arguments by position \(params\), got 2"):
        zo.AskTell(X0, 3)
    assert "unknown" not in str(inspect.signature(zo.AskTell))


@pytest.mark.parametrize("how", [pickle.dumps, copy.copy, copy.deepcopy])
def test_pickling_or_copying_is_refused_pointing_at_checkpoints(how):
    with zo.AskTell(X0, epochs=2, progress=False) as opt:
        opt.ask()
        with pytest.raises(TypeError, match="an AskTell cannot be pickled or copied: its run is a thread of this "
                                            "process.*resume=True") as err:
            how(opt)
        assert isinstance(err.value, zo.ZoracleError)


KILLED = """
import os, signal, numpy as np, zoracle as zo
opt = zo.AskTell(np.linspace(-1.0, 1.0, 12), checkpoint={path!r}, **{settings})
for _ in range(3):
    X = opt.ask()
    opt.tell([float(((x - 3) ** 2).sum()) for x in X])
{pending}
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("pending", ["", "opt.ask()"])
def test_a_process_killed_after_a_tell_or_before_it_resumes_as_the_uninterrupted_run(tmp_path, pending):
    """(SIGKILL runs no finalizer: each tell's save is what is left.)"""
    settings = "dict(epochs=6, optimizer=zo.adam(0.05), estimator=zo.RGE(directions=4), rng=5, progress=False)"
    path = tmp_path / "run.npz"
    env = {**os.environ, "PYTHONPATH": str(Path(zo.__file__).resolve().parents[1])}  # (the zoracle under test)
    r = subprocess.run([sys.executable, "-c", KILLED.format(path=str(path), settings=settings, pending=pending)],
                       env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == -9, r.stderr
    assert zo.load_checkpoint(path)[1]["step"] == 3
    again = zo.AskTell(X0, checkpoint=path, resume=True, **eval(settings))
    while not again.done:
        again.tell([float(((x - 3) ** 2).sum()) for x in again.ask()])
    whole = zo.train(lambda x: float(((x - 3) ** 2).sum()), X0, **eval(settings))
    assert np.array_equal(again.result.params, whole.params) and again.result.nfev == whole.nfev
    assert timeless(again.result.history.steps) == timeless(whole.history.steps)
