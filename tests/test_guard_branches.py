"""Guards no other test reached (found by line coverage of the core): each is reached through the
public API as a user would, and checked against a reference of its own (a dense run, a hand count
of queries, the checkpoint's own header)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import zoracle as zo


def test_snes_refuses_a_width_whose_samples_would_overflow_before_any_query():
    """A sigma that overflows params + 10 sigma (the loss unbounded below along it) is refused,
    naming the index and the dtype, before the oracle is queried with inf."""
    calls = []

    def lin(x):
        calls.append(1)
        return float(-np.sum(x))

    for dtype, big in ((np.float64, 1e308), (np.float32, 1e38)):
        with pytest.raises(zo.ArgumentError, match=rf"SNES diverged: .*sigma reached .* \(at index 1\).*overflow "
                                                   rf"{np.dtype(dtype).name}.*lower it"):
            zo.estimate_gradient(lin, np.ones(3, dtype), zo.SNES(), state=np.array([1.0, big, 1.0]))
    assert calls == []
    # a wide but representable sigma is taken
    g = zo.estimate_gradient(lin, np.ones(3), zo.SNES(), state=np.full(3, 1e300), rng=0)
    assert np.isfinite(g.grad).all()


def test_parameters_in_no_block_are_estimated_densely_every_step():
    """``blocks`` that leave gaps: the gaps' parameters join the dense set. Keeping every scored
    weight, the run is the dense run exactly; keeping half, every gap coordinate still moves."""
    a = np.arange(1.0, 9.0)
    b = np.linspace(-1, 1, 8)

    def f(x):
        return float(0.5 * (a * x) @ x - b @ x)

    x0 = np.linspace(0.2, 1.0, 8)
    kw = dict(epochs=1, steps_per_epoch=5, progress=False, optimizer=zo.sgd(0.05))
    dense = zo.train(f, x0, **kw)
    for blocks in ([slice(0, 2), slice(5, 8)], [slice(1, 3), slice(4, 6)]):
        gaps = zo.train(f, x0, sparsity=0.0, ratios=[1.0, 1.0], blocks=blocks, **kw)
        assert np.array_equal(gaps.params, dense.params) and gaps.nfev == dense.nfev
    half = zo.train(f, x0, sparsity=0.5, ratios="uniform", blocks=[slice(0, 2), slice(6, 8)], **kw)
    moved = np.flatnonzero(half.params != x0)
    assert set(range(2, 6)) <= set(moved.tolist())  # the four gap coordinates, every one
    assert half.nfev == 5 * (1 + 4 + 1 + 1)  # per step: base point, forward steps of 4 gaps + 1 + 1 kept


def test_a_schedule_that_raises_is_refused_before_the_first_query_naming_its_step():
    """A schedule failing at a step the run reaches (a list indexed past its end) is named with
    the step and the exception, before any query (not after the steps before it)."""
    queries = []

    def f(x):
        queries.append(1)
        return float(np.sum((x - 1) ** 2))

    lrs = [0.1, 0.05, 0.02]
    with pytest.raises(zo.ArgumentError, match=r"the `schedule` schedule <lambda> at step 3 raised IndexError"):
        zo.train(f, np.zeros(3), epochs=1, steps_per_epoch=4, schedule=lambda t: lrs[t], progress=False)
    with pytest.raises(zo.ArgumentError, match=r"at step 33 raised ZeroDivisionError"):
        zo.train(f, np.zeros(3), epochs=1, steps_per_epoch=40, schedule=lambda t: 0.1 if t < 33 else 1 / 0,
                 progress=False)
    assert queries == []


class _Target:
    """A data oracle: the squared distance of params from its batch, a number."""

    def bind(self, t):
        return lambda x: float(np.sum((x - t) ** 2))


def test_resuming_mid_epoch_with_fewer_batches_than_the_checkpoint_ran_names_pos(tmp_path):
    """A run stopped after 3 of an epoch's 4 batches (max_queries), resumed with a callable giving 2
    batches: refused naming the header's pos and the batches, where the same batches resume."""
    path = str(tmp_path / "run.npz")
    batches = [1.0, 2.0, 3.0, 4.0]
    first = zo.train(_Target(), np.zeros(2), batches=lambda e: batches, epochs=1, max_queries=7,
                     checkpoint=path, progress=False)
    _, meta = zo.load_checkpoint(path)
    assert first.stopped and (meta["epoch"], meta["pos"], meta["step"]) == (0, 3, 3)
    with pytest.raises(zo.CheckpointError, match=r"header field 'pos' is 3, but epoch 0 has only 2 batches"):
        zo.train(_Target(), np.zeros(2), batches=lambda e: batches[:2], epochs=2, resume=path, progress=False)
    whole = zo.train(_Target(), np.zeros(2), batches=lambda e: batches, epochs=2, progress=False)
    resumed = zo.train(_Target(), np.zeros(2), batches=lambda e: batches, epochs=2, resume=path, progress=False)
    assert np.array_equal(resumed.params, whole.params) and resumed.steps == whole.steps == 8


class _Stateful:
    def __init__(self, state):
        self.state = state

    def __call__(self, x):
        return float(np.sum((x - 1) ** 2))

    def state_arrays(self):
        return self.state

    def load_state_arrays(self, arrays):
        self.state = arrays


def test_oracle_state_a_checkpoint_cannot_hold_or_restore_is_refused(tmp_path):
    """Text state is refused before any query and no file is written; a checkpoint holding oracle
    state resumed by an oracle without load_state_arrays is refused (the state would be dropped)."""
    path = str(tmp_path / "run.npz")
    kw = dict(epochs=1, steps_per_epoch=2, progress=False)
    with pytest.raises(zo.ArgumentError, match=r"the oracle's state 'names' has dtype <U1: .*numeric arrays only"):
        zo.train(_Stateful({"names": np.array(["a", "b"])}), np.zeros(2), checkpoint=path, **kw)
    assert not os.path.exists(path)
    zo.train(_Stateful({"count": np.arange(3)}), np.zeros(2), checkpoint=path, **kw)
    arrays, _ = zo.load_checkpoint(path)
    assert arrays["oracle/count"].tolist() == [0, 1, 2]
    with pytest.raises(zo.CheckpointError, match="holds oracle state but the oracle has no load_state_arrays"):
        zo.train(lambda x: float(np.sum((x - 1) ** 2)), np.zeros(2), resume=path, **dict(kw, epochs=2))
    back = _Stateful({"count": np.zeros(3, np.int64)})
    zo.train(back, np.zeros(2), resume=path, **dict(kw, epochs=2))
    assert back.state["count"].tolist() == [0, 1, 2]
