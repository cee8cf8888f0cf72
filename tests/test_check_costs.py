"""What train's run diagnostics cost a healthy run: the params-did-not-change watch reads each
update against the step's base point, which train holds anyway, instead of a copy of the params
kept from the run's start, and the base point is not kept into the next step (at d = 2e7 float32,
a sparse CGE run's peak traced memory was 6.6x the params' size against 4.6x before the watch)."""

from __future__ import annotations

import tracemalloc
from typing import NamedTuple

import numpy as np
import pytest

import zoracle as zo

D = 2_000_000  # float64: 16 MB a d-sized array, far above anything else a run holds


def _held_during_queries(run) -> float:
    """The most memory traced while the loss is called inside ``run(loss)``, in d-sized float64
    arrays, counted from before ``run`` (its input params are allocated before)."""
    seen = []

    def loss(p):
        seen.append(tracemalloc.get_traced_memory()[0])
        return float(np.dot(p, p))  # (no temporary)

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        run(loss)
    finally:
        tracemalloc.stop()
    return (max(seen) - base) / (8 * D)


def test_a_run_keeps_no_copy_of_the_params_across_its_steps():
    x0 = np.full(D, 0.5)
    coords = np.array([0, 1])
    # the estimate alone: the gradient it fills and its query point
    alone = _held_during_queries(lambda loss: zo.estimate_gradient(loss, x0, zo.CGE(mu=1e-3), coordinates=coords))
    out = []
    held = _held_during_queries(lambda loss: out.append(zo.train(
        loss, x0, estimator=zo.CGE(mu=1e-3), sparsity=1 - 2 / D, ratios="uniform", optimizer=zo.sgd(0.1),
        epochs=4, rng=0, progress=False)))
    assert out[0].steps == 4 and not np.array_equal(out[0].params, x0)  # a healthy run: it moved
    # train adds its own params, the last step's estimate and the mask's bookkeeping (under one array):
    # a copy of the params kept for the watch, or the last base point kept into the next step, is
    # one array more each
    assert held < alone + 3, (held, alone)


class _Count(NamedTuple):
    count: int


def _own(update, lr):
    return zo.Optimizer(lambda p: _Count(0), update, lr, "own", f"own(lr={lr})")


def _far(w):  # float32 params of 100 and a small gradient: updates of lr 1e-6 round away
    return float(1e-3 * np.sum((w.astype(np.float64) - 103.0) ** 2))


def _run(update, lr=0.1):
    return zo.train(_far, np.full(4, 100.0, np.float32), epochs=6, estimator=zo.CGE(mu=1e-1),
                    optimizer=_own(update, lr), rng=0, progress=False)


def _in_place(g, s, p, lr=None):
    p -= (lr * g).astype(p.dtype)
    return p, _Count(s.count + 1)


def test_an_optimizer_that_updates_in_place_is_read_against_a_copy():
    r = _run(_in_place)  # lr 0.1 moves them: quiet
    assert not np.array_equal(r.params, np.full(4, 100.0, np.float32))

    # in place, every update rounding away: its first step is not read (no copy was kept before it)
    with pytest.warns(UserWarning, match=r"the params did not change over epochs 1 to 3, though.*lr was 1e-06"):
        _run(_in_place, lr=1e-6)
    with pytest.warns(UserWarning, match=r"the params did not change over epochs 1 to 3.*returned its input"):
        _run(lambda g, s, p, lr=None: (p, _Count(s.count + 1)))


def test_an_optimizer_that_returns_a_view_it_wrote_into_is_not_taken_for_one_that_stayed():
    def view(g, s, p, lr=None):  # a new array object sharing the params' memory, moved in place
        p -= (lr * g).astype(p.dtype)
        return p[:], _Count(s.count + 1)

    r = _run(view)  # quiet: the filterwarnings setting makes a warning an error
    assert not np.array_equal(r.params, np.full(4, 100.0, np.float32))


def test_the_loss_types_of_each_batch_call_are_compared_without_their_regex_each_time():
    """Each ``batch`` / ``coordinate_losses`` / ``suffix`` call compares its losses' precision
    with the base point's: two regex matches a call, 4 us of the 80 a batch CGE estimate at d = 10
    took (8% a query). The names are few: the answers are kept."""
    from zoracle._oracle import precision_bits

    class Batched:
        def __call__(self, p):
            return float(p[0])

        def batch(self, rows):
            return rows[:, 0].astype(np.float32)

    hits = precision_bits.cache_info().hits
    for _ in range(3):
        zo.estimate_gradient(Batched(), np.linspace(0.1, 1.0, 10, dtype=np.float32), zo.CGE(mu=1e-2))
    assert precision_bits.cache_info().hits >= hits + 4
    assert [precision_bits(n) for n in ("float32", "bfloat16", "float8_e4m3fn", "int64", "float")] == [24, 8, 4, 0, 53]
