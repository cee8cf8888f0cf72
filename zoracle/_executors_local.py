"""Local executors: persistent worker processes (one per core or per device) and threads."""

from __future__ import annotations

import copy
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
import weakref
from concurrent.futures import FIRST_COMPLETED, Future, wait as futures_wait
from typing import Any, Literal, TypeVar

import numpy as np

from ._backend import jax_x64, to_numpy
from ._errors import ZoracleError, user_stacklevel, warn
from ._malloc import reuse_freed_memory
from ._oracle import Oracle, loss_type, precision_bits
from ._executors_speed import WorkerSpeeds
from ._plan import BaseTask, assemble, shard_tasks
from ._pickling import cloudpickle_module
from ._executors_core import (
    abandon,
    BatchMirror,
    CostModel,
    LossKind,
    NestedRunError,
    Payload,
    Registry,
    RunStats,
    StaysHere,
    WorkerState,
    batch_name,
    check_timeout,
    closed_during_run,
    error_outcome,
    pack,
    run_guarded,
    schedule,
    split_bound,
)
from ._forked import run_lock
from ._fds import socket_pair
from ._pool_threads import RUNNING as _RUNNING, run_in_thread, torch_threads
from ._reloaded import check_not_reloaded

__all__ = ["ShardedExecutor", "ProcessPool", "ThreadPool", "current_device"]

_CURRENT_DEVICE = None
_E = TypeVar("_E")  # an executor's own type, which `with` gives back


def current_device() -> Any:
    """The device of the DeviceExecutor worker running this code (None elsewhere)."""
    return _CURRENT_DEVICE


def _batch_object(fn, parent, batch):
    """What a bound oracle's batch token is kept by: the bound object, a new one for each batch;
    for a bind that rebinds in place and returns itself (its own parent: one object for every
    batch), the batch (its workers kept the first batch otherwise)."""
    return batch if fn is parent else fn


def _batch_items(batch):
    """What a batch token remembers of the batch ``unbind()`` returned: its type and its items (a
    tuple or list: an adapter may build a new one at each call around the same arrays), or itself."""
    return type(batch), (tuple(batch) if isinstance(batch, (tuple, list)) else (batch,))


def _same_bits(a, b) -> bool:
    """Whether arrays or tensors ``a`` and ``b`` hold the same bits (same type, dtype, shape and
    device): ``TorchOracle.unbind`` copies a tensor that views a larger one at every call."""
    try:
        if type(a) is not type(b) or a.dtype != b.dtype or a.shape != b.shape:
            return False
        if type(a) is np.ndarray:  # (not a subclass: a masked array's mask is not in its data)
            return np.array_equal(np.ascontiguousarray(a).reshape(-1).view(np.uint8),
                                  np.ascontiguousarray(b).reshape(-1).view(np.uint8))
        torch = sys.modules.get("torch")
        if torch is not None and torch.is_tensor(a) and a.device == b.device:
            return torch.equal(a.detach().contiguous().reshape(-1).view(torch.uint8),
                               b.detach().contiguous().reshape(-1).view(torch.uint8))
    except Exception:  # an object array, a sparse tensor: counts as another batch (sent again: never stale)
        pass
    return False


def _same_batch(seen, batch) -> bool:
    """Whether ``batch`` is the one remembered as ``seen`` (:func:`_batch_items`): the same type and
    the same items, by identity or else by content (:func:`_same_bits`)."""
    kind, items = _batch_items(batch)
    return kind is seen[0] and len(items) == len(seen[1]) and all(
        a is b or _same_bits(a, b) for a, b in zip(seen[1], items))


def _key_snapshot(oracle, key):
    """``oracle.executor_key()``'s value ``key`` frozen: its pickled bytes (cloudpickle's for what
    plain pickle cannot take, such as a class defined in a function), so that a dict or array the
    oracle changes in place later still compares with what was sent (a stored reference would
    always equal itself), and an array compares by content (``!=`` on arrays is ambiguous). A key
    neither can pickle is kept as a deep copy (or a shallow one, or as it is), compared by
    :func:`_same_key`."""
    for dumps in (pickle.dumps, lambda k, protocol: cloudpickle_module().dumps(k, protocol=protocol)):
        try:
            return dumps(key, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass
    for snapshot in (copy.deepcopy, copy.copy):
        try:
            return ("unpicklable", snapshot(key))
        except Exception:
            pass
    return ("unpicklable", key)


def _same_key(a, b) -> bool:
    """Whether two :func:`_key_snapshot` values are the same key; one that cannot be compared
    counts as changed (the oracle is sent again: slower, never stale)."""
    if isinstance(a, bytes) or isinstance(b, bytes):
        return a == b
    try:
        return bool(a == b)
    except Exception:
        return False


# ----------------------------------------------------------------------------- base class
class ShardedExecutor(StaysHere):
    """Shared ``run``: tokens, cost balancing, scheduling, reassembly (private base)."""

    n_workers: int = 1
    #: shards per worker the cost balancer aims for (more = better balance, more overhead)
    shards_per_worker: int = 3
    min_shard_s: float = 0.002  #: measured seconds of queries a shard holds at least (shard_tasks)

    def __init__(self, timeout=None):
        self._registry = Registry()
        self._bound = Registry(keep=2)
        self._keys: dict = {}  # oracle token -> its executor_key() when sent (pickled)
        self._batch_keys: dict = {}  # bound batch token -> the bound oracle's batch_key() when sent
        self._batch_seen: dict = {}  # bound batch token -> the batch unbind() returned (_batch_items)
        self._warned: set = set()  # oracle tokens warned about state their base point updates
        self._modules: dict = {}  # module name -> its __spec__ when its first oracle was sent (_reloaded)
        self._costs, self._speeds = CostModel(), WorkerSpeeds()  # seconds per query; each worker's speed
        self._lock, self._owner = run_lock(self), None  # one run at a time; the thread inside run()
        #: seconds a shard may run before :class:`ShardTimeout` (None: no limit)
        self.timeout = check_timeout(timeout)
        self.last_run: RunStats | None = None

    # context manager -----------------------------------------------------------------
    def __enter__(self: _E) -> _E:
        self.start()
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.close()
        return False

    def start(self) -> None:  # pragma: no cover - overridden
        pass

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def forget(self, oracle) -> None:
        """Drop ``oracle`` from the workers (send it again next time, e.g. after mutating it).

        A bound oracle (one whose ``unbind()`` returns ``(parent, batch)``) travels as its
        parent plus the batch: forgetting it forgets the parent, with every batch bound to it.
        """
        fn = oracle.fn if isinstance(oracle, Oracle) else oracle  # zoracle's wrapper, not a user's `fn`
        parent, batch = split_bound(fn)
        if batch is not None:
            self._bound.forget(_batch_object(fn, parent, batch))
        token = self._registry.forget(parent)
        tokens = ([token] if token is not None else []) + self._registry.forget_methods(parent)
        if tokens:
            self._dropped(tokens)

    def _dropped(self, tokens) -> None:
        pass

    def _payload(self, oracle, params) -> Payload:
        parent, batch = split_bound(oracle.fn)
        otoken, dropped = self._registry.token(parent)
        if dropped:
            self._dropped(dropped)
        key_of = getattr(parent, "executor_key", None)
        # a batch given where the oracle was made (no parent to bind it) travels inside the oracle:
        # written in place since it was sent, the oracle goes again (its workers' copies kept the old one)
        bkey_own = getattr(parent, "batch_key", None) if batch is None else None
        if callable(key_of) or callable(bkey_own):  # what workers' copies must agree on changed: send it again
            key = (_key_snapshot(parent, key_of()) if callable(key_of) else None,
                   _key_snapshot(parent, bkey_own()) if callable(bkey_own) else None)
            if otoken in self._keys and not all(map(_same_key, self._keys[otoken], key)):
                self.forget(parent)
                otoken, dropped = self._registry.token(parent)
                if dropped:
                    self._dropped(dropped)
            self._keys[otoken] = key
            held = self._registry.tokens()  # the keys of oracles the registry dropped (or forgot) go too
            for stale in [t for t in self._keys if t not in held]:
                del self._keys[stale]
        bobj = _batch_object(oracle.fn, parent, batch)
        btoken = self._bound.token(bobj)[0] if batch is not None else None
        if batch is not None:  # one bound object rebound in place to another batch: that batch goes, not the parent
            seen = self._batch_seen.get(btoken)
            if seen is not None and not _same_batch(seen, batch):
                self._bound.forget(bobj)
                btoken = self._bound.token(bobj)[0]
                seen = None
            if seen is None:
                self._batch_seen[btoken] = _batch_items(batch)
            held = self._bound.tokens()  # (only what the registry holds: a few batches, most of them its own)
            for stale in [t for t in self._batch_seen if t not in held]:
                del self._batch_seen[stale]
        bkey_of = getattr(oracle.fn, "batch_key", None) if batch is not None else None
        if callable(bkey_of):  # the batch written in place since it was sent (a reused buffer): send it again
            bkey = _key_snapshot(oracle.fn, bkey_of())  # (by content: an array or a list changed in place)
            if btoken in self._batch_keys and not _same_key(self._batch_keys[btoken], bkey):
                self._bound.forget(bobj)
                btoken = self._bound.token(bobj)[0]
            self._batch_keys[btoken] = bkey
            while len(self._batch_keys) > 2 * self._bound.keep:  # the registry keeps its last few only
                self._batch_keys.pop(next(iter(self._batch_keys)))
        return Payload(otoken, parent, btoken, batch, uuid.uuid4().hex[:16], params)

    def _backend(self, payload, oracle):  # pragma: no cover - overridden
        raise NotImplementedError

    def _pickler(self):
        """The cloudpickle module an oracle that plain pickle cannot send travels with."""
        return cloudpickle_module()

    def run(self, oracle, params, tasks) -> list:
        """Losses for every task (in task order), computed on the workers."""
        if not tasks:
            return []
        if id(self) in getattr(_RUNNING, "ids", ()) or self._owner == threading.get_ident():
            raise NestedRunError(
                f"{type(self).__name__}.run was called from inside an oracle it is running (a nested "
                "estimate_gradient / train on the same executor would deadlock); use a second executor, "
                "or SerialExecutor, inside the oracle"
            )
        with self._lock:  # one run at a time per executor
            self._owner = threading.get_ident()
            try:
                return self._run_locked(oracle, params, tasks)
            finally:
                self._owner = None

    #: workers share this process's oracle object (threads): what its calls change, the caller sees
    shares_memory = False

    def _run_locked(self, oracle, params, tasks) -> list:
        self.start()
        if not self.shares_memory:  # (emptied where the workers start anew: an oracle forgotten stays imported)
            check_not_reloaded(self._modules, split_bound(oracle.fn)[0], self._pickler())
        payload = self._payload(oracle, params)
        if (not self.shares_memory and payload.oracle_token not in self._warned
                and getattr(payload.oracle, "plain_call_updates_state", False)
                and any(isinstance(t, BaseTask) for t in tasks)):
            self._warned.add(payload.oracle_token)
            warn(
                f"{type(payload.oracle).__name__}: its plain call at the base point updates the model's own state "
                "(BatchNorm running statistics in train mode), and under this executor it runs on a worker, whose "
                "copy keeps the update: your model's statistics (what predict, checkpoints and eval mode use) stay "
                "as they were. The gradients are not affected. Use a threading executor (or none) for such a "
                "model, or update_stats=False to keep the statistics fixed", RuntimeWarning,
                stacklevel=user_stacklevel())
        shards, costs, groups, back = shard_tasks(
            tasks, self.n_workers, lambda t: self._costs.unit(payload.oracle_token, oracle.fn, t),
            per_worker=self.shards_per_worker,  # a shard's round trip is paid for seconds, not for a few us
            min_cost=self.min_shard_s if self._costs.measured(payload.oracle_token) else 0.0,
        )
        backend = self._backend(payload, oracle)

        def seen(kind):  # the losses' type a worker saw, for the warning about coarse losses
            held = getattr(oracle, "base_value", False)
            # the narrowest a worker saw: a shard of bfloat16 batch losses after the base point's np.float32
            if held is None or (held is not False and precision_bits(kind) < precision_bits(loss_type(held))):
                oracle.base_value = LossKind(kind)

        t0 = time.perf_counter()
        results, retries, busy = schedule(
            backend, shards, costs, lambda t, s: self._costs.learn(payload.oracle_token, t, s),
            timeout=self.timeout, kind_cb=seen, speeds=None if self.shares_memory else self._speeds,  # (threads: any is any)
        )
        wall = time.perf_counter() - t0
        self.last_run = RunStats(len(shards), retries, wall, busy, self.n_workers)
        return assemble(results, groups, back)


# ----------------------------------------------------------------------------- processes
#: seconds between two checks of the parent-death watchdog
WATCH_PARENT_S = 0.5


def die_with_parent(parent: int, pdeathsig: bool = True) -> None:
    """Make this process exit when ``parent`` exits, even while it is inside an oracle call.

    On Linux the kernel sends SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``;
    only when the parent started us from its main thread, since the signal follows the
    thread that forked). Everywhere, a daemon thread also polls ``os.getppid()`` and exits
    the process once it differs from ``parent`` (the driver died, SIGKILL included).
    """
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except Exception:  # no prctl (musl oddities, sandboxes): the watchdog still runs
            pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch():
        while True:
            time.sleep(WATCH_PARENT_S)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="zoracle-parent-watch", daemon=True).start()


def _worker_main(fd: int, parent: int = 0, pdeathsig: int = 0) -> None:
    """Loop of a worker process: receive ``run`` messages, answer with losses or an error.

    The first message carries the driver's ``sys.path`` and this worker's device. Workers
    are started with ``python -c`` (not multiprocessing's spawn), so the driver's
    ``__main__`` is never re-imported: scripts need no ``if __name__ == "__main__"`` guard.
    A worker exits when the driver does, even in the middle of an oracle call.
    """
    global _CURRENT_DEVICE
    from multiprocessing.connection import Connection

    driver = os.environ.pop(_DRIVER_PYTHONPATH, None)
    if driver is not None:  # zoracle is imported: the oracle's subprocesses get the driver's PYTHONPATH
        if driver:
            os.environ["PYTHONPATH"] = driver[1:]
        else:
            os.environ.pop("PYTHONPATH", None)
    if parent:
        die_with_parent(parent, bool(pdeathsig))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    conn = Connection(fd)
    try:
        _, path, device, authkey = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return
    sys.path[:] = path + [p for p in sys.path if p not in path]
    # the driver's key, as multiprocessing's spawn hands it down: an oracle holding a Manager's proxy
    # (a shared list or counter) connects to the driver's manager with it ("digest sent was rejected")
    import multiprocessing

    multiprocessing.current_process().authkey = authkey
    _CURRENT_DEVICE = device
    state = WorkerState(device)
    reuse_freed_memory()  # the worker runs the step's temporaries: keep freed memory as the driver does
    try:  # booted: from here on a shard's time is the oracle's, not Python's start-up
        conn.send_bytes(pickle.dumps(("ready", os.getpid())))
    except (EOFError, OSError):
        return
    while True:
        try:
            msg = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):  # the driver went away: exit, never linger as an orphan
            return
        except Exception as exc:  # reported (for the shard the driver sent), not a dead worker
            err = ZoracleError(f"the worker could not unpickle a message from the driver ({type(exc).__name__}: "
                               f"{exc}); please report")
            try:
                conn.send_bytes(pickle.dumps((None, error_outcome(err))))
            except (EOFError, OSError):
                return
            continue
        kind = msg[0]
        if kind == "stop":
            return
        if kind == "drop":
            state.drop(msg[1])
            continue
        _, jid, spec, task, items = msg
        try:
            if "oracle" in items or "batch" in items:  # loading may be slow (imports, weights): say when done
                try:
                    state.load(spec, **items)
                except BaseException as exc:  # reported to the driver, which decides about retries
                    conn.send_bytes(pickle.dumps((jid, error_outcome(exc))))
                    continue
                conn.send_bytes(pickle.dumps((jid, ("loaded",))))
                items = {}
            out = run_guarded(state, spec, task, **items)
            data = pickle.dumps((jid, out), protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:  # an unpicklable result must still be reported
            data = pickle.dumps((jid, ("err", RuntimeError(f"{type(exc).__name__}: {exc}"), "")))
        try:
            conn.send_bytes(data)
        except (EOFError, OSError):
            return


#: seconds an idle worker asked to stop may take to exit (its atexit handlers) before it is killed
STOP_GRACE_S = 15.0

#: seconds a worker process may take to start before its first shard is sent anyway
BOOT_S = 60.0

def usable_cpus() -> int:
    """CPUs this process may run on, as joblib/loky count them: its affinity mask and cgroup CPU
    quota (taskset, SLURM, ``docker --cpus``) and ``LOKY_MAX_CPU_COUNT``, not the machine's cores."""
    try:
        from joblib import cpu_count

        return max(1, int(cpu_count()))
    except Exception:  # pragma: no cover - joblib is a dependency
        return max(1, os.cpu_count() or 1)


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                "NUMEXPR_NUM_THREADS")

#: environment variable carrying the driver's PYTHONPATH ("=value", or "" when unset) to a worker
_DRIVER_PYTHONPATH = "ZORACLE_DRIVER_PYTHONPATH"

_CHILD = ("import sys; from zoracle._executors_local import _worker_main; "
          "_worker_main(*map(int, sys.argv[1:4]))")


def _site_dirs() -> set:
    """The site folders a child of this interpreter puts on its path by itself (after the standard library)."""
    import site

    dirs = list(site.getsitepackages()) + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    return {os.path.realpath(d) for d in dirs}


class _Proc:
    """One worker process and what the driver knows it holds."""

    def __init__(self, index: int, device, threads: int | None = None):
        from multiprocessing.connection import Connection

        self.index = index
        self.device = device
        mine, theirs = socket_pair()
        env = dict(os.environ)
        # the child must import this very zoracle, whatever its cwd
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # the driver's own value, restored in the worker once it started: the subprocesses an
        # oracle starts (a simulator in its own environment) must not inherit this folder (for
        # a pip-installed zoracle, the whole site-packages)
        env[_DRIVER_PYTHONPATH] = "=" + env["PYTHONPATH"] if "PYTHONPATH" in env else ""
        # a pip-installed zoracle's folder is a site folder, which the child has anyway, after the standard
        # library: put first, its other packages shadowed the standard library (enum34's enum: workers died)
        lead = [] if os.path.realpath(root) in _site_dirs() else [root]
        env["PYTHONPATH"] = os.pathsep.join(lead + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        if threads is not None:  # n workers x all cores each would oversubscribe the CPU
            for var in _THREAD_VARS:
                env.setdefault(var, str(threads))
        jax_x64(env)
        self.threads = threads
        main_thread = threading.current_thread() is threading.main_thread()
        argv = [str(theirs.fileno()), str(os.getpid()), str(int(main_thread))]
        # in the driver's process group: what signals the whole job (the terminal, `timeout`, `kill -- -pgid`)
        # reaches the processes its oracle started too (a session of its own left them orphaned)
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, *argv],
                                     pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self.conn = Connection(mine.detach())
        self.has: set = set()  # oracle tokens
        self.bound = BatchMirror()  # (oracle token, batch token) the worker holds
        self.params_token = None
        self.jid = None
        self.ready = False
        import multiprocessing

        self.send(("init", list(sys.path), device, bytes(multiprocessing.current_process().authkey)))

    def wait_ready(self, timeout: float = BOOT_S) -> None:
        """Block until the worker finished starting (its first message), at most ``timeout`` s.

        Shard timeouts then measure the shard, not the interpreter start-up. A worker that
        died or never answers is left to the caller's send / wait to report.
        """
        if self.ready:
            return
        try:
            if self.conn.poll(timeout):
                msg = pickle.loads(self.conn.recv_bytes())
                self.ready = msg[0] == "ready"
        except (EOFError, OSError):
            pass

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def name(self) -> str:
        dev = f", device {self.device!r}" if self.device is not None else ""
        return f"worker {self.index} (pid {self.proc.pid}{dev})"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, msg) -> None:
        try:
            data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # e.g. a batch holding a lambda: cloudpickle's output loads with pickle
            data = cloudpickle_module().dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        self.conn.send_bytes(data)

    def stop(self, grace: float = 2.0) -> None:
        try:
            if self.alive():
                self.send(("stop",))
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()
        self.conn.close()

    def kill(self) -> None:
        """SIGKILL the worker and the processes its oracle started (joblib's loky pool for sklearn's
        n_jobs: left orphaned for minutes when the worker alone was killed), then reap it."""
        tree = _descendants(self.proc.pid)
        self.proc.kill()
        _kill_all(tree)
        self.proc.wait()


def _proc_table() -> dict:
    """``{pid: (ppid, start time)}`` from /proc (Linux); empty elsewhere."""
    table = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                table[int(name)] = (int(fields[1]), fields[19])
            except (OSError, IndexError, ValueError):
                continue
    return table


def _descendants(pid: int, table: dict | None = None) -> list:
    """The processes ``pid`` started, and theirs (from ``table``, default :func:`_proc_table`);
    empty where there is no /proc."""
    kids: dict = {}
    for child, (ppid, _) in (_proc_table() if table is None else table).items():
        kids.setdefault(ppid, []).append(child)
    out, frontier = [], [pid]
    while frontier:
        for kid in kids.get(frontier.pop(), ()):
            out.append(kid)
            frontier.append(kid)
    return out


def kill_programs(dask_worker=None) -> int:
    """Run on a Dask nanny (``client.run(..., nanny=True)``): SIGKILL the processes its worker
    process started (a simulator an abandoned oracle call is waiting for), which the worker's
    restart leaves running as orphans. How many it killed."""
    pid = getattr(dask_worker, "pid", None)
    tree = _descendants(int(pid)) if pid else []
    _kill_all(tree)
    return len(tree)


def _kill_all(pids) -> None:
    """SIGKILL each of ``pids``; one already gone is passed over."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _stop_all(procs) -> None:
    for p in list(procs):  # ask all first, so they wind down in parallel
        try:
            if p.alive():
                p.send(("stop",))
        except (OSError, ValueError):
            pass
    now = time.monotonic()
    end, busy_end = now + STOP_GRACE_S, now + 2.0  # one grace for all: they were all asked at once
    try:
        for p in list(procs):
            # an idle worker asked to stop is only exiting: its atexit handlers (joblib/loky shutting down
            # the pool an oracle's n_jobs started takes 2-4 s) must not be cut off by SIGKILL
            p.stop(grace=max(0.0, (end if p.jid is None else busy_end) - time.monotonic()))
    except BaseException:  # Ctrl-C while waiting: no worker is left running with nothing left to stop it
        pending = list(procs)
        while pending:  # a second Ctrl-C inside a kill (the /proc scan) left the rest running, for good
            try:
                p = pending[0]
                if p.proc.poll() is None:
                    p.kill()
                p.conn.close()
                pending.pop(0)
            except KeyboardInterrupt:
                continue
        procs.clear()
        raise
    procs.clear()


class _ProcBackend:
    quick_abort = True  # (SystemExit replaces the busy workers: see schedule)

    def __init__(self, pool: "ProcessPool", payload: Payload):
        self.pool = pool
        self.payload = payload
        self._packed = None

    def _batch(self):
        """The bound batch, pickled once per run (by value: its class may live in ``__main__``)."""
        if self._packed is None:
            pl = self.payload
            self._packed = pack(pl.batch, "process", self.pool, batch_name(pl.oracle, pl.batch))
        return self._packed

    def workers(self):
        return self.pool._procs

    def idle(self):
        return [p for p in self.pool._procs if p.jid is None]

    def name(self, w) -> str:
        return w.name

    def submit(self, w, jid, shard) -> None:
        pl = self.payload
        values = {"oracle": lambda: self.pool._blob(pl.oracle_token, pl.oracle),
                  "batch": self._batch, "params": lambda: pl.params}
        items = {n: values[n]() for n in pl.missing(w)}
        w.wait_ready()
        w.jid = jid
        try:
            w.send(("run", jid, pl.spec, shard, items))
        except (OSError, ValueError):
            return False  # a dead worker: wait() reports it through its sentinel
        pl.delivered(w, items)
        return "oracle" in items or "batch" in items  # the worker reports when it has loaded them

    def closed(self) -> bool:
        return getattr(self.pool, "_closed", False)

    def wait(self, timeout=None):
        from multiprocessing.connection import wait as mp_wait

        busy = {p.conn: p for p in self.pool._procs if p.jid is not None}
        if not busy:
            return []
        out = []
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            # the socket's end-of-file tells a worker's death, unless a process the oracle forked
            # holds the socket open (a simulator server): then only the worker's exit code does
            left = None if end is None else max(0.0, end - time.monotonic())
            try:
                ready = mp_wait(list(busy), _DEATH_POLL_S if left is None else min(_DEATH_POLL_S, left))
                gone = [] if ready else [c for c, p in busy.items() if p.proc.poll() is not None and not c.poll()]
            except (OSError, ValueError):  # close() from another thread closed the sockets ("handle is closed")
                if self.closed():
                    return []  # schedule() sees closed() and raises its error
                raise
            if ready or gone or (left is not None and left <= _DEATH_POLL_S):
                break
        for p in (busy[c] for c in gone):
            code = p.proc.returncode
            reason = f"exit code {code}" + (f" (signal {-code})" if code < 0 else "")
            jid = p.jid
            self.pool._replace(p)
            out.append((p, jid, ("dead", reason)))
        for conn in ready:
            p = busy[conn]
            jid = p.jid
            try:
                rjid, outcome = pickle.loads(p.conn.recv_bytes())
                rjid = jid if rjid is None else rjid  # a message the worker could not unpickle
                if outcome[0] == "loaded":  # the shard itself starts now
                    out.append((p, rjid, outcome))
                    continue
                p.jid = None
                if outcome[0] == "err":  # perhaps the oracle failed to load: send it again next time
                    self.payload.undelivered(p)
                    p.send(("drop", self.payload.oracle_token))
                out.append((p, rjid, outcome))
                continue
            except (EOFError, OSError):  # the socket closed: the process is gone
                pass
            try:
                code = p.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                code = None
            reason = f"exit code {code}" + (f" (signal {-code})" if code is not None and code < 0 else "")
            self.pool._replace(p)
            out.append((p, jid, ("dead", reason)))
        return out

    def abort(self, workers, hung=True) -> None:
        """After a timeout, Ctrl-C or SystemExit (``hung``), replace the workers running shards; after an error
        elsewhere, let them finish theirs (a paid query is not cut off, the oracle not loaded again),
        dropping the answers, as threads do: those still busy after ``timeout`` (or ABORT_WAIT_S) s go."""
        finishing = []
        for p in workers:
            if p in self.pool._procs and p.jid is not None:
                if hung is True or (hung and p in hung):
                    self.pool._replace(p)
                else:
                    finishing.append(p)
        end = time.monotonic() + (self.pool.timeout or ABORT_WAIT_S)
        busy = lambda: [p for p in finishing if p in self.pool._procs and p.jid is not None]  # noqa: E731
        while busy() and time.monotonic() < end and not self.closed():  # close() stops them all
            self.wait(max(0.0, end - time.monotonic()))  # their answers are read and dropped
        for p in busy():
            self.pool._replace(p)


#: seconds between checks of busy workers' exit codes while none reports (see _ProcBackend.wait)
_DEATH_POLL_S = 0.5


class ProcessPool(ShardedExecutor):
    """Persistent worker processes, one per slot; optionally one device per slot (private)."""

    def __init__(self, n_workers: int, devices=None, timeout=None):
        if os.name == "nt":  # workers get their socket through subprocess's pass_fds, which is POSIX only
            raise ZoracleError(
                "process workers (JoblibExecutor(backend='loky'), DeviceExecutor, --workers N) need a POSIX "
                "system (Linux, macOS): on Windows use JoblibExecutor(n, backend='threading'), DaskExecutor "
                "or RayExecutor (on the command line: --dask local:N in place of --workers N)")
        super().__init__(timeout)
        self.n_workers = int(n_workers)
        self.devices = list(devices) if devices is not None else [None] * self.n_workers
        #: threads per worker for OpenMP/BLAS/torch (cores / workers, like loky); None: library default
        self.threads = max(1, usable_cpus() // self.n_workers)
        self._procs: list = []
        self._blobs: dict = {}
        self._finalizer = None
        self._pid = None  # the process that started the workers

    def start(self) -> None:
        if self._procs and self._pid != os.getpid():
            # used in a process forked off the one that started it (multiprocessing's "fork"): the
            # workers and their sockets are the parent's (children reading each other's answers hung
            # forever); let go of this process's copies, unstopped, and start workers of its own
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
            for p in self._procs:
                try:
                    p.conn.close()
                except OSError:
                    pass
            self._procs = []
        if self._procs:
            return
        self._closed = False
        self._pid = os.getpid()
        self._modules.clear()  # new workers import each module as it is now
        self._procs = [_Proc(i, dev, self.threads) for i, dev in enumerate(self.devices)]
        # interpreter exit or garbage collection must not leave workers behind
        self._finalizer = weakref.finalize(self, _stop_all, self._procs)

    def close(self) -> None:
        """Stop every worker process and wait for it to exit."""
        self._closed = True  # a run in another thread stops (see _ProcBackend.closed)
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._procs = []
        self._blobs.clear()
        self._registry.clear()
        self._bound.clear()

    @property
    def pids(self) -> list:
        """Process ids of the live workers (for monitoring and tests)."""
        return [p.pid for p in self._procs]

    def _replace(self, p) -> None:
        if getattr(self, "_closed", False) or p not in self._procs:  # closed during the run: no new worker
            return
        i = self._procs.index(p)
        try:
            p.stop(grace=0.2)
        except Exception:  # a half-dead process: the new one matters more
            pass
        self._procs[i] = _Proc(p.index, p.device, self.threads)

    def _blob(self, token, fn):
        blob = self._blobs.get(token)
        if blob is None:
            blob = self._blobs[token] = pack(fn, "process", self)
        return blob

    def _dropped(self, tokens) -> None:
        for t in tokens:
            self._blobs.pop(t, None)
            for p in self._procs:
                if t in p.has:
                    p.has.discard(t)
                    p.bound.drop(t)
                    try:
                        p.send(("drop", t))
                    except (OSError, ValueError):
                        pass

    def _backend(self, payload, oracle):
        host = to_numpy(payload.params)  # workers get NumPy; CuPy stays on the driver's GPU
        payload = Payload(payload.oracle_token, payload.oracle, payload.batch_token, payload.batch,
                          payload.params_token, np.ascontiguousarray(host))
        return _ProcBackend(self, payload)


# ----------------------------------------------------------------------------- threads
#: seconds a thread run waits, after an oracle's error, for the other threads' shards to finish
#: (without a timeout of its own) before it raises
ABORT_WAIT_S = 10.0


class _ThreadBackend:
    quick_abort = True  # (SystemExit abandons the busy threads: see schedule)

    def __init__(self, pool: "ThreadPool", oracle, params):
        self.pool = pool
        self.oracle = oracle
        self.params = params
        if pool.n_workers > 1:  # its tasks read one parameter array at once (see CoordTask.run)
            oracle.threads_share_params = True
        self.busy: dict = {}  # slot -> (jid, future)

    def workers(self):
        return list(range(self.pool.n_workers))

    def idle(self):
        return [s for s in range(self.pool.n_workers) if s not in self.busy]

    def name(self, w) -> str:
        return f"thread {w}"

    def closed(self) -> bool:
        return getattr(self.pool, "_closed", False)

    def submit(self, w, jid, shard) -> None:
        pool = self.pool._pool
        if pool is None:  # closed between schedule's check and here
            raise closed_during_run()
        # the caller's torch thread count: threadpoolctl limits it in the calling thread alone
        threads = torch_threads()
        self.busy[w] = (jid, pool.submit(run_in_thread, id(self.pool), threads, self.oracle, shard, self.params))

    def wait(self, timeout=None):
        if not self.busy:
            return []
        futs = {f: (w, jid) for w, (jid, f) in self.busy.items()}
        done, _ = futures_wait(list(futs), timeout=timeout, return_when=FIRST_COMPLETED)
        out = []
        for f in done:
            w, jid = futs[f]
            del self.busy[w]
            out.append((w, jid, f.result()))
        return out

    def abort(self, workers, hung=True) -> None:
        stuck, running = False, []
        for w in workers:  # threads cannot be killed: let them finish, drop their answers
            jid, f = self.busy.pop(w, (None, None))
            if f is not None and not f.cancel() and not f.done():
                if hung is True or (hung and w in hung):
                    stuck = True
                else:
                    running.append(f)
        if running:  # after an oracle's error: the run raises once they are done, so that nothing still
            # works on a shared model (its parameters, patched forwards) while the caller handles the error;
            # a shard that outlasts the wait (hung, with no timeout set) no longer holds the error back
            _, late = futures_wait(running, timeout=self.pool.timeout or ABORT_WAIT_S)
            stuck = stuck or bool(late)
        if stuck:  # later runs get fresh threads instead of queueing behind a hung oracle
            abandon(self.oracle)  # the threads left behind stop at their next query
            self.pool._abandon()


def _daemon_loop(jobs) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        fut, fn, args = job
        if not fut.set_running_or_notify_cancel():
            continue
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # handed to the waiting caller
            fut.set_exception(exc)
        del job, fut, fn, args  # hold nothing between jobs


def _stop_threads(jobs, n: int) -> None:
    for _ in range(n):
        jobs.put(None)


class _DaemonThreads:
    """A minimal pool of daemon threads with ``concurrent.futures`` futures.

    Not ``ThreadPoolExecutor``: its threads are joined at interpreter exit, so a thread left
    inside a hung oracle call (after a timeout) would keep the process from exiting.
    """

    def __init__(self, n: int, prefix: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        # the threads hold the queue, not the pool: a pool nobody holds (an executor never
        # closed) is collected, and its finalizer ends the threads (ThreadPoolExecutor's does)
        self._threads = [threading.Thread(target=_daemon_loop, args=(self._jobs,), name=f"{prefix}_{i}", daemon=True)
                         for i in range(n)]
        for t in self._threads:
            t.start()
        weakref.finalize(self, _stop_threads, self._jobs, n)
    def submit(self, fn, *args) -> Future:
        fut = Future()
        self._jobs.put((fut, fn, args))
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        if cancel_futures:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[0].cancel()
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for t in self._threads:
                t.join()


class ThreadPool(ShardedExecutor):
    """A pool of threads in this process sharing the caller's oracle object (private)."""

    shares_memory = True

    def __init__(self, n_workers: int, timeout=None):
        super().__init__(timeout)
        self.n_workers = int(n_workers)
        self._pool = None
        self._pid = None  # the process whose threads the pool holds

    def start(self) -> None:
        if self._pool is not None and self._pid != os.getpid():
            self._pool = None  # forked: the pool's threads stayed in the parent (its jobs were never run)
        if self._pool is None:
            self._closed = False
            self._pid = os.getpid()
            self._pool = _DaemonThreads(self.n_workers, "zoracle-worker")

    def close(self) -> None:
        self._closed = True  # a run in another thread stops (see _ThreadBackend.closed)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _abandon(self) -> None:
        """Leave a pool whose thread hangs in an oracle (after a timeout) to finish alone."""
        if self._pool is not None:
            from .executors import _leave  # waited for at exit (one inside torch there aborted: exit 134)
            _leave(*self._pool._threads)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _backend(self, payload, oracle):
        return _ThreadBackend(self, oracle, payload.params)

