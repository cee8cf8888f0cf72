"""Executors run the planner's shards: serially, or across processes, devices and clusters.

An executor is a context manager with ``n_workers`` and ``run(oracle, params, tasks) ->
list of arrays`` (one result per task, in task order); ``estimate_gradient`` and
``zoracle.train`` take one as ``executor=``. Forward parallelism (DeepZero): the gradient
is a sum of per-shard partial gradients, so sharding never changes the estimate beyond
summation order, and RGE directions are seeded per direction, not per worker.

What travels
    Each worker receives an oracle **once** (keyed by a token, the first time it runs a
    shard of it) and keeps it; per run only the parameters (once per worker), the shard
    descriptions and, for a bound data oracle, the batch travel. A bound oracle that
    defines ``unbind() -> (parent, batch)`` (with ``parent.bind(batch)`` equivalent to it)
    travels as the batch only: the parent is shipped once and re-bound on the worker.
    Oracles are recognised by identity: after mutating an oracle in place, call
    ``executor.forget(oracle)`` (or pass a new object) so workers get the new state.

Balancing
    Shards are cut by estimated cost, not by count: seconds per coordinate are measured
    from the shards workers actually ran (per oracle, per capability and per SplitOracle
    block), so the first run is balanced by count (or by a SplitOracle's optional
    ``block_costs``) and later runs by measured cost, without extra oracle queries.

Faults
    A shard whose worker dies, or whose oracle raises, is retried once on another worker
    (a process worker that died is replaced). A second failure raises: an
    :class:`~zoracle.OracleError` naming the query, the shard and the workers when the
    oracle raised, else a :class:`ShardFailed` (a ZoracleError) naming the shard and both
    causes. An exception from a worker process carries the worker's traceback, chained
    under the oracle's own exception, so that it shows the line that raised. A wrong loss
    value (NaN, wrong shape) is deterministic: it raises the
    OracleError without a retry (on JoblibExecutor and DeviceExecutor once the shards in flight
    on other workers have ended, or after ``timeout``, 10 s without one). An estimate is all-or-nothing: no partial
    gradient is returned, so parameters and optimizer state are never half-updated.

Hangs and interrupts
    Every executor takes ``timeout=`` (seconds per shard, default None: no limit). A shard
    running longer raises :class:`ShardTimeout` naming the shard and the worker (a worker
    process's clock starts once it has loaded the oracle); a worker process running it is
    killed and replaced (a thread cannot be killed: it is left to
    finish and later runs use fresh threads). Worker processes exit when the driver dies,
    even in the middle of an oracle call (a parent-death signal on Linux plus a watchdog).
    A ``KeyboardInterrupt`` raised inside an oracle propagates unchanged (no retry). Calling
    ``run`` on an executor from inside an oracle it is running raises
    :class:`NestedRunError` instead of deadlocking.

Examples
--------
>>> import numpy as np, zoracle as zo
>>> from zoracle.executors import JoblibExecutor
>>> with JoblibExecutor(2, backend="threading") as ex:
...     est = zo.estimate_gradient(lambda x: float(x @ x), np.arange(4.0), zo.CGE(), executor=ex)
>>> est.nfev
5
"""

from __future__ import annotations

import atexit
import numbers
import os
import re
import time
import weakref
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ._errors import ArgumentError
from ._executors_cluster import DaskExecutor as _Dask
from ._executors_ray import RayExecutor as _Ray
from ._cluster_common import parse_local
from ._executors_core import (
    MAX_WORKERS,
    abandon,
    NestedRunError,
    RunStats,
    ShardFailed,
    ShardTimeout,
    StaysHere,
    ToDeviceError,
    check_timeout,
    describe_task,
)
from ._executors_local import _E, ProcessPool, ThreadPool, current_device, usable_cpus

if TYPE_CHECKING:
    import argparse

__all__ = [
    "Executor",
    "SerialExecutor",
    "JoblibExecutor",
    "DeviceExecutor",
    "DaskExecutor",
    "RayExecutor",
    "RunStats",
    "ShardFailed",
    "ShardTimeout",
    "NestedRunError",
    "ToDeviceError",
    "current_device",
    "add_executor_arguments",
    "from_args",
]

BACKENDS = ("loky", "threading")

#: seconds the interpreter's exit waits, in all, for the threads left inside calls a timeout gave up on
EXIT_WAIT = 5.0

_LEFT: list = []  # weak references to those threads


def _leave(*threads) -> None:
    """Note ``threads``, left inside oracle calls a timeout gave up on, to be waited for at exit
    (those still running: a threading pool's idle ones end at once)."""
    alive = [weakref.ref(thread) for thread in threads if thread.is_alive()]
    if not alive:  # (registered once: the list is never empty again)
        return
    if not _LEFT:
        atexit.register(_wait_left)
    _LEFT[:] = [ref for ref in _LEFT if ref() is not None and ref().is_alive()] + alive


def _wait_left(limit: float | None = None) -> None:
    """Wait, up to ``limit`` seconds in all (:data:`EXIT_WAIT`), for the threads left in abandoned
    calls to return (:func:`abandon` stops each at its next query): one still inside a C++
    extension's call (torch's forward) when the interpreter finalizes aborted the process
    ("terminate called without an active exception", exit 134) after the program had reported its
    timeout. A Ctrl-C meanwhile ends the process as interrupted (SIGINT), at once: atexit printed
    its KeyboardInterrupt as a traceback and the program exited 0, as if it had finished."""
    end = time.monotonic() + (EXIT_WAIT if limit is None else limit)
    try:
        for ref in list(_LEFT):
            thread = ref()
            if thread is not None and thread.is_alive():
                thread.join(max(0.0, end - time.monotonic()))
    except KeyboardInterrupt:
        import signal
        import sys

        for stream in (sys.stdout, sys.stderr):  # (what the program printed is not lost)
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        if os.name == "posix":
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(130)  # (where SIGINT does not end a process: 128 + SIGINT, a shell's code for it)


@runtime_checkable
class Executor(Protocol):
    """What ``estimate_gradient(..., executor=...)`` needs: a worker count and a map over shards.

    ``run`` returns ``[task.run(oracle, params) for task in tasks]``, one result per task in task
    order (not in the order they complete; a result sent back as nested lists is read as its array);
    another count, or a result of another shape than its task's, raises an ``ArgumentError`` naming
    the executor. Results of equal shapes in another order cannot be told apart: they give a wrong
    estimate without an error (shards of one plan mostly share a shape)."""

    @property
    def n_workers(self) -> int:  # (read-only here: a plain attribute or a property satisfies it)
        """How many tasks run at once (the planner shards for this many)."""

    def run(self, oracle: Any, params: Any, tasks: Any) -> list[Any]:
        """``[task.run(oracle, params) for task in tasks]``, in task order."""


class SerialExecutor:
    """Runs every task in this process, in order (the default).

    Parameters
    ----------
    *args
        None taken: a positional value raises :class:`~zoracle.ArgumentError` (the other
        executors' first argument is a worker count; ``SerialExecutor(4)`` set a 4-second limit).
    timeout : float, optional (keyword only)
        Seconds a task may run; a longer one raises :class:`ShardTimeout`. With a timeout
        each task runs in a helper thread that the caller waits for (a hung oracle call cannot be
        stopped: its thread is left to finish that call in the background, and makes no further
        query, so that it never runs beside your next estimate).
    """

    n_workers = 1

    def __init__(self, *args: object, timeout: float | None = None) -> None:
        if args:  # SerialExecutor(4) set a 4-second timeout where the other executors' first argument is a worker count
            raise ArgumentError(f"SerialExecutor takes `timeout` by keyword only, got the positional {args[0]!r}: "
                                f"pass timeout={args[0]!r} for a time limit a task, or use JoblibExecutor({args[0]!r}) "
                                "for that many workers (SerialExecutor runs every task in this process)")
        self.timeout = check_timeout(timeout)
        self.last_run = None  # RunStats of the last run (every task a shard, none retried)

    def __enter__(self: _E) -> _E:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        return False

    def close(self) -> None:
        """Nothing to close (kept so that code written for any executor runs on this one too)."""

    def __repr__(self) -> str:
        return "SerialExecutor()" if self.timeout is None else f"SerialExecutor(timeout={self.timeout!r})"

    def forget(self, oracle) -> None:
        """Nothing to forget: every run uses the oracle as it is now (kept so that code written
        for any executor, ``executor.forget(oracle)`` after a change, runs on this one too)."""

    def run(self, oracle, params, tasks) -> list:
        """``[task.run(oracle, params) for task in tasks]``, in this process (see :class:`Executor`)."""
        import time

        t0 = time.perf_counter()
        if self.timeout is None:
            out = [t.run(oracle, params) for t in tasks]
        else:
            out = [self._timed(i, len(tasks), t, oracle, params) for i, t in enumerate(tasks)]
        wall = time.perf_counter() - t0
        self.last_run = RunStats(len(tasks), 0, wall, wall, 1)
        return out

    def _timed(self, i, n, task, oracle, params):
        import threading

        box = {}

        def work():
            try:
                box["ok"] = task.run(oracle, params)
            except BaseException as exc:  # re-raised in the caller's thread
                box["err"] = exc

        worker = threading.Thread(target=work, name="zoracle-serial", daemon=True)
        worker.start()
        try:
            worker.join(self.timeout)
        except BaseException:  # Ctrl-C while waiting: the rest of the task must not run beside the next call
            abandon(oracle)
            _leave(worker)
            raise
        if worker.is_alive():
            abandon(oracle)  # its thread stops at its next query, not beside the caller's next estimate
            _leave(worker)  # and is waited for at exit, a while
            err = ShardTimeout(
                f"shard {i + 1}/{n} ({describe_task(task)}) did not finish within timeout={self.timeout:g} s "
                f"on the calling process (SerialExecutor); the oracle hangs or is slower than the limit: "
                "fix the oracle or pass a larger `timeout`"
            )
            err.shard, err.worker, err.timeout = i, "the calling process", self.timeout
            raise err
        if "err" in box:
            raise box["err"]
        return box["ok"]


def _check_count(name: str, value, allow_all: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (value < 1 and not (allow_all and value == -1)):
        hint = " (or -1 for one per CPU)" if allow_all else ""
        raise ArgumentError(f"`{name}` must be an integer >= 1{hint}, got {value!r}")
    if value > MAX_WORKERS:  # 10**30 workers: accepted, and the first run hung starting them
        raise ArgumentError(f"`{name}` must be at most {MAX_WORKERS} workers, got {value!r}")
    return int(value) if value != -1 else usable_cpus()


class JoblibExecutor(StaysHere):
    """Shards across ``n_jobs`` local workers: processes (``"loky"``) or threads.

    Parameters
    ----------
    n_jobs : int
        Number of workers; ``-1`` for one per CPU.
    backend : {"loky", "threading"}
        ``"loky"``: persistent worker processes, started on ``__enter__`` (or the first
        run) and stopped on ``close``. Oracles are serialized with cloudpickle (joblib's
        loky serializer), so lambdas and closures work; each process keeps the oracles it
        received. Parameters reach workers as NumPy arrays. ``"threading"``: threads in this
        process calling the caller's own oracle object concurrently; fast to start, useful
        when the oracle releases the GIL (NumPy BLAS, torch, onnxruntime) and only for
        thread-safe oracles.
    timeout : float, optional
        Seconds a shard may run before :class:`ShardTimeout` (default: no limit). On
        ``"threading"`` a hung call's thread is left to finish that call and makes no further
        query; a process worker is replaced.

    Notes
    -----
    ``last_run`` (:class:`RunStats`) reports shards, retries, wall and busy seconds of the
    last run; ``pids`` lists the worker processes (``"loky"``).
    """

    def __init__(self, n_jobs: int = 2, backend: str = "loky", *, timeout: float | None = None) -> None:
        self.n_jobs = _check_count("n_jobs", n_jobs, allow_all=True)
        if not isinstance(backend, str) or backend not in BACKENDS:  # (an array's `in` is ambiguous, not False)
            raise ArgumentError(f"`backend` must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
        self.backend = backend
        pool = ProcessPool if backend == "loky" else ThreadPool
        self._impl = pool(self.n_jobs, timeout=timeout)

    @property
    def n_workers(self) -> int:
        """The number of workers, ``n_jobs`` resolved."""
        return self._impl.n_workers

    @property
    def last_run(self) -> RunStats | None:
        """:class:`RunStats` of the last :meth:`run` (None before the first)."""
        return self._impl.last_run

    @property
    def timeout(self) -> float | None:
        """Seconds a task may run (None: no limit)."""
        return self._impl.timeout

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (``"loky"``); this process's for ``"threading"``."""
        return self._impl.pids if self.backend == "loky" else [os.getpid()]

    def __enter__(self: _E) -> _E:
        self._impl.start()
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.close()
        return False

    def start(self) -> None:
        """Start the workers now (otherwise on ``__enter__`` or the first run)."""
        self._impl.start()

    def close(self) -> None:
        """Stop the workers (processes exit and are joined; no orphans)."""
        self._impl.close()

    def forget(self, oracle) -> None:
        """Make workers drop ``oracle`` (it is sent again, e.g. after an in-place change)."""
        self._impl.forget(oracle)

    def run(self, oracle, params, tasks) -> list:
        """``[task.run(oracle, params) for task in tasks]``, in task order, computed on the workers
        (see :class:`Executor`)."""
        return self._impl.run(oracle, params, tasks)


    def __repr__(self) -> str:
        return (f"JoblibExecutor(n_jobs={self.n_jobs}, backend={self.backend!r}"
                + ("" if self.timeout is None else f", timeout={self.timeout!r}") + ")")


class DeviceExecutor(ProcessPool):
    """One persistent worker process per device, each with its own copy of the oracle.

    Parameters
    ----------
    devices : sequence
        One entry per worker, e.g. ``["cuda:0", "cuda:1"]`` (or ``["cpu", "cpu"]``). When an
        oracle arrives on worker ``i`` and defines ``to_device(device)``, the worker queries
        ``oracle.to_device(devices[i])`` (called once per oracle; return the moved copy, or
        ``self`` when it moves in place: anything not callable raises :class:`ToDeviceError`).
        Code inside a worker can read its device with :func:`current_device`. A name no backend
        reads as one device (``"gpu"``, ``"GPU0"``, ``"cuda0"``, ``"cuda:-1"``, ``"cuda:x"``, or
        a negative index) raises :class:`~zoracle.ArgumentError` here, naming the CUDA name meant;
        any other name is for the oracle's ``to_device`` to judge.
    timeout : float, optional
        Seconds a shard may run before :class:`ShardTimeout` (default: no limit).

    Notes
    -----
    Workers are spawned processes, so each initialises its own CUDA context; parameters
    reach workers as NumPy arrays and each worker moves them to its device inside the
    oracle. Shards are balanced by measured cost, so a slower device gets less work.
    """

    def __init__(self, devices: Any, *, timeout: float | None = None) -> None:
        # a 0-d array has __len__ but len() raises; a 2-d one would be one worker with a row as its device
        if isinstance(devices, (str, bytes)) or not hasattr(devices, "__len__") or getattr(devices, "ndim", 1) != 1 \
                or len(devices) == 0:
            raise ArgumentError(
                f"`devices` must be a non-empty list such as ['cuda:0', 'cuda:1'], got {devices!r}"
            )
        bad = [d for d in devices if isinstance(d, numbers.Number) and (isinstance(d, bool) or not isinstance(d, numbers.Integral))]
        if bad:  # found only by the worker's to_device(), after the run's first shards were spent
            raise ArgumentError(f"`devices` entries must be device names or indices such as 'cuda:0' or 0, got "
                                f"{bad[0]!r} in {devices!r}")
        for d in devices:  # else torch refuses it in every worker's to_device(), after they started
            fix = _device_fix(d)
            if fix is not None:
                raise ArgumentError(f"`devices` entry {d!r} in {list(devices)!r} names no device: use {fix!r} "
                                    f"(or the index {int(fix[5:])})")
        super().__init__(len(devices), devices=list(devices), timeout=timeout)

    def __repr__(self) -> str:
        return f"DeviceExecutor({self.devices!r})"


# "gpu", "GPU0", "cuda0", "CUDA:1", "cuda:-1", "cuda:x": no backend's name for one device. Other names
# ("cpu:1", "mps", "xla:0", TensorFlow's "GPU:0", a user's own) are the oracle's to_device's to judge.
_CUDA_LIKE = re.compile(r"(cuda|gpu)\s*(\d*)\s*(?::(.*))?", re.IGNORECASE | re.ASCII)


def _device_fix(device) -> str | None:
    """The CUDA name meant by a mistaken ``device`` ("gpu" -> "cuda:0"), or None to pass it on."""
    if isinstance(device, numbers.Integral) and not isinstance(device, bool):
        return "cuda:0" if device < 0 else None
    if not isinstance(device, str):
        return None
    m = _CUDA_LIKE.fullmatch(device.strip())
    if m is None:
        return None
    kind, digits, index = m.groups()
    if kind == "cuda" and not digits and (index is None or re.fullmatch(r"0|[1-9]\d*", index, re.ASCII)) \
            and device == device.strip():
        return None  # torch's own names: "cuda", "cuda:1"
    if kind.lower() == "gpu" and not digits and index is not None:
        return None  # "gpu:0", "GPU:0": TensorFlow's and JAX's spelling
    number = digits or (index if index is not None and re.fullmatch(r"\d+", index.strip(), re.ASCII) else "0")
    return f"cuda:{int(number)}"


class DaskExecutor(_Dask):
    """Shards on a Dask cluster (``pip install -e '.[dask]'``).

    Parameters
    ----------
    client : distributed.Client, str or None
        A connected client (left open on ``close``), a scheduler address such as
        ``"tcp://10.0.0.5:8786"``, or ``"local"`` / ``"local:N"`` / None to start a
        ``LocalCluster`` with ``N`` single-threaded worker processes (default: one per CPU this
        process may use: its affinity mask and CPU quota, a batch job's CPUs rather than the
        node's), stopped on ``close``. A local cluster listens on 127.0.0.1 only, serves no dashboard
        and no HTTP routes, and keeps its scratch files in a private temporary directory
        removed on ``close``. Its workers are spawned processes that re-import the calling
        script: a script without ``if __name__ == "__main__":`` around the code that starts
        it gets a :class:`~zoracle.ZoracleError` saying so, before anything starts.
    n_workers : int, optional
        Workers of the local cluster (overrides ``local:N``); refused beside any other
        ``client``, whose cluster runs the shards on its own workers.
    timeout : float, optional
        Seconds a shard may run before :class:`ShardTimeout` (default: no limit). The
        worker left running it (Dask's cancel does not stop a running task) is restarted
        by its nanny; a worker without a nanny gets no more shards, with a warning.
    **cluster_kwargs
        Passed to ``distributed.LocalCluster`` for a local cluster (their names are checked
        against it and its workers' at construction; with any other ``client`` they are
        refused, as they would be ignored).

    Notes
    -----
    The oracle is scattered once to every worker (``broadcast=True``) and stays in worker
    memory; per run the parameters are broadcast once and each shard carries only its
    description. Dask itself reschedules a shard whose worker dies; when the scheduler
    forgot a shard's inputs with the dead worker, they are sent again and the shard is
    retried (once) like any lost shard. zoracle retries a shard that raised once more on
    another worker. Workers with several threads run shards of their one copy of the
    oracle concurrently, so give them thread-safe oracles (a local cluster started here
    has one thread per worker process).
    """


class RayExecutor(_Ray):
    """Shards on Ray actors, one per worker (``pip install -e '.[ray]'``).

    Parameters
    ----------
    address : str or None
        None, ``"local"`` or ``"local:N"``: start Ray on this machine (no dashboard, ``N``
        CPUs, default those this process may use, as DaskExecutor counts them) and shut it
        down on ``close``; otherwise the address of a running cluster (``"auto"``,
        ``"ray://host:10001"``). An already initialised Ray session is reused and left running.
        An address with a port must accept a TCP connection within 30 s (tried each half
        second) before ``ray.init``: where nothing does, ``ConnectionError`` (a
        :class:`~zoracle.ZoracleError`) names it (Ray tried a refused address for more than 10 minutes).
    n_workers : int, optional
        Number of actors (default: the cluster's CPU count).
    allow_network : bool
        Ray cannot bind a local session to loopback: its GCS server, raylet and workers
        listen on every interface. Starting one therefore raises
        :class:`~zoracle.ArgumentError` unless ``allow_network=True``. The session then runs
        with token authentication, its auth token file mode 0600, and its files in a private
        temporary directory removed on ``close``. On Linux a small watchdog process kills
        the session's processes (Ray's agents otherwise outlive it) and removes that
        directory if the driver dies without closing, e.g. on SIGKILL.
    timeout : float, optional
        Seconds a shard may run before :class:`ShardTimeout` (default: no limit); the actor
        running it is killed and replaced.
    **init_kwargs
        Passed to ``ray.init``, e.g. ``_temp_dir=os.path.join(tempfile.mkdtemp(dir="/tmp"), "r")``
        to choose where Ray keeps its session files (sockets, logs); Ray limits socket paths to
        about 100 characters, so keep that directory short (``$TMPDIR`` can be too long for it:
        macOS's ``/var/folders/.../T/``). Ray makes that directory, and
        every one it creates there, writable by everyone: put it inside a folder only you can
        enter (``tempfile.mkdtemp()`` makes one), never directly in ``/tmp``.

    Notes
    -----
    Each actor keeps the oracles it received (``ray.put`` once, sent to an actor the first
    time it runs a shard of that oracle) and the parameters of the current run. A dead
    actor is replaced and its shard retried on another one.
    """


# ----------------------------------------------------------------------------- CLI
def add_executor_arguments(parser) -> None:
    """Add ``--workers N``, ``--dask ADDRESS``, ``--ray ADDRESS``, ``--allow-network`` and
    ``--shard-timeout SECONDS`` to ``parser``, an ``argparse.ArgumentParser`` (read back by
    :func:`from_args`)."""
    group = parser.add_argument_group("parallelism (pick at most one)")
    group.add_argument("--workers", type=int, default=1, metavar="N",
                       help="evaluate shards in N local worker processes (default 1: serial; at most 8 per core)")
    group.add_argument("--dask", default=None, metavar="ADDRESS",
                       help="run shards on a Dask scheduler at ADDRESS (tcp://host:8786), "
                            "or 'local' / 'local:N' for a loopback-only local cluster")
    group.add_argument("--ray", default=None, metavar="ADDRESS",
                       help="run shards on a Ray cluster at ADDRESS ('auto', ray://host:10001), "
                            "or 'local' / 'local:N' to start Ray here (needs --allow-network)")
    group.add_argument("--allow-network", action="store_true",
                       help="let --ray local start a Ray session that listens on every interface "
                            "(Ray cannot bind to loopback; token auth stays on)")
    group.add_argument("--shard-timeout", dest="timeout", type=float, default=None, metavar="SECONDS",
                       help="fail a shard that runs longer than SECONDS (default: no limit)")


def from_args(args: argparse.Namespace) -> JoblibExecutor | DaskExecutor | RayExecutor | None:
    """The executor the parsed ``args`` ask for (a context manager), or None for serial.

    Raises :class:`~zoracle.ArgumentError` when more than one of ``--workers N`` (N > 1),
    ``--dask`` and ``--ray`` is given, or when N (or a ``local:N`` cluster's N) is below 1 or
    above 8 per core.
    """
    workers = getattr(args, "workers", 1)
    dask = getattr(args, "dask", None)
    ray = getattr(args, "ray", None)
    timeout = check_timeout(getattr(args, "timeout", None), "--shard-timeout")
    if workers is None:
        workers = 1
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise ArgumentError(f"--workers must be an integer >= 1, got {workers!r}")
    most = 8 * (os.cpu_count() or 1)
    if workers > most:  # (100000 started processes for hours before the first query)
        raise ArgumentError(f"--workers must be at most {most} (8 per core on this machine), got {workers}")
    chosen = [name for name, on in (("--workers", workers > 1), ("--dask", dask), ("--ray", ray)) if on]
    if len(chosen) > 1:
        raise ArgumentError(f"pick one of --workers, --dask, --ray; got {' and '.join(chosen)}")
    if getattr(args, "allow_network", False) and not ray:
        raise ArgumentError("--allow-network lets --ray start a local Ray session; without --ray it does nothing: "
                            "drop it, or add --ray local")
    for flag, value in (("--dask", dask), ("--ray", ray)):
        if value is not None:
            if not str(value).strip():
                raise ArgumentError(f"{flag} needs an address (or 'local'), got an empty string")
            n = parse_local(value, flag)[1]  # validates 'local:N'
            if n is not None and n > most:  # a local cluster of N worker processes, as --workers N
                raise ArgumentError(f"{flag} local:N must have N at most {most} (8 per core on this machine), got {n}")
    if getattr(args, "allow_network", False) and ray and not parse_local(ray, "--ray")[0]:  # (taken, and ignored)
        from ._errors import shown_address

        raise ArgumentError(f"--allow-network lets --ray local start a Ray session; --ray {shown_address(ray)} joins a "
                            "running cluster, where it does nothing: drop it")
    if dask:
        return DaskExecutor(dask, timeout=timeout)
    if ray:
        allow = bool(getattr(args, "allow_network", False))
        if parse_local(ray, "--ray")[0] and not allow:  # refused now, not after the data has loaded
            raise ArgumentError(f"--ray {ray} would start a local Ray session whose servers listen on every network "
                                "interface (Ray cannot bind them to 127.0.0.1); add --allow-network to accept that, or "
                                "use --dask local / --workers N, which stay on loopback")
        return RayExecutor(ray, allow_network=allow, timeout=timeout)
    if workers > 1:
        return JoblibExecutor(workers, backend="loky", timeout=timeout)
    return SerialExecutor(timeout=timeout) if timeout is not None else None
