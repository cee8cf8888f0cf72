"""Executor hardening (issue 11): one test per class of finding.

Hangs (timeouts), orphans (workers outliving a killed driver), nested runs, interrupts,
exposure (loopback-only clusters, no HTTP, Ray refused without allow_network), lost Dask
inputs, unclear errors (a script without a __main__ guard) and leftover files. Clusters
run on 127.0.0.1 with their files under pytest's temporary directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import psutil
import pytest

import zoracle as zo
from zoracle.executors import (
    DaskExecutor,
    JoblibExecutor,
    NestedRunError,
    RayExecutor,
    SerialExecutor,
    ShardTimeout,
    ThreadPool,
)

sys.path.insert(0, os.path.dirname(__file__))
import test_executors as te  # noqa: E402
import test_executors_cluster as tc  # noqa: E402
from test_executors_cluster import dask_dir, ray_env  # noqa: E402,F401  (fixtures)


def quad(x):
    return float(x @ x)


def _serial(d):
    return zo.estimate_gradient(quad, np.ones(d), zo.CGE()).grad


class InterruptAt:
    """Raises KeyboardInterrupt when coordinate ``i`` moves; counts how often."""

    def __init__(self, i):
        self.i, self.hits, self.lock = i, 0, threading.Lock()

    def __call__(self, x):
        if x[self.i] != 0.0:
            with self.lock:
                self.hits += 1
            raise KeyboardInterrupt
        return quad(x)


# ----------------------------------------------------------------------------- hangs
_MAKERS = {
    "serial": lambda t: SerialExecutor(timeout=t),
    "threading": lambda t: JoblibExecutor(2, backend="threading", timeout=t),
    "loky": lambda t: JoblibExecutor(2, timeout=t),
}


@pytest.mark.parametrize("kind", list(_MAKERS))
def test_timeout_names_the_shard_and_the_worker(kind):
    # a worker process's first shard also unpickles the oracle (importing this module): 3 s
    limit = 3.0 if kind == "loky" else 0.5
    with _MAKERS[kind](limit) as ex:
        pids = list(getattr(ex, "pids", [])) if kind == "loky" else []
        t0 = time.perf_counter()
        with pytest.raises(ShardTimeout, match=rf"shard \d+/\d+ \(.+\) did not finish within timeout={limit:g} s on "
                                               r"(worker \d \(pid \d+\)|thread \d|the calling process)") as info:
            zo.estimate_gradient(tc.HangAt(5, 10.0 if kind != "loky" else 60.0), np.zeros(8), zo.CGE(), executor=ex)
        assert time.perf_counter() - t0 < limit + 6.0  # did not wait for the hang (slack for a loaded machine)
        assert info.value.timeout == limit and info.value.worker
        if kind == "loky":  # the hung worker was killed and replaced
            assert te.no_children([p for p in pids if p not in ex.pids], timeout=5)
            assert len(ex.pids) == 2
        est = zo.estimate_gradient(quad, np.ones(8), zo.CGE(), executor=ex)  # still usable
        np.testing.assert_allclose(est.grad, _serial(8))
    with pytest.raises(zo.ArgumentError, match="timeout"):
        JoblibExecutor(2, timeout=0)


def test_a_timeout_names_the_failure_whose_retry_it_kept_waiting():
    """Two threads: the base query hangs, coordinate 0's oracle raises. Its retry waits for the
    other (hung) thread, so the run ends in a ShardTimeout for the base point, whose message did
    not mention the oracle's own error (ValueError: boom) at all."""
    def loss(x):
        if x[0] != 0:
            raise ValueError("boom")
        time.sleep(3.0)
        return 1.0

    with JoblibExecutor(2, backend="threading", timeout=0.5) as ex:
        with pytest.raises(ShardTimeout, match=r"did not finish within timeout=0.5 s.*meanwhile shard \d/2 "
                                               r"\(coordinate 0.*ValueError: boom"):
            zo.estimate_gradient(loss, np.zeros(1), zo.CGE(), executor=ex)


class _ScratchSlowOnce:
    """A serial oracle (a scratch buffer, not thread-safe): one slow query at coordinate 3, then fast."""

    def __init__(self, x0, slow):
        self.x0, self.slow, self.buf, self.calls = x0, slow, np.zeros(x0.size), 0
        self.slow_done = threading.Event()  # set when the slow query has returned

    def __call__(self, x):
        self.calls += 1
        slow = self.slow and x[3] != self.x0[3]
        if slow:
            time.sleep(self.slow)
        np.multiply(x, np.arange(1.0, x.size + 1), out=self.buf)
        time.sleep(0.01)  # between writing the buffer and reading it
        out = float(self.buf.sum())
        if slow:
            self.slow_done.set()
        return out


@pytest.mark.parametrize("make", [lambda: SerialExecutor(timeout=1.0), lambda: ThreadPool(1, timeout=1.0)],
                         ids=["serial", "threads"])
@pytest.mark.slow
def test_a_timeout_stops_the_abandoned_shard_before_the_next_estimate(make):
    """After a ShardTimeout the thread left behind went on through the rest of its shard (every
    coordinate), querying the oracle beside the caller's next estimate: an oracle with a scratch
    buffer, made for serial use, then gave a retry a gradient 13 off (true: 1..40); a ThreadPool
    made 4 more queries."""
    d = 40
    x0 = np.linspace(0.1, 1.0, d)
    oracle = _ScratchSlowOnce(x0, slow=1.3)
    with make() as ex:
        with pytest.raises(ShardTimeout):
            zo.estimate_gradient(oracle, x0, zo.CGE(), executor=ex)
        oracle.slow = 0.0
        assert oracle.slow_done.wait(30)  # the slow query (inside the oracle, it cannot be stopped) ends
        calls = oracle.calls
        est = zo.estimate_gradient(oracle, x0, zo.CGE(), executor=ex)
        time.sleep(0.5)  # an abandoned shard that went on would query within this
    assert oracle.calls - calls == d + 1  # this estimate's queries only
    np.testing.assert_allclose(est.grad, np.arange(1.0, d + 1), rtol=1e-6)


class SlowToLoad:
    """Takes ``seconds`` to unpickle (an import, weights to read); each call is fast."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __setstate__(self, state):
        time.sleep(state["seconds"])
        self.__dict__.update(state)

    def __call__(self, x):
        return quad(x)


@pytest.mark.slow
def test_a_shards_timeout_starts_once_the_oracle_is_loaded():
    """The clock counted the unpickling, so an oracle slower to load than the limit never ran
    (and every retry on a fresh worker paid the load again)."""
    with JoblibExecutor(2, timeout=0.5) as ex:
        for _ in range(2):
            est = zo.estimate_gradient(SlowToLoad(1.2), np.ones(6), zo.CGE(), executor=ex)
            np.testing.assert_allclose(est.grad, _serial(6))


@pytest.mark.slow
def test_an_oracle_that_never_loads_times_out_saying_so(monkeypatch):
    import zoracle._executors_core as core

    monkeypatch.setattr(core, "LOAD_S", 1.0)
    with JoblibExecutor(1, timeout=0.3) as ex:
        t0 = time.perf_counter()
        with pytest.raises(ShardTimeout, match=r"did not finish loading the oracle \(unpickling it\) within 1 s"):
            zo.estimate_gradient(SlowToLoad(30.0), np.ones(4), zo.CGE(), executor=ex)
        assert time.perf_counter() - t0 < 6.0


_EXIT_AFTER_TIMEOUT = """
import time
import numpy as np
import zoracle as zo
from zoracle.executors import JoblibExecutor, ShardTimeout

zo.executors.EXIT_WAIT = 0.5  # the exit's wait for the hung thread, 5 s by default: the 60 s call outlasts both

def hang(x):
    if x[5] != 0:
        time.sleep(60)  # a deadlocked call
    return float(x @ x)

with JoblibExecutor(2, backend="threading", timeout=0.3) as ex:
    try:
        zo.estimate_gradient(hang, np.zeros(8), zo.CGE(), executor=ex)
    except ShardTimeout:
        print("timed out", flush=True)
"""


def test_a_script_exits_after_a_threading_timeout(tmp_path):
    """The thread left inside the hung call was a ThreadPoolExecutor thread, which the
    interpreter joins at exit: the script hung until the call returned."""
    script = tmp_path / "exit_after_timeout.py"
    script.write_text(_EXIT_AFTER_TIMEOUT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(zo.__file__))]
                                                       + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        out, _ = proc.communicate(timeout=30)  # (its exit waits up to 0.5 s for the thread: EXIT_WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the script did not exit after its ShardTimeout (a non-daemon thread hangs in the oracle)")
    assert proc.returncode == 0 and "timed out" in out


_DRIVER = """
import os, sys, time
import numpy as np
import zoracle as zo
from zoracle.executors import DaskExecutor, JoblibExecutor, RayExecutor

class RecordAndHang:
    def __init__(self, folder):
        self.folder = folder
    def __call__(self, x):
        open(os.path.join(self.folder, str(os.getpid())), "w").close()
        time.sleep(120)
        return 0.0

if __name__ == "__main__":
    kind = sys.argv[2]
    if kind == "dask":  # its scratch dir goes to $TMPDIR
        ex = DaskExecutor("local:2")
    elif kind == "ray":
        ex = RayExecutor("local:2", allow_network=True, _temp_dir=sys.argv[3], include_dashboard=False)
    else:
        ex = JoblibExecutor(2)
    with ex:
        zo.estimate_gradient(RecordAndHang(sys.argv[1]), np.zeros(4), zo.CGE(), executor=ex)
"""


def _tree(pid):
    try:
        return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return [pid]


@pytest.mark.parametrize("kind", ["loky", pytest.param("dask", marks=pytest.mark.slow),
                                  pytest.param("ray", marks=pytest.mark.slow)])
def test_workers_die_with_a_sigkilled_driver(kind, tmp_path, request):
    """Workers inside an oracle call (and, for Ray, its agents) exit when the driver is SIGKILLed."""
    if kind != "loky":
        pytest.importorskip("distributed" if kind == "dask" else "ray")
    files = request.getfixturevalue("ray_env") / "orphans" if kind == "ray" else tmp_path / "tmp"
    files.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    seen = tmp_path / "pids"
    seen.mkdir()
    driver = subprocess.Popen([sys.executable, str(script), str(seen), kind, str(files)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, TMPDIR=str(files)))
    pids, tree = [], []
    try:
        end = time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < end and driver.poll() is None:
            time.sleep(0.1)
            pids = [int(p) for p in os.listdir(seen)]
        assert len(pids) == 2, "the workers never entered the oracle"
        tree = _tree(driver.pid)
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
        assert te.no_children(set(pids + tree) - {driver.pid}, timeout=15), "processes outlived the killed driver"
        if kind == "dask":  # the executor's private scratch dir went with it
            assert _emptied(files) == []
    finally:
        driver.kill()
        for pid in set(pids + tree) - {driver.pid}:  # on failure, leave nothing behind
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


_STARTING_DRIVER = """
import sys, time
import distributed
from zoracle.executors import DaskExecutor


class _Starting(distributed.LocalCluster):  # a cluster still starting when the driver is killed
    def __init__(self, *args, **kwargs):
        print(kwargs["local_directory"], flush=True)
        time.sleep(120)


if __name__ == "__main__":
    distributed.LocalCluster = _Starting
    DaskExecutor("local:1").start()
"""


@pytest.mark.slow
def test_dask_scratch_dir_goes_with_a_driver_killed_while_the_cluster_starts(tmp_path):
    """A LocalCluster takes seconds to start: a driver SIGKILLed then leaves no scratch dir."""
    pytest.importorskip("distributed")
    files = tmp_path / "tmp"
    files.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(_STARTING_DRIVER)
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env=dict(os.environ, TMPDIR=str(files),
                                                  PYTHONPATH=os.path.dirname(os.path.dirname(zo.__file__))))
    try:
        scratch = driver.stdout.readline().strip()
        assert scratch.startswith(str(files)) and os.path.isdir(scratch)
        tree = _tree(driver.pid)
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
        assert te.no_children(set(tree) - {driver.pid}, timeout=15)
        assert _emptied(files) == []
    finally:
        driver.kill()


# ----------------------------------------------------------------------------- nesting, interrupts
def test_nested_run_on_a_threading_executor_raises():
    ex = JoblibExecutor(2, backend="threading")

    def outer(x):
        return quad(x) + float(zo.estimate_gradient(quad, x, zo.CGE(), executor=ex).grad.sum())

    box = {}

    def go():
        try:
            zo.estimate_gradient(outer, np.zeros(4), zo.CGE(), executor=ex)
        except BaseException as exc:  # handed to the test thread
            box["exc"] = exc

    ex.start()
    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "a nested run deadlocked"
    ex.close()
    exc = box.get("exc")
    chain = [exc, getattr(exc, "cause", None), getattr(exc, "__cause__", None)]
    assert any(isinstance(e, NestedRunError) for e in chain), repr(exc)
    assert "inside an oracle" in str(exc)


def test_nested_run_on_threads_raises_nested_run_error_itself():
    """executors.md: a nested run "raises NestedRunError ... as on threads"; on threads it
    reached the caller as an OracleError (cause NestedRunError), which `except NestedRunError`
    does not catch, where a process executor raises NestedRunError itself."""
    with JoblibExecutor(2, backend="threading") as ex:
        def outer(x):
            return float(zo.estimate_gradient(quad, x, zo.CGE(), executor=ex).loss)

        with pytest.raises(NestedRunError, match="inside an oracle"):
            zo.estimate_gradient(outer, np.zeros(4), zo.CGE(), executor=ex)
        np.testing.assert_allclose(zo.estimate_gradient(quad, np.ones(4), zo.CGE(), executor=ex).grad, _serial(4))


class Nested:
    """An oracle running an inner estimate on the executor it holds."""

    def __init__(self, ex):
        self.ex = ex

    def __call__(self, x):
        return float(zo.estimate_gradient(quad, x, zo.CGE(), executor=self.ex).loss)


def test_an_oracle_holding_its_process_executor_is_a_nested_run():
    """It blamed a '_thread.lock' and advised backend='threading', which then raised
    NestedRunError: the error now says the oracle holds the executor, and the fix."""
    with JoblibExecutor(2) as ex:
        for oracle in (Nested(ex), lambda x: Nested(ex)(x)):
            with pytest.raises(NestedRunError, match="holds the JoblibExecutor that runs it .* SerialExecutor") as info:
                zo.estimate_gradient(oracle, np.zeros(4), zo.CGE(), executor=ex)
            assert "backend='threading'" not in str(info.value) and "_thread.lock" not in str(info.value)
        with JoblibExecutor(1) as other:  # another process executor cannot travel either
            with pytest.raises(zo.ZoracleError, match=r"holds an executor \(JoblibExecutor\).* create its executor"):
                zo.estimate_gradient(Nested(other), np.zeros(4), zo.CGE(), executor=ex)
        np.testing.assert_allclose(zo.estimate_gradient(quad, np.ones(4), zo.CGE(), executor=ex).grad, _serial(4))


def test_keyboard_interrupt_in_a_threaded_oracle_propagates():
    f = InterruptAt(3)
    with JoblibExecutor(2, backend="threading") as ex:
        with pytest.raises(KeyboardInterrupt):
            zo.estimate_gradient(f, np.zeros(8), zo.CGE(), executor=ex)
        assert f.hits == 1  # not retried
        np.testing.assert_allclose(zo.estimate_gradient(quad, np.ones(8), zo.CGE(), executor=ex).grad, _serial(8))


# ----------------------------------------------------------------------------- exposure
def _listening(pids):
    out = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.Error:
            continue
        out += [(pid, c.laddr) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def _http_status(port, path):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3).status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def test_local_dask_is_loopback_only_without_http_and_cleans_up(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the executor's scratch dir goes
    tc._by_value(sys.modules[__name__])
    me = psutil.Process()
    with DaskExecutor("local:1") as ex:
        pids = [me.pid] + [p.pid for p in me.children(recursive=True)]
        ours = _listening(pids)
        assert ours and all(addr.ip in ("127.0.0.1", "::1") for _, addr in ours), ours
        scheduler = ex.cluster.scheduler.http_server.port
        workers = list(ex.client.run(lambda dask_worker: dask_worker.http_server.port).values())
        for port in [scheduler] + workers:
            assert port != 8787
            # "/" and "/status": Dask's dashboard where bokeh is installed, its "needs bokeh" page where not
            for path in ("/info", "/json/identity.json", "/eventstream", "/health", "/", "/status"):
                assert _http_status(port, path) != 200, f"port {port} serves {path}"
        scratch = list(ex.client.run(lambda dask_worker: dask_worker.local_directory).values())
        assert scratch and all(s.startswith(str(tmp_path)) for s in scratch)
        est = zo.estimate_gradient(quad, np.ones(4), zo.CGE(), executor=ex)
        np.testing.assert_allclose(est.grad, _serial(4))
    assert os.listdir(tmp_path) == [], "the local cluster left files behind"


def test_local_dask_threads_serve_no_dashboard(tmp_path, monkeypatch):
    """processes=False: in-process workers (no host to bind) serve no dashboard either."""
    pytest.importorskip("distributed")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with DaskExecutor("local:1", processes=False) as ex:
        ours = _listening([os.getpid()])
        assert ours and all(addr.ip in ("127.0.0.1", "::1") for _, addr in ours), ours
        ports = [ex.cluster.scheduler.http_server.port] + [w.http_server.port for w in ex.cluster.workers.values()]
        for port in ports:
            for path in ("/", "/status", "/info", "/health"):
                assert _http_status(port, path) != 200, f"port {port} serves {path}"
        est = zo.estimate_gradient(quad, np.ones(4), zo.CGE(), executor=ex)
        np.testing.assert_allclose(est.grad, _serial(4))


def test_ray_local_session_needs_allow_network(ray_env):
    import ray

    ex = RayExecutor("local:1", _temp_dir=str(ray_env))
    try:
        with pytest.raises(zo.ArgumentError, match="allow_network=True"):
            ex.start()
        assert not ray.is_initialized()
    finally:
        ex.close()
    with pytest.raises(zo.ArgumentError, match="allow_network"):
        RayExecutor("local", allow_network="yes")


def test_ray_allow_network_takes_numpy_booleans_as_every_flag_does(ray_env):
    """`allow_network` alone checked isinstance(v, bool): np.True_ (a flag read from an array or a
    config through NumPy) was refused as "must be True or False, got np.True_"; check_flag's other
    flags (TorchOracle's update_stats, train's progress) take it."""
    assert RayExecutor("local", allow_network=np.True_).allow_network is True
    assert RayExecutor("local", allow_network=np.False_).allow_network is False
    with pytest.raises(zo.ArgumentError, match="`allow_network` must be True or False, got 1"):
        RayExecutor("local", allow_network=1)


@pytest.mark.timeout(180)
@pytest.mark.slow  # (a cluster start: run in CI's slow suite, keeping the default run under 10 min loaded)
def test_ray_local_session_files_are_private(ray_env):
    """Ray makes its temp dir and the session's sockets/ and logs/ world-writable (0777): the
    private temporary directory must keep other users from reaching them."""
    import ray

    tc._by_value(sys.modules[__name__], ray=True)
    with RayExecutor("local:1", allow_network=True, log_to_driver=False) as ex:
        est = zo.estimate_gradient(quad, np.ones(4), zo.CGE(), executor=ex)
        np.testing.assert_allclose(est.grad, _serial(4))
        sockets = os.path.join(ray._private.worker._global_node.get_session_dir_path(), "sockets")
        assert os.path.isdir(sockets)
        chain, d = [], sockets
        while d != os.path.dirname(d):
            chain.append((d, oct(os.stat(d).st_mode & 0o777)))
            d = os.path.dirname(d)
        # another user reaches the sockets unless some folder on the way denies them entry (o-x)
        assert any(os.stat(p).st_mode & 0o001 == 0 for p, _ in chain), chain
    assert not ray.is_initialized()


def test_ray_local_session_refuses_to_start_without_token_auth(ray_env, monkeypatch):
    """RAY_AUTH_MODE=disabled (what Ray's own banner offers) started a session listening on
    every interface with no authentication, silently: a client without a token connected."""
    import secrets

    import ray

    token = ray_env / "auth_token"  # as after any earlier session: Ray then starts without complaint
    if not token.exists():  # a random one, as Ray's: the run's later sessions (on every interface) use it
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ex = RayExecutor("local:1", allow_network=True, _temp_dir=str(ray_env))
    try:
        with pytest.raises(zo.ArgumentError, match="RAY_AUTH_MODE=disabled"):
            ex.start()
        assert not ray.is_initialized()
    finally:
        ex.close()


def test_the_token_auth_refusal_test_leaves_no_guessable_token(tmp_path, monkeypatch):
    """The test above wrote "0" * 64 as Ray's auth token where no session had made one yet (run
    alone or with -k): the later local sessions of the run, which listen on every interface, took
    that token. Run in two fresh folders, it leaves two different private tokens."""
    pytest.importorskip("ray")
    tokens = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir(mode=0o700)
        test_ray_local_session_refuses_to_start_without_token_auth(folder, monkeypatch)
        token = folder / "auth_token"
        assert oct(token.stat().st_mode & 0o777) == "0o600"
        tokens.append(token.read_text())
    assert tokens[0] != tokens[1] and len(set(tokens[0])) > 4, tokens


# ----------------------------------------------------------------------------- lost Dask inputs
@pytest.mark.slow
def test_dask_shard_whose_inputs_died_with_a_worker_is_retried(dask_dir):
    """The flaky 'already forgotten' crash: Dask's memory manager may keep a scattered oracle
    on one worker only; when that worker dies the scheduler forgets it and cancels every
    shard that needs it. Those shards are lost work to retry, not a crash."""
    gen = tc.dask_cluster(dask_dir)
    ex = next(gen)
    try:
        x = np.arange(6.0)
        ref = zo.estimate_gradient(tc._loss, x, zo.CGE())
        te.assert_same(zo.estimate_gradient(tc._loss, x, zo.CGE(), executor=ex), ref)
        (fut,) = ex._futs.values()
        victim, keep = sorted(ex.client.who_has(fut)[fut.key])
        pid = ex.client.run(os.getpid, workers=[victim])[victim]

        def drop(dask_scheduler, key=fut.key, addr=keep):
            dask_scheduler.request_remove_replicas(addr, [key], stimulus_id="zoracle-test")

        ex.client.run_on_scheduler(drop)  # what the memory manager does on its own
        end = time.monotonic() + 10
        while ex.client.who_has(fut)[fut.key] != (victim,) and time.monotonic() < end:
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        got = zo.estimate_gradient(tc._loss, x, zo.CGE(), executor=ex)
        te.assert_same(got, ref)
    finally:
        next(gen, None)


# ----------------------------------------------------------------------------- unclear errors
_UNGUARDED = """
import numpy as np
import zoracle as zo
from zoracle.executors import DaskExecutor

with DaskExecutor("local:2", local_directory={d!r}) as ex:
    print(zo.estimate_gradient(lambda x: float(x @ x), np.ones(3), zo.CGE(), executor=ex).grad)
"""


def test_dask_in_a_script_without_main_guard_is_one_clear_error(tmp_path):
    pytest.importorskip("distributed")
    script = tmp_path / "unguarded.py"
    script.write_text(_UNGUARDED.format(d=str(tmp_path / "scratch")))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert 'if __name__ == "__main__"' in run.stderr and "line 6" in run.stderr
    assert len(run.stderr.splitlines()) < 20, run.stderr
    assert run.stderr.count("Traceback") == 1


def test_dask_local_threads_need_no_main_guard(tmp_path):
    """``DaskExecutor("local:2", processes=False)`` runs its workers as threads of this process,
    which re-import nothing: an unguarded script was refused with "starts worker processes that
    re-import" it (distributed itself runs it). It runs now, with the serial estimate."""
    pytest.importorskip("distributed")
    script = tmp_path / "unguarded_threads.py"
    script.write_text(_UNGUARDED.format(d=str(tmp_path / "scratch"))
                      .replace('"local:2", ', '"local:2", processes=False, ')
                      .replace(".grad)", ".grad.tolist(), zo.estimate_gradient(lambda x: float(x @ x), np.ones(3), "
                                         "zo.CGE()).grad.tolist())"))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    got, serial = (np.array(eval(v)) for v in run.stdout.strip().splitlines()[-1].replace("] [", "]|[").split("|"))
    np.testing.assert_array_equal(got, serial)
    assert np.allclose(got, 2.0, atol=1e-2)


@pytest.mark.slow
def test_a_dask_executor_left_open_closes_at_exit_without_an_error_log(tmp_path):
    """A script that never closes its ``DaskExecutor("local:2")``: distributed's own atexit
    handlers stopped the workers first, and the scheduler logged "ERROR - Removing worker ...
    caused the cluster to lose scattered data, which can't be recovered" for the oracle copies,
    at every normal exit. Closed at exit now, as a ``with`` block closes it: nothing logged."""
    pytest.importorskip("distributed")
    script = tmp_path / "left_open.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        import zoracle as zo
        from zoracle.executors import DaskExecutor

        if __name__ == "__main__":
            ex = DaskExecutor("local:2", local_directory={str(tmp_path / "scratch")!r})
            print(zo.estimate_gradient(lambda x: float(x @ x), np.ones(3), zo.CGE(), executor=ex).nfev)
    """))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.split() == ["4"], run.stderr
    assert "ERROR" not in run.stderr and "scattered data" not in run.stderr, run.stderr


def test_dask_in_a_script_read_from_stdin_is_one_clear_error(tmp_path):
    """``python - < script.py``: every nanny failed to re-import ``<stdin>`` (75 lines, "Nanny
    failed to start"); one error now, naming the fix."""
    pytest.importorskip("distributed")
    guarded = _UNGUARDED.format(d=str(tmp_path / "scratch")).replace("\nwith ", "\nif __name__ == '__main__':\n  with ")
    guarded = guarded.replace("\n    print(", "\n      print(")
    run = subprocess.run([sys.executable, "-"], input=guarded, capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert run.returncode != 0
    assert "read from <stdin>" in run.stderr and "python -c" in run.stderr, run.stderr
    assert run.stderr.count("Traceback") == 1 and len(run.stderr.splitlines()) < 20, run.stderr


def test_a_packages_main_module_is_not_read_as_an_unguarded_script(tmp_path):
    """`python -m zoracle demo --dask local:2` was refused ("re-import __main__.py, and line 5 of
    it runs outside if __name__ == '__main__'"), though spawn never runs a package's __main__
    again (the `zoracle` entry point ran it). A package's __main__ is exempt; so is zoracle's
    own, guarded now; a script's unguarded line still counts."""
    pkg = tmp_path / "zrun"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text("from zoracle._cluster_common import unguarded_main_line\n"
                                     "print(unguarded_main_line())\n")
    out = subprocess.run([sys.executable, "-m", "zrun"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.stdout.split() == ["None"], out.stderr
    out = subprocess.run([sys.executable, str(pkg / "__main__.py")], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["2"], out.stderr  # run as a script, the same line is unguarded
    import ast
    import pathlib

    import zoracle

    main = ast.parse(pathlib.Path(zoracle.__file__).with_name("__main__.py").read_text())
    assert all(isinstance(node, (ast.Import, ast.ImportFrom, ast.If)) for node in main.body)


def test_main_guard_detection_accepts_guarded_code(tmp_path):
    from zoracle._cluster_common import unguarded_main_line

    body = textwrap.dedent("""
        import sys
        from zoracle._cluster_common import unguarded_main_line
        def main():
            return unguarded_main_line()
        if sys.argv[1] == "top":
            print(main())
        if __name__ == "__main__":
            print(main())
    """)
    script = tmp_path / "s.py"
    script.write_text(body)
    out = subprocess.run([sys.executable, str(script), "top"], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["7", "None"], out.stderr
    assert unguarded_main_line() is None  # under pytest: not a script's top level


class _BatchedSlowOnce:
    """A batched serial oracle (``batch``: 4 rows a call): one slow call (at coordinate 3), then fast."""

    max_queries_per_call = 4

    def __init__(self, x0, slow):
        self.x0, self.slow, self.rows = x0, slow, 0

    def __call__(self, x):
        return float(self.batch(np.asarray(x)[None])[0])

    def batch(self, P):
        P = np.asarray(P)
        self.rows += len(P)
        if self.slow and (P[:, 3] != self.x0[3]).any():
            time.sleep(self.slow)
        return P @ np.arange(1.0, P.shape[1] + 1)


@pytest.mark.slow
def test_a_serial_timeout_stops_the_abandoned_shard_of_a_batched_oracle_too():
    """The abandoned shard's thread makes no further query through the oracle's ``batch`` method
    either (an attribute of the oracle, not a call of it): only the rows up to the slow call."""
    d = 40
    x0 = np.linspace(0.1, 1.0, d)
    oracle = _BatchedSlowOnce(x0, slow=1.3)
    ex = SerialExecutor(timeout=1.0)
    with pytest.raises(ShardTimeout):
        zo.estimate_gradient(oracle, x0, zo.CGE(), executor=ex)
    time.sleep(1.0)  # the slow call (already inside the oracle, it cannot be stopped) ends
    assert oracle.rows == 1 + 4  # the base point, then the slow call's 4 rows; not the other 36


def test_ctrl_c_stops_the_serial_timeout_thread_before_the_next_estimate():
    """Ctrl-C during a SerialExecutor(timeout=...) estimate: the helper thread went on through the
    rest of its task (every coordinate), querying the oracle beside the caller's next estimate
    (or the resume of a ``zo.train`` run) after the KeyboardInterrupt reached the caller: an
    oracle with a scratch buffer then gave that estimate a wrong gradient."""
    # SIGINT's handler set in the child: a child of a background job inherits SIGINT ignored
    code = textwrap.dedent("""
        import os, signal, threading, time, json
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import numpy as np, zoracle as zo
        from zoracle.executors import SerialExecutor

        class Scratch:  # made for serial use: writes a buffer, then reads it
            def __init__(self, d):
                self.buf, self.calls, self.kick = np.zeros(d), 0, None
            def __call__(self, x):
                self.calls += 1
                if self.calls == self.kick:
                    os.kill(os.getpid(), signal.SIGINT)
                np.multiply(x, np.arange(1.0, x.size + 1), out=self.buf)
                time.sleep(0.005)  # between writing the buffer and reading it
                return float(self.buf.sum())

        d = 40
        x0 = np.linspace(0.1, 1.0, d)
        oracle = Scratch(d)
        oracle.kick = 5
        ex = SerialExecutor(timeout=60)
        try:
            zo.estimate_gradient(oracle, x0, zo.CGE(), executor=ex)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        at = oracle.calls
        end = time.monotonic() + 30  # the helper thread: its call in flight ends, then it must stop
        while time.monotonic() < end and any(t.name == "zoracle-serial" for t in threading.enumerate()):
            time.sleep(0.01)
        after = oracle.calls - at
        est = zo.estimate_gradient(oracle, x0, zo.CGE(), executor=ex)
        print(json.dumps({"interrupted": interrupted, "after": after,
                          "err": float(np.max(np.abs(est.grad - np.arange(1.0, d + 1))))}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["interrupted"], out
    assert out["after"] <= 1, out  # at most the call in flight when Ctrl-C came (41 queries in all)
    assert out["err"] < 1e-4, out


@pytest.mark.parametrize("processes", [True, False])
def test_local_dask_workers_have_no_dashboard_and_what_you_pass_is_kept(tmp_path, monkeypatch, processes):
    """A worker's dashboard needs bokeh to serve anything (its /status where bokeh is installed),
    so HTTP answers alone do not show it here: the workers are asked whether they started one. A
    dashboard_address, scheduler_kwargs or worker_class of your own is kept as you passed it."""
    distributed = pytest.importorskip("distributed")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with DaskExecutor("local:1", processes=processes) as ex:
        if processes:
            flags = list(ex.client.run(lambda dask_worker: dask_worker._dashboard).values())
        else:
            flags = [w._dashboard for w in ex.cluster.workers.values()]
        assert flags == [False]
        if _have_bokeh():
            for port in [w for w in _worker_http_ports(ex, processes)]:
                assert _http_status(port, "/status") != 200
    if processes:
        return

    class Mine(distributed.Worker):
        pass

    with DaskExecutor("local:1", processes=False, worker_class=Mine, scheduler_kwargs={"idle_timeout": "1h"}) as ex:
        assert [type(w) for w in ex.cluster.workers.values()] == [Mine]
        assert ex.cluster.scheduler.idle_timeout == 3600
    with DaskExecutor("local:1", processes=False, dashboard_address="127.0.0.1:0") as ex:
        # the dashboard asked for: Dask's page (its "needs bokeh" one where bokeh is missing)
        assert _http_status(ex.cluster.scheduler.http_server.port, "/") == 200


def _have_bokeh():
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


def _worker_http_ports(ex, processes):
    if processes:
        return list(ex.client.run(lambda dask_worker: dask_worker.http_server.port).values())
    return [w.http_server.port for w in ex.cluster.workers.values()]


@pytest.mark.slow  # (a cluster start: run in CI's slow suite, keeping the default run under 10 min loaded)
def test_ray_local_session_takes_token_auth_mode_in_any_case(ray_env, monkeypatch):
    """Ray reads RAY_AUTH_MODE without regard to case (TOKEN is token authentication, as Ray's own
    get_authentication_mode says): such a session starts and runs."""
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "TOKEN")
    try:  # the [ray] extra's floor, Ray 2.10, has no token authentication (nor this module)
        from ray._private.authentication.authentication_utils import get_authentication_mode
    except ImportError:
        pass
    else:
        assert get_authentication_mode() == ray._raylet.AuthenticationMode.TOKEN  # the reference: Ray's own reading
    tc._by_value(sys.modules[__name__], ray=True)
    with RayExecutor("local:1", allow_network=True, log_to_driver=False) as ex:
        est = zo.estimate_gradient(quad, np.ones(4), zo.CGE(), executor=ex)
        np.testing.assert_allclose(est.grad, _serial(4))
    assert not ray.is_initialized()


def _emptied(folder, timeout: float = 10.0) -> list:
    """``folder``'s entries once it is empty, or after ``timeout`` s (a killed driver's reaper works
    asynchronously)."""
    end = time.monotonic() + timeout
    while os.listdir(folder) and time.monotonic() < end:
        time.sleep(0.2)
    return os.listdir(folder)


def test_a_coordinate_oracle_perturbing_its_view_in_place_is_not_read_by_other_threads():
    """``coordinate_losses`` (and prefix / suffix) calls get read-only views of the estimate's
    parameters. An oracle that writes through one past the flag (``torch.from_numpy(params)``, the
    textbook loop: perturb a coordinate, evaluate, put the value back exactly) left no trace a seal
    could see, and under a threading executor another task's call read its perturbation meanwhile:
    a wrong gradient, silently. Here the two tasks meet at a barrier while the first holds its
    perturbation, so the second's first loss is taken then; each task now works on its own copy."""
    import threading

    met = threading.Barrier(2, timeout=20)

    class InPlace:
        max_queries_per_call = 8

        def __call__(self, x):
            x = np.asarray(x, dtype=np.float64)
            return float(0.5 * np.sum(np.arange(1, x.size + 1) * x * x))

        def coordinate_losses(self, x, coords, step):
            w = np.ndarray(x.shape, x.dtype, buffer=memoryview(x.base if x.base is not None else x).cast("B"))
            first, out = int(coords[0]), []
            for i in coords.tolist():
                old = w[i]
                w[i] = old + x.dtype.type(step)
                if i == first and first in (0, 8):
                    met.wait()  # both tasks hold their first perturbation: each loss taken now
                out.append(self(w))
                if i == first and first in (0, 8):
                    met.wait()
                w[i] = old  # put back bit for bit: no seal sees the write
                if i == first and first in (0, 8):
                    met.wait()
            return np.array(out)

    x = np.linspace(-1.0, 1.0, 16)
    want = zo.estimate_gradient(InPlace().__call__, x, zo.CGE(mu=1e-3))
    with JoblibExecutor(2, backend="threading") as ex:
        got = zo.estimate_gradient(InPlace(), x, zo.CGE(mu=1e-3), executor=ex)
    np.testing.assert_allclose(got.grad, want.grad, rtol=1e-9, atol=1e-9)
    assert (x == np.linspace(-1.0, 1.0, 16)).all()
