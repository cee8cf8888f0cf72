"""Tests that kill the mutants of session 75's new code the other tests let live (h473): a
Retry-After of exactly ``max_delay`` (``zo.retrying``), ``zoracle plot CHECKPOINT``'s default figure,
a resumed run's record of its one-off warnings (the loss-grid warning, the record's member, the
run-end warning of a checkpoint written before the record, callbacks of one name or moved), and
``bounds=``. Each test names the plausible bug it catches."""

from __future__ import annotations

import argparse
import random
import warnings

import numpy as np
import pytest

import zoracle as zo
import zoracle._estimators as est_module
import zoracle._retrying as _retrying

from test_bounds import Hardware
from test_resume_warnings import having, segments
from test_retry_after import _came_back


# ---- zo.retrying: a Retry-After of max_delay exactly


@pytest.fixture
def waits(monkeypatch):
    got = []
    monkeypatch.setattr(_retrying.time, "sleep", got.append)
    return got


def test_a_retry_after_of_exactly_max_delay_is_spread_below_the_cap(waits, monkeypatch):
    """``hint <= max_delay`` for ``hint < max_delay`` sent it to the upward spread, whose room
    ``[hint, min((1 + jitter) * hint, max_delay)]`` is empty at the cap: every worker came back at
    60 s exactly, together."""
    monkeypatch.setattr(_retrying, "random", random.Random(0))
    back = _came_back(waits, 60, 8, max_delay=60, jitter=0.5)
    assert len(back) == 8 and all(30.0 <= w <= 60.0 for w in back), back
    assert len(set(back)) == 8 and max(back) - min(back) > 10, back  # not in lock step at the cap


# ---- zoracle plot CHECKPOINT (no FIGURE)


def _checkpoint(path):
    zo.train(lambda x: float(np.sum(x ** 2)), np.ones(3), epochs=3, optimizer=zo.sgd(0.1), rng=0, progress=False,
             checkpoint=path)
    return path


def test_the_default_figure_of_a_checkpoint_named_png_in_capitals_is_never_the_checkpoint():
    """``suffix == ".png"`` (no ``.lower()``) gave RUN.PNG's figure as RUN.png: the checkpoint itself
    on a file system that ignores case (macOS, Windows), refused as drawing over it."""
    from zoracle.cli import _load

    default_figure = _load("plot", help_only=True).default_figure  # (the module, without matplotlib too)
    assert default_figure("runs/RUN.PNG") == "runs/RUN.PNG.png"
    assert default_figure("runs/run.Png") == "runs/run.Png.png"
    assert default_figure("runs/run.npz") == "runs/run.png"
    assert default_figure("runs.v2/run") == "runs.v2/run.png"  # (a dot in a folder is no suffix)


def test_an_empty_figure_is_refused_not_read_as_no_figure(tmp_path, capsys):
    """``if not args.figure`` for ``is None`` drew ``zoracle plot run.npz ""`` (an unset shell variable)
    to run.png, where the empty path is refused naming FIGURE."""
    pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install -e '.[apps]')")
    from zoracle.cli import main

    ckpt = _checkpoint(tmp_path / "run.npz")
    assert main(["plot", str(ckpt), ""]) == 1
    assert "`FIGURE` is an empty path" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz"]


def test_the_default_figure_is_echoed_as_the_checkpoint_was_spelled(tmp_path, monkeypatch, capsys):
    """The default figure follows the checkpoint as the command line spelled it (``~/runs/a.png``, as a
    named FIGURE is echoed), written into the home folder; made from the expanded path, it was echoed
    as ``/home/...``."""
    pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install -e '.[apps]')")
    from zoracle.cli import _load

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "runs").mkdir(parents=True)
    _checkpoint(tmp_path / "home" / "runs" / "a.npz")
    assert _load("plot").main(argparse.Namespace(checkpoint="~/runs/a.npz", figure=None, x="queries",
                                                 title=None)) == 0
    assert capsys.readouterr().out.startswith("~/runs/a.png: 3 steps, 3 epochs")
    assert (tmp_path / "home" / "runs" / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- a resumed run's one-off warnings


def test_a_loss_on_a_grid_is_said_once_over_resumes_in_new_processes(tmp_path, monkeypatch):
    """The coarse-loss warning read from the losses' values (float64 losses computed in float16),
    not from their type: its key, ``"coarse values"``, was neither recorded nor read (mutants), so each
    resume in a new process said it again."""
    def make():
        monkeypatch.setattr(est_module, "_COARSE_WARNED", set())  # a new process
        return dict(oracle=lambda x: float(np.float16(np.sum((x - 1) ** 2))), params=np.zeros(3), epochs=12,
                    optimizer=zo.sgd(0.01), estimator=zo.CGE(mu=1e-2))

    said = segments(tmp_path / "run.npz", make, [20, 40, None])
    assert having(said, "the oracle's losses carry only 11 significant bits") == [1, 0, 0], said


def test_a_run_that_warned_of_nothing_writes_no_record(tmp_path):
    """``if warned`` dropped wrote an empty record into every checkpoint: the file of a run without
    warnings is to be the one written before the record was added."""
    path = tmp_path / "run.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zo.train(lambda x: float(np.sum((x - 1) ** 2)), np.zeros(3), epochs=4, optimizer=zo.sgd(0.1), rng=0,
                 progress=False, checkpoint=path)
    arrays, _ = zo.load_checkpoint(path)
    assert "warned" not in arrays and "params" in arrays


def test_a_record_of_another_shape_is_refused(tmp_path):
    """``blob.ndim != 1`` dropped read a 2-D member's bytes as the record."""
    path = tmp_path / "run.npz"
    with pytest.warns(UserWarning, match="was 0 to within the loss's rounding"):
        zo.train(lambda x: 1.0, np.ones(2), epochs=10, optimizer=zo.sgd(0.1), rng=0, progress=False, checkpoint=path,
                 max_queries=9)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    assert arrays["warned"].tobytes() == b'["flat"]'
    arrays["warned"] = arrays["warned"].reshape(2, 4)  # the same bytes
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(zo.CheckpointError, match="array 'warned' is not a JSON list of texts"):
        zo.train(lambda x: 1.0, np.ones(2), epochs=10, optimizer=zo.sgd(0.1), rng=0, progress=False, checkpoint=path,
                 resume=True)


def _quad32(x):
    return np.float32(np.sum((x - 1) ** 2))


def test_the_run_record_is_left_when_train_returns(monkeypatch):
    """``RUN_WARNED.reset`` dropped left the run's record set after ``train`` returned: a later
    estimate of another oracle, outside any run, found the run's key there and was not warned."""
    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())
    with pytest.warns(UserWarning, match="the oracle returns float32 losses"):
        zo.train(_quad32, np.zeros(3), epochs=2, optimizer=zo.sgd(0.1), estimator=zo.CGE(mu=1e-6), rng=0,
                 progress=False)
    assert est_module.RUN_WARNED.get() is None

    def other(x):  # another oracle: warned of once, in its own right
        return np.float32(np.sum(x ** 2))

    with pytest.warns(UserWarning, match="the oracle returns float32 losses"):
        zo.estimate_gradient(other, np.ones(3), zo.CGE(mu=1e-6))


def test_a_checkpoint_without_a_record_of_a_run_that_ended_far_above_resumed_ended_says_nothing(tmp_path):
    """A file written before the record (zoracle 0.2.0's) of a run that ended far above, resumed at its
    end: this process took no step, the run that ended it was told. ``first_step`` passed as 0 said it
    again (the record, where present, hides that)."""
    path = tmp_path / "run.npz"
    kw = dict(epochs=30, optimizer=zo.sgd(1.1), rng=0, progress=False, checkpoint=path)
    with pytest.warns(UserWarning, match="the run ended far above where it started"):
        zo.train(lambda x: float(np.sum(x ** 2)), np.ones(2), **kw)
    with np.load(path) as z:
        old = {k: z[k] for k in z.files if k != "warned"}
    with open(path, "wb") as f:
        np.savez(f, **old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert zo.train(lambda x: float(np.sum(x ** 2)), np.ones(2), resume=True, **kw).steps == 30



class _Float32Loss:
    def __call__(self, x):
        return np.float32(np.sum((x - 1) ** 2))


class _OtherFloat32Loss:
    def __call__(self, x):
        return np.float32(np.sum(x ** 2))


_LAMBDAS = (lambda x: np.float32(np.sum((x - 1) ** 2)),  # (two functions of one name, told apart by their lines)
            lambda x: np.float32(np.sum(x ** 2)))


@pytest.mark.parametrize("oracles", [(_quad32, _LAMBDAS[1]), _LAMBDAS, (_Float32Loss(), _OtherFloat32Loss())])
def test_another_oracle_estimated_during_a_run_is_warned_of_in_its_own_right(monkeypatch, oracles):
    """The run's record of its coarse-loss warning keyed the loss type alone: a callback's estimate of
    another oracle returning float32 losses, after the run's own was warned of, found the key and was
    not warned of (before the record each oracle was, once)."""
    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())
    run_loss, other = oracles

    def probe(event, record, params):
        if event == "step" and record["step"] == 0:
            zo.estimate_gradient(other, np.full(3, 2.0), zo.CGE(mu=1e-6))  # base loss 12

    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        zo.train(run_loss, np.zeros(3), epochs=3, optimizer=zo.sgd(0.1), estimator=zo.CGE(mu=1e-6), rng=0,
                 progress=False, callbacks=[probe])  # base loss 3
    said = [str(w.message) for w in got if "the oracle returns float32 losses" in str(w.message)]
    assert len(said) == 2 and "near the base loss 3 " in said[0] and "near the base loss 12 " in said[1], said


class _Says:
    """A callback object (no ``__qualname__`` of its own: its key names its class) returning a text
    from step ``when`` on."""

    def __init__(self, when):
        self.when = when

    def __call__(self, event, record, params):
        return f"from {self.when}" if record.get("step", 0) >= self.when else None


def _quad(x):
    return float(np.sum(x ** 2))


def test_two_callbacks_of_one_class_are_told_apart_over_a_resume(tmp_path):
    """The key without the callback's index: the second ``_Says``, first odd after the resume, was
    taken for the first one, warned of before it."""
    def make():
        return dict(oracle=_quad, params=np.ones(2), epochs=10, optimizer=zo.sgd(0.1),
                    callbacks=[_Says(0), _Says(4)])

    said = segments(tmp_path / "run.npz", make, [9, None])  # 3 queries a step: 3 steps, then 7
    assert having(said, "returned 'from 0'") == [1, 0], said
    assert having(said, "returned 'from 4'") == [0, 1], said


def test_a_callback_added_before_a_resume_at_a_warned_ones_place_is_told(tmp_path):
    """The key without the callback's name: a resumed run given a new callback first, where the one
    warned of was, took the new one for the old one."""
    def always(event, record, params):
        return 0

    def later(event, record, params):
        return "go on" if record.get("step", 0) >= 4 else None

    said = []
    for callbacks, budget in (([always], 9), ([later, always], None)):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            zo.train(_quad, np.ones(2), epochs=10, optimizer=zo.sgd(0.1), callbacks=callbacks, rng=0, progress=False,
                     checkpoint=tmp_path / "run.npz", resume=True if said else None, max_queries=budget)
        said.append([str(w.message) for w in got])
    assert having(said, "callback 'later' returned 'go on'") == [0, 1], said


# ---- bounds= (only mutated here: tests/test_bounds.py is another helper's)


class _Hardware(Hardware):
    """tests/test_bounds.py's Hardware (refuses any setting outside ``[lo, hi]``), its loss unweighted."""

    def loss(self, x64):
        return float(np.sum((x64 - self.target) ** 2))


@pytest.mark.parametrize("bounds, lo, hi", [((None, 0.5), -np.inf, 0.5), ((-0.5, None), -0.5, np.inf)])
def test_a_box_open_on_one_side_is_kept(bounds, lo, hi):
    """``(lo == -inf).all() or (hi == inf).all()`` for ``and`` took a box open below (or above) on every
    coordinate for no box at all; a whole side None read as the wrong infinity refused it."""
    target = 3.0 if hi < np.inf else -3.0  # beyond the closed side
    hw = _Hardware(np.full(2, lo), np.full(2, hi), np.full(2, target))
    res = zo.train(hw, np.zeros(2), epochs=30, optimizer=zo.sgd(0.2), estimator=zo.CGE(mu=0.25, scheme="central"),
                   bounds=bounds, progress=False)
    assert res.steps == 30
    # at the closed side's wall, shrunk by mu (0.25 and its sums are exact in binary)
    assert res.params.tolist() == ([0.25, 0.25] if hi < np.inf else [-0.25, -0.25])


def test_a_bool_bound_is_refused_naming_it():
    """``isinstance(v, bool)`` let through: ``bounds=(False, True)`` is no box a person meant."""
    with pytest.raises(zo.ArgumentError, match=r"`bounds`: lo\[0\] must be a number or None, got False"):
        zo.train(lambda x: float(np.sum(x ** 2)), np.zeros(2), epochs=1, bounds=(False, True), progress=False)


def test_a_side_of_no_width_is_refused_as_narrower_than_mu_not_as_reversed():
    """``lo < hi`` for ``lo <= hi`` said "lo[1] = 1.0 is above hi[1] = 1.0, give each lower bound first"
    for a box of no width on a coordinate, where the fix is the one the narrow box's message names."""
    with pytest.raises(zo.ArgumentError, match=r"the box at index 1, \[1.0, 1.0\], is narrower than mu"):
        zo.train(lambda x: float(np.sum(x ** 2)), np.array([0.0, 1.0]), epochs=1, bounds=(np.array([0.0, 1.0]), np.array([2.0, 1.0])),
                 progress=False)


@pytest.mark.parametrize("scheme, width", [("forward", 0.5), ("central", 1.0)])
def test_a_box_exactly_as_wide_as_the_queries_need_is_kept_not_refused(scheme, width):
    """``lower < upper`` for ``lower <= upper`` refused a box of exactly ``mu`` (forward) or ``2 * mu``
    (central) on a coordinate, whose queries fit: the params held at one point there."""
    mu = 0.5
    lo, hi = np.array([0.0, -4.0]), np.array([width, 4.0])
    hw = _Hardware(lo, hi, [3.0, 1.0])
    res = zo.train(hw, np.array([0.0, 0.0]), epochs=10, optimizer=zo.sgd(0.1),
                   estimator=zo.CGE(mu=mu, scheme=scheme), bounds=(lo, hi), progress=False)
    assert res.params[0] == (0.0 if scheme == "forward" else 0.5)  # the one point of the shrunk box
    assert {p[0] for p in hw.points} == ({0.0, 0.5} if scheme == "forward" else {0.0, 0.5, 1.0})


def test_central_params_at_the_lower_wall_sit_at_lo_plus_mu_exactly():
    """``lower - m <= lo`` for ``<`` moved the central box's lower side a unit in the last place
    above ``lo + mu`` where the query ``(lo + mu) - mu`` is ``lo`` itself: the params at the wall
    were not the textbook loop's ``np.clip(x, lo + mu, hi - mu)`` (which the 1e-12 comparison missed)."""
    hw = _Hardware([0.5], [4.0], [-3.0])
    res = zo.train(hw, np.array([2.0]), epochs=30, optimizer=zo.sgd(0.2), estimator=zo.CGE(mu=0.25, scheme="central"),
                   bounds=(0.5, 4.0), progress=False)
    assert res.params[0] == 0.75 and min(p[0] for p in hw.points) == 0.5


def _stop_at_3(event, record, params):
    return event == "step" and record["step"] == 3


@pytest.mark.parametrize("other", [
    ([0.0, 0.2, 0.0], [1.0, 1.0, 1.0]),  # another lower side (the upper one a single number)
    ([0.0, 0.1, 0.0], [1.0, 1.0, 0.9]),  # another upper side (the lower one as written)
])
def test_a_resume_with_other_bounds_of_several_values_is_refused(tmp_path, other):
    """The checkpoint's record of a box of several values: ``or`` for ``and`` recorded ``[0.0, 1.0]``
    for a box whose upper side alone is one number, and a digest of the lower side alone missed the
    upper; either resumed a run under other bounds without a word."""
    path = tmp_path / "run.npz"
    kw = dict(epochs=10, optimizer=zo.sgd(0.1), progress=False, rng=0, checkpoint=path)
    zo.train(_Hardware([0, 0, 0], [1, 1, 1], [2, 2, 2]), np.full(3, 0.5), callbacks=[_stop_at_3],
             bounds=([0.0, 0.1, 0.0], [1.0, 1.0, 1.0]), **kw)
    assert zo.load_checkpoint(path)[1]["config"]["bounds"].startswith("sha256:")
    with pytest.raises(zo.CheckpointError, match=r"bounds: checkpoint has 'sha256:"):
        zo.train(_Hardware([0, 0, 0], [1, 1, 1], [2, 2, 2]), np.full(3, 0.5), resume=True, bounds=other, **kw)


def test_the_checkpoint_records_an_open_side_as_none(tmp_path):
    """The record of ``bounds=(None, 1.0)``: ``[None, 1.0]``, JSON's null, not ``-inf`` (no JSON number,
    a reader other than Python's refuses the header)."""
    path = tmp_path / "run.npz"
    zo.train(lambda x: float(np.sum((x - 2) ** 2)), np.zeros(2), epochs=2, optimizer=zo.sgd(0.1), progress=False,
             checkpoint=path, bounds=(None, 1.0))
    assert zo.load_checkpoint(path)[1]["config"]["bounds"] == [None, 1.0]


def test_sides_given_as_cupy_arrays_are_read_as_host_ones(monkeypatch):
    """A side given as an array of the params' backend (CuPy, the CPU stand-in refusing implicit host
    conversions) was read through ``np.asarray`` without ``to_numpy`` (mutant): refused as no array."""
    import _fakecupy

    lo, hi = np.array([0.0, -1.0]), np.array([1.0, 0.0])
    kw = dict(epochs=8, optimizer=zo.sgd(0.2), progress=False)
    host = zo.train(_Hardware(lo, hi, [3, -3]), np.array([0.5, -0.5]), bounds=(lo, hi), **kw)
    cp = _fakecupy.install(monkeypatch)
    res = zo.train(lambda x: _Hardware(lo, hi, [3, -3])(cp.asnumpy(x)), cp.asarray(np.array([0.5, -0.5])),
                   bounds=(cp.asarray(lo), cp.asarray(hi)), **kw)
    assert np.array_equal(cp.asnumpy(res.params), host.params)
