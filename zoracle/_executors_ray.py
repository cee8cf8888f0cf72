"""RayExecutor (see :class:`zoracle.executors.RayExecutor`): shards on Ray actors, its backend, and the
token file and driver state it keeps."""

from __future__ import annotations

import importlib
import numbers
import os
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time

import numpy as np

from ._backend import jax_x64_runtime_env, to_numpy
from ._cluster_common import _import, _require, _stop_reaper, parse_local, start_reaper, worker_count
from ._errors import ArgumentError, ZoracleError, check_flag, hide_credentials, shown_address
from ._executors_core import (BatchMirror, Payload, WorkerState, batch_name, closed_during_run, pack,
                              run_guarded, unless_closed)
from ._executors_local import ShardedExecutor, usable_cpus


#: seconds to wait for the actors to come up before reporting a cluster without room
_ACTOR_START_S = 120.0
#: seconds of one ray.wait in a run's wait for its shards (a Ctrl-C is seen between two)
_WAIT_SLICE_S = 0.1
#: seconds a cluster address gets to accept a TCP connection before ray.init is called (tried
#: again each half second, as Dask's connect timeout: a cluster still starting is waited for)
_REACH_S = 30.0


class ClusterUnreachable(ZoracleError, ConnectionError):
    """Nothing accepts a connection at a Ray cluster address (refused, no route, no such host)."""


def _host_port(address: str):
    """``(host, port)`` of a Ray cluster address (``'HOST:PORT'``, ``'ray://[user@]HOST:PORT[/...]'``),
    or None where it names no port (``'auto'``, ``'ray://HOST'``, another scheme): Ray decides then."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        rest = address
    elif scheme != "ray":
        return None
    authority = rest.partition("/")[0].rpartition("@")[2]
    host, sep, port = authority.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


def _check_reachable(address: str) -> None:
    """Raise :class:`ClusterUnreachable` where nothing accepts a connection at ``address``'s host
    and port within :data:`_REACH_S` (tried again each half second, for a cluster still starting):
    Ray 2.60 tried a refused address 20 times, about 41 s each (more than 10 minutes, its log
    warning every few seconds), before its ConnectionError. A loopback host is tried as Ray
    connects to it too, at this node's address."""
    hp = _host_port(address)
    if hp is None:
        return
    host, port = hp
    hosts = [host]
    if host == "localhost" or host.startswith("127.") or host == "::1":  # Ray swaps in the node's own IP
        try:
            from ray.util import get_node_ip_address

            hosts.append(get_node_ip_address())
        except Exception:  # (no such function in this Ray, or no address found): the loopback alone
            pass
    end = time.monotonic() + _REACH_S
    while True:
        failures = []
        for h in hosts:
            try:
                socket.create_connection((h, port), timeout=max(0.1, min(5.0, end - time.monotonic()))).close()
                return
            except OSError as exc:
                failures.append(exc)
        failure = failures[0]
        if all(isinstance(e, socket.gaierror) for e in failures):  # no such host: a typo, not a cluster starting
            break
        if time.monotonic() + 0.5 >= end:
            break
        time.sleep(0.5)
    reason = failure.strerror or str(failure) or type(failure).__name__
    waited = "" if isinstance(failure, socket.gaierror) else f" within {_REACH_S:g} s"
    raise ClusterUnreachable(
        f"RayExecutor: nothing accepted a connection at `address` {shown_address(address)!r}{waited} "
        f"({reason}); check the host and port and that the cluster is running (`ray start --head` "
        "on its head node; a Ray Client address is 'ray://HOST:10001', a cluster's GCS 'HOST:6379'), or use 'local'")


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


def _token_path():
    """The auth token file Ray reads (``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``)."""
    from pathlib import Path

    env = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(env) if env else Path.home() / ".ray" / "auth_token"


def _private_token() -> None:
    """Keep Ray's auth token file private (0600), creating it that way when Ray would.

    Ray enables token auth for new local sessions and writes a missing token file with the
    default umask (world-readable). Before ``ray.init`` a missing token is created here with
    mode 0600; after it any token file this user owns is narrowed to 0600.
    """
    import secrets

    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return
    path = _token_path()
    try:
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        st = path.stat()
        if st.st_uid == getattr(os, "getuid", lambda: st.st_uid)() and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, 0o600)
    except OSError:  # a read-only home: Ray reports its own error if it needs the file
        pass


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
    quick_abort = True  # (SystemExit, a SIGTERM handler's, kills the busy actors too: see abort)

    def __init__(self, ex: "RayExecutor", payload: Payload, refs: dict):
        self.ex = ex
        self.payload = payload
        self.refs = refs
        self.busy: dict = {}  # ref -> (actor, jid)

    def workers(self):
        return self.ex._actors

    def closed(self) -> bool:  # close() from another thread during the run
        return self.ex._closing

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

    def wait(self, timeout=None):
        import ray

        if not self.busy:
            return []
        # in slices: a wait of Ray's own sees a Ctrl-C about once a second (its KeyboardInterrupt, and so
        # train's checkpoint, came up to a second after the SIGINT)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _WAIT_SLICE_S if end is None else max(0.0, min(_WAIT_SLICE_S, end - time.monotonic()))
            with unless_closed(self):  # the actors (and Ray) may have gone with close()
                ready, _ = ray.wait(list(self.busy), num_returns=1, timeout=left)
            if ready or self.closed() or (end is not None and time.monotonic() >= end):
                break
        if self.closed():
            raise closed_during_run()
        out = []
        for ref in ready:
            w, jid = self.busy.pop(ref)
            w.ref = None
            try:
                out.append((w, jid, ray.get(ref)))
            except ray.exceptions.RayActorError as exc:  # the actor's process is gone
                self.ex._replace(w)
                out.append((w, jid, ("dead", f"{type(exc).__name__}: {_short(exc)}")))
                continue
            except Exception as exc:  # could not run at all, e.g. the oracle failed to unpickle
                out.append((w, jid, ("err", RuntimeError(f"{type(exc).__name__}: {_short(exc)}"), "")))
            if out[-1][2][0] == "err":  # perhaps the oracle failed to load: send it again next time
                self.payload.undelivered(w)
                w.handle.drop.remote(self.payload.oracle_token)  # runs before the actor's next shard
        return out

    def abort(self, workers, hung=True) -> None:
        """After a timeout, Ctrl-C or SystemExit (``hung``), or with a shard timeout set, replace the actors
        running shards; else, after an error elsewhere, let them finish theirs (an actor queues its
        next shard behind it): every actor was replaced, a paid oracle cut off mid-query."""
        if self.closed():  # close() from another thread killed them all
            self.busy.clear()
            return
        for w in workers:
            if w.ref is not None:
                self.busy.pop(w.ref, None)
                # with a shard timeout, a shard queued behind the unfinished one would time out
                # falsely: replaced then, as before
                if hung is True or (hung and w in hung) or self.ex.timeout is not None:
                    self.ex._retire(w)  # its replacement starts with the next run: train saves first
                else:
                    w.ref = None
                    # its unread answer may be an oracle that failed to load: send it again next time
                    self.payload.undelivered(w)
                    w.handle.drop.remote(self.payload.oracle_token)


def _ray_driver_state() -> tuple:
    """What ``ray.init`` changes in the driver for its session and ``ray.shutdown`` leaves: the
    SIGTERM handler (Ray's ``sys.exit``, in place of the program's), PYTHONBREAKPOINT (Ray's
    debugger: a later ``breakpoint()`` went to it) and faulthandler (turned on)."""
    import faulthandler
    import signal

    sig = signal.SIGBREAK if sys.platform == "win32" else signal.SIGTERM
    return sig, signal.getsignal(sig), os.environ.get("PYTHONBREAKPOINT"), faulthandler.is_enabled()


def _ray_driver_state_back(state) -> None:
    """``state`` (:func:`_ray_driver_state`, before ``ray.init``) back where Ray's is still in place."""
    if state is None:
        return
    import faulthandler
    import signal

    sig, handler, hook, fault = state
    now = signal.getsignal(sig)
    if handler is not None and now is not handler and getattr(now, "__module__", "").startswith("ray"):
        if threading.current_thread() is threading.main_thread():  # (signal.signal's rule)
            signal.signal(sig, handler)
    if os.environ.get("PYTHONBREAKPOINT", "").startswith("ray.") and hook != os.environ["PYTHONBREAKPOINT"]:
        if hook is None:
            os.environ.pop("PYTHONBREAKPOINT", None)
        else:
            os.environ["PYTHONBREAKPOINT"] = hook
    if not fault and faulthandler.is_enabled():
        faulthandler.disable()


class RayExecutor(ShardedExecutor):
    """Shards on Ray actors; see :class:`zoracle.executors.RayExecutor`."""

    min_shard_s = 0.01  # (a task's round trip through Ray's scheduler takes milliseconds)

    def __init__(self, address=None, *, n_workers: int | None = None, allow_network: bool = False,
                 timeout=None, **init_kwargs):
        _require("ray", "ray")
        super().__init__(timeout)
        if address is not None and not isinstance(address, str):  # as DaskExecutor's `client`: RayExecutor(4)
            # was taken for a cluster address and failed at the first run in ray.init (a bare TypeError)
            hint = f"; for {address!r} workers pass n_workers={address!r}" if isinstance(address, numbers.Integral) \
                and not isinstance(address, bool) else ""
            raise ArgumentError(f"`address` must be None or 'local' (a local Ray session), 'local:N', or a cluster "
                                f"address such as 'ray://127.0.0.1:10001' or 'auto', got {type(address).__name__} "
                                f"{address!r}{hint}")
        self.address = address
        self._local, count = parse_local(address, "address")
        self._count = worker_count(n_workers, count)
        # as every other flag (check_flag): NumPy's True too ("must be True or False, got np.True_" before)
        self.allow_network = check_flag("allow_network", allow_network)
        if "n_jobs" in init_kwargs:  # JoblibExecutor's name: ray.init refused it at the first run (RuntimeError)
            raise ArgumentError(f"`n_jobs` is not an argument of RayExecutor or ray.init; did you mean 'n_workers'? "
                                f"(n_workers={init_kwargs['n_jobs']!r})")
        self._init_kwargs = init_kwargs
        self._owns_ray = False
        self._before_ray = None  # this process's state that ray.init changes and ray.shutdown leaves, as before
        self._session_dir = None  # the private temp dir of a local session, removed on close
        self._reaper = None  # kills the local session's processes if this driver dies
        self._actors: list = []
        self._retired: list = []  # actors killed (a Ctrl-C, a timeout), replaced at the next run (_renew)
        self._closing = False  # close() was called (from another thread, a run in progress stops)
        self._refs: dict = {}  # oracle token -> ObjectRef
        self.n_workers = int(self._count or 1)

    def __repr__(self) -> str:
        sized = self._count is not None or bool(self._actors)  # (default: the cluster's CPU count, at start)
        return (f"RayExecutor({shown_address(self.address)!r}" + (f", n_workers={self.n_workers}" if sized else "")
                + (", allow_network=True" if self.allow_network else "")
                + ("" if self.timeout is None else f", timeout={self.timeout!r}") + ")")

    def start(self) -> None:
        if self._actors:
            return
        self._closing = False
        ray = _import("ray", "ray")
        if not ray.is_initialized():
            kw = dict(self._init_kwargs)
            self._before_ray = _ray_driver_state()
            try:
                self._init(ray, kw)
            except BaseException:  # (Ray's SIGTERM handler is in place before it connects)
                if not ray.is_initialized():
                    _ray_driver_state_back(self._before_ray)
                raise
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
        if self._owns_ray and self._local:  # Ray's agents outlive a killed driver: reap them
            self._reaper = start_reaper(self._session_dir)

    def _init(self, ray, kw) -> None:
        if self._local:
            self._init_local(ray, kw)
            return
        _check_reachable(self.address)  # (Ray tries a refused address for more than 10 minutes)
        try:
            ray.init(address=self.address, **kw)
        except ValueError as exc:  # not an address: Ray's own parse error
            raise ArgumentError(f"`address` {shown_address(self.address)!r} is not a Ray cluster address "
                                f"({hide_credentials(str(exc), self.address)}); pass one "
                                "such as 'ray://127.0.0.1:10001' or '127.0.0.1:6379', or 'local'") from None

    def _init_local(self, ray, kw) -> None:
        """Start a local Ray session: only with ``allow_network=True`` (see the class notes)."""
        if not self.allow_network:
            raise ArgumentError(
                f"RayExecutor({self.address!r}) would start a local Ray session whose servers (GCS, raylet, "
                "workers) listen on every network interface: Ray cannot bind them to 127.0.0.1. Pass "
                "allow_network=True to accept that (token authentication is on, the token file private), "
                "or use DaskExecutor('local') / JoblibExecutor, which stay on loopback"
            )
        mode = os.environ.get("RAY_AUTH_MODE")
        if mode is not None and mode.lower() != "token":  # Ray starts it without auth, and says nothing
            raise ArgumentError(
                f"RayExecutor({self.address!r}): RAY_AUTH_MODE={mode} in the environment would start a local Ray "
                "session that listens on every network interface without token authentication (anyone who "
                "reaches it can run code as you); unset RAY_AUTH_MODE or set it to 'token', or use "
                "DaskExecutor('local') / JoblibExecutor, which stay on loopback"
            )
        kw.setdefault("num_cpus", self._count or usable_cpus())  # (the CPUs this job may use: SLURM, taskset)
        kw.setdefault("include_dashboard", False)
        kw.setdefault("configure_logging", False)
        jax_x64_runtime_env(kw)  # (jax.config.update in the driver's script does not reach Ray's workers)
        if "_temp_dir" not in kw:  # Ray's socket paths must stay short: a private dir under /tmp
            self._session_dir = tempfile.mkdtemp(prefix="zr", dir="/tmp" if os.path.isdir("/tmp") else None)
            # Ray makes its temp dir and every folder in it world-writable (0777): a subfolder, so that
            # the private (0700) one above it keeps other users out of the sockets and logs
            kw["_temp_dir"] = os.path.join(self._session_dir, "r")
        _private_token()
        try:
            ray.init(**kw)
        except BaseException:
            self._remove_session_dir()
            raise
        _private_token()

    def _remove_session_dir(self) -> None:
        if self._session_dir is not None:
            shutil.rmtree(self._session_dir, ignore_errors=True)
            self._session_dir = None

    def _replace(self, w) -> None:
        self._retire(w)
        self._renew()

    def _retire(self, w) -> None:
        """Kill actor ``w`` (a call it runs stops); :meth:`_renew` starts its replacement. After Ctrl-C
        that waits for the next run: a new actor took a second or more to start, and train's
        checkpoint and the interrupt waited for it."""
        import ray

        if self._closing or w not in self._actors:  # closed during the run: no new actor
            return
        try:
            ray.kill(w.handle)
        except Exception:  # already gone
            pass
        w.ref = None
        if w not in self._retired:
            self._retired.append(w)

    def _renew(self) -> None:
        """Replace the actors :meth:`_retire` killed, starting the new ones together."""
        import ray

        old, self._retired = [w for w in self._retired if w in self._actors], []
        if self._closing or not old:
            return
        handles = [self._remote.remote() for _ in old]
        for w, h, pid in zip(old, handles, ray.get([h.pid.remote() for h in handles])):
            self._actors[self._actors.index(w)] = _RayActor(h, w.index, pid)

    @property
    def pids(self) -> list:
        """Process ids of the actors (for monitoring and tests)."""
        return [a.pid for a in self._actors]

    def close(self) -> None:
        """Kill the actors; shut Ray down if this executor started it."""
        self._closing = True  # a run in another thread stops (see _RayBackend.closed)
        if not self._actors and not self._owns_ray:
            return
        import ray

        for a in self._actors:
            try:
                ray.kill(a.handle)
            except Exception:  # already gone
                pass
        self._actors = []
        self._retired = []
        self._refs.clear()
        self._registry.clear()
        self._modules.clear()
        try:
            if self._owns_ray and ray.is_initialized():
                ray.shutdown()
        finally:
            if not ray.is_initialized():
                _ray_driver_state_back(self._before_ray)
                self._before_ray = None
            self._owns_ray = False
            _stop_reaper(self._reaper)  # a clean close: nothing to reap
            self._reaper = None
            self._remove_session_dir()

    def _dropped(self, tokens) -> None:
        for t in tokens:
            self._refs.pop(t, None)
            for a in self._actors:
                if t in a.has:
                    a.has.discard(t)
                    a.bound.drop(t)
                    a.handle.drop.remote(t)

    def _pickler(self):  # Ray sends with its own copy (its own registry of modules sent by value)
        return importlib.import_module("ray.cloudpickle")

    def _backend(self, payload, oracle):
        import ray

        self._renew()
        if payload.oracle_token not in self._refs:
            # pickled here (checked), loaded by each actor: a private copy whose arrays the oracle
            # may write (what the object store hands out is read-only), as on the other executors
            self._refs[payload.oracle_token] = ray.put(pack(payload.oracle, "Ray", self, module=ray.cloudpickle))
        refs = {"oracle": self._refs[payload.oracle_token],
                "params": ray.put(np.ascontiguousarray(to_numpy(payload.params)))}
        if payload.batch_token is not None:  # checked and pickled as oracles are; loaded by the actor
            refs["batch"] = ray.put(pack(payload.batch, "Ray", self, batch_name(payload.oracle, payload.batch),
                                         module=ray.cloudpickle))
        return _RayBackend(self, payload, refs)
