"""zoracle in a Jupyter notebook: what a cell shows. The tests simulate the notebook's conditions
(ipykernel's stderr: no TTY, yet a ``\\r`` redraws in place; IPython's display of an exception)
and need no Jupyter; the one that runs a real kernel is slow and skips without nbclient."""

from __future__ import annotations

import io
import logging
import os
import re

import numpy as np
import pytest

import zoracle as zo
from zoracle.cli import main


class _NotebookStderr(io.StringIO):
    """A notebook's stderr (ipykernel's OutStream): no TTY, yet it shows a ``\\r`` as a redraw."""


_NotebookStderr.__module__ = "ipykernel.iostream"


def _shown_line_before(text: str, at: int) -> str:
    """What a notebook (or a terminal) shows on the line where ``text[at:]`` starts: a ``\\r`` returns
    to the line's start, and what comes after it replaces what came before."""
    return text[:at].rsplit("\n", 1)[-1].rsplit("\r", 1)[-1]


def test_the_line_a_stopped_run_logs_starts_a_line_of_its_own_not_the_bars(tmp_path, monkeypatch):
    """A cell interrupted inside a step (the kernel's interrupt: KeyboardInterrupt in the oracle) logs
    where its checkpoint stands; the line was written after the bar's text, so the cell showed
    ``train:  26%|██▌ | 26/100 [...]train: stopped inside step 26 ...`` as one line."""
    import sys

    calls = [0]

    def loss(x):
        calls[0] += 1
        if calls[0] > 4 * 3:  # the 5th step's first query (3 queries a step: CGE forward, d = 2)
            raise KeyboardInterrupt
        return float(x @ x)

    class Batches:
        def __call__(self, x):
            return loss(x)

        def bind(self, batch):
            return loss

    stderr = _NotebookStderr()
    handler = logging.StreamHandler(stderr)  # (pytest holds the root logger: logging's last resort writes here)
    logger = logging.getLogger("zoracle")
    logger.addHandler(handler)
    monkeypatch.setattr(sys, "stderr", stderr)
    try:
        with pytest.raises(KeyboardInterrupt):
            zo.train(Batches(), np.ones(2), batches=list(range(10)), epochs=1, optimizer=zo.sgd(0.01), rng=0,
                     checkpoint=tmp_path / "run.npz", progress=True)
    finally:
        logger.removeHandler(handler)
    text = stderr.getvalue()
    at = text.find("train: stopped inside step 4 (KeyboardInterrupt)")
    assert at >= 0, text
    assert "\rtrain:" in text[:at]  # the bar was drawn before it
    assert _shown_line_before(text, at) == "", repr(text)
    assert len(zo.History.from_checkpoint(tmp_path / "run.npz").steps) == 4  # the finished steps are kept


@pytest.mark.parametrize("argv", [
    ["plot", "nosuch.npz", "run.png"],  # refused by the command's check (a ZoracleError being handled)
    ["plot", "run.npz", "run.png", "--x", "epochs"],  # refused by argparse (its ArgumentError being handled)
])
def test_a_usage_error_of_main_is_a_plain_system_exit(argv, tmp_path, monkeypatch, capsys):
    """``zoracle.cli.main([...])`` in a cell: a usage error is SystemExit(2) after its one line, as
    argparse's own; it was raised while another exception was handled, and IPython's display of that
    chain failed (AttributeError: 'tuple' object has no attribute 'tb_frame') instead of showing it."""
    pytest.importorskip("matplotlib", reason="zoracle plot needs the apps extra before it reads its arguments")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as got:
        main(argv)
    exc = got.value
    assert exc.code == 2
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zoracle plot: error: "), err


def test_ipython_shows_a_usage_error_of_main(tmp_path, monkeypatch, capsys):
    """The same through IPython's own formatter (as a notebook shows a SystemExit: the exception only),
    where IPython is installed."""
    ultratb = pytest.importorskip("IPython.core.ultratb", reason="IPython is not installed")
    pytest.importorskip("matplotlib", reason="zoracle plot needs the apps extra before it reads its arguments")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as got:
        main(["plot", "nosuch.npz", "run.png"])
    capsys.readouterr()
    shown = "".join(ultratb.AutoFormattedTB(mode="Context").get_exception_only(SystemExit, got.value))
    shown = re.sub(r"\x1b\[[0-9;]*m", "", shown)  # (the colours of IPython's scheme)
    assert shown.strip().endswith("SystemExit: 2"), shown


@pytest.mark.parametrize("plot", [True, False, np.True_])
def test_plot_as_a_switch_says_how_a_notebook_shows_the_figure(plot):
    """``plot=True`` (meant: draw it inline) was refused as "`plot` must be a file path such as
    'run.png', got bool True": the way to see the figure in a cell was not said."""
    with pytest.raises(zo.ArgumentError) as got:
        zo.train(lambda x: float(x @ x), np.ones(2), epochs=1, progress=False, plot=plot)
    text = str(got.value)
    assert f"got {plot!r}" in text and "plot='run.png'" in text and "result.plot()" in text, text


@pytest.mark.slow
def test_a_notebook_cell_shows_the_bar_the_interrupt_and_mains_exit(tmp_path):
    """A real kernel (skipped without nbclient, nbformat or ipykernel): a run shows one bar (a widget,
    or one text line redrawn in place), an interrupted run's line stands on its own, the next cell
    resumes, and a usage error of main() shows as SystemExit: 2."""
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (Jupyter's tooling)")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (Jupyter's tooling)")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    setup = (f"import sys; sys.path.insert(0, {root!r}); sys.modules['ipywidgets'] = None  # the text bar\n"
             "import numpy as np, zoracle as zo\n"
             "calls = [0]\n"
             "class Stops:\n"
             "    def __call__(self, x): return self.bind(0)(x)\n"
             "    def bind(self, b):\n"
             "        def f(x):\n"
             "            calls[0] += 1\n"
             "            if calls[0] == 13: raise KeyboardInterrupt  # the kernel's interrupt, in step 4\n"
             "            return float(x @ x)\n"
             "        return f\n")
    train = "r = zo.train(Stops(), np.ones(2), batches=list(range(10)), optimizer=zo.sgd(0.01), rng=0, " \
            "checkpoint='run.npz'{})"
    cells = [setup, train.format(""), train.format(", resume=True") + "\nprint(r.steps)",
             "from zoracle.cli import main\nmain(['plot', 'nosuch.npz', 'run.png'])"]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    stopped, resumed, cli = (cell.outputs for cell in nb.cells[1:])
    err = "".join(o.text for o in stopped if o.output_type == "stream" and o.name == "stderr")
    at = err.find("train: stopped inside step 4 (KeyboardInterrupt)")
    assert at >= 0 and "\rtrain:" in err[:at] and _shown_line_before(err, at) == "", repr(err)
    assert [o.ename for o in stopped if o.output_type == "error"] == ["KeyboardInterrupt"]
    assert "".join(o.text for o in resumed if o.output_type == "stream" and o.name == "stdout") == "10\n"
    assert [o.ename for o in resumed if o.output_type == "error"] == []
    assert [(o.ename, o.evalue) for o in cli if o.output_type == "error"] == [("SystemExit", "2")], cli
