"""Executors: parallel estimates equal serial ones, oracles travel once, shards balance by cost.

Local executors only (serial, process pool, threads, devices); Dask and Ray live in
test_executors_cluster.py, faults in test_faults.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import psutil
import pytest

import zoracle as zo
from hypothesis import given
from hypothesis import strategies as st

import zoracle._executors_core as core
from zoracle._executors_core import CostModel, Registry, schedule
from zoracle._plan import BaseTask, CoordTask, DirectionTask, call_groups, reshard
from zoracle.executors import (
    DeviceExecutor,
    JoblibExecutor,
    SerialExecutor,
    add_executor_arguments,
    current_device,
    from_args,
)
from zoracle.testing import QuadraticOracle

D = 40


# ----------------------------------------------------------------------------- oracles
def _wave(x):
    return float(np.sum(np.sin(x) ** 2) + 0.1 * np.sum(x[:-1] * x[1:]))


class BatchWave:
    """A BatchOracle (no split / coordinate capability)."""

    def __call__(self, x):
        return _wave(x)

    def batch(self, X):
        return np.sum(np.sin(X) ** 2, axis=1) + 0.1 * np.sum(X[:, :-1] * X[:, 1:], axis=1)


class CountingData:
    """A DataOracle whose bound copies implement ``unbind``; unpickling is logged to a file."""

    def __init__(self, log, scale=1.0):
        self.log = log
        self.scale = scale
        self.data = None
        self.parent = None

    def __setstate__(self, state):
        self.__dict__.update(state)
        if state["data"] is None:  # only the parent is counted
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()}\n")

    def bind(self, batch):
        new = CountingData(self.log, self.scale)
        new.data = np.asarray(batch, dtype=np.float64)
        new.parent = self
        return new

    def unbind(self):
        return None if self.parent is None else (self.parent, self.data)

    def __getstate__(self):
        state = dict(self.__dict__)
        if state["parent"] is not None:
            raise AssertionError("a bound CountingData must travel through unbind(), not whole")
        return state

    def __call__(self, x):
        scale = self.parent.scale if self.parent is not None else self.scale
        return float(scale * np.sum((x - self.data) ** 2) + np.sum(np.cos(x)))


class DeviceProbe:
    """Records the device each worker moved it to (through ``to_device``)."""

    def __init__(self, device=None):
        self.device = device

    def to_device(self, device):
        return DeviceProbe(device)

    def __call__(self, x):
        if self.device is not None and self.device != current_device():
            raise RuntimeError(f"oracle on {self.device} ran in a worker for {current_device()}")
        return _wave(x)


def quadratic(d=D, blocks=((0, 10), (10, 25), (25, D))):
    rng = np.random.default_rng(3)
    M = rng.standard_normal((d, d))
    return QuadraticOracle(M @ M.T / d, rng.standard_normal(d), blocks=[slice(a, b) for a, b in blocks])


def oracles():
    return {"callable": _wave, "batch": BatchWave(), "split": quadratic()}


ESTIMATORS = {
    "cge": (zo.CGE(mu=1e-4), None),
    "cge-central": (zo.CGE(mu=1e-3, scheme="central"), None),
    "sparse": (zo.CGE(mu=1e-4), np.arange(3, D, 3)),
    "rge": (zo.RGE(mu=1e-3, directions=23), None),
    "rge-sphere-central": (zo.RGE(mu=1e-3, directions=9, distribution="sphere", scheme="central"), None),
    "rge-rademacher": (zo.RGE(mu=1e-3, directions=11, distribution="rademacher"), None),
    "snes": (zo.SNES(mu=1e-2, population=19), None),
}


def params(seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(D).astype(dtype)


def assert_same(a, b):
    scale = max(1.0, float(np.max(np.abs(b.grad))))
    np.testing.assert_allclose(a.grad, b.grad, rtol=0, atol=1e-12 * scale)
    assert a.loss == b.loss
    assert a.nfev == b.nfev
    assert a.grad.dtype == b.grad.dtype
    if b.state is not None:  # SNES's adapted sigma
        np.testing.assert_allclose(a.state, b.state, rtol=1e-12)


def no_children(pids, timeout=5.0):
    """True once none of ``pids`` is a live (non-zombie) process."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def loky2():
    with JoblibExecutor(2, backend="loky") as ex:
        yield ex
    assert no_children(ex.pids)


@pytest.fixture(scope="module")
def threads2():
    with JoblibExecutor(2, backend="threading") as ex:
        yield ex


@pytest.fixture(params=["serial", "loky2", "threading2"])
def executor(request, loky2, threads2):
    return {"serial": SerialExecutor(), "loky2": loky2, "threading2": threads2}[request.param]


# ----------------------------------------------------------------------------- equality
@pytest.mark.parametrize("kind", ["callable", "batch", "split"])
@pytest.mark.parametrize("est_name", list(ESTIMATORS))
def test_parallel_equals_serial(executor, kind, est_name):
    oracle = oracles()[kind]
    est, coords = ESTIMATORS[est_name]
    x = params()
    ref = zo.estimate_gradient(oracle, x, est, coordinates=coords, rng=7)
    for _ in range(2):  # the second run is balanced by measured cost
        got = zo.estimate_gradient(oracle, x, est, coordinates=coords, rng=7, executor=executor)
        assert_same(got, ref)


def test_float32_params_keep_dtype(loky2):
    x = params(dtype=np.float32)
    ref = zo.estimate_gradient(_wave, x, zo.CGE(mu=1e-2))
    got = zo.estimate_gradient(_wave, x, zo.CGE(mu=1e-2), executor=loky2)
    assert_same(got, ref)


def test_rge_directions_do_not_depend_on_worker_count():
    x = params(1)
    est = zo.RGE(mu=1e-3, directions=31)
    ref = zo.estimate_gradient(_wave, x, est, rng=11)
    with JoblibExecutor(3, backend="threading") as ex:
        assert ex.n_workers == 3
        got = zo.estimate_gradient(_wave, x, est, rng=11, executor=ex)
    assert ex.last_run.shards >= 3
    assert_same(got, ref)


class _RowsOracle:
    """A BatchOracle that logs (thread, rows) per batch call (executors.md, "Balancing by cost")."""

    def __init__(self, per_call=None):
        self.log = []
        if per_call is not None:
            self.max_queries_per_call = per_call

    def __call__(self, x):
        return float(np.sum(np.sin(x) ** 2))

    def batch(self, P):
        import threading
        self.log.append((threading.get_ident(), len(P)))
        time.sleep(0.02)  # long enough that an idle thread takes the next shard
        return np.sum(np.sin(P) ** 2, axis=1)


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_a_batch_oracle_spreads_over_workers_only_by_its_max_queries_per_call(scheme):
    # as executors.md says: one call is never cut, so with d below the default 2,048 rows a call
    # every perturbation runs in one shard; max_queries_per_call ~ d / (3 workers) spreads them
    d, est = 120, zo.CGE(mu=1e-6, scheme=scheme)
    x = np.linspace(-1, 1, d)
    ref = zo.estimate_gradient(_RowsOracle(), x, est)
    with JoblibExecutor(2, backend="threading") as ex:
        whole = _RowsOracle()
        got = zo.estimate_gradient(whole, x, est, executor=ex)
        assert ex.last_run.shards == 2
        assert {rows for _, rows in whole.log} <= {1, d}
        assert len({t for t, rows in whole.log if rows == d}) == 1  # every perturbation on one thread
        assert_same(got, ref)
        cut = _RowsOracle(per_call=d // 6)
        got = zo.estimate_gradient(cut, x, est, executor=ex)
        assert ex.last_run.shards >= 4
        assert max(rows for _, rows in cut.log) == d // 6
        assert len({t for t, rows in cut.log if rows > 1}) == 2  # both threads ran perturbations
        np.testing.assert_array_equal(got.grad, zo.estimate_gradient(_RowsOracle(per_call=d // 6), x, est).grad)
        np.testing.assert_allclose(got.grad, ref.grad, rtol=0, atol=1e-9)


def test_work_is_spread_over_workers(loky2, tmp_path):
    log = tmp_path / "pids.txt"

    def who(x, log=str(log)):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.002)  # long enough that one worker cannot drain the queue alone
        return float(np.sum(x**2))

    zo.estimate_gradient(who, params(), zo.CGE(), executor=loky2)
    run = loky2.last_run
    assert run.shards >= 2 * loky2.n_workers  # planner + balancer give every worker work
    assert run.busy_s > 0 and run.wall_s > 0 and run.overhead_per_shard_s >= 0
    assert set(map(int, log.read_text().split())) == set(loky2.pids)


# ----------------------------------------------------------------------------- shipping
class RebindsInPlace:
    """A data oracle whose ``bind`` stores the batch and returns itself (no ``unbind``)."""

    def __init__(self):
        self.batch = None

    def bind(self, batch):
        self.batch = batch
        return self

    def __call__(self, w):
        xb, yb = self.batch
        return float(np.mean((xb @ w - yb) ** 2))


class RebindsInPlaceAndUnbinds(RebindsInPlace):
    """The same with ``unbind() -> (self, batch)``: its own parent, one object for every batch."""

    def unbind(self):
        return None if self.batch is None else (self, self.batch)


@pytest.mark.parametrize("kind", [RebindsInPlace, RebindsInPlaceAndUnbinds])
def test_train_ships_an_oracle_rebound_in_place_with_each_batch(loky2, kind):
    """Process workers keep an object once shipped: every step trained on the first batch (with
    ``unbind`` too: the batch's token was the bound object's, the same object every step)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 5))
    y = x @ rng.standard_normal(5)
    kw = dict(batches=zo.Minibatches((x, y), 32, seed=0), epochs=2, estimator=zo.CGE(1e-4, "central"),
              optimizer=zo.sgd(0.05), rng=0, progress=False)
    serial = zo.train(kind(), np.zeros(5), **kw)
    par = zo.train(kind(), np.zeros(5), executor=loky2, **kw)
    np.testing.assert_array_equal(par.params, serial.params)


class ReusesOneBoundView:
    """A data oracle whose ``bind`` rebinds one bound object of its own in place and returns it
    (a view it allocates once), not itself."""

    class View:
        def __init__(self, parent):
            self.parent, self.batch = parent, None

        def __call__(self, w):
            xb, yb = self.batch
            return float(np.mean((xb @ w - yb) ** 2))

    def __init__(self):
        self.view = self.View(self)

    def bind(self, batch):
        self.view.batch = batch
        return self.view


class ReusesOneBoundViewThatUnbinds(ReusesOneBoundView):
    """The same with ``unbind() -> (parent, batch)`` on the view."""

    class View(ReusesOneBoundView.View):
        def unbind(self):
            return None if self.batch is None else (self.parent, self.batch)


def _textbook_cge_sgd(batches, w, epochs, lr, mu):
    """Forward-difference CGE + plain SGD, written out: the reference trajectory."""
    w = w.copy()
    for _ in range(epochs):
        for xb, yb in batches:
            def f(v):
                return float(np.mean((xb @ v - yb) ** 2))
            f0 = f(w)
            w = w - lr * np.array([(f(w + mu * e) - f0) / mu for e in np.eye(len(w))])
    return w


@pytest.mark.parametrize("kind", [ReusesOneBoundView, ReusesOneBoundViewThatUnbinds])
@pytest.mark.parametrize("grasp", [False, True])
def test_train_ships_a_reused_bound_view_with_each_batch(loky2, kind, grasp):
    """Process workers kept the view as first shipped: every step trained on the first batch
    (0.3 off the textbook loop after 2 epochs), with ``unbind`` too (the batch token was the view's)."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 5)), rng.standard_normal(40)
    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 40, 10)]
    ref = _textbook_cge_sgd(batches, np.zeros(5), 2, 0.05, 5e-3)
    kw = dict(batches=batches, epochs=2, optimizer=zo.sgd(0.05), progress=False)
    if grasp:  # ZO-GraSP binds a batch of its own (the last) before the first step binds the first
        kw.update(sparsity=0.4, ratios="zo_grasp", grasp_batch=batches[3], grasp_directions=8, rng=0)
    serial = zo.train(kind(), np.zeros(5), **kw)
    par = zo.train(kind(), np.zeros(5), executor=loky2, **kw)
    if not grasp:
        np.testing.assert_allclose(serial.params, ref, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(par.params, serial.params)
    oracle = kind()  # the same oracle trained again: its view still held the last batch
    for _ in range(2):
        np.testing.assert_array_equal(zo.train(oracle, np.zeros(5), executor=loky2, **kw).params, serial.params)


class LoggedView(ReusesOneBoundViewThatUnbinds):
    """A reused view with ``unbind`` whose model logs each arrival on a worker (unpickling)."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def __setstate__(self, state):
        self.__dict__.update(state)
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")


def test_a_reused_bound_view_that_unbinds_sends_each_new_batch_not_the_model(loky2, tmp_path, monkeypatch):
    """Trained twice on one executor, the second run's first step used the batch the workers
    kept from the first (0.078 off the textbook loop), and every step sent the model again. The
    executor compares the batch ``unbind()`` returns with the one it sent: a new one goes alone,
    the same one (by identity) not at all."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 5)), rng.standard_normal(40)
    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 40, 10)]
    ref = _textbook_cge_sgd(batches, np.zeros(5), 2, 0.05, 5e-3)
    kw = dict(batches=batches, epochs=2, optimizer=zo.sgd(0.05), progress=False)
    sent = []  # the batch token of every run: a new one is a batch sent
    payload = loky2._impl._payload

    def counted(oracle, params):
        got = payload(oracle, params)
        sent.append(got.batch_token)
        return got

    monkeypatch.setattr(loky2._impl, "_payload", counted)
    log = tmp_path / "arrived.txt"
    oracle = LoggedView(str(log))
    for _ in range(2):
        sent.clear()
        np.testing.assert_allclose(zo.train(oracle, np.zeros(5), executor=loky2, **kw).params, ref, rtol=0, atol=1e-12)
        assert len(set(sent)) == len(sent) == 8  # each step's batch, once
    assert len(log.read_text().split()) <= 2  # the model: once per worker, for both runs
    sent.clear()  # one batch for every step: sent once
    zo.train(oracle, np.zeros(5), executor=loky2, **dict(kw, batches=[batches[0]] * 3))
    assert len(set(sent)) == 1


def test_oracle_travels_once_and_batches_rebind_on_workers(tmp_path):
    log = tmp_path / "unpickled.txt"
    parent = CountingData(str(log))
    rng = np.random.default_rng(0)
    x = params()
    with JoblibExecutor(2, backend="loky") as ex:
        for step in range(4):
            bound = parent.bind(rng.standard_normal(D))
            ref = zo.estimate_gradient(bound, x, zo.CGE(mu=1e-4))
            got = zo.estimate_gradient(bound, x, zo.CGE(mu=1e-4), executor=ex)
            assert_same(got, ref)
        pids = ex.pids
    lines = log.read_text().split()
    # at most once per worker, whatever the number of steps and shards
    assert 1 <= len(lines) <= 2
    assert set(map(int, lines)) <= set(pids)


_MAIN_BATCH = """
import numpy as np
import zoracle as zo
from dataclasses import dataclass
from zoracle.executors import DeviceExecutor, JoblibExecutor

@dataclass
class Batch:  # its class lives in the script (__main__), which workers cannot import
    x: np.ndarray
    y: np.ndarray

class Bound:
    def __init__(self, parent, b):
        self.parent, self.b = parent, b
    def unbind(self):
        return self.parent, self.b
    def __call__(self, p):
        return float(np.mean((self.b.x @ p - self.b.y) ** 2))

class Model:
    def bind(self, b):
        return Bound(self, b)
    def __call__(self, p):
        return float(p @ p)

rng = np.random.default_rng(0)
batches = [Batch(rng.standard_normal((8, 5)), rng.standard_normal(8)) for _ in range(3)]
ref = zo.train(Model(), np.zeros(5), batches=batches, progress=False).params
for ex in (JoblibExecutor(2), DeviceExecutor(["cpu", "cpu"])):
    with ex:
        got = zo.train(Model(), np.zeros(5), batches=batches, progress=False, executor=ex).params
    print(type(ex).__name__, "same" if np.array_equal(got, ref) else "DIFFERENT", flush=True)
"""


@pytest.mark.slow
def test_a_batch_whose_class_lives_in_the_script_reaches_process_workers(tmp_path):
    """Plain pickle named the class ``__main__.Batch``, which a worker (started with ``python
    -c``) cannot resolve: unpickling the message killed every worker it reached ("the worker
    died (exit code 1)"). The batch travels by value now, like oracles."""
    script = tmp_path / "main_batch.py"
    script.write_text(_MAIN_BATCH)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(zo.__file__))]
                                                       + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["JoblibExecutor same", "DeviceExecutor same"], proc.stdout


class XY:
    """A batch of (inputs, targets)."""

    def __init__(self, x, y):
        self.x, self.y = x, y


class BoundLinear:
    def __init__(self, parent, b):
        self.parent, self.b = parent, b

    def unbind(self):
        return self.parent, self.b

    def __call__(self, p):
        return float(np.mean((self.b.x @ p - self.b.y) ** 2))


class Linear:
    """A DataOracle whose bound copies implement ``unbind``; its batch is any object."""

    def bind(self, b):
        return BoundLinear(self, b)

    def __call__(self, p):
        return float(p @ p)


class Workspace:
    """Writes each query into its own NumPy scratch array (its state, not the query)."""

    def __init__(self, d):
        self.buf = np.zeros(d)

    def __call__(self, x):
        self.buf[:] = x
        self.buf *= 2.0
        return float(self.buf @ self.buf)


class BoundInPlace(BoundLinear):
    """Changes its batch's arrays in place (normalising a buffer; the values stay the same)."""

    def __call__(self, p):
        self.b.x *= 1.0
        return super().__call__(p)


class InPlaceLinear(Linear):
    def bind(self, b):
        return BoundInPlace(self, b)


class LoadsOnlyHere(XY):
    """A batch whose unpickling fails in any other process (a file only the driver sees)."""

    def __init__(self, x, y):
        super().__init__(x, y)
        self.driver = os.getpid()

    def __setstate__(self, state):
        if state["driver"] != os.getpid():
            raise FileNotFoundError("/data/shard-0.npz")
        self.__dict__.update(state)


def test_a_batch_a_worker_cannot_load_is_named_not_a_dead_worker(loky2):
    """Unpickling the message that carried it raised in the worker's main loop: the worker
    died, and the error said only "the worker died (exit code 1)" on every worker."""
    import threading

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 5)), rng.standard_normal(8)
    with pytest.raises(zo.ZoracleError, match=r"the batch \(LoadsOnlyHere\) bound by Linear.bind could not be loaded "
                                              r"\(unpickled\) on the worker \(FileNotFoundError: /data/shard-0.npz\)"):
        zo.estimate_gradient(Linear().bind(LoadsOnlyHere(x, y)), np.zeros(5), zo.CGE(), executor=loky2)
    with pytest.raises(zo.ZoracleError, match=r"the batch \(dict\) bound by Linear.bind cannot be sent to process "
                                              r"workers \(TypeError: cannot pickle '_thread.lock' object\); make it "
                                              r"picklable"):
        zo.estimate_gradient(Linear().bind({"lock": threading.Lock()}), np.zeros(5), zo.CGE(), executor=loky2)
    bound = Linear().bind(XY(x, y))  # still usable
    assert_same(zo.estimate_gradient(bound, np.zeros(5), zo.CGE(), executor=loky2),
                zo.estimate_gradient(bound, np.zeros(5), zo.CGE()))


def test_many_bound_oracles_reused_out_of_order(loky2):
    """More live bound oracles than workers keep batches for: evicted ones are re-sent."""
    parent = CountingData(os.devnull)
    rng = np.random.default_rng(9)
    bound = [parent.bind(rng.standard_normal(D)) for _ in range(7)]
    x = params()
    for i in [0, 1, 2, 3, 4, 5, 6, 0, 3, 6, 1, 0]:
        assert_same(zo.estimate_gradient(bound[i], x, zo.CGE(), executor=loky2),
                    zo.estimate_gradient(bound[i], x, zo.CGE()))


def test_forget_resends_a_mutated_oracle():
    oracle = CountingData(os.devnull, scale=1.0)
    bound = oracle.bind(np.ones(D))
    x = params()
    with JoblibExecutor(2, backend="loky") as ex:
        a = zo.estimate_gradient(bound, x, zo.CGE(), executor=ex)
        oracle.scale = 3.0  # mutated in place: the workers still hold the old copy
        stale = zo.estimate_gradient(bound, x, zo.CGE(), executor=ex)
        ex.forget(oracle)
        fresh = zo.estimate_gradient(bound, x, zo.CGE(), executor=ex)
    assert_same(stale, a)
    assert_same(fresh, zo.estimate_gradient(bound, x, zo.CGE()))
    assert not np.allclose(fresh.grad, a.grad)


def test_forget_given_the_bound_oracle_forgets_its_parent():
    """``forget(bound)`` was a silent no-op: the workers kept the parent they had (stale gradients)."""
    oracle = CountingData(os.devnull, scale=1.0)
    bound = oracle.bind(np.ones(D))
    x = params()
    with JoblibExecutor(2, backend="loky") as ex:
        zo.estimate_gradient(bound, x, zo.CGE(), executor=ex)
        oracle.scale = 3.0
        ex.forget(bound)  # the object the user passed to estimate_gradient
        fresh = zo.estimate_gradient(bound, x, zo.CGE(), executor=ex)
    assert_same(fresh, zo.estimate_gradient(bound, x, zo.CGE()))


class _Target:
    """A user's problem whose bound method ``loss`` is the oracle."""

    def __init__(self):
        self.target = np.zeros(4)

    def loss(self, x):
        return float(np.sum((x - self.target) ** 2))


@pytest.mark.parametrize("what", ["method", "object"])
def test_forget_a_bound_method_oracle_resends_its_object(loky2, what):
    """``obj.loss`` is a new object at every access: ``forget(obj.loss)`` (and ``forget(obj)``)
    after changing ``obj`` was a silent no-op, and the workers kept the old ``target`` (a
    curriculum callback trained towards the first target only: 0.95 off, silently)."""

    def run(ex):
        prob = _Target()

        def curriculum(event, record, params):
            if event == "epoch":
                prob.target = prob.target + 1.0
                ex.forget(prob.loss if what == "method" else prob)

        return zo.train(prob.loss, np.zeros(4), epochs=3, steps_per_epoch=2, executor=ex, progress=False,
                        estimator=zo.CGE(), optimizer=zo.sgd(0.1), callbacks=[curriculum]).params

    np.testing.assert_array_equal(run(loky2), run(SerialExecutor()))


def test_forget_while_another_thread_runs_on_the_executor():
    """forget(obj) scans the oracles held for obj's bound methods. Another thread's run on the same
    executor adds and drops oracles meanwhile: the scan raised "RuntimeError: OrderedDict mutated
    during iteration" (into a curriculum callback, or train's bind of a step)."""
    import threading

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: the race shows in every run
    errors, stop = [], threading.Event()
    try:
        with JoblibExecutor(2, backend="threading") as ex:
            def forgetter():
                prob = _Target()
                try:
                    while not stop.is_set():
                        ex.forget(prob)
                except Exception as exc:  # noqa: BLE001 - the test reports it
                    errors.append(exc)

            def runner():
                try:
                    for _ in range(300):
                        got = zo.estimate_gradient(_Target().loss, np.ones(4), zo.CGE(), executor=ex)
                        assert np.allclose(got.grad, 2.0, atol=1e-2)
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)
                finally:
                    stop.set()

            threads = [threading.Thread(target=forgetter), threading.Thread(target=runner)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []


def _sin2(x):
    return float(np.sum(np.sin(x) ** 2))


class Scaled:
    """A user's oracle that keeps the function it wraps as ``self.fn``."""

    def __init__(self, fn, scale):
        self.fn, self.scale = fn, scale

    def __call__(self, x):
        return self.scale * self.fn(x)


def test_forget_an_oracle_with_an_fn_attribute_forgets_the_oracle(loky2):
    """``forget`` unwrapped any object's ``fn``, as if it were zoracle's own wrapper: it forgot the
    user's inner function and the workers kept the old ``scale`` (gradients 3x off, silently)."""
    oracle, x = Scaled(_sin2, 1.0), np.linspace(-1, 1, 8)
    before = zo.estimate_gradient(oracle, x, zo.CGE(1e-4, "central"), executor=loky2)
    oracle.scale = 3.0
    loky2.forget(oracle)
    after = zo.estimate_gradient(oracle, x, zo.CGE(1e-4, "central"), executor=loky2)
    assert_same(after, zo.estimate_gradient(oracle, x, zo.CGE(1e-4, "central")))
    np.testing.assert_allclose(after.grad, 3 * before.grad, rtol=1e-9)


class DictKey:
    """Its ``executor_key()`` is a dict it changes in place (a config)."""

    def __init__(self):
        self.cfg = {"scale": 1.0}

    def executor_key(self):
        return self.cfg

    def __call__(self, x):
        return self.cfg["scale"] * float(x @ x)


class ArrayKey:
    """Its ``executor_key()`` is a NumPy array."""

    def __init__(self):
        self.scale = np.ones(D)

    def executor_key(self):
        return self.scale

    def __call__(self, x):
        return float(self.scale @ x ** 2)


class BigKey:
    """A request's oracle whose ``executor_key()`` is its 1 MB data array."""

    def __init__(self, seed):
        self.target = np.random.default_rng(seed).normal(size=131_072)

    def executor_key(self):
        return self.target

    def __call__(self, x):
        return float(np.sum((x - self.target[:x.size]) ** 2))


def test_a_long_lived_executor_keeps_no_key_of_oracles_it_dropped():
    """A service runs a new oracle per request on one executor: the registry keeps the last
    KEEP_ORACLES oracles, but every executor_key() value ever sent was kept (1 MB per request
    here, the driver grew without bound)."""
    import gc
    import tracemalloc

    x = params()

    def serve(seeds):
        for seed in seeds:
            o = BigKey(seed)
            est = zo.estimate_gradient(o, x, zo.CGE(1e-4, "central"), executor=ex)
            np.testing.assert_allclose(est.grad, 2 * (x - o.target[:x.size]), rtol=1e-6, atol=1e-6)
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    tracemalloc.start()  # (blocks allocated before it started are not subtracted when freed)
    try:
        with JoblibExecutor(2, backend="threading") as ex:
            steady = serve(range(2 * core.KEEP_ORACLES))  # the executor holds all it ever will
            grown = serve(range(100, 120)) - steady
    finally:
        tracemalloc.stop()
    assert grown < 4 * 2**20, f"{grown / 2**20:.1f} MB kept after 20 requests"


def test_a_mutable_executor_key_is_compared_as_it_was_when_sent(loky2):
    """The key was kept by reference: a dict changed in place always equalled itself and the
    workers kept the stale oracle (gradients 10x off, silently); an array key raised "the truth
    value of an array ... is ambiguous"."""
    x = params()
    o = DictKey()
    zo.estimate_gradient(o, x, zo.CGE(), executor=loky2)
    o.cfg["scale"] = 10.0
    assert_same(zo.estimate_gradient(o, x, zo.CGE(), executor=loky2), zo.estimate_gradient(o, x, zo.CGE()))
    a = ArrayKey()
    zo.estimate_gradient(a, x, zo.CGE(), executor=loky2)
    zo.estimate_gradient(a, x, zo.CGE(), executor=loky2)  # the same key: nothing sent again
    a.scale = 2 * a.scale
    assert_same(zo.estimate_gradient(a, x, zo.CGE(), executor=loky2), zo.estimate_gradient(a, x, zo.CGE()))
    import threading

    # a key that cannot be pickled (a lock; a class defined in a function, as a model attribute
    # may be) is kept as a copy: still compared, never an error on executors that pickle nothing
    o.cfg["lock"] = threading.Lock()
    with JoblibExecutor(2, backend="threading") as threads:
        zo.estimate_gradient(o, x, zo.CGE(), executor=threads)
        o.cfg["scale"] = 3.0
        assert_same(zo.estimate_gradient(o, x, zo.CGE(), executor=threads), zo.estimate_gradient(o, x, zo.CGE()))


class BlasLoss:
    """``v . tanh(A x)``: a matrix-vector product large enough for BLAS to use threads."""

    def __init__(self, d, rng):
        self.A, self.v = rng.standard_normal((d, d)) / d, rng.standard_normal(d)

    def __call__(self, x):
        return float(self.v @ np.tanh(self.A @ x))


def test_same_blas_threads_give_bitwise_equality(monkeypatch):
    """What docs/executors.md says gives bitwise results with multithreaded BLAS: the driver and
    the workers on one BLAS thread (workers keep the thread counts set in the environment).
    Without it this estimate differs by about 1e-13 on a 2-core machine."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    rng = np.random.default_rng(0)
    f, x = BlasLoss(1500, rng), rng.standard_normal(1500)
    with threadpoolctl.threadpool_limits(1):
        ref = zo.estimate_gradient(f, x, zo.RGE(directions=4), rng=1)
        with JoblibExecutor(2) as ex:
            got = zo.estimate_gradient(f, x, zo.RGE(directions=4), rng=1, executor=ex)
    assert got.loss == ref.loss and np.array_equal(got.grad, ref.grad)


def test_unpicklable_oracle_names_the_fix():
    import threading

    lock = threading.Lock()

    def locked(x):
        with lock:
            return float(x @ x)

    with JoblibExecutor(2, backend="loky") as ex:
        with pytest.raises(zo.ZoracleError, match="threading"):
            zo.estimate_gradient(locked, params(), zo.CGE(), executor=ex)
    with JoblibExecutor(2, backend="threading") as ex:  # threads share the object: fine
        zo.estimate_gradient(locked, params(), zo.CGE(), executor=ex)


class _Locked:
    def __init__(self):
        import threading

        self.lock = threading.Lock()

    def loss(self, x):
        with self.lock:
            return float(x @ x)


def _with_lock(x, lock):
    return float(x @ x)


def test_an_unpicklable_function_method_or_partial_is_named(loky2):
    """A bound method, a closure and a partial holding a lock were named by their type alone: "the
    oracle method cannot be sent", "the oracle function", "the oracle partial" (which of the
    script's oracles?). They are named by what they are of, as a callable object is by its class."""
    import functools
    import threading

    lock = threading.Lock()

    def closure(x):
        with lock:
            return float(x @ x)

    cases = [(_Locked().loss, "the oracle method _Locked.loss cannot"),
             (closure, "the oracle function test_an_unpicklable_function_method_or_partial_is_named.<locals>.closure "
                       "cannot"),
             (functools.partial(_with_lock, lock=lock), "the oracle partial(function _with_lock) cannot")]
    for oracle, name in cases:
        with pytest.raises(zo.ZoracleError) as info:
            zo.estimate_gradient(oracle, params(), zo.CGE(), executor=loky2)
        assert name in str(info.value) and "_thread.lock" in str(info.value), str(info.value)


class LogsQueries:
    """Writes every query to a file it holds open (a query log)."""

    def __init__(self, stream):
        self.stream = stream

    def __call__(self, x):
        self.stream.write(f"{x[0]}\n")
        return float(x @ x)


@pytest.mark.parametrize("mode", ["a+", "r+"])
def test_an_oracle_holding_an_open_file_is_refused_before_any_shard(tmp_path, mode, loky2):
    """cloudpickle sends a text file opened with "r" or "+" as an in-memory copy of its contents:
    the workers' writes went nowhere (0 lines logged for 11 queries), silently; executors.md
    promises an error naming the cause."""
    path = tmp_path / "log.csv"
    path.touch()
    with open(path, mode) as stream:
        with pytest.raises(zo.ZoracleError, match=r"holds a file open for writing \('.*log.csv'\).*open the file in the worker"):
            zo.estimate_gradient(LogsQueries(stream), params(), zo.CGE(), executor=loky2)
    assert path.read_text() == ""
    import io

    zo.estimate_gradient(LogsQueries(io.StringIO()), params(), zo.CGE(), executor=loky2)  # memory travels as data


class ReadsTable:
    def __init__(self, stream):
        self.stream = stream

    def __call__(self, x):
        self.stream.seek(0)
        return float(self.stream.read().count("1")) * float(x @ x)


def test_an_oracle_reading_a_file_open_only_for_reading_still_travels(tmp_path, loky2):
    path = tmp_path / "table.txt"
    path.write_text("1 1 1\n")
    with open(path) as stream:
        assert_same(zo.estimate_gradient(ReadsTable(stream), params(), zo.CGE(), executor=loky2),
                    zo.estimate_gradient(ReadsTable(stream), params(), zo.CGE()))


def test_registry_reuses_tokens_by_identity():
    reg = Registry(keep=2)
    a, b, c = object(), object(), object()
    ta, _ = reg.token(a)
    assert reg.token(a) == (ta, [])
    tb, _ = reg.token(b)
    tc, dropped = reg.token(c)
    assert dropped == [ta] and len({ta, tb, tc}) == 3
    assert reg.token(a)[0] != ta  # dropped: a new token, sent again


# ----------------------------------------------------------------------------- balancing
def _split_tasks(sizes, steps=(1e-3,), chunk=5):
    tasks, lo = [], 0
    for b, n in enumerate(sizes):
        tasks.append(CoordTask(np.arange(lo, lo + n), steps, "split", b, chunk, cost=float(n)))
        lo += n
    return tasks


def test_reshard_cuts_costly_blocks_and_keeps_column_order():
    tasks = [BaseTask()] + _split_tasks([100, 100])
    unit = {0: 10.0, 1: 1.0}
    shards, costs, groups = reshard(tasks, 2, lambda t: unit.get(getattr(t, "block", 1), 1.0))
    pieces0 = [shards[j] for j in groups[1]]
    pieces1 = [shards[j] for j in groups[2]]
    assert len(pieces0) > len(pieces1) >= 1  # the 10x costlier block is cut finer
    np.testing.assert_array_equal(np.concatenate([p.coords for p in pieces0]), tasks[1].coords)
    target = sum(costs) / 6
    assert max(costs) <= 1.01 * target * 2  # no shard much above the target
    for piece in pieces0 + pieces1:  # cut between suffix calls of 5 coordinates only
        assert (piece.coords[0] - tasks[piece.block + 1].coords[0]) % 5 == 0
    one_call = _split_tasks([100], chunk=2048)
    assert len(reshard(one_call, 2, lambda t: 1.0)[0]) == 1  # a single call is never cut
    d = DirectionTask(1, 5, 45, (1e-3,), "gaussian", False, 8)
    shards, _, groups = reshard([d], 2, lambda t: 1.0)
    assert [(s.lo, s.hi) for s in shards] == sorted((s.lo, s.hi) for s in shards)
    assert shards[0].lo == 5 and shards[-1].hi == 45 and len(shards) == 6


@given(n=st.integers(1, 300), chunk=st.integers(1, 64), groups=st.integers(1, 9))
def test_call_groups_are_whole_calls(n, chunk, groups):
    spans = call_groups(n, chunk, groups)
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a < b for a, b in spans) and all(b == c for (_, b), (c, _) in zip(spans, spans[1:]))
    assert all(a % chunk == 0 for a, _ in spans)  # every span starts on a call boundary
    assert len(spans) == min(groups, -(-n // chunk))


@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=4), chunk=st.integers(1, 16),
       workers=st.integers(1, 4), mode=st.sampled_from(["split", "batch", "call"]),
       costs=st.lists(st.floats(0.01, 100.0), min_size=4, max_size=4))
def test_reshard_preserves_columns_and_calls(sizes, chunk, workers, mode, costs):
    tasks, lo = [BaseTask()], 0
    for b, n in enumerate(sizes):
        tasks.append(CoordTask(np.arange(lo, lo + n), (1e-3,), mode, b, chunk, cost=float(n)))
        lo += n
    shards, est, groups = reshard(tasks, workers, lambda t: costs[max(0, getattr(t, "block", 0))])
    assert len(est) == len(shards) and sorted(j for g in groups for j in g) == list(range(len(shards)))
    assert isinstance(shards[groups[0][0]], BaseTask)
    for t, g in zip(tasks[1:], groups[1:]):
        pieces = [shards[j] for j in g]
        np.testing.assert_array_equal(np.concatenate([p.coords for p in pieces]), t.coords)
        if mode != "call":  # batched calls are never cut: same calls as the whole task
            assert all((p.coords[0] - t.coords[0]) % chunk == 0 for p in pieces)
        assert all(p.chunk == t.chunk and p.mode == t.mode and p.block == t.block for p in pieces)


class ListedBackend:
    """A scheduling backend whose worker list starts empty and fills after ``appear`` refreshes;
    a worker answers each shard with the shard's index."""

    def __init__(self, appear):
        self.appear, self.refreshes, self.known, self.pending = appear, 0, [], []

    def workers(self):
        return self.known

    def idle(self):
        return [w for w in self.known if all(w != p[0] for p in self.pending)]

    def name(self, w):
        return f"worker {w}"

    def refresh(self):
        self.refreshes += 1
        if self.appear is not None and self.refreshes >= self.appear:
            self.known = [0, 1]

    def submit(self, w, jid, shard):
        self.pending.append((w, jid, shard))

    def wait(self, timeout=None):
        out = [(w, jid, ("ok", shard, 0.0)) for w, jid, shard in self.pending]
        self.pending = []
        return out

    def abort(self, workers, hung=True):
        self.pending = []


def test_a_run_waits_for_workers_to_appear_then_finishes():
    backend = ListedBackend(appear=4)
    results, retries, _ = schedule(backend, list(range(5)), [1.0] * 5)
    assert results == list(range(5)) and retries == 0 and backend.refreshes == 4


def test_a_run_with_no_worker_raises_naming_the_shard(monkeypatch):
    monkeypatch.setattr(core, "NO_WORKER_WAIT_S", 0.3)
    backend = ListedBackend(appear=None)
    t0 = time.perf_counter()
    with pytest.raises(zo.ZoracleError, match=r"no worker took shard \d/3 .* within 0.3 s: the executor knows no "
                                              r"live worker; start workers"):
        schedule(backend, [BaseTask()] * 3, [1.0] * 3)
    assert 0.3 <= time.perf_counter() - t0 < 5 and backend.refreshes >= 3


def test_cost_model_learns_per_block_and_scales_hints():
    cm = CostModel()
    t0, t1 = _split_tasks([10, 10])

    class Hinted:
        block_costs = [4.0, 1.0]

    assert cm.unit("tok", Hinted(), t0) == 4 * cm.unit("tok", Hinted(), t1)  # hints before any measurement
    assert cm.unit("tok", object(), t0) == cm.unit("tok", object(), t1)  # no hint: by count
    cm.learn("tok", t1, 0.5)  # 0.05 s per coordinate in block 1
    assert cm.unit("tok", Hinted(), t1) == pytest.approx(0.05)
    assert cm.unit("tok", Hinted(), t0) == pytest.approx(0.2)  # hint 4x, on the measured scale
    cm.learn("tok", t0, 0.1)
    assert cm.unit("tok", Hinted(), t0) == pytest.approx(0.01)  # measurement beats the hint
    central = CoordTask(np.arange(5), (1e-3, -1e-3), "split", 0, 5)
    assert cm.unit("tok", Hinted(), central) == pytest.approx(0.02)  # two queries per column
    assert cm.unit("other", object(), t0) == 1.0  # another oracle starts from scratch


def test_measured_costs_balance_an_uneven_split_oracle():
    """Block 0 costs 40x more per coordinate: after one run its coordinates are spread out."""

    class Uneven(QuadraticOracle):
        max_queries_per_call = 2  # many small suffix calls: room to balance

        def suffix(self, features, x, block, coords, step):
            time.sleep((20e-3 if block == 0 else 0.5e-3) * len(coords))  # sleeps release the GIL
            return super().suffix(features, x, block, coords, step)

    oracle = Uneven(np.eye(D), blocks=[slice(0, 10), slice(10, D)])
    x = params()
    with JoblibExecutor(2, backend="threading") as ex:
        zo.estimate_gradient(oracle, x, zo.CGE(), executor=ex)
        zo.estimate_gradient(oracle, x, zo.CGE(), executor=ex)
        run = ex.last_run
    # 200 ms of block 0 + 15 ms of block 1: one thread holding all of block 0 would need
    # wall >= 0.93 busy; balanced, wall is about half of busy
    assert run.busy_s > 0.2
    assert run.wall_s < 0.7 * run.busy_s


# ----------------------------------------------------------------------------- devices
def test_device_executor_one_worker_per_device():
    x = params()
    oracle = DeviceProbe()
    ref = zo.estimate_gradient(oracle, x, zo.CGE(mu=1e-4))
    with DeviceExecutor(["cpu", "cpu:1"]) as ex:
        assert ex.n_workers == 2 and len(set(ex.pids)) == 2
        for _ in range(2):
            got = zo.estimate_gradient(oracle, x, zo.CGE(mu=1e-4), executor=ex)
            assert_same(got, ref)
        pids = ex.pids
    assert current_device() is None
    assert no_children(pids)


class MovesInPlace:
    """``to_device`` moves the oracle in place and forgets ``return self``."""

    def to_device(self, device):
        self.device = device

    def __call__(self, x):
        return _wave(x)


def test_a_to_device_returning_none_is_named_and_not_retried():
    """It raised "`oracle` must be callable ... got NoneType" on both workers (retried): neither
    to_device nor the fix was named."""
    with DeviceExecutor(["cpu", "cpu:1"]) as ex:
        with pytest.raises(zo.ZoracleError, match=r"MovesInPlace.to_device\('cpu(:1)?'\) returned NoneType, not the "
                                                r"oracle .*`return self`") as info:
            zo.estimate_gradient(MovesInPlace(), params(), zo.CGE(), executor=ex)
        assert type(info.value).__name__ == "ToDeviceError" and "failed twice" not in str(info.value)  # not retried
        assert_same(zo.estimate_gradient(DeviceProbe(), params(), zo.CGE(mu=1e-4), executor=ex),
                    zo.estimate_gradient(DeviceProbe(), params(), zo.CGE(mu=1e-4)))


def test_device_executor_rejects_empty_devices():
    with pytest.raises(zo.ArgumentError, match="devices"):
        DeviceExecutor([])
    with pytest.raises(zo.ArgumentError, match="devices"):
        DeviceExecutor("cuda:0")


def test_device_executor_names_a_0d_2d_or_non_integer_array_of_devices():
    """np.array("cuda:0") raised a bare TypeError (len() of unsized object); a 2-d array made
    one worker whose device was a whole row; np.array([0j]) or [1.5] built an executor whose
    workers failed in oracle.to_device() only after the run's first shards were spent."""
    torch = pytest.importorskip("torch")
    for bad in (np.array("cpu"), torch.tensor(0), np.array([["cpu", "cpu"]])):
        with pytest.raises(zo.ArgumentError, match=r"`devices` must be a non-empty list such as \['cuda:0'"):
            DeviceExecutor(bad)
    for bad in (np.array([0j]), np.array([1.5]), [0, 2.0], [True]):
        with pytest.raises(zo.ArgumentError, match=r"`devices` entries must be device names or indices"):
            DeviceExecutor(bad)
    for good in (np.array(["cpu", "cpu"]), [0, 1], range(2), np.arange(2), [torch.device("cpu")]):
        assert DeviceExecutor(good).devices == list(good)  # not started: nothing to close


# ----------------------------------------------------------------------------- lifecycle
_FORKED_EX = None  # the executor the forked processes below inherit


def _forked_estimate(t):
    f = lambda x: float(np.sum((x - t) ** 2 * np.arange(1.0, 5.0)))  # noqa: E731
    return zo.estimate_gradient(f, np.zeros(4), zo.CGE(), executor=_FORKED_EX).grad


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="multiprocessing's fork: Linux")
@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_a_started_executor_used_in_forked_processes(backend):
    """multiprocessing's "fork" (Linux's default before Python 3.14): processes forked off a driver
    whose executor was started inherited its workers (the parent's threads, which a child does not
    have; the parent's worker processes, whose sockets two children then read at once) and hung
    forever. Each child now starts workers of its own: the serial gradients, the parent's executor
    untouched."""
    import multiprocessing

    global _FORKED_EX
    with JoblibExecutor(2, backend=backend) as ex:
        _FORKED_EX = ex
        before = _forked_estimate(0.5)
        pool = multiprocessing.get_context("fork").Pool(2)
        try:
            got = pool.map_async(_forked_estimate, [1.0, 2.0, 3.0, 4.0], chunksize=1).get(timeout=60)
        finally:
            pool.terminate()
            pool.join()
            _FORKED_EX = None
        after = zo.estimate_gradient(lambda x: float(np.sum((x - 0.5) ** 2 * np.arange(1.0, 5.0))), np.zeros(4),
                                     zo.CGE(), executor=ex).grad
        pids = ex.pids
    for t, g in zip([1.0, 2.0, 3.0, 4.0], got):
        f = lambda x, t=t: float(np.sum((x - t) ** 2 * np.arange(1.0, 5.0)))  # noqa: E731
        np.testing.assert_array_equal(g, zo.estimate_gradient(f, np.zeros(4), zo.CGE()).grad)
    np.testing.assert_array_equal(after, before)
    assert backend == "threading" or no_children(pids)


@pytest.mark.slow
def test_close_leaves_no_processes_and_executor_restarts():
    ex = JoblibExecutor(2)
    with ex:
        zo.estimate_gradient(_wave, params(), zo.CGE(), executor=ex)
        first = ex.pids
    assert no_children(first)
    with ex:  # a closed executor starts fresh workers
        got = zo.estimate_gradient(_wave, params(), zo.CGE(), executor=ex)
        assert set(ex.pids).isdisjoint(first)
        second = ex.pids
    assert_same(got, zo.estimate_gradient(_wave, params(), zo.CGE()))
    assert no_children(second)


def test_workers_exit_when_the_driver_dies(tmp_path):
    script = (
        "import sys, numpy as np, zoracle as zo\n"
        "from zoracle.executors import JoblibExecutor\n"
        "ex = JoblibExecutor(2).__enter__()\n"
        "zo.estimate_gradient(lambda x: float(x @ x), np.ones(4), zo.CGE(), executor=ex)\n"
        "print(' '.join(map(str, ex.pids)), flush=True)\n"
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2, out.stderr
    assert no_children(pids, timeout=10)


def test_argument_errors():
    for bad in (0, -2, 1.5, True):
        with pytest.raises(zo.ArgumentError, match="n_jobs"):
            JoblibExecutor(bad)
    with pytest.raises(zo.ArgumentError, match="'loky', 'threading'"):
        JoblibExecutor(2, backend="dask")
    import joblib

    assert JoblibExecutor(-1).n_workers == joblib.cpu_count()


_AFFINITY_CHILD = """
import os, sys
import numpy as np
import zoracle as zo
from zoracle.executors import JoblibExecutor

def threads(x):
    return float(os.environ["OMP_NUM_THREADS"])

with JoblibExecutor(1) as ex:
    seen = zo.estimate_gradient(threads, np.ones(1), zo.CGE(), executor=ex).loss
print(JoblibExecutor(-1).n_workers, int(seen))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2,
                    reason="needs CPU affinity and two CPUs")
def test_worker_threads_follow_the_cpus_this_process_may_use():
    """Under an affinity mask of one CPU (taskset, SLURM, a container's cpuset), os.cpu_count()
    still counts the machine: JoblibExecutor(1)'s worker got 2 threads on 1 CPU and
    JoblibExecutor(-1) 2 workers, where joblib/loky count 1 (and torch in the driver used 1)."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "LOKY_MAX_CPU_COUNT")}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
                                        + [p for p in [env.get("PYTHONPATH")] if p])
    out = subprocess.run([sys.executable, "-c", _AFFINITY_CHILD], capture_output=True, text=True, timeout=120,
                         env=env, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "1"]  # one worker for -1, one thread for a worker on one CPU


# ----------------------------------------------------------------------------- CLI helpers
def _parse(argv):
    parser = argparse.ArgumentParser()
    add_executor_arguments(parser)
    return parser.parse_args(argv)


def test_cli_helpers():
    pytest.importorskip("distributed", reason="the Dask and Ray flags build their executors")
    pytest.importorskip("ray")
    parser = argparse.ArgumentParser()
    add_executor_arguments(parser)
    for action in parser._actions:
        if action.dest in ("workers", "dask", "ray"):
            assert action.help
    assert from_args(_parse([])) is None
    assert from_args(_parse(["--workers", "1"])) is None
    ex = from_args(_parse(["--workers", "3"]))
    assert isinstance(ex, JoblibExecutor) and ex.n_workers == 3 and ex.backend == "loky"
    dask = from_args(_parse(["--dask", "local:2"]))
    assert type(dask).__name__ == "DaskExecutor" and dask.client is None  # nothing started yet
    ray = from_args(_parse(["--ray", "tcp://10.0.0.1:6379"]))
    assert type(ray).__name__ == "RayExecutor"
    with pytest.raises(zo.ArgumentError, match="--workers and --dask"):
        from_args(_parse(["--workers", "2", "--dask", "local"]))
    with pytest.raises(zo.ArgumentError, match="--workers"):
        from_args(_parse(["--workers", "0"]))
    # --workers 100000 started processes for hours before the first query
    most = 8 * (os.cpu_count() or 1)
    assert from_args(_parse(["--workers", str(most)])).n_workers == most  # (nothing started yet)
    with pytest.raises(zo.ArgumentError, match=f"--workers must be at most {most} \\(8 per core"):
        from_args(_parse(["--workers", str(most + 1)]))
    for flag in ("--dask", "--ray"):
        with pytest.raises(zo.ArgumentError, match=f"{flag} local:N must have N at most {most}"):
            from_args(_parse([flag, f"local:{most + 1}"]))
    with pytest.raises(zo.ArgumentError, match="local:N"):
        from_args(_parse(["--ray", "local:x"]))


def test_core_import_does_not_load_cluster_libraries():
    code = (
        "import sys, numpy as np, zoracle as zo, zoracle.executors as e\n"
        "with e.JoblibExecutor(2) as ex:\n"
        "    zo.estimate_gradient(lambda x: float(x @ x), np.ones(3), zo.CGE(), executor=ex)\n"
        "bad = [m for m in ('dask', 'distributed', 'ray', 'torch', 'cupy') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- torch
def test_torch_oracle_feature_reuse_equals_serial(loky2, threads2):
    torch = pytest.importorskip("torch")
    tz = pytest.importorskip("zoracle.adapters.torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 4), torch.nn.Tanh(),
                              torch.nn.Linear(4, 3)).double()
    base = tz.TorchOracle(net, torch.nn.CrossEntropyLoss(reduction="none"))
    assert zo.capabilities(base.bind((np.zeros((2, 5)), np.zeros(2, dtype=int)))).split
    theta = base.initial_params()
    rng = np.random.default_rng(0)
    for step in range(2):
        batch = (rng.standard_normal((12, 5)), rng.integers(0, 3, 12))
        oracle = base.bind(batch)
        for est in (zo.CGE(mu=1e-4), zo.RGE(mu=1e-3, directions=7)):
            ref = zo.estimate_gradient(oracle, theta, est, rng=step)
            for ex in (SerialExecutor(), loky2, threads2):
                got = zo.estimate_gradient(oracle, theta, est, rng=step, executor=ex)
                # to round-off: the oracle chunks its suffixes by costs it times, so a loaded machine
                # can batch the coordinates otherwise; a loss difference's last bit over mu is the limit
                tol = 32 * np.finfo(np.float64).eps * max(1.0, abs(ref.loss)) / est.mu
                np.testing.assert_allclose(got.grad, ref.grad, rtol=0, atol=tol)
                assert (got.loss, got.nfev, got.grad.dtype) == (ref.loss, ref.nfev, ref.grad.dtype)


def test_a_bound_torch_batch_written_in_place_reaches_process_workers(loky2):
    """pytorch.md: a bound torch batch is used in place, and the next query sees a write into it. The
    workers kept the batch they were sent: losses and gradients of the old batch (0.107 off, where
    the largest partial is 0.113), silently. The executor compares the bound oracle's batch_key()."""
    torch = pytest.importorskip("torch")
    tz = pytest.importorskip("zoracle.adapters.torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    x, y = torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 3, (10,))
    bound = tz.TorchOracle(net, torch.nn.CrossEntropyLoss(reduction="none")).bind((x, y))
    theta, est = bound.initial_params(), zo.CGE(1e-4, "central")
    before = zo.estimate_gradient(bound, theta, est, executor=loky2)
    x.mul_(0.3)  # an augmentation written into the reused input buffer
    ref = zo.estimate_gradient(bound, theta, est)
    got = zo.estimate_gradient(bound, theta, est, executor=loky2)
    assert got.loss == ref.loss != before.loss
    np.testing.assert_allclose(got.grad, ref.grad, rtol=0, atol=1e-9)
    # the batch given where the oracle was made travels inside it (no parent to bind it): its
    # write was compared by nobody, and the workers kept the old batch (0.08 off, silently)
    made = tz.TorchOracle(net, torch.nn.CrossEntropyLoss(reduction="none"), (x, y))
    zo.estimate_gradient(made, theta, est, executor=loky2)
    x.mul_(0.5)
    ref = zo.estimate_gradient(made, theta, est)
    got = zo.estimate_gradient(made, theta, est, executor=loky2)
    assert got.loss == ref.loss
    np.testing.assert_allclose(got.grad, ref.grad, rtol=0, atol=1e-9)
    # a batch that is a slice of a larger tensor (X[1:], not 64-byte aligned) is bound as an aligned
    # copy: the copy was never made again, so neither the serial queries nor (after their first
    # send) the workers saw a write into the slice (0.46 off)
    X = torch.randn(11, 5, dtype=torch.float64)
    part, labels = X[1:], torch.randint(0, 3, (10,))
    assert part.data_ptr() % 64
    sliced = tz.TorchOracle(net, torch.nn.CrossEntropyLoss(reduction="none")).bind((part, labels))
    zo.estimate_gradient(sliced, theta, est, executor=loky2)
    for _ in range(2):
        part.mul_(0.5)
        fresh = tz.TorchOracle(net, torch.nn.CrossEntropyLoss(reduction="none")).bind((part.clone(), labels))
        want = zo.estimate_gradient(fresh, theta, est)
        serial = zo.estimate_gradient(sliced, theta, est)
        assert serial.loss == want.loss and np.array_equal(serial.grad, want.grad)
        assert_same(zo.estimate_gradient(sliced, theta, est, executor=loky2), serial)
    # a copy of the oracle, and the oracle moved to its own device, keep seeing the writes (copy.copy
    # went through __getstate__, which drops the link, and to_device bound the aligned copy itself)
    import copy
    import pickle

    twin = copy.copy(sliced)
    sliced.to_device("cpu")
    part.mul_(0.5)
    fresh = tz.TorchOracle(net, torch.nn.CrossEntropyLoss(reduction="none")).bind((part.clone(), labels))
    for o in (twin, sliced):
        assert o(theta) == fresh(theta)
    # and a slice travels as its own elements (pickled as a view, it sent the whole tensor's storage)
    big = torch.randn(100_001, 5, dtype=torch.float64)
    small = tz.TorchOracle(net, torch.nn.CrossEntropyLoss(reduction="none")).bind((big[1:9], labels[:8]))
    assert len(pickle.dumps(small.unbind()[1])) < 10_000 and len(pickle.dumps(small)) < 100_000


class KeyedBatch:
    """A bound oracle whose ``batch_key()`` is its batch itself (an array, or a list written in place)."""

    def __init__(self, data=None):
        self.data = data

    def bind(self, data):
        return KeyedBatch(data)

    def unbind(self):
        return (KeyedBatch(), self.data) if self.data is not None else None

    def batch_key(self):
        return self.data

    def __call__(self, x):
        return float(np.sum(np.asarray(self.data, dtype=float)) * (x @ x))


def test_a_batch_key_is_compared_by_content(loky2):
    """batch_key() values were compared with a bare !=: an array key raised "the truth value of an
    array ... is ambiguous" at the second estimate, and a list written in place always equalled
    itself (the workers kept the old batch: loss 4.0 against 25.0, silently)."""
    x = params()
    for data in (np.ones(2), [1.0, 1.0]):
        o = KeyedBatch().bind(data)
        zo.estimate_gradient(o, x, zo.CGE(), executor=loky2)
        zo.estimate_gradient(o, x, zo.CGE(), executor=loky2)
        data[0] = 4.0
        assert_same(zo.estimate_gradient(o, x, zo.CGE(), executor=loky2), zo.estimate_gradient(o, x, zo.CGE()))


def _live_until(flag):
    import time

    for _ in range(600):  # at most a minute: until the test is over
        if os.path.exists(flag):
            return
        time.sleep(0.1)


class ForksThenDies:
    """Starts a helper process on its worker (a simulator server; it inherits the worker's
    socket), then kills its worker once, at the first perturbed query."""

    def __init__(self, flag):
        self.flag, self.driver, self.helper = str(flag), os.getpid(), None

    def __getstate__(self):
        return {"flag": self.flag, "driver": self.driver, "helper": None}

    def __call__(self, x):
        import multiprocessing

        if os.getpid() != self.driver:
            if self.helper is None:
                self.helper = multiprocessing.get_context("fork").Process(target=_live_until, args=(self.flag + ".end",),
                                                                          daemon=True)
                self.helper.start()
            if x[0] != 0.0:
                try:
                    os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL))
                    os._exit(1)
                except FileExistsError:
                    pass
        return float(np.sum(np.sin(x) ** 2))


@pytest.mark.skipif(sys.platform != "linux", reason="forks a helper process")
@pytest.mark.slow
def test_a_worker_that_dies_while_a_process_it_forked_lives_is_found_dead(tmp_path):
    """The driver waited on the worker's socket only: a process the oracle had forked held the
    socket open, no end-of-file came, and the estimate hung for ever. The worker's exit code is
    polled too: the shard is retried, as for any dead worker."""
    x = np.zeros(6)
    try:
        with JoblibExecutor(2, timeout=30) as ex:  # (the hang: ShardTimeout after 30 s)
            got = zo.estimate_gradient(ForksThenDies(tmp_path / "died"), x, zo.CGE(), executor=ex)
            assert ex.last_run.retries == 1
    finally:
        (tmp_path / "died.end").touch()  # the helpers end
    assert_same(got, zo.estimate_gradient(ForksThenDies(tmp_path / "died"), x, zo.CGE()))


def _own_forward_net(torch, writes: bool):
    class OwnLinear(torch.nn.Linear):  # no closed form: its perturbations nudge the weight in place
        def __init__(self, *args):
            super().__init__(*args)
            if writes:
                self.register_buffer("scale", torch.ones(()))

        def forward(self, x):
            if not writes:
                return torch.nn.functional.linear(x, 0.5 * self.weight, self.bias)
            if self.training:  # writes a buffer in its train-mode forward, then reads it
                with torch.no_grad():
                    self.scale.mul_(0.9).add_(0.1 * self.weight.norm())
            return torch.nn.functional.linear(x, self.weight / self.scale, self.bias)

    torch.manual_seed(0)
    return torch.nn.Sequential(OwnLinear(6, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double().train()


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("writes", [False, True])
def test_a_layer_without_closed_form_gives_the_serial_estimate_on_every_executor(loky2, threads2, writes):
    """A layer with its own forward is perturbed in place, one coordinate at a time: threads sharing
    the model read or undid each other's nudges (one coordinate wrong in 1-6 estimates of 15, up to
    0.12 where the largest partial is 0.2). A layer that writes a buffer and reads it (a running scale)
    gave the estimate's queries two states when the base point's plain call moved the buffer:
    serially, and on process workers, whose copies but the base point's kept the old one (2,790
    off). The lock now covers every forward and load; no query moves such a buffer."""
    torch = pytest.importorskip("torch")
    tz = pytest.importorskip("zoracle.adapters.torch")
    gen = torch.Generator().manual_seed(1)
    for ex, rounds in ((threads2, 8), (loky2, 2)):
        for _ in range(rounds):
            x, y = torch.randn(12, 6, dtype=torch.float64, generator=gen), torch.randint(0, 3, (12,), generator=gen)
            bound = tz.TorchOracle(_own_forward_net(torch, writes), torch.nn.CrossEntropyLoss(reduction="none"))
            bound = bound.bind((x, y))
            theta = bound.initial_params()
            with warnings.catch_warnings():  # the buffer is put back, and said so (tested in test_torch_exact)
                warnings.filterwarnings("ignore", message=".*write buffers in their train-mode forward")
                ref = zo.estimate_gradient(bound, theta, zo.CGE(mu=1e-6))
                got = zo.estimate_gradient(bound, theta, zo.CGE(mu=1e-6), executor=ex)
            np.testing.assert_allclose(got.grad, ref.grad, rtol=1e-6, atol=1e-9)
            assert got.loss == ref.loss and np.abs(ref.grad).max() < 1.0


def _bn_dropout_net(torch):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(inplace=True),
                               torch.nn.Dropout(0.5), torch.nn.Linear(6, 3)).double()


@pytest.mark.usefixtures("one_torch_thread")  # as the workers run: the same kernels, the same bits
def test_torch_oracle_with_batchnorm_and_dropout_on_threads_and_processes(loky2, threads2):
    """Threads share the model: one thread leaving the oracle's patched context used to unpatch
    another's forward mid-query (real dropout, stock BatchNorm over all rows: gradients 1e3
    off). Process workers keep copies: a mode switch or new statistics on the driver now send
    the oracle again (before, eval mode ran on the workers' train-mode copies), and the running
    statistics the base point updates on a worker are named in a warning."""
    torch = pytest.importorskip("torch")
    tz = pytest.importorskip("zoracle.adapters.torch")
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((12, 5)), rng.integers(0, 3, 12)) for _ in range(3)]
    # mu 1e-3: a thread pool's threads keep the torch thread count they started with, and one
    # unit in the last place of a loss (4e-16) over 2 mu must stay under the 1e-12 below
    est = zo.CGE(mu=1e-3, scheme="central")
    runs = {}
    for name, ex in (("serial", None), ("loky", loky2), ("threads", threads2)):
        net = _bn_dropout_net(torch)
        base = tz.TorchOracle(net, torch.nn.CrossEntropyLoss(reduction="none"))
        theta = base.initial_params()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grads = [zo.estimate_gradient(base.bind(b), theta, est, executor=ex).grad for b in batches]
        named = [w for w in caught if "runs on a worker, whose copy keeps the update" in str(w.message)]
        count = int(net[1].num_batches_tracked)
        net.eval()  # eval mode reads the running statistics: set the same ones everywhere
        with torch.no_grad():
            net[1].running_mean.fill_(0.3)
            net[1].running_var.fill_(2.0)
        grads.append(zo.estimate_gradient(base.bind(batches[0]), theta, est, executor=ex).grad)
        runs[name] = grads, count, len(named)
    assert runs["serial"][1:] == (3, 0) and runs["threads"][1:] == (3, 0)
    assert runs["loky"][1:] == (0, 1)  # updated on a worker, said once
    for name in ("loky", "threads"):
        for g, r in zip(runs[name][0], runs["serial"][0]):
            np.testing.assert_allclose(g, r, rtol=0, atol=1e-12, err_msg=name)


# ----------------------------------------------------------------------------- training
def test_train_with_executor_equals_serial(loky2):
    parent = CountingData(os.devnull)
    rng = np.random.default_rng(4)
    batches = [rng.standard_normal(D) for _ in range(3)]
    kw = dict(batches=batches, epochs=2, estimator=zo.CGE(mu=1e-4), progress=False, rng=0)
    ref = zo.train(parent, params(), **kw)
    got = zo.train(parent, params(), executor=loky2, **kw)
    np.testing.assert_allclose(got.params, ref.params, rtol=0, atol=1e-12)
    assert got.nfev == ref.nfev and got.steps == ref.steps == 6


@pytest.mark.slow  # benchmarks/gpu_devices.py end to end: a driver and two worker processes, each importing torch
def test_gpu_script_dry_run_on_cpu_devices():
    """benchmarks/gpu_devices.py (the multi-GPU check) runs end to end on CPU "devices"."""
    pytest.importorskip("torch")
    import json

    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "gpu_devices.py")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, script, "--cpu-devices", "2", "--channels", "2", "--batch", "8",
                          "--repeats", "1", "--json"], capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["devices"] == ["cpu", "cpu"] and res["queries"] == res["params"] + 1
    assert res["max_rel_diff"] <= 1e-9 and res["shards"] >= 2
    # the one-device baseline had all cores against one worker's share: 11-18x "speed-up" from 2 CPU
    # workers on a 2-core machine, thread oversubscription measured instead of devices
    assert res["one_device_threads"] == res["worker_threads"] == max(1, zo.executors.usable_cpus() // 2)


@pytest.mark.slow  # as the dry run above: a driver and a worker, each importing torch
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2,
                    reason="needs CPU affinity and two CPUs")
def test_gpu_script_baseline_gets_a_workers_threads_under_an_affinity_mask():
    """Under taskset (one CPU of two) the worker got 1 thread (usable CPUs) but the one-device
    baseline 2 (os.cpu_count()): the speed-up compared thread counts again, not devices."""
    pytest.importorskip("torch")
    import json

    cpu = sorted(os.sched_getaffinity(0))[0]
    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "gpu_devices.py")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOKY_MAX_CPU_COUNT")}
    out = subprocess.run([sys.executable, script, "--cpu-devices", "1", "--channels", "2", "--batch", "4",
                          "--repeats", "1", "--json"], capture_output=True, text=True, timeout=240, env=env,
                         preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["one_device_threads"] == res["worker_threads"] == 1


def _exit_slowly(x):
    import atexit

    if not getattr(_exit_slowly, "registered", False):  # as joblib's loky pool shuts down at exit: seconds
        _exit_slowly.registered = True
        path = os.path.join(os.environ["ZO_TEST_ATEXIT_DIR"], str(os.getpid()))
        atexit.register(lambda: (time.sleep(3.0), open(path, "w").close()))
    return float(np.sum(x ** 2))


@pytest.mark.slow
def test_close_lets_idle_workers_finish_their_exit(tmp_path, monkeypatch):
    """close() killed (SIGKILL) a worker that took over 2 s to exit: an oracle using sklearn's
    n_jobs (a loky pool in the worker) lost its atexit clean-up, and loky printed "leaked semlock
    objects" warnings after every run."""
    monkeypatch.setenv("ZO_TEST_ATEXIT_DIR", str(tmp_path))
    ex = JoblibExecutor(2)
    with ex:
        zo.estimate_gradient(_exit_slowly, np.ones(3), zo.CGE(), executor=ex)
        procs = [p.proc for p in ex._impl._procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sorted(os.listdir(tmp_path)) == sorted(str(p.pid) for p in procs)


def _start_a_thread(x):
    import threading

    if not getattr(_start_a_thread, "started", False):  # a helper thread the oracle never stops
        _start_a_thread.started = True
        threading.Thread(target=time.sleep, args=(600,), name="helper").start()  # not a daemon
    return float(np.sum(x ** 2))


@pytest.mark.slow
def test_close_gives_idle_workers_one_grace_in_all(monkeypatch):
    """close() waited STOP_GRACE_S for each worker in turn: workers kept alive by an oracle's
    non-daemon thread took n x 15 s to close (30 s for 2, 2 min for 8), though all were asked at once."""
    from zoracle import _executors_local as local

    monkeypatch.setattr(local, "STOP_GRACE_S", 2.0)
    ex = JoblibExecutor(3)
    with ex:
        zo.estimate_gradient(_start_a_thread, np.ones(6), zo.CGE(), executor=ex)
        procs = [p.proc for p in ex._impl._procs]
        t = time.monotonic()
    took = time.monotonic() - t
    assert all(p.returncode is not None for p in procs)
    # (one grace in all: about 2 s and the kills; one each, as before: at least 6 s)
    assert took < 5.0, f"close() took {took:.1f} s for 3 workers with a 2 s grace"


@pytest.mark.slow
def test_close_gives_busy_workers_one_grace_in_all():
    """Workers inside an oracle call (a Ctrl-C during a run leaves the `with` block) got 2 s each
    in turn: n x 2 s (16 s for 8 workers), though all were asked to stop at once."""
    import signal

    from zoracle import _executors_local as local

    procs = [local._Proc(i, None, 1) for i in range(3)]
    for p in procs:
        p.wait_ready(30)
        p.jid = 7  # a shard running on it
        os.kill(p.pid, signal.SIGSTOP)  # busy: it does not read the stop message
    t = time.monotonic()
    local._stop_all(procs)
    took = time.monotonic() - t
    assert all(p.proc.returncode is not None for p in procs)
    # (one 2 s grace in all, then the kills; one each: at least 6 s)
    assert took < 4.5, f"close() took {took:.1f} s for 3 busy workers"


@pytest.mark.slow
def test_ctrl_c_while_close_waits_leaves_no_worker_running(monkeypatch, ctrl_c):
    """close() waits up to STOP_GRACE_S (15 s) for each idle worker: a Ctrl-C meanwhile left the
    workers running, and a second close() did not stop them (they lived as long as the driver)."""
    import signal
    import threading

    from zoracle import _executors_local as local

    monkeypatch.setattr(local, "STOP_GRACE_S", 5.0)
    ex = JoblibExecutor(2)
    zo.estimate_gradient(_start_a_thread, np.ones(6), zo.CGE(), executor=ex)
    procs = [p.proc for p in ex._impl._procs]
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            ex.close()
            time.sleep(30)  # (never reached where close() is interrupted)
        ex.close()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        left = [p.pid for p in procs if p.poll() is None]
    finally:
        timer.cancel()
        for p in procs:
            p.kill()
    assert left == []


def _start_pool_then_hang(x):
    from joblib import Parallel, delayed

    Parallel(n_jobs=2)(delayed(abs)(i) for i in range(4))  # as sklearn's n_jobs does: a loky pool
    kids = [c.pid for c in psutil.Process().children(recursive=True)]
    with open(os.path.join(os.environ["ZO_TEST_KIDS_DIR"], str(os.getpid())), "w") as f:
        f.write(" ".join(map(str, kids)))
    time.sleep(600)
    return 0.0


@pytest.mark.slow
def test_timed_out_worker_takes_its_oracles_processes_with_it(tmp_path, monkeypatch):
    """A worker killed after ShardTimeout left the loky pool its oracle had started (sklearn's
    n_jobs) running as orphans for minutes, holding the script's stdout and stderr."""
    monkeypatch.setenv("ZO_TEST_KIDS_DIR", str(tmp_path))
    with pytest.raises(zo.executors.ShardTimeout):
        with JoblibExecutor(1, timeout=5) as ex:
            zo.estimate_gradient(_start_pool_then_hang, np.ones(1), zo.CGE(), executor=ex)
    kids = [int(k) for f in os.listdir(tmp_path) for k in (tmp_path / f).read_text().split()]
    assert kids
    deadline = time.monotonic() + 10
    while [k for k in kids if psutil.pid_exists(k)] and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [k for k in kids if psutil.pid_exists(k) and psutil.Process(k).status() != psutil.STATUS_ZOMBIE]
    for k in left:
        psutil.Process(k).kill()
    assert left == []


_JOB_DRIVER = """
import os, subprocess, sys
import numpy as np
import zoracle as zo
from zoracle.executors import JoblibExecutor

def simulate(x):  # an oracle running an external simulator per query
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    open(os.path.join(os.environ["ZO_TEST_KIDS_DIR"], str(p.pid)), "w").close()
    p.wait()
    return float(np.sum(x ** 2))

with JoblibExecutor(2) as ex:
    zo.estimate_gradient(simulate, np.ones(2), zo.CGE(), executor=ex)
"""


def test_a_signal_to_the_job_reaches_the_oracles_processes(tmp_path):
    """Workers in a session of their own: a signal to the script's process group (the terminal,
    `timeout 60 python script.py`, `kill -- -PGID`) killed the driver and, through it, the workers,
    but left the simulators their oracle had started running as orphans."""
    env = dict(os.environ, ZO_TEST_KIDS_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
                                          + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    driver = subprocess.Popen([sys.executable, "-c", _JOB_DRIVER], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids = []
    try:
        deadline = time.monotonic() + 60
        while len(os.listdir(tmp_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        kids = [int(f) for f in os.listdir(tmp_path)]
        assert len(kids) == 2
        os.killpg(driver.pid, signal.SIGTERM)  # as the terminal or `timeout` signals a job
        driver.wait(10)
        deadline = time.monotonic() + 10
        alive = lambda: [k for k in kids if psutil.pid_exists(k)  # noqa: E731
                         and psutil.Process(k).status() != psutil.STATUS_ZOMBIE]
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert alive() == []
    finally:
        driver.kill()
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except OSError:
                pass


@pytest.mark.slow
def test_a_second_ctrl_c_while_close_kills_leaves_no_worker_running(monkeypatch, ctrl_c):
    """A Ctrl-C during close()'s wait, then another while the workers were being killed (inside
    the /proc scan, slowed here): the workers were left running and a second close() did nothing."""
    import signal
    import threading

    from zoracle import _executors_local as local

    monkeypatch.setattr(local, "STOP_GRACE_S", 5.0)
    real = local._descendants

    def slow(pid):
        time.sleep(1.0)
        return real(pid)

    monkeypatch.setattr(local, "_descendants", slow)
    ex = JoblibExecutor(2)
    zo.estimate_gradient(_start_a_thread, np.ones(6), zo.CGE(), executor=ex)
    procs = [p.proc for p in ex._impl._procs]
    timers = [threading.Timer(s, lambda: os.kill(os.getpid(), signal.SIGINT)) for s in (1.0, 1.5)]
    for timer in timers:
        timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            ex.close()
            time.sleep(30)  # (never reached where close() is interrupted)
        for timer in timers:
            timer.join()
        ex.close()
        assert [p.poll() for p in procs] == [-signal.SIGKILL] * 2
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_threading_executors_never_closed_leave_no_threads():
    """The daemon-thread pool's threads held the pool (a bound method): five unclosed
    executors left 20 threads for good (ThreadPoolExecutor's are ended when it is collected)."""
    import gc
    import threading

    from zoracle.executors import JoblibExecutor

    base = threading.active_count()
    for _ in range(3):
        ex = JoblibExecutor(4, backend="threading")
        zo.estimate_gradient(lambda p: float(np.sum(p ** 2)), np.ones(8), zo.CGE(mu=1e-3), executor=ex)
        del ex
        gc.collect()
    deadline = time.time() + 5
    while threading.active_count() > base and time.time() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == base


def test_an_executor_copies_shallowly_and_refuses_to_travel():
    """Refusing to pickle executors (an oracle holding one, sent to workers) also refused
    ``copy.copy``, which shares the workers and worked before."""
    import copy
    import pickle

    from zoracle.executors import JoblibExecutor

    for backend in ("threading", "loky"):
        ex = JoblibExecutor(2, backend=backend)
        assert copy.copy(ex)._impl is ex._impl and copy.copy(ex._impl).__dict__ == ex._impl.__dict__
        with pytest.raises(TypeError, match="cannot pickle the executor"):
            pickle.dumps(ex)


def test_an_oracle_shipped_to_dask_lets_go_of_its_bytes_once_loaded():
    """The oracle's bytes stayed in each Dask worker's memory beside the loaded oracle (155 MB
    for an 80 MB oracle, 78 MB before the oracle was sent as bytes)."""
    import pickle

    from zoracle._pickling import LoadFailed, Pickled

    shipped = pickle.loads(pickle.dumps(Pickled(pickle.dumps(np.arange(5.0)))))  # as a worker receives it
    first = shipped.load()
    assert shipped.blob is None and shipped.load() is first and first.tolist() == [0, 1, 2, 3, 4]
    broken = Pickled(b"not a pickle")
    with pytest.raises(LoadFailed, match=r"^the oracle could not be loaded \(unpickled\) on the worker "
                                         r"\(UnpicklingError: "):  # a shard's error naming the fix, not the raw one
        broken.load()
    assert broken.blob == b"not a pickle"  # a failed load keeps the bytes: retried as a shard's error


def test_an_oracle_error_on_threads_raises_only_once_the_other_shards_are_done(threads2):
    """The run raised at once while another thread's shard went on querying the (shared) oracle:
    a TorchOracle's model was still patched, and its parameters moving, in the caller's handler."""
    import threading
    import time

    calls, lock = [], threading.Lock()

    def oracle(x):
        if x[0] != 0.0:  # coordinate 0's query: NaN, which raises at once (no retry)
            return float("nan")
        time.sleep(0.05)
        with lock:
            calls.append(1)
        return float(x @ x)

    with pytest.raises(zo.OracleError, match="returned nan at coordinate 0"):
        zo.estimate_gradient(oracle, np.zeros(24), zo.CGE(mu=1e-3), executor=threads2)
    seen = len(calls)
    time.sleep(0.3)
    assert len(calls) == seen  # nothing queried after the raise


def _shifted_net(torch):
    class Shift(torch.nn.Module):  # a buffer its train-mode forward reads (and never writes)
        def __init__(self):
            super().__init__()
            self.register_buffer("shift", torch.zeros(6, dtype=torch.float64))

        def forward(self, x):
            return x + self.shift

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 6), Shift(), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double().train()


@pytest.mark.usefixtures("one_torch_thread")
def test_a_buffer_a_train_mode_forward_reads_reaches_process_workers_when_changed(loky2):
    """executor_key left out every buffer of a train-mode module (as if all were running statistics
    the plain call updates): a buffer changed between estimates stayed old on the workers (loss
    1.343 against 1.397, gradients 0.12 off where the largest is 0.3), silently."""
    torch = pytest.importorskip("torch")
    tz = pytest.importorskip("zoracle.adapters.torch")
    net = _shifted_net(torch)
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    bound = tz.TorchOracle(net, torch.nn.CrossEntropyLoss(reduction="none")).bind((x, y))
    theta = bound.initial_params()
    zo.estimate_gradient(bound, theta, zo.CGE(mu=1e-6), executor=loky2)
    net[1].shift.add_(0.5)
    ref = zo.estimate_gradient(bound, theta, zo.CGE(mu=1e-6))
    got = zo.estimate_gradient(bound, theta, zo.CGE(mu=1e-6), executor=loky2)
    assert got.loss == ref.loss
    np.testing.assert_array_equal(got.grad, ref.grad)


def test_an_oracle_error_on_threads_is_not_held_back_by_a_hung_shard(monkeypatch):
    """Waiting for the other threads' shards after an error had no limit without a timeout: a hung
    shard held the error back as long as it hung. The wait is bounded, and the hung thread abandoned."""
    import time

    import zoracle._executors_local as local

    monkeypatch.setattr(local, "ABORT_WAIT_S", 0.5)

    def oracle(x):
        if x[1] != 0.0:  # coordinate 1's query hangs (3 s here)
            time.sleep(3.0)
        if x[0] != 0.0:  # coordinate 0's: NaN, which raises at once
            return float("nan")
        return float(x @ x)

    with JoblibExecutor(3, backend="threading") as ex:
        t0 = time.perf_counter()
        with pytest.raises(zo.OracleError, match="returned nan at coordinate 0"):
            zo.estimate_gradient(oracle, np.zeros(6), zo.CGE(mu=1e-3), executor=ex)
        assert time.perf_counter() - t0 < 2.5


def test_a_cuda_worker_makes_its_gpu_the_current_device(monkeypatch):
    """DeviceExecutor workers only recorded their device: CuPy arrays, torch.cuda.synchronize()
    and any allocation without a device went to GPU 0 on every worker. A worker for "cuda:i"
    now makes GPU i current in torch and CuPy when an oracle arrives, where the oracle imported
    them (checked with stand-ins: no GPU here); nothing else is imported, and a device that is
    not a CUDA index is left to to_device."""
    import sys

    from zoracle._executors_core import WorkerState, use_device

    calls = _stand_in_gpu_modules(monkeypatch)
    WorkerState("cuda:3").put_oracle("t", _wave)
    assert calls == [("torch", 3), ("cupy", 3), ("cupy", "use")]
    calls.clear()
    for other in ("cpu", None, "cuda:abc"):
        use_device(other)
    assert calls == []
    monkeypatch.delitem(sys.modules, "cupy")
    use_device("cuda")
    assert calls == [("torch", 0)] and "cupy" not in sys.modules


def _stand_in_gpu_modules(monkeypatch) -> list:
    """Stand-ins for torch and CuPy in ``sys.modules`` that record the current-device calls (no GPU
    here); the list they record into."""
    import sys
    import types

    calls = []
    torch_like = types.SimpleNamespace(cuda=types.SimpleNamespace(set_device=lambda i: calls.append(("torch", i))))
    device = types.SimpleNamespace(use=lambda: calls.append(("cupy", "use")))
    cupy_like = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=lambda i: calls.append(("cupy", i)) or device))
    monkeypatch.setitem(sys.modules, "torch", torch_like)
    monkeypatch.setitem(sys.modules, "cupy", cupy_like)
    return calls


def test_a_worker_for_a_device_index_makes_its_gpu_the_current_device(monkeypatch):
    """DeviceExecutor takes device indices ([0, 1], range(2), np.arange(2)), which torch reads as
    cuda:0, cuda:1 (TorchOracle.to_device(1) moves the model to cuda:1), but the worker for 1
    left GPU 0 current in torch and CuPy: only strings starting with "cuda" were read."""
    from zoracle._executors_core import WorkerState, use_device

    calls = _stand_in_gpu_modules(monkeypatch)
    for index in (1, np.int64(1), range(3)[1], np.arange(2)[1]):
        calls.clear()
        WorkerState(index).put_oracle("t", _wave)
        assert calls == [("torch", 1), ("cupy", 1), ("cupy", "use")], index
    calls.clear()
    use_device(True)  # not an index (DeviceExecutor refuses it)
    assert calls == []


class _Scripted:
    """A schedule() backend whose shards answer as ``behave(worker, shard, attempt)`` says."""

    def __init__(self, n_workers, behave):
        self.ws, self.busy, self.pending, self.behave, self.submits = list(range(n_workers)), {}, [], behave, []

    def idle(self):
        return [w for w in self.ws if w not in self.busy]

    def workers(self):
        return list(self.ws)

    def name(self, w):
        return f"worker{w}"

    def submit(self, w, jid, shard):
        self.busy[w] = jid
        self.pending.append((w, jid, shard))
        self.submits.append(shard)

    def wait(self, timeout=None):
        out = [(w, jid, self.behave(w, shard, self.submits.count(shard))) for w, jid, shard in self.pending]
        for w, _, _ in self.pending:
            del self.busy[w]
        self.pending = []
        return out

    def abort(self, workers, hung):
        pass


def test_a_shard_lost_with_another_worker_runs_again_without_a_strike_and_is_bounded():
    """A shard whose inputs went with another worker that died (Dask's "cancelled") counted as
    a failure of its own: two such losses blamed it (an innocent shard) with "failed twice"."""
    from zoracle._executors_core import LOST_RETRIES, ShardFailed, schedule

    # lost twice, then fine: the run succeeds, no failure recorded against it
    ok = _Scripted(2, lambda w, s, k: ("lost", "inputs gone") if s == 0 and k <= 2 else ("ok", [s], 0.0))
    assert schedule(ok, [0, 1], [1, 1])[0] == [[0], [1]]
    # lost for ever: bounded, and named as lost, not as a dead worker
    never = _Scripted(2, lambda w, s, k: ("lost", "inputs gone") if s == 0 else ("ok", [s], 0.0))
    with pytest.raises(ShardFailed, match=r"lost \d times as other workers died \(inputs gone\)") as info:
        schedule(never, [0, 1], [1, 1])
    assert "worker died" not in str(info.value) and never.submits.count(0) == LOST_RETRIES + 2


class _SlowSquares:
    """Each query takes 50 ms: a run lasts long enough for another thread to close the executor."""

    def __call__(self, x):
        time.sleep(0.05)
        return float(np.sum(np.asarray(x) ** 2))


@pytest.mark.parametrize("make", [lambda: JoblibExecutor(2, backend="threading"), lambda: JoblibExecutor(2)])
def test_closing_an_executor_during_a_run_stops_the_run_with_a_clear_error(make):
    """close() from another thread during a run raised "'NoneType' object has no attribute
    'submit'" (threads), "<_Proc> is not in list", or spun at 100% CPU on an empty worker list
    with a fresh worker started after close() (processes)."""
    import threading

    ex = make()
    ex.start()
    pids = [p for p in getattr(ex, "pids", []) if p != os.getpid()]  # a threading executor's: this process
    closer = threading.Timer(0.6, ex.close)
    closer.start()
    try:
        with pytest.raises(zo.ZoracleError, match="the executor was closed \\(close\\(\\) from another thread\\) "
                                                  "during this run"):
            zo.estimate_gradient(_SlowSquares(), np.ones(60), zo.CGE(), executor=ex)
    finally:
        closer.join()
    assert no_children(pids)
    got = zo.estimate_gradient(lambda x: float(x @ x), np.ones(6), zo.CGE(mu=1e-3, scheme="central"), executor=ex)
    np.testing.assert_allclose(got.grad, 2 * np.ones(6), atol=1e-6)  # usable again: it starts anew
    ex.close()


def test_the_serial_executor_reports_its_last_run_too():
    """executors.md's `executor.last_run` was missing on SerialExecutor (AttributeError), which
    from_args returns for --shard-timeout without workers."""
    ex = SerialExecutor()
    assert ex.last_run is None
    zo.estimate_gradient(lambda x: float(x @ x), np.ones(5), zo.CGE(), executor=ex)
    stats = ex.last_run
    assert isinstance(stats, zo.executors.RunStats) and stats.shards >= 1 and stats.retries == 0 and stats.n_workers == 1


def test_every_executor_takes_forget_as_the_module_docs_say():
    """zoracle.executors says: after mutating an oracle in place, call executor.forget(oracle);
    SerialExecutor, the default, had no forget (AttributeError in code written for any executor)."""
    class Scaled:
        def __init__(self):
            self.scale = 1.0

        def __call__(self, x):
            return float(self.scale * (x @ x))

    oracle = Scaled()
    for ex in (zo.executors.SerialExecutor(), zo.executors.JoblibExecutor(2, backend="threading")):
        with ex:
            first = zo.estimate_gradient(oracle, np.ones(3), zo.CGE(), executor=ex).grad
            oracle.scale = 2.0
            ex.forget(oracle)
            again = zo.estimate_gradient(oracle, np.ones(3), zo.CGE(), executor=ex).grad
            oracle.scale = 1.0
        np.testing.assert_allclose(again, 2 * first, rtol=1e-6)


def test_a_batch_is_the_one_sent_only_with_the_same_type_items_and_bits():
    """The executors' batch comparison (a bound view rebound in place goes again when its batch
    differs): equal bits, not equal values; the same type, dtype and shape; the same kind of
    container and number of items. Checked against the raw bytes (``tobytes``) as reference."""
    from zoracle._executors_local import _batch_items, _same_batch, _same_bits

    def ref(a, b):
        return type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()

    x = np.arange(6.0).reshape(2, 3)
    cases = [(x, x.copy()), (np.zeros(2), -np.zeros(2)), (np.zeros((2, 3)), np.zeros((3, 2))),
             (np.zeros(2, np.float32), np.zeros(2, np.int32)), (np.zeros(2), np.ma.zeros(2)),
             (np.array([np.nan]), np.array([np.nan]))]
    for a, b in cases:
        assert _same_bits(a, b) == ref(a, b), (a, b)
    y = np.arange(2)
    assert _same_batch(_batch_items((x, y)), (x.copy(), y.copy()))  # a new tuple of copies: the same batch
    assert not _same_batch(_batch_items((x, y)), [x, y])  # another container
    assert not _same_batch(_batch_items((x,)), (x, y))  # another number of items
    torch = pytest.importorskip("torch")
    t = torch.arange(4.0)
    assert _same_bits(t, t.clone()) and not _same_bits(t, -t)
    assert _same_batch(_batch_items((t, t)), (t.clone(), t[:4].clone()))


def test_the_batches_an_executor_remembers_are_the_ones_its_registry_holds():
    """The batch each bound object was sent with is remembered to tell a new one from it; a run
    over many batches keeps only those of the bound objects still held (a few), not one per batch."""
    from zoracle._executors_local import ThreadPool

    class Bound:
        def __init__(self, parent, batch):
            self.parent, self.batch = parent, batch

        def __call__(self, w):
            return float(np.mean((self.batch[0] @ w - self.batch[1]) ** 2))

        def unbind(self):
            return self.parent, self.batch

    class Data:
        def bind(self, batch):
            return Bound(self, batch)

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((200, 3)), rng.standard_normal(200)
    ex = ThreadPool(2)
    try:
        zo.train(Data(), np.zeros(3), batches=[(X[i:i + 10], y[i:i + 10]) for i in range(0, 200, 10)], executor=ex,
                 progress=False)
        assert 0 < len(ex._batch_seen) <= ex._bound.keep  # 20 batches were sent
    finally:
        ex.close()


def test_losses_too_coarse_are_warned_about_on_process_workers_too(loky2, monkeypatch):
    """The warning about float32 / integer losses (a float32 loss near 1e4 gives partials in steps
    of 0.195 at mu = 0.005) came from the driver's own wrapper of the oracle, which a process worker's
    queries never reach: the same estimate, as quantized, was silent on JoblibExecutor, Dask and Ray."""
    import zoracle._estimators as est_module

    w = np.linspace(0.5, 1.5, 10)
    f32 = lambda x: np.float32(1e4) + np.float32(w @ x)  # noqa: E731
    for executor in (None, loky2):
        monkeypatch.setattr(est_module, "_COARSE_WARNED", set())
        with pytest.warns(UserWarning, match=r"returns float32 losses: near the base loss 10000 they are 0.000977 "
                                             r"apart, so a difference over mu = 0.005 resolves a partial derivative "
                                             r"only to 0.195"):
            got = zo.estimate_gradient(f32, np.zeros(10), zo.CGE(), executor=executor)
        assert np.max(np.abs(got.grad - w)) > 0.05  # the quantization the warning is about
    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())
    with pytest.warns(UserWarning, match=r"returns int losses.*only to 200"):
        zo.estimate_gradient(lambda x: int(round(100 * float(w @ x))) + 1, np.zeros(10), executor=loky2)
    with warnings.catch_warnings():  # float64 losses: nothing to say
        warnings.simplefilter("error")
        zo.estimate_gradient(lambda x: 1e4 + float(w @ x), np.zeros(10), executor=loky2)


def test_a_process_worker_reports_the_loss_kind_of_this_task_not_an_earlier_estimates(loky2, monkeypatch):
    """A worker keeps its wrapper of the oracle between estimates, and with it the base value of an
    earlier one: a hinge sum (the int 0 where every margin is met, a float elsewhere) once met at a
    worker's base point made later estimates warn of "int losses" near a loss of 25, where the serial
    loop (the reference) says nothing."""
    import zoracle._estimators as est_module

    def hinge(p):
        return sum(max(0, 1.0 - v) for v in p)

    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            for p in (np.full(20, 2.0), np.linspace(-1, 0.5, 20)):
                for executor in (None, loky2):
                    zo.estimate_gradient(hinge, p, zo.CGE(mu=1e-3), executor=executor)


class _TorchFloat32Loss:
    """Returns its loss as a float32 torch scalar (a ``loss.detach()`` not turned into a float)."""

    def __init__(self, w):
        self.w = w

    def __call__(self, x):
        import torch

        return torch.tensor(1e4, dtype=torch.float32) + torch.tensor(float(self.w @ x), dtype=torch.float32)


def test_a_float32_torch_loss_is_warned_about_on_process_workers_too(loky2, monkeypatch):
    """The worker sends the loss's dtype name (``torch.float32``), not its type's (``Tensor``, which
    names no precision): the warning the driver gives for the same oracle run serially."""
    pytest.importorskip("torch")
    import zoracle._estimators as est_module

    w = np.linspace(0.5, 1.5, 10)
    for executor in (None, loky2):
        monkeypatch.setattr(est_module, "_COARSE_WARNED", set())
        with pytest.warns(UserWarning, match=r"returns float32 losses: near the base loss 10000 they are 0.000977 "
                                             r"apart"):
            zo.estimate_gradient(_TorchFloat32Loss(w), np.zeros(10), zo.CGE(), executor=executor)


class SimulatorInASubprocess:
    """A black box that runs its simulator as a subprocess (in its own Python environment, say)
    and notes the PYTHONPATH that subprocess was started with."""

    def __init__(self, log):
        self.log = str(log)

    def __call__(self, x):
        seen = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('PYTHONPATH', '<unset>'))"],
                              capture_output=True, text=True, check=True, timeout=60).stdout.strip()
        with open(self.log, "a") as f:
            f.write(seen + "\n")
        return float(x @ x)


@pytest.mark.parametrize("driver", [None, "/zoracle-test-driver-path"])
def test_an_oracles_subprocesses_get_the_drivers_pythonpath(tmp_path, monkeypatch, driver):
    """Process workers are started with PYTHONPATH=<the folder above the zoracle package> (for a
    pip-installed zoracle: the whole site-packages) so that `python -c` finds zoracle; the worker
    kept it, and every subprocess an oracle started inherited it: a simulator run with another
    environment's Python imported this environment's packages (numpy of the wrong Python:
    "No module named 'numpy._core._multiarray_umath'")."""
    if driver is None:
        monkeypatch.delenv("PYTHONPATH", raising=False)
    else:
        monkeypatch.setenv("PYTHONPATH", driver)
    serial, pooled = tmp_path / "serial.txt", tmp_path / "pooled.txt"
    zo.estimate_gradient(SimulatorInASubprocess(serial), np.ones(2), zo.CGE())
    with JoblibExecutor(2) as ex:
        zo.estimate_gradient(SimulatorInASubprocess(pooled), np.ones(2), zo.CGE(), executor=ex)
    expected = driver or "<unset>"
    assert set(serial.read_text().split()) == {expected}
    assert set(pooled.read_text().split()) == {expected}


def test_every_executor_repr_names_its_kind_and_settings():
    """SerialExecutor, DaskExecutor and RayExecutor printed as ``<zoracle.executors.SerialExecutor
    object at 0x7f...>`` in a REPL, and JoblibExecutor's repr left out its timeout; none is started
    by a repr, and a closed one still prints."""
    import importlib.util

    from zoracle.executors import DaskExecutor, JoblibExecutor, RayExecutor, SerialExecutor

    made = [(SerialExecutor(), "SerialExecutor()"), (SerialExecutor(timeout=5.0), "SerialExecutor(timeout=5.0)"),
            (JoblibExecutor(2, backend="threading", timeout=3.0),
             "JoblibExecutor(n_jobs=2, backend='threading', timeout=3.0)")]
    if importlib.util.find_spec("distributed") is not None:
        made.append((DaskExecutor("local:2"), "DaskExecutor('local:2', n_workers=2)"))
    if importlib.util.find_spec("ray") is not None:
        made.append((RayExecutor(n_workers=2, timeout=9.0), "RayExecutor(None, n_workers=2, timeout=9.0)"))
    for ex, shown in made:
        assert repr(ex) == shown
        ex.close()
        assert repr(ex) == shown


def test_a_cluster_executor_repr_shows_only_the_worker_count_it_was_given():
    """DaskExecutor("tcp://host:8786") printed ``n_workers=1``: a count it was not given (the
    cluster's own workers run the shards; that repr typed back is refused), as did an unsized
    local cluster and Ray (whose default is the CPU count, found at start); Ray's
    allow_network=True was left out."""
    import importlib.util

    from zoracle.executors import DaskExecutor, RayExecutor

    made = []
    if importlib.util.find_spec("distributed") is not None:
        made += [(DaskExecutor("tcp://127.0.0.1:8786"), "DaskExecutor('tcp://127.0.0.1:8786')"),
                 (DaskExecutor(), "DaskExecutor(None)"), (DaskExecutor("local:3"), "DaskExecutor('local:3', n_workers=3)")]
    if importlib.util.find_spec("ray") is not None:
        made += [(RayExecutor("ray://10.0.0.5:10001", allow_network=True),
                  "RayExecutor('ray://10.0.0.5:10001', allow_network=True)")]
    for ex, shown in made:
        assert repr(ex) == shown
        ex.close()


class _LoggedCalls:
    """A user's oracle that logs each call into a list shared across processes (a Manager's)."""

    def __init__(self, log):
        self.log = log

    def __call__(self, x):
        self.log.append(1)
        return _wave(x)


def test_an_oracle_holding_a_multiprocessing_manager_proxy_reaches_process_workers(loky2):
    """Workers started with ``python -c`` had their own multiprocessing authkey, so an oracle holding
    a ``multiprocessing.Manager()`` proxy (which multiprocessing's own Pool runs) failed to load on
    every worker: "AuthenticationError: digest sent was rejected", after a retry. The workers take the
    driver's key, as spawned processes do: the serial gradient, every query logged in the driver."""
    import multiprocessing

    x = params()
    with multiprocessing.Manager() as manager:
        log = manager.list()
        got = zo.estimate_gradient(_LoggedCalls(log), x, zo.CGE(), executor=loky2)
        assert len(log) == got.nfev == D + 1
        assert_same(got, zo.estimate_gradient(_LoggedCalls([]), x, zo.CGE()))


def _windows_subprocess():
    """A fresh copy of the stdlib subprocess module on its Windows code path (fake ``msvcrt`` and
    ``_winapi`` stand in for the Win32 calls): Popen there refuses ``pass_fds``."""
    import importlib.util
    import types

    class _Win32(types.ModuleType):
        def __getattr__(self, name):
            return 0 if name.isupper() else (lambda *a, **k: 0)

    saved = {k: sys.modules.get(k) for k in ("_winapi", "msvcrt")}
    sys.modules["_winapi"], sys.modules["msvcrt"] = _Win32("_winapi"), _Win32("msvcrt")
    try:
        spec = importlib.util.find_spec("subprocess")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    assert mod._mswindows
    return mod


def test_process_workers_on_windows_raise_a_clear_error(monkeypatch):
    import zoracle._executors_local as local

    with monkeypatch.context() as m:  # (undone before pytest reports: its pathlib follows os.name)
        m.setattr(local, "subprocess", _windows_subprocess())
        m.setattr(os, "name", "nt")
        with pytest.raises(zo.ZoracleError, match="backend='threading'"):
            with JoblibExecutor(2):
                pass
        with pytest.raises(zo.ZoracleError, match="POSIX"):
            DeviceExecutor(["cpu", "cpu"])


def _zoracle_beside_a_shadowing_enum(folder: str, where: str) -> str:
    """A copy of zoracle in site folder ``folder``, the core's dependencies on a .pth (after the
    standard library, as site folders are), and an ``enum.py`` there as enum34 installs it; returns
    a script that runs CGE on a JoblibExecutor and prints the gradient."""
    import importlib.util
    import shutil

    shutil.copytree(os.path.dirname(zo.__file__), os.path.join(folder, "zoracle"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    specs = [importlib.util.find_spec(m) for m in ("numpy", "scipy", "joblib", "tqdm", "cloudpickle")]
    deps = {os.path.dirname(os.path.dirname(s.origin)) for s in specs if s is not None}
    with open(os.path.join(folder, "deps.pth"), "w") as f:
        f.write("\n".join(sorted(deps)) + "\n")
    with open(os.path.join(folder, "enum.py"), "w") as f:
        f.write(f"raise ImportError('the enum of {where} shadows the standard library')\n")
    return ("import numpy as np, zoracle as zo\n"
            "from zoracle.executors import JoblibExecutor\n"
            "with JoblibExecutor(1) as ex:\n"
            "    est = zo.estimate_gradient(lambda x: float(x @ x), np.arange(4.0), zo.CGE(mu=1e-3), executor=ex)\n"
            "print(est.grad.round(3).tolist())\n")


def test_workers_of_a_pip_installed_zoracle_keep_the_standard_library_first(tmp_path):
    """Workers were started with PYTHONPATH=<the folder above zoracle>, for a pip-installed
    zoracle the whole site-packages, ahead of the standard library: a package there named like a
    standard module (enum34's ``enum``, the ``argparse`` backport) shadowed it in every worker,
    which died at start ("the worker died (exit code 1)") while serial runs worked."""
    import json

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    site_dir = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                              capture_output=True, text=True, timeout=60).stdout.strip()
    code = _zoracle_beside_a_shadowing_enum(site_dir, "site-packages")  # zoracle as a wheel installs it
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    out = subprocess.run([python, "-c", code], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got, 2 * np.arange(4.0) + 1e-3, atol=1e-9)  # (f(x + h e_i) - f(x)) / h


def test_closing_a_process_executor_while_its_run_waits_for_answers_gives_the_clear_error(monkeypatch):
    """close() from another thread closes the workers' sockets one by one before it forgets them:
    a run waiting on those sockets in that window raised a bare ``OSError: handle is closed`` (about
    1 run in 4 of the test above on a loaded machine), from its wait and again from the abort that
    followed, not "the executor was closed ... during this run". Here close() is held in that
    window, every time."""
    import multiprocessing.connection as mpc
    import threading

    import zoracle._executors_local as local

    real_wait, real_stop = mpc.wait, local._Proc.stop
    release = threading.Event()

    def stop_then_hold(self, grace=2.0):  # close() has closed this worker's socket, not yet forgotten it
        real_stop(self, grace)
        release.wait(30)

    ex = JoblibExecutor(2)
    ex.start()
    pids = list(ex.pids)
    closer = threading.Thread(target=ex.close)

    def wait_once_a_socket_is_closed(conns, timeout=None):
        if closer.ident is None:  # the first wait of the run
            closer.start()
            end = time.monotonic() + 20
            while not any(c.closed for c in conns) and time.monotonic() < end:
                time.sleep(0.01)
        return real_wait(conns, timeout)

    monkeypatch.setattr(local._Proc, "stop", stop_then_hold)
    monkeypatch.setattr(mpc, "wait", wait_once_a_socket_is_closed)
    try:
        t0 = time.monotonic()
        with pytest.raises(zo.ZoracleError, match="the executor was closed \\(close\\(\\) from another thread\\) "
                                                  "during this run"):
            zo.estimate_gradient(_SlowSquares(), np.ones(60), zo.CGE(), executor=ex)
        # at once: the abort does not wait out ABORT_WAIT_S for answers from workers close() stopped
        assert time.monotonic() - t0 < local.ABORT_WAIT_S / 2
    finally:
        release.set()
        if closer.ident is not None:
            closer.join()
    monkeypatch.setattr(mpc, "wait", real_wait)
    monkeypatch.setattr(local._Proc, "stop", real_stop)
    assert no_children(pids)
    got = zo.estimate_gradient(lambda x: float(x @ x), np.ones(6), zo.CGE(mu=1e-3, scheme="central"), executor=ex)
    np.testing.assert_allclose(got.grad, 2 * np.ones(6), atol=1e-6)  # usable again: it starts anew
    ex.close()


def test_workers_of_a_pip_install_user_zoracle_keep_the_standard_library_first(tmp_path):
    """``pip install --user``: zoracle in the user site folder, which a child puts on its path by
    itself after the standard library, as it does site-packages; a package there named like a
    standard module (enum34's ``enum``) must not be put ahead of it in the workers."""
    import json

    base = getattr(sys, "_base_executable", sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE")}
    env["PYTHONUSERBASE"] = str(tmp_path / "userbase")
    user_site = subprocess.run([base, "-c", "import site; print(site.ENABLE_USER_SITE and site.getusersitepackages())"],
                               env=env, check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    if user_site in ("", "False", "None"):
        pytest.skip("this interpreter has no user site folder")
    os.makedirs(user_site)
    code = _zoracle_beside_a_shadowing_enum(user_site, "the user site")
    out = subprocess.run([base, "-c", code], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got, 2 * np.arange(4.0) + 1e-3, atol=1e-9)  # (f(x + h e_i) - f(x)) / h


def test_an_oracles_own_generator_repeats_on_process_workers(tmp_path):
    """docs/training.md, "Noisy black boxes": an oracle holding its own generator is copied to each
    process worker at one state and keeps it from step to step, so over four CGE steps at d = 16 on
    two processes every draw of the worker that ran fewer queries repeats one of the other's (how
    many depends on how the shards fell: the docs gave one run's count, which others did not
    reproduce); serially and on threads none repeats."""
    from collections import Counter
    from pathlib import Path

    log = tmp_path / "draws"

    class Noisy:
        def __init__(self):
            self.rng = np.random.default_rng(0)

        def __call__(self, x):
            e = self.rng.normal()
            with open(log, "a") as fh:
                fh.write(f"{os.getpid()} {e!r}\n")
            return float(x @ x + 0.01 * e)

    def run(ex):
        log.unlink(missing_ok=True)
        f, x = Noisy(), np.ones(16)
        for _ in range(4):
            x = x - 0.1 * zo.estimate_gradient(f, x, zo.CGE(), executor=ex).grad
        rows = [line.split() for line in log.read_text().splitlines()]
        values = [v for _, v in rows]
        return len(values), len(values) - len(set(values)), Counter(p for p, _ in rows)

    assert run(None)[:2] == (68, 0)
    with JoblibExecutor(2, backend="threading") as ex:
        assert run(ex)[:2] == (68, 0)
    with JoblibExecutor(2, backend="loky") as ex:
        n, repeated, share = run(ex)
    assert n == 68 and len(share) == 2 and repeated == min(share.values()) > 0
    text = " ".join((Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text().split())
    assert ("every draw of the worker that ran fewer queries repeated one of the other's: 22 to 29 of the 68 in "
            "four runs, as the shards fell; none serially or on threads") in text
    assert "every worker draws the same numbers from it" in (Path(__file__).resolve().parents[1] / "docs" /
                                                             "executors.md").read_text()


class _OwnExecutor:
    """An executor of one's own, written from the ``Executor`` protocol, that gets its results wrong."""

    n_workers = 3

    def __init__(self, mistake):
        self.mistake = mistake

    def run(self, oracle, params, tasks):
        out = [t.run(oracle, params) for t in tasks]
        return {"reversed": out[::-1], "dropped": out[:-1], "extra": out + out[:1]}[self.mistake]


def _least_squares():
    """A 12-parameter least-squares loss and a point: the own-executor tests' problem."""
    rng = np.random.default_rng(0)
    A, b = rng.standard_normal((40, 12)), rng.standard_normal(40)

    def f(x):
        return float(np.mean((A @ x - b) ** 2))

    return f, np.full(12, 0.3)


@pytest.mark.parametrize("mistake", ["reversed", "dropped", "extra"])
@pytest.mark.parametrize("est", [zo.RGE(mu=1e-4, directions=30), zo.CGE(mu=1e-6, scheme="central")],
                         ids=["rge", "cge"])
def test_an_own_executor_returning_results_out_of_order_or_miscounted_is_named(mistake, est):
    """An own executor returning its results reversed (as completed) or one short gave an RGE
    estimate 2.85 (or 0.65) off the serial one without a word, with nfev 21 for 31 queries, and a
    CGE one NumPy's bare ValueError; now an ArgumentError names the executor and what run() returns."""
    f, x = _least_squares()
    serial = zo.estimate_gradient(f, x, est, rng=0)
    good = _OwnExecutor("reversed")
    good.run = lambda oracle, params, tasks: [t.run(oracle, params) for t in tasks]
    assert np.array_equal(zo.estimate_gradient(f, x, est, rng=0, executor=good).grad, serial.grad)
    with pytest.raises(zo.ArgumentError, match=r"executor _OwnExecutor: run\(oracle, params, tasks\) returned"):
        zo.estimate_gradient(f, x, est, rng=0, executor=_OwnExecutor(mistake))


@pytest.mark.parametrize("est", [zo.RGE(mu=1e-4, directions=30), zo.CGE(mu=1e-6, scheme="central")],
                         ids=["rge", "cge"])
def test_an_own_executor_whose_workers_reply_in_json_lists_gives_the_serial_estimate(est):
    """An own executor whose workers send each task's result back as JSON (nested lists, in task order,
    of the task's shape) was refused as "a result of shape list ... not in the order they complete",
    though nothing was out of order. The reference: the serial estimate."""
    import json

    class JsonReplies:
        n_workers = 2

        def run(self, oracle, params, tasks):
            return [json.loads(json.dumps(t.run(oracle, params).tolist())) for t in tasks]

    f, x = _least_squares()
    serial = zo.estimate_gradient(f, x, est, rng=0)
    got = zo.estimate_gradient(f, x, est, rng=0, executor=JsonReplies())
    assert np.array_equal(got.grad, serial.grad) and got.nfev == serial.nfev
