"""Estimator math: CGE / sparse CGE / RGE against analytic gradients and SciPy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import approx_fprime, rosen, rosen_der, rosen_hess

import zoracle as zo
from zoracle.testing import QuadraticOracle
from zoracle.testing.strategies import quadratic_problems

# ---------------------------------------------------------------------------------------
# oracles exposing exactly one capability, so every planner path is exercised


class CallOnly:
    def __init__(self, q):
        self.q = q

    def __call__(self, x):
        return self.q(x)


class BatchOnly(CallOnly):
    def batch(self, X):
        return self.q.batch(X)


class CoordOnly(CallOnly):
    def coordinate_losses(self, x, coords, step):
        return self.q.coordinate_losses(x, coords, step)


PATHS = {
    "call": CallOnly,
    "batch": BatchOnly,
    "coordinate": CoordOnly,
    "split": lambda q: q,  # QuadraticOracle itself declares every capability: split wins
}


def _quad_on(xp, q):
    """The same quadratic with its arrays on backend ``xp``."""
    return QuadraticOracle(xp.asarray(q.A), xp.asarray(q.b), q.c, q.blocks)


@pytest.mark.parametrize("path", list(PATHS))
@given(problem=quadratic_problems(dim=st.integers(1, 200), n_blocks=st.integers(1, 5)))
@settings(max_examples=15)
def test_central_cge_exact_on_quadratics(path, problem):
    q, x = problem
    oracle = PATHS[path](q)
    est = zo.estimate_gradient(oracle, x, zo.CGE(mu=5e-3, scheme="central"))
    g = q.grad(x)
    assert zo.capabilities(oracle).best == path
    assert np.linalg.norm(est.grad - g) <= 1e-7 * max(1.0, np.linalg.norm(g))
    assert est.nfev == 2 * x.size + 1
    assert est.loss == pytest.approx(q(x), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("path", list(PATHS))
@given(problem=quadratic_problems(dim=st.integers(1, 200)), mu=st.sampled_from([1e-4, 5e-3, 1e-1]))
@settings(max_examples=15)
def test_forward_cge_bias_bound(path, problem, mu):
    q, x = problem
    est = zo.estimate_gradient(PATHS[path](q), x, zo.CGE(mu=mu))
    g = q.grad(x)
    roundoff = 1e-12 * (abs(q(x)) + 1) / mu
    bound = mu * np.max(np.abs(np.diag(q.A))) / 2 + roundoff
    assert np.max(np.abs(est.grad - g)) <= bound * (1 + 1e-9)
    assert est.nfev == x.size + 1


def test_backends_agree_on_quadratic(xp):
    rng = np.random.default_rng(3)
    q = QuadraticOracle(rng.standard_normal((30, 30)), rng.standard_normal(30), blocks=[slice(0, 10), slice(10, 30)])
    qx = _quad_on(xp, q)
    x = xp.asarray(rng.standard_normal(30))
    for path, make in PATHS.items():
        est = zo.estimate_gradient(make(qx), x, zo.CGE(scheme="central"))
        assert type(est.grad) is type(x), path
        g = q.grad(np.asarray(x.get() if hasattr(x, "get") else x))
        got = est.grad.get() if hasattr(est.grad, "get") else est.grad
        np.testing.assert_allclose(got, g, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(xp, dtype):
    x = xp.asarray(np.linspace(-1, 1, 7), dtype=dtype)
    f = lambda p: float((p.astype(xp.float64) ** 2).sum())  # noqa: E731
    for est in (zo.CGE(), zo.CGE(scheme="central"), zo.RGE(directions=3)):
        e = zo.estimate_gradient(f, x, est, rng=0)
        assert e.grad.dtype == dtype and e.grad.shape == x.shape
    e = zo.estimate_gradient(f, x, zo.CGE(mu=1e-2, scheme="central"))
    got = e.grad.get() if hasattr(e.grad, "get") else e.grad
    tol = 1e-3 if dtype == np.float32 else 1e-8
    np.testing.assert_allclose(got, 2 * np.linspace(-1, 1, 7), atol=tol)


def test_rosenbrock_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.5, 1.5, size=50)
    mu = 1e-6
    est = zo.estimate_gradient(rosen, x, zo.CGE(mu=mu))
    ref = approx_fprime(x, rosen, mu)
    np.testing.assert_allclose(est.grad, ref, rtol=1e-8, atol=1e-8)
    # forward bias: mu/2 * f''(xi) on [x_i, x_i + mu]; f'' is convex in x_i, so its max is at an end
    mu = 1e-3
    est = zo.estimate_gradient(rosen, x, zo.CGE(mu=mu))
    h_lo = np.abs(np.diag(rosen_hess(x)))
    h_hi = np.array([abs(rosen_hess(x + mu * np.eye(50)[i])[i, i]) for i in range(50)])
    bound = mu / 2 * np.maximum(h_lo, h_hi) + 1e-9
    assert np.all(np.abs(est.grad - rosen_der(x)) <= bound)
    central = zo.estimate_gradient(rosen, x, zo.CGE(mu=mu, scheme="central"))
    assert np.max(np.abs(central.grad - rosen_der(x))) < np.max(np.abs(est.grad - rosen_der(x)))


@pytest.mark.parametrize("scheme", ["forward", "central"])
@given(problem=quadratic_problems(dim=st.integers(2, 60)), data=st.data())
@settings(max_examples=20)
def test_sparse_cge_equals_dense_on_its_coordinates(scheme, problem, data):
    q, x = problem
    d = x.size
    coords = data.draw(st.lists(st.integers(0, d - 1), min_size=1, max_size=d, unique=True))
    for oracle in (q, CallOnly(q), BatchOnly(q)):
        dense = zo.estimate_gradient(oracle, x, zo.CGE(scheme=scheme))
        sparse = zo.estimate_gradient(oracle, x, zo.CGE(scheme=scheme), coordinates=np.array(coords))
        # a batch's rows may round apart by an ulp of the loss with the batch's size (einsum/BLAS):
        # an ulp over the step (hypothesis 6.80 draws such a case: 2.8e-12 at a loss of -118)
        tol = 1e-12 if not isinstance(oracle, BatchOnly) else 4 * np.spacing(abs(dense.loss)) / zo.CGE().mu
        np.testing.assert_allclose(sparse.grad[coords], dense.grad[coords], rtol=1e-12, atol=max(tol, 1e-12))
        rest = np.setdiff1d(np.arange(d), coords)
        assert np.all(sparse.grad[rest] == 0.0)
        nnz = len(coords)
        assert sparse.nfev == (nnz + 1 if scheme == "forward" else 2 * nnz + 1)
    mask = np.zeros(d, bool)
    mask[coords] = True
    by_mask = zo.estimate_gradient(q, x, zo.CGE(scheme=scheme), coordinates=mask)
    np.testing.assert_array_equal(by_mask.grad, zo.estimate_gradient(q, x, zo.CGE(scheme=scheme), coordinates=np.sort(coords)).grad)


@given(problem=quadratic_problems(dim=st.integers(1, 40)), a=st.floats(-3, 3), b=st.floats(-3, 3),
       seed=st.integers(0, 2**31))
@settings(max_examples=25)
def test_estimators_are_linear_in_the_loss(problem, a, b, seed):
    q, x = problem
    p = QuadraticOracle(np.eye(x.size), np.ones(x.size))
    combo = lambda z: a * q(z) + b * p(z)  # noqa: E731
    for est in (zo.CGE(), zo.CGE(scheme="central"), zo.RGE(directions=5), zo.RGE(directions=4, scheme="central", distribution="sphere")):
        lhs = zo.estimate_gradient(combo, x, est, rng=seed).grad
        rhs = a * zo.estimate_gradient(q, x, est, rng=seed).grad + b * zo.estimate_gradient(p, x, est, rng=seed).grad
        scale = 1 + np.abs(lhs).max() + np.abs(rhs).max()
        np.testing.assert_allclose(lhs, rhs, atol=1e-9 * scale / est.mu * 1e-2 + 1e-9 * scale)


@pytest.mark.slow
def test_rge_mean_converges_to_smoothed_gradient():
    """Probabilistic (seeds fixed): E[RGE] = grad of the Gaussian-smoothed loss.

    For l(x) = sum cos(x), l_mu(x) = E l(x + mu u) = exp(-mu^2/2) sum cos(x), whose gradient
    differs from l's by the factor exp(-mu^2/2) (0.78 at mu = 0.7): the test tells them apart.
    """
    f = lambda z: float(np.cos(z).sum())  # noqa: E731
    x = np.array([0.3, -1.2, 2.0, 0.7])
    mu = 0.7
    target = -np.sin(x) * np.exp(-mu**2 / 2)
    for scheme in ("forward", "central"):
        ests = np.array([
            zo.estimate_gradient(f, x, zo.RGE(mu=mu, directions=50, scheme=scheme), rng=s).grad for s in range(400)
        ])
        mean, se = ests.mean(0), ests.std(0, ddof=1) / np.sqrt(len(ests))
        assert np.all(np.abs(mean - target) < 5 * se), (scheme, mean, target, se)
        assert np.linalg.norm(mean - target) < 0.5 * np.linalg.norm(-np.sin(x) - target)


def test_rge_sphere_is_unbiased_on_linear_functions():
    """Probabilistic (seeds fixed): d * E[(g.u) u] = g for u uniform on the sphere."""
    g = np.array([1.0, -2.0, 0.5, 3.0, 0.0])
    f = lambda z: float(g @ z)  # noqa: E731
    ests = np.array([
        zo.estimate_gradient(f, np.zeros(5), zo.RGE(directions=40, distribution="sphere"), rng=s).grad for s in range(300)
    ])
    se = ests.std(0, ddof=1) / np.sqrt(len(ests))
    assert np.all(np.abs(ests.mean(0) - g) < 5 * se + 1e-12)


def test_rge_deterministic_for_seed_and_independent_of_chunking():
    q = QuadraticOracle(np.diag(np.arange(1.0, 31.0)), np.ones(30))
    x = np.linspace(-1, 1, 30)
    a = zo.estimate_gradient(q, x, zo.RGE(directions=64), rng=7)
    b = zo.estimate_gradient(BatchOnly(q), x, zo.RGE(directions=64), rng=7, budget_bytes=30 * 8 * 5)
    c = zo.estimate_gradient(CallOnly(q), x, zo.RGE(directions=64), rng=np.random.default_rng(7))
    # same directions; only the round-off of the batched vs looped loss differs
    tol = 1e-10 * np.abs(a.grad).max()
    np.testing.assert_allclose(a.grad, b.grad, rtol=0, atol=tol)
    np.testing.assert_allclose(a.grad, c.grad, rtol=0, atol=tol)
    assert a.nfev == b.nfev == c.nfev == 65
    d = zo.estimate_gradient(q, x, zo.RGE(directions=64), rng=8)
    assert not np.allclose(a.grad, d.grad)


def test_batch_chunks_respect_memory_budget():
    calls = []

    class Rec(BatchOnly):
        def batch(self, X):
            calls.append(X.shape)
            return super().batch(X)

    d = 1000
    q = QuadraticOracle(np.eye(d))
    budget = 8 * d * 16
    zo.estimate_gradient(Rec(q), np.ones(d), zo.CGE(), coordinates=np.arange(0, d, 3), budget_bytes=budget)
    assert calls and max(k for k, _ in calls) <= 16
    assert sum(k for k, _ in calls) == len(range(0, d, 3))


def test_cge_batch_chunks_are_not_held_two_at_a_time():
    """`budget_bytes` is the memory of one dense chunk of perturbed parameters, but the previous
    chunk was still alive while the next one was allocated: the batch path's peak was 1.9x the
    budget (130.7 MiB for 64 MiB at d = 1e6). Measured with tracemalloc, which sees NumPy's buffers."""
    import tracemalloc

    class Cheap:
        def __call__(self, x):
            return float(x[0])

        def batch(self, X):
            return X[:, 0].copy()

    d, rows = 20_000, 10
    budget = d * 8 * rows
    x = np.random.default_rng(0).standard_normal(d)
    coords = np.arange(0, d, d // (5 * rows))  # 5 full chunks
    tracemalloc.start()
    try:
        zo.estimate_gradient(Cheap(), x, zo.CGE(mu=1e-3), coordinates=coords, budget_bytes=budget)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the chunk, plus a few O(d) vectors (params' copies, the gradient): well below two chunks
    assert peak < 1.5 * budget, (peak, budget)


@pytest.mark.parametrize("est", [zo.CGE(), zo.RGE(directions=10), zo.RGE(directions=9, scheme="central"),
                                 zo.SNES(population=10)], ids=["cge", "rge", "rge-central", "snes"])
def test_batch_calls_respect_max_queries_per_call_with_the_unchunked_result(est):
    """RGE and SNES ignored it (one call of 10 rows): an oracle that cannot take more rows
    per call (a simulator's batch size, the PhiFlow adapter) got them anyway."""

    class Unchunked:
        def __init__(self):
            self.sizes = []

        def __call__(self, x):
            return float(np.sum(np.sin(x) ** 2))

        def batch(self, X):
            self.sizes.append(len(X))
            return np.array([self(r) for r in X])

    class Chunked(Unchunked):
        max_queries_per_call = 4

    x = np.linspace(-1, 1, 10)
    a, b = Chunked(), Unchunked()
    got = zo.estimate_gradient(a, x, est, rng=3)
    ref = zo.estimate_gradient(b, x, est, rng=3)
    assert a.sizes and max(a.sizes) <= 4 and sum(a.sizes) == sum(b.sizes) and max(b.sizes) > 4
    assert np.array_equal(got.grad, ref.grad) and got.loss == ref.loss and got.nfev == ref.nfev
    assert (got.state is None) == (ref.state is None) and (got.state is None or np.array_equal(got.state, ref.state))


class SumSquares:
    """A vectorizable million-dimensional oracle with a CoordinateOracle fast path."""

    def __call__(self, x):
        return float(x @ x)

    def coordinate_losses(self, x, coords, step):
        c = np.asarray(coords)
        return float(x @ x) + 2 * step * x[c] + step**2


def test_sparse_cge_in_a_million_dimensions_allocates_no_dense_matrix():
    import tracemalloc

    d, k = 1_000_000, 10_000
    x = np.random.default_rng(0).standard_normal(d)
    coords = np.random.default_rng(1).choice(d, size=k, replace=False)
    tracemalloc.start()
    est = zo.estimate_gradient(SumSquares(), x, zo.CGE(scheme="central"), coordinates=coords)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 64 * 2**20  # a dense k x d float64 matrix would be 80 GB
    np.testing.assert_allclose(est.grad[coords], 2 * x[coords], rtol=1e-6, atol=1e-6)
    assert est.nfev == 2 * k + 1


def test_sparse_cge_and_rge_on_backend(xp):
    rng = np.random.default_rng(5)
    q = QuadraticOracle(rng.standard_normal((40, 40)), rng.standard_normal(40), blocks=[slice(0, 15), slice(15, 40)])
    qx = _quad_on(xp, q)
    x = xp.asarray(rng.standard_normal(40))
    coords = np.array([3, 17, 20, 39])
    for make in PATHS.values():
        est = zo.estimate_gradient(make(qx), x, zo.CGE(scheme="central"), coordinates=xp.asarray(coords))
        got = est.grad.get() if hasattr(est.grad, "get") else np.asarray(est.grad)
        g = q.grad(x.get() if hasattr(x, "get") else x)
        np.testing.assert_allclose(got[coords], g[coords], rtol=1e-7, atol=1e-7)
        assert np.count_nonzero(got) == len(coords) and est.nfev == 2 * len(coords) + 1
    a = zo.estimate_gradient(qx, x, zo.RGE(directions=16), rng=3)
    b = zo.estimate_gradient(q, np.asarray(x.get() if hasattr(x, "get") else x), zo.RGE(directions=16), rng=3)
    ga = a.grad.get() if hasattr(a.grad, "get") else a.grad
    np.testing.assert_allclose(ga, b.grad, rtol=1e-9, atol=1e-9)  # same directions on both backends


def test_direction_rows_are_reused_bitwise_and_bounded():
    """The row cache (each direction is drawn to query and again to sum) returns the very
    values a fresh Philox draw gives, never a writable shared row, and stays in its limit."""
    from zoracle import _plan

    def fresh(root, lo, hi, d, dist):
        gens = [np.random.Generator(np.random.Philox(key=[root, i])) for i in range(lo, hi)]
        if dist == "rademacher":
            return np.stack([np.where(g.random(d) < 0.5, -1.0, 1.0) for g in gens])
        U = np.stack([g.standard_normal(d) for g in gens])
        return U / np.linalg.norm(U, axis=1, keepdims=True) if dist == "sphere" else U

    for dist in ("gaussian", "sphere", "rademacher"):
        first = _plan.direction_block(11, 0, 6, 50, dist)
        again = _plan.direction_block(11, 2, 9, 50, dist)  # overlapping rows: served from the cache
        np.testing.assert_array_equal(first, fresh(11, 0, 6, 50, dist))
        np.testing.assert_array_equal(again, fresh(11, 2, 9, 50, dist))
        again[0] += 1.0  # the block handed out is the caller's own
        np.testing.assert_array_equal(_plan.direction_block(11, 2, 3, 50, dist), fresh(11, 2, 3, 50, dist))
    small = _plan._RowCache(limit=3 * 8 * 10)
    for i in range(5):
        small.put(("k",), i, np.ones(10))
    assert sorted(small.rows) == [0, 1, 2] and not small.rows[0].flags.writeable
    small.put(("other",), 0, np.ones(10))
    assert list(small.rows) == [0] and small.get(("k",), 1) is None
    # a reserved root keeps more rows (up to the cap); the next root is back at the default
    small = _plan._RowCache(limit=3 * 8 * 10, cap=6 * 8 * 10)
    small.reserve(7, 100 * 8 * 10)
    for i in range(9):
        small.put((7, 10, "gaussian"), i, np.ones(10))
    assert sorted(small.rows) == list(range(6))
    for i in range(9):
        small.put((8, 10, "gaussian"), i, np.ones(10))
    assert sorted(small.rows) == [0, 1, 2]


class _KeepsItsPoints:
    """A plain oracle that keeps every array it was given (it is read-only, so a user sees no
    reason to copy it) and skips the point it evaluated last: a log and a one-entry memo."""

    def __init__(self):
        self.seen, self.last = [], None

    def __call__(self, x):
        self.seen.append(x)
        if self.last is not None and np.array_equal(x, self.last[0]):
            return self.last[1]
        self.last = (x, float(x @ x + np.sin(x).sum()))
        return self.last[1]


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_cge_plain_calls_never_change_an_array_after_its_query(scheme):
    """Plain-call CGE edits one copy of params in place between queries; an oracle that kept
    a query's array used to see it change under it (the memo then answered every coordinate
    with the first one's loss). The textbook loop with a fresh array per query is the reference."""
    x0 = np.random.default_rng(0).standard_normal(6)
    oracle = _KeepsItsPoints()
    got = zo.estimate_gradient(oracle, x0, zo.CGE(mu=1e-3, scheme=scheme))
    ref = _KeepsItsPoints()
    f0 = ref(x0.copy())
    want = []
    for i in range(6):
        up = x0.copy()
        up[i] += 1e-3
        if scheme == "forward":
            want.append((ref(up) - f0) / (up[i] - x0[i]))
        else:
            down = x0.copy()
            down[i] -= 1e-3
            want.append((ref(up) - ref(down)) / ((up[i] - x0[i]) + (x0[i] - down[i])))
    np.testing.assert_array_equal(got.grad, np.array(want))
    # every kept array still holds the point it was queried at
    queried = [x0] + [x0 + s * np.eye(6)[i] for s in ((1e-3,) if scheme == "forward" else (1e-3, -1e-3))
                      for i in range(6)]
    assert len(oracle.seen) == len(queried)
    for kept, point in zip(oracle.seen, queried):
        np.testing.assert_array_equal(kept, point)


def test_central_cge_divides_by_the_two_representable_steps_in_float32():
    """At a float32 power of two the steps up and down differ (1024 + 0.0085 rounds to +0.008545,
    1024 - 0.0085 to -0.008484); dividing by 2 h instead of their sum passed every test and put
    0.36% on the partial. Central CGE of a float64 quadratic is exact at any point: 2 x."""
    x = np.float32([1024.0, 2048.0, 0.5, 1.0, -1.0, 4.0])
    got = zo.estimate_gradient(lambda p: float((p.astype(np.float64) ** 2).sum()), x,
                               zo.CGE(mu=0.0085, scheme="central")).grad
    np.testing.assert_allclose(got, 2 * x.astype(np.float64), rtol=1e-6)  # float32 grad: its rounding


class _KeepsSlices:
    """Keeps a slice of each array it is given (a view of the array zoracle edits in place)."""

    def __init__(self):
        self.seen = []

    def __call__(self, x):
        self.seen.append((x[1:], x[1:].copy()))
        return float(x @ x)


def test_cge_plain_calls_keep_slices_and_reuse_one_array_otherwise():
    """The array a plain-call CGE edits in place is reused while the oracle keeps nothing of it
    (its reference count was taken in another frame than the test's, one higher: every query
    copied the whole params, O(d) each, while the docstring promised a free view), and is left
    alone once the oracle keeps a view of it, or a slice."""
    import weakref

    x0 = np.random.default_rng(1).standard_normal(40)
    bases, reused = [], []

    def f(x):
        owner = x if x.base is None else x.base
        if bases:
            reused.append(bases[-1]() is owner)  # a weak reference keeps no count
        bases.append(weakref.ref(owner))
        return float(x @ x)

    got = zo.estimate_gradient(f, x0, zo.CGE(mu=1e-3))
    np.testing.assert_allclose(got.grad, 2 * x0 + 1e-3, rtol=1e-6)
    assert len(reused) == 40 and sum(reused[1:]) == 39  # after the base point's private copy, one array
    keeper = _KeepsSlices()
    zo.estimate_gradient(keeper, x0, zo.CGE(mu=1e-3, scheme="central"))
    assert len(keeper.seen) == 81
    for kept, copy in keeper.seen:
        np.testing.assert_array_equal(kept, copy)


@pytest.mark.parametrize("write", ["sigmoid", "exp"])
def test_cge_plain_calls_survive_an_oracle_writing_past_the_read_only_flag(write):
    """``torch.from_numpy(x)`` (or ``x.flags.writeable = True``) lets an oracle write into the array
    it was given: reused between queries, the write reached every later query (partials 5e4
    against 0.4; with exp, inf at coordinate 4). The queries that may have read it run again,
    each on its own copy; the textbook loop with a fresh array per query is the reference."""
    def loss(x):
        x.flags.writeable = True  # as torch.from_numpy ignores the flag
        x[3:] = 1 / (1 + np.exp(-x[3:])) if write == "sigmoid" else np.exp(x[3:])
        return float(np.sum(x ** 2) + np.sin(x).sum())

    x0 = np.array([0.5, -1.0, 2.0, 0.1, -0.2, 0.3])
    got = zo.estimate_gradient(loss, x0.copy(), zo.CGE(mu=1e-5))
    f0 = loss(x0.copy())
    want = []
    for i in range(6):
        up = x0.copy()
        up[i] += 1e-5
        want.append((loss(up.copy()) - f0) / (up[i] - x0[i]))
    np.testing.assert_array_equal(got.grad, np.array(want))


def test_cge_plain_calls_rerun_a_query_that_read_an_earlier_write_then_kept_its_array():
    """An oracle clamping a coordinate in place (past the read-only flag) and keeping the array
    as a memo when the loss is a new best: the check skipped the perturbed coordinate of a kept
    array, where an earlier query had written (partial -7.999 against 0.0)."""
    target = np.array([0.0, 0.0, 0.0, 4.0, 5.0, 6.0])

    class Oracle:
        def __init__(self):
            self.best, self.best_x = np.inf, None

        def __call__(self, x):
            x.flags.writeable = True  # as torch.from_numpy(x)[3].clamp_(min=0) does
            x[3] = max(x[3], 0.0)
            f = float(((x - target) ** 2).sum())
            if f < self.best:
                self.best, self.best_x = f, x  # keeps the array
            return f

    x0 = np.array([0.0, 0.0, 0.0, -0.5, 0.0, 0.0])
    got = zo.estimate_gradient(Oracle(), x0.copy(), zo.CGE(mu=1e-3)).grad
    ref = Oracle()
    f0 = ref(x0.copy())
    want = np.array([(ref(x0 + 1e-3 * np.eye(6)[i]) - f0) / 1e-3 for i in range(6)])
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_masked_losses_and_params_are_refused():
    """``np.ma.masked`` (a masked mean of saturated readings) read as 0.0 through ``.item()``, a
    masked one-element array as its hidden value, and a batch's mask was dropped: a perfect loss
    where ``float()`` gives NaN. Masked params ignored their perturbation (partial 0)."""
    x0 = np.array([0.1, 0.9])
    for value in (np.ma.masked, np.ma.masked_array([7.0], mask=[True])):
        with pytest.raises(zo.OracleError, match="masked") as info:
            zo.estimate_gradient(lambda x, v=value: v, x0, zo.CGE(mu=1e-3))
        assert "base point" in str(info.value)
    assert zo.estimate_gradient(lambda x: np.ma.masked_array([7.0], mask=[False]), x0,
                                zo.CGE(mu=1e-3)).loss == 7.0  # unmasked: its value

    class Batch:
        def __call__(self, x):
            return float(x @ x)

        def batch(self, X):
            return np.ma.masked_array(np.sum(X * X, axis=1), mask=[False, True][: len(X)] + [False] * (len(X) - 2))

    with pytest.raises(zo.OracleError, match="masked") as info:
        zo.estimate_gradient(Batch(), x0, zo.CGE(mu=1e-3))
    assert "coordinate 1" in str(info.value)
    with pytest.raises(zo.ArgumentError, match=r"MaskedArray.*np\.asarray\(params"):
        zo.estimate_gradient(lambda x: float(x @ x), np.ma.masked_array(x0, mask=[False, True]), zo.CGE(mu=1e-3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # NumPy's on np.matrix itself
        m = np.matrix(x0)
    with pytest.raises(zo.ArgumentError, match=r"matrix.*np\.asarray\(params, dtype=np\.float64\)\.ravel\(\)"):
        zo.estimate_gradient(lambda x: float(x @ x), m, zo.CGE(mu=1e-3))


class _LeastSquares:
    """docs/concepts.md's CoordinateOracle; ``exact_step`` applies ``step`` as given instead of
    the representable step (the example before it had its ``h`` line)."""

    def __init__(self, A, b, exact_step=False):
        self.A, self.b, self.exact_step = A, b, exact_step

    def __call__(self, x):
        return float(np.mean((self.A @ x - self.b) ** 2))

    def coordinate_losses(self, x, coords, step):
        r = self.A @ x - self.b
        h = np.full(len(coords), step) if self.exact_step else (x[coords] + step) - x[coords]
        R = r[None, :] + h[:, None] * self.A[:, coords].T
        return np.mean(R ** 2, axis=1)


def test_coordinate_oracle_applies_the_representable_step():
    """The numbers of docs/concepts.md: float32 parameters of about 300, mu = 1e-3 (a step of
    0.0010071 there): the docs' oracle is as exact as plain calls, the one applying 1e-3 as
    given is 0.7% off."""
    rng = np.random.default_rng(0)
    A, b = rng.standard_normal((100, 30)), rng.standard_normal(100)
    x = (300 + rng.standard_normal(30)).astype(np.float32)
    exact = 2 * A.T @ (A @ x.astype(float) - b) / 100
    est = zo.CGE(mu=1e-3, scheme="central")
    err = {}
    for name, oracle in [("docs", _LeastSquares(A, b)), ("as given", _LeastSquares(A, b, exact_step=True)),
                         ("plain", lambda z: float(np.mean((A @ z - b) ** 2)))]:
        g = zo.estimate_gradient(oracle, x, est).grad.astype(float)
        err[name] = float(np.max(np.abs(g - exact) / np.abs(exact)))
    assert np.unique((x + np.float32(1e-3)) - x).tolist() == [np.float32(0.0010070801)]
    assert err["docs"] < 1e-6 and err["plain"] < 1e-6
    assert round(err["as given"], 3) == 0.007


def test_an_oracle_computing_in_float16_is_refused_by_its_compute_dtype():
    """It failed with "`params` must have dtype float32 or float64, got float16" for float32
    params the caller had passed: the estimate had recast them to the oracle's float16."""
    class Half:
        compute_dtype = np.float16

        def __call__(self, x):
            return float(np.sum(np.asarray(x, np.float16).astype(np.float64) ** 2))

    with pytest.raises(zo.ArgumentError, match="the oracle's `compute_dtype` is float16"):
        zo.estimate_gradient(Half(), np.ones(3, np.float32), zo.CGE(mu=1e-2))


def test_an_integer_zero_one_mask_is_named_as_a_mask():
    # mask.astype(int) (or a torch uint8 mask) was read as indices: "must not repeat indices, got 0"
    mask = np.zeros(6, dtype=bool)
    mask[[1, 4]] = True
    with pytest.raises(zo.ArgumentError, match=r"0s and 1s of length 6: a mask\? A mask must be boolean"):
        zo.estimate_gradient(lambda x: float(x @ x), np.ones(6), zo.CGE(), coordinates=mask.astype(int))
    got = zo.estimate_gradient(lambda x: float(x @ x), np.ones(6), zo.CGE(), coordinates=mask)
    assert np.flatnonzero(got.grad).tolist() == [1, 4]


def test_losses_too_coarse_for_the_differences_are_warned_about(monkeypatch):
    """A loss returned as float32 (float64 params) or as an integer was quantized without a word: a
    float32 loss near 1e4 gave partials in steps of 0.195 (17% off), an integer one -200 for -2.
    Warned once per oracle class and loss type; not where the quantization is below CGE's own error
    (a float32 loss near 0.69), nor for an integer 0 (a sum that met every margin)."""
    import zoracle._estimators as est_module

    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())
    w = np.linspace(0.5, 1.5, 10)
    f32 = lambda x: np.float32(1e4) + np.float32(w @ x)  # noqa: E731
    with pytest.warns(UserWarning, match=r"returns float32 losses: near the base loss 10000 they are 0.000977 apart, "
                                         r"so a difference over mu = 0.005 resolves a partial derivative only to 0.195"):
        zo.estimate_gradient(f32, np.zeros(10))
    with pytest.warns(UserWarning, match=r"returns int losses.*only to 200"):
        zo.estimate_gradient(lambda x: int(round(100 * float(w @ x))) + 1, np.zeros(10))
    with pytest.warns(UserWarning, match=r"returns int64 losses"):
        zo.estimate_gradient(lambda x: np.int64(3), np.zeros(2), zo.RGE(directions=2), rng=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zo.train(f32, np.zeros(10), epochs=3, progress=False)  # warned once already: not at every step
        zo.estimate_gradient(lambda x: 1e4 + float(w @ x), np.zeros(10))  # float64 losses
        zo.estimate_gradient(lambda x: np.float32(2.3) + np.float32(w @ x), np.zeros(10, np.float32))  # float32 params
        zo.estimate_gradient(lambda x: np.float32(w @ x), np.zeros(10), zo.RGE(directions=3, shaping="ranks"), rng=0)

    class Dominated:  # one partial of 500 must not hide the rest's quantization (0.4-8% off)
        def __call__(self, x):
            return np.float32(1e4) + np.float32(w @ x + 500.0 * x[0])

    with pytest.warns(UserWarning, match=r"returns float32 losses"):
        zo.estimate_gradient(Dominated(), np.zeros(10))

    class Logistic:  # a float32 loss near 0.69: quantized far below CGE's own error
        def __call__(self, x):
            return np.float32(np.logaddexp(0.0, float(w @ x)))

    class Hinge:  # every margin met at the base point: sum([]) is the integer 0
        def __call__(self, x):
            return sum(1.0 - m for m in (w * x) if m < 1.0) if x.any() else 0

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zo.estimate_gradient(Logistic(), np.zeros(10))
        zo.estimate_gradient(Hinge(), np.zeros(10))


@pytest.mark.slow
def test_rge_with_one_direction_is_unbiased_on_a_linear_loss():
    """Probabilistic (seeds fixed): E[(g.u) u] = g, so the mean over seeds of a one-direction
    estimate is g; dividing by q + 1 instead of q halves it (at q = 50 a 2% bias the smoothed-
    gradient test could not see)."""
    g = np.array([1.0, -2.0, 0.5])
    f = lambda z: float(g @ z)  # noqa: E731
    for scheme in ("forward", "central"):
        ests = np.array([zo.estimate_gradient(f, np.zeros(3), zo.RGE(mu=1e-3, directions=1, scheme=scheme),
                                              rng=s).grad for s in range(3000)])
        mean, se = ests.mean(0), ests.std(0, ddof=1) / np.sqrt(len(ests))
        assert np.all(np.abs(mean - g) < 5 * se), (scheme, mean, se)


def test_a_central_step_that_rounds_to_zero_on_its_minus_side_is_refused():
    """At x = -1 in float32 the step 4e-8 is representable upwards (-1 + 4e-8 rounds to
    -0.99999994) but not downwards (the spacing below -1 is 1.2e-7): the central difference
    would silently be one-sided."""
    x = np.array([-1.0], np.float32)
    zo.estimate_gradient(lambda z: float(z[0]), x, zo.CGE(mu=4e-8))
    with pytest.raises(zo.ArgumentError, match="not a representable step"):
        zo.estimate_gradient(lambda z: float(z[0]), x, zo.CGE(mu=4e-8, scheme="central"))


def test_a_sparse_step_refusal_names_the_parameter_index():
    """Sparse CGE checks the step at params[coordinates]: the refusal named the position in
    `coordinates` (index 1, params[1] = 1e5) where params[1] is 0 and params[7] is the culprit."""
    x = np.zeros(10, np.float32)
    x[7] = 1e5  # float32 spacing 0.0078 there: mu = 1e-3 is no step
    bad = [i for i in (2, 7) if (x[i] + np.float32(1e-3)) - x[i] <= 0]  # the reference: a direct check
    assert bad == [7]
    with pytest.raises(zo.ArgumentError, match=r"at index 7 \(params\[7\] = 100000;"):
        zo.estimate_gradient(lambda z: float(np.sum(z.astype(np.float64) ** 2)), x, zo.CGE(mu=1e-3),
                             coordinates=[2, 7])


def test_big_endian_params_are_named_as_such():
    """'>f8' params (a big-endian .npy file, FITS) were refused as "must have dtype float32 or
    float64, got >f8": the array is float64, byte-swapped; the fix keeps float32 float32."""
    f = lambda z: float(np.sum(z.astype(np.float64) ** 2))  # noqa: E731
    for dt, native in ((">f8", "float64"), (">f4", "float32")):
        x = np.arange(3.0).astype(dt)
        with pytest.raises(zo.ArgumentError, match=f"`params` is {native} in big-endian byte order .*astype\\(np.{native}\\)"):
            zo.estimate_gradient(f, x)
        # the fix it names works, and gives the float64 reference 2 x
        np.testing.assert_allclose(zo.estimate_gradient(f, x.astype(native), zo.CGE(mu=1e-3, scheme="central")).grad,
                                   2 * np.arange(3.0), rtol=1e-6)


class _DeclaresDtype:
    def __init__(self, dtype, cap=None):
        self.compute_dtype = dtype
        if cap is not False:
            self.max_queries_per_call = cap

    def __call__(self, x):
        return float(np.float32(x).astype(np.float64).sum())

    def batch(self, X):
        return np.asarray(X, dtype=np.float32).astype(np.float64).sum(1)


def test_compute_dtype_and_queries_per_call_are_read_or_refused():
    """A torch dtype as compute_dtype was ignored (a zero gradient at a mu below float32's
    spacing, silently); max_queries_per_call = None or inf failed inside int()."""
    torch = pytest.importorskip("torch")
    x = np.ones(3)
    with pytest.raises(zo.ArgumentError, match="not a representable step.*float32"):
        zo.estimate_gradient(_DeclaresDtype(torch.float32), x, zo.CGE(mu=1e-8))
    with pytest.raises(zo.ArgumentError, match="`compute_dtype` must be a float dtype"):
        zo.estimate_gradient(_DeclaresDtype("fast"), x, zo.CGE(mu=1e-3))
    with pytest.raises(zo.ArgumentError, match="`compute_dtype` is bfloat16, which zoracle does not estimate in"):
        zo.estimate_gradient(_DeclaresDtype(torch.bfloat16), x, zo.CGE(mu=1e-3))
    for cap in (None, math.inf, 2, 64.0):
        np.testing.assert_allclose(zo.estimate_gradient(_DeclaresDtype(np.float32, cap), x, zo.CGE(mu=1e-2)).grad,
                                   1.0, rtol=1e-4)
    with pytest.raises(zo.ArgumentError, match="`max_queries_per_call` must be an integer >= 1"):
        zo.estimate_gradient(_DeclaresDtype(np.float32, 0.5), x, zo.CGE(mu=1e-2))


class _Float32Batch:
    """A float64 plain call, and a batch that returns float32 losses near 100."""

    def __call__(self, x):
        return float(100 + np.sum((x - 1) ** 2))

    def batch(self, X):
        return (100 + np.sum((X - 1) ** 2, axis=1)).astype(np.float32)


def test_float32_losses_from_a_batch_are_warned_about_as_from_a_plain_call():
    """The coarse-loss warning looked at the plain call's value only: a batch returning float32
    losses gave an estimate 14% off (-2.289 for -2) with no warning."""
    with pytest.warns(UserWarning, match="the oracle returns float32 losses"):
        g = zo.estimate_gradient(_Float32Batch(), np.zeros(8), zo.CGE(mu=1e-5)).grad
    assert abs(g[0] + 2) > 0.1


def test_a_pandas_series_as_params_is_refused_before_any_query():
    """A Series passed validate_params (it has dtype and ndim); CGE then indexed it by label:
    on index [2, 1, 0] the gradient of p @ [1, 10, 100] came back reversed."""
    pd = pytest.importorskip("pandas")
    calls = []
    loss = lambda p: calls.append(1) or float(np.asarray(p) @ [1.0, 10.0, 100.0])
    series = pd.Series([0.5, 0.5, 0.5], index=[2, 1, 0])
    for est in (zo.CGE(mu=1e-3), zo.RGE(directions=2)):
        with pytest.raises(zo.ArgumentError, match="pandas.Series, not a NumPy array; use np.asarray"):
            zo.estimate_gradient(loss, series, est)
    with pytest.raises(zo.ArgumentError, match="pandas.Series"):
        zo.train(loss, series, epochs=1, progress=False)
    assert not calls
    np.testing.assert_allclose(zo.estimate_gradient(loss, series.to_numpy(), zo.CGE(mu=1e-3)).grad, [1, 10, 100])


def test_the_integer_loss_warning_is_given_for_each_plain_function():
    """The once-only key was the oracle's class, `function` for every plain function: after one
    integer-valued function warned, another got a zero gradient without a word."""
    x = np.linspace(-1, 1, 7)

    def counts(p):
        return int(round(1000 * np.sum(p ** 2)))

    def failures(p):
        return int(np.sum(p ** 2) > 2.0) + 3

    for fn in (counts, failures):
        with pytest.warns(UserWarning, match="estimate_gradient:"):
            zo.estimate_gradient(fn, x, zo.CGE(mu=1e-3))
    with warnings.catch_warnings():  # once each: a run's later steps do not repeat it
        warnings.simplefilter("error")
        zo.estimate_gradient(failures, x, zo.CGE(mu=1e-3))


@pytest.mark.parametrize("costs, match", [([1.0], "must give one finite cost >= 0 for each of its 2 blocks"),
                                          (["fast", "slow"], "could not be read as numbers"),
                                          ([1.0, float("nan")], "must give one finite cost"),
                                          ([-1.0, 2.0], "finite cost >= 0"),
                                          (lambda: [1.0, 2.0], "could not be read as numbers")])
def test_a_bad_block_costs_hint_is_named_before_any_query(costs, match):
    """A hint shorter than the blocks, or not numbers, crashed the planner with a bare
    IndexError / ValueError / TypeError."""
    q = QuadraticOracle(np.eye(10), blocks=[slice(0, 4), slice(4, 10)])
    q.block_costs = costs
    with pytest.raises(zo.ArgumentError, match=match):
        zo.estimate_gradient(q, np.ones(10), zo.CGE(mu=1e-3))
    q.block_costs = [0.0, 2.0]  # a good hint (a zero cost too) changes nothing in the estimate
    np.testing.assert_allclose(zo.estimate_gradient(q, np.ones(10), zo.CGE(mu=1e-3, scheme="central")).grad,
                               np.ones(10), atol=1e-9)


def test_the_integer_loss_warning_does_not_advise_float_for_a_count(monkeypatch):
    """An error count returned as an int was warned about with "return the loss as a float64":
    float(count) silenced the warning and left every partial the same multiple of 1 / mu (200 at
    mu = 5e-3), since a count moves in whole units whatever its type."""
    import zoracle._estimators as est_module

    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5))
    y = X @ rng.standard_normal(5) > 0
    count = lambda x: int(np.sum((X @ x > 0) != y))  # noqa: E731
    x0 = np.full(5, 0.1)
    with pytest.warns(UserWarning, match=r"returns int losses") as rec:
        as_int = zo.estimate_gradient(count, x0, zo.CGE(mu=5e-3))
    as_float = zo.estimate_gradient(lambda x: float(count(x)), x0, zo.CGE(mu=5e-3))
    np.testing.assert_array_equal(as_float.grad, as_int.grad)  # float() changes nothing:
    units = as_int.grad * 5e-3
    assert np.count_nonzero(units) >= 3 and np.allclose(units, np.round(units), atol=1e-9)  # whole units over mu
    text = str(rec[0].message)
    assert "float(count) changes nothing" in text and "smooth surrogate" in text, text


@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "float8_e5m2"])
def test_float8_losses_are_warned_about_as_float16_ones_are(monkeypatch, fmt):
    """A loss returned as a float8 0-d tensor (3 or 2 mantissa bits) gave a zero gradient without a
    word, where float16, bfloat16 and integer losses are warned about."""
    torch = pytest.importorskip("torch")
    import zoracle._estimators as est_module

    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())
    x = np.linspace(0, 1, 4)
    exact = 2 * (x - 3.0)  # the reference: the loss's own gradient
    loss = lambda p: torch.tensor(float(np.sum((p - 3.0) ** 2))).to(getattr(torch, fmt))  # noqa: E731
    with pytest.warns(UserWarning, match=f"returns {fmt} losses"):
        est = zo.estimate_gradient(loss, x, zo.CGE(mu=1e-3))
    assert np.all(est.grad == 0) and np.all(exact != 0)  # what the warning is about


@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "float8_e5m2"])
def test_the_float8_warning_names_the_losses_spacing(monkeypatch, fmt):
    """The warning's resolution is the float8 spacing near the base loss: at a loss of 32 (a power
    of two, where the spacing is exactly 32 * eps), 4 apart in e4m3fn (3 mantissa bits) and 8 in
    e5m2 (2), so a difference over mu = 1e-3 resolves a partial only to 4000 or 8000."""
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    import zoracle._estimators as est_module

    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())
    spacing = 32.0 * float(ml_dtypes.finfo(getattr(ml_dtypes, fmt)).eps)  # the reference
    loss = lambda p: torch.tensor(float(np.sum((p - 4.0) ** 2))).to(getattr(torch, fmt))  # noqa: E731
    assert float(loss(np.zeros(2))) == 32.0
    with pytest.warns(UserWarning, match=f"returns {fmt} losses") as rec:
        zo.estimate_gradient(loss, np.zeros(2), zo.CGE(mu=1e-3))
    text = " ".join(str(w.message) for w in rec)
    assert f"they are {spacing:.3g} apart" in text, text
    assert f"only to {spacing / 1e-3:.3g}" in text, text


def test_a_batch_of_bfloat16_losses_is_taken_as_a_plain_call_of_one_is(monkeypatch):
    """A plain call returning a bfloat16 loss is taken (with the coarse-loss warning); a `batch`
    returning bfloat16 losses was refused: "could not convert to an array (Got unsupported
    ScalarType BFloat16)" for a torch tensor, "expected real losses" for an ml_dtypes array."""
    torch = pytest.importorskip("torch")
    import zoracle._estimators as est_module

    convs = [lambda v: torch.as_tensor(v).to(torch.bfloat16)]
    try:
        import ml_dtypes

        convs.append(lambda v: np.asarray(v).astype(ml_dtypes.bfloat16))
    except ImportError:
        pass
    x = np.linspace(0, 1, 4)
    for conv in convs:
        class Plain:
            def __call__(self, p):
                return conv(float(np.sum((p - 3.0) ** 2)))

        class Batch(Plain):
            def batch(self, P):
                return conv(np.sum((np.asarray(P) - 3.0) ** 2, axis=1))

        # the reference: the same bfloat16 losses, one plain call each (a central difference by hand)
        want = np.array([(float(Plain()(x + 0.1 * e)) - float(Plain()(x - 0.1 * e))) / 0.2 for e in np.eye(4)])
        for cls in (Plain, Batch):
            monkeypatch.setattr(est_module, "_COARSE_WARNED", set())
            with pytest.warns(UserWarning, match="returns bfloat16 losses"):
                got = zo.estimate_gradient(cls(), x, zo.CGE(mu=0.1, scheme="central")).grad
            np.testing.assert_allclose(got, want, rtol=1e-12)


def test_coarse_loss_check_costs_no_gradient_pass_when_the_loss_type_needs_none(monkeypatch):
    # float32 losses at float32 params are not coarse, whatever the gradient: the O(d) median of
    # |grad| was computed at every estimate (and at every step of a run), for nothing
    x = np.linspace(-1.0, 1.0, 50).astype(np.float32)
    calls = []
    median = np.median
    monkeypatch.setattr(np, "median", lambda *a, **k: calls.append(1) or median(*a, **k))
    f32 = lambda v: np.float32(v @ v)  # noqa: E731
    for est in (zo.CGE(mu=1e-2), zo.RGE(mu=1e-2, directions=4)):
        g = zo.estimate_gradient(f32, x, est, rng=0)
        assert g.grad.dtype == np.float32 and g.loss == pytest.approx(float(x.astype(np.float64) @ x), rel=1e-6)
    assert calls == []
    # a coarse case still warns: float32 losses at float64 params, with a small mu
    with pytest.warns(UserWarning, match="float32 losses"):
        zo.estimate_gradient(lambda v: np.float32(v @ v + 1e3), x.astype(np.float64), zo.RGE(mu=1e-6, directions=4),
                             rng=0)
def test_cge_plain_calls_see_a_negative_zero_written_past_the_read_only_flag():
    """The write check compared values: -0.0 written over a 0.0 (past the read-only flag) passed
    as no write, and every later query read it (partials -2000 against 0.36 where the loss reads
    the sign); bits are compared now. The textbook loop with a fresh array per query is the reference."""
    def loss(x):
        s = float(np.sin(x).sum() + np.copysign(1.0, x).sum())
        x.flags.writeable = True  # as torch.from_numpy(x) ignores the flag
        x[5] = -0.0  # params[5] is 0.0
        return s

    x0 = np.array([0.3, -1.2, 0.1, 2.5, 0.7, 0.0, -0.4, 1.1, 0.9, -2.0])
    got = zo.estimate_gradient(loss, x0.copy(), zo.CGE(mu=1e-3)).grad
    f0 = loss(x0.copy())
    want = [(loss(x0 + 1e-3 * np.eye(10)[i]) - f0) / ((x0[i] + 1e-3) - x0[i]) for i in range(10)]
    np.testing.assert_array_equal(got, np.array(want))




def test_the_coarse_loss_warning_tells_partial_oracles_apart(monkeypatch):
    """SciPy's ``args=`` is ``functools.partial(loss, a=...)`` here (docs/training.md), and every
    partial has the class ``partial``: once one partial oracle was warned about, a partial over
    another function returning float32 losses was quantized without a word (2.0 came out as
    1.953125), where the same function in a lambda was warned about."""
    import functools

    import zoracle._estimators as est_module

    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())

    def sim_a(x, scale):
        return np.float32(1e4 + scale * np.sum((x - 3.0) ** 2))

    def sim_b(x, offset):
        return np.float32(offset + np.sum((x + 1.0) ** 2))

    with pytest.warns(UserWarning, match="returns float32 losses"):
        zo.estimate_gradient(functools.partial(sim_a, scale=1.0), np.zeros(4), zo.CGE(mu=1e-3))
    with pytest.warns(UserWarning, match="returns float32 losses") as got:
        est = zo.estimate_gradient(functools.partial(sim_b, offset=2e4), np.zeros(4), zo.CGE(mu=1e-3))
    exact = 2.0 * (np.zeros(4) + 1.0)  # the gradient of sim_b, by hand
    assert len(got) == 1 and np.abs(est.grad - exact).max() > 0.04  # what the warning is about
    with warnings.catch_warnings():  # the same function again: said once, not at every step
        warnings.simplefilter("error")
        zo.estimate_gradient(functools.partial(sim_b, offset=3e4), np.zeros(4), zo.CGE(mu=1e-3))


def test_the_coarse_loss_warning_points_at_the_callers_line(monkeypatch):
    """The warning's filename and line are the caller's of estimate_gradient (stacklevel), not
    zoracle's own frames: a user filtering warnings by module sees their own line."""
    import os

    import zoracle._estimators as est_module

    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())
    w = np.linspace(0.5, 1.5, 10)
    with pytest.warns(UserWarning, match="returns float32 losses") as got:
        zo.estimate_gradient(lambda x: np.float32(1e4) + np.float32(w @ x), np.zeros(10))
    assert [os.path.abspath(r.filename) for r in got] == [os.path.abspath(__file__)]


class _KeepsFirstThenWritesOnce:
    """Keeps the first perturbed point it is given (a memo), then, at coordinate 1's query, writes
    5.0 into coordinate 3 of its array past the read-only flag (through the view's base) after
    computing its loss: the next query (coordinate 2) reads that write."""

    def __init__(self, x0):
        self.x0, self.kept, self.wrote = x0, [], False

    def __call__(self, x):
        loss = float(np.sum(np.arange(1.0, 1.0 + x.size) * x) + 0.5 * float(x @ x))
        moved = np.flatnonzero(x != self.x0)
        if not self.kept and moved.tolist() == [0]:
            self.kept.append(x)
        elif not self.wrote and moved.tolist() == [1] and x.base is not None and x.base.flags.writeable:
            x.base[3] = 5.0
            self.wrote = True
        return loss


def test_cge_plain_calls_see_a_write_made_after_a_kept_array_was_replaced():
    """After a query keeps its array, the queries go on with a new one: an earlier query's write
    into a coordinate is then looked for in that new array (the one queried), or the write,
    erased when that coordinate's own turn overwrites it, passes unseen and the query between
    keeps the loss at the written point. Reference: the textbook forward differences."""
    x0 = np.random.default_rng(0).standard_normal(5)
    oracle = _KeepsFirstThenWritesOnce(x0)
    got = zo.estimate_gradient(oracle, x0, zo.CGE(mu=1e-3, scheme="forward"))
    assert oracle.wrote and len(oracle.kept) == 1  # the premise: one array kept, one write made

    def f(x):
        return float(np.sum(np.arange(1.0, 6.0) * x) + 0.5 * float(x @ x))

    want = []
    for i in range(5):
        up = x0.copy()
        up[i] += 1e-3
        want.append((f(up) - f(x0)) / (up[i] - x0[i]))
    np.testing.assert_allclose(got.grad, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("when, where", [(0, 5),  # erased later by coordinate 5's own query: seen before it only
                                         (8, 0)])  # into a coordinate already queried: seen at the end only
def test_cge_plain_calls_see_one_negative_zero_written_past_the_read_only_flag(when, where):
    """One write of -0.0 over a 0.0 (past the read-only flag), made once, at the query of
    coordinate ``when``, into coordinate ``where``: the queries that read it run again on their
    own copies. Bits, not values, both where a coordinate is about to be queried and at the end.
    Reference: the textbook forward differences of the loss without the write."""
    x0 = np.array([0.0, -1.2, 0.1, 2.5, 0.7, 0.0, -0.4, 1.1, 0.9, -2.0])

    def pure(x):
        return float(np.sin(x).sum() + np.copysign(1.0, x).sum())

    wrote = []

    def loss(x):
        s = pure(x)
        if not wrote and x[when] != x0[when]:
            x.flags.writeable = True  # as torch.from_numpy(x) ignores the flag
            x[where] = -0.0  # x0[where] is 0.0
            wrote.append(1)
        return s

    got = zo.estimate_gradient(loss, x0.copy(), zo.CGE(mu=1e-3)).grad
    assert wrote  # the premise
    f0 = pure(x0)
    want = [(pure(x0 + 1e-3 * np.eye(10)[i]) - f0) / ((x0[i] + 1e-3) - x0[i]) for i in range(10)]
    np.testing.assert_array_equal(got, np.array(want))


def test_a_gradient_estimate_equals_its_copy_and_reloaded_self():
    """The generated ``==`` compared ``grad`` elementwise and raised NumPy's ValueError ("truth value
    of an array ... is ambiguous") for a pickled, deep-copied or rebuilt estimate."""
    import copy
    import pickle

    f = lambda x: float(np.sum((x - 3.0) ** 2))  # noqa: E731
    for est in (zo.estimate_gradient(f, np.zeros(4), zo.CGE(mu=1e-3, scheme="central")),
                zo.estimate_gradient(f, np.zeros(4), zo.SNES(population=6), rng=0)):
        for same in (pickle.loads(pickle.dumps(est)), copy.deepcopy(est),
                     zo.GradientEstimate(est.grad.copy(), est.loss, est.nfev, copy.copy(est.state))):
            assert same == est and not (same != est)
        assert est != zo.GradientEstimate(est.grad + 1.0, est.loss, est.nfev, est.state)
        assert est != zo.GradientEstimate(est.grad, est.loss, est.nfev + 1, est.state)
        assert est != zo.GradientEstimate(est.grad[:2], est.loss, est.nfev, est.state)


def test_a_zoracle_error_from_max_queries_per_call_passes_unchanged():
    """An oracle's max_queries_per_call that refuses with a zoracle error of its own keeps that
    error's type and words; any other exception there is an OracleError naming the property."""
    class Refusing:
        def __init__(self, exc):
            self.exc = exc

        @property
        def max_queries_per_call(self):
            raise self.exc

        def __call__(self, x):
            return float(x @ x)

        def batch(self, X):
            return np.einsum("ij,ij->i", X, X)

    with pytest.raises(zo.ArgumentError, match=r"^bind a batch first$"):
        zo.estimate_gradient(Refusing(zo.ArgumentError("bind a batch first")), np.ones(3), zo.RGE(directions=4))
    with pytest.raises(zo.OracleError, match=r"max_queries_per_call") as info:
        zo.estimate_gradient(Refusing(KeyError("k")), np.ones(3), zo.RGE(directions=4))
    assert isinstance(info.value.cause, KeyError)


def test_an_estimate_whose_state_is_a_tuple_of_arrays_equals_its_copy():
    """An estimator of the user's own may keep a state of several arrays of different lengths (a
    mean and a scale, a count): ``==`` on its estimate must compare them by value, not raise
    NumPy's "inhomogeneous shape" ValueError building one array of them."""
    import copy
    import pickle

    state = (np.arange(5.0), np.array([0.5, np.nan]), 3, {"seen": np.ones(2)})
    est = zo.GradientEstimate(grad=np.arange(5.0), loss=1.5, nfev=6, state=state)
    for other in (copy.deepcopy(est), pickle.loads(pickle.dumps(est))):
        assert other == est
    moved = copy.deepcopy(est)
    moved.state[0][2] += 1e-12
    assert moved != est
    assert zo.GradientEstimate(np.arange(5.0), 1.5, 6, state[:3]) != est  # a field fewer


class _Float32BatchList(_Float32Batch):
    """The batch's float32 losses as a list (list(arr32), or [net(x) for x in X] of a float32 net)."""

    def __init__(self, form):
        self.form = form

    def batch(self, X):
        v = super().batch(X)
        return [int(t) for t in v] if self.form == "int" else list(v)


@pytest.mark.parametrize("form", ["float32", "int"])
def test_coarse_losses_from_a_batch_list_are_warned_about_as_from_an_array(form):
    """A batch returning a list of np.float32 (or int) losses quantized the estimate as the float32
    array does (-2.289 for -2 at mu=1e-5), but only the array was warned about."""
    with pytest.warns(UserWarning, match=f"the oracle returns {form}\\w* losses"):
        g = zo.estimate_gradient(_Float32BatchList(form), np.zeros(8), zo.CGE(mu=1e-5)).grad
    # textbook forward differences of the losses as the list rounds them: the estimate is quantized
    x, h = np.zeros(8), (np.float64(0) + 1e-5) - 0
    f0 = float(100 + np.sum((x - 1) ** 2))
    fi = np.float32(100 + (h - 1) ** 2 + 7)
    want = ((int(fi) if form == "int" else float(fi)) - f0) / h
    assert g[0] == pytest.approx(want, rel=1e-9) and abs(g[0] + 2) > 0.1


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_cge_batch_oracle_stays_within_a_budget_below_one_row(scheme):
    """With ``d * itemsize > budget_bytes`` the batch path still built a dense (1, d) row per query
    (past the budget the docstring promises, and O(d) per query: 4-30x slower than plain calls at
    d = 1e7 with 100 coordinates); CGE now makes plain calls there, with the textbook's values."""
    rows = []

    class Rec(BatchOnly):
        def batch(self, X):
            rows.append(X.nbytes)
            return super().batch(X)

    d = 1000
    rng = np.random.default_rng(3)
    q = QuadraticOracle(np.diag(rng.uniform(1, 2, d)), rng.standard_normal(d))
    x = rng.standard_normal(d)
    coords = np.array([0, 17, 500, 999])
    budget = d * 8 // 2  # half of one float64 row
    est = zo.CGE(mu=1e-4, scheme=scheme)
    got = zo.estimate_gradient(Rec(q), x, est, coordinates=coords, budget_bytes=budget)
    assert all(n <= budget for n in rows), rows
    want = np.zeros(d)  # the textbook loop: one perturbed copy per query
    for i in coords:
        y = x.copy()
        y[i] = x[i] + 1e-4
        fp = q(y)
        if scheme == "forward":
            want[i] = (fp - q(x)) / ((x[i] + 1e-4) - x[i])
        else:
            y[i] = x[i] - 1e-4
            want[i] = (fp - q(y)) / (((x[i] + 1e-4) - x[i]) + (x[i] - (x[i] - 1e-4)))
    np.testing.assert_array_equal(got.grad, want)
    assert got.nfev == len(coords) * len(est.steps) + 1


def test_cge_batch_oracle_makes_plain_calls_where_one_row_alone_fits_the_budget():
    """Where the budget held one perturbed row but not two, sparse CGE called ``batch`` with one
    (1, d) row per query, each allocated and filled afresh: O(d) per query with nothing batched
    (7 ms a query at d = 1e7 float32 against 3 us for a plain call editing one array in place,
    while float64 params, whose row is past a 64 MiB budget, already made plain calls). Counted
    here: no batch call, and the plain calls' values."""
    rows = []

    class Rec(BatchOnly):
        def batch(self, X):
            rows.append(X.shape[0])
            return super().batch(X)

    d = 1000
    rng = np.random.default_rng(5)
    q = QuadraticOracle(np.diag(rng.uniform(1, 2, d)), rng.standard_normal(d))
    x = rng.standard_normal(d)
    coords = np.array([1, 40, 600, 998])
    for budget in (d * 8, 2 * d * 8 - 1):  # one float64 row fits, two do not
        rows.clear()
        got = zo.estimate_gradient(Rec(q), x, zo.CGE(mu=1e-4), coordinates=coords, budget_bytes=budget)
        assert rows == [], rows
        want = zo.estimate_gradient(q.__call__, x, zo.CGE(mu=1e-4), coordinates=coords)
        np.testing.assert_array_equal(got.grad, want.grad)
        assert got.nfev == len(coords) + 1
    rows.clear()
    zo.estimate_gradient(Rec(q), x, zo.CGE(mu=1e-4), coordinates=coords, budget_bytes=2 * d * 8)
    assert rows == [2, 2]  # two rows fit: batched
