"""``checkpoint_every`` as a time (a ``datetime.timedelta``, or text such as "30s", "10min",
"2h" as a config file gives it): a save at the first step end after that much monotonic time
since the last save, so a user whose black box takes minutes a query bounds what a SIGKILL
costs in wall time. The clock is faked (each query moves it on by a second): nothing here is
timed. Before, every one of these forms was refused ("must be an integer >= 1")."""

from __future__ import annotations

import datetime
import os
import shutil
import warnings

import numpy as np
import pytest

import zoracle as zo
from conftest import Clock


def unitless_timedelta64(value):
    """``np.timedelta64(value)`` with no unit, as a user passes one: NumPy 2.5 deprecates making it
    (a DeprecationWarning, which this suite's filters turn into an error), not zoracle's reading it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.timedelta64(value)


def _oracle(clock, calls=None):
    def loss(x):
        clock.t += 1.0
        if calls is not None:
            calls.append(1)
        return float(((np.asarray(x) - 1.0) ** 2).sum() + 0.1 * np.sin(3 * np.asarray(x)).sum())
    return loss


def _held(path):
    """The number of steps the checkpoint at ``path`` holds (0: none written yet)."""
    return len(zo.History.from_checkpoint(path).steps) if os.path.exists(path) else 0


@pytest.mark.parametrize("every", ["10s", " 10 seconds ", "10 SEC", datetime.timedelta(seconds=10),
                                   np.timedelta64(10_000, "ms"),
                                   "0.1666667min"])
def test_a_time_cadence_saves_at_the_first_step_end_after_its_time(tmp_path, clock, every):
    """d=3 with forward CGE: 4 queries, 4 fake seconds a step. "10s" saves at the end of the
    step that passes 10 s since the last save (steps 3, 6, 9: mid-epoch, as epochs have 4 steps;
    the epoch ends at steps 4 and 8 save nothing) and at the run's end (step 12)."""
    path = tmp_path / "run.npz"
    seen = []

    def cb(event, rec, params):  # a step's callback runs before that step's save
        if event == "step":
            seen.append(_held(path))

    zo.train(_oracle(clock), np.zeros(3), epochs=3, steps_per_epoch=4, checkpoint=path, checkpoint_every=every,
             callbacks=[cb], progress=False, rng=0)
    assert seen == [0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9, 9]
    assert zo.load_checkpoint(path)[1]["step"] == 12


def test_a_time_cadence_counts_from_the_last_save_of_any_kind(tmp_path, clock):
    """The time runs from the last save, not on a fixed grid: a long step (a slow query) saves
    at its end and the next save comes that much time after it."""
    path = tmp_path / "run.npz"
    seen = []
    base = _oracle(clock)

    def loss(x):
        if seen == [0]:  # the second step: one query of it takes 100 s
            clock.t += 100.0 / 4
        return base(x)

    def cb(event, rec, params):
        if event == "step":
            seen.append(_held(path))

    zo.train(loss, np.zeros(3), epochs=1, steps_per_epoch=8, checkpoint=path, checkpoint_every="30s",
             callbacks=[cb], progress=False, rng=0)
    # step 2 ends at 108 s (saved), then 4 s a step: 30 s would pass at step 10; the end saves step 8
    assert seen == [0, 0, 2, 2, 2, 2, 2, 2]
    assert zo.load_checkpoint(path)[1]["step"] == 8


def _kwargs(path, every):
    return dict(epochs=3, steps_per_epoch=5, estimator=zo.CGE(mu=1e-3), optimizer=zo.adam(0.05),
                sparsity=0.5, ratios="uniform", mask_shuffle_interval=1, blocks=[slice(0, 4), slice(4, 6)],
                checkpoint=path, checkpoint_every=every, progress=False, rng=3)


def test_a_resume_from_any_time_cadence_save_is_the_uninterrupted_run_bit_for_bit(tmp_path, clock):
    """What a SIGKILL leaves at any step (the file as the last save wrote it, copied at each
    step's callback, before that step's save) resumes to the uninterrupted run's params,
    optimizer state, query count and history, bit for bit; the resumed run saves on another
    cadence (an int, "epoch", another time): the cadence is no setting a resume compares."""
    path = tmp_path / "run.npz"
    snaps = []

    def snapshot(event, rec, params):
        if event == "step" and os.path.exists(path):
            snaps.append(tmp_path / f"killed-at-{rec['step']}.npz")
            shutil.copy(path, snaps[-1])

    full = zo.train(_oracle(clock), np.zeros(6), callbacks=[snapshot], **_kwargs(path, "7s"))
    held = sorted({zo.load_checkpoint(s)[1]["step"] for s in snaps})
    # sparse CGE of 3 of the 6 coordinates: 4 queries, 4 s a step: a save every other step
    assert held == [2, 4, 6, 8, 10, 12, 14]
    assert any(h % 5 for h in held)  # mid-epoch saves among them
    for i, snap in enumerate(snaps):
        again = tmp_path / f"resumed-{i}.npz"
        shutil.copy(snap, again)
        other = (2, "epoch", datetime.timedelta(minutes=1), "3s")[i % 4]
        res = zo.train(_oracle(clock), np.zeros(6), resume=True, **_kwargs(again, other))
        assert res.params.tobytes() == full.params.tobytes()
        assert (res.nfev, res.steps, res.epochs) == (full.nfev, full.steps, full.epochs)
        for a, b in zip(res.optimizer_state, full.optimizer_state):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
        np.testing.assert_array_equal(res.coordinates, full.coordinates)
        for level in ("step", "epoch"):
            for name in ("loss", "lr", "nfev", "total_nfev"):
                assert res.history.column(name, level).tobytes() == full.history.column(name, level).tobytes()
        assert zo.load_checkpoint(again)[1]["step"] == full.steps


def test_a_step_run_resumes_with_a_time_cadence(tmp_path, clock):
    """An int cadence's checkpoint resumes under a time cadence (and the other way round is
    above): neither is refused for its cadence, as another int is not."""
    path = tmp_path / "run.npz"

    def stop(event, rec, params):
        return event == "step" and rec["step"] == 6

    full = zo.train(_oracle(clock), np.zeros(6), **_kwargs(tmp_path / "full.npz", 4))
    zo.train(_oracle(clock), np.zeros(6), callbacks=[stop], **_kwargs(path, 4))
    res = zo.train(_oracle(clock), np.zeros(6), resume=True, **_kwargs(path, "1h"))
    assert res.params.tobytes() == full.params.tobytes()


def _refused(match, **kw):
    calls = []
    with pytest.raises(zo.ArgumentError, match=match):
        zo.train(_oracle(Clock(), calls), np.zeros(3), **{"progress": False, "rng": 0, **kw})
    assert calls == []  # before the first query


@pytest.mark.parametrize("value", ["10 fortnights", "1h30min", "soon", "-5s", "1e3s", "ten minutes", "", "steps",
                                   None, [10], 1.5, "inf h"])
def test_a_cadence_in_no_accepted_form_is_refused_naming_the_forms(tmp_path, value):
    _refused(r"`checkpoint_every`.*" + (r"must be an integer" if value == 1.5 else
                                        r"\"30s\", \"10min\", \"1\.5h\""),
             checkpoint=tmp_path / "run.npz", checkpoint_every=value)


@pytest.mark.parametrize("value", ["0s", "0.0h", datetime.timedelta(0), datetime.timedelta(seconds=-5),
                                   unitless_timedelta64("NaT"), np.timedelta64(1, "M"),
                                   pytest.param("1" + "0" * 400 + "s", id="endless")])
def test_a_time_of_zero_or_less_is_refused(tmp_path, value):
    _refused(r"`checkpoint_every` is .*the time between saves must be > 0", checkpoint=tmp_path / "run.npz",
             checkpoint_every=value)


def test_m_is_refused_as_ambiguous_with_the_minutes_to_pass(tmp_path):
    _refused(r"`checkpoint_every` is '10m': \"m\" is no unit here .*pass checkpoint_every=\"10min\"",
             checkpoint=tmp_path / "run.npz", checkpoint_every="10m")


@pytest.mark.parametrize("value, shown", [("10min", "'10min'"), (datetime.timedelta(hours=2), r"datetime\.timedelta")])
def test_a_time_cadence_without_a_checkpoint_is_refused(value, shown):
    _refused(rf"`checkpoint_every`={shown}.* sets how often `checkpoint` is saved, but no `checkpoint` path",
             checkpoint_every=value)
