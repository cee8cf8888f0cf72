"""``train``'s progress bar on a narrow terminal (large fonts, a braille display, a split tmux pane):
tqdm cut its line at the terminal's width, so at 80 columns the queries/s went and at 40 the loss and
the learning rate, while a cell of bar graphic stayed. The line now keeps, whatever the width, the
step of steps, the loss, the learning rate, then the rest, each whole, and the graphic goes first; a
wide terminal keeps tqdm's own line."""

from __future__ import annotations

import contextlib
import re
import sys

import numpy as np
import pytest

import zoracle as zo
import zoracle._bar
from zoracle._run_end import close_bar, open_bar
from test_accessible_output import _Pty, needs_pty  # noqa: E402  (a raw pseudo-terminal of a given width)

#: any escape code (a colour, a cursor move)
ESC_CODE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: tqdm's own line: the graphic between the percentage and the step of steps, then the times and the postfix
TQDM_LINE = re.compile(r"^epoch 10/10: 100%\|[\u2588-\u258f]+\| 120/120 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+step/s, "
                       r"loss=\S+, lr=\S+, qps=\d+\]$")


def _seen(text: str, columns: int) -> str:
    """The bar's last line as the screen shows it: after the last ``\\r`` (or newline) that is followed
    by something, escape codes taken out, cut at the terminal's width (which it fits: nothing cut)."""
    drawn = [ESC_CODE.sub("", part).rstrip() for part in re.split(r"[\r\n]", text)]
    drawn = [part for part in drawn if part]
    assert drawn and len(drawn[-1]) <= columns, (columns, repr(text[-400:]))
    return drawn[-1][:columns]


def _run_on(monkeypatch, columns: int, term: str):
    """A run of 120 steps (10 epochs) on a pseudo-terminal ``columns`` wide; what it showed last, and the
    last step's record. The bar's clock moves on a second a step: each step's line is drawn."""
    import tqdm.std

    monkeypatch.setenv("TERM", term)
    clock = [1e6]
    monkeypatch.setattr(zoracle._bar, "_bar_clock", lambda: clock[0])
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)  # (no monitor thread on the real clock)

    def tick(event, record, params):
        if event == "step":
            clock[0] += 1.0
    try:
        pty = _Pty(columns)
    except OSError as exc:  # (a container without /dev/pts)
        pytest.skip(f"no pseudo-terminal here ({exc})")
    try:
        with monkeypatch.context() as mp:
            mp.setattr(sys, "stderr", pty.stream)
            # a loss drawn with 4 digits and an exponent (4.938e-05), as small losses are
            result = zo.train(lambda x: 1.2345e-5 * (1.0 + float(((x - 1.0) ** 2).sum())), np.zeros(3), epochs=10,
                              steps_per_epoch=12, optimizer=zo.sgd(1e-7), rng=0, callbacks=[tick])
    finally:
        text = pty.read()
    return _seen(text, columns), result.history.steps[-1]


@needs_pty
@pytest.mark.parametrize("term", ["xterm-256color", "dumb"])
@pytest.mark.parametrize("columns", [40, 60, 80, 120])
def test_a_narrow_terminal_keeps_the_steps_loss_and_lr_whole(monkeypatch, columns, term):
    """At 40 columns and up the line shows the step of steps and the loss (at 60 the learning rate too), at
    80 and up the queries a second, each value whole; at 120 it is tqdm's own line, with its graphic. A dumb
    terminal's lines (no redraw) are fitted to its width as well."""
    line, last = _run_on(monkeypatch, columns, term)
    assert "120/120" in line, (columns, line)
    assert f"loss={last['loss']:.4g}," in f"{line},", (columns, line)  # (whole: the value, then a comma or the end)
    if columns >= 60:
        assert re.search(r"lr=1e-07(,|$)", line), (columns, line)
    if columns >= 80:
        assert re.search(r"qps=\d+(,| \[|\]|$)", line), (columns, line)
    if columns >= 120:
        assert TQDM_LINE.match(line.rstrip()), line


@contextlib.contextmanager
def _bar_on(monkeypatch, columns: int):
    """The bar ``train`` opens, on a pseudo-terminal ``columns`` wide, its clock held still (moved by hand)."""
    import tqdm.std

    monkeypatch.setenv("TERM", "xterm-256color")
    clock = [1e6]
    monkeypatch.setattr(zoracle._bar, "_bar_clock", lambda: clock[0])
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)
    try:
        pty = _Pty(columns)
    except OSError as exc:  # (a container without /dev/pts)
        pytest.skip(f"no pseudo-terminal here ({exc})")
    try:
        with monkeypatch.context() as mp:
            mp.setattr(sys, "stderr", pty.stream)
            bar, _, lock = open_bar(True, 100, 0)
            try:
                yield bar, clock
            finally:
                close_bar(bar, lock)
    finally:
        pty.read()


def _meter(monkeypatch, columns: int, desc="epoch 4/10", postfix="loss=-1.235e+05, lr=0.001, qps=3104", n=37):
    """The bar's line for one state of a run (37 of 100 steps in 3.7 s), on a terminal ``columns`` wide,
    and tqdm's own line for it."""
    from tqdm.std import tqdm

    with _bar_on(monkeypatch, columns) as (bar, clock):
        bar.set_description(desc, refresh=False)
        bar.set_postfix_str(postfix, refresh=False)
        bar.n = n
        clock[0] += 3.7
        state = bar.format_dict
        return bar.format_meter(**state), tqdm.format_meter(**state), state["ncols"]


#: the line's fields, most important first
KEPT = ["37/100", "loss=-1.235e+05", "lr=0.001", "epoch 4/10:", "qps=3104", "[00:03<00:06", "37%", "10.00step/s"]


@needs_pty
@pytest.mark.parametrize("columns", range(16, 141, 4))
def test_the_line_keeps_its_numbers_in_their_order_of_importance(monkeypatch, columns):
    """Each width's line: never wider than tqdm's width, each number whole, the most important ones kept
    (the step of steps, loss and lr at 40 columns, and the epoch and qps at 60), in tqdm's order; where
    tqdm's own line has room for a graphic of 10 cells, tqdm's line as it is."""
    line, own, ncols = _meter(monkeypatch, columns)
    assert ncols in (columns - 1, columns) and len(line) <= ncols, line  # (tqdm's width: the terminal's, or 1 less)
    if "|" in line:  # tqdm's own line, graphic and all
        assert line == own and len(re.sub(r"[^\u2588-\u258f ]", "", line.split("|")[1])) >= 10, line
        return
    shown = [part in line for part in KEPT]
    assert shown[0] and shown == sorted(shown, reverse=True), line  # (kept: the most important ones)
    assert "loss=-1.235e+05" in line or "loss=" not in line, line  # (whole or not at all)
    if columns >= 40:
        assert all(shown[:3]), line
    if columns >= 60:
        assert all(shown[:5]), line
    order = ["epoch 4/10:", "37%", "37/100", "loss=", "lr=", "qps=", "[00:", "step/s"]  # (tqdm's, less the graphic)
    at = [line.index(part) for part in order if part in line]
    assert at == sorted(at), line


@needs_pty
def test_a_line_before_the_first_step_and_a_bar_of_no_postfix_fit_too(monkeypatch):
    """The line drawn before any step (no loss yet) and one with no description fit the width."""
    line, _, ncols = _meter(monkeypatch, 40, n=0, postfix="")
    assert line.startswith("epoch 4/10:") and "0/100" in line and len(line) <= ncols, line
    line, _, ncols = _meter(monkeypatch, 30, desc="")
    assert line.startswith("37") and "loss=-1.235e+05" in line and len(line) <= ncols, line
