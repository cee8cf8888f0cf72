"""The time left that ``train``'s progress bar shows (``[elapsed<left]``), against the time the run then
took, on a fake clock that the oracle, ``eval_fn`` and a slow first step move on (no sleeping, no timing
asserts). tqdm's own rate, an average over its last second or so of redraws, showed 2 to 4 times the time
left right after each ``eval_fn`` and 30% too little right before it, kept a slow first step in a log
file's lines for most of the run, and a run bounded by ``max_queries`` counted to its epochs' steps."""

from __future__ import annotations

import io
import re
import sys

import numpy as np
import pytest

import zoracle as zo
import zoracle._bar
from test_accessible_output import _Pty, needs_pty  # noqa: E402  (a raw pseudo-terminal)

#: a drawing of the bar: ``n/total [elapsed<left`` (left as ``MM:SS`` or ``H:MM:SS``; ``?`` not matched)
DRAWN = re.compile(r"(\d+)/(\d+) \[((?:\d+:)?\d\d:\d\d)<((?:\d+:)?\d\d:\d\d)")
QUERY = 0.1  # fake seconds a query


def _seconds(text: str) -> int:
    parts = [int(p) for p in text.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def _drawn(text: str):
    """Each drawing's (steps, total, elapsed seconds, seconds left)."""
    return [(int(n), int(total), _seconds(e), _seconds(left)) for n, total, e, left in DRAWN.findall(text)]


def _run(monkeypatch, stream, first_extra=0.0, eval_seconds=None, **kw):
    """``train`` of 10 epochs of 10 steps (5 queries a step) on the fake clock with the bar on ``stream``;
    the run's fake seconds, and the result."""
    import tqdm.std

    clock = [1e6]
    monkeypatch.setattr(zoracle._bar, "_bar_clock", lambda: clock[0])
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)  # (no monitor thread on the real clock)
    calls = [0]

    def oracle(x):
        calls[0] += 1
        clock[0] += QUERY + (first_extra if calls[0] == 1 else 0.0)
        return float(((x - 1.0) ** 2).sum())

    def eval_fn(params):
        clock[0] += eval_seconds
        return 0.0

    start = clock[0]
    with monkeypatch.context() as mp:
        mp.setattr(sys, "stderr", stream)
        result = zo.train(oracle, np.zeros(8), epochs=10, steps_per_epoch=10, estimator=zo.RGE(directions=4),
                          optimizer=zo.sgd(1e-3), rng=0, eval_fn=eval_fn if eval_seconds else None, **kw)
    return clock[0] - start, result


def _assert_near(drawn, seconds, lo=0.25, hi=0.75):
    """Every drawing from ``lo`` to ``hi`` of the steps shows the time left within 30% (and 2 seconds of
    the clock's rounding) of the time the run took from there."""
    checked = 0
    for n, total, elapsed, left in drawn:
        if lo <= n / total <= hi:
            true = seconds - elapsed
            assert abs(left - true) <= 0.3 * true + 2, (n, total, elapsed, left, true, seconds)
            checked += 1
    assert checked, drawn


@needs_pty
def test_eta_counts_eval_fn_on_a_terminal(monkeypatch):
    """An ``eval_fn`` as long as 5 steps after each epoch of 10: a third of the run. Right after it the bar
    said 4 times the time left, right before it a third too little; it now counts it at its share."""
    try:
        pty = _Pty(200)
    except OSError as exc:  # (a container without /dev/pts)
        pytest.skip(f"no pseudo-terminal here ({exc})")
    try:
        seconds, result = _run(monkeypatch, pty.stream, eval_seconds=5 * 5 * QUERY)
    finally:
        text = pty.read()
    drawn = _drawn(text)
    assert drawn and len(result.history.epochs) == 10
    _assert_near(drawn, seconds)


def test_eta_leaves_out_a_slow_first_step_in_a_log_file(monkeypatch):
    """A first step 60 seconds slower (torch's warm-up, the fast paths' checks) than the 0.5 seconds of
    the others: a log file's lines (one every 10 seconds) showed minutes left with 25 seconds to go."""
    log = io.StringIO()
    seconds, _ = _run(monkeypatch, log, first_extra=60.0)
    drawn = _drawn(log.getvalue())
    assert len(drawn) >= 3, log.getvalue()
    _assert_near(drawn, seconds, lo=0.05, hi=0.9)


def test_a_query_budget_is_the_bars_total(monkeypatch):
    """``max_queries`` of 30% of the epochs' queries: the run stops at step 30 of 100, where its bar
    counted to 100 (and showed the epochs' time left, 3 times the real one); it counts to 30 now."""
    log = io.StringIO()
    seconds, result = _run(monkeypatch, log, max_queries=30 * 5)
    steps = len(result.history.steps)
    assert steps == 30
    drawn = _drawn(log.getvalue())
    assert drawn and drawn[-1][:2] == (30, 30), drawn
    _assert_near(drawn, seconds, lo=0.1, hi=0.9)


def test_a_query_budget_past_the_epochs_keeps_their_total(monkeypatch):
    """A budget the epochs do not reach leaves the bar at their steps."""
    log = io.StringIO()
    _, result = _run(monkeypatch, log, max_queries=10**6)
    assert len(result.history.steps) == 100
    drawn = _drawn(log.getvalue())
    assert drawn and {total for _, total, _, _ in drawn} == {100}, drawn
