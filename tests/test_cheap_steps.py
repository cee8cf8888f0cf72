"""``train``'s own work a step, cut for oracles of microseconds (100,000 steps of a NumPy function): a
step's blocks beside the bar where no bar is drawn in place, the learning rate's check, the fast-path
verdicts given again each step. None of it may change a result: ``train`` is checked bit for bit against
the hand loop it runs (``estimate_gradient`` and the optimizer's update), with the bar off, as lines to a
file and on a terminal, under ``max_queries`` and through a checkpoint and its resume."""

from __future__ import annotations

import gc
import io
import math
import sys

import numpy as np
import pytest

import zoracle as zo
from test_accessible_output import _Pty, needs_pty  # noqa: E402  (a raw pseudo-terminal)
from zoracle._fastcheck import _VERDICTS, checking, share_verdicts
from zoracle._schedules import check_value, schedule_value


def _loss(x):
    return float(np.sum((x - 1.0) ** 2) + 0.1 * np.sum(np.sin(3 * x)))


def _estimator(kind):
    return zo.CGE() if kind == "cge" else zo.RGE(directions=2)


def _by_hand(kind, d, steps, lr):
    """The params, losses and queries of ``steps`` steps as ``train(rng=0)`` takes them: RGE's directions
    of step ``t`` drawn from ``(root, 1, t)``, the root seed drawn from ``rng``."""
    root = int(np.random.default_rng(0).integers(2**63))
    opt = zo.sgd(lr)
    x, state, losses, nfev = np.zeros(d), None, [], 0
    state = opt.init(x)
    for t in range(steps):
        rng = np.random.default_rng([root, 1, t]) if kind == "rge" else None
        g = zo.estimate_gradient(_loss, x, _estimator(kind), rng=rng)
        x, state = opt.update(g.grad, state, x, lr=lr(t) if callable(lr) else lr)
        losses.append(g.loss)
        nfev += g.nfev
    return x, losses, nfev


def _check(result, kind, d, steps, lr):
    x, losses, nfev = _by_hand(kind, d, steps, lr)
    assert np.array_equal(result.params, x)
    assert [r["loss"] for r in result.history.steps] == losses
    assert result.nfev == nfev


@pytest.mark.parametrize("kind", ["cge", "rge"])
@pytest.mark.parametrize("d", [2, 30])
@pytest.mark.parametrize("progress", [False, "file"])
def test_train_is_the_hand_loop_bit_for_bit(kind, d, progress, monkeypatch):
    if progress:
        monkeypatch.setattr(sys, "stderr", io.StringIO())  # (no terminal: the bar's lines)
    lr = 0.01 if d == 2 else zo.cosine_schedule(0.02, 60)
    result = zo.train(_loss, np.zeros(d), epochs=3, steps_per_epoch=20, estimator=_estimator(kind),
                      optimizer=zo.sgd(lr), rng=0, progress=bool(progress))
    _check(result, kind, d, 60, lr)


@needs_pty
@pytest.mark.parametrize("kind", ["cge", "rge"])
def test_train_on_a_terminal_is_the_hand_loop_bit_for_bit(kind, monkeypatch):
    pty = _Pty(200)
    try:
        monkeypatch.setattr(sys, "stderr", pty.stream)
        result = zo.train(_loss, np.zeros(4), epochs=2, steps_per_epoch=25, estimator=_estimator(kind),
                          optimizer=zo.sgd(0.01), rng=0, progress=True)
    finally:
        monkeypatch.undo()
        shown = pty.read()
    _check(result, kind, 4, 50, 0.01)
    assert "|" in shown and "/50 " in shown  # (the bar was drawn on the terminal)


def test_a_budget_and_a_resume_keep_the_hand_loops_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    ck = tmp_path / "run.zo"
    kw = dict(estimator=zo.RGE(directions=2), optimizer=zo.sgd(0.01), rng=0, checkpoint=ck, checkpoint_every=7)
    first = zo.train(_loss, np.zeros(5), epochs=4, steps_per_epoch=10, max_queries=75, **kw)
    assert first.nfev == 75 and len(first.history.steps) == 25  # (3 queries a step: stopped at the budget)
    _check(first, "rge", 5, 25, 0.01)
    second = zo.train(_loss, np.zeros(5), epochs=4, steps_per_epoch=10, resume=True, **kw)
    _check(second, "rge", 5, 40, 0.01)


@pytest.mark.parametrize("raw", [0.5, 1e-300, 0.0, -0.0, 3, np.float64(0.25), np.float32(0.5), np.array([0.5]),
                                 True, -1.0, math.nan, math.inf, -math.inf, "0.1", None])
@pytest.mark.parametrize("positive", [False, True])
def test_a_schedules_value_is_checked_as_check_value_checks_it(raw, positive):
    """A plain float that passes skips the message :func:`check_value` is given: the value and the
    refusal (its message whole) are the same for every kind of value."""
    def schedule(step):
        return raw

    where = f"the value of the `lr` schedule {schedule.__name__} at step 7"
    try:
        want = check_value(raw, where, positive)
    except zo.ArgumentError as exc:
        with pytest.raises(zo.ArgumentError) as got:
            schedule_value(schedule, 7, "lr", positive)
        assert str(got.value) == str(exc)
    else:
        got = schedule_value(schedule, 7, "lr", positive)
        assert got == want and type(got) is type(want) and math.copysign(1, got) == math.copysign(1, want)


def test_a_schedule_that_raises_is_named_with_its_step():
    def schedule(step):
        raise ValueError("no such step")

    with pytest.raises(zo.ArgumentError, match=r"^the `mu` schedule schedule at step 3 raised ValueError: no such step$"):
        schedule_value(schedule, 3, "mu", positive=True)


class _Oracle:
    def __call__(self, x):
        return 0.0


def test_a_runs_verdicts_given_again_stay_and_another_runs_replace_them():
    """The verdicts a step gives its oracle again are kept as they are (no new weak reference a step),
    another run's dict replaces them, and an oracle gone takes its verdicts with it."""
    oracle, mine, theirs = _Oracle(), {"batch": True}, {}
    share_verdicts(oracle, mine)
    assert _VERDICTS.get(oracle) is mine
    held = _VERDICTS.held[id(oracle)][0]
    with checking(oracle, mine):
        assert _VERDICTS.get(oracle) is mine
    assert _VERDICTS.held[id(oracle)][0] is held
    with checking(oracle, theirs):  # another run on the same oracle object
        assert _VERDICTS.get(oracle) is theirs
    assert _VERDICTS.get(oracle) is theirs
    with checking(oracle, mine):
        assert _VERDICTS.get(oracle) is mine
    key = id(oracle)
    del oracle
    gc.collect()
    assert key not in _VERDICTS.held
    again = _Oracle()  # (a new object, perhaps at the same id: none of the old verdicts)
    assert _VERDICTS.get(again) is None
    with checking(again, theirs):
        assert _VERDICTS.get(again) is theirs


def test_checking_sets_the_run_for_its_block_only_and_through_an_error():
    from zoracle._fastcheck import _verdicts_of

    oracle, mine = _Oracle(), {}
    assert _verdicts_of(oracle) is None
    with pytest.raises(KeyError):
        with checking(oracle, mine):
            assert _verdicts_of(oracle) is mine
            with checking(oracle, {"inner": 1}):
                assert _verdicts_of(oracle) == {"inner": 1}
            assert _verdicts_of(oracle) is mine
            raise KeyError("out")
    other = _Oracle()
    assert _verdicts_of(other) is None  # (the run's block over: no run in this thread)


def _drawn_run(monkeypatch, stream, epochs=6):
    """``train`` on a fake clock (a query takes 0.5 s) with its bar on ``stream``; the result."""
    import tqdm.std

    import zoracle._bar

    clock = [1e6]
    monkeypatch.setattr(zoracle._bar, "_bar_clock", lambda: clock[0])
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)  # (no monitor thread on the real clock)

    def oracle(x):
        clock[0] += 0.5
        return _loss(x)

    with monkeypatch.context() as mp:
        mp.setattr(sys, "stderr", stream)
        return zo.train(oracle, np.zeros(3), epochs=epochs, steps_per_epoch=10, estimator=zo.RGE(directions=2),
                        optimizer=zo.sgd(zo.cosine_schedule(0.05, 10 * epochs)), rng=0, progress=True)


def _postfix_matches(text, result):
    """Each drawing ``n/total, loss=..., lr=...`` in ``text`` shows step ``n``'s loss and lr; how many."""
    import re

    steps = result.history.steps
    found = re.findall(r" (\d+)/\d+ \[[^\]]*?, loss=([^,\]]+), lr=([^,\]]+), qps=", text)
    for n, loss, lr in found:
        rec = steps[int(n) - 1]
        assert (loss, lr) == (f"{rec['loss']:.4g}", f"{rec['lr']:.3g}"), (n, loss, lr)
    return len(found)


def test_each_line_of_the_bar_shows_its_steps_loss_and_lr(monkeypatch):
    """The postfix made only as a line is drawn is that of the line's step (the last line: the run's last)."""
    stream = io.StringIO()
    result = _drawn_run(monkeypatch, stream)
    text = stream.getvalue()
    assert _postfix_matches(text, result) >= 5
    assert " 60/60 [" in text.splitlines()[-1]


@needs_pty
def test_each_redraw_on_a_terminal_shows_its_steps_loss_and_lr(monkeypatch):
    pty = _Pty(200)
    try:
        result = _drawn_run(monkeypatch, pty.stream)
    finally:
        shown = pty.read()
    assert _postfix_matches(shown, result) >= 5
