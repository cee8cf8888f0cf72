"""The progress bar and the run's figure as a user sees them: what is written beside a drawn bar,
and figures written in every format without matplotlib's complaints."""

import io
import logging
import sys
import warnings

import numpy as np
import pytest

import zoracle as zo


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _shown_warnings(monkeypatch):
    """Warnings written to ``sys.stderr`` as it is when each is shown (Python's default), not the
    list pytest records them in."""
    monkeypatch.setattr(warnings, "showwarning", lambda message, category, filename, lineno, file=None, line=None:
                        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line)))


def _before(out: str, text: str, start: int = 0) -> str:
    """What a terminal shows before ``text`` on its line (a ``\\r`` goes back to the line's start)."""
    i = out.index(text, start)
    return out[out.rfind("\n", 0, i) + 1:i].rsplit("\r", 1)[-1]


def test_a_warning_in_the_run_starts_a_line_of_its_own_beside_the_bar(monkeypatch):
    """On a terminal, a warning of zoracle's in the middle of a run (a flat loss's, at epoch 0's
    end) continued the bar's line: "train:  50%|...| 5/10 [..., qps=85]/path/run.py:5: UserWarning: train:
    every gradient estimate of epoch 0 ...". It starts a line of its own, as a print in eval_fn does."""
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        _shown_warnings(monkeypatch)
        zo.train(lambda x: 1.0, np.zeros(3), epochs=2, steps_per_epoch=5, optimizer=zo.sgd(0.1), rng=0)
    out = term.getvalue()
    assert "train:" in out and "UserWarning: train: every gradient estimate of epoch 0" in out
    shown = _before(out, "UserWarning: train: every gradient")
    assert shown.startswith(__file__) and "|" not in shown  # its file and line, no part of the bar


@pytest.mark.parametrize("how", ["print", "warning"])
def test_what_the_loss_prints_or_warns_starts_a_line_of_its_own_beside_the_bar(monkeypatch, how):
    """A loss run in this process that prints (or warns: NumPy's overflow) while the bar is drawn:
    its text began after the bar's on the same line."""
    calls, said = [], "LOSS-SAYS"  # (a name: the warning's source line shown does not repeat the text)

    def loss(x):
        calls.append(1)
        if len(calls) == 9:
            if how == "print":
                print(said)
            else:
                warnings.warn(said, RuntimeWarning)
        return float(((x - 1.0) ** 2).sum())

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setattr(sys, "stdout", term)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        _shown_warnings(monkeypatch)
        quiet = zo.train(loss, np.zeros(3), epochs=1, steps_per_epoch=8, optimizer=zo.sgd(0.1), rng=0,
                         progress=False)
        calls.clear()
        shown = zo.train(loss, np.zeros(3), epochs=1, steps_per_epoch=8, optimizer=zo.sgd(0.1), rng=0)
    out = term.getvalue()
    assert np.array_equal(shown.params, quiet.params)
    assert out.count("LOSS-SAYS") == 2 and "train:" in out
    shown = _before(out, "LOSS-SAYS", out.index("train:"))  # in the run with the bar
    assert "|" not in shown and "train" not in shown  # no part of the bar before it on its line


@pytest.mark.parametrize("suffix", [".eps", ".ps"])
def test_a_postscript_figure_is_written_without_matplotlibs_transparency_warning(tmp_path, caplog, suffix):
    """plot="run.eps" logged "The PostScript backend does not support transparency; partially
    transparent artists will be rendered opaque" at the run's end (the step losses' line and the
    grid were drawn half transparent), and the step line came out at full strength. The figure's
    colours are opaque: each the blend it showed over the axes' background."""
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgb

    path = tmp_path / f"run{suffix}"
    with caplog.at_level(logging.WARNING):
        result = zo.train(lambda x: float(((x - 3.0) ** 2).sum()), np.zeros(2), epochs=3, steps_per_epoch=3,
                          optimizer=zo.sgd(0.05), rng=0, progress=False, plot=path)
    assert path.read_bytes().startswith(b"%!PS")
    assert not [r for r in caplog.records if "transparency" in r.getMessage()]
    fig = result.plot()
    ax = fig.axes[0]
    step, mean = ax.get_lines()
    assert step.get_alpha() in (None, 1.0) and ax.xaxis.get_gridlines()[0].get_alpha() in (None, 1.0)
    # the step line as light as it was (C0 at 0.45 over white), the epoch means in the next colour
    np.testing.assert_allclose(to_rgb(step.get_color()), 0.45 * np.array(to_rgb("C0")) + 0.55)
    assert to_rgb(mean.get_color()) == to_rgb("C1")


def test_a_bar_tqdm_disables_is_no_bar_the_steps_are_logged_at_debug(monkeypatch, caplog):
    """TQDM_DISABLE=1 (or a program's ``tqdm.auto.tqdm = partial(tqdm, disable=True)``) hides the
    bar, and the run logged as if it were drawn: no DEBUG record per step, which a run without a
    bar (progress=False) makes. Such a run is one without a bar."""
    import functools

    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", functools.partial(tqdm.auto.tqdm, disable=True))
    kw = dict(epochs=2, steps_per_epoch=3, optimizer=zo.sgd(0.1), rng=0)
    with caplog.at_level(logging.DEBUG, logger="zoracle"):
        hidden = zo.train(lambda x: float(((x - 1.0) ** 2).sum()), np.zeros(3), **kw)
    steps = [r.zoracle for r in caplog.records if getattr(r, "zoracle_event", None) == "step"]
    assert steps == [dict(s) for s in hidden.history.steps]


def test_showing_the_figure_in_a_script_says_how_to_see_it():
    """``result.plot().show()`` in a script raised matplotlib's "Figure.show works only for figures
    managed by pyplot, normally created by pyplot.figure()", which zoracle, not the user, made; and
    plt.show() shows nothing. The error says how to see the figure."""
    pytest.importorskip("matplotlib")
    result = zo.train(lambda x: float(((x - 1.0) ** 2).sum()), np.zeros(2), epochs=1, steps_per_epoch=2,
                      optimizer=zo.sgd(0.1), rng=0, progress=False)
    with pytest.raises(AttributeError, match=r"no pyplot figure .*plt\.show\(\) does not show it.*"
                                             r"fig\.savefig\('run\.png'\) or result\.plot\('run\.png'\)"):
        result.plot().show()
