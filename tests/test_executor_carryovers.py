"""Executors' carry-overs of stop 70 (h367): the Ray and Dask paths through ``pack()`` in a process
that multiprocessing's "spawn" started; an oracle a worker cannot load fails at once, named, with
the fix (it was retried on another worker, where it failed again); a ``zo.retrying`` call that
failed all its tries is not run again with its shard; a tiny run is not cut into a shard a query."""

from __future__ import annotations

import hashlib
import importlib.util
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

import zoracle as zo
from zoracle._pickling import LoadFailed
from zoracle.executors import DaskExecutor, JoblibExecutor, ShardFailed

_SPAWNED = textwrap.dedent("""
    import functools, multiprocessing, sys
    from concurrent.futures import ProcessPoolExecutor
    import numpy as np
    import zoracle as zo

    class Quad:
        def __call__(self, x):
            return float(x @ x + np.sin(x).sum())

        def loss(self, x):
            return self(x) * 2.0

    def scaled(x, c):
        return float(c * (x @ x) + np.cos(x).sum())

    def job(kind, tmp):
        from zoracle.executors import DaskExecutor, RayExecutor
        x = np.linspace(-1.0, 1.0, 5)
        ex = (RayExecutor("local:2", allow_network=True, _temp_dir=tmp) if kind == "ray"
              else DaskExecutor("local:2", local_directory=tmp))
        out = []
        with ex:
            for oracle in (Quad(), functools.partial(scaled, c=0.7), Quad().loss):
                kw = dict(epochs=2, steps_per_epoch=2, optimizer=zo.sgd(0.1), progress=False)
                try:
                    got = zo.train(oracle, x, executor=ex, **kw)
                    same = np.array_equal(got.params, zo.train(oracle, x, **kw).params)
                    out.append(kind + (" same" if same else " differs"))
                except Exception as exc:
                    out.append(kind + " " + type(exc).__name__ + ": " + str(exc).splitlines()[0][:300])
        return out

    if __name__ == "__main__":
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            for kind, tmp in zip(sys.argv[1::2], sys.argv[2::2]):
                print("\\n".join(pool.submit(job, kind, tmp).result(timeout=400)))
""")


@pytest.mark.slow  # (a spawned process starting Ray and Dask: about 15 s)
@pytest.mark.skipif("spawn" not in multiprocessing.get_all_start_methods(), reason="no spawn start method")
def test_ray_and_dask_train_the_script_oracles_of_a_spawned_process_as_serially(tmp_path):
    """A sweep on a ``ProcessPoolExecutor(mp_context=spawn)`` runs the script again as
    ``__mp_main__``: its class, a partial of its function and a bound method must reach Ray's
    actors (``pack`` with ``ray.cloudpickle``, not the installed cloudpickle) and Dask's worker
    processes by value, and train to the serial parameters bit for bit. (Without the by-value
    registration every one fails: "Can't get attribute 'Quad' on <module '__main__'>".) Ray's
    files go to a temporary folder, its token to conftest's RAY_DIR; Dask stays on loopback."""
    args = []
    if importlib.util.find_spec("ray") is not None:
        # (short: Ray's socket paths in it must stay under 108 bytes; in conftest's session folder)
        args += ["ray", tempfile.mkdtemp(prefix="s")]
    if importlib.util.find_spec("distributed") is not None:
        args += ["dask", str(tmp_path / "d")]
    if not args:
        pytest.skip("neither ray nor dask[distributed] is installed")
    script = tmp_path / "sweep.py"
    script.write_text(_SPAWNED)
    run = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=500,
                         cwd=tmp_path)
    if args[0] == "ray":
        shutil.rmtree(args[1], ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    kinds = args[::2]
    assert run.stdout.splitlines() == [f"{k} same" for k in kinds for _ in range(3)], run.stdout + run.stderr[-3000:]


@pytest.fixture
def gone_module(tmp_path):
    """An oracle whose module the driver imported and whose file is gone since: no worker can import it."""
    name = f"h367_only_here_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text("class Model:\n    def __call__(self, x):\n        return float(x @ x)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))
    (tmp_path / f"{name}.py").unlink()
    yield module
    sys.modules.pop(name, None)


class _FailsLoading:
    """Loading it (unpickling, on a worker) raises ``error``."""

    def __init__(self, error):
        self.error = error

    def __call__(self, x):
        return float(x @ x)

    def __setstate__(self, state):
        self.__dict__.update(state)
        raise self.error


def test_an_oracle_no_worker_can_import_fails_at_once_naming_the_module_and_the_fix(gone_module):
    """Its load failed on one worker, ran again on another and failed there too: a ShardFailed
    "failed twice", its message repeating the same load error twice. Now the first failure stops
    the run with one error naming the oracle, the module and how to make it reach the workers; the
    executor runs the next oracle as before."""
    with JoblibExecutor(2) as ex:
        with pytest.raises(LoadFailed) as info:
            zo.estimate_gradient(gone_module.Model(), np.zeros(4), zo.CGE(), executor=ex)
        text = str(info.value)
        assert text.startswith("the oracle Model could not be loaded (unpickled) on the worker (ModuleNotFoundError: "
                               f"No module named '{gone_module.__name__}'); the module '{gone_module.__name__}' must be "
                               "importable on the workers: install it there or put its folder on their PYTHONPATH, or "
                               f"send it by value with cloudpickle.register_pickle_by_value({gone_module.__name__})")
        assert "failed twice" not in text and text.count("could not be loaded") == 1
        assert isinstance(info.value, zo.ZoracleError) and not isinstance(info.value, ShardFailed)
        x = np.linspace(-1.0, 1.0, 4)
        assert np.array_equal(zo.estimate_gradient(lambda p: float(p @ p), x, zo.CGE(), executor=ex).grad,
                              zo.estimate_gradient(lambda p: float(p @ p), x, zo.CGE()).grad)


def test_a_load_that_failed_on_a_lost_connection_is_still_retried_on_another_worker():
    """A ``__setstate__`` that fetches weights may meet a passing network failure (an OSError: a file
    not there yet too, tests/test_faults.py): that one is a shard's error, retried once on another
    worker (here it fails there too: ShardFailed names both). Any other error there stops the run."""
    with JoblibExecutor(2) as ex:
        with pytest.raises(ShardFailed, match=r"failed twice: .*ConnectionResetError: weights server reset.*then on"):
            zo.estimate_gradient(_FailsLoading(ConnectionResetError("weights server reset")), np.zeros(3),
                                 zo.CGE(), executor=ex)
        with pytest.raises(LoadFailed, match=r"the oracle _FailsLoading could not be loaded \(unpickled\) on the "
                                             r"worker \(ValueError: 12 classes saved, 10 built\); the modules its"):
            zo.estimate_gradient(_FailsLoading(ValueError("12 classes saved, 10 built")), np.zeros(3), zo.CGE(),
                                 executor=ex)


class _Billed:
    """A paid service that resets every connection for a query moving coordinate 2; each call is logged."""

    def __init__(self, log):
        self.log = log

    def __call__(self, x):
        with open(self.log, "a") as fh:
            fh.write(f"{int(np.argmax(np.abs(x - 0.5)))}\n" if np.any(x != 0.5) else "base\n")
        if x[2] != 0.5:
            raise ConnectionResetError("connection reset by peer")
        return float(x @ x)


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_a_retrying_call_that_failed_all_its_tries_is_not_asked_again_with_its_shard(tmp_path, backend):
    """The executor ran the shard again on another worker: every query of it was paid again, and the
    failing call got ``tries`` more tries (4 calls for tries=2; a serial run stops after 2). Now the
    RetriesExhausted stops the run as it does serially: ``tries`` calls, no shard rerun."""
    log = tmp_path / "calls.txt"
    oracle = zo.retrying(_Billed(str(log)), tries=2, backoff=0)
    with JoblibExecutor(2, backend=backend) as ex:
        with pytest.raises(zo.OracleError, match=r"coordinate 2 \(step \+0\.005\).*failed all 2 tries") as info:
            zo.estimate_gradient(oracle, np.full(6, 0.5), zo.CGE(), executor=ex)
    assert isinstance(info.value.cause, zo.RetriesExhausted)
    assert log.read_text().split().count("2") == 2  # 4 before: the shard ran twice
    log.unlink()
    with pytest.raises(zo.OracleError, match="failed all 2 tries"):
        zo.estimate_gradient(oracle, np.full(6, 0.5), zo.CGE())
    assert log.read_text().split().count("2") == 2  # the serial count, the same


def _cheap(x):
    return float(x @ x + np.sin(x).sum())


def _slow(x):
    time.sleep(0.005)
    return float(x @ x)


def _digest(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


#: the executors' least shard (seconds of queries) in the tests of tiny runs: a cheap oracle's timed
#: queries stay far below it even on a loaded machine (a thread descheduled for milliseconds inside a
#: shard of microseconds), so the shard counts do not depend on the load; the defaults are 2 ms and 10 ms
MIN_SHARD_S = 0.05


def _shards_of_later_runs(ex, oracle, d, runs=3):
    x = np.linspace(-1.0, 1.0, d)
    want = _digest(zo.estimate_gradient(oracle, x, zo.CGE()).grad)
    shards = []
    for _ in range(runs):
        got = zo.estimate_gradient(oracle, x, zo.CGE(), executor=ex)
        assert _digest(got.grad) == want and got.nfev == d + 1
        shards.append(ex.last_run.shards)
    return shards


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_a_tiny_run_is_not_cut_into_a_shard_a_query(backend):
    """A plain callable of 5 coordinates on 2 workers was planned as 5 tasks of one coordinate and
    run as 6 shards (one a query) every time, each paying its round trip to a worker for microseconds
    of queries. Once its queries are timed, its coordinates run as one shard beside the base point's
    (2), the gradient the same bits as serial; an oracle of 5 ms a query is still spread over both
    workers (timed above the default least shard of 2 ms however loaded the machine)."""
    with JoblibExecutor(2, backend=backend) as ex:
        ex._impl.min_shard_s = MIN_SHARD_S
        assert _shards_of_later_runs(ex, _cheap, 5) == [6, 2, 2]  # (the first run: not timed yet)
        assert _shards_of_later_runs(ex, _cheap, 40)[1:] == [2, 2]  # 9 shards before
        del ex._impl.min_shard_s  # (the class's default)
        assert min(_shards_of_later_runs(ex, _slow, 5)) >= 4


@pytest.mark.slow
def test_a_tiny_run_on_dask_is_not_cut_into_a_shard_a_query(tmp_path):
    """Dask's round trip per shard is milliseconds: a tiny run paid it 6 times a step (now 2), same bits."""
    pytest.importorskip("distributed", reason="dask[distributed] not installed")
    with DaskExecutor("local:2", local_directory=str(tmp_path)) as ex:
        ex.min_shard_s = MIN_SHARD_S
        assert _shards_of_later_runs(ex, _cheap, 5) == [6, 2, 2]


def test_a_threaded_run_keeps_the_answers_of_merged_tasks_apart():
    """Merged tasks give each original task its own columns: every coordinate's loss where a serial run
    puts it, for a central scheme (two steps) and a sparse set of coordinates too."""
    def f(x):
        return float(np.sum(np.arange(1, x.size + 1) * x ** 3))

    x = np.linspace(-1.0, 1.0, 13)
    with JoblibExecutor(2, backend="threading") as ex:
        ex._impl.min_shard_s = MIN_SHARD_S
        for _ in range(3):
            for est in (zo.CGE(), zo.CGE(scheme="central")):
                assert np.array_equal(zo.estimate_gradient(f, x, est, executor=ex).grad,
                                      zo.estimate_gradient(f, x, est).grad)
        assert ex.last_run.shards <= 3
