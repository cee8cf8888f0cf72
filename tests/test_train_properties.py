"""Property tests of the bookkeeping users rely on in ``train`` and ``estimate_gradient``, each
against an independent reference: the oracle's own count of the queries it answered (calls,
batch rows, coordinates), the run without a budget (for where ``max_queries`` stops), the
serial unchunked run (for executors and ``max_queries_per_call``), the textbook
finite-difference and RGE formulas over the queries the oracle recorded, and the step
records (for the epoch records)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata

import zoracle as zo
from zoracle.executors import ThreadPool

W = np.arange(1.0, 13.0)


def _loss(x, target=1.0) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float((W[: x.size] * (x - target) ** 2).sum() + 0.1 * np.sin(x).sum())


class Log:
    """What the oracle was asked: every (point, loss) pair, appended under a lock (threads)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.points, self.losses = [], []

    def add(self, points, losses):
        with self.lock:
            self.points.extend(np.array(p, dtype=np.float64, copy=True) for p in points)
            self.losses.extend(losses)

    @property
    def n(self) -> int:
        return len(self.losses)


def _perturbed(x, i, step):
    y = np.array(x, copy=True)
    y[i] = y[i] + y.dtype.type(step)  # in params' dtype, as CoordinateOracle's contract says
    return y


def make_oracle(kind: str, log: Log, chunk=None, d: int = 0, target: float = 1.0):
    """A plain function, or an object with one capability (batch, coordinate, split), logging
    every loss it returns."""
    def call(x):
        v = _loss(x, target)
        log.add([x], [v])
        return v

    if kind == "call":
        return call

    class Base:
        def __call__(self, x):
            return call(x)

    def coordinate_losses(x, coords, step):
        pts = [_perturbed(x, i, step) for i in coords]
        v = [_loss(p, target) for p in pts]
        log.add(pts, v)
        return np.array(v)

    if kind == "batch":
        class O(Base):
            def batch(self, X):
                v = [_loss(r, target) for r in X]
                log.add(list(X), v)
                return np.array(v)
    elif kind == "coord":
        class O(Base):
            def coordinate_losses(self, x, coords, step):
                return coordinate_losses(x, coords, step)
    else:  # split: three blocks, the suffix of each perturbs its own coordinates
        class O(Base):
            blocks = [slice(0, 2), slice(2, d // 2 + 1), slice(d // 2 + 1, d)]

            def prefix(self, x, block):
                return None

            def suffix(self, feats, x, block, coords, step):
                assert all(self.blocks[block].start <= i < self.blocks[block].stop for i in coords)
                return coordinate_losses(x, coords, step)
    o = O()
    if chunk is not None:
        o.max_queries_per_call = chunk
    return o


class Data:
    """A data oracle: the batch sets the target; every bound oracle logs into one Log."""

    def __init__(self, log):
        self.log = log

    def bind(self, batch):
        return make_oracle("call", self.log, target=float(np.mean(batch[0])))


@pytest.fixture(scope="module")
def pool():
    with ThreadPool(2) as p:
        yield p


ESTIMATORS = [zo.CGE(mu=1e-3), zo.CGE(mu=1e-3, scheme="central"), zo.RGE(mu=1e-2, directions=3),
              zo.RGE(mu=1e-2, directions=2, scheme="central"), zo.RGE(mu=1e-2, directions=4, distribution="sphere"),
              zo.RGE(mu=1e-2, directions=3, shaping="ranks"), zo.SNES(mu=0.1, population=4)]


def _queries_per_step(est, d: int, n_coords=None) -> int:
    if isinstance(est, zo.SNES):
        return est.population
    n = est.directions if isinstance(est, zo.RGE) else (d if n_coords is None else n_coords)
    return n * len(est.steps) + 1


def _records(recs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


def _settings(est, sparse, grasp, epochs, per_epoch, d):
    """train's settings: sparse CGE over two blocks (uniform ratios, or ZO-GraSP's with a fresh
    mask each step) when ``sparse``."""
    kw = dict(epochs=epochs, steps_per_epoch=per_epoch, estimator=est, optimizer=zo.sgd(0.01), rng=3,
              progress=False)
    if sparse:
        kw.update(sparsity=0.5, blocks=[slice(0, 3), slice(3, d)], mask_shuffle_interval="step" if grasp else 1,
                  ratios="zo_grasp" if grasp else "uniform", **({"grasp_directions": 3} if grasp else {}))
    return kw


run_cases = st.tuples(st.sampled_from(ESTIMATORS), st.booleans(), st.booleans()).filter(
    lambda t: isinstance(t[0], zo.CGE) or not t[1])


@given(case=run_cases, kind=st.sampled_from(["call", "batch", "coord", "split"]), threads=st.booleans(),
       chunk=st.sampled_from([None, 1, 3]), d=st.integers(5, 9), epochs=st.integers(1, 3), per_epoch=st.integers(1, 3))
@settings(max_examples=60)
def test_every_nfev_train_reports_is_the_oracles_own_count(pool, case, kind, threads, chunk, d, epochs, per_epoch):
    """result.nfev, each step's nfev and total_nfev and each epoch's nfev and total_nfev agree
    with what the oracle answered (a call, a batch row or a coordinate each), ZO-GraSP's queries
    included, whatever the estimator, capability, executor and queries per call."""
    est, sparse, grasp = case
    log = Log()
    oracle = make_oracle(kind, log, chunk, d)
    kw = _settings(est, sparse, grasp, epochs, per_epoch, d)
    res = zo.train(oracle, np.linspace(-1.0, 2.0, d), executor=pool if threads else None, **kw)
    steps, epochs_ = res.history.steps, res.history.epochs
    nfev = np.array([r["nfev"] for r in steps])
    grasp_q = 2 * (3 + 1) if sparse and grasp else 0
    assert res.nfev == log.n == grasp_q + nfev.sum()
    assert [r["total_nfev"] for r in steps] == (grasp_q + np.cumsum(nfev)).tolist()
    n_coords = len(res.coordinates) if sparse else None
    # the run's first estimate through a fast path asks the plain call once more (the fast path checked against it),
    # prefix and suffix once a block its coordinates fall in (all three where dense, one to three where sparse)
    checked = (kind == "batch" and not isinstance(est, zo.SNES)) or (kind in ("coord", "split") and isinstance(est, zo.CGE))
    checks = int(checked)
    if checked and kind == "split":
        checks = len(oracle.blocks) if not sparse else int(nfev[0]) - _queries_per_step(est, d, n_coords)
        assert 1 <= checks <= len(oracle.blocks)
    assert nfev.tolist() == [_queries_per_step(est, d, n_coords) + (checks if i == 0 else 0)
                             for i in range(epochs * per_epoch)]
    assert [e["nfev"] for e in epochs_] == [int(nfev[k * per_epoch:(k + 1) * per_epoch].sum()) for k in range(epochs)]
    assert [e["total_nfev"] for e in epochs_] == [steps[(k + 1) * per_epoch - 1]["total_nfev"] for k in range(epochs)]
    np.testing.assert_array_equal(res.history.column("nfev"), nfev)
    np.testing.assert_array_equal(res.history.column("total_nfev", "epoch"), [e["total_nfev"] for e in epochs_])


@given(case=run_cases, kind=st.sampled_from(["call", "batch"]), data=st.data())
@settings(max_examples=40)
def test_max_queries_stops_after_the_first_step_that_reaches_it(case, kind, data):
    """With a budget the run is the unbudgeted run's first k steps, k the first step whose
    total_nfev reaches the budget: the same records and params, the oracle asked exactly
    result.nfev times, passing the budget by less than that last step's queries; stopped only
    when steps were left."""
    est, sparse, grasp = case
    d, epochs, per_epoch = 6, 3, 2
    kw = _settings(est, sparse, grasp, epochs, per_epoch, d)
    x0 = np.linspace(-1.0, 2.0, d)
    after = []
    full = zo.train(make_oracle(kind, Log()), x0, callbacks=[lambda e, r, p: after.append(p) if e == "step" else None],
                    **kw)
    total = np.array([r["total_nfev"] for r in full.history.steps])
    first = total[0] - full.history.steps[0]["nfev"]  # ZO-GraSP's queries, before any step
    budget = data.draw(st.integers(int(first) + 1, int(total[-1]) + 3), label="max_queries")
    log = Log()
    res = zo.train(make_oracle(kind, log), x0, max_queries=budget, **kw)
    k = min(int(np.searchsorted(total, budget)) + 1, len(total))
    assert (res.steps, res.nfev, log.n) == (k, total[k - 1], total[k - 1])
    assert _records(res.history.steps) == _records(full.history.steps[:k])
    assert res.params.tobytes() == after[k - 1].tobytes()
    assert res.stopped == (k < len(total))
    if res.stopped:
        assert res.nfev >= budget > res.nfev - res.history.steps[-1]["nfev"]
    assert res.epochs == len(res.history.epochs) == k // per_epoch


@given(case=run_cases, kind=st.sampled_from(["call", "batch", "coord", "split"]), chunk=st.sampled_from([1, 2, 5]))
@settings(max_examples=30)
def test_a_seeded_run_is_the_same_under_threads_and_any_queries_per_call(pool, case, kind, chunk):
    """A fixed rng gives bit-identical params and history (timings aside) serially with the
    default chunking and on two threads with ``max_queries_per_call`` set."""
    est, sparse, grasp = case
    d = 7
    kw = _settings(est, sparse, grasp, 2, 3, d)
    x0 = np.linspace(-1.0, 2.0, d)
    ref = zo.train(make_oracle(kind, Log(), None, d), x0, **kw)
    got = zo.train(make_oracle(kind, Log(), chunk, d), x0, executor=pool, **kw)
    assert got.params.tobytes() == ref.params.tobytes()
    assert _records(got.history.steps) == _records(ref.history.steps)
    assert _records(got.history.epochs) == _records(ref.history.epochs)


def _find(log: Log, point) -> float:
    hits = [v for p, v in zip(log.points, log.losses) if np.array_equal(p, point)]
    assert hits, "the estimate never queried this point"
    return hits[0]


@given(d=st.integers(1, 10), dtype=st.sampled_from([np.float64, np.float32]), scheme=st.sampled_from(["forward", "central"]),
       kind=st.sampled_from(["call", "batch", "coord", "split"]), threads=st.booleans(), seed=st.integers(0, 2**16),
       data=st.data())
@settings(max_examples=60)
def test_cge_is_the_textbook_difference_quotient_of_the_queried_losses(pool, d, dtype, scheme, kind, threads, seed,
                                                                      data):
    """Sparse (or dense) CGE: (l(x + h e_i) - l(x)) / h, or the central quotient over h+ + h-,
    with h the representable step, at exactly the coordinates asked for and 0 elsewhere, in
    params' dtype, from nfev = (1 or 2) k + 1 queries."""
    if kind == "split" and d < 4:
        kind = "batch"
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=d) * 3).astype(dtype)
    coords = rng.choice(d, data.draw(st.integers(1, d), label="k"), replace=False)
    mu = 1e-2
    log = Log()
    est = zo.estimate_gradient(make_oracle(kind, log, None, d), x, zo.CGE(mu=mu, scheme=scheme),
                               coordinates=coords, executor=pool if threads else None)
    f0 = _find(log, x)
    ref = np.zeros(d)
    for i in coords:
        hp = float((x[i] + dtype(mu)) - x[i])
        if scheme == "forward":
            ref[i] = (_find(log, _perturbed(x, i, mu)) - f0) / hp
        else:
            hm = float(x[i] - (x[i] - dtype(mu)))
            ref[i] = (_find(log, _perturbed(x, i, mu)) - _find(log, _perturbed(x, i, -mu))) / (hp + hm)
    assert est.nfev == log.n == len(coords) * (1 if scheme == "forward" else 2) + 1
    assert est.loss == f0 and est.grad.dtype == dtype
    np.testing.assert_array_equal(est.grad, ref.astype(dtype))


def _centred_ranks(v):
    r = rankdata(v)  # ties averaged
    return (r - 1) / (len(v) - 1) - 0.5


@given(d=st.integers(1, 10), q=st.integers(1, 6), scheme=st.sampled_from(["forward", "central"]),
       distribution=st.sampled_from(["gaussian", "sphere", "rademacher"]), shaping=st.sampled_from(["none", "ranks"]),
       batch=st.booleans(), threads=st.booleans(), seed=st.integers(0, 2**16))
@settings(max_examples=60)
def test_rge_is_the_textbook_average_over_the_queried_directions(pool, d, q, scheme, distribution, shaping, batch,
                                                                threads, seed):
    """RGE over the directions the oracle was queried along (u = (point - x) / mu, recovered from
    the queries): phi / q * sum_i c_i u_i with c_i the forward or central difference quotient
    (of centred ranks for shaping="ranks"), phi = d on the sphere (Rademacher: |u_i| = 1 on every
    coordinate); q + 1 or 2q + 1 queries."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=d)
    mu = 1e-2
    log = Log()
    est = zo.RGE(mu=mu, directions=q, scheme=scheme, distribution=distribution, shaping=shaping)
    g = zo.estimate_gradient(make_oracle("batch" if batch else "call", log), x, est, rng=seed,
                             executor=pool if threads else None)
    assert g.nfev == log.n == q * len(est.steps) + 1
    P, V = np.array(log.points), np.array(log.losses)
    base = [j for j in range(len(V)) if np.array_equal(P[j], x)]
    assert len(base) == 1 and g.loss == V[base[0]]
    rest = np.array([j for j in range(len(V)) if j != base[0]])
    U = (P[rest] - x) / mu
    if scheme == "forward":
        f0, vals = V[base[0]], V[rest]
        if shaping == "ranks":
            w = _centred_ranks(np.concatenate([[f0], vals]))
            f0, vals = w[0], w[1:]
        coef = (vals - f0) / mu
    else:  # each direction queried at +mu and at -mu: pair them by direction
        pairs, used = [], set()
        for a in range(len(U)):  # each direction queried at +mu and at -mu: pair the two queries
            if a in used:
                continue
            b = next(b for b in range(len(U)) if b != a and b not in used and np.allclose(U[a], -U[b], atol=1e-9))
            used |= {a, b}
            pairs.append((a, b))  # (a the -mu query: both signs flip, the product is the same)
        vals = V[rest]
        if shaping == "ranks":
            vals = _centred_ranks(vals)
        coef = np.array([(vals[a] - vals[b]) / (2 * mu) for a, b in pairs])
        U = np.array([U[a] for a, _ in pairs])
    assert len(U) == q
    if distribution == "sphere":
        np.testing.assert_allclose(np.linalg.norm(U, axis=1), 1.0, rtol=1e-9)
    if distribution == "rademacher":  # every coordinate moved by mu, up or down
        np.testing.assert_allclose(np.abs(U), 1.0, rtol=1e-9)
    phi = d if distribution == "sphere" else 1.0
    np.testing.assert_allclose(g.grad, phi / q * (coef @ U), rtol=1e-8, atol=1e-8 * (1 + np.abs(coef).max() * d))


@given(epochs=st.integers(1, 4), batch_size=st.integers(1, 5), n=st.integers(1, 9), eval_every=st.integers(1, 3),
       steps_per_epoch=st.one_of(st.none(), st.integers(1, 3)), est=st.sampled_from(ESTIMATORS[:3]))
@settings(max_examples=40)
def test_epoch_records_aggregate_their_step_records(epochs, batch_size, n, eval_every, steps_per_epoch, est):
    """Each epoch record is its steps' aggregate: loss their mean, lr the last one's, nfev their
    sum, total_nfev the last one's; steps are numbered 0.. across epochs; eval metrics only on
    evaluated epochs (every eval_every-th and the last), NaN in History.column elsewhere."""
    mb = zo.Minibatches((np.arange(float(n)),), batch_size=batch_size, seed=1)
    if steps_per_epoch is not None:  # (more steps than an epoch's batches are refused)
        steps_per_epoch = min(steps_per_epoch, len(mb))
    per = steps_per_epoch or len(mb)
    log = Log()
    sched = zo.cosine_schedule(0.02, total_steps=epochs * per)
    res = zo.train(Data(log), np.zeros(3), batches=mb, epochs=epochs, steps_per_epoch=steps_per_epoch, estimator=est,
                   optimizer=zo.sgd(sched), eval_fn=lambda p: {"norm": float(np.abs(p).sum())}, eval_every=eval_every,
                   rng=0, progress=False)
    h = res.history
    assert [r["step"] for r in h.steps] == list(range(epochs * per))
    assert [r["epoch"] for r in h.steps] == [e for e in range(epochs) for _ in range(per)]
    assert [r["lr"] for r in h.steps] == [sched(t) for t in range(epochs * per)]
    assert len(h.epochs) == res.epochs == epochs and res.nfev == log.n
    for e, rec in enumerate(h.epochs):
        mine = h.steps[e * per:(e + 1) * per]
        assert rec["epoch"] == e
        assert rec["loss"] == pytest.approx(np.mean([r["loss"] for r in mine]), rel=1e-12)
        assert rec["lr"] == mine[-1]["lr"]
        assert rec["nfev"] == sum(r["nfev"] for r in mine)
        assert rec["total_nfev"] == mine[-1]["total_nfev"]
    evaluated = [(e + 1) % eval_every == 0 or e + 1 == epochs for e in range(epochs)]
    norm = h.column("norm", "epoch")
    assert np.isnan(norm).tolist() == [not v for v in evaluated]
    np.testing.assert_array_equal(h.column("loss", "epoch"), [r["loss"] for r in h.epochs])
