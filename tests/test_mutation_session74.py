"""Tests that kill the mutants of session 74's new code the other tests let live (h446): the runs'
comparison figure (``History.plot_runs``) and its seconds axis, the mean-of-whole-numbers grid
(``mean_count``), and the drift sentence of a diverged run's message (``noise_note``, ``_first_loss``).
Each test names the plausible bug it catches."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo
from zoracle import _grid
from zoracle._diagnose import noise_note

from test_history_analysis import Regression  # (a DataOracle: one minibatch a step)


def _run(eval_every=2, epochs=3, batch_size=20, **kw):
    """``epochs`` epochs of ``80 / batch_size`` steps, a metric ``err`` every ``eval_every`` epochs."""
    oracle = Regression()
    data = zo.Minibatches((oracle.X, oracle.y), batch_size=batch_size, seed=0)
    return zo.train(oracle, np.zeros(4), batches=data, epochs=epochs, estimator=zo.CGE(), optimizer=zo.sgd(0.05),
                    rng=0, progress=False, eval_fn=lambda p: {"err": float(np.abs(p - 1).max())},
                    eval_every=eval_every, **kw)


def _lines(ax, label):
    return [ln for ln in ax.get_lines() if ln.get_label() == label]


# ---- the comparison figure


@pytest.fixture(scope="module")
def runs():
    pytest.importorskip("matplotlib")
    return _run().history, _run(batch_size=80, epochs=3, eval_every=1).history  # 4 steps an epoch; 1 step an epoch


def test_plot_runs_draws_each_runs_steps_faded_and_its_metric_in_its_colour(runs):
    """Mutants: the faded step line dropped; a run of one step an epoch drawn as steps and means
    (``>=`` for ``>``); a metric line without its run's colour."""
    many, one = runs
    fig = zo.History.plot_runs({"many": many, "one": one})
    loss_ax, err_ax = fig.axes
    (mean_line,) = _lines(loss_ax, "many")
    faded = [ln for ln in loss_ax.get_lines() if ln.get_label().startswith("_")]  # (unlabelled: the steps)
    assert len(faded) == 1 and len(loss_ax.get_lines()) == 3  # many: steps and means; one: its steps alone
    np.testing.assert_array_equal(faded[0].get_xdata(), many.column("total_nfev"))
    np.testing.assert_array_equal(faded[0].get_ydata(), many.column("loss"))
    (one_line,) = _lines(loss_ax, "one")
    np.testing.assert_array_equal(one_line.get_ydata(), one.column("loss"))
    for name in ("many", "one"):  # a run's metric in the colour of its loss
        (metric,) = _lines(err_ax, name)
        assert metric.get_color() == _lines(loss_ax, name)[0].get_color()
    assert mean_line.get_color() != one_line.get_color()


def test_plot_runs_marks_a_run_of_one_step():
    """Mutant: no marker for a run of one step (a line of one point draws nothing)."""
    pytest.importorskip("matplotlib")
    single = zo.train(lambda x: float(np.sum(x ** 2)), np.ones(2), epochs=1, steps_per_epoch=1, progress=False,
                      rng=0).history
    fig = zo.History.plot_runs([single])
    (line,) = _lines(fig.axes[0], "run 0")
    assert line.get_marker() == "." and len(line.get_xdata()) == 1


def test_plot_runs_takes_a_tuple_and_scales_the_loss_axis_by_every_run():
    """Mutants: a tuple of runs refused (the docstring's "a list of histories": any sequence); the
    loss axis's log scale judged from the first run's losses only, or past a factor of 100."""
    pytest.importorskip("matplotlib")

    def history(losses):
        steps = tuple({"step": i, "epoch": 0, "loss": v, "lr": 0.1, "mu": 1e-3, "nfev": 2, "total_nfev": 2 * (i + 1),
                       "seconds": 0.01} for i, v in enumerate(losses))
        return zo.History(steps, ({"epoch": 0, "loss": float(np.mean(losses)), "lr": 0.1, "nfev": 2 * len(losses),
                                   "total_nfev": 2 * len(losses), "seconds": 0.01 * len(losses)},))

    narrow, wide = history([2.0, 1.5, 1.2]), history([1.0, 0.1, 0.001])
    assert zo.History.plot_runs((narrow, wide)).axes[0].get_yscale() == "log"
    assert zo.History.plot_runs((narrow, narrow)).axes[0].get_yscale() == "linear"
    # "more than a factor of 10" (History.plot's docstring): 50 is log (mutant: at 100)
    assert zo.History.plot_runs((narrow, history([1.0, 0.5, 0.02]))).axes[0].get_yscale() == "log"


@pytest.mark.parametrize("x, value, text", [("seconds", 0.002, "2ms"), ("queries", 150000, "150k")])
def test_the_x_axis_ticks_are_engineering_numbers_with_their_unit(runs, x, value, text):
    """Mutants: the seconds axis without the engineering formatter, or without its unit, or the
    units swapped (queries shown in seconds); the metric panels without the axis label."""
    many, _ = runs
    for fig in (many.plot(x=x), zo.History.plot_runs({"a": many}, x=x)):
        for ax in fig.axes:
            assert ax.get_xlabel() == x
            assert ax.xaxis.get_major_formatter()(value) == text


def test_the_seconds_axis_of_a_history_whose_first_steps_were_cut():
    """``History(h.steps[k:], h.epochs)`` (the steps of a long run thinned or cut, its epochs kept): an
    epoch left without step records has no place on the seconds axis and is not drawn (mutants: an
    IndexError; the epoch drawn at 0 s)."""
    pytest.importorskip("matplotlib")
    h = _run(eval_every=1).history
    cut = zo.History(tuple(r for r in h.steps if r["epoch"] > 0), h.epochs)
    (line,) = cut.plot(x="seconds").axes[1].get_lines()
    x = line.get_xdata()
    assert np.isnan(x[0]) and np.isfinite(x[1:]).all() and x[1] > 0 and x[2] > x[1]


# ---- a mean of whole numbers over n items


def _over(n: int, k: int, far: float = 0.0):
    """A base loss ``-k/n`` and its differences to ``-(k+1)/n`` and ``-(k-2)/n``, as float64 makes them."""
    x = np.array([k, k + 1, k - 2]) / n
    return -float(x[0]), x[0] - x[1:]


def test_mean_count_reads_n_up_to_its_most_and_past_10():
    """Mutants: ``range(1, most)`` (100 never read), MAX_MEAN_COUNT = 10 (a mean over 20 episodes unnamed)."""
    assert _grid.MAX_MEAN_COUNT == 100
    assert _grid.mean_count(-12.34, np.array([0.01, -0.03])) == 100
    assert _grid.mean_count(-277.85, np.array([0.05, -0.1])) == 20
    assert _grid.mean_count(-12.34, np.array([0.01, -0.03]), most=99) is None


def test_mean_count_allows_n_roundings_at_large_losses():
    """A mean of returns over 40 episodes near 375 (15001/40): ``n * loss`` is whole only up to n
    roundings of the loss. Mutants: the tolerance not scaled by n; ``floor`` for ``round`` (a product
    a rounding under a whole number read as almost 1 off); ``far`` left out of the tolerance."""
    loss, diffs = _over(40, 15001)
    assert loss == -375.025
    assert _grid.mean_count(loss, diffs) == 40
    small, d = _over(7, 398)
    assert _grid.mean_count(small, d, far=-(398 + 10**6 + 1) / 7) == 7  # a far loss of 1e5: its roundings count


def test_mean_count_names_nothing_past_float64s_resolution():
    """Near 1e12 float64 resolves 1.2e-4, so no grid of 1/n past n = 10 can be told from roundings
    (mutant: the guard at 1 instead of 0.01 named a mean over 58 items here); an inf names nothing,
    without a warning (mutant: the finite check dropped: inf - inf warned)."""
    assert _grid.mean_count(1000000000643.0, np.array([-4.724365234375, 2.53515625])) is None
    assert _grid.mean_count(1.0, np.array([np.inf, 0.5])) is None


def test_a_rounded_loss_read_as_a_mean_keeps_the_rounding_fix_too(monkeypatch):
    """Multiples of 0.1 are a loss rounded to 1 decimal or a mean over 10: the warning gives both fixes
    (mutant: the mean's fix replaced the rounding's)."""
    import zoracle._estimators as est_module

    W = np.random.default_rng(0).standard_normal((20, 6))

    def mean_of_10(x) -> float:
        return -float(np.mean(np.floor(100.0 * (1.0 + np.tanh(W @ np.asarray(x, dtype=np.float64))))[:10]))

    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())  # (given once per oracle)
    with pytest.warns(UserWarning, match=r"return the loss unrounded \(printed by a program.*, or raise mu; a mean "
                                         r"of whole numbers .* moves in steps of 1/10"):
        zo.estimate_gradient(mean_of_10, np.random.default_rng(0).standard_normal(6), zo.CGE(mu=0.01), rng=0)


# ---- a diverged run's drift sentence

D = 20
A = np.linspace(0.5, 2.0, D)


def f(x):
    return float(0.5 * np.sum(A * (np.asarray(x, dtype=np.float64) - 1) ** 2))


START, FAR = np.zeros(D), np.full(D, 1e3)


def test_a_deterministic_loss_read_a_rounding_apart_is_no_drift():
    """The first step's base loss can come from a fast path (``batch``) that sums in another order:
    a rounding apart from the plain call's is no drift (mutant: the relative floor dropped)."""
    assert noise_note(f, FAR, START, first=f(START) * (1 + 1e-12)) == ""
    assert noise_note(f, FAR, START, first=f(START)) == ""


def test_the_drift_sentence_gives_the_readings_in_their_order():
    """Mutant: the two readings swapped in the text."""

    class Warming:
        def __init__(self):
            self.t = 10_000  # (a device read for a while: the drift since the first step dwarfs a step's)

        def __call__(self, x):
            self.t += 1
            return f(x) + 0.01 * self.t

    text = noise_note(Warming(), FAR, START, first=f(START) + 0.01)
    a, b = f(START) + 0.01 * 10_003, f(START) + 0.01 * 10_004  # (the point read twice first)
    assert f"it read {f(START) + 0.01:.6g} at the first step and {a:.6g}, then {b:.6g} now, two calls in a row 0.01 " \
           "apart" in text


def test_noise_is_seldom_taken_for_a_drift():
    """Three readings of a noisy loss at the start: the two now far from the first one, and 100 times
    closer to each other, happens for about 0.5% of noises (a Cauchy tail: 1 of these 400); at 10 times
    (mutant) for about 5.5% (20 of these 400)."""
    claims = 0
    for seed in range(400):
        rng = np.random.default_rng(seed)

        def noisy(x):
            return f(x) + 0.05 * float(rng.standard_normal())

        claims += "drifts" in noise_note(noisy, FAR, START, first=noisy(START))
    assert claims <= 8


def test_a_run_on_minibatches_compares_no_batch_with_another():
    """A diverged run on batches: its first step read another batch than the step that diverged, so
    the two losses at the start differ with no drift (mutant: ``bound is not run.oracle`` dropped)."""
    o = Regression()
    with pytest.raises(zo.ArgumentError, match="training diverged at step 62") as err:
        zo.train(o, np.zeros(4), batches=zo.Minibatches((o.X, o.y), batch_size=20, seed=0), epochs=50,
                 optimizer=zo.sgd(1.0), rng=0, progress=False)
    assert "drifts" not in str(err.value)


def test_snes_whose_step_loss_is_its_populations_mean_is_no_drift():
    """SNES's step loss is the mean of its population's, not the loss at the params: no first loss to
    compare (mutant: the SNES guard dropped). (An own optimizer makes the params non-finite at step 3:
    SNES's rank-shaped steps do not diverge by themselves.)"""
    base = zo.sgd(1.0)

    def update(grad, state, params, lr=None):
        p, s = base.update(grad, state, params, lr)
        return (np.full_like(p, np.inf) if s.count > 3 else p), s

    with pytest.raises(zo.ArgumentError, match="training diverged at step 3 .* params became non-finite") as err:
        zo.train(f, START, epochs=1, steps_per_epoch=20, estimator=zo.SNES(mu=0.1),
                 optimizer=base._replace(update=update), rng=0, progress=False)
    assert "drifts" not in str(err.value)


def test_the_fast_path_checks_trend_sentence_says_what_the_readings_did():
    """The noisy-plain-call warning's trend sentence says "the three move one way, the earlier gap the
    larger": over 2,000 seeded noises it appears only where that is so (mutant: the direction not
    checked: 53 of its 100), and for a few per cent of pure noises (47 of 2,000; at 1 time the gap
    instead of 10, mutant, 314)."""
    from types import SimpleNamespace

    from zoracle._fastcheck import _noisy_text

    rng = np.random.default_rng(0)
    probe = SimpleNamespace(step=1e-3)
    said = 0
    for fast, plain, again in 10.0 + rng.standard_normal((2000, 3)):
        text = _noisy_text(f, probe, float(plain), float(again), 1.0, float(fast))
        if "the three move one way" in text:
            said += 1
            assert (plain - fast) * (again - plain) > 0 and abs(plain - fast) > abs(again - plain)
    assert said <= 100  # 5%
    assert "move one way" in _noisy_text(f, probe, 10.5, 10.51, 1.0, 10.0)  # (a drift: 0.5, then 0.01 on)
    assert "move one way" not in _noisy_text(f, probe, 10.5, 10.51, 1.0, None)


def test_a_drift_is_named_where_the_estimate_overflows_too():
    """The third divergence message (the estimate non-finite: float32 params, a float64 loss past their
    range) names a drift as the other two do (mutant: ``_first_loss`` not passed there)."""
    import warnings

    class Device:  # cosh's sum, each reading 1e-4 above the last
        def __init__(self):
            self.t = 0

        def __call__(self, p):
            self.t += 1
            return float(np.sum(np.cosh(p.astype(np.float64)))) + 1e-4 * self.t

    overflow = r"diverged at step 1 .*: the gradient estimate is non-finite"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (the float32 cast's overflow)
        with pytest.raises(zo.ArgumentError, match=overflow) as err:
            zo.train(Device(), np.ones(120, np.float32), steps_per_epoch=5, estimator=zo.CGE(mu=0.1),
                     optimizer=zo.sgd(82.0), progress=False, rng=0)
    assert "The loss drifts with time: at the run's first params it read 185.17 at the first step" in str(err.value)


# ---- the slow-test-by-id hint (tests/conftest.py)


@pytest.mark.slow
def test_a_slow_test_class_named_by_its_id_says_how_to_run_it():
    """A slow class named by its id (its tests' ids run on past it: ``...::Class::runTest``) gets the
    hint too (mutant: only an id equal to the test's own)."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("hypothesis")  # (the class's module's)
    root = Path(__file__).resolve().parents[1]
    test = "tests/test_ask_tell_stateful.py::TestAskTellAgainstTrainLonger"
    assert "@pytest.mark.slow\nclass TestAskTellAgainstTrainLonger(" in (root / test.split("::")[0]).read_text()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", test],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 5, out.stdout[-2000:] + out.stderr[-2000:]  # nothing ran
    assert f"run it with: python -m pytest -m slow {test}" in out.stdout, out.stdout[-2000:]
