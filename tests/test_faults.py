"""Faults in parallel estimates: killed workers, raising oracles, bad losses; no orphans.

Every oracle here misbehaves only inside a worker process (never in the test process),
coordinated through files in ``tmp_path``.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import psutil
import pytest

import zoracle as zo
from zoracle.executors import JoblibExecutor, ShardFailed

from test_executors import no_children  # noqa: E402  (shared process check)

D = 24


def _loss(x):
    return float(np.sum(np.sin(x) ** 2) + 0.05 * np.sum(x) ** 2)


def _claim(path) -> bool:
    """True for the first process (and only the first) to call this with ``path``."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


class KillOnce:
    """SIGKILLs the first worker process that evaluates a query."""

    def __init__(self, flag):
        self.flag = flag
        self.driver = os.getpid()  # set here: workers import this module afresh

    def __call__(self, x):
        if os.getpid() != self.driver and _claim(self.flag):
            os.kill(os.getpid(), signal.SIGKILL)
        return _loss(x)


class KillAt:
    """SIGKILLs any worker that perturbs coordinate ``i`` (so the retry dies as well)."""

    def __init__(self, base, i):
        self.base, self.i = base.copy(), i
        self.driver = os.getpid()

    def __call__(self, x):
        if os.getpid() != self.driver and x[self.i] != self.base[self.i]:
            os.kill(os.getpid(), signal.SIGKILL)
        return _loss(x)


class FailOnOneWorker:
    """Raises on every call in the first worker process that claims ``flag``."""

    def __init__(self, flag):
        self.flag = flag
        self.driver = os.getpid()

    def __call__(self, x):
        if os.getpid() != self.driver:
            _claim(self.flag)
            with open(self.flag) as f:
                if f.read().strip() == str(os.getpid()):
                    raise ConnectionError("simulator on this worker is down")
        return _loss(x)


class BadAt:
    """Raises (``mode="raise"``) or returns NaN (``mode="nan"``) when coordinate ``i`` moves."""

    def __init__(self, base, i, mode, log=None):
        self.base, self.i, self.mode, self.log = base.copy(), i, mode, log

    def __call__(self, x):
        if x[self.i] != self.base[self.i]:
            if self.log:
                with open(self.log, "a") as f:
                    f.write(f"{os.getpid()}\n")
            if self.mode == "raise":
                raise ValueError("boom")
            return float("nan")
        return _loss(x)


class SolverError(Exception):
    """A simulator's error as libraries write them: ``__init__`` takes other arguments than
    its ``args``, so the instance pickles but does not unpickle."""

    def __init__(self, code, where):
        super().__init__(f"solver failed with code {code} in {where}")
        self.code, self.where = code, where


class SolverFailsAt(BadAt):
    def __call__(self, x):
        if x[self.i] != self.base[self.i]:
            raise SolverError(7, "mesh")
        return _loss(x)


class FailsToLoadOnce:
    """Its first unpickling in a worker process raises (a model file not there yet)."""

    def __init__(self, flag):
        self.flag = flag
        self.driver = os.getpid()

    def __setstate__(self, state):
        self.__dict__.update(state)
        if os.getpid() != self.driver and _claim(self.flag):
            raise OSError("transient: model file not ready")

    def __call__(self, x):
        return _loss(x)


def params():
    return np.random.default_rng(5).standard_normal(D)


def gone(pids, timeout=10.0) -> bool:
    return no_children(pids, timeout)


def children() -> set:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture
def watch():
    """Asserts the test leaves no child process of this test process behind."""
    before = children()
    yield
    assert gone(children() - before)


@pytest.mark.slow
def test_killed_worker_is_replaced_and_shard_retried(tmp_path, watch):
    x = params()
    ref = zo.estimate_gradient(_loss, x, zo.CGE())
    with JoblibExecutor(2) as ex:
        first = ex.pids
        got = zo.estimate_gradient(KillOnce(str(tmp_path / "killed")), x, zo.CGE(), executor=ex)
        assert ex.last_run.retries >= 1
        after = ex.pids
        again = zo.estimate_gradient(KillOnce(str(tmp_path / "killed")), x, zo.CGE(), executor=ex)
    killed = int((tmp_path / "killed").read_text())
    assert killed in first and killed not in after  # replaced by a fresh worker
    np.testing.assert_allclose(got.grad, ref.grad, rtol=0, atol=1e-12)
    assert got.nfev == ref.nfev and got.loss == ref.loss
    np.testing.assert_allclose(again.grad, ref.grad, rtol=0, atol=1e-12)
    assert gone(first + after)


def test_an_oracle_that_failed_to_load_is_sent_again(tmp_path, watch):
    """The driver recorded the oracle as delivered although loading it raised: every later
    shard on that worker failed with "worker has no oracle for token ...; please report"."""
    x = params()
    ref = zo.estimate_gradient(_loss, x, zo.CGE())
    oracle = FailsToLoadOnce(str(tmp_path / "loaded"))
    with JoblibExecutor(1) as ex:  # one worker: the retry meets the same worker
        for _ in range(3):
            got = zo.estimate_gradient(oracle, x, zo.CGE(), executor=ex)
            np.testing.assert_allclose(got.grad, ref.grad, rtol=0, atol=1e-12)
    assert (tmp_path / "loaded").exists()  # loading really failed once


@pytest.mark.slow
def test_shard_killing_every_worker_raises_naming_shard_and_cause(watch):
    x = params()
    with JoblibExecutor(2) as ex:
        with pytest.raises(ShardFailed) as info:
            zo.estimate_gradient(KillAt(x, 7), x, zo.CGE(), executor=ex)
        msg = str(info.value)
        assert "shard" in msg and "failed twice" in msg and "coordinates" in msg
        assert "worker died" in msg and "signal 9" in msg
        assert isinstance(info.value, zo.ZoracleError)
        # the executor is still usable after the failure
        ok = zo.estimate_gradient(_loss, x, zo.CGE(), executor=ex)
        pids = ex.pids
    np.testing.assert_allclose(ok.grad, zo.estimate_gradient(_loss, x, zo.CGE()).grad, rtol=0, atol=1e-12)
    assert gone(pids)


def test_oracle_failing_on_one_worker_is_retried_elsewhere(tmp_path, watch):
    x = params()
    ref = zo.estimate_gradient(_loss, x, zo.RGE(directions=16), rng=3)
    with JoblibExecutor(2) as ex:
        got = zo.estimate_gradient(FailOnOneWorker(str(tmp_path / "bad")), x, zo.RGE(directions=16), rng=3,
                                   executor=ex)
        assert ex.last_run.retries >= 1
    np.testing.assert_allclose(got.grad, ref.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_oracle_raising_everywhere_gives_oracle_error_with_shard_and_cause(backend, tmp_path, watch):
    x = params()
    log = tmp_path / "calls.txt"
    with JoblibExecutor(2, backend=backend) as ex:
        with pytest.raises(zo.OracleError) as info:
            zo.estimate_gradient(BadAt(x, 7, "raise", str(log)), x, zo.CGE(), executor=ex)
    err = info.value
    assert isinstance(err, zo.ZoracleError)
    assert err.query.startswith("coordinate 7")
    assert isinstance(err.cause, ValueError)
    assert err.__cause__ is err.cause  # the class docs: "also chained as __cause__" (None from a process worker)
    msg = str(err)
    assert "ValueError: boom" in msg and "shard" in msg and "after failing on" in msg
    assert len(log.read_text().split()) == 2  # tried once, retried once: no endless retries


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_oracle_error_whose_cause_does_not_unpickle_stays_an_oracle_error(backend, watch):
    """It used to arrive as ShardFailed (not an OracleError, no query): the round trip of the
    whole error failed on the cause. Now the cause travels as text and the report keeps its
    type, query and message."""
    x = params()
    with JoblibExecutor(2, backend=backend) as ex:
        with pytest.raises(zo.OracleError) as info:
            zo.estimate_gradient(SolverFailsAt(x, 7, "raise"), x, zo.CGE(), executor=ex)
    err = info.value
    assert err.query.startswith("coordinate 7")
    assert "SolverError: solver failed with code 7 in mesh" in str(err) and "shard" in str(err)


class RaisesAWorkersOwnError:
    """At coordinate ``i``, raises an exception of a module only the workers can import (a client
    library installed on the cluster, not beside the driver)."""

    def __init__(self, x0, i):
        self.x0, self.i = x0, i

    def __call__(self, x):
        if x[self.i] != self.x0[self.i]:
            import zoracle_workers_only_errors as mod

            raise mod.QuotaError(f"quota exceeded at coordinate {self.i}")
        return float(x @ x)


def test_an_oracle_error_whose_class_only_the_workers_import_is_still_an_oracle_error(tmp_path, monkeypatch,
                                                                                         watch):
    """The worker checked only that the error unpickles on its own side: the driver, which cannot
    import the class, got a bare ``ModuleNotFoundError: No module named ...`` naming no query (on
    Dask: "lost 5 times as other workers died", the shard run 5 times; on Ray a RaySystemError)."""
    (tmp_path / "zoracle_workers_only_errors.py").write_text("class QuotaError(Exception):\n    pass\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    x = params()
    with JoblibExecutor(2) as ex:  # its workers start with the PYTHONPATH above; this process's path is as it was
        with pytest.raises(zo.OracleError) as info:
            zo.estimate_gradient(RaisesAWorkersOwnError(x, 7), x, zo.CGE(), executor=ex)
        err = info.value
        assert err.query.startswith("coordinate 7")
        assert "QuotaError: quota exceeded at coordinate 7" in str(err) and "shard" in str(err)
        ref = zo.estimate_gradient(lambda v: float(v @ v), x, zo.CGE())  # the executor still works
        np.testing.assert_array_equal(zo.estimate_gradient(lambda v: float(v @ v), x, zo.CGE(), executor=ex).grad,
                                      ref.grad)


class SlowAtZeroNanAtFive:
    """Coordinate 0: a slow query (logged as it starts and ends); coordinate 5: NaN at once."""

    def __init__(self, log):
        self.log = log

    def __call__(self, x):
        if x[0] != 0:
            with open(self.log, "a") as fh:
                fh.write("start\n")
            time.sleep(1.5)
            with open(self.log, "a") as fh:
                fh.write("end\n")
        return float("nan") if x[5] != 0 else float(x @ x)


@pytest.mark.slow
def test_an_oracle_error_lets_the_other_process_workers_finish_their_shards(tmp_path, watch):
    """A NaN (raised at once) on one worker killed the other worker in the middle of its query: a
    paid query cut off, the worker started again and the oracle loaded again at the next run. Threads,
    Dask and Ray let the other shards finish."""
    log = tmp_path / "log.txt"
    x = np.zeros(6)
    with JoblibExecutor(2) as ex:
        zo.estimate_gradient(lambda v: float(v @ v), x, zo.CGE(), executor=ex)
        pids = list(ex.pids)
        with pytest.raises(zo.OracleError, match="nan at coordinate 5"):
            zo.estimate_gradient(SlowAtZeroNanAtFive(str(log)), x, zo.CGE(), executor=ex)
        assert log.read_text().split() == ["start", "end"]  # the slow query finished
        assert ex.pids == pids  # no worker was replaced
        ref = zo.estimate_gradient(lambda v: float(v @ v) + v[0], x, zo.CGE())
        np.testing.assert_array_equal(
            zo.estimate_gradient(lambda v: float(v @ v) + v[0], x, zo.CGE(), executor=ex).grad, ref.grad)


def test_portable_error_drops_a_chain_that_does_not_unpickle():
    """Dask's workers pickle exceptions with their chain (tblib's reducers): an OracleError
    raised ``from`` the oracle's own exception then fails the round trip on ``__cause__``;
    ``portable_error`` sends the same OracleError rebuilt from its fields."""
    import copyreg
    import pickle

    from zoracle._executors_core import portable_error

    def with_chain(e):  # as tblib does: the chain travels with the exception
        return _rebuild, (type(e), e.__reduce__()[1], e.__cause__)

    class LocalError(Exception):  # a class only this scope knows: it cannot be pickled by reference
        pass

    try:
        raise zo.OracleError("coordinate 3 (step +0.005)", cause=LocalError("solver failed")) from LocalError("x")
    except zo.OracleError as exc:
        err = exc
    copyreg.pickle(zo.OracleError, with_chain)
    try:
        with pytest.raises(Exception):
            pickle.loads(pickle.dumps(err))
        out = portable_error(err)
    finally:
        del copyreg.dispatch_table[zo.OracleError]
    assert type(out) is zo.OracleError and out.query == "coordinate 3 (step +0.005)"
    assert "LocalError: solver failed" in str(out)


def _rebuild(cls, args, cause):
    e = cls(*args)
    e.__cause__ = cause
    return e


def test_nan_loss_is_not_retried(tmp_path, watch):
    x = params()
    log = tmp_path / "calls.txt"
    with JoblibExecutor(2) as ex:
        with pytest.raises(zo.OracleError, match=r"nan at coordinate 7 .*finite loss.*shard") as info:
            zo.estimate_gradient(BadAt(x, 7, "nan", str(log)), x, zo.CGE(), executor=ex)
    assert info.value.cause is None
    assert len(log.read_text().split()) == 1  # a wrong value is deterministic


def test_training_step_failure_leaves_params_untouched(tmp_path, watch):
    x = params()
    before = x.copy()
    with JoblibExecutor(2) as ex:
        with pytest.raises(zo.OracleError):
            zo.train(BadAt(x, 3, "raise"), x, epochs=1, estimator=zo.CGE(), executor=ex, progress=False)
    np.testing.assert_array_equal(x, before)


def test_an_oracle_error_whose_class_only_the_workers_import_keeps_its_cause(tmp_path, monkeypatch, watch):
    """The driver cannot import the oracle's exception class: the OracleError it gets still names
    the oracle's exception in ``cause`` (documented: "the exception the oracle raised"), as text."""
    (tmp_path / "zoracle_workers_only_errors.py").write_text("class QuotaError(Exception):\n    pass\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    x = params()
    with JoblibExecutor(2) as ex:
        with pytest.raises(zo.OracleError) as info:
            zo.estimate_gradient(RaisesAWorkersOwnError(x, 7), x, zo.CGE(), executor=ex)
    err = info.value
    assert err.cause is not None and err.value is None
    assert str(err.cause) == "QuotaError: quota exceeded at coordinate 7"
