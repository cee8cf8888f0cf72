"""zoracle.train as a driver over _run_setup, _run_loop, _run_save and _run_end (a377f63): what the
950-line function did that a split into parts may change without a result changing. Here: how long
a step keeps the params it started from (the function dropped them right after the step's watches
read them; the parts kept them alive through the step's callbacks and its save)."""

from __future__ import annotations

import weakref

import numpy as np

import zoracle as zo

D = 1000


def _quad(x):
    return float(((np.asarray(x) - 3) ** 2).sum())


def _watched_sgd(given: list):
    """sgd(0.1) that keeps a weak reference to the params each update is given (a step's base point)."""
    base = zo.sgd(0.1)

    def update(grad, state, params, lr):
        given.append(weakref.ref(params))
        return base.update(grad, state, params, lr=lr)

    return zo.Optimizer(base.init, update, 0.1, "watched", {"name": "watched"})


def test_a_steps_base_params_are_freed_before_its_callbacks():
    # each step's update returns new params: the ones it replaced are garbage before the step's
    # callbacks run (a d-sized array more through every callback otherwise)
    given, alive = [], []

    def cb(event, record, params):
        if event == "step":
            alive.append(given[-1]() is not None)

    res = zo.train(_quad, np.zeros(D), epochs=8, optimizer=_watched_sgd(given), callbacks=[cb], progress=False)
    assert res.steps == 8 and len(alive) == 8
    assert not any(alive), alive


class _StateOracle:
    """A plain oracle with (empty-ish) state of its own: train calls state_arrays() at each save."""

    def __init__(self, given: list):
        self.given, self.alive = given, []

    def __call__(self, x):
        return _quad(x)

    def state_arrays(self):
        if self.given:  # a save after a step (not the checks before the first query)
            self.alive.append(self.given[-1]() is not None)
        return {"s": np.zeros(2)}

    def load_state_arrays(self, state):
        pass


def test_a_steps_base_params_are_freed_before_its_save(tmp_path):
    # checkpoint_every=1 saves inside the step (before the next one): without the replaced params
    given = []
    oracle = _StateOracle(given)
    zo.train(oracle, np.zeros(D), epochs=1, steps_per_epoch=6, optimizer=_watched_sgd(given),
             checkpoint=tmp_path / "run.npz", checkpoint_every=1, progress=False)
    assert len(oracle.alive) >= 6
    assert not any(oracle.alive), oracle.alive


def test_the_start_params_and_optimizer_state_are_not_kept_through_the_run():
    # adam's moments at init, and the params the run starts from, are replaced by the first step's:
    # nothing holds them after it (the driver's own names for them kept them through the whole run)
    base, seen = zo.adam(0.01), []
    first = {}

    def init(params):
        state = base.init(params)
        first["m"] = weakref.ref(state.mu)
        return state

    def update(grad, state, params, lr):
        first.setdefault("params", weakref.ref(params))
        return base.update(grad, state, params, lr=lr)

    def cb(event, record, params):
        if event == "step" and record["step"] >= 1:
            seen.append((first["m"]() is not None, first["params"]() is not None))

    zo.train(_quad, np.zeros(D), epochs=4, optimizer=zo.Optimizer(init, update, 0.01, "adam", base.config),
             callbacks=[cb], progress=False)
    assert seen == [(False, False)] * 3
