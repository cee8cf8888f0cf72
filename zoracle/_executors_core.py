"""Machinery shared by the parallel executors: what travels, what workers keep, who runs what.

Three pieces, each independent of the transport (processes, threads, Dask, Ray):

* :class:`Registry` (driver side) gives every oracle object a token the first time an
  executor sees it, so workers are sent an oracle once and afterwards only its token.
  A bound :class:`~zoracle.DataOracle` that defines ``unbind() -> (parent, batch)``
  travels as the parent's token plus the batch; workers re-bind locally.
* :class:`WorkerState` (worker side) keeps the oracles, bound oracles and parameters a
  worker has received and runs one task at a time on them.
* :func:`schedule` hands shards to idle workers, largest estimated cost first, retries a
  failed shard once on another worker and reassembles results in task order.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import pickle
import sys
import numbers
import time
import types
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from ._errors import (OracleError, WorkerTraceback, ZoracleError, _round_trips, exc_text, traceback_text,
                      with_worker_traceback)
from ._oracle import Oracle, loss_type
from ._plan import BaseTask, CoordTask, DirectionTask
from ._pickling import LoadFailed, Pickled, _file_refusing_pickler, cloudpickle_module, spawned_main_by_value
from ._retrying import RetriesExhausted

__all__ = ["Registry", "WorkerState", "BatchMirror", "Payload", "RunStats", "schedule", "describe_task",
           "ShardFailed", "ShardTimeout", "NestedRunError", "check_timeout", "ExecutorPickled", "StaysHere",
           "unsendable", "ToDeviceError", "Pickled", "pack", "LossKind", "abandon"]

#: oracles the driver keeps sent to workers before dropping the least recently used
KEEP_ORACLES = 4

#: the most workers an executor starts (10**30 was accepted, and the first run hung starting them)
MAX_WORKERS = 4096
#: bound batches a worker keeps (first in, first out; the driver mirrors the rule)
KEEP_BATCHES = 4
#: seconds a worker may spend loading a shard's oracle (unpickling it: imports, weights) before
#: the shard's own ``timeout`` starts, for transports that report the end of loading
LOAD_S = 60.0
#: seconds a run waits for a worker while none is known (a cluster still starting, or whose
#: workers all left) before it raises
NO_WORKER_WAIT_S = 60.0


def describe_task(task) -> str:
    """A short human description of a shard, for error messages."""
    if isinstance(task, CoordTask):
        c = task.coords
        where = f" in block {task.block}" if task.mode == "split" else ""
        span = f"coordinate {int(c[0])}" if len(c) == 1 else f"{len(c)} coordinates {int(c[0])}..{int(c[-1])}"
        return f"{span}{where} ({task.mode})"
    if isinstance(task, DirectionTask):
        unit = "directions" if task.scale is None else "samples"
        return f"{unit} {task.lo}..{task.hi - 1}"
    if isinstance(task, BaseTask):
        return "the base point"
    return type(task).__name__


# ----------------------------------------------------------------------------- driver side
@dataclass(frozen=True)
class Payload:
    """What one run needs on a worker, each item named by a token.

    ``oracle`` is the user oracle (or the parent of a bound DataOracle when ``batch`` is
    set); ``batch`` the bound batch; ``params`` the parameters of this run.
    """

    oracle_token: str
    oracle: object
    batch_token: str | None
    batch: object
    params_token: str
    params: object

    @property
    def spec(self) -> tuple:
        return (self.oracle_token, self.batch_token, self.params_token)

    def missing(self, w) -> list:
        """Items worker ``w`` lacks for this run, from the driver's mirror of its caches
        (``w.has`` oracle tokens, ``w.bound`` (oracle, batch) pairs, ``w.params_token``)."""
        names = [] if self.oracle_token in w.has else ["oracle"]
        if self.batch_token is not None and (self.oracle_token, self.batch_token) not in w.bound:
            names.append("batch")
        if w.params_token != self.params_token:
            names.append("params")
        return names

    def undelivered(self, w) -> None:
        """Forget in ``w``'s mirror this run's oracle (with its batches) and parameters.

        Called when a shard comes back with an error, which may have come from storing the
        items (an oracle whose ``__setstate__`` raised): the caller also makes the worker drop
        the oracle, so both sides agree and the next shard sends everything again.
        """
        w.has.discard(self.oracle_token)
        w.bound.drop(self.oracle_token)
        w.params_token = None

    def delivered(self, w, names) -> None:
        """Record in ``w``'s mirror that the items ``names`` reached it."""
        w.has.add(self.oracle_token)
        if "batch" in names:
            w.bound.add((self.oracle_token, self.batch_token))
        w.params_token = self.params_token


class Registry:
    """Tokens for objects by identity; keeps a strong reference so an id is never reused."""

    def __init__(self, keep: int = KEEP_ORACLES):
        self.keep = keep
        self._items: OrderedDict = OrderedDict()  # id(obj) -> (obj, token)

    def token(self, obj) -> tuple[str, list]:
        """``(token, dropped_tokens)`` for ``obj``; dropped ones left the cache."""
        key = id(obj)
        hit = self._items.get(key)
        if hit is not None and hit[0] is obj:
            self._items.move_to_end(key)
            return hit[1], []
        token = uuid.uuid4().hex[:16]
        self._items[key] = (obj, token)
        dropped = []
        while len(self._items) > self.keep:
            dropped.append(self._items.popitem(last=False)[1][1])
        return token, dropped

    def forget(self, obj) -> str | None:
        hit = self._items.pop(id(obj), None)
        return hit[1] if hit is not None else None

    def forget_methods(self, obj) -> list:
        """Tokens dropped for the bound methods held that ``obj`` names: ``obj.loss`` is a new
        object at every access, so ``forget(obj.loss)`` (or ``forget(obj)``) must find the one
        sent by what it is bound to (``__self__`` and ``__func__``), not by identity."""
        self_, func = (obj.__self__, obj.__func__) if isinstance(obj, types.MethodType) else (obj, None)
        # a snapshot (one C call): another thread's run adds and drops oracles on this executor meanwhile
        keys = [k for k, (held, _) in list(self._items.items())
                if isinstance(held, types.MethodType) and held.__self__ is self_
                and (func is None or held.__func__ is func)]
        return [hit[1] for hit in (self._items.pop(k, None) for k in keys) if hit is not None]

    def tokens(self) -> set:
        """The tokens of the objects held now."""
        return {token for _, token in self._items.values()}

    def clear(self) -> None:
        self._items.clear()


def split_bound(fn):
    """``(parent, batch)`` for a bound oracle implementing ``unbind``, else ``(fn, None)``.

    The optional protocol: ``unbind()`` returns ``(parent, batch)`` such that
    ``parent.bind(batch)`` behaves like the bound oracle, or None when the object is not
    bound. ``parent`` should be the same object every step (it is shipped once).
    """
    unbind = getattr(fn, "unbind", None)
    if callable(unbind):
        got = unbind()
        if got is not None:
            parent, batch = got
            if not callable(getattr(parent, "bind", None)):
                raise ZoracleError(
                    f"{type(fn).__name__}.unbind() returned a parent without bind(batch): {type(parent).__name__}"
                )
            return parent, batch
    return fn, None


# ----------------------------------------------------------------------------- worker side
_UNSET = object()


class BatchMirror:
    """The driver's exact copy of which bound batches a worker holds.

    Worker and driver apply the same first-in-first-out rule with the same capacity to the
    same sequence of batches (the driver records a batch when it sends it, the worker when
    it receives it), so the driver never omits a batch the worker has dropped.
    """

    def __init__(self, keep: int = KEEP_BATCHES):
        self.keep = keep
        self.keys: OrderedDict = OrderedDict()

    def __contains__(self, key) -> bool:
        return key in self.keys

    def add(self, key) -> None:
        self.keys[key] = None
        while len(self.keys) > self.keep:
            self.keys.popitem(last=False)

    def drop(self, token) -> None:
        for key in [k for k in self.keys if k[0] == token]:
            del self.keys[key]


def use_device(device) -> None:
    """Make a CUDA ``device`` ("cuda:1") the current device of torch and CuPy, where the process
    has imported them (a worker imports neither for an oracle that does not use them): what
    allocates without naming a device (CuPy arrays, torch.cuda.synchronize(), a kernel's
    workspace) then lands on the worker's GPU, not on GPU 0. A bare index (1, np.int64(1): torch's
    cuda:1) counts as "cuda:1". Anything else: nothing."""
    if isinstance(device, numbers.Integral) and not isinstance(device, bool):
        index = int(device)
    else:
        text = str(device)
        if not text.startswith("cuda"):
            return
        try:
            index = int(text.partition(":")[2] or 0)
        except ValueError:  # not a CUDA index: to_device says what it means
            return
    torch, cupy = sys.modules.get("torch"), sys.modules.get("cupy")
    try:  # no such GPU: to_device reports what is wrong
        if torch is not None:
            torch.cuda.set_device(index)
    except Exception:
        pass
    try:
        if cupy is not None:
            cupy.cuda.Device(index).use()
    except Exception:
        pass


class WorkerState:
    """Oracles, bound batches and parameters one worker holds, by token.

    ``device`` (DeviceExecutor) is handed to an oracle's optional ``to_device(device)``
    once, when the oracle arrives; the returned object is what the worker queries.
    Oracles stay until the driver drops them (``keep=None``) or, with ``keep``, the least
    recently received ones go first (for transports that send the oracle with every
    shard). Batches follow :class:`BatchMirror`'s rule.
    """

    def __init__(self, device=None, keep: int | None = None, keep_batches: int = KEEP_BATCHES):
        self.device = device
        self.keep = keep
        self.oracles: OrderedDict = OrderedDict()  # token -> user oracle (or parent)
        self.batches: OrderedDict = OrderedDict()  # (token, batch_token) -> batch, FIFO
        self.keep_batches = keep_batches
        self.wrapped: dict = {}  # (token, batch_token or None) -> Oracle wrapper
        self.params: tuple = (None, None)  # (token, array): only the current run's

    def put_oracle(self, token, fn) -> None:
        if isinstance(fn, Pickled):
            fn = fn.load()
        if self.device is not None:
            use_device(self.device)  # torch / CuPy as the oracle imported them
        move = getattr(fn, "to_device", None)
        if self.device is not None and callable(move):
            moved = move(self.device)
            if not callable(moved):  # moved in place, `return self` forgotten: every worker would fail
                raise ToDeviceError(
                    f"{type(fn).__name__}.to_device({self.device!r}) returned {type(moved).__name__}, not the "
                    "oracle to query: return the moved oracle from to_device (`return self` when it moves "
                    "the oracle in place)"
                )
            fn = moved
        self.oracles[token] = fn
        while self.keep is not None and len(self.oracles) > self.keep:
            old, _ = self.oracles.popitem(last=False)
            self.drop(old)

    def put_batch(self, key, batch) -> None:
        self.batches[key] = batch.load() if isinstance(batch, Pickled) else batch
        while len(self.batches) > self.keep_batches:
            old, _ = self.batches.popitem(last=False)
            self.wrapped.pop(old, None)

    def drop(self, token) -> None:
        self.oracles.pop(token, None)
        for key in [k for k in self.batches if k[0] == token]:
            del self.batches[key]
        for key in [k for k in self.wrapped if k[0] == token]:
            del self.wrapped[key]

    def oracle(self, oracle_token, batch_token) -> Oracle:
        key = (oracle_token, batch_token)
        hit = self.wrapped.get(key)
        if hit is not None:
            return hit
        if oracle_token not in self.oracles:
            raise ZoracleError(f"worker has no oracle for token {oracle_token}; please report")
        fn = self.oracles[oracle_token]
        if batch_token is not None:
            if key not in self.batches:
                raise ZoracleError(f"worker has no batch for token {batch_token}; please report")
            fn = fn.bind(self.batches[key])
        wrapped = Oracle(fn)
        self.wrapped[key] = wrapped
        return wrapped

    def load(self, spec, oracle=None, batch=_UNSET, params=None) -> None:
        """Store the items of a run this worker does not hold yet (unpickling the oracle)."""
        oracle_token, batch_token, params_token = spec
        if oracle is not None and oracle_token not in self.oracles:
            self.put_oracle(oracle_token, oracle)
        if batch is not _UNSET and (oracle_token, batch_token) not in self.batches:
            self.put_batch((oracle_token, batch_token), batch)
        if params is not None:
            self.params = (params_token, params)

    def run(self, spec, task, oracle=None, batch=_UNSET, params=None):
        """Run ``task``; items not held yet come in ``oracle`` / ``batch`` / ``params``.

        Returns ``(losses, seconds, loss_kind)`` (see :func:`loss_kind`).
        """
        oracle_token, batch_token, params_token = spec
        self.load(spec, oracle, batch, params)
        if self.params[0] != params_token:
            raise ZoracleError("worker received a shard without this run's parameters; please report")
        wrapped = self.oracle(oracle_token, batch_token)
        wrapped.base_value = None  # (the wrapper is kept between runs: the loss kind this task saw, not an earlier one)
        t0 = time.perf_counter()
        out = task.run(wrapped, self.params[1])
        return np.asarray(out, dtype=np.float64), time.perf_counter() - t0, loss_kind(wrapped)


def loss_kind(oracle: Oracle):
    """The type of the losses ``oracle`` returned (``"float32"``, ``"int"``), when not a Python float:
    it tells the driver the losses' precision (see :func:`~zoracle._oracle.coarse_losses`), which a
    worker's copy of the oracle saw and the driver's did not."""
    value = getattr(oracle, "base_value", None)
    if value is None or isinstance(value, float):
        return None
    return loss_type(value)  # ("bfloat16", not "torch.bfloat16": the driver compares precisions by name)


class LossKind:
    """Stands in, on the driver, for a loss a worker saw: only its ``dtype`` name travels."""

    def __init__(self, dtype: str):
        self.dtype = dtype


class _Abandoned:
    """Stands in for the oracle of a shard given up on (a timeout on the calling process or a
    thread): every further query of that shard's thread fails, so it stops instead of running
    beside later calls."""

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args, **kwargs):
        raise ShardTimeout("this shard timed out and was abandoned: no more queries")

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ShardTimeout("this shard timed out and was abandoned: no more queries")


def abandon(oracle) -> None:
    """Stop the threads still running shards of ``oracle`` (an estimate's own :class:`Oracle`
    wrapper, made per estimate) at their next query: a hung call cannot be stopped, but the rest
    of its shard would otherwise query an oracle made for serial use beside the next estimate."""
    if isinstance(oracle, Oracle):
        oracle.fn = _Abandoned(oracle.fn)


def portable_error(exc: BaseException):
    """``exc`` if it pickles, else an ``OracleError`` rebuilt from its fields alone (a worker
    that pickles exceptions with their chain, as Dask's does through tblib, would carry the
    oracle's own exception, which may not unpickle: its class only on the worker, or an
    ``__init__`` that takes other arguments than its ``args``), else a RuntimeError carrying
    its type and message."""
    if _round_trips(exc):
        return exc
    if isinstance(exc, OracleError):
        cls, args = exc.__reduce__()[:2]  # the cause and value as text where they do not round-trip
        rebuilt = cls(*args)
        if _round_trips(rebuilt):
            return rebuilt
    return RuntimeError(f"{type(exc).__name__}: {exc}")


def error_outcome(exc: BaseException) -> tuple:
    """``("err", exception, traceback_text, message)`` ready to cross a process boundary.

    The message travels separately: an exception's ``__reduce__`` may rebuild it without
    every detail of the original text. The exception travels as an :class:`Either` of itself and
    its text alone: a worker can only check that it unpickles there, and a class the worker imports
    (an oracle's client library, installed on the workers only) may not unpickle on the driver.
    """
    sent = portable_error(exc)
    return ("err", Either(sent, as_text(sent)), traceback_text(exc), str(exc))


def as_text(exc: BaseException) -> BaseException:
    """``exc`` with nothing but builtin types and text in it: an :class:`OracleError` keeps its
    query, its cause as ``RuntimeError("Type: text")``; anything else is a RuntimeError of its text."""
    if isinstance(exc, OracleError):
        cause = None if exc.cause is None else RuntimeError(f"{type(exc.cause).__name__}: {exc_text(exc.cause)}")
        value = exc.value if type(exc.value) in (int, float, str, type(None)) else repr(exc.value)
        try:
            return OracleError(exc.query, value, cause, exc.detail)
        except Exception:  # a field that is not what OracleError takes: the text below
            pass
    return RuntimeError(f"{type(exc).__name__}: {exc_text(exc)}")


class Either:
    """``obj`` on its way to another process, or ``fallback`` where ``obj`` does not unpickle there
    (:func:`schedule` takes ``obj`` out of one that did not travel, on threads)."""

    def __init__(self, obj, fallback):
        self.obj, self.fallback = obj, fallback

    def __reduce__(self):
        try:
            blob = pickle.dumps(self.obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            return (_loaded_or, (None, self.fallback))
        return (_loaded_or, (blob, self.fallback))


def _loaded_or(blob, fallback):
    if blob is not None:
        try:
            return pickle.loads(blob)
        except Exception:  # e.g. a class only the sender can import
            pass
    return fallback


def run_task_guarded(oracle: Oracle, task, params):
    """``task.run`` as ``("ok", losses, seconds, loss_kind)`` or ``("err", exception, traceback_text)``."""
    try:
        t0 = time.perf_counter()
        out = np.asarray(task.run(oracle, params), dtype=np.float64)
        return ("ok", out, time.perf_counter() - t0, loss_kind(oracle))
    except BaseException as exc:  # reported to the driver, which decides about retries
        return error_outcome(exc)


def run_guarded(state: WorkerState, spec, task, **items):
    """``("ok", losses, seconds, loss_kind)`` or ``("err", exception, traceback_text)``; never raises."""
    try:
        out, secs, kind = state.run(spec, task, **items)
        return ("ok", out, secs, kind)
    except BaseException as exc:  # reported to the driver, which decides about retries
        return error_outcome(exc)


# ----------------------------------------------------------------------------- sharding
@dataclass(frozen=True)
class RunStats:
    """What the last ``run`` of an executor did.

    Attributes
    ----------
    shards : int
        Shards sent to workers (after cost balancing).
    retries : int
        Shards that failed once and ran again on another worker.
    wall_s : float
        Wall-clock seconds of the run on the driver.
    busy_s : float
        Seconds workers spent inside ``task.run`` (summed over shards).
    n_workers : int
        Workers available during the run.
    """

    shards: int
    retries: int
    wall_s: float
    busy_s: float
    n_workers: int

    @property
    def overhead_per_shard_s(self) -> float:
        """Idle-or-transfer seconds per shard: ``(wall_s * n_workers - busy_s) / shards``."""
        return max(0.0, self.wall_s * self.n_workers - self.busy_s) / max(1, self.shards)


def cost_key(task):
    if isinstance(task, CoordTask):
        return ("coord", task.mode, task.block)
    if isinstance(task, DirectionTask):
        return ("dir", task.use_batch)
    return ("base",)


class CostModel:
    """Seconds per query, learnt from the shards workers ran, per oracle and task kind.

    Until a kind was measured, a SplitOracle's optional ``block_costs`` (relative cost of
    one coordinate's suffix per block) is used, and 1.0 otherwise. Measured costs come from
    real shards, so balancing never spends extra oracle queries.
    """

    def __init__(self):
        self._seen: OrderedDict = OrderedDict()  # (token, key) -> seconds per query

    def unit(self, token, fn, task) -> float:
        """Estimated cost of one column of ``task`` (one query per step)."""
        return self._per_query(token, fn, task) * len(task.steps)

    def _per_query(self, token, fn, task) -> float:
        key = (token, cost_key(task))
        if key in self._seen:
            return self._seen[key]
        measured = {k: v for (tok, k), v in self._seen.items() if tok == token}
        if isinstance(task, CoordTask) and task.mode == "split":
            try:
                hinted = getattr(fn, "block_costs", None)
            except Exception:  # a hint that fails to compute is no reason to fail the run
                hinted = None
            if hinted is not None:
                # hints are relative: put them on the measured scale when one exists
                ratios = [v / float(hinted[k[2]]) for k, v in measured.items()
                          if k[:2] == ("coord", "split") and 0 <= k[2] < len(hinted) and float(hinted[k[2]]) > 0]
                scale = float(np.median(ratios)) if ratios else 1.0
                return float(hinted[task.block]) * scale
        return float(np.median(list(measured.values()))) if measured else 1.0

    def measured(self, token) -> bool:
        """Whether a shard of ``token``'s oracle was timed (:meth:`unit` gives seconds then)."""
        return any(tok == token for tok, _ in self._seen)

    def learn(self, token, task, seconds: float) -> None:
        if task.size <= 0 or seconds <= 0:
            return
        key = (token, cost_key(task))
        per = seconds / (task.size * len(task.steps))
        old = self._seen.get(key)
        self._seen[key] = per if old is None else 0.5 * (old + per)
        self._seen.move_to_end(key)
        while len(self._seen) > 64:
            self._seen.popitem(last=False)


# ----------------------------------------------------------------------------- scheduling
def _deterministic(exc) -> bool:
    """A loss value that is wrong (NaN, wrong shape) will be wrong again: no retry.

    So will a nested run of the executor from inside its own oracle, and an oracle whose
    ``to_device`` does not return it, an oracle or batch that a worker could not load
    (:class:`~zoracle._pickling.LoadFailed`: every worker would fail the same way), and a
    ``zo.retrying`` call that failed all its tries (the shard again would pay its queries again).
    """
    if isinstance(exc, (NestedRunError, ToDeviceError, LoadFailed)):
        return True
    final = (NestedRunError, RetriesExhausted)
    return isinstance(exc, OracleError) and (exc.cause is None or isinstance(exc.cause, final))


def _annotate(exc: BaseException, shard: int, n: int, task, where) -> BaseException:
    note = f"[shard {shard + 1}/{n}: {describe_task(task)}, on {where}]"  # (a line of its own below a program's stderr)
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (exc.args[0] + ("\n" if "\n" in exc.args[0] else " ") + note,) + tuple(exc.args[1:])
    exc.shard = shard
    return exc


class ShardFailed(ZoracleError):
    """A shard failed on two workers (the cause is chained)."""


class ShardTimeout(ShardFailed, TimeoutError):
    """A shard ran longer than the executor's ``timeout`` (the message names shard and worker).

    Attributes
    ----------
    shard : int
        Index of the shard (0-based) in the run.
    worker : str
        The worker it was running on.
    timeout : float
        The limit, in seconds.
    """


class NestedRunError(ZoracleError, RuntimeError):
    """An oracle called ``run`` on the executor that is running it (this would deadlock)."""


class ToDeviceError(ZoracleError, TypeError):
    """An oracle's ``to_device(device)`` returned something other than the oracle to query
    (None: moved in place without ``return self``); certain to fail again, never retried."""


class ExecutorPickled(TypeError):
    """Raised by pickling an executor (an oracle holding one, on its way to workers)."""

    def __init__(self, executor):
        super().__init__(f"cannot pickle the executor {type(executor).__name__}")
        self.executor = executor


class StaysHere:
    """Mixin of executors: pickling one raises :class:`ExecutorPickled` (an oracle holding it is
    on its way to workers; :func:`unsendable` names the fix), while ``copy.copy`` still gives a
    shallow copy sharing the workers."""

    def __reduce__(self):
        raise ExecutorPickled(self)

    def __copy__(self):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new


def oracle_label(obj) -> str:
    """How errors name an oracle: its class, or what a function, bound method or partial is of
    ("function f", "method Problem.loss", "partial(function loss)"), not "function" or "method"."""
    import functools
    import types

    if isinstance(obj, functools.partial):
        return f"partial({oracle_label(obj.func)})"
    if isinstance(obj, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
        return f"{type(obj).__name__.replace('builtin_function_or_method', 'function')} " \
               f"{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"
    return type(obj).__name__


def unsendable(oracle, exc: BaseException, where: str, running, what: str | None = None) -> ZoracleError:
    """The error for ``oracle`` failing to serialize for ``where``'s workers with ``exc``.

    An oracle that holds an executor gets advice about nesting (a lock in the traceback would
    mislead: the advice to use threads then meets :class:`NestedRunError`); ``running`` is
    the executor sending it. ``what`` names the object (default: "the oracle <its class>").
    """
    what = what or f"the oracle {oracle_label(oracle)}"
    seen, e = set(), exc
    while e is not None and id(e) not in seen and not isinstance(e, ExecutorPickled):
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    if isinstance(e, ExecutorPickled):
        held = type(e.executor).__name__
        if running is not None and running in (e.executor, getattr(e.executor, "_impl", None)):
            return NestedRunError(
                f"{what} holds the {held} that runs it (to call estimate_gradient / train inside the "
                "oracle): an executor cannot run inside its own shards (on threads it would deadlock, and it "
                "cannot travel to worker processes); use SerialExecutor() inside the oracle, or an executor "
                "the oracle creates itself on the worker (e.g. on its first call, not kept in what it pickles)"
            )
        return ZoracleError(
            f"{what} holds an executor ({held}), which cannot be sent to {where} workers (it owns "
            "processes, threads and locks); let the oracle create its executor on the worker (e.g. on its first "
            "call, not kept in what it pickles), or use SerialExecutor() inside the oracle"
        )
    return ZoracleError(
        f"{what} cannot be sent to {where} workers ({type(exc).__name__}: {exc}); make it picklable "
        "(no locks, open files or sessions in its attributes, or rebuild them in __setstate__) or use "
        "JoblibExecutor(backend='threading')"
    )


def pack(obj, where: str, running, what: str | None = None, module=None) -> Pickled:
    """``obj`` as :class:`Pickled` bytes for ``where``'s workers (``module``: a cloudpickle,
    by default the installed one), or the :func:`unsendable` error naming ``what``."""
    import io

    what = what or f"the oracle {oracle_label(obj)}"
    buf = io.BytesIO()
    module = module or cloudpickle_module()
    try:
        with spawned_main_by_value(module):
            _file_refusing_pickler(module)(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    except Exception as exc:
        raise unsendable(obj, exc, where, running, what) from exc
    return Pickled(buf.getvalue(), what)


def batch_name(parent, batch) -> str:
    """How errors name a bound oracle's batch."""
    return f"the batch ({type(batch).__name__}) bound by {type(parent).__name__}.bind"


def check_timeout(timeout, name: str = "`timeout`"):
    """``timeout`` as a positive float or None, else an ArgumentError naming ``name``."""
    import numbers

    from ._errors import ArgumentError

    if timeout is None:
        return None
    import threading

    # above threading's largest wait, a join or a future's result raises OverflowError at the first run
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or \
            not (0 < float(timeout) <= threading.TIMEOUT_MAX):
        raise ArgumentError(
            f"{name} must be a positive number of seconds per shard, at most {threading.TIMEOUT_MAX:.0f} "
            f"({'omit it' if name.startswith('--') else 'or None'} for no limit), got {timeout!r}"
        )
    return float(timeout)


class WorkerDied(ZoracleError):
    """The worker running a shard exited (killed, crashed, out of memory)."""


def _cause_text(exc) -> str:
    return str(exc) if isinstance(exc, WorkerDied) else f"{type(exc).__name__}: {exc}"


_job_ids = itertools.count()


def _timed_out(shard: int, n: int, task, where: str, timeout: float, loading: bool = False) -> ShardTimeout:
    if loading:
        err = ShardTimeout(
            f"shard {shard + 1}/{n} ({describe_task(task)}): {where} did not finish loading the oracle (unpickling "
            f"it) within {max(timeout, LOAD_S):g} s; its __setstate__ (or an import it needs) hangs or is slower "
            "than that: make loading faster (load weights lazily, on the first call), or pass a `timeout` above "
            "the loading time (loading may take max(timeout, 60 s))"
        )
    else:
        err = ShardTimeout(
            f"shard {shard + 1}/{n} ({describe_task(task)}) did not finish within timeout={timeout:g} s on {where}; "
            "the oracle hangs or is slower than the limit: fix the oracle or pass a larger `timeout`"
        )
    err.shard, err.worker, err.timeout = shard, where, timeout
    return err


def closed_during_run(detail: str = "") -> ZoracleError:
    """The error of a run whose executor ``close()`` stopped from another thread."""
    return ZoracleError(f"the executor was closed (close() from another thread) during this run{detail}; the estimate "
                        "is lost: start the executor again (or use another) and run it again")


@contextlib.contextmanager
def unless_closed(backend):
    """A cluster call that fails because ``close()`` took its client or actors away (from another
    thread) raises :func:`closed_during_run`; any other failure as it is."""
    try:
        yield
    except Exception:
        if backend.closed():
            raise closed_during_run() from None
        raise


#: times a shard may be lost through another worker's death (its inputs went with it) before
#: that counts as one of its two failures
LOST_RETRIES = 3


def schedule(backend, shards, costs, stats_cb=None, timeout=None, kind_cb=None, speeds=None):
    """Run ``shards`` on ``backend``'s workers; results in shard order.

    ``backend`` provides ``idle()`` (idle worker handles), ``workers()`` (all live ones),
    ``name(w)`` (a stable label such as a pid), ``submit(w, jid, shard)`` and
    ``wait() -> [(w, jid, outcome)]`` with outcome ``("ok", losses, seconds)``,
    ``("err", exc, traceback_text)``, ``("dead", reason)`` or ``("lost", reason)`` (the shard
    never failed: an input it needed went with another worker that died; it runs again, without
    counting as a failure, up to :data:`LOST_RETRIES` times); ``abort(workers, hung)`` stops
    in-flight work (``hung``: the workers a timeout found late, or True after Ctrl-C, and after
    SystemExit where the backend's optional ``quick_abort`` is True: they may be inside the oracle;
    False after an error).
    ``submit`` may return True when the worker first loads the oracle and will report the
    end of loading with the outcome ``("loaded",)``: until then the shard may take
    ``max(timeout, LOAD_S)`` seconds, and its ``timeout`` starts when loading ends.

    A shard that fails is retried once on a worker it has not failed on (the same one only
    when no other exists). A second failure raises: the oracle's own
    :class:`~zoracle.OracleError` (annotated with the shard) when the oracle raised, else a
    :class:`ZoracleError` naming the shard and both causes. A wrong loss value (NaN, bad
    shape) is deterministic and raises at once, without retry.

    When shards wait and none is in flight, no worker is known: the run calls the optional
    ``refresh()`` (ask for the worker list again) and backs off, and raises a
    :class:`ZoracleError` once that has lasted :data:`NO_WORKER_WAIT_S` seconds.

    With ``timeout`` (seconds), ``wait(timeout)`` must return (possibly nothing) within
    that time; a shard running longer raises :class:`ShardTimeout` naming the shard and the
    worker (no retry; ``abort`` stops the in-flight work). A ``KeyboardInterrupt`` (or
    any other non-``Exception``) raised by the oracle propagates as it is. A backend's optional
    ``closed()`` says the executor was closed during the run (from another thread): the run raises.

    ``speeds`` (a :class:`~zoracle._executors_speed.WorkerSpeeds`) holds a worker much slower than
    the others back from a shard it would finish after they finished everything left, and learns
    from this run's shards.
    """
    run = _Run(backend, shards, costs, stats_cb, timeout, kind_cb, speeds)
    closed = getattr(backend, "closed", None)  # close() from another thread during this run
    try:
        while run.queue or run.inflight:
            if closed is not None and closed():
                raise closed_during_run(f", with {len(run.inflight) + len(run.queue)} of its {run.n} shards unfinished")
            run.submit_to_idle_workers()
            if not run.inflight:  # shards wait and no worker took one: none is known (see the docstring)
                run.wait_for_a_worker()
                continue
            run.starved, run.naps = None, 0
            if timeout is None:
                answers = backend.wait()
            else:
                left = min(run.started[j] + run.limit(j) for j in run.inflight) - time.perf_counter()
                answers = backend.wait(max(0.0, left))
            for w, jid, outcome in answers:
                run.take(w, jid, outcome)
            if timeout is not None:
                run.raise_if_late()
    except BaseException as exc:
        if run.inflight:  # the late shards' workers may be inside a hung call, all of them after Ctrl-C;
            # an error elsewhere leaves every worker to finish its shard. A SIGTERM handler's SystemExit must
            # reach the run's save at once: local workers are replaced as after Ctrl-C (waiting ABORT_WAIT_S
            # for their shards held the save back 10 s), a cluster's restarted at its next run or close (seconds)
            stop_now = isinstance(exc, KeyboardInterrupt) or (
                not isinstance(exc, (Exception, GeneratorExit)) and getattr(backend, "quick_abort", False))
            hung = run.stuck if isinstance(exc, ShardTimeout) else stop_now
            backend.abort([w for _, w in run.inflight.values()], hung=hung)
        raise
    if speeds is not None:
        speeds.learn(run.done, {backend.name(w) for w in backend.workers()})
    return run.results, run.retries, run.busy


class _Run:
    """One :func:`schedule` call: its shards waiting, in flight and failed, their results, and the
    steps of its loop (submit, wait for a worker, take an answer, find the late)."""

    def __init__(self, backend, shards, costs, stats_cb, timeout, kind_cb, speeds=None):
        self.backend, self.shards, self.timeout = backend, shards, timeout
        self.costs, self.speeds, self.done = costs, speeds, {}  # done: what each worker ran (speeds.note)
        self.stats_cb, self.kind_cb = stats_cb, kind_cb
        self.n = n = len(shards)
        self.results, self.retries, self.busy = [None] * n, 0, 0.0
        self.queue = deque(sorted(range(n), key=lambda i: -costs[i]))
        self.failed_on = [[] for _ in range(n)]
        self.lost = [0] * n  # times each shard was lost through no failure of its own
        self.inflight = {}  # jid -> (shard index, worker)
        self.stuck = []  # the workers of the shards a timeout found late
        self.started = {}  # jid -> perf_counter at submission (or when its worker finished loading the oracle)
        self.loading = set()  # jids whose worker is still loading the oracle (LOAD_S, not timeout, applies)
        self.starved, self.naps = None, 0  # perf_counter since when shards have waited with no worker to take them

    def limit(self, jid) -> float:
        return max(self.timeout, LOAD_S) if jid in self.loading else self.timeout

    def submit_to_idle_workers(self, limited=True) -> None:
        """Each idle worker takes the first waiting shard that has not failed on it (or that has failed on
        every live worker) and that it is not too slow for (``speeds``; where none took one, any)."""
        backend, queue, costs = self.backend, self.queue, self.costs
        limited = limited and self.speeds is not None
        for w in backend.idle():
            if not queue:
                break
            live = {backend.name(x) for x in backend.workers()}
            largest = math.inf
            if limited:
                others = [x for x in backend.workers() if x != w]
                remaining = sum(costs[i] for i in queue) + sum(costs[i] for i, _ in self.inflight.values())
                largest = self.speeds.largest(w, others, remaining, backend.name)
            pick = None
            for i in queue:
                bad = {name for name, _ in self.failed_on[i]}
                if costs[i] <= largest and (backend.name(w) not in bad or not (live - bad)):
                    pick = i
                    break
            if pick is None:
                continue
            queue.remove(pick)
            jid = next(_job_ids)
            self.inflight[jid] = (pick, w)
            if backend.submit(w, jid, self.shards[pick]):
                self.loading.add(jid)
            self.started[jid] = time.perf_counter()  # after submit: a worker's start-up is not the shard's
        if limited and queue and not self.inflight:  # (a retry only a slow worker may take)
            self.submit_to_idle_workers(limited=False)

    def wait_for_a_worker(self) -> None:
        """Shards wait and none is in flight: ask for the worker list again (``refresh()``) and back off;
        raise once that has lasted :data:`NO_WORKER_WAIT_S` seconds."""
        now = time.perf_counter()
        self.starved = now if self.starved is None else self.starved
        if now - self.starved >= NO_WORKER_WAIT_S:
            i, n = self.queue[0], self.n
            raise ZoracleError(
                f"no worker took shard {i + 1}/{n} ({describe_task(self.shards[i])}) within "
                f"{NO_WORKER_WAIT_S:g} s: the executor knows no live worker; start workers (or check "
                "the scheduler's address and that its workers are running), then run again"
            )
        refresh = getattr(self.backend, "refresh", None)
        if refresh is not None:
            refresh()
        time.sleep(min(0.25, 0.002 * 2 ** self.naps))
        self.naps += 1

    def take(self, w, jid, outcome) -> None:
        """One answer: a result kept, a lost shard queued again, a failure retried once on another worker
        or raised (at once where it is deterministic)."""
        inflight, shards, n = self.inflight, self.shards, self.n
        if jid not in inflight:
            return  # a stale answer from an aborted run
        if outcome[0] == "loaded":  # the oracle is loaded: the shard's own time starts now
            self.loading.discard(jid)
            self.started[jid] = time.perf_counter()
            return
        self.loading.discard(jid)
        i, _ = inflight.pop(jid)
        self.started.pop(jid, None)
        if outcome[0] == "err" and isinstance(outcome[1], Either):  # one that did not travel (threads)
            outcome = ("err", outcome[1].obj) + tuple(outcome[2:])
        elif outcome[0] == "err" and len(outcome) > 2:  # it lost its traceback on the way: the worker's text
            with_worker_traceback(outcome[1], outcome[2])
        if outcome[0] == "ok":
            self.results[i] = outcome[1]
            self.busy += outcome[2]
            if self.speeds is not None:
                self.speeds.note(self.done, self.backend.name(w), cost_key(shards[i]), outcome[2], self.costs[i])
            if self.kind_cb is not None and len(outcome) > 3 and outcome[3] is not None:
                self.kind_cb(outcome[3])  # the type of the losses a worker saw (float32, int)
            if self.stats_cb is not None:
                self.stats_cb(shards[i], outcome[2])
            return
        if outcome[0] == "lost":
            self.lost[i] += 1
            if self.lost[i] <= LOST_RETRIES:  # not its failure: it runs again, and blames no one
                self.queue.appendleft(i)
                return
            outcome = ("err", ShardFailed(f"lost {self.lost[i]} times as other workers died ({outcome[1]})"), "")
        where = self.backend.name(w)
        if outcome[0] == "err" and not isinstance(outcome[1], Exception):
            raise outcome[1]  # KeyboardInterrupt, SystemExit: never retried nor wrapped
        if outcome[0] == "dead":
            cause, tb = WorkerDied(f"the worker died ({outcome[1]})"), ""
        else:
            cause, tb = outcome[1], outcome[2]
            if len(outcome) > 3 and isinstance(outcome[3], str) and str(cause) != outcome[3]:
                cause.args = (outcome[3],)  # the original text, details included
        if _deterministic(cause):
            if isinstance(cause, OracleError) and isinstance(cause.cause, NestedRunError):
                cause = cause.cause  # a nested run on threads: NestedRunError, as on processes
            raise _annotate(cause, i, n, shards[i], where)
        self.failed_on[i].append((where, cause))
        if len(self.failed_on[i]) >= 2:
            (w1, c1), (w2, c2) = self.failed_on[i]
            if isinstance(cause, OracleError):
                raise _annotate(cause, i, n, shards[i], f"{w2}, after failing on {w1} too")
            if isinstance(c2.__cause__, WorkerTraceback):  # the message below shows it
                c2.__cause__ = None
            err = ShardFailed(
                f"shard {i + 1}/{n} ({describe_task(shards[i])}) failed twice: on {w1}: "
                f"{_cause_text(c1)}; then on {w2}: {_cause_text(c2)}"
                + (f"\nworker traceback:\n{tb}" if tb else "")
            )
            err.shard = i
            raise err from cause
        self.retries += 1
        self.queue.appendleft(i)

    def raise_if_late(self) -> None:
        """A shard past its limit raises :class:`ShardTimeout` (naming a failure that awaits its retry)."""
        inflight, shards, n, failed_on = self.inflight, self.shards, self.n, self.failed_on
        now = time.perf_counter()
        late = [j for j in inflight if now - self.started[j] >= self.limit(j)]
        if late:
            i, w = inflight[late[0]]
            self.stuck = [inflight[j][1] for j in late]
            err = _timed_out(i, n, shards[i], self.backend.name(w), self.timeout, late[0] in self.loading)
            pending = [(k, failed_on[k][0]) for k in self.queue if failed_on[k]]
            if pending:  # a failure awaiting its retry on another worker: not hidden by the timeout
                k, (wk, ck) = pending[0]
                err.args = (f"{err.args[0]}; meanwhile shard {k + 1}/{n} ({describe_task(shards[k])}) failed on "
                            f"{wk} ({_cause_text(ck)}) and was waiting for another worker to retry it",)
            raise err
