"""Plots of a run on request: ``History.plot``, ``TrainResult.plot`` and ``train(plot=path)``."""

from __future__ import annotations

import argparse
import warnings

import os
import re
import sys

import numpy as np
import pytest

import zoracle as zo
from zoracle._plot import step_queries
from zoracle._pruning import grasp_queries

pytest.importorskip("matplotlib")


def loss(x):
    return float(((x - 1.0) ** 2).sum())


def _sparse(**kw):
    """A run whose first step comes after ZO-GraSP's queries: 3 epochs of 4 steps, err every 2nd epoch."""
    return zo.train(loss, np.linspace(-0.5, 0.5, 6), epochs=3, steps_per_epoch=4, sparsity=0.5, blocks=[slice(0, 3), slice(3, 6)],
                    grasp_directions=4, optimizer=zo.sgd(0.1), rng=0, progress=False, eval_every=2,
                    eval_fn=lambda p: {"err": float(np.abs(p - 1).max())}, **kw)


def _tampered(src, out, edit):
    """A copy of checkpoint ``src`` at ``out``, its header changed by ``edit(meta)``."""
    arrays, meta = zo.load_checkpoint(src)
    edit(meta)
    for k in ("format", "version"):
        meta.pop(k)
    zo.save_checkpoint(out, arrays, meta)
    return out


def test_steps_count_the_runs_queries_zo_grasp_included():
    r = _sparse()
    steps, epochs = r.history.steps, r.history.epochs
    total = r.history.column("total_nfev")
    assert total[0] == grasp_queries(4) + steps[0]["nfev"]
    np.testing.assert_array_equal(np.diff(total), r.history.column("nfev")[1:])
    assert total[-1] == r.nfev
    for e in epochs:  # an epoch's total is its last step's
        assert e["total_nfev"] == [s["total_nfev"] for s in steps if s["epoch"] == e["epoch"]][-1]


def test_the_figure_draws_the_history_it_is_given(tmp_path):
    r = _sparse()
    h = r.history
    fig = r.plot(tmp_path / "run.png")
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["run.png"]  # no temporary file left
    loss_ax, err_ax = fig.axes
    step_line, epoch_line = loss_ax.lines
    np.testing.assert_array_equal(step_line.get_xdata(), h.column("total_nfev"))
    np.testing.assert_array_equal(step_line.get_ydata(), h.column("loss"))
    mids = [h.column("total_nfev")[h.column("epoch") == e].mean() for e in range(3)]
    np.testing.assert_allclose(epoch_line.get_xdata(), mids)
    np.testing.assert_array_equal(epoch_line.get_ydata(), h.column("loss", "epoch"))
    assert err_ax.get_ylabel() == "err"
    measured = [e for e in h.epochs if "err" in e]
    assert [e["epoch"] for e in measured] == [1, 2]  # eval_every=2, and the last epoch
    np.testing.assert_array_equal(err_ax.lines[0].get_xdata(), [e["total_nfev"] for e in measured])
    np.testing.assert_array_equal(err_ax.lines[0].get_ydata(), [e["err"] for e in measured])

    by_step = h.plot(x="step", title="by step")
    np.testing.assert_array_equal(by_step.axes[0].lines[0].get_xdata(), np.arange(1, 13))
    np.testing.assert_array_equal(by_step.axes[1].lines[0].get_xdata(), [8, 12])  # steps done at epochs 1 and 2
    assert by_step.get_suptitle() == "by step"


def test_train_writes_the_plot_at_the_end_in_the_suffixs_format(tmp_path):
    r = _sparse(plot=tmp_path / "sub" / "run.pdf")
    assert (tmp_path / "sub" / "run.pdf").read_bytes()[:5] == b"%PDF-"
    svg = tmp_path / "run.svg"
    zo.train(loss, np.zeros(3), epochs=5, progress=False, plot=str(svg))
    assert b"<svg" in svg.read_bytes()[:500]
    assert r.history.steps[-1]["total_nfev"] == r.nfev


def test_a_plot_that_fails_at_the_end_warns_and_keeps_the_result(tmp_path, monkeypatch):
    import zoracle._plot as plot_module

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plot_module, "plot_history", full_disk)
    with pytest.warns(UserWarning, match=r"the plot .*run\.png' could not be written \(OSError: .*No space left"):
        r = zo.train(loss, np.zeros(3), epochs=4, progress=False, plot=tmp_path / "run.png")
    assert r.steps == 4 and np.isfinite(r.params).all()


def test_a_resumed_run_plots_every_step_with_its_true_query_count(tmp_path):
    ckpt = tmp_path / "c.npz"
    whole = _sparse()
    first = _sparse(checkpoint=ckpt, callbacks=[lambda event, rec, p: event == "epoch" and rec["epoch"] == 0])
    assert first.epochs == 1
    resumed = _sparse(checkpoint=ckpt, resume=ckpt, plot=tmp_path / "run.png")
    np.testing.assert_array_equal(resumed.history.column("total_nfev"), whole.history.column("total_nfev"))
    assert resumed.history.steps[-1]["total_nfev"] == resumed.nfev == whole.nfev


def test_histories_written_before_steps_carried_total_nfev_are_filled_in(tmp_path):
    r = _sparse()
    old_steps = tuple({k: v for k, v in s.items() if k != "total_nfev"} for s in r.history.steps)
    want = r.history.column("total_nfev")
    np.testing.assert_array_equal(step_queries(old_steps, r.history.epochs), want)  # anchored at epoch 0's total
    half = old_steps[:5] + r.history.steps[5:]
    np.testing.assert_array_equal(step_queries(half, ()), want)  # anchored at the first step that has one
    np.testing.assert_array_equal(step_queries(old_steps, ()), np.cumsum(r.history.column("nfev")))  # nothing to anchor

    # such a checkpoint still resumes (its records given their totals back, as the uninterrupted
    # run's: tests/test_upgrade_checkpoints.py), and its plot starts after ZO-GraSP's queries
    ckpt = tmp_path / "c.npz"
    _sparse(checkpoint=ckpt, callbacks=[lambda event, rec, p: event == "epoch" and rec["epoch"] == 0])
    _tampered(ckpt, ckpt, lambda m: [s.pop("total_nfev") for s in m["history"]["steps"]])
    resumed = _sparse(checkpoint=tmp_path / "d.npz", resume=ckpt)
    assert [s["total_nfev"] for s in resumed.history.steps] == want.tolist()
    fig = resumed.plot()
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_xdata(), want)


def _counting():
    calls = []
    return calls, lambda x: calls.append(1) or loss(x)


@pytest.mark.parametrize("plot, match", [
    ("run.xyz", r"`plot` .*cannot write '\.xyz' files; use a path ending in one of .*\.png"),
    (".", r"`plot` '.' is a directory; pass a file path such as '\./run\.png'"),  # it suggested run.npz
    (3, "`plot` must be a file path such as 'run.png', got int"),
    ("", "`plot` is an empty path"),  # it passed, and the figure failed after the run
    ("null", "`plot` '.*null' exists and is not a regular file"),  # a save replaced the device with a file
    ("run.pgf", "writes '.pgf' through .*, which is not installed"),  # failed after the run without TeX
])
def test_a_plot_that_cannot_be_written_fails_before_the_first_query(tmp_path, monkeypatch, plot, match):
    monkeypatch.chdir(tmp_path)
    if plot == "run.pgf":
        import shutil

        import matplotlib

        if shutil.which(matplotlib.rcParams["pgf.texsystem"]):
            pytest.skip("TeX is installed here: .pgf can be written")
    before = os.listdir(tmp_path)
    if plot == "null":
        os.mkfifo(tmp_path / "null")  # not a regular file, as /dev/null is not
        before = os.listdir(tmp_path)
        plot = str(tmp_path / "null")
    calls, oracle = _counting()
    with pytest.raises(zo.ArgumentError, match=match):
        zo.train(oracle, np.zeros(3), epochs=3, progress=False, plot=plot)
    assert calls == [] and os.listdir(tmp_path) == before


def test_no_matplotlib_is_named_with_the_fix_before_the_first_query(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    calls, oracle = _counting()
    with pytest.raises(zo.ArgumentError, match="`plot` needs matplotlib; install it with: pip install matplotlib"):
        zo.train(oracle, np.zeros(3), epochs=3, progress=False, plot=tmp_path / "run.png")
    assert calls == []
    result = zo.train(oracle, np.zeros(3), epochs=3, progress=False)  # no plot asked for: no matplotlib needed
    with pytest.raises(zo.ArgumentError, match="needs matplotlib"):
        result.plot()


def test_many_metrics_wrap_into_rows_of_four():
    r = zo.train(loss, np.zeros(2), epochs=3, progress=False,
                 eval_fn=lambda p: {f"m{i}": float(i * p.sum()) for i in range(5)})
    fig = r.plot()
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "m0", "m1", "m2", "m3", "m4"]
    rows = [ax.get_subplotspec().rowspan.start for ax in fig.axes]
    assert rows == [0, 0, 0, 0, 1, 1]
    m4 = r.history.column("m4", "epoch")
    assert np.all(m4 > 0)
    np.testing.assert_array_equal(fig.axes[5].lines[0].get_ydata(), m4)


def test_a_metric_name_with_dollar_signs_is_drawn_as_written(tmp_path):
    # "$x^{$" was parsed as TeX: the figure failed to draw ("Expected end_group")
    r = zo.train(loss, np.zeros(2), epochs=2, progress=False, eval_fn=lambda p: {"cost $x^{$ usd": 1.0})
    fig = r.plot(tmp_path / "a.png")
    assert fig.axes[1].get_ylabel() == "cost $x^{$ usd"
    assert (tmp_path / "a.png").stat().st_size > 0


def test_plot_refuses_an_empty_history_and_an_unknown_axis():
    with pytest.raises(zo.ArgumentError, match="no steps to plot"):
        zo.History().plot()
    r = zo.train(loss, np.zeros(2), epochs=2, progress=False)
    with pytest.raises(zo.ArgumentError, match="`x` must be one of 'queries', 'step', 'seconds', got 'epoch'"):
        r.plot(x="epoch")


def test_a_checkpoint_gives_back_the_history_of_the_run_so_far(tmp_path):
    ckpt = tmp_path / "run.npz"
    first = _sparse(checkpoint=ckpt, callbacks=[lambda event, rec, p: event == "epoch" and rec["epoch"] == 1])
    assert first.epochs == 2
    assert zo.History.from_checkpoint(ckpt) == first.history
    whole = _sparse(checkpoint=ckpt, resume=ckpt)
    assert zo.History.from_checkpoint(str(ckpt)) == whole.history


def test_zoracle_plot_draws_a_checkpoint(tmp_path, capsys):
    from zoracle.cli import main

    ckpt = tmp_path / "run.npz"
    r = _sparse(checkpoint=ckpt)
    assert main(["plot", str(ckpt), str(tmp_path / "run.svg"), "--x", "step"]) == 0
    assert capsys.readouterr().out.strip() == f"{tmp_path / 'run.svg'}: 12 steps, 3 epochs, {r.nfev:,} queries"
    assert b"<svg" in (tmp_path / "run.svg").read_bytes()[:500]


def test_zoracle_plot_of_one_checkpoint_writes_the_png_beside_it(tmp_path, capsys):
    """``zoracle plot run.npz``, as the docs write it, was a usage error (FIGURE required): it writes
    run.png beside the checkpoint, the figure ``zoracle plot run.npz run.png`` writes, and again over
    it while the run goes on."""
    from zoracle.cli import main

    ckpt = tmp_path / "run.npz"
    r = _sparse(checkpoint=ckpt)
    assert main(["plot", str(ckpt), str(tmp_path / "named.png")]) == 0
    capsys.readouterr()
    (tmp_path / "run.png").write_bytes(b"an earlier drawing")
    assert main(["plot", str(ckpt)]) == 0
    assert capsys.readouterr().out.strip() == f"{tmp_path / 'run.png'}: 12 steps, 3 epochs, {r.nfev:,} queries"
    assert (tmp_path / "run.png").read_bytes() == (tmp_path / "named.png").read_bytes()  # the same figure
    assert sorted(os.listdir(tmp_path)) == ["named.png", "run.npz", "run.png"]
    # a checkpoint whose own name ends in .png is never drawn over
    odd = tmp_path / "odd.png"
    odd.write_bytes(ckpt.read_bytes())
    assert main(["plot", str(odd), "--x", "step"]) == 0
    assert odd.read_bytes() == ckpt.read_bytes()
    assert (tmp_path / "odd.png.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(sys.platform != "linux", reason="a folder named with bytes that are not UTF-8")
@pytest.mark.parametrize("name", ["job$1_$x", os.fsdecode(b"lat\xe9")])
def test_zoracle_plot_draws_a_checkpoint_whose_path_has_dollars_or_undecodable_bytes(tmp_path, capsys, name):
    """The default title is the checkpoint's path, drawn as written: two '$' are no TeX (a
    ParseSyntaxException), a byte that is not UTF-8 (a surrogate escape) no TypeError of matplotlib."""
    from zoracle.cli import main

    folder = tmp_path / name
    folder.mkdir()
    ckpt = folder / "run.npz"
    _sparse(checkpoint=ckpt)
    assert main(["plot", str(ckpt), str(tmp_path / "run.png")]) == 0
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    escaped = str(ckpt).replace("$", r"\$")  # as `zoracle plot` passes its default title
    fig = zo.History.from_checkpoint(ckpt).plot(title=escaped)
    assert fig._suptitle.get_text() == escaped.replace("\udce9", "\ufffd")
    fig.canvas.draw()  # drawn: no ParseSyntaxException, no TypeError
    # a title the caller writes keeps matplotlib's mathtext
    assert zo.History.from_checkpoint(ckpt).plot(title=r"$\mu$ = 1e-3")._suptitle.get_parse_math() is True


@pytest.mark.parametrize("what, match", [
    ("missing", r"checkpoint '.*nope\.npz' does not exist or is not a file; pass the file that zo\.train"),
    ("record", r"header field 'history\.steps\[3\]\.total_nfev' is -1"),
    ("counter", r"header field 'step' is 7, expected the number of step records \(12\)"),
    ("figure", r"`FIGURE` '.*run\.xyz': matplotlib cannot write '\.xyz' files"),
])
def test_zoracle_plot_errors_are_one_line_naming_the_field(tmp_path, capsys, what, match):
    from zoracle.cli import main

    ckpt = tmp_path / "run.npz"
    _sparse(checkpoint=ckpt)
    figure = tmp_path / ("run.xyz" if what == "figure" else "run.png")
    if what == "missing":
        ckpt = tmp_path / "nope.npz"
    elif what == "record":
        ckpt = _tampered(ckpt, tmp_path / "bad.npz", lambda m: m["history"]["steps"][3].__setitem__("total_nfev", -1))
    elif what == "counter":
        ckpt = _tampered(ckpt, tmp_path / "bad.npz", lambda m: m.__setitem__("step", 7))
    if what in ("missing", "figure"):  # a usage error, refused before any work: exit 2, as argparse's
        with pytest.raises(SystemExit) as info:
            main(["plot", str(ckpt), str(figure)])
        assert info.value.code == 2
    else:
        assert main(["plot", str(ckpt), str(figure)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zoracle plot: error: ")
    assert re.search(match, err[0]), err[0]
    assert not figure.exists()


def test_zoracle_plot_refuses_to_draw_over_its_checkpoint(tmp_path, capsys):
    """``zoracle plot runckpt runckpt`` replaced the checkpoint with the PNG (a name without
    ``.npz`` was not refused as a figure format)."""
    from zoracle.cli import main

    ckpt = tmp_path / "runckpt"
    _sparse(checkpoint=ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(SystemExit) as info:  # a usage error: exit 2
        main(["plot", str(ckpt), str(ckpt)])
    assert info.value.code == 2
    assert "is the checkpoint: the figure would replace it" in capsys.readouterr().err
    assert ckpt.read_bytes() == before


def test_a_plot_of_a_run_without_epochs_is_refused_before_it_runs(tmp_path):
    """It warned at the end to draw it again with result.plot(path), which failed too."""
    with pytest.raises(zo.ArgumentError, match="`plot` was given with epochs=0"):
        zo.train(loss, np.zeros(3), epochs=0, progress=False, plot=tmp_path / "run.png")


def test_zoracle_plot_of_a_checkpoint_without_steps_leaves_no_folder(tmp_path, capsys):
    """A run of epochs=0 checkpoints no step: the figure's folders were made before the empty
    history was refused, and stayed behind, empty."""
    from zoracle.cli import main

    ckpt = tmp_path / "e0.npz"
    zo.train(loss, np.zeros(3), epochs=0, progress=False, checkpoint=ckpt)
    assert main(["plot", str(ckpt), str(tmp_path / "newfig" / "deeper" / "e0.png")]) == 1
    assert "holds no steps to plot" in capsys.readouterr().err
    assert not (tmp_path / "newfig").exists()


def test_zoracle_plot_of_a_missing_checkpoint_over_an_existing_figure_is_one_line(tmp_path, capsys):
    """The same-file check raised FileNotFoundError (a traceback) for the missing checkpoint."""
    from zoracle.cli import main

    (tmp_path / "run.png").write_bytes(b"old figure")
    with pytest.raises(SystemExit) as info:  # a usage error: exit 2
        main(["plot", str(tmp_path / "missing.npz"), str(tmp_path / "run.png")])
    assert info.value.code == 2
    assert "does not exist or is not a file" in capsys.readouterr().err


def test_a_path_from_the_home_folder_is_expanded(tmp_path, monkeypatch):
    """``checkpoint="~/runs/a.npz"`` and ``plot="~/runs/a.png"`` wrote into a folder named ``~``
    in the working directory, while the CLI's own check expanded ``~`` (``zoracle demo --plot
    '~/new/a.png'`` made $HOME/new, trained, then failed to save): both mean the home folder now."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    r = zo.train(loss, np.ones(6), epochs=2, steps_per_epoch=2, optimizer=zo.sgd(0.1), rng=0, progress=False,
                 checkpoint="~/runs/a.npz", plot="~/runs/a.png")
    r.plot("~/runs/b.svg")
    assert sorted(os.listdir(tmp_path / "home" / "runs")) == ["a.npz", "a.png", "b.svg"]
    assert not (tmp_path / "~").exists()
    assert len(zo.History.from_checkpoint("~/runs/a.npz").steps) == 4
    # the guards compare the expanded paths (a review found a figure replacing the checkpoint)
    kw = dict(epochs=3, steps_per_epoch=2, optimizer=zo.sgd(0.1), rng=0, progress=False)
    with pytest.raises(zo.ArgumentError, match="`plot` and `checkpoint` are the same file"):
        zo.train(loss, np.ones(6), checkpoint="~/runs/c.png", plot=str(tmp_path / "home/runs/c.png"), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # resuming it: no "holds an earlier run" warning
        assert zo.train(loss, np.ones(6), checkpoint=tmp_path / "home/runs/a.npz", resume="~/runs/a.npz", **kw).steps == 6
    from zoracle import cli

    with pytest.raises(zo.ArgumentError, match="is the checkpoint"):
        cli._load("plot").main(argparse.Namespace(checkpoint="~/runs/a.npz", figure=str(tmp_path / "home/runs/a.npz"),
                                                  x="queries", title=None))
    assert len(zo.History.from_checkpoint("~/runs/a.npz").steps) == 6


def test_a_history_with_nan_metrics_equals_its_checkpoints(tmp_path):
    """NaN never equals NaN: a run whose eval_fn returned a NaN metric compared unequal with the
    history read back from its own checkpoint (the docs' equality check silently needed finite
    metrics)."""
    r = zo.train(loss, np.ones(6), epochs=2, steps_per_epoch=2, optimizer=zo.sgd(0.1), rng=0, progress=False,
                 eval_fn=lambda p: {"diverged": float("nan"), "err": float(np.abs(p - 1).max())},
                 checkpoint=tmp_path / "run.npz")
    saved = zo.History.from_checkpoint(tmp_path / "run.npz")
    assert np.isnan(saved.column("diverged", "epoch")).all() and saved == r.history
    other = zo.History(r.history.steps, r.history.epochs[:1])
    assert saved != other and saved != "not a history"


def test_a_metric_an_evaluation_returned_as_nan_or_inf_is_a_gap_not_joined_over():
    """NaN and inf values of a metric were dropped as if the epoch had not been evaluated, and the
    line joined 0.9 to 0.8 over them: the divergence did not show."""
    from zoracle._plot import plot_history

    f = lambda x: float(x @ x)  # noqa: E731
    values = iter([0.9, np.inf, np.nan, 0.8])
    res = zo.train(f, np.ones(3), epochs=4, progress=False, eval_fn=lambda p: {"acc": next(values)})
    line = plot_history(res.history, x="step").axes[1].lines[0]
    x, y = line.get_data()
    assert list(x) == [1, 2, 3, 4] and y[0] == 0.9 and y[3] == 0.8 and np.isnan(y[1]) and np.isnan(y[2])


def test_a_run_of_one_step_draws_its_loss():
    """A line through one point draws nothing: the loss panel of a one-step run (or of a
    checkpoint read after its first step) was empty."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    def pixels(fig):
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba()).copy()

    r = zo.train(loss, np.ones(6), epochs=1, optimizer=zo.sgd(0.1), rng=0, progress=False)
    fig = r.plot(x="step")
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [1] and list(line.get_ydata()) == [r.loss]
    drawn = pixels(fig)
    line.set_visible(False)
    assert (pixels(fig) != drawn).any()  # the step's loss shows in the figure


def test_a_run_and_its_checkpoint_draw_the_same_panels_in_the_same_order(tmp_path):
    """A checkpoint stores each record's fields sorted: `zoracle plot run.npz` drew eval_fn's
    metrics in another order than result.plot() of the same run (auc before test_acc)."""
    r = zo.train(loss, np.ones(6), epochs=2, optimizer=zo.sgd(0.1), rng=0, progress=False,
                 checkpoint=tmp_path / "run.npz", eval_fn=lambda p: {"test_acc": 0.5, "auc": 0.7})
    saved = zo.History.from_checkpoint(tmp_path / "run.npz")
    assert saved == r.history
    shown = [ax.get_ylabel() for ax in r.plot().axes]
    assert sorted(shown[1:]) == ["auc", "test_acc"]
    assert [ax.get_ylabel() for ax in saved.plot().axes] == shown


def test_the_figure_shows_as_an_image_where_a_notebook_ends_a_cell_with_it():
    """A Figure made without pyplot had no image of its own: in a fresh Jupyter kernel,
    ``result.plot()`` ending a cell showed the text ``<Figure size 420x340 with 1 Axes>`` only."""
    from matplotlib.figure import Figure
    from matplotlib.image import imread
    import io

    fig = _sparse().plot()
    assert isinstance(fig, Figure)
    png = fig._repr_png_()  # what IPython's image/png formatter asks for when no printer is registered
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    ref = io.BytesIO()
    fig.savefig(ref, format="png", bbox_inches="tight")  # as matplotlib-inline draws a figure
    ref.seek(0)
    assert imread(io.BytesIO(png)).shape == imread(ref).shape


@pytest.mark.slow
def test_a_notebook_shows_the_figure_once(tmp_path):
    """The same in a kernel (skipped without Jupyter's tooling): an image in a fresh kernel, and one
    image, not two, where ``%matplotlib inline`` registered matplotlib's own printer."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = ("import sys; sys.path.insert(0, {!r})\nimport numpy as np, zoracle as zo\n"
           "zo.train(lambda x: float(np.sum(x ** 2)), np.ones(3), epochs=3, progress=False).plot()").format(root)
    for first in ("", "%matplotlib inline"):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(first), nbformat.v4.new_code_cell(run)]
        nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
        shown = [o for o in nb.cells[1].outputs if "image/png" in o.get("data", {})]
        assert len(shown) == 1, (first, nb.cells[1].outputs)


def test_zoracle_plot_a_figure_whose_write_fails_is_one_line(tmp_path, capsys, monkeypatch):
    """The path check writes one byte; a disk with less room than the PNG failed in savefig with a
    Python traceback (PIL's fp.write: OSError ENOSPC) instead of the command's one-line error."""
    from matplotlib.figure import Figure

    from zoracle.cli import main

    ckpt = tmp_path / "run.npz"
    _sparse(checkpoint=ckpt)

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    figure = tmp_path / "run.png"
    assert main(["plot", str(ckpt), str(figure)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zoracle plot: error: FIGURE "), err
    assert "could not be written (OSError: No space left on device)" in err[0]
    assert not figure.exists() and os.listdir(tmp_path) == ["run.npz"]
