"""Ctrl-C (or SIGTERM's SystemExit) inside a query of ``train`` on a cluster executor: the checkpoint
is written and the interrupt raised before any worker is restarted.

Dask restarted the workers left inside the abandoned query first (about 5 s on a local cluster:
each nanny waited 4 s for the call before killing its worker), and Ray started new actors (a
second): the checkpoint and the prompt waited for them. The restart now comes with the executor's
next run, or its close. The two tests of the ``dask`` fixture share its cluster (each ends with a run
that restarts the workers it left inside a query); the others start their own.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np
import psutil
import pytest

import zoracle as zo

sys.path.insert(0, os.path.dirname(__file__))
import test_executors as te  # noqa: E402  (shared oracles)
import test_executors_cluster as tc  # noqa: E402  (the clusters the cluster tests start)

#: seconds an oracle query hangs once the hang starts (the tests never wait for it to end)
HANG_S = 60.0


class HangsWhenMarked:
    """Hangs in every query made once ``folder``/hang exists, after writing ``folder``/pid-<its pid>."""

    def __init__(self, folder):
        self.folder = str(folder)

    def __call__(self, x):
        if os.path.exists(os.path.join(self.folder, "hang")):
            open(os.path.join(self.folder, f"pid-{os.getpid()}"), "w").close()
            time.sleep(HANG_S)
        return float(np.sum(x ** 2))


def _pids_in_query(folder) -> set:
    return {int(n[4:]) for n in os.listdir(folder) if n.startswith("pid-")}


def _alive(pid) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _train_until(signum, executor, folder):
    """Train with a step callback that starts the hang after step 3, and send ``signum`` to this
    process once a worker is inside the hung query. The steps the callbacks saw and the params
    after the last of them, and the pids of the workers inside the query at the signal."""
    seen, last = [], {}
    ready = threading.Event()

    def signal_when_hung():
        for _ in range(1200):  # (60 s at most)
            if _pids_in_query(folder):
                break
            time.sleep(0.05)
        time.sleep(0.2)  # (the other worker's shard too, mostly)
        ready.pids = _pids_in_query(folder)
        ready.set()
        os.kill(os.getpid(), signum)

    def callback(event, record, params):
        if event == "step":
            seen.append(record["step"])
            last["params"] = np.array(params)
            if len(seen) == 4:
                open(os.path.join(folder, "hang"), "w").close()
                threading.Thread(target=signal_when_hung, daemon=True).start()

    stopped = KeyboardInterrupt if signum == signal.SIGINT else SystemExit
    with pytest.raises(stopped):
        zo.train(HangsWhenMarked(folder), np.ones(4), epochs=1, steps_per_epoch=50, estimator=zo.CGE(),
                 executor=executor, checkpoint=folder / "run.npz", callbacks=[callback], progress=False)
    assert ready.wait(60) and ready.pids, "no worker was inside the hung query"
    alive_at_raise = {p for p in ready.pids if _alive(p)}
    arrays, meta = zo.load_checkpoint(folder / "run.npz")
    # the checkpoint holds the steps before the interrupted one, as it did
    assert meta["step"] == len(seen) == 4
    np.testing.assert_array_equal(arrays["params"], last["params"])
    return ready.pids, alive_at_raise


@pytest.fixture
def sigterm_exits():
    """SIGTERM raising SystemExit, as docs/training.md tells a preemptible job to set it."""
    old = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    yield
    signal.signal(signal.SIGTERM, old)


@pytest.fixture(scope="module")
def dask(dask_dir):
    tc._by_value(sys.modules[__name__])
    yield from tc.dask_cluster(dask_dir)


@pytest.fixture(scope="module")
def dask_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dask")


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_ctrl_c_on_dask_saves_before_the_workers_restart(dask, tmp_path, ctrl_c):
    """The workers inside the query are still the same processes when train raises: the save came
    first. The next run restarts them (an abandoned call would hold its shards back) and is right."""
    pids, alive = _train_until(signal.SIGINT, dask, tmp_path)
    assert alive == pids, f"worker(s) {sorted(pids - alive)} were restarted before the checkpoint was written"
    x = te.params()
    te.assert_same(zo.estimate_gradient(te.quadratic(), x, zo.CGE(), executor=dask),
                   zo.estimate_gradient(te.quadratic(), x, zo.CGE()))
    assert tc._gone(pids), "the workers left inside the abandoned query were not restarted by the next run"
    assert not set(dask.client.run(os.getpid).values()) & pids


@pytest.mark.timeout(300)
@pytest.mark.slow  # (a cluster start: run in CI's slow suite, keeping the default run under 10 min loaded)
def test_sigterm_on_dask_restarts_the_workers_left_in_the_query(dask, tmp_path, sigterm_exits):
    """SystemExit (a SIGTERM handler's) left the workers inside the abandoned query, never restarted:
    the next run's shards waited behind it. They are restarted as after Ctrl-C, after the save."""
    pids, alive = _train_until(signal.SIGTERM, dask, tmp_path)
    assert alive == pids
    x = te.params()
    te.assert_same(zo.estimate_gradient(te.quadratic(), x, zo.CGE(), executor=dask),
                   zo.estimate_gradient(te.quadratic(), x, zo.CGE()))
    assert tc._gone(pids), "the workers left inside the abandoned query are still running it"


@pytest.mark.timeout(300)
def test_a_local_dask_cluster_closes_without_waiting_for_an_abandoned_query(tmp_path, ctrl_c):
    """Closed with workers still inside an abandoned query (Ctrl-C, then the script ends), a local
    cluster's nannies asked each worker to stop and killed it only after 4 s: the prompt came back
    seconds after the checkpoint. Its close stops them at once now. Neither the interrupt (it
    restarted them at once, as slowly) nor the close waits for a nanny now: the nannies' warning
    says when one waited."""
    import logging

    pytest.importorskip("distributed", reason="dask[distributed] not installed (pip install -e '.[dask]')")
    tc._by_value(te, tc, sys.modules[__name__])
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    nanny = logging.getLogger("distributed.nanny")
    nanny.addHandler(handler)
    try:
        before = tc._children()
        ex = zo.executors.DaskExecutor("local:2", local_directory=str(tmp_path / "dask"))
        try:
            pids, _ = _train_until(signal.SIGINT, ex, tmp_path)
        finally:
            ex.close()
        waited = [r.getMessage() for r in records if "still alive after" in r.getMessage()]
        assert not waited, waited
        assert tc._gone(pids) and tc._gone(tc._children() - before), "Dask workers left behind"
    finally:
        nanny.removeHandler(handler)


@pytest.mark.timeout(300)
@pytest.mark.slow  # (a cluster start: run in CI's slow suite, keeping the default run under 10 min loaded)
def test_ctrl_c_on_ray_saves_before_new_actors_start(tmp_path, ctrl_c):
    """Ray started the new actors (a second or more) before train could save; the actors inside the
    query are killed at once now, and replaced at the next run."""
    pytest.importorskip("ray", reason="ray not installed (pip install -e '.[ray]')")
    import conftest

    ray_dir = conftest.RAY_DIR
    tc._by_value(sys.modules[__name__], ray=True)
    gen = tc.ray_cluster(ray_dir)
    ray_ex = next(gen)
    try:
        actors = sorted(ray_ex.pids)
        pids, _ = _train_until(signal.SIGINT, ray_ex, tmp_path)
        assert sorted(ray_ex.pids) == actors, "new actors were started before the checkpoint was written"
        assert tc._gone(pids), "the actors inside the abandoned query were not killed"
        x = te.params()
        te.assert_same(zo.estimate_gradient(te.quadratic(), x, zo.CGE(), executor=ray_ex),
                       zo.estimate_gradient(te.quadratic(), x, zo.CGE()))
        assert len(ray_ex.pids) == len(actors) and not set(ray_ex.pids) & pids
    finally:
        next(gen, None)


@pytest.mark.timeout(300)
@pytest.mark.slow  # (a cluster start: run in CI's slow suite, keeping the default run under 10 min loaded)
def test_ctrl_c_on_a_dask_cluster_that_stays_restarts_its_workers_after_the_save(tmp_path, ctrl_c):
    """On a cluster the executor only connects to, the workers left inside the query are restarted
    when the executor closes (or runs again), as after a timeout, but after the save."""
    distributed = pytest.importorskip("distributed", reason="dask[distributed] not installed (pip install -e '.[dask]')")
    tc._by_value(te, tc, sys.modules[__name__])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                  local_directory=str(tmp_path / "dask")) as cluster:
        with zo.executors.DaskExecutor(cluster.scheduler_address) as ex:
            pids, alive = _train_until(signal.SIGINT, ex, tmp_path)
            assert alive == pids, f"worker(s) {sorted(pids - alive)} were restarted before the checkpoint was written"
        assert tc._gone(pids), "close() left the workers inside the abandoned query"
        with distributed.Client(cluster, set_as_default=False) as client:
            now = set(client.run(os.getpid).values())
        assert len(now) == 2 and not now & pids
