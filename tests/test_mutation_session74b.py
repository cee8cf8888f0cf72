"""Tests killing survivors of a hand-written mutation run of the session's later code (h463): the
straggler scheduling's guards (zoracle/_executors_speed.py), the bar's rate and total, the run-end
warning's guards, the Retry-After jitter and plot_runs' legend."""

import math

import numpy as np
import pytest

from zoracle._executors_speed import SLOW_FACTOR, WorkerSpeeds
from test_stragglers import _runs


def _learnt(seconds, live=None):
    """Speeds learnt from one run where worker ``wk`` took ``seconds[k]`` for a shard of cost 1."""
    speeds, done = WorkerSpeeds(), {}
    for k, s in enumerate(seconds):
        speeds.note(done, f"w{k}", ("base",), s, 1.0)
    speeds.learn(done, live or {f"w{k}" for k in range(len(seconds))})
    return speeds


def test_a_worker_a_little_slower_than_the_others_is_not_held_back():
    """1.4 times the fastest is within a cost estimate's error: such a worker takes any shard."""
    speeds = _learnt([1.4, 1.0])
    assert speeds.slowness("w0") == pytest.approx(1.4)
    assert speeds.largest(0, [1], 1.0, lambda w: f"w{w}") == math.inf
    assert speeds.largest(0, [1], 100.0, lambda w: f"w{w}") == math.inf


def test_two_slow_workers_are_both_held_back_beside_two_fast_ones():
    """Two workers ten times slower than two fast ones: neither takes a shard once known (each is as
    slow as the other, but slower than the fastest)."""
    costs = [1.0] * 13
    for span, handed in _runs([10.0, 10.0, 1.0, 1.0], costs, 3, WorkerSpeeds())[1:]:
        assert {w for w, _ in handed} == {2, 3}
        assert span == 7.0


def test_the_fastest_live_worker_is_not_held_back_when_the_fastest_known_is_gone():
    """Speeds learnt where w3 was the fastest (3, 2, 2 times slower than it); w3 is gone: w1 and w2,
    the fastest left, take any shard, the costly one at once, and only w0 (slower than them) waits."""
    speeds = _learnt([3.0, 2.0, 2.0, 1.0])
    span, handed = _runs([1.0, 1.0, 1.0], [4.0, 1.0, 1.0], 1, speeds)[0]
    assert (0, 0) not in handed and span == 4.0, handed


def test_a_first_runs_warm_up_is_not_taken_for_an_oracle_whose_cost_varies():
    """A first run's first shard on a worker slow (imports, warm-up: 5 times its next one): the cost is
    not taken to vary by point, and a slow worker is still held back later."""
    speeds, done = WorkerSpeeds(), {}
    speeds.note(done, "w0", ("base",), 5.0, 1.0)
    speeds.note(done, "w0", ("base",), 1.0, 1.0)
    speeds.note(done, "w1", ("base",), 1.0, 1.0)
    speeds.learn(done, {"w0", "w1"})
    assert not speeds.varies
    runs = _runs([10.0, 1.0], [1.0] * 7, 3, speeds)
    assert [w for w, _ in runs[-1][1]].count(0) == 0


def test_a_worker_gone_from_the_run_is_forgotten():
    """A worker that left (a replaced worker: a new one may come back under its name) is no longer slow."""
    speeds = _learnt([10.0, 1.0])
    assert speeds.slowness("w0") > SLOW_FACTOR
    speeds.learn({}, {"w1"})
    assert speeds.slowness("w0") == 1.0


def test_a_slow_worker_counts_the_shards_in_flight_as_left():
    """2.5 times slower, three shards of 1: it takes one after the fast worker took the first (it ends at
    2.5 s, the fast one at 2); were the shard in flight left out, it waited and the run took 3 s."""
    for span, handed in _runs([1.0, 2.5], [1.0] * 3, 3, WorkerSpeeds())[1:]:
        assert (1, 1) in handed and span == 2.5, handed


def test_a_slow_worker_weighs_the_others_by_their_speeds():
    """Beside a worker twice as slow as the fastest, the others finish 16 shards in about 10.7 s: one
    ten times slower takes one (10 s), rather than counted as two of the fastest and held back."""
    for span, handed in _runs([10.0, 1.0, 2.0], [1.0] * 16, 3, WorkerSpeeds())[1:]:
        assert [w for w, _ in handed].count(0) == 1 and span == 10.0, handed


def test_the_bars_rate_counts_the_steps_since_the_first_one_over_their_time(monkeypatch):
    """A first step of 10 s, then a step a second: after step 3 the bar's rate is 1 step a second (2
    steps in 2 s), not 1.5 (the first step counted in the steps but not in the time): a time left a
    third short early in the run."""
    import io
    import tqdm
    import zoracle._bar as zb

    clock = [100.0]
    monkeypatch.setattr(zb, "_bar_clock", lambda: clock[0])
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)
    bar = zb._steady_bar(tqdm.tqdm)(total=100, file=io.StringIO(), mininterval=0)
    try:
        clock[0] += 10.0
        bar.update(1)
        assert bar.format_dict["rate"] is None  # one step: tqdm's own average, the only rate known
        clock[0] += 1.0
        bar.update(0)  # (a redraw with no step done since: still none, not a rate of 0)
        assert bar.format_dict["rate"] is None
        for _ in range(2):
            bar.update(1)
            clock[0] += 1.0
        assert bar.format_dict["rate"] == pytest.approx(1.0)
    finally:
        bar.close()


def test_a_query_budget_between_two_steps_is_the_bars_total_all_run(monkeypatch):
    """``max_queries`` 2 queries past step 30's (5 a step): the run takes a 31st step, and every line of
    the bar counts to 31 (not to 30, then 31/31 at the end)."""
    import io
    from test_bar_eta import _drawn, _run

    log = io.StringIO()
    _, result = _run(monkeypatch, log, max_queries=30 * 5 + 2)
    assert len(result.history.steps) == 31
    drawn = _drawn(log.getvalue())
    assert len(drawn) >= 2 and {total for _, total, _, _ in drawn} == {31}, drawn


def test_a_resumed_runs_bar_counts_to_the_step_its_budget_runs_out_at(monkeypatch, tmp_path):
    """A run resumed from step 10 with a budget raised to 60 steps' queries: its bar counts to 60 from this
    run's queries a step (5), not from all the checkpoint's queries over this run's steps (50 at step 30)."""
    import io
    from test_bar_eta import _drawn, _run

    path = str(tmp_path / "run.ckpt")
    _, first = _run(monkeypatch, io.StringIO(), max_queries=10 * 5, checkpoint=path, checkpoint_every=1)
    assert len(first.history.steps) == 10
    log = io.StringIO()
    _, result = _run(monkeypatch, log, max_queries=60 * 5, checkpoint=path, resume=True)
    assert len(result.history.steps) == 60
    drawn = _drawn(log.getvalue())
    assert len(drawn) >= 2 and {total for _, total, _, _ in drawn} == {60}, drawn


def _hist(losses, first=0):
    return [{"step": first + k, "loss": v, "lr": 0.1} for k, v in enumerate(losses)]


def test_a_negative_loss_that_rose_a_little_is_not_far_above():
    """A log-likelihood's loss from -10 to -5 over 30 quiet steps (changes of 0.01): half its size, not
    ten times its start: the scale is |start|, not the start's sign."""
    from zoracle._diagnose import ended_above

    losses = list(-10.0 + 0.01 * (np.arange(30) % 2)) + [-5.0] * 20
    assert ended_above(_hist(losses), 0) is None
    assert ended_above(_hist([1.0 + 0.01 * (k % 2) for k in range(30)] + [50.0] * 20), 0) is not None


def test_a_run_whose_history_does_not_begin_at_step_0_is_not_compared():
    """A history that starts later (its first steps not kept) has no start to compare with."""
    from zoracle._diagnose import ended_above

    losses = [1.0] * 30 + [100.0] * 20
    assert ended_above(_hist(losses), 0) is not None
    assert ended_above(_hist(losses, first=5), 5) is None


def test_a_short_runs_end_is_the_median_of_its_last_fifth():
    """Ten steps, the last two thrown 50 times above a steady start: the end is the median of the last
    three (a fifth of the run, at least 3), not of the last five (three of them still at the start)."""
    from zoracle._diagnose import ended_above

    found = ended_above(_hist([1.0] * 8 + [50.0, 50.0]), 0)
    assert found is not None and found[1:] == (50.0, 3)


def test_a_run_started_at_a_loss_of_exactly_0_is_not_far_above_a_tiny_end():
    """A start at the optimum, loss 0.0 with no change over the first steps, ending at 1e-12 (forward
    differences' bias): no scale to measure a rise against, no warning."""
    from zoracle._diagnose import ended_above

    assert ended_above(_hist([0.0] * 20 + [1e-12] * 10), 0) is None


@pytest.fixture(scope="module")
def many_runs():
    """20 short runs, for the figures of the tests below (drawn with matplotlib, the 'apps' extra)."""
    pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install -e '.[apps]')")
    import zoracle as zo

    return {f"run {i}": zo.train(lambda x: float(np.sum(x ** 2)), np.ones(3), epochs=2, progress=False, rng=i)
            for i in range(20)}


def test_eight_runs_keep_their_legend_in_the_loss_panel(many_runs):
    import zoracle as zo

    import matplotlib.pyplot as plt

    fig = zo.History.plot_runs(dict(list(many_runs.items())[:8]))
    try:
        assert not fig.legends and len(fig.axes[0].get_legend().get_texts()) == 8
    finally:
        plt.close(fig)


def test_nine_runs_get_one_column_beside_the_panels(many_runs):
    """Nine to 20 runs: one column beside the panels, the figure wider by it (not 0 columns)."""
    import matplotlib.pyplot as plt
    import zoracle as zo

    few = zo.History.plot_runs(dict(list(many_runs.items())[:8]))
    fig = zo.History.plot_runs(dict(list(many_runs.items())[:9]))
    try:
        assert fig.axes[0].get_legend() is None and len(fig.legends[0].get_texts()) == 9
        assert fig.legends[0]._ncols == 1
        assert fig.get_size_inches()[0] > few.get_size_inches()[0]
    finally:
        plt.close(fig)
        plt.close(few)


def test_twenty_runs_legend_fits_in_the_figures_height(many_runs):
    """A column of 20 runs beside one panel: the figure grows tall enough for it (the legend not cut)."""
    import matplotlib.pyplot as plt
    import zoracle as zo

    fig = zo.History.plot_runs(many_runs)
    try:
        fig.canvas.draw()
        box = fig.legends[0].get_window_extent()
        assert len(fig.legends[0].get_texts()) == 20
        assert box.y0 >= 0 and box.y1 <= fig.bbox.height + 1, (box, fig.bbox)
    finally:
        plt.close(fig)


def test_a_few_runs_long_labels_are_cut_inside_the_loss_panel_too(many_runs):
    """Three runs named by long paths: the legend in the loss panel shows their last 40 characters."""
    import matplotlib.pyplot as plt
    import zoracle as zo

    runs = {f"/very/long/path/to/some/experiment/directory/run_{i:02d}/checkpoint.npz": r
            for i, r in enumerate(list(many_runs.values())[:3])}
    fig = zo.History.plot_runs(runs)
    try:
        texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert [t[-21:] for t in texts] == [f"run_{i:02d}/checkpoint.npz" for i in range(3)]
        assert all(len(t) == 40 and t.startswith("…") for t in texts), texts
    finally:
        plt.close(fig)


def test_a_run_that_ended_9_5_times_its_start_is_not_far_above():
    """The end at 10 times the start or more warns (a rise of 9 times it): 9.5 times stays quiet."""
    from zoracle._diagnose import ended_above

    assert ended_above(_hist([1.0] * 30 + [9.5] * 20), 0) is None
    assert ended_above(_hist([1.0] * 30 + [10.5] * 20), 0) is not None


def test_every_try_turned_away_with_an_uncut_retry_after_is_told_to_raise_tries():
    """Retry-After waits of 5 s, as asked (max_delay 60 s): more tries is the fix, not a larger max_delay."""
    import zoracle as zo
    import zoracle._retrying as _retrying

    class Hinted(Exception):
        def __init__(self):
            super().__init__("busy, retry after 5 s")
            self.retry_after = 5

    def oracle(x):
        raise Hinted()

    waits = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_retrying.time, "sleep", waits.append)
        with pytest.raises(zo.RetriesExhausted) as info:
            zo.retrying(oracle, on=Hinted)(np.zeros(2))
    assert waits == [5, 5]
    assert str(info.value).endswith("raise `tries` if the service recovers more slowly"), str(info.value)


def test_a_slow_workers_slowness_is_relative_however_long_a_unit_of_cost_takes():
    """Two runs alike (w0 10 s, w1 1 s for a shard of cost 100): w0 stays 10 times the fastest, not
    averaged with its raw 0.1 s per unit of cost (which, run after run, let it take shards again)."""
    speeds = WorkerSpeeds()
    for _ in range(3):
        done = {}
        speeds.note(done, "w0", ("base",), 10.0, 100.0)
        speeds.note(done, "w1", ("base",), 1.0, 100.0)
        speeds.learn(done, {"w0", "w1"})
    assert speeds.slowness("w0") == pytest.approx(10.0) and speeds.slowness("w1") == pytest.approx(1.0)


def test_a_budgeted_run_over_batches_of_no_length_draws_its_bar(monkeypatch):
    """Batches from ``epoch -> generator`` (no length: no total) under ``max_queries``: the bar counts
    the run's steps with no total, and the run stops at its budget."""
    import io
    import sys
    import zoracle as zo
    from test_batches_kinds import Counted

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), rng.normal(size=40)
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    r = zo.train(Counted(), np.zeros(3), batches=lambda epoch: ((X[i:i + 8], y[i:i + 8]) for i in range(0, 40, 8)),
                 epochs=4, max_queries=7 * 4, estimator=zo.CGE(), optimizer=zo.sgd(1e-3), progress=True)
    assert r.steps == 7 and "7step" in log.getvalue().replace(" ", ""), log.getvalue()


def test_a_sweep_tasks_log_lines_keep_their_whole_width(monkeypatch):
    """A task of a sweep writing to a log (no width): each line named by its process and drawn as a
    plain run's, not fitted to a terminal's 80 columns less the name (its graphic dropped)."""
    import io
    import sys
    import zoracle as zo
    import zoracle._bar
    import zoracle._run_end

    tag = "[ForkPoolWorker-12 pid 123456] "
    for module in (zoracle._bar, zoracle._run_end):
        monkeypatch.setattr(module, "_pool_worker", lambda: tag)
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    zo.train(lambda x: float(np.sum((x - 1) ** 2)), np.zeros(4), epochs=2, steps_per_epoch=5, rng=0)
    lines = log.getvalue().splitlines()
    assert lines and all(line.startswith(tag) for line in lines), lines
    assert "loss=" in lines[-1] and "lr=" in lines[-1] and "qps=" in lines[-1], lines
    assert "100%|##########| 10/10 [" in lines[-1], lines  # the graphic a plain run's log line shows
