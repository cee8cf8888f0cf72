"""A run analysed afterwards: several histories in one figure (``History.plot_runs``), a wall-time
axis (``x="seconds"``), and the history's records as a table."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo

pytest.importorskip("matplotlib")


class Regression:  # a DataOracle: one minibatch a step
    def __init__(self):
        rng = np.random.default_rng(0)
        self.X = rng.standard_normal((80, 4))
        self.y = self.X @ np.ones(4)

    def bind(self, batch):
        xb, yb = batch
        return lambda w: float(np.mean((xb @ w - yb) ** 2))


def _run(estimator, eval_fn, **kw):
    """3 epochs of 4 steps, evaluated every 2nd epoch (and the last)."""
    oracle = Regression()
    data = zo.Minibatches((oracle.X, oracle.y), batch_size=20, seed=0)
    evals = {} if eval_fn is None else {"eval_fn": eval_fn, "eval_every": 2}
    return zo.train(oracle, np.zeros(4), batches=data, epochs=3, estimator=estimator, optimizer=zo.sgd(0.05),
                    rng=0, progress=False, **evals, **kw)


def _pair():
    cge = _run(zo.CGE(), lambda p: {"err": float(np.abs(p - 1).max())})
    rge = _run(zo.RGE(directions=2), lambda p: {"norm": float(np.linalg.norm(p))})
    return cge, rge


def _line(ax, label):
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return line


def test_plot_runs_draws_each_run_over_the_others(tmp_path):
    cge, rge = _pair()
    fig = zo.History.plot_runs({"cge": cge, "rge": rge.history}, tmp_path / "cmp.png", title="estimators")
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "err", "norm"]  # every run's metrics, by name
    loss_ax, err_ax, norm_ax = fig.axes
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["cge", "rge"]
    for name, r in (("cge", cge), ("rge", rge)):
        h = r.history
        line = _line(loss_ax, name)  # each epoch's mean loss, at the middle of its steps' queries
        np.testing.assert_array_equal(line.get_ydata(), h.column("loss", "epoch"))
        q, e = h.column("total_nfev"), h.column("epoch")
        np.testing.assert_allclose(line.get_xdata(), [q[e == k].mean() for k in range(3)])
    assert _line(loss_ax, "cge").get_color() != _line(loss_ax, "rge").get_color()
    # a metric in the panel of its name, only for the run that has it
    assert [ln.get_label() for ln in err_ax.get_lines()] == ["cge"]
    assert [ln.get_label() for ln in norm_ax.get_lines()] == ["rge"]
    np.testing.assert_array_equal(_line(err_ax, "cge").get_xdata(), cge.history.column("total_nfev", "epoch")[[1, 2]])
    np.testing.assert_array_equal(_line(norm_ax, "rge").get_ydata(), rge.history.column("norm", "epoch")[[1, 2]])
    assert fig._suptitle.get_text() == "estimators"


def test_plot_runs_takes_a_list_and_steps():
    cge, rge = _pair()
    fig = zo.History.plot_runs([cge.history, rge.history], x="step")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["run 0", "run 1"]
    np.testing.assert_array_equal(_line(fig.axes[1], "run 0").get_xdata(), [8, 12])  # epochs 1 and 2 end there
    assert fig.axes[0].get_xlabel() == "steps"


def test_plot_runs_reads_checkpoints(tmp_path):
    cge = _run(zo.CGE(), None, checkpoint=tmp_path / "a.npz")
    rge = _run(zo.RGE(), None, checkpoint=tmp_path / "b.npz")
    saved = {p: zo.History.from_checkpoint(tmp_path / f"{p}.npz") for p in "ab"}
    fig = zo.History.plot_runs(saved)
    assert saved == {"a": cge.history, "b": rge.history}
    np.testing.assert_array_equal(_line(fig.axes[0], "b").get_ydata(), rge.history.column("loss", "epoch"))


def test_plot_runs_refuses_what_is_no_run():
    cge = _run(zo.CGE(), None)
    with pytest.raises(zo.ArgumentError, match=r"`runs` entry 'b' must be a History or a TrainResult, got ndarray"):
        zo.History.plot_runs({"a": cge, "b": cge.params})
    with pytest.raises(zo.ArgumentError, match=r"`runs` entry 'run 1' has no steps to plot"):
        zo.History.plot_runs([cge, zo.History()])
    with pytest.raises(zo.ArgumentError, match=r"`runs` is empty"):
        zo.History.plot_runs({})
    with pytest.raises(zo.ArgumentError, match=r"`runs` must be a dict \{label: history\} or a list .* got History"):
        zo.History.plot_runs(cge.history)
    with pytest.raises(zo.ArgumentError, match="`x` must be one of 'queries', 'step', 'seconds', got 'time'"):
        zo.History.plot_runs([cge], x="time")


def test_seconds_axis_sums_the_records_time():
    """x="seconds": a step at the sum of its and the earlier steps' seconds and of the earlier epochs'
    evaluations; an epoch at the sum of the epochs' seconds (an epoch record's seconds are its steps'
    and its evaluation's)."""
    r = _run(zo.CGE(), lambda p: {"err": float(np.abs(p - 1).max())})
    h = r.history
    steps, epochs = h.column("seconds"), h.column("seconds", "epoch")
    step_epoch = h.column("epoch")
    extra = np.array([epochs[k] - steps[step_epoch == k].sum() for k in range(3)])
    assert (extra >= 0).all()
    fig = h.plot(x="seconds")
    loss_ax, err_ax = fig.axes
    expected = np.cumsum(steps) + np.concatenate([[0], np.cumsum(extra)])[step_epoch.astype(int)]
    np.testing.assert_allclose(_line(loss_ax, "step").get_xdata(), expected)
    np.testing.assert_allclose(err_ax.get_lines()[0].get_xdata(), np.cumsum(epochs)[[1, 2]])
    assert loss_ax.get_xlabel() == "seconds"
    assert np.cumsum(epochs)[-1] <= r.seconds  # a part of the call's time: saves and callbacks are not in it
    cmp = zo.History.plot_runs({"a": h}, x="seconds")
    np.testing.assert_allclose(_line(cmp.axes[1], "a").get_xdata(), np.cumsum(epochs)[[1, 2]])


def test_zoracle_plot_draws_against_seconds(tmp_path, capsys):
    from zoracle.cli import main

    ckpt = tmp_path / "run.npz"
    _run(zo.CGE(), None, checkpoint=ckpt)
    assert main(["plot", str(ckpt), str(tmp_path / "run.svg"), "--x", "seconds"]) == 0
    assert b"<svg" in (tmp_path / "run.svg").read_bytes()[:500]


def test_the_records_make_a_table():
    pd = pytest.importorskip("pandas")
    r = _run(zo.CGE(), lambda p: {"err": float(np.abs(p - 1).max())})
    steps, epochs = pd.DataFrame(r.history.steps), pd.DataFrame(r.history.epochs)
    assert list(steps.columns) == ["step", "epoch", "loss", "lr", "mu", "nfev", "total_nfev", "seconds"]
    # (in the order pandas first meets them: epoch 0 was not evaluated, its record has no err)
    assert sorted(epochs.columns) == ["epoch", "err", "loss", "lr", "nfev", "seconds", "total_nfev"]
    np.testing.assert_array_equal(epochs["err"].isna(), [True, False, False])  # evaluated every 2nd epoch
    assert epochs["total_nfev"].iloc[-1] == r.nfev == steps["nfev"].sum()


def test_many_runs_with_long_labels_keep_the_panels_drawable(tmp_path):
    """27 runs named by long checkpoint paths: the legend goes beside the panels, labels cut to their
    end; inside the loss panel it left the panels no room (matplotlib's constrained-layout warning)."""
    import warnings

    runs = {}
    for i in range(27):
        r = zo.train(lambda x: float(np.sum(x ** 2)), np.ones(3), epochs=2, progress=False, rng=i)
        runs[f"/very/long/path/to/some/experiment/directory/run_{i:02d}/checkpoint.npz"] = r
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = zo.History.plot_runs(runs, tmp_path / "many.png")
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(texts) == 27 and texts[3].endswith("run_03/checkpoint.npz") and all(len(t) <= 40 for t in texts)
    assert fig.axes[0].get_window_extent().width > 100  # the loss panel kept its room
    few = zo.History.plot_runs(dict(list(runs.items())[:3]))
    assert not few.legends and few.axes[0].get_legend() is not None  # a few runs: inside the loss panel
