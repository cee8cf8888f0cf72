"""A worker much slower than the others (another job on its core, a slower node) no longer
makes every step wait for the shard it took: the executors learn each worker's speed from the
shards it ran and hold a slow one back from a shard it would finish after the others finished
everything left. Which worker runs a shard never changes the estimate."""

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import zoracle as zo
from zoracle._executors_core import schedule
from zoracle._executors_speed import WorkerSpeeds
from zoracle.executors import JoblibExecutor


class SimBackend:
    """A schedule() backend on a simulated clock: worker ``k`` runs a shard of cost ``c`` in
    ``c * slowness[k]`` seconds; ``handed`` lists (worker, shard) as they were handed out."""

    def __init__(self, slowness, fail=()):
        self.slowness, self.fail = list(slowness), set(fail)  # fail: (worker, shard) that die there
        self.now, self.running, self.handed = 0.0, {}, []

    def workers(self):
        return list(range(len(self.slowness)))

    def idle(self):
        return [w for w in self.workers() if w not in self.running]

    def name(self, w):
        return f"w{w}"

    def submit(self, w, jid, shard):
        self.handed.append((w, shard))
        self.running[w] = (jid, shard, self.actual[shard] * self.slowness[w], self.now)

    def wait(self, timeout=None):
        w, (jid, shard, seconds, start) = min(self.running.items(), key=lambda kv: sum(kv[1][2:]))
        del self.running[w]
        self.now = start + seconds
        if (w, shard) in self.fail:
            return [(w, jid, ("dead", "killed"))]
        return [(w, jid, ("ok", np.array([[float(shard)]]), seconds))]

    def abort(self, workers, hung):
        pass


def _runs(slowness, costs, runs, speeds, actual=None, fail=()):
    """Makespans (simulated seconds) and hand-outs of ``runs`` schedules of shards 0..n-1, whose
    estimated costs are ``costs`` and true ones ``actual`` (default: the same)."""
    out = []
    for _ in range(runs):
        sim = SimBackend(slowness, fail)
        sim.actual = costs if actual is None else actual
        results, retries, _ = schedule(sim, list(range(len(costs))), costs, speeds=speeds)
        assert [r[0, 0] for r in results] == list(range(len(costs))) and retries == len(fail)  # in shard order
        out.append((sim.now, sim.handed))
    return out


@pytest.mark.parametrize("n_workers", [2, 4])
def test_a_worker_ten_times_slower_is_held_back_once_its_speed_is_known(n_workers):
    costs = [1.0] * (3 * n_workers + 1)  # the planner's 3 shards a worker and the base point
    slowness = [10.0] + [1.0] * (n_workers - 1)
    runs = _runs(slowness, costs, 4, WorkerSpeeds())
    first, _ = runs[0]
    fast_alone = math.ceil(len(costs) / (n_workers - 1))
    assert first >= 10.0  # unknown yet: it took a shard, and the run waited for it
    for span, handed in runs[1:3]:
        assert [w for w, _ in handed].count(0) == 0  # known: the slow worker took none
        assert span == fast_alone  # the fast ones alone, not 10 (ideal: len(costs) / (n - 0.9))


def test_a_slow_worker_held_back_gets_a_shard_again_later_and_is_measured_anew():
    speeds = WorkerSpeeds()
    runs = _runs([10.0, 1.0], [1.0] * 7, 12, speeds)
    took = [[w for w, _ in handed].count(0) for _, handed in runs]
    assert 0 < sum(took[1:]) < 5  # probed now and then: it may have become fast again
    runs = _runs([1.0, 1.0], [1.0] * 7, 12, speeds)  # its other job ended
    assert [w for w, _ in runs[-1][1]].count(0) >= 3  # equal again: it takes its share


@pytest.mark.parametrize("slowness", [[1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.3, 1.0, 1.0]])
def test_equal_or_nearly_equal_workers_all_take_their_share(slowness):
    costs = [1.0] * (3 * len(slowness) + 1)
    for span, handed in _runs(slowness, costs, 4, WorkerSpeeds())[1:]:
        counts = [[w for w, _ in handed].count(k) for k in range(len(slowness))]
        assert min(counts) >= 2, counts
        assert span <= 1.35 * len(costs) / sum(1 / s for s in slowness) + max(slowness)


def test_a_moderately_slow_worker_still_takes_the_shards_it_finishes_in_time():
    runs = _runs([4.0, 1.0], [1.0] * 7, 4, WorkerSpeeds())
    for span, handed in runs[1:]:
        assert [w for w, _ in handed].count(0) == 1  # 4 s for its one, while the other does six
        assert span == 6.0


def test_a_run_where_every_known_worker_is_slow_still_runs():
    speeds = WorkerSpeeds()  # stale speeds where the fastest changed: no worker may refuse them all
    live = {"w0", "w1", "w2"}
    for seconds in ([10.0, 10.0, 1.0], [1.0, 1.0, 10.0]):
        done = {}
        for k, s in enumerate(seconds):
            speeds.note(done, f"w{k}", ("base",), s, 1.0)
        speeds.learn(done, live)
    assert min(speeds.slowness(w) for w in live) > 1.5
    span, handed = _runs([1.0, 1.0, 1.0], [1.0], 1, speeds)[0]  # one shard: none would finish it sooner
    assert handed == [(0, 0)] and span == 1.0


def test_an_oracle_whose_cost_varies_by_point_is_not_taken_for_a_slow_worker():
    """Equal workers; shard 0 costs 10 times its estimate wherever it runs. The worker that drew it
    first seems slow and is held back once; the other then runs it as slowly, which shows that the
    cost, not the worker, varies: the speeds are forgotten. Where it is seen again (one run's spread
    may be a shard the OS kept waiting), no worker is held back any more (the plain balancing)."""
    speeds = WorkerSpeeds()
    actual = [10.0] + [1.0] * 6
    runs = _runs([1.0, 1.0], [1.0] * 7, 6, speeds, actual)
    assert speeds.varies
    assert [span for span, _ in runs] == [10.0, 16.0, 10.0, 16.0, 10.0, 10.0]


def test_a_shard_that_failed_on_the_fast_worker_is_retried_on_the_slow_one_held_back():
    speeds = WorkerSpeeds()
    _runs([10.0, 1.0], [1.0] * 7, 1, speeds)
    span, handed = _runs([10.0, 1.0], [1.0] * 7, 1, speeds, fail={(1, 3)})[0]
    assert [shard for w, shard in handed if w == 0] == [3]  # the one it may run, once no other can
    assert span == 7.0 + 10.0


# ----------------------------------------------------------------------------- real workers
# (4 ms a query, not 1: a shard of 1 ms queries that the OS kept waiting 20 ms, under load or beside
# another test process, spread its worker's times past SPREAD, which forgets every speed: the slow
# worker then took a shard in a fourth run, ci667)
FAST, SLOW = 0.004, 0.06


def _loss(x):
    return float(np.sum(np.sin(x) ** 2 + 0.5 * x))


class Straggler:
    """Sleeps FAST a query (the CPU stays idle); the first worker process to claim ``marker``
    sleeps SLOW and appends a byte to ``marker`` per query."""

    _mine = None  # per process: whether this process claimed the marker

    def __init__(self, marker):
        self.marker = marker

    def __call__(self, x):
        if Straggler._mine is None:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                Straggler._mine = True
            except FileExistsError:
                Straggler._mine = False
        if Straggler._mine:
            time.sleep(SLOW)
            with open(self.marker, "ab") as f:
                f.write(b".")
        else:
            time.sleep(FAST)
        return _loss(x)


def _held_back(ex, tmp_path):
    """Six estimates on ``ex`` (two workers, one of them slow): the slow worker's queries per run
    and the runs' seconds; each estimate bit for bit the serial one."""
    marker = str(tmp_path / "slow")
    x = np.linspace(-1, 1, 60)
    Straggler._mine = None
    serial = zo.estimate_gradient(_loss, x, zo.CGE())  # the same values, without the sleeps
    Straggler._mine = None
    oracle, counts, seconds = Straggler(marker), [], []
    for _ in range(6):
        before = os.path.getsize(marker) if os.path.exists(marker) else 0
        t0 = time.perf_counter()
        est = zo.estimate_gradient(oracle, x, zo.CGE(), executor=ex)
        seconds.append(time.perf_counter() - t0)
        counts.append(os.path.getsize(marker) - before)
        assert np.array_equal(est.grad, serial.grad) and est.nfev == serial.nfev == 61
    assert counts[0] > 0  # the first run did not know: the slow worker took a shard
    # later runs hold it back (a probe now and then; before, it took a shard in every run)
    assert sum(c > 0 for c in counts[1:]) <= 2, counts
    assert min(seconds[1:]) < 61 * SLOW  # very generous: the fast worker alone takes 61 * FAST


@pytest.mark.slow
def test_a_slow_process_worker_is_held_back_and_the_estimates_stay_bitwise_serial(tmp_path):
    with JoblibExecutor(2) as ex:
        _held_back(ex, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dask", "ray"])
def test_a_slow_cluster_worker_is_held_back_too(kind, tmp_path):
    import conftest
    import test_executors_cluster as tc

    if kind == "ray":
        pytest.importorskip("ray", reason="ray not installed (pip install -e '.[ray]')")
    tc._by_value(sys.modules[__name__], ray=kind == "ray")
    (tmp_path / "dask").mkdir()
    cluster = tc.dask_cluster(tmp_path / "dask") if kind == "dask" else tc.ray_cluster(Path(conftest.RAY_DIR))
    ex = next(cluster)
    try:
        _held_back(ex, tmp_path)
    finally:
        next(cluster, None)  # closes it, and checks that no worker is left behind


def test_threads_are_not_told_apart():
    """A thread pool's slots are not threads of their own (any pool thread runs any slot's
    shard): no speeds are learnt there, and every run is balanced as before."""
    x = np.linspace(-1, 1, 40)
    with JoblibExecutor(2, backend="threading") as ex:
        for _ in range(2):
            est = zo.estimate_gradient(lambda v: float(np.sum(v ** 2)), x, zo.CGE(), executor=ex)
        assert ex._impl._speeds.slowness("thread 0") == ex._impl._speeds.slowness("thread 1") == 1.0
    assert est.nfev == 41
