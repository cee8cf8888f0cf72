"""Review of the session's code after 09:40 (h462): the straggler's holding back after one run
whose shard times spread, and plot_runs' legend labels cut alike."""

import numpy as np
import pytest

import zoracle as zo
from zoracle._executors_speed import WorkerSpeeds

from test_stragglers import _runs


def test_one_run_whose_shard_times_spread_does_not_turn_the_holding_back_off_for_good():
    """One shard kept waiting once (a new oracle's warm-up, the OS) spread one run's times: the
    slow worker was no longer held back in any later run (every step waited 10 s again)."""
    speeds, costs = WorkerSpeeds(), [1.0] * 7
    _runs([10.0, 1.0], costs, 3, speeds)
    hiccup = [1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0]  # shard 3 took 5 times its estimate, once
    _runs([10.0, 1.0], costs, 1, speeds, actual=hiccup)
    later = _runs([10.0, 1.0], costs, 6, speeds)
    assert not speeds.varies
    spans = [span for span, _ in later]
    assert spans[0] >= 10.0 and spans[1:].count(7.0) >= 4, spans  # measured anew, then held back (a probe aside)


@pytest.mark.parametrize("n", [3, 10])
def test_plot_runs_tells_apart_runs_whose_long_labels_end_alike(n):
    """A sweep's checkpoint paths end alike (``seed_k/<dir>/checkpoints/final.npz``): cut to their last
    40 characters, the legend named every run the same."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    runs = {f"/home/user/sweeps/seed_{k}/a_long_common_directory_name/checkpoints/final.npz":
            zo.train(lambda x, k=k: float(np.sum(x ** 2)) + k, np.ones(2), epochs=2, progress=False) for k in range(n)}
    fig = zo.History.plot_runs(runs)
    legend = fig.legends[0] if n > 8 else fig.axes[0].get_legend()
    shown = [t.get_text() for t in legend.get_texts()]
    plt.close(fig)
    assert len(set(shown)) == n and all(len(t) <= 40 for t in shown), shown
    assert all(f"seed_{k}" in t for k, t in enumerate(shown)), shown


@pytest.mark.parametrize("n", [3, 10])
def test_plot_runs_names_runs_whose_labels_start_with_an_underscore(n):
    """matplotlib leaves a label starting with ``_`` out of a legend: runs named by paths under
    ``_sweep/`` had none (3 runs: an empty legend), and more than 8 failed the plot (ValueError)."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    r = zo.train(lambda x: float(np.sum(x ** 2)), np.ones(2), epochs=2, progress=False)
    names = [f"_sweep/seed_{k}.npz" for k in range(n)]
    fig = zo.History.plot_runs(dict.fromkeys(names, r))
    legend = fig.legends[0] if n > 8 else fig.axes[0].get_legend()
    shown = [t.get_text() for t in legend.get_texts()]
    plt.close(fig)
    assert shown == names


def test_a_notebooks_widget_bar_is_as_long_as_the_budgets_steps(monkeypatch):
    """Under ``max_queries`` the bar counts to the step the budget runs out at: a notebook's widget,
    whose length tqdm sets once, stayed the epochs' (its text 6/6 at the end, its fill 6/20)."""
    pytest.importorskip("ipywidgets")
    import tqdm.auto
    import tqdm.notebook

    import zoracle._run_end as run_end

    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.notebook.tqdm)  # tqdm.auto's bar in a notebook
    seen, steady = [], run_end._steady_bar

    def watched(kind):
        class Watched(steady(kind)):
            def close(self):
                seen.append((self.n, self.total, self.container.children[1].max))
                return super().close()
        return Watched

    monkeypatch.setattr(run_end, "_steady_bar", watched)
    r = zo.train(lambda x: float(np.sum(x ** 2)), np.ones(4), epochs=20, max_queries=30)
    n = len(r.history.steps)
    assert n < 20 and seen == [(n, n, n)]
