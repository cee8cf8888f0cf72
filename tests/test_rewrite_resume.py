"""The checkpoint-rewrite warning (``zoracle._cadence.warn_rewrites``) of a resumed run counts the saves
left from the step it resumes at, not the whole run's from step 0: resumed at step 25,000 of 26,000
one-step epochs it warned of about 100 GB where about 8 GB are left to write."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import zoracle as zo
from zoracle import _cadence
from zoracle._cadence import RECORD_BYTES, SaveCadence, rewrite_bytes, warn_rewrites


def _slope(x):  # (a loss whose params keep moving: no warning of a run that stands still)
    return float(x.sum())


SGD = zo.sgd(1e-3)


def test_the_saves_left_after_step_25000_of_26000_write_about_8_gb_and_are_not_warned():
    left = rewrite_bytes(SaveCadence(), 26_000, 1, start=25_000)
    # the saves after steps 25,001 .. 26,000, each rewriting that many steps (2 records a one-step epoch)
    assert left == pytest.approx(RECORD_BYTES * 2 * sum(range(25_001, 26_001)))
    assert 7e9 < left < 8e9
    assert rewrite_bytes(SaveCadence(), 26_000, 1) > 100e9  # the whole run, from step 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_rewrites(SaveCadence(), "epoch", 26_000, 1, start=25_000)
    with pytest.warns(UserWarning, match=r"26,000 times over the run's 26,000 steps.* about 101 GB"):
        warn_rewrites(SaveCadence(), "epoch", 26_000, 1)


def test_a_resume_near_the_end_is_not_warned_of_the_whole_runs_saves(tmp_path, monkeypatch):
    """The same run, 100 times shorter against a threshold lowered to match (a threshold at 5 MB,
    the whole run's saves writing some 10 MB, those after step 250 of 260 some 0.8 MB)."""
    ckpt = tmp_path / "run.npz"
    zo.train(_slope, np.ones(2), optimizer=SGD, epochs=250, progress=False, rng=0, checkpoint=ckpt,
             checkpoint_every=250)
    monkeypatch.setattr(_cadence, "REWRITE_WARN_BYTES", 5e6)
    with pytest.warns(UserWarning, match="rewrites the whole history"):  # (a fresh run of 260 is warned)
        warn_rewrites(SaveCadence(), "epoch", 260, 1)
    res = zo.train(_slope, np.ones(2), optimizer=SGD, epochs=260, progress=False, rng=0, checkpoint=ckpt, resume=True)
    assert len(res.history.steps) == 260


def test_a_resume_with_most_saves_ahead_is_still_warned_of_those_left(tmp_path, monkeypatch):
    ckpt = tmp_path / "run.npz"
    zo.train(_slope, np.ones(2), optimizer=SGD, epochs=10, progress=False, rng=0, checkpoint=ckpt)
    monkeypatch.setattr(_cadence, "REWRITE_WARN_BYTES", 5e6)
    with pytest.warns(UserWarning, match=r"250 times over the run's 250 steps left of its 260, .*about 0 GB"):
        zo.train(_slope, np.ones(2), optimizer=SGD, epochs=260, progress=False, rng=0, checkpoint=ckpt, resume=True)
