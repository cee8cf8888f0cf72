"""An experiment's workflow around ``zo.train`` through its public API: a learning rate that a
callback lowers on a plateau (and a resume of such a run), and the step numbers a tracker reads
from the step log records."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

import zoracle as zo

_rng = np.random.default_rng(0)
_X = _rng.standard_normal((120, 5))
_Y = _X @ _rng.standard_normal(5) + _rng.standard_normal(120)  # noise: the loss levels off (a plateau)


class _Regression:
    def bind(self, batch):
        xb, yb = batch
        return lambda w: float(np.mean((xb @ w - yb) ** 2))


class _PlateauLR:
    """``lr(step)``: ``base`` halved at each cut; :meth:`see` (an epoch callback) cuts at the next
    epoch's first step when the epoch's loss did not improve. Its state is a function of the epoch
    records it has seen, so a resume rebuilds it from the checkpoint's history."""

    def __init__(self, base, steps_per_epoch):
        self.base, self.per_epoch, self.best, self.cuts = base, steps_per_epoch, np.inf, []

    def __call__(self, step):
        return self.base * 0.5 ** sum(c <= step for c in self.cuts)

    def see(self, event, record, params):
        if event != "epoch":
            return
        if record["loss"] < self.best - 1e-3:
            self.best = record["loss"]
        else:
            self.cuts.append((record["epoch"] + 1) * self.per_epoch)


def _run(sched, epochs, path=None, stop_after=None, resume=False):
    def stop(event, record, params):
        return event == "epoch" and record["epoch"] == stop_after

    return zo.train(_Regression(), np.zeros(5), batches=zo.Minibatches((_X, _Y), batch_size=30, seed=0),
                    epochs=epochs, optimizer=zo.sgd(sched), callbacks=[sched.see, stop], rng=0, progress=False,
                    checkpoint=path, resume=resume)


def test_a_run_whose_callback_lowers_the_lr_resumes_as_the_uninterrupted_run(tmp_path):
    whole = _run(_PlateauLR(0.2, 4), epochs=8)
    assert len(set(whole.history.column("lr"))) > 1  # the callback lowered it during the run
    path = tmp_path / "run.npz"
    first = _run(_PlateauLR(0.2, 4), epochs=8, path=path, stop_after=4)  # stands in for a job killed there
    assert first.stopped and first.steps == 20
    # the schedule rebuilt from the checkpoint's history: it gives every step run the lr it ran with
    again = _PlateauLR(0.2, 4)
    for record in zo.History.from_checkpoint(path).epochs:
        again.see("epoch", record, None)
    assert again.cuts and again(first.steps - 1) < 0.2
    resumed = _run(again, epochs=8, path=path, resume=True)  # refused before: the checkpoint's schedule
    # fingerprints were the values at the run's start, which its own history contradicted after a cut
    assert np.array_equal(resumed.params, whole.params)
    assert np.array_equal(resumed.history.column("lr"), whole.history.column("lr"))
    assert [r["loss"] for r in resumed.history.epochs] == [r["loss"] for r in whole.history.epochs]


def test_a_plateau_schedule_not_rebuilt_is_refused_on_resume(tmp_path):
    path = tmp_path / "run.npz"
    _run(_PlateauLR(0.2, 4), epochs=8, path=path, stop_after=4)
    with pytest.raises(zo.CheckpointError, match=r"another `lr` schedule"):
        _run(_PlateauLR(0.2, 4), epochs=8, path=path, resume=True)  # the cuts forgotten: another run


def test_a_checkpoint_records_the_schedule_as_its_last_save_found_it(tmp_path):
    """The values a resume compares the steps to come with (step 50 here, which the run stopped
    after 28 steps never took) are the schedule's after its cuts, as the rebuilt schedule gives
    them: they were the values at the run's start."""
    path = tmp_path / "run.npz"
    _run(_PlateauLR(0.2, 4), epochs=20, path=path, stop_after=6)
    prints = zo.load_checkpoint(path)[1]["fingerprints"]["lr"]
    rebuilt = _PlateauLR(0.2, 4)
    for record in zo.History.from_checkpoint(path).epochs:
        rebuilt.see("epoch", record, None)
    assert prints["values"] == [rebuilt(t) for t in prints["steps"]]
    assert 50 in prints["steps"] and prints["values"][prints["steps"].index(50)] < 0.2


def test_step_log_records_say_the_step_their_record_holds(caplog):
    """With ``progress=False`` each step's DEBUG record read ``step 1 epoch 0`` for step 0 (the
    steps taken, where its ``epoch`` and its fields count from 0); after a resume that announces
    ``at epoch 1, step 7`` the first step's line read ``step 8``."""
    with caplog.at_level(logging.DEBUG, logger="zoracle"):
        zo.train(lambda x: float(x @ x), np.ones(3), epochs=2, steps_per_epoch=2, rng=0, progress=False)
    steps = [r for r in caplog.records if getattr(r, "zoracle_event", None) == "step"]
    assert len(steps) == 4
    for r in steps:
        shown = re.match(r"step (\d+) epoch (\d+) ", r.getMessage())
        assert shown, r.getMessage()
        assert (int(shown[1]), int(shown[2])) == (r.zoracle["step"], r.zoracle["epoch"])


def test_a_schedule_a_callback_breaks_for_later_steps_fails_no_save(tmp_path):
    """A callback that leaves the schedule without a valid value at a step the run does not reach
    (it stops first) does not fail the saves: their fingerprints stay the last valid ones."""
    values = {}

    def lr(step):
        return values.get(step, 0.1)

    def poison(event, record, params):
        if event == "epoch" and record["epoch"] == 1:
            values[50] = float("nan")  # step 50, which the checkpoint's fingerprints hold
            return True

    path = tmp_path / "run.npz"
    res = zo.train(lambda x: float(x @ x), np.ones(3), epochs=60, optimizer=zo.sgd(lr), callbacks=[poison],
                   checkpoint=path, rng=0, progress=False)
    assert res.stopped and res.steps == 2
    prints = zo.load_checkpoint(path)[1]["fingerprints"]["lr"]
    assert 50 in prints["steps"] and set(prints["values"]) == {0.1}


def test_history_from_a_checkpoint_has_the_runs_field_order(tmp_path):
    """A tracker or a DataFrame fed from ``History.from_checkpoint`` (a job still running) got the
    checkpoint's sorted keys, ``epoch, loss, lr, mu, nfev, seconds, step, ...``, where the run's own
    history (and a resumed run's) has ``step, epoch, loss, ...``."""
    path = tmp_path / "run.npz"
    res = zo.train(lambda x: float(x @ x), np.ones(3), epochs=2, steps_per_epoch=2, rng=0, progress=False,
                   checkpoint=path, eval_fn=lambda p: {"a_metric": float(p[0]), "val": float(p[1])})
    saved = zo.History.from_checkpoint(path)
    assert saved == res.history
    assert [list(r) for r in saved.steps] == [list(r) for r in res.history.steps]
    assert [list(r) for r in saved.epochs] == [list(r) for r in res.history.epochs]
    assert list(saved.epochs[0]) == ["epoch", "loss", "lr", "nfev", "total_nfev", "a_metric", "val", "seconds"]
