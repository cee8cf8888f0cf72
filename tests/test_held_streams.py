"""What user code prints beside the progress bars of runs in threads is held to a line's end
(``zoracle._bar._Beside``) and written at the block's end when no newline came: a stdout whose
delayed write fails there (a closed pipe) must not take the text held for stderr with it."""

from __future__ import annotations

import io
import sys

import pytest
from tqdm import tqdm

from zoracle._bar import _beside


class _ClosedPipe(io.StringIO):
    """A pipe whose reader has gone: text written raises (an empty write, buffered, does not)."""

    def write(self, s):
        if s:
            raise BrokenPipeError(32, "Broken pipe")
        return 0


def test_stderrs_held_text_is_written_when_stdouts_delayed_write_fails(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    monkeypatch.setattr(sys, "stderr", err)
    screen = io.StringIO()
    other, bar = tqdm(total=3, file=screen), tqdm(total=3, file=screen)  # (another run's bar: writes are held)
    try:
        with pytest.raises(BrokenPipeError):
            with _beside(bar, True):
                print("no newline yet", end="")
                print("warning: half a line", end="", file=sys.stderr)
                assert err.getvalue() == ""  # held for the line's end
        assert err.getvalue() == "warning: half a line"
        assert sys.stderr is err  # (and the streams are taken back)
    finally:
        bar.close()
        other.close()


def test_a_failing_stderr_still_raises_after_stdouts_held_text_is_written(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", _ClosedPipe())
    screen = io.StringIO()
    other, bar = tqdm(total=3, file=screen), tqdm(total=3, file=screen)
    try:
        with pytest.raises(BrokenPipeError):
            with _beside(bar, True):
                print("result", end="")
                print("note", end="", file=sys.stderr)
        assert out.getvalue() == "result"
    finally:
        bar.close()
        other.close()
