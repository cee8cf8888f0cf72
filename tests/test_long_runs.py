"""Long runs (1e5-1e6 steps of a cheap oracle, or a week of a slow one): what a checkpoint costs
as its history grows. Each save rewrites the whole file, the history included, so a save's bytes
grow with the steps; what it costs beyond those bytes must not. Nothing here is timed: the tests
count encodings, bytes held and bytes allocated (tracemalloc)."""

from __future__ import annotations

import gc
import json
import os
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zoracle as zo
from zoracle._checkpoint import Records


def _records(n: int, start: int = 0) -> list:
    """Step records as a run makes them (Python ints and floats)."""
    return [{"step": i, "epoch": i // 100, "loss": 1.0 / (i + 1), "lr": 1e-3, "mu": 0.005, "nfev": 21,
             "total_nfev": 21 * (i + 1), "seconds": 1e-4 * (1 + i % 7)} for i in range(start, start + n)]


def _quadratic(x):
    return float(((x - 1.0) ** 2).sum())


def test_a_checkpoints_encoded_history_is_held_in_about_its_own_bytes():
    """The records' JSON kept between saves (each encoded once) was a str per record, about 55 bytes
    of object each on top of its ~146 bytes of text: 201 bytes a step, 38% more than the text, held for
    the whole run beside the history itself. One buffer holds them now (its growth's slack aside)."""
    made = _records(10_000)  # the run's records (not the cache's): made before the count starts
    steps = []
    r = Records(steps)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(0, len(made), 500):  # the saves of a growing run: 500 new records each
            steps += made[k:k + 500]
            r.text(None)
        held = tracemalloc.get_traced_memory()[0] - before - 8 * len(steps) * 1.2  # (less the list's pointers)
    finally:
        tracemalloc.stop()
    text = r.text(None)
    assert text == json.dumps(steps, sort_keys=True)
    assert held <= 1.2 * len(text.encode("utf-8")), (held, len(text))


def test_a_save_allocates_no_copy_of_the_history(tmp_path):
    """A save at 20,000 steps allocated three times the file's bytes at its peak (the records
    joined, bracketed, spliced into the header, encoded, copied into an array and into NumPy's
    chunk to write); the records' buffer is written as it is now, and a save allocates a small
    part of the file's bytes (the header around the history)."""
    steps = _records(20_000)
    epochs = [{"epoch": j, "loss": 0.5, "lr": 1e-3, "nfev": 2100, "total_nfev": 2100 * (j + 1), "seconds": 0.01}
              for j in range(200)]
    path = tmp_path / "run.npz"
    meta = {"step": len(steps), "history": {"steps": Records(steps), "epochs": Records(epochs)}}
    zo.save_checkpoint(path, {"params": np.zeros(10)}, meta)  # every record encoded (kept for later saves)
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        zo.save_checkpoint(path, {"params": np.zeros(10)}, meta)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    size = os.path.getsize(path)
    assert peak <= 0.5 * size, (peak, size)
    with np.load(path) as f:  # the header is the one json.dumps gives the plain lists
        assert json.loads(bytes(f["__meta__"]))["history"] == {"steps": steps, "epochs": epochs}


def test_each_record_is_encoded_once_over_a_run_saving_every_step(tmp_path, monkeypatch):
    """A run saving at every step (one-step epochs, the default cadence) encodes each of its
    records once, whatever the number of saves: the work of the JSON is linear in the steps."""
    encoded = []
    real = json.dumps

    def counting(obj, *args, **kwargs):
        if isinstance(obj, dict) and ("step" in obj or "epoch" in obj) and "config" not in obj:
            encoded.append(obj.get("step", "epoch"))
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(json, "dumps", counting)
    n = 60
    path = tmp_path / "run.npz"
    res = zo.train(_quadratic, np.zeros(3), epochs=n, checkpoint=path, progress=False, rng=0)
    monkeypatch.setattr(json, "dumps", real)
    assert len(res.history.steps) == n and len(res.history.epochs) == n
    assert len(encoded) == 2 * n  # each step record and each epoch record, once: not once a save
    assert zo.History.from_checkpoint(path) == res.history


def test_a_checkpoint_grows_by_about_the_same_bytes_each_step(tmp_path):
    """The file's size is linear in the steps (a record's bytes each), so a save late in a run
    writes no more per step of history than an early one."""
    path = tmp_path / "run.npz"
    sizes = {}

    def size_at(event, record, params):
        if event == "epoch":
            sizes[record["epoch"]] = os.path.getsize(path)

    zo.train(_quadratic, np.zeros(3), epochs=40, steps_per_epoch=25, checkpoint=path, callbacks=[size_at],
             progress=False, rng=0)
    early, late = sizes[2] - sizes[1], sizes[39] - sizes[38]
    assert 0 < late <= 1.2 * early, (early, late)


@pytest.mark.slow
def test_a_resume_from_a_long_history_is_the_uninterrupted_run(tmp_path):
    """A run stopped after thousands of steps (its records encoded once, over many saves) resumes
    bit for bit: the header a save splices together reads back as the records the run made."""
    path = tmp_path / "run.npz"
    kw = dict(epochs=30, steps_per_epoch=100, optimizer=zo.sgd(1e-4), checkpoint=path, checkpoint_every=50,
              progress=False, rng=1)
    whole = zo.train(_quadratic, np.zeros(4), **{**kw, "checkpoint": tmp_path / "whole.npz"})
    zo.train(_quadratic, np.zeros(4), **{**kw, "epochs": 17})
    rest = zo.train(_quadratic, np.zeros(4), **kw, resume=True)
    np.testing.assert_array_equal(rest.params, whole.params)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rest.history.steps] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in whole.history.steps]


def _calls(counter):
    def f(x):
        counter.append(1)
        return _quadratic(x)

    return f


def test_a_run_whose_saves_would_write_too_much_is_warned_before_its_first_query(tmp_path, monkeypatch):
    """``epochs=100_000`` of a plain callable with a checkpoint (one-step epochs, each saved) wrote
    1.5 TB: each save rewrites the whole history, so the bytes are quadratic in the steps, and a
    cheap oracle's run spent some 30 times its steps' time saving. The run is warned about before
    its first query, with the cadences that bound the saves (the limit lowered here)."""
    from zoracle import _cadence

    monkeypatch.setattr(_cadence, "REWRITE_WARN_BYTES", 1e6)  # 100 one-step epochs write about 1.5 MB
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="rewrites the whole history") as got:
            zo.train(_calls(calls), np.zeros(3), epochs=100, checkpoint=tmp_path / "a.npz", progress=False)
    assert calls == []
    assert "checkpoint_every='epoch'" in str(got.value) and 'checkpoint_every="10min"' in str(got.value)
    for kw in (dict(checkpoint_every="10min"), dict(checkpoint_every=50), dict(max_queries=40),
               dict(callbacks=[lambda event, record, params: None])):  # bounded saves, or a run a callback may stop
        zo.train(_quadratic, np.zeros(3), epochs=100, checkpoint=tmp_path / "b.npz", progress=False, **kw)
        os.remove(tmp_path / "b.npz")


def test_the_estimate_of_a_runs_saved_bytes_is_what_its_saves_write(tmp_path):
    """The warning's count of bytes: the history's bytes summed over the saves of a run, as written."""
    from zoracle._cadence import rewrite_bytes, save_cadence

    path = tmp_path / "run.npz"
    written = []

    def history_bytes(event, record, params):
        if event == "epoch":
            h = zo.load_checkpoint(path, expected={})[1]["history"]
            written.append(len(json.dumps(h["steps"])) + len(json.dumps(h["epochs"])))

    zo.train(_quadratic, np.zeros(3), epochs=40, checkpoint=path, callbacks=[history_bytes],
             eval_fn=lambda p: {"acc": float(p.sum())}, progress=False, rng=0)
    estimate = rewrite_bytes(save_cadence("epoch", path), 40, 1)
    # (each save at an epoch's end comes before that epoch's record: 39 epoch records in the last)
    assert 0.75 * sum(written) <= estimate <= 1.25 * sum(written), (estimate, sum(written))


def test_reading_an_asktells_history_at_each_tell_copies_each_record_once():
    """``opt.history`` copied every record at each read: a loop reading it at every tell (the
    example's ``step = len(opt.history.steps)``) was quadratic in its steps (11 ms a tell at 20,000
    steps, 0.8 ms without the read). Each record is copied once now, later reads sharing the copy;
    the copies are still not the run's records."""
    ref = zo.train(_quadratic, np.zeros(3), epochs=40, optimizer=zo.sgd(0.1), progress=False, rng=0)
    opt = zo.AskTell(np.zeros(3), epochs=40, optimizer=zo.sgd(0.1), progress=False, rng=0)
    first = None
    while not opt.done:
        steps = opt.history.steps
        assert len(steps) == len(opt.history.epochs)
        if steps:
            first = steps[0] if first is None else first
            assert steps[0] is first and opt.history.steps[-1] is steps[-1]  # copied once, not at each read
            assert opt.history.steps is steps  # (no step since: the same tuple)
            steps[-1]["loss"] = -1.0  # a copy: the run's own record (and its later steps) unchanged
        opt.tell([_quadratic(x) for x in opt.ask()])
    drop = lambda recs: [{k: v for k, v in r.items() if k != "seconds"} for r in recs]  # noqa: E731
    assert drop(opt.result.history.steps) == drop(ref.history.steps)
    np.testing.assert_array_equal(opt.params, ref.params)


def test_an_asktells_history_after_a_resume_has_the_runs_order_of_metrics(tmp_path):
    """A resumed run puts its epoch records read back (their metrics in name order) in its own order at its
    first epoch's end, replacing them: ``opt.history`` read before and after has the run's records as they stand."""
    path = tmp_path / "run.npz"

    def metrics(p):
        return {"zeta": float(p[0]), "alpha": float(p[1])}

    kw = dict(epochs=6, optimizer=zo.sgd(0.1), eval_fn=metrics, checkpoint=path, progress=False, rng=0)
    zo.train(_quadratic, np.zeros(3), **{**kw, "epochs": 3})
    opt = zo.AskTell(np.zeros(3), **kw, resume=True)
    before = opt.history.epochs
    assert [list(r) for r in before] == [list(r) for r in zo.History.from_checkpoint(path).epochs]
    while not opt.done:
        opt.tell([_quadratic(x) for x in opt.ask()])
        if not opt.done:
            assert [list(r) for r in opt.history.epochs] == [list(r) for r in opt._channel.run.epoch_hist]
    assert [list(r) for r in opt.result.history.epochs[:3]] == [list(r) for r in opt.result.history.epochs[3:]]


def test_a_resume_reads_its_checkpoints_header_once(tmp_path, monkeypatch):
    """The header, the whole history's JSON, is read and parsed once by a resume: the check that the
    checkpoint path holds no other program's file read it a second time (0.6 s of a resume at
    100,000 steps) where the run resumes from that very file, whose reading says what is wrong with it."""
    from zoracle import _checkpoint

    path = tmp_path / "run.npz"
    kw = dict(epochs=4, steps_per_epoch=5, optimizer=zo.sgd(0.1), checkpoint=path, progress=False, rng=0)
    zo.train(_quadratic, np.zeros(3), **{**kw, "epochs": 2})
    reads = []
    real = _checkpoint._read_member

    def counting(zf, info, *args, **kwargs):
        reads.append(info.filename)
        return real(zf, info, *args, **kwargs)

    monkeypatch.setattr(_checkpoint, "_read_member", counting)
    res = zo.train(_quadratic, np.zeros(3), **kw, resume=True)
    assert reads.count("__meta__.npy") == 1, reads
    assert res.steps == 20 and res.history == zo.History.from_checkpoint(path)
    reads.clear()
    zo.train(_quadratic, np.zeros(3), **{**kw, "epochs": 5}, resume=path)  # the same file, by its path
    assert reads.count("__meta__.npy") == 1, reads


def test_reading_a_long_history_checks_its_plain_records_in_one_test_each(tmp_path, monkeypatch):
    """A resume (or a plot) checks every step record; as JSON's plain ints and floats, each is checked in
    one test, not field by field with each field's name made and the numbers' abstract classes asked
    (eight checks a record: 0.96 s at 100,000 steps, three times the JSON's parsing, now 0.14 s)."""
    from zoracle import _resume

    path = tmp_path / "run.npz"
    zo.train(_quadratic, np.zeros(3), epochs=20, steps_per_epoch=50, checkpoint=path, progress=False, rng=0)
    calls = []
    for name in ("_int", "_number"):
        real = getattr(_resume, name)
        monkeypatch.setattr(_resume, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    history = zo.History.from_checkpoint(path)
    assert len(history.steps) == 1000 and len(calls) <= 10, len(calls)  # the header's counters alone


_ODD = (0, 1, -1, 2, 0.5, -0.5, 0.0, -0.0, float("nan"), float("inf"), float("-inf"), True, False, None, "nan",
        "inf", "x", 2**53, 2**53 + 1, [])  # ([]: the field left out)
_FIELDS = ("step", "epoch", "loss", "lr", "mu", "nfev", "total_nfev", "seconds")


def _read_both_ways(fields: dict) -> tuple:
    """A one-step history whose record is a plain one with ``fields`` replaced, read by ``_history`` with
    the one test of a plain record and with the checks field by field alone: the two readings (or refusals)."""
    from zoracle import _resume

    plain = {"step": 0, "epoch": 1, "loss": 0.5, "lr": 0.1, "mu": 0.005, "nfev": 7, "total_nfev": 7, "seconds": 0.01}
    rec = {k: v for k, v in {**plain, **fields}.items() if not (isinstance(v, list) and v == [])}
    meta = {"history": {"steps": [rec], "epochs": [{"epoch": 0}]}}

    def read(plain_step):
        try:
            with pytest.MonkeyPatch.context() as m:
                m.setattr(_resume, "_plain_step", plain_step)
                return _resume._history(meta, "run.npz", 1, 1, 1 if rec.get("epoch") == 1 else 0)
        except zo.CheckpointError as exc:
            return str(exc)

    return read(_resume._plain_step), read(lambda *a: False)


def test_a_record_passed_at_once_is_one_the_fields_checks_pass():
    """The one test of a plain record passes none that the checks field by field refuse, and both
    read the same records as the same history: each field in turn set to each odd value, or left out."""
    for field in _FIELDS:
        for value in _ODD:
            at_once, by_field = _read_both_ways({field: value})
            assert at_once == by_field, (field, value)


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(_FIELDS), st.sampled_from(_ODD), max_size=8))
def test_a_record_of_odd_fields_passed_at_once_is_one_the_fields_checks_pass(fields):
    """As above, several fields odd at once."""
    at_once, by_field = _read_both_ways(fields)
    assert at_once == by_field
