"""``train(bounds=...)``: every query inside the box, the run equal to the textbook projected loop.

The oracles here raise on any query outside ``[lo, hi]``, as hardware that refuses (or is damaged by)
a setting out of range would: a run that finishes made none.
"""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import zoracle as zo


class Hardware:
    """A loss that refuses any setting outside ``[lo, hi]``; keeps every query's point."""

    def __init__(self, lo, hi, target):
        self.lo, self.hi, self.target = np.asarray(lo, float), np.asarray(hi, float), np.asarray(target, float)
        self.points = []

    def __call__(self, x):
        x64 = np.asarray(x, dtype=np.float64)
        if not ((x64 >= self.lo) & (x64 <= self.hi)).all():
            raise RuntimeError(f"setting out of range: {x64!r} not in [{self.lo!r}, {self.hi!r}]")
        self.points.append(x64.copy())
        return self.loss(x64)

    def loss(self, x64):
        return float(np.sum((x64 - self.target) ** 2 * np.arange(1, x64.size + 1)))


def textbook(f, x0, lo, hi, mu, central, lr, steps):
    """Projected gradient descent with the textbook CGE: the params clipped into [lo, hi - mu]
    (forward) or [lo + mu, hi - mu] (central), at the start and after each step."""
    lb = lo + mu if central else lo
    ub = hi - mu
    x = np.clip(x0, lb, ub)
    losses = []
    for _ in range(steps):
        f0 = f(x)
        g = np.zeros_like(x)
        for i in range(x.size):
            e = np.zeros_like(x)
            e[i] = mu
            if central:
                g[i] = (f(x + e) - f(x - e)) / (((x[i] + mu) - x[i]) + (x[i] - (x[i] - mu)))
            else:
                g[i] = (f(x + e) - f0) / ((x[i] + mu) - x[i])
        losses.append(f0)
        x = np.clip(x - lr * g, lb, ub)
    return x, losses


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_a_run_against_a_wall_queries_only_inside_and_equals_the_textbook_projected_loop(scheme):
    lo, hi = np.array([0.0, -1.0, 0.5]), np.array([5.0, 0.25, 2.0])
    target = np.array([7.0, 1.0, -3.0])  # outside the box on every coordinate: the run ends against its walls
    x0 = np.array([4.99, 0.2, 1.0])  # (forward: within mu of hi on coordinate 0, moved in to hi - mu)
    mu, lr, steps = 0.05, 0.05, 40
    hw = Hardware(lo, hi, target)
    res = zo.train(hw, x0, epochs=steps, optimizer=zo.sgd(lr), estimator=zo.CGE(mu=mu, scheme=scheme),
                   bounds=(lo, hi), progress=False)
    assert res.steps == steps
    ref, losses = textbook(Hardware(lo, hi, target), x0, lo, hi, mu, scheme == "central", lr, steps)
    np.testing.assert_allclose(res.params, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.history.column("loss"), losses, rtol=1e-12, atol=0)
    pts = np.array(hw.points)
    assert pts.max(axis=0)[0] == pytest.approx(5.0)  # the queries reach the wall, not past it
    assert pts.min(axis=0)[2] == pytest.approx(0.5)


def test_the_shrunk_box_is_rounded_inwards_so_the_query_at_hi_minus_mu_plus_mu_stays_inside():
    """(hi - mu) + mu rounds above hi for these two (float64): a clip into [lo, hi - mu] alone let the
    query one unit in the last place past hi."""
    hi, mu = -0.9342256142260483, 0.09654994806006474
    assert (hi - mu) + mu > hi  # the case this test is about
    lo = -3.0
    hw = Hardware([lo], [hi], [10.0])
    res = zo.train(hw, np.array([hi]), epochs=5, optimizer=zo.sgd(0.1), estimator=zo.CGE(mu=mu),
                   bounds=(lo, hi), progress=False)
    assert max(p[0] for p in hw.points) <= hi
    assert res.params[0] < hi - mu


@pytest.mark.parametrize("optimizer", [zo.adam(0.3), zo.sgd(0.2, momentum=0.9)])
def test_an_oracle_that_raises_outside_the_box_trains_to_completion_with_any_optimizer(optimizer):
    lo, hi = np.zeros(4), np.ones(4)
    hw = Hardware(lo, hi, np.full(4, 3.0))
    res = zo.train(hw, np.full(4, 0.5), epochs=30, optimizer=optimizer, bounds=(0.0, 1.0), progress=False)
    assert res.steps == 30
    np.testing.assert_allclose(res.params, 1.0 - zo.CGE().mu)  # pinned to the top of the shrunk box


box_cases = st.integers(1, 5).flatmap(lambda d: st.tuples(
    st.lists(st.floats(-10, 10), min_size=d, max_size=d),
    st.lists(st.floats(0.0, 3.0), min_size=d, max_size=d),
    st.lists(st.floats(0, 1), min_size=d, max_size=d),
    st.lists(st.floats(-30, 30), min_size=d, max_size=d),
))


@given(case=box_cases, log_mu=st.floats(-5, -1), central=st.booleans(), sparse=st.booleans(),
       float32=st.booleans(), lr=st.floats(0.01, 2.0))
def test_no_query_leaves_the_box(case, log_mu, central, sparse, float32, lr):
    lo_l, extra, where, target = case
    d = len(lo_l)
    mu = 10.0 ** log_mu
    lo = np.array(lo_l)
    hi = lo + (2 * mu if central else mu) * 1.01 + np.array(extra)  # at least as wide as the queries need
    dtype = np.float32 if float32 else np.float64
    x0 = (lo + np.array(where) * (hi - lo)).astype(dtype)  # (float32 may round it just outside: moved in)
    x0 = np.where(x0 < lo, np.nextafter(x0, dtype(np.inf)), x0).astype(dtype)
    x0 = np.where(x0 > hi, np.nextafter(x0, dtype(-np.inf)), x0).astype(dtype)
    hw = Hardware(lo, hi, target)
    kw = dict(sparsity=0.5, ratios="uniform", mask_shuffle_interval=1) if sparse and d > 1 else {}
    try:
        res = zo.train(hw, x0, epochs=6, optimizer=zo.sgd(lr), estimator=zo.CGE(mu=mu, scheme="central" if central
                                                                                    else "forward"),
                       bounds=(lo, hi), progress=False, rng=0, **kw)
    except zo.ArgumentError as exc:  # float32 may round the box narrower than mu: refused naming mu, never queried
        assert "mu" in str(exc) and not hw.points
        return
    assert hw.points  # every query was inside (Hardware raises otherwise)
    assert ((res.params >= lo) & (res.params <= hi)).all()


def test_scipys_list_of_pairs_and_bounds_object_and_none_sides_are_the_same_box():
    lo, hi = np.array([-np.inf, 0.0]), np.array([0.5, np.inf])
    runs = []
    for bounds in ([(None, 0.5), (0.0, None)], (lo, hi), __import__("scipy").optimize.Bounds(lo, hi)):
        hw = Hardware(lo, hi, [2.0, -2.0])
        runs.append(zo.train(hw, np.array([0.0, 1.0]), epochs=10, optimizer=zo.sgd(0.2), bounds=bounds,
                             progress=False).params)
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])
    assert runs[0][0] == 0.5 - zo.CGE().mu and runs[0][1] == 0.0


def test_a_pair_of_pairs_that_reads_as_two_boxes_for_two_parameters_is_refused():
    """[[0, 1], [2, 3]] is SciPy's pairs lo = [0, 2], hi = [1, 3], or (lo, hi) lo = [0, 1], hi = [2, 3]."""
    f = Counted()
    for bounds in ([[0.0, 1.0], [2.0, 3.0]], ((0.0, 1.0), (2.0, 3.0))):
        with pytest.raises(zo.ArgumentError, match=r"reads as SciPy's \(lo, hi\) pairs and as \(lo, hi\) alike"):
            zo.train(f, np.array([1.0, 2.5]), bounds=bounds, progress=False)
    # ([1, 0], [2, 3]): (lo, hi) a box, SciPy's pairs none (1 above 0): not the pairs' lo[0] > hi[0] refusal
    with pytest.raises(zo.ArgumentError, match=r"alike for 2 parameters, no box as SciPy's pairs.*np.array\(lo\)"):
        zo.train(f, np.array([1.5, 2.5]), bounds=([1.0, 0.0], [2.0, 3.0]), progress=False)
    with pytest.raises(zo.ArgumentError, match=r"lo\[0\] = 3.0 is above hi\[0\] = 2.0"):  # (no box either way)
        zo.train(f, np.array([1.5, 2.5]), bounds=([3.0, 4.0], [2.0, 1.0]), progress=False)
    assert f.calls == 0
    # SciPy's own form, a list of tuples, and (lo, hi) of three parameters are read as meant
    hw = Hardware([0.0, 2.0], [1.0, 3.0], [5.0, 5.0])
    zo.train(hw, np.array([0.5, 2.5]), epochs=20, optimizer=zo.sgd(0.3), bounds=[(0.0, 1.0), (2.0, 3.0)],
             progress=False)
    hw = Hardware([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [5.0, 5.0, 5.0])
    zo.train(hw, np.full(3, 0.5), epochs=20, optimizer=zo.sgd(0.3), bounds=((0, 0, 0), (1, 1, 1)), progress=False)
    hw = Hardware([0.0, 2.0, 4.0], [1.0, 3.0, 5.0], [9.0, 9.0, 9.0])
    zo.train(hw, np.array([0.5, 2.5, 4.5]), epochs=20, optimizer=zo.sgd(0.3),
             bounds=((0, 1), (2, 3), (4, 5)), progress=False)


def test_no_bound_on_any_side_is_the_run_without_bounds():
    f = Hardware([-np.inf] * 2, [np.inf] * 2, [1.0, 2.0])
    a = zo.train(f, np.zeros(2), epochs=5, bounds=[(None, None)] * 2, progress=False)
    b = zo.train(f, np.zeros(2), epochs=5, progress=False)
    np.testing.assert_array_equal(a.params, b.params)


class Counted:
    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return float(np.sum(x ** 2))


@pytest.mark.parametrize("kwargs, match", [
    (dict(estimator=zo.RGE(directions=2)),
     r"`bounds` with estimator=RGE.*estimator=zo.CGE.*distribution=\"sphere\".*distribution=\"rademacher\""),
    (dict(bounds=(0.0, 0.008), estimator=zo.RGE(distribution="sphere")),
     r"narrower than 2 \* mu = 0.01.*RGE's directions on the unit sphere.*zo.RGE\(mu=...\)"),
    (dict(bounds=(0.0, 0.008), estimator=zo.RGE(distribution="sphere", scheme="central")),
     r"narrower than 2 \* mu = 0.01"),
    (dict(bounds=(0.0, 0.008), estimator=zo.RGE(distribution="rademacher")),
     r"narrower than 2 \* mu = 0.01.*RGE's Rademacher directions step by mu either way.*zo.RGE\(mu=...\)"),
    (dict(estimator=zo.SNES(population=4)), r"`bounds` with estimator=SNES.*estimator=zo.CGE"),
    (dict(bounds=(0.0, 0.004)), r"narrower than mu = 0.005.*lower `mu`"),
    (dict(bounds=(0.0, 0.008), estimator=zo.CGE(scheme="central")), r"narrower than 2 \* mu = 0.01"),
    (dict(bounds=(0.0, 1.0), mu=lambda t: 2.0),
     r"narrower than mu = 2 \(the `mu` schedule's value at step 0\).*lower the `mu` schedule's values"),
    (dict(bounds=(0.0, 1.0), mu=lambda t: 0.01 if t < 1 else 1.5),  # (a later step's: before the first query too)
     r"narrower than mu = 1.5 \(the `mu` schedule's value at step 1\)"),
    (dict(bounds=([-1, 0, -1, -1], [1, 0, 1, 1])), r"lo\[1\] == hi\[1\] = 0.0 pins.*out of `params`"),
    (dict(bounds=(0.5, 1.0)), r"`params` lies outside `bounds` at index 0: 0.0 is not in \[0.5, 1.0\]"),
    (dict(bounds=(1.0, 0.0)), r"lo\[0\] = 1.0 is above hi\[0\] = 0.0"),
    (dict(bounds=(0.0, [1.0, 1.0])), r"shape \(4,\)"),
    (dict(bounds=[0.0]), r"`bounds` must be a tuple \(lo, hi\)"),
    (dict(bounds=(np.nan, 1.0)), r"lo\[0\] is NaN"),
])
def test_refusals_name_the_argument_and_come_before_any_query(kwargs, match):
    f = Counted()
    kwargs = dict(dict(bounds=(-1.0, 1.0), ratios="zo_grasp"), **kwargs)
    with pytest.raises(zo.ArgumentError, match=match):
        zo.train(f, np.zeros(4), epochs=2, progress=False, **kwargs)
    assert f.calls == 0


@pytest.mark.parametrize("n_blocks", [1, 2, 3])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("epochs, keep", [(2, False), (0, False), (0, True)])
def test_bounds_keep_zo_grasp_inside_the_box_and_change_nothing_where_it_makes_no_query(n_blocks, sparsity, epochs,
                                                                                        keep, tmp_path):
    """The run without bounds says whether ZO-GraSP queried (its queries are in ``nfev``, in no step's):
    with bounds that run queries as many times, every query inside the box (Rademacher directions), and
    every other one runs inside the box as without. Sparsity 0.1 keeps round(0.9 * 6) = 5 of 6 weights
    (ZO-GraSP ranks); 0.0 all (no ranking); one block, or no step and no checkpoint to keep the ratios
    in: no ZO-GraSP either."""
    blocks = [slice(0, 6)] if n_blocks == 1 else [slice(0, 3), slice(3, 6)] if n_blocks == 2 else \
        [slice(0, 2), slice(2, 4), slice(4, 6)]
    x0 = np.linspace(0.1, 0.6, 6)  # (non-zero weights: ZO-GraSP's scores name no block all zero)
    kw = dict(epochs=epochs, sparsity=sparsity, blocks=blocks, grasp_directions=2, optimizer=zo.sgd(0.05),
              progress=False, rng=0)
    free = zo.train(Hardware(np.full(6, -np.inf), np.full(6, np.inf), np.zeros(6)), x0,
                    checkpoint=tmp_path / "free.npz" if keep else None, **kw)
    grasp = free.nfev - int(sum(free.history.column("nfev"))) if free.steps else free.nfev
    assert grasp in (0, 2 * (2 + 1))
    hw = Hardware(np.zeros(6), np.ones(6), np.zeros(6))
    boxed = zo.train(hw, x0, bounds=(0.0, 1.0), checkpoint=tmp_path / "box.npz" if keep else None, **kw)
    assert boxed.nfev == free.nfev == len(hw.points)  # (none outside: Hardware raises there)
    if grasp:
        assert n_blocks > 1 and sparsity == 0.5 or sparsity == 0.1
        steps = free.nfev - grasp
        # ZO-GraSP's queries: the base point and each Rademacher direction, every coordinate moved by exactly mu
        for base, rows in ((hw.points[0], hw.points[1:3]), (hw.points[3], hw.points[4:6])):
            np.testing.assert_allclose(np.abs(np.array(rows) - base), 5e-3, rtol=1e-9)
        assert len(hw.points) - grasp == steps
    else:
        np.testing.assert_array_equal(boxed.params, free.params)  # (the box never binds: the params stay in [0.1, 0.6])


def test_the_short_budget_recipe_at_sparsity_0_trains_inside_a_box_as_without():
    """At d = 50 and 3,000 queries the recipe samples every weight (sparsity 0) with ratios='zo_grasp':
    ZO-GraSP makes no query there, so bounds= takes the recipe as it is."""
    x0 = np.full(50, 0.05)
    kw = zo.recipes.short_budget(None, x0, 3_000)
    assert (kw["sparsity"], kw["ratios"]) == (0.0, "zo_grasp")
    hw = Hardware(np.zeros(50), np.full(50, 0.2), np.full(50, 0.1))
    boxed = zo.train(hw, x0, bounds=(0, 0.2), progress=False, rng=0, **kw)
    free = zo.train(Hardware(np.full(50, -np.inf), np.full(50, np.inf), np.full(50, 0.1)), x0, progress=False,
                    rng=0, **kw)
    assert boxed.nfev == free.nfev == kw["max_queries"] == len(hw.points)
    np.testing.assert_array_equal(boxed.params, free.params)  # (the box never binds here: the target is inside)


def test_a_mu_schedule_keeps_each_steps_queries_inside_and_one_too_wide_later_is_refused_at_its_step(tmp_path):
    lo, hi = np.zeros(2), np.ones(2)
    hw = Hardware(lo, hi, [3.0, 3.0])
    res = zo.train(hw, np.array([0.5, 0.5]), epochs=8, optimizer=zo.sgd(0.5), bounds=(lo, hi),
                   mu=lambda t: 0.01 * (t + 1), progress=False)  # growing: the params move in with it
    assert res.steps == 8
    np.testing.assert_allclose(res.params, 1 - 0.08)
    hw = Hardware(lo, hi, [3.0, 3.0])
    with pytest.raises(zo.ArgumentError, match=r"narrower than mu = 1.5 \(the `mu` schedule's value at step 2\)"):
        zo.train(hw, np.array([0.5, 0.5]), epochs=4, bounds=(lo, hi), mu=lambda t: 0.01 if t < 2 else 1.5,
                 progress=False)  # a run of known length: every step's mu is known before the first query
    assert hw.points == []
    hw = Hardware(lo, hi, [3.0, 3.0])
    with pytest.raises(zo.ArgumentError, match=r"narrower than mu = 1.5 \(the `mu` schedule's value at this step\)"):
        zo.train(types.SimpleNamespace(bind=lambda batch: hw), np.array([0.5, 0.5]), epochs=4,
                 batches=lambda epoch: iter([epoch]),  # (batches of no length: the run's length not known)
                 bounds=(lo, hi), mu=lambda t: 0.01 if t < 2 else 1.5, progress=False,
                 checkpoint=tmp_path / "run.npz", checkpoint_every=10)
    assert len(hw.points) == 2 * 3  # steps 0 and 1 ran; step 2 made no query
    assert zo.load_checkpoint(tmp_path / "run.npz")[1]["step"] == 2  # the steps before it kept


def test_resume_with_the_same_bounds_is_the_uninterrupted_run_and_other_bounds_are_refused(tmp_path):
    lo, hi = np.zeros(3), np.ones(3)
    kw = dict(optimizer=zo.adam(0.1), bounds=(lo, hi), progress=False, rng=0)
    full = zo.train(Hardware(lo, hi, [2, 2, -1]), np.full(3, 0.5), epochs=10, **kw)
    path = tmp_path / "run.npz"

    def stop(event, record, params):
        return event == "step" and record["step"] == 3

    zo.train(Hardware(lo, hi, [2, 2, -1]), np.full(3, 0.5), epochs=10, checkpoint=path, callbacks=[stop], **kw)
    again = zo.train(Hardware(lo, hi, [2, 2, -1]), np.full(3, 0.5), epochs=10, checkpoint=path, resume=True, **kw)
    np.testing.assert_array_equal(again.params, full.params)
    for other in ((lo, np.full(3, 0.9)), None):
        with pytest.raises(zo.CheckpointError, match=r"bounds: checkpoint has \[0.0, 1.0\], this run has"):
            zo.train(Hardware(lo, hi, [2, 2, -1]), np.full(3, 0.5), epochs=10, checkpoint=path, resume=True,
                     **dict(kw, bounds=other))
    # a checkpoint of a run without bounds (as every one before bounds= was): resumed without, refused with
    plain = tmp_path / "plain.npz"
    zo.train(Hardware(lo, hi, [2, 2, -1]), np.full(3, 0.5), epochs=2, checkpoint=plain, **dict(kw, bounds=None))
    zo.train(Hardware(lo, hi, [2, 2, -1]), np.full(3, 0.5), epochs=3, checkpoint=plain, resume=True,
             **dict(kw, bounds=None))
    with pytest.raises(zo.CheckpointError, match=r"bounds: checkpoint has None, this run has \[0.0, 1.0\]"):
        zo.train(Hardware(lo, hi, [2, 2, -1]), np.full(3, 0.5), epochs=4, checkpoint=plain, resume=True, **kw)


def test_ask_tell_asks_only_points_inside_the_box_and_is_train_bit_for_bit():
    lo, hi = np.zeros(3), np.ones(3)
    kw = dict(epochs=15, optimizer=zo.sgd(0.3), bounds=(lo, hi), progress=False,
              estimator=zo.CGE(scheme="central"))
    hw = Hardware(lo, hi, [2.0, -1.0, 0.5])
    opt = zo.AskTell(np.full(3, 0.999), **kw)
    while not opt.done:
        opt.tell([hw(x) for x in opt.ask()])
    ref = zo.train(Hardware(lo, hi, [2.0, -1.0, 0.5]), np.full(3, 0.999), **kw)
    np.testing.assert_array_equal(opt.result.params, ref.params)
    with pytest.raises(zo.ArgumentError, match="`bounds` with estimator=RGE"):
        zo.AskTell(np.full(3, 0.5), estimator=zo.RGE(), bounds=(lo, hi), progress=False)


class FastHardware(Hardware):
    """The same loss with both CGE fast paths, each checking the points it is asked for."""

    def batch(self, X):
        return np.array([self(x) for x in np.asarray(X)])

    def coordinate_losses(self, params, coords, step):
        out = []
        for i in np.asarray(coords):
            x = np.array(params, copy=True)
            x[i] = x[i] + x.dtype.type(step)  # (the point as the plain queries form it)
            out.append(self(x))
        return np.array(out)


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_fast_paths_and_an_executor_keep_the_queries_inside_and_the_plain_run(scheme):
    from zoracle.executors import ThreadPool

    lo, hi = np.array([0.0, -1.0, 0.5, 0.0]), np.array([1.0, 0.0, 2.0, 3.0])
    kw = dict(epochs=12, optimizer=zo.adam(0.2), estimator=zo.CGE(mu=0.01, scheme=scheme), bounds=(lo, hi),
              progress=False)
    x0 = np.array([1.0, -1.0, 2.0, 1.5])  # on the walls
    plain = zo.train(Hardware(lo, hi, [3, 3, -3, 1]), x0, **kw)
    fast = FastHardware(lo, hi, [3, 3, -3, 1])
    assert np.array_equal(zo.train(fast, x0, **kw).params, plain.params)
    with ThreadPool(2) as ex:
        pooled = FastHardware(lo, hi, [3, 3, -3, 1])
        assert np.array_equal(zo.train(pooled, x0, executor=ex, **kw).params, plain.params)
    assert fast.points and pooled.points


def test_cupy_params_stay_on_the_device_inside_the_box_and_equal_the_host_run(monkeypatch):
    """The backend follows the data (the CPU stand-in for CuPy refuses implicit host conversions)."""
    import _fakecupy

    lo, hi = np.array([0.0, -1.0, 0.5]), np.array([1.0, 0.0, 2.0])
    kw = dict(epochs=10, optimizer=zo.adam(0.2), bounds=(lo, hi), progress=False)
    host = zo.train(Hardware(lo, hi, [3, 3, -3]), np.array([0.5, -0.5, 1.0], dtype=np.float32), **kw)
    cp = _fakecupy.install(monkeypatch)
    kinds = set()

    def loss(x):
        kinds.add(type(x).__module__.split(".")[0])
        return Hardware(lo, hi, [3, 3, -3])(cp.asnumpy(x))

    res = zo.train(loss, cp.asarray(np.array([0.5, -0.5, 1.0], dtype=np.float32)), **kw)
    assert isinstance(res.params, cp.ndarray) and res.params.dtype == np.float32
    assert kinds == {type(cp.zeros(1)).__module__.split(".")[0]}
    assert np.array_equal(cp.asnumpy(res.params), host.params)


def test_a_torch_oracles_feature_reuse_runs_inside_the_box_as_its_plain_calls_do():
    """TorchOracle's coordinate_losses and prefix/suffix form the queries themselves: the run equals
    the one through its plain call, whose every query is checked against the box."""
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle, cross_entropy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    oracle = TorchOracle(model, cross_entropy, (x, y))
    theta = oracle.initial_params()
    lo, hi = theta - 0.05, theta + 0.03
    kw = dict(epochs=6, optimizer=zo.sgd(2.0), estimator=zo.CGE(mu=0.01, scheme="central"), bounds=(lo, hi),
              progress=False)
    fast = zo.train(oracle, theta, **kw)
    checked = []

    def plain(p):
        assert ((p >= lo) & (p <= hi)).all()
        checked.append(1)
        return float(oracle(p))

    ref = zo.train(plain, theta, **kw)
    assert checked and ((fast.params >= lo) & (fast.params <= hi)).all()
    np.testing.assert_allclose(fast.params, ref.params, rtol=0, atol=1e-9)
    walls = np.isclose(fast.params, hi - 0.01, rtol=0, atol=1e-15) | np.isclose(fast.params, lo + 0.01, rtol=0,
                                                                                 atol=1e-15)
    assert walls.any()  # the box held the run somewhere


def test_bounds_past_float32s_range_keep_float32_params_inside_without_a_numpy_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (NumPy's "overflow encountered in cast")
        res = zo.train(Hardware([-1e300], [1e300], [5.0]), np.array([0.5], dtype=np.float32), epochs=3,
                       bounds=(-1e300, 1e300), progress=False)
    assert res.params.dtype == np.float32 and res.params[0] > 0.5


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_an_oracle_computing_in_float32_is_asked_float32_points_inside_the_box_of_float64_params(scheme):
    """An oracle declaring compute_dtype = float32 is estimated at the float64 params rounded to float32,
    with float32 steps: float32(0.09) + float32(0.01) rounds to float32(0.1), above hi = 0.1, where
    the box was kept in float64."""

    class Float32Model(Hardware):
        compute_dtype = np.float32

        def __call__(self, x):
            assert x.dtype == np.float32
            return super().__call__(x)

    lo, hi = np.full(3, -0.1), np.full(3, 0.1)
    hw = Float32Model(lo, hi, [3.0, -3.0, 3.0])  # every coordinate pressed against a wall
    res = zo.train(hw, np.zeros(3), epochs=20, optimizer=zo.adam(0.1), bounds=(lo, hi),
                   estimator=zo.CGE(mu=0.01, scheme=scheme), progress=False)
    assert res.params.dtype == np.float64 and res.steps == 20
    assert np.abs(res.params).max() > 0.089  # (the walls reached: 0.1 - mu, within float32's rounding)
    points = np.array(hw.points)
    assert ((points >= lo) & (points <= hi)).all()


def test_an_update_to_inf_is_a_diverged_run_with_bounds_as_without_not_a_clip_to_the_wall():
    sgd = zo.sgd(0.1)

    def update(grad, state, params, lr=None):
        params, state = sgd.update(grad, state, params, lr)
        return np.where(np.arange(params.size) == 1, np.inf, params), state  # (an overflow of lr * grad)

    wild = zo.Optimizer(sgd.init, update, sgd.lr, "wild", "wild")
    for bounds in (None, (-1.0, 1.0)):
        hw = Hardware([-1.0] * 3, [1.0] * 3, [3.0, 3.0, 3.0])
        with pytest.raises(zo.ArgumentError, match="training diverged at step 0.*params became non-finite"):
            zo.train(hw, np.zeros(3), epochs=3, optimizer=wild, bounds=bounds, progress=False)


def test_a_diverged_run_started_within_mu_of_a_wall_reads_no_drift_at_its_first_params():
    """The start moved in by the box is the run's first params: the diverged run's message reads the loss
    again there, beside the first step's reading, not at the start given (a move of mu read as drift)."""
    sgd = zo.sgd(0.01)

    def update(grad, state, params, lr=None):
        params, state = sgd.update(grad, state, params, lr)
        return (params * np.inf if int(state.count) >= 3 else params), state  # (a deterministic loss)

    wild = zo.Optimizer(sgd.init, update, sgd.lr, "wild", "wild")
    hw = Hardware([-1.0] * 3, [1.0] * 3, [5.0, 5.0, 5.0])
    with pytest.raises(zo.ArgumentError, match="params became non-finite") as info:
        zo.train(hw, np.ones(3), epochs=5, optimizer=wild, bounds=(-1.0, 1.0), estimator=zo.CGE(mu=0.1),
                 progress=False)  # (started at hi: moved in to hi - mu before the first query)
    assert "drift" not in str(info.value)


def test_a_float32_torch_oracle_given_float64_params_is_queried_inside_the_box():
    """TorchOracle on a float32 model declares compute_dtype = float32: the run through its feature reuse
    equals the one through a plain call declaring the same, whose every (float32) query is checked."""
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x = torch.randn(16, 3)
    oracle = TorchOracle(model, lambda out, t: torch.mean((out - t) ** 2), (x, 10 * torch.ones(16, 1)))
    theta = np.clip(oracle.initial_params().astype(np.float64), -0.1, 0.1)  # (float64: the model rounds them)
    kw = dict(epochs=30, optimizer=zo.adam(0.05), estimator=zo.CGE(mu=0.01, scheme="central"), bounds=(-0.1, 0.1),
              progress=False)
    fast = zo.train(oracle, theta, **kw)

    class Plain:
        compute_dtype = np.float32
        points = []

        def __call__(self, p):
            assert p.dtype == np.float32
            self.points.append(np.asarray(p, dtype=np.float64))
            return float(oracle(p))

    plain = Plain()
    ref = zo.train(plain, theta, **kw)
    points = np.array(plain.points)
    assert ((points >= -0.1) & (points <= 0.1)).all() and (points > 0.1 - 1e-6).any()  # (at a wall, and inside)
    np.testing.assert_array_equal(fast.params, ref.params)


def textbook_sphere_rge(f, x0, lo, hi, mu, q, central, lr, steps, seed, distribution="sphere"):
    """Projected gradient descent with the textbook RGE on the unit sphere, its directions drawn as
    zoracle documents (step t's from ``default_rng([root, 1, t])``, direction i from Philox keyed by
    ``(that generator's draw, i)``), the params clipped into [lo + mu, hi - mu] at the start and after each
    step (a unit direction steps by up to mu either way on each coordinate, forward or central). Rademacher:
    direction i's entries -1 where that Philox generator's uniforms are below 1/2, else +1, and phi = 1."""
    d = x0.size
    root = int(np.random.default_rng(seed).integers(2**63))
    x = np.clip(x0, lo + mu, hi - mu)
    for t in range(steps):
        key = int(np.random.default_rng([root, 1, t]).integers(2**63))
        f0 = f(x)
        g = np.zeros(d)
        for i in range(q):
            gen = np.random.Generator(np.random.Philox(key=[key, i]))
            if distribution == "rademacher":
                u = np.where(gen.random(d) < 0.5, -1.0, 1.0)
            else:
                u = gen.standard_normal(d)
                u /= np.linalg.norm(u)
            diff = f(x + mu * u) - f(x - mu * u) if central else f(x + mu * u) - f0
            g += diff / (2 * mu if central else mu) * u
        phi = d if distribution == "sphere" else 1.0
        x = np.clip(x - lr * (phi / q) * g, lo + mu, hi - mu)
    return x


@pytest.mark.parametrize("distribution", ["sphere", "rademacher"])
@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_sphere_rge_against_a_wall_queries_only_inside_and_equals_the_textbook_projected_loop(scheme, distribution):
    lo, hi = np.array([0.0, -1.0, 0.5]), np.array([5.0, 0.25, 2.0])
    target = np.array([7.0, 1.0, -3.0])  # outside the box on every coordinate: the run ends against its walls
    x0 = np.array([4.99, 0.2, 0.5])  # within mu of hi on coordinate 0, on lo on coordinate 2: moved in
    mu, lr, steps = 0.05, 0.02, 60
    hw = Hardware(lo, hi, target)
    est = zo.RGE(mu=mu, directions=3, distribution=distribution, scheme=scheme)
    res = zo.train(hw, x0, epochs=steps, optimizer=zo.sgd(lr), estimator=est, bounds=(lo, hi), rng=7,
                   progress=False)
    assert res.steps == steps
    ref = textbook_sphere_rge(Hardware(lo, hi, target), x0, lo, hi, mu, 3, scheme == "central", lr, steps, 7,
                              distribution)
    np.testing.assert_allclose(res.params, ref, rtol=0, atol=1e-12)
    assert res.params[2] == lo[2] + mu  # the wall held the run (coordinate 2's pull is the strongest)
    pts = np.array(hw.points)
    assert pts[:, 0].max() > hi[0] - mu and pts[:, 2].min() < lo[2] + mu  # queried past the shrunk box


@pytest.mark.parametrize("distribution", ["sphere", "rademacher"])
@given(case=box_cases, log_mu=st.floats(-5, -1), central=st.booleans(), q=st.integers(1, 4),
       float32=st.booleans(), lr=st.floats(0.01, 2.0))
def test_no_sphere_rge_query_leaves_the_box(distribution, case, log_mu, central, q, float32, lr):
    lo_l, extra, where, target = case
    mu = 10.0 ** log_mu
    lo = np.array(lo_l)
    hi = lo + 2 * mu * 1.01 + np.array(extra)  # at least as wide as the queries need (up to mu either way)
    dtype = np.float32 if float32 else np.float64
    x0 = (lo + np.array(where) * (hi - lo)).astype(dtype)  # (float32 may round it just outside: moved in)
    x0 = np.where(x0 < lo, np.nextafter(x0, dtype(np.inf)), x0).astype(dtype)
    x0 = np.where(x0 > hi, np.nextafter(x0, dtype(-np.inf)), x0).astype(dtype)
    hw = Hardware(lo, hi, target)
    est = zo.RGE(mu=mu, directions=q, distribution=distribution, scheme="central" if central else "forward")
    try:
        res = zo.train(hw, x0, epochs=6, optimizer=zo.sgd(lr), estimator=est, bounds=(lo, hi), progress=False,
                       rng=0)
    except zo.ArgumentError as exc:  # float32 may round the box narrower than 2 mu: refused naming mu, never queried
        assert "narrower than 2 * mu" in str(exc) and not hw.points
        return
    assert hw.points  # every query was inside (Hardware raises otherwise)
    m = dtype(mu)  # the params kept where a step of mu either way (in their dtype) stays inside
    assert ((res.params - m >= lo) & (res.params + m <= hi)).all()


@pytest.mark.parametrize("distribution", ["sphere", "rademacher"])
def test_sphere_rge_through_a_batch_oracle_an_executor_a_float32_model_and_ask_tell_stays_inside(distribution):
    from zoracle.executors import ThreadPool

    class Float32Model(Hardware):
        compute_dtype = np.float32

        def __call__(self, x):
            assert x.dtype == np.float32
            return super().__call__(x)

    lo, hi = np.array([0.0, -1.0, 0.5, 0.0]), np.array([1.0, 0.0, 2.0, 3.0])
    target = [3, 3, -3, 1]
    kw = dict(epochs=12, optimizer=zo.adam(0.2), bounds=(lo, hi), progress=False, rng=3,
              estimator=zo.RGE(mu=0.01, directions=5, distribution=distribution, scheme="central"))
    x0 = np.array([1.0, -1.0, 2.0, 1.5])  # on the walls
    plain = zo.train(Hardware(lo, hi, target), x0, **kw)
    fast = FastHardware(lo, hi, target)  # (its batch is what RGE uses)
    assert np.array_equal(zo.train(fast, x0, **kw).params, plain.params)
    with ThreadPool(2) as ex:
        pooled = FastHardware(lo, hi, target)
        assert np.array_equal(zo.train(pooled, x0, executor=ex, **kw).params, plain.params)
    assert fast.points and pooled.points
    f32 = Float32Model(lo, hi, target)
    zo.train(f32, x0, **kw)
    points = np.array(f32.points)
    assert ((points >= lo) & (points <= hi)).all() and len(points) == 12 * 11
    hw = Hardware(lo, hi, target)
    opt = zo.AskTell(x0, **kw)
    while not opt.done:
        opt.tell([hw(x) for x in opt.ask()])
    np.testing.assert_array_equal(opt.result.params, plain.params)


def test_rank_shaped_sphere_rge_keeps_the_box_as_the_plain_one():
    """shaping="ranks" replaces the losses by their ranks: the queries are the same points."""
    lo, hi = np.zeros(3), np.ones(3)
    kw = dict(epochs=10, optimizer=zo.adam(0.1), bounds=(lo, hi), progress=False, rng=1)
    runs = []
    for shaping in ("none", "ranks"):
        hw = Hardware(lo, hi, [2.0, -1.0, 0.5])
        zo.train(hw, np.full(3, 0.98), estimator=zo.RGE(mu=0.05, directions=4, distribution="sphere",
                                                          shaping=shaping), **kw)
        runs.append(np.array(hw.points))
    assert runs[1].shape == runs[0].shape
    np.testing.assert_array_equal(runs[0][0], runs[1][0])  # (the same start, moved in to hi - mu)


@given(seed=st.integers(0, 2**32 - 1), width=st.floats(0.011, 2.0), dtype=st.sampled_from([np.float32, np.float64]))
def test_zo_grasp_in_train_never_queries_outside_the_box_from_a_start_on_its_faces(seed, width, dtype):
    """ZO-GraSP's queries (Rademacher, from points clipped into [lo + mu, hi - mu]) and the steps' stay in the
    box wherever the start lies in it, its faces included, and whatever ZO-GraSP's second step (a steep loss)."""
    r = np.random.default_rng(seed)
    lo = r.uniform(-1, 0, 6)
    hi = lo + width
    x0 = np.where(r.random(6) < 0.5, lo, hi).astype(dtype)
    x0 = np.where((x0 < lo) | (x0 > hi), (0.5 * (lo + hi)).astype(dtype), x0)  # (a side rounded out in float32)
    hw = Hardware(lo, hi, r.uniform(-5, 5, 6))
    with warnings.catch_warnings():  # (the steep loss's long second ZO-GraSP step: clipped, warned)
        warnings.filterwarnings("ignore", "ZO-GraSP's second point", RuntimeWarning)
        res = zo.train(hw, x0, epochs=2, sparsity=0.5, blocks=[slice(0, 3), slice(3, 6)], grasp_directions=3,
                       optimizer=zo.sgd(0.01), bounds=(lo, hi), progress=False, rng=seed)
    assert res.nfev == len(hw.points) and res.nfev > 2 * (3 + 1)  # (ZO-GraSP's queries and the steps')


def test_train_refuses_zo_grasp_in_a_box_narrower_than_two_mu_before_any_query():
    """Forward CGE's steps fit a box mu wide; ZO-GraSP's Rademacher queries need 2 mu."""
    f = Counted()
    with pytest.raises(zo.ArgumentError, match=r"narrower than 2 \* mu = 0.01 at coordinate 0.*smaller mu"):
        zo.train(f, np.full(4, 0.004), epochs=2, sparsity=0.5, blocks=[slice(0, 2), slice(2, 4)],
                 bounds=(0.0, 0.008), progress=False)
    assert f.calls == 0
