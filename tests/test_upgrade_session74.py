"""Checkpoints of an older zoracle resumed under this session's run loop: the bar's total under
``max_queries``, the warning of a run that ended far above its start, and ``x="seconds"`` plots.

The files are tests/data's, written by older releases (tests/data/make_old_checkpoints.py says how;
the checkpoint format did not change in this session, so they stand for its previous release's too).
A resumed run's history holds the steps the older release took: what this session reads from a
history (the run-end check, the plots' seconds) must read those records as the uninterrupted run's.
"""

from __future__ import annotations

import importlib.util
import io
import pathlib
import re
import shutil
import sys
import warnings

import numpy as np
import pytest

import zoracle as zo
from test_upgrade_checkpoints import assert_same_run

DATA = pathlib.Path(__file__).parent / "data"
_spec = importlib.util.spec_from_file_location("make_old_checkpoints", DATA / "make_old_checkpoints.py")
old = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(old)

#: a drawing of the bar: ``n/total``
DRAWN = re.compile(r"(\d+)/(\d+) \[")


def _records(recs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


def _copy(tmp_path, name):
    path = tmp_path / "run.npz"
    shutil.copy(DATA / name, path)
    return path


def test_an_older_release_run_resumed_under_a_budget_counts_its_bar_to_the_budgets_step(tmp_path, monkeypatch):
    """The recipe's checkpoint of 2 of its 29 one-step epochs (zoracle 0.1.0), resumed with a budget
    its 20th step spends: the bar ends at 20 of 20, not 20 of 29, and the run is the uninterrupted one."""
    settings = dict(old.recipe(lr=0.1), max_queries=1000, rng=0)  # (0.1: the default when it was written)
    log = io.StringIO()
    with monkeypatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.setattr(sys, "stderr", log)
        resumed = zo.train(old.recipe_loss, old.RECIPE_PARAMS, checkpoint=_copy(tmp_path, "e3ee374_recipe.npz"),
                           resume=True, progress=True, **settings)
    assert not caught, [str(w.message) for w in caught]
    whole = zo.train(old.recipe_loss, old.RECIPE_PARAMS, progress=False, **settings)
    assert resumed.params.tobytes() == whole.params.tobytes() and resumed.nfev == whole.nfev == 1020
    assert _records(resumed.history.steps) == _records(whole.history.steps)
    drawn = [(int(n), int(total)) for n, total in DRAWN.findall(log.getvalue())]
    assert drawn[0] == (2, 29) and drawn[-1] == (20, 20), log.getvalue()  # from the checkpoint's step on


@pytest.mark.parametrize("run", ["rge", "grasp"])
def test_older_release_runs_resumed_past_ten_steps_end_without_the_run_end_warning(tmp_path, run):
    """0.1.0's 2-epoch checkpoints (records without ``total_nfev`` for ZO-GraSP's) resumed to 16 steps,
    enough for the run-end check to read their history: these healthy runs end without a warning, as
    their uninterrupted runs do, and are those runs (bit for bit on the CPU kind that wrote them)."""
    path = _copy(tmp_path, f"f48a224_{run}.npz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = zo.train(old.loss, old.PARAMS, epochs=8, checkpoint=path, resume=True, progress=False,
                           **old.RUNS[run])
        whole = zo.train(old.loss, old.PARAMS, epochs=8, progress=False, **old.RUNS[run])
    assert not caught, [str(w.message) for w in caught]
    assert len(resumed.history.steps) == 16 and resumed.history.steps[0]["step"] == 0
    assert resumed.history.steps[-1]["loss"] < resumed.history.steps[0]["loss"]  # (a run that trained)
    assert_same_run(resumed, whole)  # (bit for bit on the CPU kind that wrote the file)


def test_older_release_checkpoints_plot_by_seconds_beside_a_run_of_this_release(tmp_path):
    """``x="seconds"`` (this session's) on histories 0.1.0 wrote: each loss line at its records' summed
    seconds, in one figure with a run of this release and through ``zoracle plot``."""
    pytest.importorskip("matplotlib")
    from zoracle import cli

    runs = {"0.1.0": zo.History.from_checkpoint(DATA / "f48a224_grasp.npz"),
            "recipe 0.1.0": zo.History.from_checkpoint(DATA / "e3ee374_recipe.npz"),
            "now": zo.train(old.loss, old.PARAMS, epochs=2, progress=False, **old.RUNS["grasp"])}
    fig = zo.History.plot_runs(runs, tmp_path / "runs.png", x="seconds")
    loss_ax = fig.axes[0]
    assert loss_ax.get_xlabel() == "seconds"
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == list(runs)
    for label, run in runs.items():
        history = run.history if isinstance(run, zo.TrainResult) else run
        (line,) = [ln for ln in loss_ax.get_lines() if ln.get_label() == label]
        x = np.asarray(line.get_xdata(), dtype=float)
        assert x.size == len(history.epochs) and np.all(np.isfinite(x)) and np.all(np.diff(x) > 0), (label, x)
    out = tmp_path / "old.png"
    assert cli.main(["plot", str(DATA / "f48a224_rge.npz"), str(out), "--x", "seconds"]) in (0, None)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
