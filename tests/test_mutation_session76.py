"""Tests that kill the mutants of session 76's new code the other tests let live (h484): ZO-GraSP inside
a box on top of ``estimate_gradient`` (its executor, its two seeds, its blocks, the box in the queries'
dtype, a box exactly ``2 * mu`` wide, its second-point warning and failure message, CuPy params, float64
scores), Rademacher directions in ``zoracle.adapters.torch.blackbox``, and the suite's restoring of
``ZORACLE_TEST_TMP_PARENT``. Each test names the plausible bug it catches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zoracle as zo

from test_pruning import _Boxed, _BoxedBatch
from test_rge_rademacher import textbook_directions

ROOT = Path(__file__).resolve().parents[1]


def _quadratic(d, seed=0, scale=1.0):
    r = np.random.default_rng(seed)
    M = r.standard_normal((d, d))
    return scale * (M @ M.T), scale * r.standard_normal(d)


def _directions(points, q, mu):
    """The +-1 directions of the first and second estimates, read back from a serial oracle's queries
    (each estimate: its base point, then its q directions in order)."""
    P = np.array(points)
    return np.round((P[1:q + 1] - P[0]) / mu), np.round((P[q + 2:] - P[q + 1]) / mu)


# ---- ZO-GraSP inside a box: what it hands to estimate_gradient


class _Counting:
    """An executor (``n_workers`` and ``run``) that counts its runs and marks the queries made inside them."""

    n_workers = 2

    def __init__(self):
        self.runs, self.inside = 0, False

    def run(self, oracle, params, tasks):
        self.runs += 1
        self.inside = True
        try:
            return [task.run(oracle, params) for task in tasks]
        finally:
            self.inside = False


def test_boxed_zo_grasp_runs_both_estimates_on_the_executor_it_is_given():
    """``executor`` not passed on to the boxed path (or to one of its two estimates) ran the queries in the
    caller's process with the same scores: the executor's test compared scores only."""
    ex, inside = _Counting(), []
    A, b = _quadratic(5)

    def loss(x):
        inside.append(ex.inside)
        return float(0.5 * x @ A @ x + b @ x)

    s = zo.zo_grasp(loss, np.linspace(-1, 1, 5), directions=6, rng=0, bounds=(-1.0, 1.0), executor=ex)
    assert np.isfinite(s).all()
    assert ex.runs == 2 and len(inside) == 2 * (6 + 1) and all(inside), (ex.runs, inside)


def test_boxed_zo_grasp_with_independent_directions_draws_the_second_from_the_second_seed():
    """The two seeds swapped, or the second estimate given the first's: with the default common random
    numbers both are one seed, so only ``common_random_numbers=False`` tells. Its first estimate's
    directions are those of the default (the first seed), its second estimate's the second draw's."""
    d, q, mu = 6, 5, 1e-2
    A, b = _quadratic(d, 1)
    theta = np.linspace(-0.5, 0.5, d)
    runs = {}
    for crn in (True, False):
        f = _Boxed(A, b, np.full(d, -1.0), np.full(d, 1.0))
        zo.zo_grasp(f, theta, mu=mu, directions=q, rng=7, bounds=(-1.0, 1.0), common_random_numbers=crn)
        runs[crn] = _directions(f.points, q, mu)
    gen = np.random.default_rng(7)
    seed1, seed2 = int(gen.integers(2**63)), int(gen.integers(2**63))
    np.testing.assert_array_equal(runs[True][0], textbook_directions(seed1, q, d))
    np.testing.assert_array_equal(runs[True][1], runs[True][0])
    np.testing.assert_array_equal(runs[False][0], runs[True][0])
    np.testing.assert_array_equal(runs[False][1], textbook_directions(seed2, q, d))
    assert (runs[False][1] != runs[False][0]).any()


@pytest.mark.filterwarnings("ignore:ZO-GraSP's second point")  # (the steep loss: its step clips)
def test_boxed_zo_grasp_keeps_a_float32_models_queries_inside_whatever_the_sides():
    """The shrunk box computed in the params' float64 (not the float32 the oracle's ``compute_dtype``
    forms the queries in): ``hi - mu`` rounded to float32, plus float32 ``mu``, lands above ``hi`` on
    some coordinates, where the existing test's two sides happened to round inwards."""
    d, mu = 64, 1e-2
    r = np.random.default_rng(2)
    lo, hi = r.uniform(-1.0, 0.0, d), r.uniform(0.2, 1.0, d)
    naive = (np.float32(hi - mu) + np.float32(mu)).astype(np.float64)
    assert (naive > hi).any()  # (the float64 box's upper side lets a float32 query out here)

    class Float32(_BoxedBatch):
        compute_dtype = np.float32

        def __call__(self, x):
            assert np.asarray(x).dtype == np.float32
            return super().__call__(x)

    A, b = _quadratic(d, 3, scale=10.0)
    f = Float32(A, b, lo, hi)
    s = zo.zo_grasp(f, hi.copy(), mu=mu, directions=4, rng=0, bounds=(lo, hi))  # (params on the upper faces)
    assert len(f.points) == 10 and np.isfinite(s).all()


@pytest.mark.filterwarnings("ignore:ZO-GraSP's second point")  # (mu = 0.25: a long step, which clips)
def test_boxed_zo_grasp_takes_a_box_exactly_two_mu_wide():
    """``hi - lo <= 2 * mu`` (or ``lower < upper``) refused a coordinate whose box is exactly the two steps
    wide, where the one point ``lo + mu`` has both its queries on the box's faces."""
    lo, hi, mu = np.array([0.0, -4.0, -4.0]), np.array([0.5, 4.0, 4.0]), 0.25
    A, b = _quadratic(3, 4)
    f = _Boxed(A, b, lo, hi)
    s = zo.zo_grasp(f, np.array([0.0, 1.0, -1.0]), mu=mu, directions=4, rng=0, bounds=(lo, hi))
    assert np.isfinite(s).all() and len(f.points) == 10
    P = np.array(f.points)
    assert P[0][0] == P[5][0] == 0.25  # both base points: the one point of the shrunk box
    assert set(P[:, 0].tolist()) == {0.0, 0.25, 0.5}


def test_boxed_zo_grasp_refuses_a_float32_box_its_rounded_sides_leave_narrower_than_two_mu():
    """``lo`` and ``hi`` 2 * mu apart in float64, but no float32 point has both its float32 queries inside:
    the float64 width test alone let it through, and the first queries left the box."""
    mu, lo = 1e-2, 0.6732655185893088
    hi = lo + 2 * mu
    lo32, hi32 = np.float32(lo), np.float32(hi)
    lo32 = np.nextafter(lo32, np.float32(np.inf)) if lo32 < lo else lo32  # the box's float32 sides, inwards
    hi32 = np.nextafter(hi32, np.float32(-np.inf)) if hi32 > hi else hi32
    assert hi - lo >= 2 * mu and float(hi32) - float(lo32) < 2 * float(np.float32(mu))
    L, H = np.array([-1.0, lo, -1.0]), np.array([1.0, hi, 1.0])
    f = _Boxed(np.eye(3), np.zeros(3), L, H)
    with pytest.raises(zo.ArgumentError, match=r"`bounds` is narrower than 2 \* mu = 0.02 at coordinate 1"):
        zo.zo_grasp(f, np.array([0.0, 0.68, 0.0], dtype=np.float32), mu=mu, directions=3, bounds=(L, H))
    assert f.points == []


def test_boxed_zo_grasp_scores_only_its_blocks():
    """``blocks`` dropped on the boxed path: every parameter scored; the unbounded path's test only."""
    d = 6
    A, b = _quadratic(d, 5)
    theta = np.linspace(-0.8, 0.8, d)
    kw = dict(mu=1e-2, directions=8, rng=3, bounds=(-1.0, 1.0))
    whole = zo.zo_grasp(_Boxed(A, b, -np.ones(d), np.ones(d)), theta, **kw)
    part = zo.zo_grasp(_Boxed(A, b, -np.ones(d), np.ones(d)), theta, blocks=[slice(1, 3), slice(4, 5)], **kw)
    keep = np.zeros(d, dtype=bool)
    keep[[1, 2, 4]] = True
    assert (whole[~keep] != 0).all() and (part[~keep] == 0).all()
    np.testing.assert_array_equal(part[keep], whole[keep])


def test_boxed_zo_grasp_warns_of_a_long_second_step():
    """The second-point check dropped from the boxed path: a loss in large units read its Hessian far
    from the params without the warning the unbounded path gives (the test filters it, never asks for it)."""
    A, b = _quadratic(4, 6, scale=1e4)
    with pytest.warns(RuntimeWarning, match="ZO-GraSP's second point"):
        zo.zo_grasp(_Boxed(A, b, np.full(4, -1.0), np.full(4, 1.0)), np.full(4, 0.2), mu=1e-2, directions=8,
                    rng=0, bounds=(-1.0, 1.0))


def test_a_failing_second_estimate_names_its_step_from_the_clipped_first_point():
    """The step named in the second estimate's failure measured from ``params`` where the message says
    ``x1`` (params clipped into the box): the same number wherever the params lie inside the shrunk box,
    which is where the existing test started."""
    mu = 1e-2
    theta = np.array([1.0, -1.0, 0.3, 0.5])  # two on the faces: x1 = (0.99, -0.99, 0.3, 0.5)
    x1 = np.clip(theta, -1 + mu, 1 - mu)
    A, b = _quadratic(4, 9)
    points = []

    def nan_away(x):  # the first estimate's queries (within mu of x1) answer; the second's fail
        points.append(np.array(x, dtype=np.float64))
        return float(0.5 * x @ A @ x + b @ x) if np.abs(x - x1).max() <= mu * (1 + 1e-9) else float("nan")

    with pytest.raises(zo.OracleError, match="of ZO-GraSP's second estimate") as got:
        zo.zo_grasp(nan_away, theta, mu=mu, directions=8, rng=0, bounds=(-1.0, 1.0))
    x2 = points[9]  # the second estimate's base point, after the first's 1 + 8 queries
    step = np.linalg.norm(x2 - x1)
    assert abs(np.linalg.norm(x2 - theta) - step) > 1e-3 * step  # (the two readings tell apart here)
    assert f"a step of norm {step:.3g} from x1" in str(got.value), str(got.value)


def test_boxed_zo_grasp_on_cupy_params_equals_the_host_run(monkeypatch):
    """The boxed path's clipping through NumPy (``xp = np``) where the params are CuPy's (the CPU stand-in,
    which refuses a host array mixed into a device operation): refused as a TypeError."""
    import _fakecupy

    lo, hi = np.full(4, -1.0), np.full(4, 1.0)
    theta = np.array([1.0, -0.999, 0.2, 0.5])
    A, b = _quadratic(4, 7)

    def loss(x):
        return float(0.5 * x @ A @ x + b @ x)

    host = zo.zo_grasp(loss, theta, directions=6, rng=0, bounds=(lo, hi))
    cp = _fakecupy.install(monkeypatch)
    dev = zo.zo_grasp(lambda x: loss(cp.asnumpy(x)), cp.asarray(theta), directions=6, rng=0, bounds=(lo, hi))
    assert isinstance(dev, np.ndarray)
    np.testing.assert_array_equal(dev, host)


@pytest.mark.parametrize("bounds", [None, (-1.0, 1.0)], ids=["unbounded", "boxed"])
def test_scores_of_float32_params_are_float64(bounds):
    """``_scores`` copying float32 params instead of casting them to float64: float32 scores (the
    docstring's Returns says float64), their products rounded to float32."""
    A, b = _quadratic(5, 8)
    theta = np.linspace(-0.7, 0.7, 5).astype(np.float32)

    def loss(x):
        x = np.asarray(x, dtype=np.float64)
        return float(0.5 * x @ A @ x + b @ x)

    s = zo.zo_grasp(loss, theta, mu=1e-2, directions=6, rng=0, bounds=bounds)
    assert s.dtype == np.float64


# ---- zoracle.adapters.torch.blackbox with Rademacher directions


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_blackbox_rademacher_queries_move_every_coordinate_by_exactly_mu(scheme):
    """Rademacher drawn as Gaussian, or biased (``2 b - 0.9``: -0.9 and 1.1), passed: the one test looks at
    the estimate's size on a linear function over 20,000 directions, which both keep within 5%."""
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import blackbox

    mu, q, N, D = 1e-3, 64, 3, 5
    rows = []

    def fn(z):
        rows.append(z.detach().numpy().copy())
        return z.detach().numpy().sum(1)

    x = torch.linspace(-1, 1, N * D, dtype=torch.float64).reshape(N, D).requires_grad_(True)
    op = blackbox(fn, zo.RGE(mu=mu, directions=q, distribution="rademacher", scheme=scheme), rng=0)
    op(x).sum().backward()
    queried = np.concatenate(rows[1:]).reshape(-1, N, D)  # (after the forward call's N rows)
    assert queried.shape[0] == (q if scheme == "forward" else 2 * q)
    U = (queried - x.detach().numpy()) / mu
    np.testing.assert_allclose(np.abs(U), 1.0, rtol=1e-9)
    assert 0.4 < float((U > 0).mean()) < 0.6  # (q N D = 960 entries, +1 with probability 1/2)
    if scheme == "central":
        np.testing.assert_allclose(U[q:], -U[:q], rtol=1e-9)


# ---- tests/conftest.py: the environment it leaves behind


@pytest.mark.parametrize("was_set", [False, True], ids=["unset", "set"])
def test_the_suite_leaves_the_tmp_parent_variable_as_it_found_it(was_set, tmp_path):
    """pytest run in-process (``pytest.main``) left ``ZORACLE_TEST_TMP_PARENT`` set after it where it was
    unset before (not popped), or popped a value the caller had set (popped always)."""
    parent = tmp_path if was_set else None
    env = {k: v for k, v in os.environ.items() if k not in ("ZORACLE_TEST_TMP_PARENT", "PYTEST_XDIST_WORKER")}
    if parent is not None:
        env["ZORACLE_TEST_TMP_PARENT"] = str(parent)
    script = ("import os, pytest\n"
              "rc = pytest.main(['-q', '-n', '0', '-p', 'no:cacheprovider', '--collect-only', "
              "'tests/test_suite_workers.py'])\n"
              "print('RC', int(rc), 'AFTER', os.environ.get('ZORACLE_TEST_TMP_PARENT'))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and f"RC 0 AFTER {parent}" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
