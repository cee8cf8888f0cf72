"""What ``train`` tells ``logging`` (logger ``"zoracle"``), for a run followed through a log shipper
(cron, Kubernetes, SLURM: JSON lines, no terminal): each epoch at INFO, each step at DEBUG without the
bar, each checkpoint save at INFO, every one with its numbers as fields (``record.zoracle``, a dict
of JSON values; ``record.zoracle_event``: "epoch", "step" or "checkpoint"), not only as text to parse
back. The library adds no handler of its own and leaves the root logger alone."""

from __future__ import annotations

import io
import json
import logging
import re
import sys

import numpy as np
import pytest

import zoracle as zo


def _sphere(x):
    return float(x @ x)


def _events(records, event):
    return [r for r in records if r.name == "zoracle" and getattr(r, "zoracle_event", None) == event]


def test_each_epoch_record_carries_the_history_record_as_fields(caplog):
    """A JSON formatter (python-json-logger and the like writes a record's extra attributes) got only
    "epoch 2/3: epoch 1, loss 0.8, ..." to parse back; the fields are the history's epoch record."""
    with caplog.at_level(logging.INFO, logger="zoracle"):
        res = zo.train(_sphere, np.ones(3), epochs=3, steps_per_epoch=2, progress=False, rng=0,
                       eval_fn=lambda p: {"val": float(p @ p)})
    got = _events(caplog.records, "epoch")
    assert [r.zoracle for r in got] == [dict(e) for e in res.history.epochs]
    assert [r.levelno for r in got] == [logging.INFO] * 3
    assert got[-1].zoracle["total_nfev"] == res.nfev and "val" in got[-1].zoracle
    assert json.loads(json.dumps(got[-1].zoracle, allow_nan=False)) == got[-1].zoracle
    assert got[0].getMessage().startswith("epoch 1/3: epoch 0, loss ")  # the text as before


def test_each_step_record_carries_the_history_record_as_fields(caplog):
    with caplog.at_level(logging.DEBUG, logger="zoracle"):
        res = zo.train(_sphere, np.ones(3), epochs=2, steps_per_epoch=3, progress=False, rng=0)
    got = _events(caplog.records, "step")
    assert [r.zoracle for r in got] == [dict(s) for s in res.history.steps]
    assert [r.levelno for r in got] == [logging.DEBUG] * 6
    assert {"step", "epoch", "loss", "nfev", "total_nfev", "seconds"} <= set(got[0].zoracle)
    got[0].zoracle["loss"] = -1.0  # a handler writing into the fields changes no history
    assert res.history.steps[0]["loss"] != -1.0


def test_metrics_named_like_log_record_attributes_do_not_break_the_run(caplog):
    """The fields sit in one attribute: as extra= keys of their own, an eval metric named "message"
    or "name" would have raised KeyError inside logging (and "process" overwritten the pid)."""
    with caplog.at_level(logging.INFO, logger="zoracle"):
        res = zo.train(_sphere, np.ones(3), epochs=2, progress=False, rng=0,
                       eval_fn=lambda p: {"message": 1.0, "name": 2.0, "process": 3.0})
    got = _events(caplog.records, "epoch")
    assert [r.zoracle["process"] for r in got] == [3.0, 3.0] and got[0].process != 3.0
    assert res.history.epochs[-1]["message"] == 1.0


def test_checkpoint_saves_are_logged_within_a_long_epoch(tmp_path, caplog):
    """A run of one long epoch logged nothing at INFO until its end: each save is a record now, so
    checkpoint_every (a time such as "10min", or a step count) gives a heartbeat that often."""
    ckpt = tmp_path / "run.npz"
    with caplog.at_level(logging.INFO, logger="zoracle"):
        res = zo.train(_sphere, np.ones(3), epochs=1, steps_per_epoch=6, progress=False, rng=0,
                       checkpoint=ckpt, checkpoint_every=2)
    got = _events(caplog.records, "checkpoint")
    steps = [r.zoracle["steps"] for r in got]
    assert steps[:3] == [2, 4, 6] and set(steps) == {2, 4, 6}  # (the run's end saves step 6 again)
    assert all(r.levelno == logging.INFO and r.zoracle["path"] == str(ckpt) for r in got)
    by_step = {s["step"] + 1: s for s in res.history.steps}
    for r in got:
        assert r.zoracle["total_nfev"] == by_step[r.zoracle["steps"]]["total_nfev"]
        assert r.zoracle["loss"] == by_step[r.zoracle["steps"]]["loss"]  # the last step's
    assert f"checkpoint {ckpt} saved after 2 steps, 8 queries" in caplog.text
    json.dumps(got[0].zoracle, allow_nan=False)


def test_a_save_that_fails_is_not_logged_as_saved(tmp_path, caplog, monkeypatch):
    """Only a checkpoint written is reported as saved: the write that fails raises (or, the run's
    last, warns), and the record of the save before it stays the last one."""
    import zoracle._run_save as save_module

    real, calls = save_module.save_checkpoint, []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(save_module, "save_checkpoint", full_disk)
    with caplog.at_level(logging.INFO, logger="zoracle"), pytest.raises(zo.CheckpointError, match="at step 4"):
        zo.train(_sphere, np.ones(3), epochs=1, steps_per_epoch=6, progress=False, rng=0,
                 checkpoint=tmp_path / "c.npz", checkpoint_every=2)
    assert [r.zoracle["steps"] for r in _events(caplog.records, "checkpoint")] == [2]


def test_no_records_are_made_when_their_level_is_off(caplog):
    with caplog.at_level(logging.WARNING, logger="zoracle"):
        zo.train(_sphere, np.ones(3), epochs=2, progress=False, rng=0)
    assert not [r for r in caplog.records if r.name == "zoracle"]


def test_the_library_adds_no_handler_and_leaves_the_root_logger_alone(tmp_path):
    """What works already, kept: a library configures no logging (no basicConfig, no handler), so
    the application's configuration decides where the records go."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    zo.train(_sphere, np.ones(3), epochs=2, progress=False, rng=0, checkpoint=tmp_path / "c.npz")
    assert logging.getLogger("zoracle").handlers == [] and logging.getLogger("zoracle").propagate
    assert (list(root.handlers), root.level) == before


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_checkpoint_line_starts_its_own_line_beside_a_terminal_bar(tmp_path, monkeypatch):
    """As the epoch's line: the bar is cleared before the record is written to the same terminal,
    and drawn again after."""
    screen = _Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    handler = logging.StreamHandler(screen)
    log = logging.getLogger("zoracle")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        zo.train(_sphere, np.ones(3), epochs=1, steps_per_epoch=4, optimizer=zo.sgd(0.01), rng=0, progress=True,
                 checkpoint=tmp_path / "c.npz", checkpoint_every=2)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    text = screen.getvalue()
    assert "train" in text  # the bar was drawn
    starts = [text[max(m.start() - 1, 0):m.start()] for m in re.finditer("checkpoint ", text)]
    assert len(starts) >= 2 and all(c in ("", "\r", "\n") for c in starts), starts
