"""``zo.RGE(distribution="rademacher")``: +-1 directions (SPSA's simultaneous perturbation), drawn per row
from the (root, i)-keyed Philox generators as the other distributions; ZO-GraSP inside a box estimates with it."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zoracle as zo
from zoracle._plan import direction_block
from zoracle.executors import JoblibExecutor, ThreadPool


def textbook_directions(seed, q, d):
    """The directions of ``estimate_gradient(..., rng=seed)`` as zoracle documents them: the root is
    ``default_rng(seed)``'s first draw below 2**63, direction i's entries -1 where Philox keyed by
    ``(root, i)`` draws a uniform below 1/2, else +1."""
    root = int(np.random.default_rng(seed).integers(2**63))
    return np.stack([np.where(np.random.Generator(np.random.Philox(key=[root, i])).random(d) < 0.5, -1.0, 1.0)
                     for i in range(q)])


class Logged:
    """``0.5 x'Ax + b'x + sin(x_0)``, recording every query; ``batch`` optional (BatchLogged)."""

    def __init__(self, d, seed=0):
        r = np.random.default_rng(seed)
        M = r.standard_normal((d, d))
        self.A, self.b, self.points = M @ M.T, r.standard_normal(d), []

    def loss(self, x):
        return float(0.5 * x @ self.A @ x + self.b @ x + math.sin(x[0]))

    def __call__(self, x):
        x = np.array(x, dtype=np.float64)
        self.points.append(x)
        return self.loss(x)


class BatchLogged(Logged):
    def batch(self, X):
        return np.array([self(x) for x in X])


def test_entries_are_exactly_plus_or_minus_one_and_balanced():
    """Probabilistic (roots fixed): 400 x 500 entries, each +1 with probability 1/2: the share of +1 within
    5 standard errors (sqrt(1/4 / n)) of 1/2, in every row too, loosely (within 6 of its own)."""
    U = direction_block(12345, 0, 400, 500, "rademacher")
    assert set(np.unique(U).tolist()) == {-1.0, 1.0}
    share = float((U > 0).mean())
    assert abs(share - 0.5) < 5 * math.sqrt(0.25 / U.size), share
    rows = (U > 0).mean(axis=1)
    assert np.all(np.abs(rows - 0.5) < 6 * math.sqrt(0.25 / U.shape[1]))
    # entries independent across coordinates: neighbouring coordinates agree half the time
    agree = float((U[:, 1:] == U[:, :-1]).mean())
    assert abs(agree - 0.5) < 5 * math.sqrt(0.25 / U[:, 1:].size), agree
    # float32 blocks hold the very same +-1
    np.testing.assert_array_equal(direction_block(12345, 3, 9, 500, "rademacher", np, np.float32), U[3:9])


@pytest.mark.parametrize("scheme", ["forward", "central"])
@pytest.mark.parametrize("batch", [False, True])
def test_the_estimate_is_the_textbook_loop_over_the_documented_directions(scheme, batch):
    d, q, mu, seed = 7, 11, 1e-3, 42
    oracle = (BatchLogged if batch else Logged)(d)
    x = np.linspace(-1, 1, d)
    got = zo.estimate_gradient(oracle, x, zo.RGE(mu=mu, directions=q, distribution="rademacher", scheme=scheme),
                               rng=seed)
    U = textbook_directions(seed, q, d)
    f = oracle.loss
    g = np.zeros(d)
    for u in U:
        diff = f(x + mu * u) - f(x - mu * u) if scheme == "central" else f(x + mu * u) - f(x)
        g += diff / (2 * mu if scheme == "central" else mu) * u
    g /= q
    np.testing.assert_allclose(got.grad, g, rtol=1e-12, atol=1e-12)
    assert got.nfev == len(oracle.points) == (q + 1 if scheme == "forward" else 2 * q + 1)
    # the queries themselves: every coordinate moved by exactly mu
    P = np.array(oracle.points)
    moved = np.abs(P[~(P == x).all(axis=1)] - x)
    np.testing.assert_allclose(moved, mu, rtol=1e-9)


@pytest.mark.parametrize("batch", [False, True])
def test_the_same_directions_whatever_the_chunking_the_executor_and_the_worker_count(batch):
    """The same query points (bitwise, in any order) and the same estimate: bitwise for any executor and
    worker count, to the last bits for another ``budget_bytes`` (the sum over directions taken in other blocks)."""
    d, q, x = 40, 37, np.linspace(-0.5, 0.5, 40)
    est = zo.RGE(mu=1e-3, directions=q, distribution="rademacher", scheme="central")

    def run(**kw):
        oracle = (BatchLogged if batch else Logged)(d)
        got = zo.estimate_gradient(oracle, x, est, rng=9, **kw)
        return got.grad, np.array(sorted(map(tuple, oracle.points)))

    ref, points = run()
    for kw in (dict(budget_bytes=3 * d * 16), dict(budget_bytes=d * 16)):  # three rows a chunk, then one
        grad, pts = run(**kw)
        np.testing.assert_array_equal(pts, points)
        np.testing.assert_allclose(grad, ref, rtol=1e-13, atol=1e-13)
    for workers in (1, 3):
        with JoblibExecutor(workers, backend="threading") as ex:
            grad, pts = run(executor=ex)
        np.testing.assert_array_equal(pts, points)
        np.testing.assert_array_equal(grad, ref)
    with ThreadPool(2) as ex:
        grad, pts = run(executor=ex)
    np.testing.assert_array_equal(pts, points)
    np.testing.assert_array_equal(grad, ref)


@given(g=st.lists(st.floats(-5, 5), min_size=1, max_size=6), scheme=st.sampled_from(["forward", "central"]),
       q=st.integers(1, 4))
@settings(max_examples=20, deadline=None)
@pytest.mark.slow
def test_unbiased_on_a_linear_loss(g, scheme, q):
    """Probabilistic (seeds 0..299 fixed): E[(g.u) u] = g for +-1 entries (E u u^T = I): the mean of 300
    estimates within 5 standard errors of g (exact where d = 1: (g u) u = g for u = +-1)."""
    g = np.array(g)
    x0 = np.linspace(0.1, 0.6, g.size)
    est = zo.RGE(mu=1e-2, directions=q, distribution="rademacher", scheme=scheme)
    ests = np.array([zo.estimate_gradient(lambda z: float(g @ z), x0, est, rng=s).grad for s in range(300)])
    se = ests.std(0, ddof=1) / math.sqrt(len(ests))
    assert np.all(np.abs(ests.mean(0) - g) <= 5 * se + 1e-9 * (1 + np.abs(g).sum())), (ests.mean(0), g, se)


def test_gaussian_rge_is_still_refused_in_a_box_naming_both_alternatives():
    with pytest.raises(zo.ArgumentError, match=r"distribution=\"sphere\".*distribution=\"rademacher\""):
        zo.train(lambda x: float(x @ x), np.zeros(3), epochs=1, estimator=zo.RGE(), bounds=(-1, 1), progress=False)


# ------------------------------------------------------------------------- ZO-GraSP inside a box, through it
class Walled(BatchLogged):
    """Raises at any query outside ``[lo, hi]`` (thread-safe enough: appends only)."""

    def __init__(self, d, lo, hi):
        super().__init__(d, seed=1)
        self.lo, self.hi = lo, hi

    def __call__(self, x):
        x64 = np.asarray(x, dtype=np.float64)
        if not ((x64 >= self.lo) & (x64 <= self.hi)).all():
            raise RuntimeError(f"query outside the box: {x64!r}")
        return super().__call__(x64)


@pytest.mark.filterwarnings("ignore:ZO-GraSP's second point")  # (the steep loss's step clips)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_boxed_zo_grasp_through_an_executor_gives_the_scores_it_gives_without(dtype):
    d, q = 12, 25
    lo, hi = np.full(d, -0.3), np.full(d, 0.3)
    theta = np.linspace(-0.3, 0.3, d).astype(dtype)  # on both faces
    plain = Walled(d, lo, hi)
    ref = zo.zo_grasp(plain, theta, directions=q, rng=4, bounds=(lo, hi))
    assert len(plain.points) == 2 * (q + 1) and np.isfinite(ref).all() and (ref != 0).any()
    for make in (lambda: ThreadPool(3), lambda: JoblibExecutor(2, backend="threading")):
        with make() as ex:
            got = zo.zo_grasp(Walled(d, lo, hi), theta, directions=q, rng=4, bounds=(lo, hi), executor=ex)
        np.testing.assert_array_equal(got, ref)


def test_boxed_zo_grasp_with_a_float32_model_given_float64_params_stays_inside():
    """The oracle evaluates in float32 (``compute_dtype``): the queries are formed in it, the box rounded
    inwards in it, so each float32 query lies in [lo, hi]."""

    class Float32(Walled):
        compute_dtype = np.float32

        def __call__(self, x):
            assert x.dtype == np.float32
            return super().__call__(x)

    d = 6
    lo, hi = np.full(d, 0.1), np.full(d, 0.7)  # (0.1 and 0.7: no float32 value, rounded inwards)
    f = Float32(d, lo, hi)
    s = zo.zo_grasp(f, np.array([0.1, 0.7, 0.4, 0.1 + 1e-9, 0.7 - 1e-9, 0.3]), mu=1e-2, directions=9, rng=0,
                    bounds=(lo, hi))
    assert len(f.points) == 20 and np.isfinite(s).all()


def test_a_failing_query_of_boxed_zo_grasp_names_which_estimate_and_where():
    """Through estimate_gradient the failures keep ZO-GraSP's locations: the first estimate at the params
    clipped into the shrunk box, the second at its own point."""
    lo, hi = np.full(4, -1.0), np.full(4, 1.0)

    def nan_up(x):  # NaN at any query that moved coordinate 0 up from the base point's -0.5
        return float("nan") if x[0] > -0.5 + 1e-3 else float(np.sum(x ** 2))

    with pytest.raises(zo.OracleError, match=r"of ZO-GraSP's first estimate, at params clipped into the box shrunk "
                                             r"by mu.*ratios='uniform' skips ZO-GraSP"):
        zo.zo_grasp(nan_up, np.full(4, -0.5), mu=1e-2, directions=8, rng=0, bounds=(lo, hi))

    def nan_away(x):  # NaN past the first estimate's queries (0.5 +- mu on coordinate 0): the second's fail
        return float(np.sum(x ** 2)) if abs(x[0] - 0.5) < 0.015 else float("nan")

    with pytest.raises(zo.OracleError, match=r"of ZO-GraSP's second estimate, at x1 \+ mu \* g clipped into the box "
                                             r"\(a step of norm [0-9.]+ from x1.*smaller `mu`"):
        zo.zo_grasp(nan_away, np.full(4, 0.5), mu=1e-2, directions=8, rng=0, bounds=(lo, hi))


# ------------------------------------------------------------- short params: exact losses, as for CGE
def test_a_polynomial_loss_at_short_params_is_not_called_rounded():
    """A Rademacher query moves every coordinate by exactly mu: at short params and mu a quadratic's losses are
    short numbers on a grid of their own, as at CGE's queries, which are not warned of. Rademacher RGE
    warned "the oracle's losses are multiples of 0.0001 (a loss rounded to 4 decimals)" there (its points
    were not read); a loss that is rounded is still named, at params that are not short."""
    f = lambda x: float(np.sum((x - 0.3) ** 2))  # noqa: E731
    x0 = np.array([0.1, 0.25, -0.4, 1.0])
    for scheme in ("forward", "central"):
        for est in (zo.CGE(mu=1e-2, scheme=scheme), zo.RGE(mu=1e-2, directions=3, distribution="rademacher",
                                                            scheme=scheme)):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                zo.estimate_gradient(f, x0, est, rng=0)
    x1 = np.random.default_rng(0).uniform(-1, 1, 4)
    with pytest.warns(UserWarning, match=r"losses are multiples of 0.0001 \(a loss rounded to 4 decimals"):
        zo.estimate_gradient(lambda x: round(f(x), 4), x1, zo.RGE(mu=1e-2, directions=3, distribution="rademacher"),
                             rng=0)


class OffBatch:
    """``x @ x``, its ``batch`` 0.5 too high: a fast path that disagrees with the plain call."""

    def __call__(self, x):
        return float(np.asarray(x) @ np.asarray(x))

    def batch(self, X):
        X = np.asarray(X)
        return np.einsum("ij,ij->i", X, X) + 0.5


def test_a_batch_off_by_half_at_short_params_is_refused_as_for_cge():
    """At whole params with mu = 0.25 the losses carry few bits, which the fast path's check took for a
    narrow float's rounding (a tolerance of some 10% of the loss) where the probe's point is not known to be
    short: a Rademacher probe's is (every coordinate +-mu), as CGE's. The batch off by 0.5 passed, the run
    trained on its losses, and the short losses were warned of as "only 7 significant bits"."""
    x0 = np.array([1.0, 2.0, 3.0, 4.0])
    est = zo.RGE(mu=0.25, directions=4, distribution="rademacher")
    kw = dict(epochs=2, estimator=est, optimizer=zo.sgd(0.01), progress=False, rng=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.warns(RuntimeWarning, match=r"its `batch` disagrees with its plain call at params moved 0.25 "
                                                r"along direction"):
            got = zo.train(OffBatch(), x0, **kw)
    plain = zo.train(lambda x: float(x @ x), x0, **kw)
    np.testing.assert_array_equal(got.params, plain.params)


def test_distribution_given_to_train_or_estimate_gradient_names_every_distribution_rge_takes():
    """``train(..., distribution="rademacher")`` was told ``estimator=zo.RGE(distribution="sphere")``, the one
    value its hint knew: the fix names each of RGE's distributions (kept with ``DISTRIBUTIONS``)."""
    from zoracle._estimators import DISTRIBUTIONS

    for call in (lambda **kw: zo.train(lambda x: float(x @ x), np.zeros(2), **kw),
                 lambda **kw: zo.estimate_gradient(lambda x: float(x @ x), np.zeros(2), **kw)):
        with pytest.raises(zo.ArgumentError, match=r"has no argument `distribution`: .*estimator=zo\.RGE\(") as e:
            call(distribution="rademacher")
        assert all(f'"{name}"' in str(e.value) for name in DISTRIBUTIONS), str(e.value)


def test_a_boxed_rademacher_run_resumes_bit_for_bit_and_another_distribution_is_refused(tmp_path):
    """The checkpoint records the estimator with its distribution: the same run resumes bit for bit, a resume
    with RGE on the sphere (the same box, the same queries' count) is refused naming the estimator."""
    f = lambda x: float(np.sum((x - 0.3) ** 2 * np.arange(1, 5)))  # noqa: E731
    est = zo.RGE(mu=1e-2, directions=3, distribution="rademacher", scheme="central")
    kw = dict(optimizer=zo.sgd(0.05), rng=0, progress=False, estimator=est, bounds=(-0.2, 1.0))
    x0, path = np.full(4, -0.2), str(tmp_path / "run.npz")
    whole = zo.train(f, x0, epochs=10, **kw)
    zo.train(f, x0, epochs=4, checkpoint=path, **kw)
    resumed = zo.train(f, x0, epochs=10, checkpoint=path, resume=path, **kw)
    assert resumed.params.tobytes() == whole.params.tobytes() and resumed.nfev == whole.nfev
    sphere = zo.RGE(mu=1e-2, directions=3, distribution="sphere", scheme="central")
    with pytest.raises(zo.CheckpointError, match=r"estimator: checkpoint has .*distribution='rademacher'.*"
                                                 r"this run has .*distribution='sphere'"):
        zo.train(f, x0, epochs=10, resume=path, **dict(kw, estimator=sphere))
