"""Behaviours of this session's changes that a mutation run (session 69) found unchecked."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest

import zoracle as zo
import zoracle._retrying as _retrying


def _always(exc):
    calls = []

    def oracle(x):
        calls.append(1)
        raise exc

    return oracle, calls


def test_retrying_waits_backoff_doubling_between_tries_and_not_after_the_last(monkeypatch, caplog):
    waits = []
    monkeypatch.setattr(_retrying.time, "sleep", waits.append)
    oracle, calls = _always(ConnectionResetError("reset by peer"))
    with caplog.at_level(logging.INFO, logger="zoracle"), pytest.raises(zo.RetriesExhausted) as err:
        zo.retrying(oracle, tries=4, backoff=0.5)(np.zeros(2))
    assert waits == [0.5, 1.0, 2.0] and len(calls) == 4
    assert [r.getMessage().split(", try ")[1][:6] for r in caplog.records] == ["1 of 4", "2 of 4", "3 of 4"]
    assert err.value.errors == ["ConnectionResetError: reset by peer"] * 4
    assert str(err.value).startswith("the call failed all 4 tries (try 1: ConnectionResetError: reset by peer;")
    back = pickle.loads(pickle.dumps(err.value))  # (a process worker's report)
    assert back.errors == err.value.errors and str(back) == str(err.value)


def test_retrying_defaults_to_three_tries(monkeypatch):
    monkeypatch.setattr(_retrying.time, "sleep", lambda s: None)
    oracle, calls = _always(TimeoutError("timed out"))
    with pytest.raises(zo.RetriesExhausted, match="failed all 3 tries"):
        zo.retrying(oracle)(np.zeros(2))
    assert len(calls) == 3


def test_retrying_with_one_try_asks_once_and_waits_for_nothing(monkeypatch):
    waits = []
    monkeypatch.setattr(_retrying.time, "sleep", waits.append)
    oracle, calls = _always(ConnectionError("refused"))
    with pytest.raises(zo.RetriesExhausted, match="failed all 1 tries"):
        zo.retrying(oracle, tries=1, backoff=3.0)(np.zeros(2))
    assert len(calls) == 1 and waits == []


def test_retrying_repr_names_the_oracle_and_its_settings():
    def f(x):
        return 0.0

    text = repr(zo.retrying(f, tries=2, on=TimeoutError, backoff=0.25))
    assert text.startswith("retrying(<function") and text.endswith(
        "tries=2, on=(<class 'TimeoutError'>,), backoff=0.25)")


def test_retrying_unbind_returning_none_stays_none():
    class Bound:
        def __call__(self, x):
            return 0.0

        def unbind(self):
            return None

    class Data:
        def bind(self, batch):
            return Bound()

    assert zo.retrying(Data(), backoff=0).bind(np.ones(2)).unbind() is None


def _text_bar():
    import io

    from tqdm.std import tqdm

    return tqdm(total=3, file=io.StringIO())


def test_a_single_runs_print_without_newline_is_written_at_once_and_the_streams_are_restored(monkeypatch):
    import io
    import sys

    from zoracle._bar import _beside

    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    bar = _text_bar()
    try:
        with _beside(bar, True):
            drawn = bar.fp.getvalue()
            print("partial", end="")
            assert bar.fp.getvalue()[len(drawn):].startswith("\r")  # the bar cleared first  # no other run's bar: written now, not held for a newline
            print("warn", end="", file=sys.stderr)
            assert out.getvalue() == "partial" and err.getvalue() == "warn"
            before_end = bar.fp.getvalue()
        assert len(bar.fp.getvalue()) > len(before_end)  # drawn again after the block
        assert sys.stdout is out and sys.stderr is err
    finally:
        bar.close()


def test_a_shortened_temporary_name_keeps_as_much_of_the_checkpoint_name_as_fits(monkeypatch, tmp_path):
    import os
    import zlib

    from zoracle import _checkpoint

    monkeypatch.setattr(_checkpoint, "_name_max", lambda folder: 100)
    name = "run-" + "a" * 150 + ".npz"
    prefix = _checkpoint._tmp_prefix(str(tmp_path / name))
    tag = format(zlib.crc32(os.fsencode(name)), "08x")
    assert len(prefix) == 100 - _checkpoint._TMP_TAIL
    assert prefix == "." + name[:len(prefix) - len(f".~{tag}.tmp-")] + f"~{tag}.tmp-"
    assert _checkpoint._tmp_prefix(str(tmp_path / "run.npz")) == ".run.npz.tmp-"  # (fits: as it was)


def test_the_longest_name_is_255_bytes_where_the_folder_cannot_be_asked(monkeypatch, tmp_path):
    import os

    from zoracle import _checkpoint

    def fail(*a):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "pathconf", fail)
    assert _checkpoint._name_max(str(tmp_path)) == 255


def test_a_checkpoint_is_writable_where_the_mount_table_cannot_be_read(monkeypatch, tmp_path):
    import builtins

    from zoracle import _checkpoint

    def no_proc(path, *a, **k):  # (no /proc: macOS, a sandbox)
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", path)
        return builtins.open(path, *a, **k)

    monkeypatch.setattr(_checkpoint, "open", no_proc, raising=False)
    path = tmp_path / "run.npz"
    path.write_bytes(b"old")  # (an existing file: the mount table is looked at)
    assert _checkpoint._mounted_file(str(path)) is False
    assert _checkpoint.check_writable(str(path)) == str(path)


def test_the_rewrite_estimate_counts_whole_saves_only():
    from zoracle._cadence import RECORD_BYTES, SaveCadence, rewrite_bytes

    # 10 steps saved every 3: saves after steps 3, 6 and 9 (the history 3, 6 and 9 steps long)
    assert rewrite_bytes(SaveCadence(3, None), 10, 10) == pytest.approx(RECORD_BYTES * 1.1 * (3 + 6 + 9))


def test_the_rewrite_warning_checks_nothing_for_a_run_of_unknown_length_with_max_queries():
    import warnings

    from zoracle._cadence import SaveCadence, warn_rewrites

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_rewrites(SaveCadence(1, None), 1, None, 10, max_queries=10**12) is None


def test_retrying_on_one_exception_class_raises_other_errors_at_once():
    oracle, calls = _always(ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input"):
        zo.retrying(oracle, on=TimeoutError, backoff=0)(np.zeros(2))
    assert len(calls) == 1


def test_streams_of_blocks_left_out_of_order_are_all_taken_back(monkeypatch):
    import io
    import sys

    from zoracle._bar import _beside

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    one, two = _text_bar(), _text_bar()
    try:
        first, second = _beside(one, True), _beside(two, True)
        first.__enter__()
        second.__enter__()  # (another run's block, entered later: it wraps the first one's stream)
        first.__exit__(None, None, None)
        second.__exit__(None, None, None)
        assert sys.stdout is out
    finally:
        one.close()
        two.close()
