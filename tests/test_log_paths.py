"""train's log records naming a checkpoint's path ("no checkpoint at ... yet", "checkpoint ... saved
after", "resumed from ..."): a newline in the path split one record into two lines, and a parser reading
one record a line took the rest for a record of its own. A path holding a control character (or a line
separator) is shown as its repr now; any other path prints as before."""

from __future__ import annotations

import logging
import os
import pathlib
import sys

import numpy as np
import pytest

import zoracle as zo
from zoracle._errors import log_path

KW = dict(estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.05), rng=0, progress=False)


def loss(x):
    return float(np.sum((x - 1.0) ** 2))


def _messages(caplog, path):
    """The records' messages of a run and its resume on ``path``."""
    with caplog.at_level(logging.INFO, logger="zoracle"):
        zo.train(loss, np.zeros(3), epochs=1, checkpoint=path, resume=True, **KW)  # none yet: a fresh run
        zo.train(loss, np.zeros(3), epochs=2, checkpoint=path, resume=True, **KW)
    return [r.getMessage() for r in caplog.records if r.name == "zoracle"]


@pytest.mark.skipif(sys.platform == "win32", reason="Windows file names cannot hold a newline")
def test_a_newline_in_a_checkpoints_path_keeps_each_record_on_one_line(tmp_path, caplog):
    folder = tmp_path / "run\n2"
    folder.mkdir()
    path = folder / "ck\r.npz"
    said = _messages(caplog, path)
    shown = repr(str(path))
    assert [m for m in said if "\n" in m or "\r" in m] == [], said
    assert {m for m in said if "checkpoint" in m or "resumed" in m} == {
        f"no checkpoint at {shown} yet: starting a fresh run",
        f"checkpoint {shown} saved after 1 steps, 4 queries",
        f"resumed from {shown} at epoch 1, step 1",
        f"checkpoint {shown} saved after 2 steps, 8 queries"}, said
    saved = [r.zoracle["path"] for r in caplog.records if getattr(r, "zoracle_event", None) == "checkpoint"]
    assert set(saved) == {str(path)}  # the record's fields keep the path itself


def test_a_plain_path_prints_as_before(tmp_path, caplog):
    folder = tmp_path / "日本 ∑ é"
    folder.mkdir()
    path = folder / "ck.npz"
    said = _messages(caplog, path)
    assert f"no checkpoint at {path} yet: starting a fresh run" in said
    assert f"checkpoint {path} saved after 1 steps, 4 queries" in said
    assert f"resumed from {path} at epoch 1, step 1" in said


@pytest.mark.parametrize("path, shown", [
    ("a/b c.npz", "a/b c.npz"), ("日本/∑ é\u00a0.npz", "日本/∑ é\u00a0.npz"),  # as before
    ("a\nb", "'a\\nb'"), ("a\x1b[2Kb", "'a\\x1b[2Kb'"), ("a\x85b", "'a\\x85b'"), ("a\u2028b", "'a\\u2028b'"),
    ("a\tb", "'a\\tb'"), ("a\x7fb", "'a\\x7fb'")])
def test_only_paths_with_a_control_character_are_shown_as_their_repr(path, shown):
    assert log_path(path) == shown
    assert log_path(pathlib.PurePosixPath(path)) == shown
    assert "%s" % log_path(os.fsencode(path)) == "%s" % os.fsencode(path)  # bytes print as before: b'...'
