"""Peak NumPy memory of estimates and mask ratios on large parameter vectors, as multiples of the
float32 parameters' size (tracemalloc, d = 2e6): each bound sits between the peak before its fix
and the peak after, so a copy that comes back fails it. No timings."""

import tracemalloc

import numpy as np
import pytest

import zoracle as zo
from zoracle._plan import _ROWS
from zoracle._pruning import layer_ratios, zo_grasp

D = 2_000_000
K = 64  # the test oracles read a prefix of the parameters only: their own memory stays small


class Prefix:
    """``sum(x[:K]^2)``; ``coordinate_losses`` and ``batch`` allocate O(len(coords)) / O(rows)."""

    max_queries_per_call = float("inf")

    def __call__(self, x):
        s = x[:K].astype(np.float64)
        return float(s @ s)

    def coordinate_losses(self, x, coords, step):
        base = self(x)
        out = np.full(len(coords), base)
        head = np.flatnonzero(np.asarray(coords) < K)
        xc = x[np.asarray(coords)[head]]
        out[head] = base - xc.astype(np.float64) ** 2 + (xc + x.dtype.type(step)).astype(np.float64) ** 2
        return out


class PrefixBatch:
    def __call__(self, x):
        s = x[:K].astype(np.float64)
        return float(s @ s)

    def batch(self, X):
        s = X[:, :K].astype(np.float64)
        return (s * s).sum(1)


def _peak(fn, nbytes):
    """``fn()``'s peak traced allocation beyond what was held before it, in multiples of ``nbytes``."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return (peak - base) / nbytes


@pytest.fixture(scope="module")
def params():
    return np.random.default_rng(0).standard_normal(D, dtype=np.float32)


def test_dense_cge_holds_no_concatenated_copies(params):
    # before: 15x (the one task's losses and coordinates concatenated again, the steps' float64
    # copies and the differences beside each other); after: 9x, at the oracle's call (coordinates
    # 2x, the oracle's losses and the task's 2x each, its private copy and the estimate's 1x each)
    peak = _peak(lambda: zo.estimate_gradient(Prefix(), params, zo.CGE()), params.nbytes)
    assert peak < 12, peak


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_rge_draws_rows_in_place_and_scales_the_sum_in_place(params, scheme, cached, monkeypatch):
    # one direction a block (a budget below one row, as every budget at d >= 8.4e6); not cached:
    # rows past the row cache's 64 MiB, as there. Before: 11x cached, 7x not (a row drawn beside
    # its block, the (1,) @ (1, d) product, the scaled sum beside the sum); after: 9x cached (the
    # cache's copies of the rows), 5x not (the float64 sum and block, the estimate's params)
    if not cached:
        monkeypatch.setattr(_ROWS, "default", 0)
    budget = 8 * D - 1
    est = zo.RGE(directions=2, scheme=scheme)
    seed = {"forward": 12, "central": 13}[scheme] + 10 * cached
    peak = _peak(lambda: zo.estimate_gradient(PrefixBatch(), params, est, rng=seed, budget_bytes=budget), params.nbytes)
    assert peak < (10 if cached else 6), peak


def test_rge_keeps_no_rows_after_the_estimate(params):
    # the cached rows of a finished estimate were held until the next one (8x the params here)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        est = zo.estimate_gradient(PrefixBatch(), params, zo.RGE(directions=2), rng=21)
        held = (tracemalloc.get_traced_memory()[0] - base) / params.nbytes
    finally:
        tracemalloc.stop()
    assert held < 3, held  # the gradient itself: 1x
    assert est.grad.shape == (D,)


def test_layer_ratios_rank_without_copies(params):
    blocks = [slice(0, D // 4), slice(D // 4, D // 2), slice(D // 2, D)]
    scores = params.astype(np.float64)
    # before: 8.2x (a concatenated copy of the scores, an owner per score, |s| beside -|s|); after:
    # 4x (the keys and the stable sort's indices)
    peak = _peak(lambda: layer_ratios(scores, blocks, 0.9), params.nbytes)
    assert peak < 6, peak


def test_layer_ratios_same_counts_for_gaps_and_empty_blocks():
    rng = np.random.default_rng(3)
    s = rng.standard_normal(100)
    for blocks in ([slice(0, 40), slice(40, 100)], [slice(10, 40), slice(50, 100)], [slice(60, 100), slice(0, 60)]):
        for ranking in ("magnitude", "grasp"):
            vals = np.concatenate([s[b] for b in blocks])
            owner = np.repeat(np.arange(len(blocks)), [b.stop - b.start for b in blocks])
            key = -np.abs(vals) if ranking == "magnitude" else vals
            kept = np.argsort(key, kind="stable")[:int(round(0.3 * vals.size))]
            counts = np.bincount(owner[kept], minlength=len(blocks))
            want = counts / np.array([b.stop - b.start for b in blocks])
            np.testing.assert_array_equal(layer_ratios(s, blocks, 0.7, ranking=ranking), want)


def test_zo_grasp_scores_in_place(params):
    # before: 11x (float64 copies of both estimates, of params and every intermediate beside each
    # other); after: 9x (the second estimate's own peak, with the rows it caches at this d)
    peak = _peak(lambda: zo_grasp(PrefixBatch(), params, directions=1, rng=31), params.nbytes)
    assert peak < 10, peak


def test_coordinate_losses_calls_get_views_not_copies():
    """Each ``coordinate_losses`` call (one per 2048 queries) got a fresh copy of all d parameters:
    at d = 1e7 over 100,000 coordinates, 49 copies of 80 MB, 85% of the estimate's time. The calls
    now get read-only views of one array, as prefix and suffix calls do; counted here by the
    arrays' memory, not by time."""
    seen = []

    class Cheap(Prefix):
        max_queries_per_call = 16

        def coordinate_losses(self, x, coords, step):
            seen.append((x.flags.writeable, np.shares_memory(x, seen[0][2]) if seen else True, x))
            return super().coordinate_losses(x, coords, step)

    x = np.random.default_rng(1).standard_normal(1000)
    coords = np.arange(0, 1000, 10)
    got = zo.estimate_gradient(Cheap(), x, zo.CGE(mu=1e-3), coordinates=coords)
    assert len(seen) == 7
    assert all(not w and shared for w, shared, _ in seen), [(w, s) for w, s, _ in seen]
    want = zo.estimate_gradient(Prefix().__call__, x, zo.CGE(mu=1e-3), coordinates=coords)
    np.testing.assert_allclose(got.grad, want.grad, rtol=1e-9, atol=1e-9)


def test_coordinate_losses_writing_into_its_view_gets_a_copy_and_one_writing_past_the_flag_fails():
    class InPlace(Prefix):
        max_queries_per_call = 8

        def coordinate_losses(self, x, coords, step):  # perturbs in place, and puts the value back
            out = []
            for i in coords:
                old = x[i]
                x[i] = old + x.dtype.type(step)
                out.append(self(x))
                x[i] = old
            return np.array(out)

    x = np.random.default_rng(2).standard_normal(200)
    coords = np.arange(0, 100, 3)
    got = zo.estimate_gradient(InPlace(), x, zo.CGE(mu=1e-3), coordinates=coords)
    want = zo.estimate_gradient(Prefix().__call__, x, zo.CGE(mu=1e-3), coordinates=coords)
    np.testing.assert_array_equal(got.grad, want.grad)

    class PastTheFlag(Prefix):
        max_queries_per_call = 8

        def coordinate_losses(self, x, coords, step):
            w = np.ndarray(x.shape, x.dtype, buffer=memoryview(x.base if x.base is not None else x).cast("B"))
            w[int(coords[0])] += 1.0  # (as torch.from_numpy(x) writes: past the read-only flag) and left there
            return super().coordinate_losses(x, coords, step)

    with pytest.raises(zo.OracleError, match="coordinate_losses wrote into the parameters"):
        zo.estimate_gradient(PastTheFlag(), x, zo.CGE(mu=1e-3), coordinates=coords)


def test_an_oracle_writing_into_its_view_is_called_twice_once_not_at_every_step():
    """Each estimate wraps its oracle afresh: one whose coordinate_losses writes into its read-only
    view was refused and called again with a copy at the first call of every estimate, a train step
    each time (the call's work, and what it did before its write, twice a step: 10 calls for 5
    steps). The refusal is remembered for the oracle: once in the run."""
    calls = []

    class InPlace(Prefix):
        def coordinate_losses(self, x, coords, step):
            calls.append(x.flags.writeable)
            out = []
            for i in coords.tolist():
                old = x[i]
                x[i] = old + x.dtype.type(step)
                out.append(self(x))
                x[i] = old
            return np.array(out)

    x = np.random.default_rng(3).standard_normal(50)
    run = dict(estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.01), epochs=1, steps_per_epoch=5, progress=False)
    got = zo.train(InPlace(), x, **run)
    assert calls == [False] + [True] * 5, calls
    want = zo.train(Prefix().__call__, x, **run)
    np.testing.assert_array_equal(got.params, want.params)
