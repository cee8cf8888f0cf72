"""Tests that kill the mutants a mutation run of session 72's new code left alive: zo.AskTell's
turn-taking between threads, tell by row, params and history at a run's edges, a callback closing
it; batch losses with a metric beside each; CuPy losses in nested lists; smart_ratio's `kinds`;
renames refused on and off Windows; warnings beside the progress bar at a failed last save and
at eval_fn's refused value."""

from __future__ import annotations

import errno
import io
import os
import sys
import threading
import types
import warnings

import numpy as np
import pytest

import zoracle as zo
import zoracle._ask_tell as ask_tell

X0 = np.linspace(-1.0, 1.0, 12)


def f(x):
    return float(((x - 3) ** 2).sum() + np.sin(3 * x).sum())


def answered(opt):
    while not opt.done:
        opt.tell([f(x) for x in opt.ask()])
    return opt


def _late_teller(monkeypatch, opt, losses):
    """A thread telling ``losses`` that is held between its checks and its hand-over until released."""
    checked, go_on, errors = threading.Event(), threading.Event(), []
    check = ask_tell.check_vector

    def slow_check(*args, **kwargs):
        out = check(*args, **kwargs)
        if threading.current_thread().name == "late":
            checked.set()
            go_on.wait(60)
        return out

    monkeypatch.setattr(ask_tell, "check_vector", slow_check)

    def late():
        try:
            opt.tell(losses)
        except zo.ZoracleError as exc:
            errors.append(exc)

    thread = threading.Thread(target=late, name="late", daemon=True)
    thread.start()
    assert checked.wait(60)
    return thread, go_on, errors


def test_a_late_tell_is_refused_even_once_the_next_points_are_asked(monkeypatch):
    """The late thread's losses answered the previous ask(); the points asked since are others: its tell
    is refused rather than taken as their losses, and the run goes on as the serial one."""
    opt = zo.AskTell(X0, epochs=3, progress=False, rng=0)
    X = opt.ask()
    stale = [f(x) for x in X]
    thread, go_on, errors = _late_teller(monkeypatch, opt, stale)
    opt.tell(stale)
    X2 = opt.ask()  # (the next step's points, asked before the late thread hands its losses over)
    go_on.set()
    thread.join(60)
    assert len(errors) == 1 and "told already" in str(errors[0])
    opt.tell([f(x) for x in X2])
    answered(opt)
    assert np.array_equal(opt.result.params, zo.train(f, X0, epochs=3, progress=False, rng=0).params)


def test_a_late_tell_while_the_run_computes_its_step_is_refused(monkeypatch):
    """The run has taken the first tell's losses and is between its steps (in a callback): a second
    thread's tell of those same points is refused, not dropped in silence."""
    in_step, release = threading.Event(), threading.Event()

    def hold(event, rec, params):
        if event == "step" and rec["step"] == 0:
            in_step.set()
            release.wait(60)

    opt = zo.AskTell(X0, epochs=3, progress=False, rng=0, callbacks=[hold])
    X = opt.ask()
    losses = [f(x) for x in X]
    thread, go_on, errors = _late_teller(monkeypatch, opt, losses)

    def controller():
        in_step.wait(60)
        go_on.set()  # (the late thread hands its losses over while the run is in the callback)
        thread.join(10)
        release.set()

    ctl = threading.Thread(target=controller, daemon=True)
    ctl.start()
    opt.tell(losses)
    ctl.join(60)
    thread.join(60)
    assert len(errors) == 1 and "told already" in str(errors[0])
    answered(opt)
    assert np.array_equal(opt.result.params, zo.train(f, X0, epochs=3, progress=False, rng=0).params)


def test_a_tell_by_row_with_every_row_and_one_more_is_refused():
    opt = zo.AskTell(X0, epochs=2, progress=False, rng=0)
    X = opt.ask()
    losses = {j: f(x) for j, x in enumerate(X)}
    with pytest.raises(zo.OracleError, match=rf"\[{len(X)}\] no row of them"):
        opt.tell({**losses, len(X): 0.0})
    with pytest.raises(zo.OracleError, match="no row of them"):
        opt.tell({**losses, "7": 0.0})  # (a row's number as text)
    opt.tell(losses)  # (the points stayed asked)
    answered(opt)
    assert np.array_equal(opt.result.params, zo.train(f, X0, epochs=2, progress=False, rng=0).params)


def test_a_tell_by_row_takes_any_mapping():
    opt = zo.AskTell(X0, epochs=2, progress=False, rng=0)
    X = opt.ask()
    opt.tell(types.MappingProxyType({j: f(x) for j, x in enumerate(X)}))
    answered(opt)
    assert np.array_equal(opt.result.params, zo.train(f, X0, epochs=2, progress=False, rng=0).params)


def test_a_callback_that_closes_its_ask_tell_ends_the_run_at_its_next_query():
    """close() from the run's own thread (a callback's) does not wait for that thread to end."""
    holder = []

    def stop(event, rec, params):
        if event == "step" and rec["step"] == 1:
            holder[0].close()

    opt = zo.AskTell(X0, epochs=5, progress=False, rng=0, callbacks=[stop])
    holder.append(opt)
    for _ in range(2):
        opt.tell([f(x) for x in opt.ask()])  # (the second tell's step closes it)
    assert not opt.done and len(opt.history.steps) == 2
    with pytest.raises(zo.ZoracleError, match="closed AskTell"):
        opt.ask()
    opt._thread.join(60)
    assert not opt._thread.is_alive()


def test_params_and_history_while_zo_grasp_asks_are_the_initial_ones():
    """ZO-GraSP's asks come before the run's first step: .params and .history are the start's."""
    opt = zo.AskTell(X0, epochs=2, sparsity=0.5, blocks=[slice(0, 6), slice(6, 12)], progress=False, rng=0)
    X = opt.ask()
    assert np.array_equal(opt.params, X0) and opt.history.steps == () and opt.history.epochs == ()
    opt.tell([f(x) for x in X])
    assert np.array_equal(opt.params, X0) and opt.history.steps == ()
    opt.close()


def test_a_resume_of_a_finished_run_is_done_with_its_result(tmp_path):
    """Resumed from the checkpoint of a run that ended, nothing is asked: .params and .history are
    the finished run's, not the initial ones."""
    path = tmp_path / "run.npz"
    first = answered(zo.AskTell(X0, epochs=3, optimizer=zo.sgd(0.05), checkpoint=path, progress=False, rng=0))
    again = zo.AskTell(X0, epochs=3, optimizer=zo.sgd(0.05), checkpoint=path, resume=True, progress=False, rng=0)
    assert again.done
    assert np.array_equal(again.params, first.result.params) and not np.array_equal(again.params, X0)
    assert len(again.history.steps) == len(first.result.history.steps) == 3


def test_a_loss_function_given_alone_is_refused_before_the_thread():
    with pytest.raises(zo.ArgumentError, match=r"`AskTell` got a function as `params`: AskTell takes no loss"):
        zo.AskTell(f, epochs=2, progress=False)


class _Batch:
    """An oracle whose ``batch`` returns ``convert(losses)``."""

    def __init__(self, convert):
        self.convert = convert

    def __call__(self, p):
        return float(np.sum(np.asarray(p) ** 2))

    def batch(self, rows):
        return self.convert([self(r) for r in rows])


def test_batch_losses_each_with_a_metric_beside_point_to_the_documented_way():
    """``[np.array([loss, acc]), ...]``: one array per query holding the loss and a metric."""
    with pytest.raises(zo.OracleError) as info:
        zo.estimate_gradient(_Batch(lambda v: [np.array([x, 0.9]) for x in v]), np.array([0.3, -0.2]),
                             estimator=zo.CGE(mu=1e-3), rng=0)
    msg = str(info.value)
    assert "losses alone" in msg and 'docs/training.md, "Metrics beside the loss"' in msg


def test_a_batch_of_cupy_losses_one_per_row_in_lists_is_taken(monkeypatch):
    """``[[loss(p)] for p in rows]`` of 0-d CuPy losses, an ``(n, 1)`` batch: taken as the plain list."""
    import _fakecupy

    cp = _fakecupy.install(monkeypatch)

    class Rowed:
        def __call__(self, p):
            return (p ** 2).sum()

        def batch(self, rows):
            return [[self(r)] for r in rows]

    x = cp.asarray(np.linspace(-1, 1, 6))
    est = zo.estimate_gradient(Rowed(), x, zo.CGE(scheme="central"), rng=0)
    np.testing.assert_allclose(cp.asnumpy(est.grad), 2 * np.linspace(-1, 1, 6), atol=1e-9)


def test_smart_ratio_kinds_given_as_one_kind_name_is_refused_as_no_sequence():
    """``kinds="conv"`` (one name for every block) was read as the kinds 'c', 'o', 'n', 'v'."""
    with pytest.raises(zo.ArgumentError, match=r"`kinds` must name one kind per block, such as \['conv', 'linear'\], "
                                               r"got 'conv'"):
        zo.smart_ratio([slice(0, 4), slice(4, 8)], 0.5, kinds="conv")


# ----------------------------------------------------------------------------- renames on Windows and off
def _replace_failing(exc, name="run.npz"):
    real, calls = os.replace, []

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == name and os.path.exists(dst):
            calls.append(dst)
            raise exc
        return real(src, dst, *args, **kwargs)

    return replace, calls


def _checkpointed(path, epochs, resume=False, **kw):
    return zo.train(lambda x: float(np.sum((x - 1.0) ** 2)), np.zeros(6), epochs=epochs, estimator=zo.CGE(),
                    checkpoint=str(path), resume=resume, **kw)


def test_on_windows_a_full_disk_is_not_waited_on_nor_blamed_on_another_program(tmp_path, monkeypatch):
    """Only a PermissionError ("Access is denied") is tried again on Windows and named as a file held
    open elsewhere; a full disk fails at its first rename, naming free space."""
    from zoracle import _checkpoint

    _checkpointed(tmp_path / "run.npz", 1, progress=False)
    monkeypatch.setattr(_checkpoint, "_WINDOWS", True, raising=False)
    replace, calls = _replace_failing(OSError(errno.ENOSPC, "No space left on device"))
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(zo.CheckpointError, match="No space left on device") as info:
        _checkpointed(tmp_path / "run.npz", 3, resume=True, progress=False)
    assert len(calls) == 1
    assert "free space" in str(info.value) and "another program" not in str(info.value)


def test_off_windows_a_refused_rename_is_not_blamed_on_another_program(tmp_path, monkeypatch):
    from zoracle import _checkpoint

    _checkpointed(tmp_path / "run.npz", 1, progress=False)
    monkeypatch.setattr(_checkpoint, "_WINDOWS", False, raising=False)
    replace, calls = _replace_failing(PermissionError(errno.EACCES, "Permission denied"))
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(zo.CheckpointError, match="Permission denied") as info:
        _checkpointed(tmp_path / "run.npz", 3, resume=True, progress=False)
    assert len(calls) == 1 and "another program" not in str(info.value) and "OneDrive" not in str(info.value)


# ----------------------------------------------------------------------------- warnings beside the bar
class Terminal(io.StringIO):
    def isatty(self):
        return True


def _shown_on_a_terminal(monkeypatch, run) -> str:
    """What ``run()`` writes to a terminal's stderr, its warnings shown as Python shows them."""
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", lambda message, category, filename, lineno, file=None,
                            line=None: sys.stderr.write(warnings.formatwarning(message, category, filename, lineno,
                                                                               line)))
        run()
    return term.getvalue()


def _line_before(out: str, text: str) -> str:
    i = out.index(text)
    return out[out.rfind("\n", 0, i) + 1:i].rsplit("\r", 1)[-1]


def test_a_failed_last_save_warns_on_a_line_of_its_own_beside_the_bar(tmp_path, monkeypatch):
    replace, calls = _replace_failing(OSError(errno.ENOSPC, "No space left on device"))
    path = tmp_path / "run.npz"
    path.write_bytes(b"")  # (the rename onto it fails)
    monkeypatch.setattr(os, "replace", replace)
    out = _shown_on_a_terminal(monkeypatch, lambda: zo.train(
        lambda x: float(np.sum((x - 1.0) ** 2)), np.zeros(3), epochs=1, steps_per_epoch=5, checkpoint=str(path),
        rng=0))
    assert calls and "UserWarning: train: the checkpoint" in out
    shown = _line_before(out, "UserWarning: train: the checkpoint")
    assert shown.startswith(__file__) and "|" not in shown


def test_eval_fns_refused_value_warns_on_a_line_of_its_own_beside_the_bar(monkeypatch):
    out = _shown_on_a_terminal(monkeypatch, lambda: zo.train(
        lambda x: float(np.sum((x - 1.0) ** 2)), np.zeros(3), epochs=2, steps_per_epoch=5,
        eval_fn=lambda params: {"acc": "high"}, rng=0))
    assert "UserWarning: train: " in out and "The run stops here" in out
    shown = _line_before(out, "UserWarning: train: ")
    assert shown.startswith(__file__) and "|" not in shown
