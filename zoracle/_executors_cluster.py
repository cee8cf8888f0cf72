"""Cluster executors: Dask (``distributed``) and Ray, imported only when one is created."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import sys
import tempfile
import threading
import uuid

import numpy as np

from ._backend import to_numpy
from ._errors import ArgumentError, ZoracleError, hide_credentials, shown_address, warn
from ._executors_core import (
    KEEP_ORACLES,
    Payload,
    WorkerState,
    batch_name,
    closed_during_run,
    error_outcome,
    pack,
    run_task_guarded,
    unless_closed,
)
from ._executors_local import ShardedExecutor, _descendants, _kill_all, kill_programs, usable_cpus
from ._forked import ForkSafeLock
from ._cluster_common import (_import, _require, _stop_reaper, check_main_guard, parse_local, start_reaper,
                              worker_count)

__all__ = ["DaskExecutor"]


# ----------------------------------------------------------------------------- Dask
#: parameter vectors up to this size travel inside each shard instead of being scattered
_INLINE_BYTES = 1 << 20
#: seconds to wait for an abandoned worker to be restarted (killed, and its replacement up)
_RESTART_S = 30.0
_DASK_STATE = WorkerState(keep=KEEP_ORACLES)  # every shard brings its oracle: a bounded cache
_DASK_LOCK = ForkSafeLock()
#: a broadcast checks every this many seconds whether a worker left, and is given up (and tried
#: again) this many seconds after one did
_BROADCAST_POLL_S = 1.0
_BROADCAST_GRACE_S = 3.0


def _dask_workers(client) -> dict:
    """Every worker's info (address -> dict), asked of the scheduler itself.

    Not ``client.scheduler_info()``: it returns the client's cached identity, which a
    periodic refresh on the client's event loop overwrites with a summary that lists no
    workers, so now and then it answers that the cluster has none.
    """
    import inspect

    # Scheduler.identity takes a count since distributed 2025, as Client.scheduler_info does; an
    # older scheduler refuses it and logs an ERROR with its traceback for each such call (in this
    # process, for a local cluster): the count is asked for only by a client that knows it
    try:
        counted = "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        counted = True
    try:
        if not counted:
            raise TypeError
        info = client.sync(client.scheduler.identity, n_workers=-1)
    except TypeError:  # a scheduler whose identity takes no count lists every worker
        info = client.sync(client.scheduler.identity)
    return dict(info.get("workers") or {})


def _close_half_made(exc, client_class) -> None:
    """Close the Client whose constructor raised ``exc``: distributed starts its event-loop thread
    before it connects, and a bad address left that thread running and the Client unclosed, in a
    reference cycle. Its close in ``Client.__del__``, run by whichever thread collected it, waited
    on LoopRunner's lock: in a later Client's new loop thread, whose start holds it, for 10 s."""
    tb = exc.__traceback__
    while tb is not None:
        frame, tb = tb.tb_frame, tb.tb_next
        client = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
        if isinstance(client, client_class):
            try:
                client.close()
            except Exception:  # the constructor's own error is the one to report
                pass
            return


def _broadcast(client, data):
    """``client.scatter(data, broadcast=True)``, given up when a worker leaves during it.

    The scheduler's replicate() fixes the workers it copies to when it starts: one that dies
    during the copy was tried again and again, 30 s (the connect timeout) a time, forever, and the
    scatter never returned. Here a scatter still going a few seconds after one of the workers at
    its start left is abandoned: its key is released (which ends the scheduler's loop) and a
    ConnectionError raised, which the caller tries again on the workers left.
    """
    import concurrent.futures
    import time
    import uuid

    key = f"zoracle-input-{uuid.uuid4().hex}"
    listed = isinstance(data, list)  # [one value] -> [future]; a value -> its future
    try:
        before = set(_dask_workers(client))
    except Exception:  # the scatter names a cluster that cannot be reached
        before = set()
    done = concurrent.futures.Future()

    def send():
        try:
            done.set_result(client.scatter({key: data[0] if listed else data}, broadcast=True, hash=False))
        except BaseException as exc:  # raised below, in the caller's thread
            done.set_exception(exc)

    threading.Thread(target=send, name="zoracle-dask-broadcast", daemon=True).start()
    left_at = None
    while not concurrent.futures.wait([done], timeout=_BROADCAST_POLL_S).done:
        try:
            gone = before - set(_dask_workers(client))
        except Exception:  # the scatter names a cluster that cannot be reached
            continue
        if gone and left_at is None:
            left_at = time.monotonic()
        if left_at is not None and time.monotonic() - left_at > _BROADCAST_GRACE_S and not done.done():
            client._send_to_scheduler({"op": "client-releases-keys", "keys": [key], "client": client.id})
            raise ConnectionError(f"worker(s) {', '.join(sorted(gone))} left during the broadcast")
    fut = done.result()[key]
    return [fut] if listed else fut


def _dask_run(spec, shard, oracle, batch, params):
    """Runs on a Dask worker: the oracle future resolves to the copy held in worker memory."""
    try:
        with _DASK_LOCK:  # worker threads share one cache
            if spec[0] not in _DASK_STATE.oracles:
                _DASK_STATE.put_oracle(spec[0], oracle)  # a Pickled: loaded here, once a worker
            if spec[1] is not None and (spec[0], spec[1]) not in _DASK_STATE.batches:
                _DASK_STATE.put_batch((spec[0], spec[1]), batch)
            wrapped = _DASK_STATE.oracle(spec[0], spec[1])
    except BaseException as exc:  # reported to the driver, which decides about retries
        return error_outcome(exc)
    wrapped.base_value = None  # (kept between runs: the loss kind this task saw, not an earlier one's)
    wrapped.threads_share_params = _worker_threads() > 1  # (its threads run shards on one params: see CoordTask.run)
    return run_task_guarded(wrapped, shard, params)


def _worker_threads() -> int:
    """The threads of the Dask worker running this task (2 where it cannot be told: tasks may share
    its parameters)."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError, TypeError):  # (no worker found; another distributed)
        return 2


def _dask_drop(tokens) -> None:
    """Runs on a Dask worker (``client.run``): drop the copies of a closed executor's oracles."""
    if _DASK_LOCK.acquire(timeout=5.0):  # not behind an oracle that hangs while loading
        try:
            for t in tokens:
                _DASK_STATE.drop(t)
        finally:
            _DASK_LOCK.release()


def _stop_abandoned(dask_worker=None) -> None:
    """Runs on a Dask nanny of a local cluster about to close (``client.run(..., nanny=True)``): its worker
    process, left inside an abandoned oracle call (Ctrl-C, SIGTERM), SIGKILLed with the programs it started. Asked
    to stop, the worker waited for that call, and the close for 4 s before the nanny killed it; the nanny
    closes, as at a cluster's close, instead of starting a new worker."""
    pid = getattr(dask_worker, "pid", None)
    if not pid:
        return
    dask_worker.close_gracefully()
    _kill_all([*_descendants(int(pid)), int(pid)])


class _DaskBackend:
    quick_abort = True  # (SystemExit, a SIGTERM handler's, marks the busy workers for a restart too: see abort)

    def __init__(self, ex: "DaskExecutor", payload: Payload, futs: dict):
        self.ex = ex
        self.payload = payload
        self.futs = futs
        self.busy: dict = {}  # slot -> (jid, future)
        self._slots = None
        self._lost = False

    def workers(self):
        if self._slots is None:  # asked once per run, and again after a failure
            with unless_closed(self):
                info = _dask_workers(self.ex.client)
            self._slots = [(addr, k) for addr, w in sorted(info.items())
                           if addr not in self.ex._stuck for k in range(int(w.get("nthreads", 1)))]
        return self._slots

    def refresh(self) -> None:
        self._slots = None

    def closed(self) -> bool:  # close() from another thread during the run
        return self.ex.client is None or self.ex._closing

    def idle(self):
        return [s for s in self.workers() if s not in self.busy]

    def name(self, w) -> str:
        return f"dask worker {w[0]}"

    def submit(self, w, jid, shard) -> None:
        if self._lost:  # inputs were forgotten with a dead worker: send them again
            self.futs = self.ex._inputs(self.payload, refresh=True)
            self._lost = False
        f = self.futs
        with unless_closed(self):
            fut = self.ex.client.submit(
                _dask_run, self.payload.spec, shard, f["oracle"], f.get("batch"), f["params"],
                # a key no other client of the scheduler makes: another driver with this pid (pid 1 of
                # another container) makes the same jids, and the scheduler gave it this task's result
                workers=[w[0]], allow_other_workers=True, pure=False, key=f"zoracle-shard-{jid}-{uuid.uuid4().hex}",
            )
        self.busy[w] = (jid, fut)

    def wait(self, timeout=None):
        from distributed import client as dask_client

        if not self.busy:
            return []
        futs = {fut: (w, jid) for w, (jid, fut) in self.busy.items()}
        failure = None
        try:
            # through this executor's client: distributed.wait() goes through the process's default
            # client ("No clients found" for a Client(set_as_default=False) the user passed)
            self.ex.client.sync(dask_client._wait, list(futs), timeout=timeout, return_when="FIRST_COMPLETED")
        except Exception as exc:  # a timeout, or futures cancelled with a dead worker's data
            failure = exc  # the statuses below say which
        done = [f for f in futs if f.done()]
        if self.closed():  # close() from another thread: its futures went with the client
            raise closed_during_run()
        # (distributed's timeout is asyncio's TimeoutError: the builtin one from 3.11 on, its own class on 3.10)
        if not done and failure is not None and not isinstance(failure, (TimeoutError, asyncio.TimeoutError)):
            raise failure  # e.g. the scheduler went away: nothing to retry on
        out = []
        for fut in done:
            w, jid = futs[fut]
            del self.busy[w]
            result = None
            if fut.status == "finished":
                try:
                    result = fut.result()
                except Exception:  # finished, but its result went with the worker that held it
                    result = None
                if result is not None:
                    out.append((w, jid, result))
                    if result[0] != "ok":
                        self._slots = None
                    continue
            if fut.status in ("cancelled", "finished"):
                # the scheduler forgot an input (the oracle or batch lived only on a worker that
                # died), or the result: a lost shard, not a failed one, run again after sending
                # the inputs again
                self._slots = None
                self._lost = True
                out.append((w, jid, ("lost", "its inputs or result were lost with a worker that died (cancelled)")))
            else:
                self._slots = None
                try:
                    exc = fut.exception() if fut.status == "error" else None
                except Exception as gone:  # cancelled in the meantime: the reason is that
                    exc = gone
                out.append((w, jid, ("dead", f"{type(exc).__name__}: {exc}" if exc is not None else fut.status)))
        return out

    def abort(self, workers, hung=True) -> None:
        """Cancel the in-flight shards; after a timeout or Ctrl-C (``hung``), replace the
        workers running them.

        Dask's cancel does not stop a task that is running: the worker's thread stays inside
        the oracle (a hung call may never return), and later shards queued behind it would
        time out in turn. Its process is restarted instead: after a timeout at once, after
        Ctrl-C (or SIGTERM's SystemExit) when the executor next runs or closes, so that train's
        checkpoint is written and the interrupt raised first (the restart took seconds); a local
        cluster's close kills it at once (its nanny waited 4 s for the abandoned call).
        """
        if self.closed():  # close() from another thread took the client, its futures and workers along
            self.busy.clear()
            return
        stuck = set()
        for w in workers:
            jid, fut = self.busy.pop(w, (None, None))
            if fut is not None:
                fut.cancel()
                if hung is True or (hung and w in hung):  # the rest finish their shards on their own
                    stuck.add(w[0])
        self._slots = None
        if stuck and hung is True:  # Ctrl-C or SIGTERM: the run's checkpoint is saved first (a restart took
            self.ex._abandoned.update(stuck)  # seconds); restarted when the executor next runs or closes
        elif stuck:
            self.ex._restart(sorted(stuck))


def _ignore_ctrl_c(distributed):
    """A worker plugin ignoring SIGINT in each worker process of a local cluster, the ones its
    nannies restart too (the scheduler gives them the plugin again): a terminal's Ctrl-C, sent
    to the whole process group, reaches the driver only, which stops the run (the workers printed
    their tracebacks and died under it, and the restart after the interrupt waited for them), as
    the local executors' workers leave it. A plugin, not a preload: a user's preloads and their
    arguments stay as given."""

    class IgnoreCtrlC(distributed.WorkerPlugin):
        name = "zoracle-ignore-ctrl-c"

        def setup(self, worker):
            import signal
            import threading

            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreCtrlC()


def _check_cluster_kwargs(kwargs: dict, local: bool, client) -> None:
    """Keyword arguments for the local cluster: named wrong, a worker failed to start later
    with the name only in its logs ("Nanny failed to start"); with another cluster they were
    ignored."""
    if not kwargs:
        return
    if not local:
        raise ArgumentError(f"{', '.join(map(repr, sorted(kwargs)))} configure(s) a local cluster "
                            f"(distributed.LocalCluster); with `client`={client!r} they would be ignored: drop them")
    import difflib
    import inspect

    import distributed
    from distributed.core import Server

    known = set()
    # a worker_class of the user's own takes its own arguments: those of its whole hierarchy count
    classes = (distributed.LocalCluster, distributed.Nanny, distributed.Worker, Server)
    extra = kwargs.get("worker_class")
    if isinstance(extra, type):
        classes += tuple(c for c in extra.__mro__ if c is not object)
    for cls in classes:
        known |= {n for n, p in inspect.signature(cls.__init__).parameters.items()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}
    for name in sorted(kwargs):
        if name not in known:
            # JoblibExecutor's name for the worker count is too far from n_workers for difflib
            near = (["n_workers"] if name == "n_jobs"
                    else difflib.get_close_matches(name, sorted(known | {"n_workers"}), n=1))
            raise ArgumentError(f"`{name}` is not an argument of distributed.LocalCluster or its workers"
                                f"{f'; did you mean {near[0]!r}?' if near else ''}")


def _close_at_exit(ref) -> None:
    """Close a local Dask executor the script left open (atexit; ``ref`` a weak reference)."""
    ex = ref()
    if ex is not None:
        try:
            ex.close()
        except Exception:  # exiting: nothing left to report it to
            pass


def _release_servers() -> None:
    """Let the Scheduler (and in-process Workers) of a closed local cluster be garbage collected.

    distributed caches, for each handler it dispatches to, whether it takes a ``comm`` argument
    (``distributed.core._expects_comm``, an unbounded ``functools.cache``) keyed by the handler: a
    bound method, which holds its server. Every local cluster a process started and closed stayed
    in memory with its task records, logs and the ``DequeHandler`` each server adds to the
    ``distributed.scheduler`` / ``distributed.worker`` loggers: a sweep starting a cluster a run
    grew by megabytes a run. The cache saves an ``inspect.signature`` call only: emptied, the
    servers still running fill it again."""
    cached = getattr(sys.modules.get("distributed.core"), "_expects_comm", None)
    clear = getattr(cached, "cache_clear", None)
    if callable(clear):
        clear()


def _server_dirs(cluster) -> set:
    """The scratch folders of a local cluster's servers in this process (its scheduler, and its
    nannies or in-process workers): each put its own at the front of ``sys.path``."""
    servers = [getattr(cluster, "scheduler", None), *dict(getattr(cluster, "workers", None) or {}).values()]
    return {d for d in (getattr(s, "local_directory", None) for s in servers) if isinstance(d, str) and d}


def _drop_paths(before, dirs=(), under=None) -> None:
    """Take out of ``sys.path`` what a local cluster's servers put there and left: ``dirs``, or any
    folder inside ``under``, not in ``before`` (its entries when the cluster started). distributed
    takes a server's folder out only while it is still first, so servers closing in another order
    left theirs: ``sys.path`` grew with every cluster, by folders removed since, in the temporary
    directory, at its front (where anyone who made that path again would supply the modules
    imported next)."""
    top = os.path.abspath(under) if under else None

    def left(entry) -> bool:
        if not isinstance(entry, str) or not entry or entry in before:
            return False
        full = os.path.abspath(entry)
        return entry in dirs or (top is not None and (full == top or full.startswith(top + os.sep)))

    for entry in [e for e in sys.path if left(e)]:
        while entry in sys.path:
            sys.path.remove(entry)
    for entry in [e for e in list(sys.path_importer_cache) if left(e)]:  # (the ones distributed took out too)
        sys.path_importer_cache.pop(entry, None)


def _worker_without_dashboard(distributed):
    """An in-process ``distributed.Worker`` that serves no dashboard (LocalCluster turns it on
    for any ``worker_dashboard_address``)."""

    class _Worker(distributed.Worker):
        def __init__(self, *args, **kwargs):
            kwargs["dashboard"] = False
            super().__init__(*args, **kwargs)

    return _Worker


class DaskExecutor(ShardedExecutor):
    """Shards on a Dask cluster; see :class:`zoracle.executors.DaskExecutor`."""

    min_shard_s = 0.01  # (a task's round trip through Dask's scheduler takes milliseconds)

    def __init__(self, client=None, *, n_workers: int | None = None, timeout=None, **cluster_kwargs):
        _require("distributed", "dask")
        super().__init__(timeout)
        if client is not None and not isinstance(client, str) and not hasattr(client, "sync"):
            raise ArgumentError(f"`client` must be None or 'local' (a local cluster), 'local:N', a scheduler address "
                                f"such as 'tcp://127.0.0.1:8786', or a distributed.Client, got {type(client).__name__} "
                                f"{client!r}")
        self._spec = client
        self._local, count = parse_local(client, "client")
        self._count = worker_count(n_workers, count)
        if n_workers is not None and not self._local:  # a running cluster keeps its own workers: it was ignored
            raise ArgumentError(f"`n_workers` sizes a local cluster; with `client`={client!r} the cluster's own "
                                "workers run the shards and it would be ignored: drop it (or use 'local:N')")
        _check_cluster_kwargs(cluster_kwargs, self._local, client)
        self._cluster_kwargs = cluster_kwargs
        self.client = None
        self.cluster = None
        self._owns_client = False
        self._scratch = None  # the local cluster's local_directory, removed on close
        self._reaper = None  # removes it (and stops the workers) if this driver dies
        self._at_exit = None  # close() at interpreter exit, before distributed's own atexit handlers
        self._environ: dict = {}  # variable -> (this process's value before the cluster, the nannies' value)
        self._path_before: frozenset = frozenset()  # sys.path's entries before the local cluster started
        self._futs: dict = {}  # oracle token -> future of the oracle held on every worker
        self._sent: set = set()  # every oracle token sent: the copies workers hold, dropped on close
        self._stuck: set = set()  # addresses of workers left inside an oracle call, no longer used
        self._abandoned: set = set()  # addresses of workers Ctrl-C (SIGTERM) left inside an oracle call, to restart
        self._closing = False  # close() was called (from another thread, a run in progress stops)
        self.n_workers = int(self._count or 1)

    def __repr__(self) -> str:
        spec = self._spec if self._spec is None or isinstance(self._spec, str) else type(self._spec).__name__
        # n_workers as given (or as started): an unsized local cluster gets the CPU count at start, a
        # running cluster its own workers (n_workers beside a scheduler address is refused)
        sized = self._count is not None or self.client is not None
        return (f"DaskExecutor({shown_address(spec)!r}" + (f", n_workers={self.n_workers}" if sized else "")
                + ("" if self.timeout is None else f", timeout={self.timeout!r}") + ")")

    def start(self) -> None:
        client = self.client if self.client is not None else (
            None if self._local or isinstance(self._spec, str) else self._spec)
        if getattr(client, "asynchronous", False) is True:
            # Client(asynchronous=True), asked from its event loop's thread: its calls return coroutines
            # (a raw AttributeError deep in the first run), and a synchronous run there would block the loop
            raise ArgumentError(
                "DaskExecutor: its distributed.Client is asynchronous (Client(..., asynchronous=True)) and this "
                "run is on that client's event loop, which a synchronous zoracle run would block; run zoracle in "
                "a thread (`await asyncio.to_thread(zo.train, ...)`, or loop.run_in_executor) or pass a "
                "synchronous Client")
        if self.client is not None:
            import time

            # a client reconnecting to its scheduler (gone during the last run) is either back or
            # closed by distributed within its timeout
            end = time.monotonic() + float(getattr(self.client, "_timeout", None) or 30) + 5
            while str(getattr(self.client, "status", "running")) == "connecting" and time.monotonic() < end:
                time.sleep(0.1)
            status = str(getattr(self.client, "status", "running"))
            if status in ("closing", "closed"):  # its calls would fail on a None inside distributed
                where = f" at {shown_address(self._spec)}" if isinstance(self._spec, str) else ""
                raise ZoracleError(
                    f"DaskExecutor: its distributed.Client is {status}: the Dask scheduler{where} went away "
                    "(distributed closes a client that cannot reconnect within its connect timeout) or the client was "
                    "closed; start a scheduler and pass a new Client or address to a new DaskExecutor")
            return
        self._closing = False
        distributed = _import("distributed", "dask")
        if self._local:
            self._start_local(distributed)
        elif isinstance(self._spec, str):
            try:
                # not the process's default client: the user's dask work (compute, persist) must not
                # go through a client that close() shuts
                self.client = distributed.Client(self._spec, set_as_default=False)
            except Exception as exc:
                _close_half_made(exc, distributed.Client)
                if not isinstance(exc, ValueError):
                    raise
                # not an address: distributed's own parse error, deep in its stack
                raise ArgumentError(f"`client` {shown_address(self._spec)!r} is not a scheduler address "
                                    f"({hide_credentials(str(exc), self._spec)}); pass one such as "
                                    "'tcp://127.0.0.1:8786', or 'local' for a local cluster") from None
            self._owns_client = True
        else:
            self.client = self._spec
        threads = sum(int(w.get("nthreads", 1)) for w in _dask_workers(self.client).values())
        self.n_workers = max(1, threads)

    def _start_local(self, distributed) -> None:
        """A LocalCluster on 127.0.0.1: no dashboard, no HTTP routes, a private scratch dir."""
        import dask

        if self._cluster_kwargs.get("processes", True):  # worker threads (processes=False) re-import nothing
            check_main_guard("DaskExecutor", self._spec if isinstance(self._spec, str) else "local")
        # dashboard=False: a dashboard_address alone serves Dask's dashboard where bokeh is installed
        # (its "needs bokeh" page at / and /status where not); the address keeps the HTTP server off :8787
        kw = dict(n_workers=self._count or usable_cpus(), threads_per_worker=1, processes=True,
                  host="127.0.0.1", dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0")
        if "local_directory" not in self._cluster_kwargs:
            self._scratch = tempfile.mkdtemp(prefix="zoracle-dask-")
            kw["local_directory"] = self._scratch
        kw.update(self._cluster_kwargs)
        if "dashboard_address" not in self._cluster_kwargs:  # (one you pass serves the dashboard you asked for)
            kw["scheduler_kwargs"] = {"dashboard": False, **(self._cluster_kwargs.get("scheduler_kwargs") or {})}
        if not kw.get("processes") and "host" not in self._cluster_kwargs:  # threads talk in-process (inproc://):
            # no host to bind (127.0.0.1 made the scheduler fail to parse its own inproc address)
            del kw["host"]
        if "worker_dashboard_address" not in self._cluster_kwargs:
            if kw.get("processes"):  # no worker dashboard; its HTTP server binds `host` (127.0.0.1)
                kw["worker_dashboard_address"] = None
            elif "worker_class" not in self._cluster_kwargs:  # in-process workers have no host: their
                kw["worker_class"] = _worker_without_dashboard(distributed)  # HTTP server keeps the address
        # Dask always starts an HTTP server; with no routes it serves nothing (no /info,
        # /json/identity.json, /eventstream), and never on the well-known :8787. Broadcast
        # copies of the oracle must stay on every worker: the memory manager must not
        # reduce them to one replica that a dying worker would take along.
        quiet = {"distributed.scheduler.http.routes": [], "distributed.worker.http.routes": [],
                 "distributed.scheduler.active-memory-manager.start": False}
        if self._scratch is not None:  # the scheduler's own scratch space too
            quiet["temporary-directory"] = self._scratch
        # a driver SIGKILLed while the cluster starts (seconds) must not leave its scratch dir behind either
        starting = start_reaper(self._scratch) if self._scratch is not None else None
        before = dict(os.environ)
        self._path_before = frozenset(sys.path)
        try:
            with dask.config.set(quiet):
                self.cluster = distributed.LocalCluster(**kw)
                self.client = distributed.Client(self.cluster, set_as_default=False)
            if kw.get("processes"):  # each worker process, restarted ones too, leaves Ctrl-C to the driver
                self.client.register_plugin(_ignore_ctrl_c(distributed))
        except BaseException:
            self._environ_back(before)
            _stop_reaper(starting)
            _drop_paths(self._path_before, under=self._scratch)
            self._remove_scratch()
            raise
        self._environ_back(before)
        self._owns_client = True
        if self._scratch is not None:  # a SIGKILLed driver must not leave its scratch dir behind
            self._reaper = start_reaper(self._scratch)  # (this one knows the workers' processes)
        _stop_reaper(starting)
        # not closed by the script: distributed's atexit handlers stopped the workers first, and the
        # scheduler logged an ERROR for the oracle copies they held ("lose scattered data")
        import atexit
        import weakref

        self._at_exit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

    def _environ_back(self, before: dict | None = None) -> None:
        """This process's environment variables as before the local cluster started (``before``: noted
        then). Its nannies set theirs for the workers they spawn (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1,
        MALLOC_TRIM_THRESHOLD_, PYTHONHASHSEED, ...) in os.environ here, again at each restart, and leave
        them: a torch imported later ran on one thread, and every process the program started after
        inherited them. A variable set since to another value (the program's own) is left as it is."""
        if before is not None:
            self._environ.update({k: (before.get(k), os.environ.get(k)) for k in set(before) | set(os.environ)
                                  if before.get(k) != os.environ.get(k)})
        for key, (old, dask_value) in self._environ.items():
            if os.environ.get(key) == dask_value:
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old

    def _remove_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def close(self) -> None:
        """Release the oracle copies; stop the client and cluster this executor started."""
        self._closing = True  # a run in another thread stops (see _DaskBackend.closed)
        self._futs.clear()
        self._registry.clear()
        self._modules.clear()
        sent, self._sent = sorted(self._sent), set()
        try:  # (this executor's own cluster, closed below: stopped; another one's: restarted, as after a timeout)
            self._restart_abandoned(stopping=self.cluster is not None)
        except Exception:  # the scheduler went away: nothing left to restart
            pass
        if sent and self.cluster is None and self.client is not None:  # a cluster that stays: its workers
            try:  # must not keep this executor's oracle copies (a model's weights) in memory
                # not on a worker left inside an abandoned oracle call: one that holds the GIL (no nanny
                # to restart it) would answer only when the call ends, and close() waited for it
                live = [w for w in _dask_workers(self.client) if w not in self._stuck]
                if live:
                    self.client.run(_dask_drop, sent, workers=live, on_error="ignore")
            except Exception:  # the scheduler went away: nothing left to free
                pass
        dirs = _server_dirs(self.cluster) if self.cluster is not None else set()
        try:
            if self._owns_client and self.client is not None:
                self.client.close()
            if self.cluster is not None:
                self.cluster.close()
        finally:
            if self.cluster is not None:
                _release_servers()
                _drop_paths(self._path_before, dirs, under=self._scratch)
            self.client = None
            self.cluster = None
            self._owns_client = False
            if self._at_exit is not None:
                import atexit

                atexit.unregister(self._at_exit)
                self._at_exit = None
            _stop_reaper(self._reaper)
            self._reaper = None
            self._remove_scratch()
            self._environ_back()  # (a restarted worker's nanny set them again)
            self._environ = {}

    def _restart_abandoned(self, stopping: bool = False) -> None:
        """Restart the workers Ctrl-C or SIGTERM left inside an oracle call (:meth:`_DaskBackend.abort`), before
        the next run or at close; ``stopping``: stop them instead (this executor's local cluster, about
        to close)."""
        addrs, self._abandoned = sorted(self._abandoned), set()
        if not addrs or self.client is None:
            return
        if not stopping:
            self._restart(addrs)
            return
        try:
            self.client.run(_stop_abandoned, workers=addrs, nanny=True, on_error="ignore")
        except Exception:  # a nanny out of reach: closing the cluster stops what it can
            pass

    def _restart(self, addrs) -> None:
        """Restart the worker processes at ``addrs``, whose running shard was abandoned (a
        timeout, Ctrl-C); a worker without a nanny cannot be restarted: it is no longer given
        shards, with a warning saying so."""
        info = _dask_workers(self.client)
        nanny = [a for a in addrs if a in info and info[a].get("nanny")]
        bare = [a for a in addrs if a in info and not info[a].get("nanny")]
        if nanny:
            try:  # a program the abandoned call started outlived the worker's restart, orphaned
                self.client.run(kill_programs, workers=nanny, nanny=True, on_error="ignore")
            except Exception:  # a nanny out of reach: the restart below reports it
                pass
            try:
                status = self.client.restart_workers(nanny, timeout=_RESTART_S, raise_for_error=False) or {}
                failed = {a: v for a, v in status.items() if str(v).upper() != "OK"}
            except Exception as exc:  # the worker is stuck either way: stop using it
                failed = {a: f"{type(exc).__name__}: {exc}" for a in nanny}
            self._environ_back()  # (the nannies set their variables here again to spawn the new workers)
            if failed:
                self._stuck.update(failed)
                warn(f"DaskExecutor: restarting worker(s) {', '.join(failed)} failed "
                     f"({'; '.join(map(str, failed.values()))}); zoracle gives them no more shards",
                     RuntimeWarning, stacklevel=2)
        if bare:
            self._stuck.update(bare)
            warn(
                f"DaskExecutor: worker(s) {', '.join(bare)} may still be inside an abandoned oracle call and "
                "cannot be restarted (no nanny): zoracle gives them no more shards. Restart them yourself, or "
                "run workers under a nanny (the default of `dask worker`) so that zoracle can",
                RuntimeWarning, stacklevel=2)

    def _dropped(self, tokens) -> None:
        for t in tokens:
            self._futs.pop(t, None)

    def _inputs(self, payload, refresh: bool = False) -> dict:
        """Futures (or inline values) of the oracle, parameters and batch of a run.

        ``refresh`` scatters everything again (after the scheduler forgot an input).
        """
        if refresh:
            self._futs.pop(payload.oracle_token, None)
        if payload.oracle_token not in self._futs:
            # scattered as bytes, loaded by the shard: an oracle whose __setstate__ raises on a
            # worker is then a shard's error (reported, retried), not a broken scatter
            self._futs[payload.oracle_token] = self._scatter([pack(payload.oracle, "Dask", self)], True)[0]
            self._sent.add(payload.oracle_token)
        host = np.ascontiguousarray(to_numpy(payload.params))
        # small vectors ride along with each shard; large ones are sent to every worker once
        futs = {"oracle": self._futs[payload.oracle_token],
                "params": self._scatter(host, True) if host.nbytes > _INLINE_BYTES else host}
        if payload.batch_token is not None:  # checked and pickled as oracles are; loaded by the shard
            batch = pack(payload.batch, "Dask", self, batch_name(payload.oracle, payload.batch))
            futs["batch"] = self._scatter([batch], False)[0]
        return futs

    def _scatter(self, data, broadcast: bool):
        """``client.scatter``, again after a connection error: a worker that died since the last run
        (killed, restarted) may still be listed by the scheduler, and a scatter to it raised
        distributed's CommClosedError out of the estimate; the scheduler drops it within moments."""
        import time

        for attempt in range(SCATTER_TRIES):
            client = self.client
            if client is None or self._closing:  # close() from another thread, during a back-off
                raise closed_during_run()
            try:
                if broadcast:
                    return _broadcast(client, data)
                return client.scatter(data, broadcast=broadcast, hash=False)
            except OSError as exc:  # CommClosedError, a refused connection: a worker that just died
                if isinstance(exc, TimeoutError):  # no worker within the client's timeout: not a death
                    raise
                if self.client is None or self._closing:
                    raise closed_during_run() from exc
                if attempt == SCATTER_TRIES - 1:
                    raise ZoracleError(f"could not send this run's inputs to the Dask workers ({SCATTER_TRIES} tries over "
                                       f"{0.25 * (2 ** (SCATTER_TRIES - 1) - 1):g} s: {type(exc).__name__}: {exc}); "
                                       "workers keep dying or cannot be reached: check the cluster's logs") from exc
                time.sleep(0.25 * 2 ** attempt)

    def _backend(self, payload, oracle):
        self._restart_abandoned()
        return _DaskBackend(self, payload, self._inputs(payload))


# ----------------------------------------------------------------------------- Ray
#: times a scatter of a run's inputs is tried when a worker's connection fails (a worker that
#: just died, still listed by the scheduler), 0.25 s apart and doubling
SCATTER_TRIES = 5
