"""Where zoracle's log records say they come from: the user's line calling into zoracle (``zo.train``,
a retrying oracle's call), as its warnings do, not an internal part of the run (``_run_loop.end_epoch``,
``_run_save.save``), which a ``%(funcName)s`` / ``%(filename)s:%(lineno)d`` format showed since
``train`` was split into parts."""

from __future__ import annotations

import inspect
import io
import logging
import os
import sys

import numpy as np

import zoracle as zo


def _sphere(x):
    return float(x @ x)


class _Data:
    """A DataOracle with blocks, for a sparse run (ZO-GraSP's record)."""

    blocks = (slice(0, 4), slice(4, 8))

    def __call__(self, x):
        return float(np.sum((x - 1.0) ** 2))

    def bind(self, batch):
        return lambda x: float(np.sum((x - batch) ** 2))


def _assert_from(records, fn, events):
    """Every zoracle record is made at the one line of ``fn``'s body (its call into zoracle), and
    each of ``events`` (a text each) is among them."""
    mine = [r for r in records if r.name == "zoracle"]
    line = inspect.getsourcelines(fn)[1] + 1
    where = {(r.pathname, r.filename, r.funcName, r.lineno) for r in mine}
    assert where == {(os.path.abspath(__file__), os.path.basename(__file__), fn.__name__, line)}, \
        [(r.getMessage()[:40], r.filename, r.funcName, r.lineno) for r in mine]
    for text in events:
        assert any(text in r.getMessage() for r in mine), (text, [r.getMessage() for r in mine])


def test_train_records_point_at_the_users_train_call(caplog, tmp_path):
    kw = dict(steps_per_epoch=2, progress=False, rng=0, checkpoint=tmp_path / "run.npz", resume=True)

    def fresh():
        return zo.train(_sphere, np.ones(3), epochs=2, **kw)

    def resumed():
        return zo.train(_sphere, np.ones(3), epochs=3, **kw)

    with caplog.at_level(logging.DEBUG, logger="zoracle"):
        fresh()
    _assert_from(caplog.records, fresh, ["no checkpoint at", "epoch 1/2", "step 1 epoch 0", "checkpoint "])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="zoracle"):
        resumed()
    _assert_from(caplog.records, resumed, ["resumed from", "epoch 3/3"])


def test_zo_grasp_and_retry_records_under_train_point_at_the_train_call(caplog):
    fails = []

    def flaky(x):
        fails.append(1)
        if len(fails) == 3:
            raise ConnectionResetError("connection reset by peer")
        return float(np.sum((x - 1.0) ** 2))

    class Flaky(_Data):
        def bind(self, batch):
            return flaky

    oracle = zo.retrying(Flaky(), backoff=0)

    def sparse():
        return zo.train(oracle, np.full(8, 0.5), batches=[0.0], sparsity=0.5, progress=False, rng=0)

    with caplog.at_level(logging.INFO, logger="zoracle"):
        sparse()
    _assert_from(caplog.records, sparse, ["ZO-GraSP keep ratios", "asking again in 0 s"])


def test_a_retrying_oracle_called_directly_logs_at_the_call(caplog):
    fails = []

    def flaky(x):
        fails.append(1)
        if len(fails) == 1:
            raise TimeoutError("timed out")
        return 0.0

    oracle = zo.retrying(flaky, backoff=0)

    def call():
        return oracle(np.zeros(2))

    with caplog.at_level(logging.INFO, logger="zoracle"):
        call()
    _assert_from(caplog.records, call, ["the call failed (TimeoutError"])


class _Broken(io.StringIO):
    """A terminal whose writes fail once the bar has drawn (a pipe whose reader has gone)."""

    def isatty(self):
        return True

    def write(self, s):
        raise BrokenPipeError(32, "Broken pipe")


def test_the_bar_off_record_points_at_the_train_call_not_at_tqdm(caplog, monkeypatch):
    """The record of a failed bar stream is made inside tqdm's redraw: it points past tqdm's frames
    as well, at the run's caller."""
    monkeypatch.setattr(sys, "stderr", _Broken())

    def shown():
        return zo.train(_sphere, np.ones(3), epochs=2, steps_per_epoch=2, progress=True, rng=0)

    with caplog.at_level(logging.INFO, logger="zoracle"):
        shown()
    _assert_from(caplog.records, shown, ["the progress bar is off"])


def test_the_record_of_a_run_stopped_inside_a_step_points_at_the_train_call(caplog, tmp_path):
    calls = []

    def breaks(x):
        calls.append(1)
        if len(calls) == 10:  # (step 2's second query: steps 0 and 1 took 4 each)
            raise ValueError("the simulator crashed")
        return float(x @ x)

    def stopped():
        return zo.train(breaks, np.ones(3), steps_per_epoch=5, progress=False, rng=0, checkpoint=tmp_path / "c.npz")

    with caplog.at_level(logging.WARNING, logger="zoracle"):
        try:
            stopped()
        except zo.OracleError:
            pass
    _assert_from(caplog.records, stopped, ["stopped inside step 2"])
