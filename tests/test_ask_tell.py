"""zoracle.AskTell: train driven by the caller's ask() / tell(losses), for black boxes that cannot be
called as a function (lab hardware, a human rater, a queued batch job)."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import zoracle as zo

ROOT = Path(__file__).resolve().parents[1]
X0 = np.linspace(-1.0, 1.0, 12)
BLOCKS = [slice(0, 6), slice(6, 12)]


def f(x):
    return float(((x - 3) ** 2).sum() + np.sin(3 * x).sum())


def answered(opt, fn=f, tells=None, sizes=None):
    """Answer ``opt``'s asks with ``fn`` until the run ends (or ``tells`` tells); the asks' sizes."""
    sizes = [] if sizes is None else sizes
    while not opt.done and (tells is None or len(sizes) < tells):
        X = opt.ask()
        sizes.append(X.shape[0])
        opt.tell([fn(x) for x in X])
    return sizes


def timeless(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def same_run(a, b):
    assert a.params.dtype == b.params.dtype and np.array_equal(a.params, b.params)
    assert timeless(a.history.steps) == timeless(b.history.steps)
    assert timeless(a.history.epochs) == timeless(b.history.epochs)
    assert (a.nfev, a.steps, a.epochs, a.stopped) == (b.nfev, b.steps, b.epochs, b.stopped)
    assert (a.coordinates is None) == (b.coordinates is None)
    if a.coordinates is not None:
        assert np.array_equal(a.coordinates, b.coordinates)


SETTINGS = {
    "cge": dict(estimator=zo.CGE()),
    "cge-central": dict(estimator=zo.CGE(scheme="central"), schedule=zo.cosine_schedule(0.05, 12)),
    "rge": dict(estimator=zo.RGE(directions=5)),
    "zo-grasp": dict(estimator=zo.CGE(), sparsity=0.5, blocks=BLOCKS, grasp_directions=8),
    "zo-grasp-step-masks": dict(estimator=zo.CGE(scheme="central"), sparsity=0.5, blocks=BLOCKS, grasp_directions=8,
                                mask_shuffle_interval="step"),
    "snes": dict(estimator=zo.SNES()),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_an_ask_tell_loop_answered_by_a_function_is_train_with_it_bit_for_bit(name):
    common = dict(epochs=6, steps_per_epoch=2, optimizer=zo.adam(0.05), rng=3, progress=False, **SETTINGS[name])
    ref = zo.train(f, X0, **common)
    opt = zo.AskTell(X0, **common)
    sizes = answered(opt)
    same_run(opt.result, ref)
    assert sum(sizes) == ref.nfev and len(sizes) == ref.steps + (2 if "sparsity" in common else 0)
    assert np.array_equal(opt.params, ref.params) and opt.history is opt.result.history


def test_params_and_history_between_tells_are_the_runs_at_that_step():
    seen = []
    ref = zo.train(f, X0, epochs=4, steps_per_epoch=2, optimizer=zo.sgd(0.05), rng=1, progress=False,
                   callbacks=[lambda event, rec, p: seen.append(p) if event == "step" else None])
    opt = zo.AskTell(X0, epochs=4, steps_per_epoch=2, optimizer=zo.sgd(0.05), rng=1, progress=False)
    assert np.array_equal(opt.params, X0) and opt.history.steps == ()
    with pytest.raises(zo.ZoracleError, match=r"the run has not ended: ask\(\) and tell\(\) until .done"):
        opt.result
    for k in range(len(seen)):
        X = opt.ask()
        assert np.array_equal(X[0], opt.params)  # the step's base point leads its points
        opt.tell([f(x) for x in X])
        if not opt.done:
            assert np.array_equal(opt.params, seen[k])
            assert timeless(opt.history.steps) == timeless(ref.history.steps[:k + 1])
    assert opt.done and np.array_equal(opt.params, ref.params)


@pytest.mark.parametrize("stop", ["after tell", "between ask and tell"])
@pytest.mark.parametrize("name", ["rge", "zo-grasp-step-masks"])
def test_a_resumed_ask_tell_is_the_uninterrupted_one(tmp_path, name, stop):
    common = dict(epochs=5, steps_per_epoch=2, optimizer=zo.adam(0.05), rng=7, progress=False, **SETTINGS[name])
    whole = zo.AskTell(X0, **common)
    answered(whole)
    path = tmp_path / "run.npz"
    first = zo.AskTell(X0, checkpoint=path, **common)
    answered(first, tells=5)
    if stop == "between ask and tell":
        pending = first.ask()
    first.close()  # (a process killed here: the checkpoint holds what tell() returned after)
    again = zo.AskTell(X0, checkpoint=path, resume=True, **common)
    if stop == "between ask and tell":
        assert np.array_equal(again.ask(), pending)  # the step in flight is asked again
        again.tell([f(x) for x in pending])
    answered(again)
    same_run(again.result, whole.result)
    assert zo.load_checkpoint(path)[1]["step"] == whole.result.steps


def test_tell_refuses_wrong_losses_naming_the_query_and_the_points_stay_asked():
    opt = zo.AskTell(X0, epochs=2, progress=False, rng=0)
    with pytest.raises(zo.ZoracleError, match=r"tell\(\) without ask\(\): no points were asked"):
        opt.tell([1.0])
    X = opt.ask()
    with pytest.raises(zo.ZoracleError, match=r"ask\(\) twice without tell\(\): tell the 13 losses"):
        opt.ask()
    losses = [f(x) for x in X]
    with pytest.raises(zo.OracleError, match=r"expected 13 losses, got shape \(12,\)"):
        opt.tell(losses[:-1])
    for bad in (np.nan, np.inf, None):
        told = list(losses)
        told[4] = bad
        with pytest.raises(zo.OracleError, match=r"query 4 of the last ask\(\)"):
            opt.tell(told)
    opt.tell(losses)  # the refused tells changed nothing
    answered(opt)
    same_run(opt.result, zo.train(f, X0, epochs=2, progress=False, rng=0))
    with pytest.raises(zo.ZoracleError, match=r"ask\(\) after the run ended: read .result"):
        opt.ask()
    with pytest.raises(zo.ZoracleError, match="the run has ended"):
        opt.tell(losses)


def test_the_runs_errors_raise_from_the_constructor_and_from_tell():
    with pytest.raises(zo.ArgumentError, match="`mu` must be"):
        zo.AskTell(X0, mu=-1.0, progress=False)

    def stop_at_2(event, rec, params):
        if event == "step" and rec["step"] == 2:
            raise ValueError("the rater went home")

    opt = zo.AskTell(X0, epochs=5, callbacks=[stop_at_2], progress=False)
    with pytest.raises(ValueError, match="the rater went home"):
        answered(opt)
    assert opt.done and [r["step"] for r in opt.history.steps] == [0, 1, 2]  # as the error left the run
    assert not np.array_equal(opt.params, X0)
    with pytest.raises(zo.ZoracleError, match="the run stopped with ValueError: the rater went home") as err:
        opt.ask()
    assert isinstance(err.value.__cause__, ValueError)
    with pytest.raises(zo.ZoracleError, match="the run stopped with ValueError"):
        opt.result
    opt._thread.join(60)
    assert not opt._thread.is_alive()


def test_a_diverged_run_asks_its_probes_one_point_each_and_raises_trains_error():
    """train's divergence message probes the loss at the last params with plain calls, outside any
    estimate: each is an ask of one point, and tell() raises train's own error."""
    def quartic(x):
        return float((x ** 4).sum())

    settings = dict(epochs=40, optimizer=zo.sgd(10.0), progress=False)
    with pytest.raises(zo.ArgumentError, match="training diverged") as want:
        zo.train(quartic, np.ones(3), **settings)
    opt = zo.AskTell(np.ones(3), **settings)
    sizes = []
    with pytest.raises(zo.ArgumentError, match="training diverged") as got:
        answered(opt, quartic, sizes=sizes)
    assert str(got.value) == str(want.value)
    assert sizes[:3] == [4, 4, 4] and len(sizes) > 3 and set(sizes[3:]) == {1}


def test_close_a_with_block_and_garbage_collection_end_the_runs_thread():
    opt = zo.AskTell(X0, epochs=3, progress=False)
    opt.ask()
    thread = opt._thread
    opt.close()
    assert not thread.is_alive()
    with pytest.raises(zo.ZoracleError, match="closed AskTell"):
        opt.ask()
    with zo.AskTell(X0, epochs=3, progress=False) as opt:
        thread = opt._thread
        answered(opt, tells=1)
    assert not thread.is_alive()
    opt = zo.AskTell(X0, epochs=3, progress=False)
    opt.ask()
    thread = opt._thread
    del opt
    gc.collect()
    thread.join(60)
    assert not thread.is_alive()


def test_ctrl_c_while_tell_waits_ends_the_run_and_keeps_its_steps(ctrl_c, tmp_path):
    path = tmp_path / "run.npz"
    holder = []

    def interrupt(event, rec, params):
        if event == "step" and rec["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the caller waits in tell(): interrupted there
            deadline = time.monotonic() + 60
            while not holder[0]._channel.closed and time.monotonic() < deadline:
                time.sleep(0.01)

    opt = zo.AskTell(X0, epochs=6, callbacks=[interrupt], checkpoint=path, progress=False, rng=0)
    holder.append(opt)
    with pytest.raises(KeyboardInterrupt):
        answered(opt)
    opt._thread.join(60)
    assert not opt._thread.is_alive() and not opt.done
    with pytest.raises(zo.ZoracleError, match="closed AskTell"):
        opt.ask()
    assert zo.load_checkpoint(path)[1]["step"] == 4  # every step told was saved
    again = zo.AskTell(X0, epochs=6, checkpoint=path, resume=True, progress=False, rng=0)
    answered(again)
    same_run(again.result, zo.train(f, X0, epochs=6, progress=False, rng=0))


SCRIPT = """
import sys, numpy as np, zoracle as zo
opt = zo.AskTell(np.zeros(3), epochs=5, progress=False, checkpoint={path!r})
X = opt.ask()
opt.tell([float((x ** 2).sum()) for x in X])
X = opt.ask()
{end}
"""


@pytest.mark.parametrize("end, code", [("print('left')", 0), ("raise RuntimeError('lab is closed')", 1),
                                       ("sys.exit(3)", 3), ("del opt; print('dropped')", 0)])
def test_a_script_that_abandons_an_ask_tell_exits(tmp_path, end, code):
    path = tmp_path / "run.npz"
    env = {**os.environ, "PYTHONPATH": str(Path(zo.__file__).resolve().parents[1])}  # (the zoracle under test)
    # (a generous bound: an exit that waited on the run's thread would hang forever)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT.format(path=str(path), end=end))], env=env,
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == code, r.stderr
    assert "lab is closed" in r.stderr if code == 1 else "Traceback" not in r.stderr
    assert zo.load_checkpoint(path)[1]["step"] == 1
