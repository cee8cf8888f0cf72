"""Cluster executors: Dask (``distributed``) and Ray, imported only when one is created."""

from __future__ import annotations

import os
import threading

import numpy as np

from ._backend import to_numpy
from ._errors import ArgumentError, ZoracleError
from ._executors_core import (
    KEEP_ORACLES,
    BatchMirror,
    Payload,
    WorkerState,
    error_outcome,
    run_guarded,
    run_task_guarded,
)
from ._executors_local import ShardedExecutor

__all__ = ["DaskExecutor", "RayExecutor", "parse_local"]


def parse_local(address, what: str):
    """``"local"`` -> (True, None); ``"local:N"`` -> (True, N); anything else -> (False, None)."""
    if address is None:
        return True, None
    if not isinstance(address, str):
        return False, None
    if address == "local":
        return True, None
    if address.startswith("local:"):
        tail = address[len("local:"):]
        if not tail.isdigit() or int(tail) < 1:
            raise ArgumentError(f"`{what}` 'local:N' needs a worker count N >= 1, got {address!r} (e.g. 'local:2')")
        return True, int(tail)
    return False, None


def _import(name: str, extra: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(f"{name} is needed for this executor; install it with pip install 'zoracle[{extra}]'") from exc


# ----------------------------------------------------------------------------- Dask
#: parameter vectors up to this size travel inside each shard instead of being scattered
_INLINE_BYTES = 1 << 20
_DASK_STATE = WorkerState(keep=KEEP_ORACLES)  # every shard brings its oracle: a bounded cache
_DASK_LOCK = threading.Lock()


def _dask_run(spec, shard, oracle, batch, params):
    """Runs on a Dask worker: the oracle future resolves to the copy held in worker memory."""
    try:
        with _DASK_LOCK:  # worker threads share one cache
            if spec[0] not in _DASK_STATE.oracles:
                _DASK_STATE.put_oracle(spec[0], oracle)
            if spec[1] is not None and (spec[0], spec[1]) not in _DASK_STATE.batches:
                _DASK_STATE.put_batch((spec[0], spec[1]), batch)
            wrapped = _DASK_STATE.oracle(spec[0], spec[1])
    except BaseException as exc:  # reported to the driver, which decides about retries
        return error_outcome(exc)
    return run_task_guarded(wrapped, shard, params)


class _DaskBackend:
    def __init__(self, ex: "DaskExecutor", payload: Payload, futs: dict):
        self.ex = ex
        self.payload = payload
        self.futs = futs
        self.busy: dict = {}  # slot -> (jid, future)
        self._slots = None

    def workers(self):
        if self._slots is None:  # asked once per run, and again after a failure
            client = self.ex.client
            try:
                info = client.scheduler_info(n_workers=-1)
            except TypeError:  # older distributed
                info = client.scheduler_info()
            self._slots = [(addr, k) for addr, w in sorted(info["workers"].items())
                           for k in range(int(w.get("nthreads", 1)))]
        return self._slots

    def idle(self):
        return [s for s in self.workers() if s not in self.busy]

    def name(self, w) -> str:
        return f"dask worker {w[0]}"

    def submit(self, w, jid, shard) -> None:
        f = self.futs
        fut = self.ex.client.submit(
            _dask_run, self.payload.spec, shard, f["oracle"], f.get("batch"), f["params"],
            workers=[w[0]], allow_other_workers=True, pure=False, key=f"zoracle-shard-{jid}-{os.getpid()}",
        )
        self.busy[w] = (jid, fut)

    def wait(self):
        from distributed import wait as dask_wait

        if not self.busy:
            return []
        futs = {fut: (w, jid) for w, (jid, fut) in self.busy.items()}
        done = dask_wait(list(futs), return_when="FIRST_COMPLETED").done
        out = []
        for fut in done:
            w, jid = futs[fut]
            del self.busy[w]
            if fut.status == "finished":
                out.append((w, jid, fut.result()))
                if out[-1][2][0] != "ok":
                    self._slots = None
            else:
                self._slots = None
                exc = fut.exception() if fut.status == "error" else None
                out.append((w, jid, ("dead", f"{type(exc).__name__}: {exc}" if exc is not None else fut.status)))
        return out

    def abort(self, workers) -> None:
        for w in workers:
            jid, fut = self.busy.pop(w, (None, None))
            if fut is not None:
                fut.cancel()


class DaskExecutor(ShardedExecutor):
    """Shards on a Dask cluster; see :class:`zoracle.executors.DaskExecutor`."""

    def __init__(self, client=None, *, n_workers: int | None = None, **cluster_kwargs):
        super().__init__()
        self._spec = client
        self._local, count = parse_local(client, "client")
        self._count = n_workers if n_workers is not None else count
        if self._count is not None and (isinstance(self._count, bool) or int(self._count) < 1):
            raise ArgumentError(f"`n_workers` must be an integer >= 1, got {n_workers!r}")
        self._cluster_kwargs = cluster_kwargs
        self.client = None
        self.cluster = None
        self._owns_client = False
        self._futs: dict = {}  # oracle token -> future of the oracle held on every worker
        self.n_workers = int(self._count or 1)

    def start(self) -> None:
        if self.client is not None:
            return
        distributed = _import("distributed", "dask")
        if self._local:
            kw = dict(n_workers=self._count or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None)
            kw.update(self._cluster_kwargs)
            self.cluster = distributed.LocalCluster(**kw)
            self.client = distributed.Client(self.cluster)
            self._owns_client = True
        elif isinstance(self._spec, str):
            self.client = distributed.Client(self._spec)
            self._owns_client = True
        else:
            self.client = self._spec
        info = self.client.scheduler_info()
        threads = sum(int(w.get("nthreads", 1)) for w in info["workers"].values())
        self.n_workers = max(1, threads)

    def close(self) -> None:
        """Release the oracle copies; stop the client and cluster this executor started."""
        self._futs.clear()
        self._registry.clear()
        if self._owns_client and self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = None
        self.cluster = None
        self._owns_client = False

    def _dropped(self, tokens) -> None:
        for t in tokens:
            self._futs.pop(t, None)

    def _backend(self, payload, oracle):
        c = self.client
        if payload.oracle_token not in self._futs:
            # scattered inside a list, so an oracle that is also a container stays one object
            self._futs[payload.oracle_token] = c.scatter([payload.oracle], broadcast=True, hash=False)[0]
        host = np.ascontiguousarray(to_numpy(payload.params))
        # small vectors ride along with each shard; large ones are sent to every worker once
        futs = {"oracle": self._futs[payload.oracle_token],
                "params": c.scatter(host, broadcast=True, hash=False) if host.nbytes > _INLINE_BYTES else host}
        if payload.batch_token is not None:
            futs["batch"] = c.scatter([payload.batch], hash=False)[0]  # an (x, y) tuple stays one object
        return _DaskBackend(self, payload, futs)


# ----------------------------------------------------------------------------- Ray
#: seconds to wait for the actors to come up before reporting a cluster without room
_ACTOR_START_S = 120.0
class _RayWorker:
    """A Ray actor holding oracles by token (the class is wrapped by ``ray.remote`` lazily)."""

    def __init__(self):
        self.state = WorkerState()

    def pid(self) -> int:
        return os.getpid()

    def drop(self, token) -> None:
        self.state.drop(token)

    def run(self, spec, shard, items):
        import ray

        got = {k: ray.get(v) for k, v in items.items()}
        if "params" in got:  # the object store hands out read-only views
            got["params"] = np.array(got["params"])
        return run_guarded(self.state, spec, shard, **got)


def _short(exc, limit: int = 600) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else "..." + text[-limit:]


class _RayActor:
    def __init__(self, handle, index, pid):
        self.handle = handle
        self.index = index
        self.pid = pid
        self.has: set = set()
        self.bound = BatchMirror()
        self.params_token = None
        self.ref = None

    @property
    def name(self) -> str:
        return f"ray actor {self.index} (pid {self.pid})"


class _RayBackend:
    def __init__(self, ex: "RayExecutor", payload: Payload, refs: dict):
        self.ex = ex
        self.payload = payload
        self.refs = refs
        self.busy: dict = {}  # ref -> (actor, jid)

    def workers(self):
        return self.ex._actors

    def idle(self):
        return [a for a in self.ex._actors if a.ref is None]

    def name(self, w) -> str:
        return w.name

    def submit(self, w, jid, shard) -> None:
        pl = self.payload
        items = {n: self.refs[n] for n in pl.missing(w)}
        w.ref = w.handle.run.remote(pl.spec, shard, items)
        self.busy[w.ref] = (w, jid)
        pl.delivered(w, items)

    def wait(self):
        import ray

        if not self.busy:
            return []
        ready, _ = ray.wait(list(self.busy), num_returns=1)
        out = []
        for ref in ready:
            w, jid = self.busy.pop(ref)
            w.ref = None
            try:
                out.append((w, jid, ray.get(ref)))
            except ray.exceptions.RayActorError as exc:  # the actor's process is gone
                self.ex._replace(w)
                out.append((w, jid, ("dead", f"{type(exc).__name__}: {_short(exc)}")))
            except Exception as exc:  # could not run at all, e.g. the oracle failed to unpickle
                out.append((w, jid, ("err", RuntimeError(f"{type(exc).__name__}: {_short(exc)}"), "")))
        return out

    def abort(self, workers) -> None:
        for w in workers:
            if w.ref is not None:
                self.busy.pop(w.ref, None)
                self.ex._replace(w)


class RayExecutor(ShardedExecutor):
    """Shards on Ray actors; see :class:`zoracle.executors.RayExecutor`."""

    def __init__(self, address=None, *, n_workers: int | None = None, **init_kwargs):
        super().__init__()
        self.address = address
        self._local, count = parse_local(address, "address")
        self._count = n_workers if n_workers is not None else count
        if self._count is not None and (isinstance(self._count, bool) or int(self._count) < 1):
            raise ArgumentError(f"`n_workers` must be an integer >= 1, got {n_workers!r}")
        self._init_kwargs = init_kwargs
        self._owns_ray = False
        self._actors: list = []
        self._refs: dict = {}  # oracle token -> ObjectRef
        self.n_workers = int(self._count or 1)

    def start(self) -> None:
        if self._actors:
            return
        ray = _import("ray", "ray")
        if not ray.is_initialized():
            kw = dict(self._init_kwargs)
            if self._local:
                kw.setdefault("num_cpus", self._count or os.cpu_count() or 1)
                kw.setdefault("include_dashboard", False)
                kw.setdefault("log_to_driver", False)
                kw.setdefault("configure_logging", False)
                ray.init(**kw)
            else:
                ray.init(address=self.address, **kw)
            self._owns_ray = True
        n = self._count or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.n_workers = int(n)
        self._remote = ray.remote(num_cpus=1)(_RayWorker)
        handles = [self._remote.remote() for _ in range(self.n_workers)]
        try:
            pids = ray.get([h.pid.remote() for h in handles], timeout=_ACTOR_START_S)
        except ray.exceptions.GetTimeoutError:
            for h in handles:
                ray.kill(h)
            raise ZoracleError(
                f"RayExecutor: {self.n_workers} actors (1 CPU each) did not start within {_ACTOR_START_S:.0f} s; "
                f"the cluster has {ray.available_resources().get('CPU', 0):g} free CPUs: pass a smaller n_workers"
            ) from None
        self._actors = [_RayActor(h, i, p) for i, (h, p) in enumerate(zip(handles, pids))]

    def _replace(self, w) -> None:
        import ray

        try:
            ray.kill(w.handle)
        except Exception:  # already gone
            pass
        h = self._remote.remote()
        i = self._actors.index(w)
        self._actors[i] = _RayActor(h, w.index, ray.get(h.pid.remote()))

    @property
    def pids(self) -> list:
        """Process ids of the actors (for monitoring and tests)."""
        return [a.pid for a in self._actors]

    def close(self) -> None:
        """Kill the actors; shut Ray down if this executor started it."""
        if not self._actors and not self._owns_ray:
            return
        import ray

        for a in self._actors:
            try:
                ray.kill(a.handle)
            except Exception:  # already gone
                pass
        self._actors = []
        self._refs.clear()
        self._registry.clear()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False

    def _dropped(self, tokens) -> None:
        for t in tokens:
            self._refs.pop(t, None)
            for a in self._actors:
                if t in a.has:
                    a.has.discard(t)
                    a.bound.drop(t)
                    a.handle.drop.remote(t)

    def _backend(self, payload, oracle):
        import ray

        if payload.oracle_token not in self._refs:
            self._refs[payload.oracle_token] = ray.put(payload.oracle)
        refs = {"oracle": self._refs[payload.oracle_token],
                "params": ray.put(np.ascontiguousarray(to_numpy(payload.params)))}
        if payload.batch_token is not None:
            refs["batch"] = ray.put(payload.batch)
        return _RayBackend(self, payload, refs)

