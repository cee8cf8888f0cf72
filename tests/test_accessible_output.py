"""zoracle's output as accessible and unusual terminals and displays take it: no ANSI escape code in a
log file, a pipe, a dumb terminal or under NO_COLOR (https://no-color.org); a bar that keeps its
numbers in text (a screen reader reads them, not the blocks); a few lines, not a redraw a step, on
a stream that is no terminal; and a run's figure whose lines differ in more than their colour."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest

import zoracle as zo
import zoracle._bar
from zoracle import cli

#: the clone's root: the programs below import its zoracle
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ESC = "\x1b"
#: an SGR sequence: the escape code that sets a colour
COLOUR = re.compile(r"\x1b\[[0-9;]*m")
#: what draws a bar's body: block elements (U+2580-U+259F), tqdm's ASCII bar, the frame
BODY = re.compile(r"[\u2580-\u259f#|]")

needs_pty = pytest.mark.skipif(not hasattr(os, "openpty") or sys.platform == "win32", reason="no pseudo-terminals")


def _loss(x):
    return float(((x - 1.0) ** 2).sum())


def _fake_clock(monkeypatch):
    """The bar's clock, moved on 0.1 s by the callback returned (one call a step): what tqdm sees of a
    run of many steps without the wait."""
    import tqdm.std

    clock = [1e6]
    monkeypatch.setattr(zoracle._bar, "_bar_clock", lambda: clock[0])
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)  # (no monitor thread on the real clock)
    return lambda event, record, params: clock.__setitem__(0, clock[0] + 0.1) if event == "step" else None


def _side_by_side(runs=2, steps=20):
    """``runs`` runs in threads whose bars are open at once (each waits in its first step's callback
    for the others): tqdm draws them on lines of their own, one below the other."""
    meet = threading.Barrier(runs, timeout=120)
    errors = []

    def one(seed):
        seen = []

        def cb(event, record, params):
            if event == "step" and not seen:
                seen.append(1)
                meet.wait()
        try:
            zo.train(_loss, np.zeros(3), epochs=2, steps_per_epoch=steps // 2, optimizer=zo.sgd(0.1), rng=seed,
                     callbacks=[cb])
        except BaseException as exc:  # (raised in the test's thread, below)
            errors.append(exc)
            meet.abort()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    if errors:
        raise errors[0]


def _everything():
    """What a user's script shows: a run of 500 steps (50 epochs, its epoch lines logged at INFO to
    stderr, as ``logging.basicConfig(level=logging.INFO)`` does), a warning of zoracle's in a run, runs in
    threads beside each other, and the command line's help."""
    logger = logging.getLogger("zoracle")
    handler, level = logging.StreamHandler(sys.stderr), logger.level
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    with pytest.MonkeyPatch.context() as mp:
        tick = _fake_clock(mp)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            zo.train(_loss, np.zeros(3), epochs=50, steps_per_epoch=10, optimizer=zo.sgd(0.01), rng=0,
                     callbacks=[tick])
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        with warnings.catch_warnings():  # written as Python shows a warning: to sys.stderr as it is then
            warnings.simplefilter("always")
            mp.setattr(warnings, "showwarning", lambda message, category, filename, lineno, file=None, line=None:
                       sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line)))
            zo.train(lambda x: 1.0, np.zeros(3), epochs=2, steps_per_epoch=5, optimizer=zo.sgd(0.1), rng=0)
    _side_by_side()  # (on the real clock: the fake one is moved by one run's steps)
    for argv in (["--help"], ["plot", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 0


@pytest.mark.parametrize("env", [{}, {"NO_COLOR": "1"}, {"FORCE_COLOR": "1"}, {"TERM": "dumb"}],
                         ids=["plain", "NO_COLOR", "FORCE_COLOR", "TERM=dumb"])
def test_a_log_file_gets_no_escape_code_and_a_few_lines_of_progress(tmp_path, monkeypatch, env):
    """``python run.py > log 2>&1`` (CI, a pipe): nothing zoracle writes there holds an escape code,
    whatever NO_COLOR, FORCE_COLOR (which makes no terminal of a file) or TERM say; the 500 steps' bar
    is a line every 10 seconds (50 s on the bar's clock: at most 8 lines, not 500 redraws), each line
    whole, with its numbers."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    log = tmp_path / "log.txt"
    with open(log, "w", encoding="utf-8") as stream:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "stderr", stream)
            mp.setattr(sys, "stdout", stream)
            _everything()
    text = log.read_text(encoding="utf-8")
    assert ESC not in text and "\r" not in text, [line for line in text.splitlines() if ESC in line or "\r" in line]
    lines = text.splitlines()
    big = [line for line in lines if "/500 " in line]
    assert 2 <= len(big) <= 8, big
    assert big[-1].startswith("epoch 50/50: 100%") and "500/500" in big[-1] and "loss=" in big[-1], big[-1]
    assert sum(line.startswith("INFO:zoracle:epoch ") for line in lines) == 50
    assert "UserWarning: train: every gradient estimate of epoch 0" in text
    assert sum("/20 " in line for line in lines) >= 4  # the runs in threads: a first and a last line each
    assert "usage: zoracle [-h]" in text and "usage: zoracle plot" in text and "usage: zoracle demo" in text


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
def test_every_progress_line_reads_as_numbers_without_its_blocks(tmp_path, monkeypatch, encoding):
    """A screen reader or a braille display reads a log line by line: each progress line, with its bar's
    blocks taken away, still says how far the run is (percent, step of steps), how fast, and its loss
    and learning rate; a stream in ASCII gets tqdm's '#' bar (no block it cannot write)."""
    log = tmp_path / "log.txt"
    tick = _fake_clock(monkeypatch)
    with open(log, "w", encoding=encoding) as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        zo.train(_loss, np.zeros(3), epochs=5, steps_per_epoch=100, optimizer=zo.sgd(0.01), rng=0, callbacks=[tick])
    lines = log.read_text(encoding=encoding).splitlines()
    assert len(lines) >= 3
    for line in lines:
        said = BODY.sub("", line)
        assert re.search(r"\d+%", said) and re.search(r"\d+/500 ", said), line
        assert re.search(r"\d{2}:\d{2}<", said), line  # elapsed and left
    for line in lines[1:]:  # (the first is drawn before any step: no loss yet)
        said = BODY.sub("", line)
        assert re.search(r"loss=[-+.\de]+, lr=[-+.\de]+, qps=\d", said), line
        assert re.search(r"\d step/s|\dstep/s|s/step", said), line


class _Pty:
    """A pseudo-terminal: ``stream`` is its terminal side (a real TTY, raw: no newline made ``\\r\\n``,
    so every ``\\r`` read is the program's), ``read()`` what reached the screen's side."""

    def __init__(self, columns=200):
        import fcntl
        import struct
        import termios
        import tty

        self._master, slave = os.openpty()
        tty.setraw(slave)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        self.stream = open(slave, "w", encoding="utf-8")
        self._got = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # (EIO: the terminal's side closed)
                return
            if not data:
                return
            self._got.append(data)

    def read(self) -> str:
        self.stream.close()
        self._reader.join(60)
        os.close(self._master)
        return b"".join(self._got).decode("utf-8")


def _pty():
    try:
        return _Pty()
    except OSError as exc:  # (a container without /dev/pts)
        pytest.skip(f"no pseudo-terminal here ({exc})")


@contextlib.contextmanager
def _on_a_pty(monkeypatch, term):
    """stdout and stderr on a pseudo-terminal of type ``term``; what it showed, in the list yielded."""
    monkeypatch.setenv("TERM", term)
    pty, seen = _pty(), []
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "stderr", pty.stream)
            mp.setattr(sys, "stdout", pty.stream)
            yield seen
    finally:
        seen.append(pty.read())


@needs_pty
@pytest.mark.parametrize("term", ["dumb", "xterm-256color"])
def test_bars_side_by_side_on_a_dumb_terminal_move_no_cursor(monkeypatch, term):
    """Emacs' shell (TERM=dumb: no cursor movement) showed the escape codes of two runs' bars in
    threads as text, "ESC [A" a redraw (tqdm draws the second bar a line down and moves back up).
    There the bars are lines, as on a log file; a terminal that moves its cursor keeps tqdm's bars,
    redrawn in place."""
    with _on_a_pty(monkeypatch, term) as seen:
        _side_by_side()
    text = seen[0]
    if term == "dumb":
        assert ESC not in text and "\r" not in text, repr(text[:400])
        progress = [line for line in text.splitlines() if "/20 " in line]
        assert len(progress) >= 4 and all(re.search(r"\d+%", line) for line in progress), progress
    else:
        assert "\r" in text and "/20 " in text


@needs_pty
def test_a_terminal_under_no_color_gets_no_colour_code(monkeypatch):
    """NO_COLOR=1 on a terminal: the bar redrawn in place, the epoch lines logged, a warning and the
    command line's help hold no colour code (zoracle adds none; tqdm's bar has none of its own)."""
    monkeypatch.setenv("NO_COLOR", "1")
    with _on_a_pty(monkeypatch, "xterm-256color") as seen:
        _everything()
    text = seen[0]
    assert not COLOUR.search(text), COLOUR.findall(text)[:5]
    assert "\r" in text and "500/500" in text and "usage: zoracle plot" in text


_TQDM_COLOUR = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import zoracle as zo
    from test_accessible_output import _Pty

    def run(where, **env):
        for k in ("NO_COLOR", "FORCE_COLOR"):
            os.environ.pop(k, None)
        os.environ.update(env)
        if where == "file":
            sys.stderr = open(os.path.join(sys.argv[2], "log.txt"), "w+", encoding="utf-8")
        else:
            pty = _Pty()
            sys.stderr = pty.stream
        zo.train(lambda x: float(x @ x), np.ones(3), epochs=1, steps_per_epoch=5, optimizer=zo.sgd(0.1), rng=0)
        sys.stderr.flush()
        if where == "file":
            sys.stderr.seek(0)
            text = sys.stderr.read()
            sys.stderr.close()
        else:
            text = pty.read()
        sys.stderr = sys.__stderr__
        return text

    print(json.dumps({"file": run("file"), "file FORCE_COLOR": run("file", FORCE_COLOR="1"),
                      "dumb": run("pty", TERM="dumb"), "terminal": run("pty", TERM="xterm-256color"),
                      "terminal NO_COLOR": run("pty", TERM="xterm-256color", NO_COLOR="1")}))
""")


@needs_pty
@pytest.mark.skipif(not hasattr(importlib.import_module("tqdm.utils"), "envwrap"),
                    reason="this tqdm reads no TQDM_* variables (its TQDM_COLOUR colours nothing)")
def test_tqdms_own_colour_stays_off_logs_dumb_terminals_and_no_color(tmp_path):
    """TQDM_COLOUR=green (set for tqdm's bars in a shell's profile) wrote "ESC [32m" into every line
    of a log file and on a dumb terminal, and NO_COLOR did not take it off. It colours the bar on a
    terminal still, and on a log when FORCE_COLOR says the log shows colours (a CI's)."""
    _pty().read()  # (skipped where there is none)
    env = dict(os.environ, TQDM_COLOUR="green", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _TQDM_COLOUR, os.path.dirname(os.path.abspath(__file__)),
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout)
    assert all("/5 " in text for text in seen.values()), seen  # (each drew its bar)
    coloured = {where for where, text in seen.items() if COLOUR.search(text)}
    assert coloured == {"terminal", "file FORCE_COLOR"}, {k: v[:300] for k, v in seen.items()}
    assert ESC not in seen["file"] and ESC not in seen["dumb"]


def _lines_of(fig):
    """Each panel's lines as (label, linestyle, marker, linewidth, grey), ``grey`` the colour's
    luminance (ITU-R BT.601: what a greyscale print shows)."""
    from matplotlib.colors import to_rgb

    return [[(line.get_label(), line.get_linestyle(), line.get_marker(), line.get_linewidth(),
              float(np.dot(to_rgb(line.get_color()), [0.299, 0.587, 0.114]))) for line in ax.get_lines()]
            for ax in fig.axes]


def _history_with_a_bad_metric():
    calls = []

    def metric(params):
        calls.append(1)
        return {"acc": float("nan") if len(calls) == 2 else 0.1 * len(calls)}
    return zo.train(_loss, np.zeros(3), epochs=4, steps_per_epoch=5, optimizer=zo.sgd(0.05), rng=0, progress=False,
                    eval_fn=metric)


@pytest.mark.parametrize("rc", [{}, {"axes.prop_cycle": "cycler(color=['k'])"}], ids=["default", "one colour"])
def test_the_figures_lines_differ_in_more_than_their_colour(tmp_path, rc):
    """A greyscale print or a colour-blind reader tells the lines of ``plot=`` / ``History.plot`` apart:
    in each panel no two lines share their line style, marker and width (the step losses a thin line,
    the epoch means dots on a thicker one, a NaN metric an 'x'), also in a style of one colour; and in
    the default colours the two loss lines differ in grey too. Drawn with Agg."""
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install -e '.[apps]')")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    result = _history_with_a_bad_metric()
    with matplotlib.rc_context(rc):
        fig = result.plot(tmp_path / "run.png")
    FigureCanvasAgg(fig).draw()
    assert (tmp_path / "run.png").read_bytes().startswith(b"\x89PNG")
    panels = _lines_of(fig)
    assert [line[0] for line in panels[0]] == ["step", "epoch mean"] and len(panels) == 2
    assert len(panels[1]) == 2 and panels[1][1][0] == "NaN or inf"  # the metric's line, its NaN's mark
    for lines in panels:
        looks = [(style if style not in ("None", "") else None, marker if marker not in ("None", "") else None,
                  width) for _, style, marker, width, _ in lines]
        assert len(set(looks)) == len(looks), looks
        # each line is a line, or has a marker (a line style "None" with no marker draws nothing)
        assert all(style or marker for style, marker, _ in looks), looks
    (_, _, _, step_width, step_grey), (_, _, mean_marker, mean_width, mean_grey) = panels[0]
    assert mean_marker not in ("None", "") and mean_width > step_width
    if not rc:
        assert abs(step_grey - mean_grey) > 0.1, (step_grey, mean_grey)
    legend = fig.axes[0].get_legend()  # what each line is, in words
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == ["step", "epoch mean"]
