"""Objects that travel to workers as their cloudpickle bytes (:class:`Pickled`, loaded by the worker
that receives one), and the cloudpickle pickler that refuses a file open for writing."""

from __future__ import annotations

import contextlib
import pickle
import sys

from ._errors import ZoracleError
from ._forked import ForkSafeLock


def cloudpickle_module():
    try:
        import cloudpickle
    except ImportError:  # joblib < 1.5 vendors it
        from joblib.externals import cloudpickle
    return cloudpickle


class LoadFailed(ZoracleError):
    """An object sent to workers (the oracle, a bound batch) could not be loaded there for a
    reason another worker shares (a module it cannot import, a ``__setstate__`` that raises):
    the run stops at the first such failure, with no retry on another worker."""


#: load failures that another worker (or a later try) may not meet (a file not there yet, a lost
#: connection, a timeout, memory): these stay a shard's error, retried once on another worker
_TRANSIENT_LOAD = (OSError, MemoryError)


def _load_fix(exc) -> str:
    """What to do about ``exc``, raised by unpickling on a worker."""
    if isinstance(exc, ImportError) and getattr(exc, "name", None):
        top = exc.name.partition(".")[0]
        return (f"the module {exc.name!r} must be importable on the workers: install it there or put its "
                f"folder on their PYTHONPATH, or send it by value with cloudpickle.register_pickle_by_value"
                f"({top}) in the driver (ray.cloudpickle's for RayExecutor)")
    if isinstance(exc, AttributeError) and str(exc).startswith("Can't get attribute"):
        return ("the workers' copy of the module it names lacks that class or function (another version of "
                "your code there): give the workers the same code, or send the module by value with "
                "cloudpickle.register_pickle_by_value (ray.cloudpickle's for RayExecutor)")
    return ("the modules its classes come from must be importable there, and its __setstate__ must work "
            "there (open files or load weights lazily, in its first call)")


class Pickled:
    """An object travelling as its cloudpickle bytes, loaded by the worker that receives it.

    cloudpickle ships classes defined in the driver's ``__main__`` by value (plain pickle
    names them, and a worker cannot import the driver's script); loading gives the worker a
    private copy whose arrays it may write (not a read-only view of an object store), and an
    object whose ``__setstate__`` raises there is a shard's error, not a broken transfer.
    Loaded, it keeps the object and lets go of the bytes, so a worker that holds it (a Dask
    scatter) keeps one copy, not two. A load that fails keeps the bytes and raises a
    :class:`ZoracleError` naming ``what`` failed and the fix: a :class:`LoadFailed`, which stops
    the run without a retry (every worker would fail the same way), unless the cause is an
    ``OSError`` (a file not there yet, a lost connection, a timeout) or a lack of memory: retried
    once on another worker, as a failed shard.
    """

    def __init__(self, blob: bytes, what: str = "the oracle"):
        self.blob, self.what, self.obj = blob, what, None

    def load(self):
        if self.obj is None:
            try:
                self.obj = pickle.loads(self.blob)  # cloudpickle output loads with plain pickle
            except Exception as exc:
                cls = ZoracleError if isinstance(exc, _TRANSIENT_LOAD) else LoadFailed
                raise cls(f"{self.what} could not be loaded (unpickled) on the worker ({type(exc).__name__}: "
                          f"{exc}); {_load_fix(exc)}") from exc
            self.blob = None
        return self.obj


_FILE_PICKLERS: dict = {}

#: name of the script's module in a process that multiprocessing started with "spawn" or "forkserver"
SPAWNED_MAIN = "__mp_main__"
_BY_VALUE = ForkSafeLock()
_BY_VALUE_USERS: dict = {}  # cloudpickle module -> dumps in progress that registered SPAWNED_MAIN


@contextlib.contextmanager
def spawned_main_by_value(module):
    """Let ``module`` (a cloudpickle) ship the script's classes and functions by value inside a
    process that multiprocessing's "spawn" or "forkserver" started (the default on macOS and
    Windows; a ``ProcessPoolExecutor`` running a training there): that process runs the script
    again as ``__mp_main__``, which cloudpickle sends by reference (it does so by value only for
    ``__main__``), and a zoracle worker, which never runs the script, failed to load every oracle
    defined in it ("Can't get attribute 'Model' on <module '__main__'>"). Registered for the dump
    only, not for the other users of cloudpickle in the process (loky, Dask), whose own workers
    may import the script."""
    main = sys.modules.get("__main__")
    if getattr(main, "__name__", None) != SPAWNED_MAIN or sys.modules.get(SPAWNED_MAIN) is not main \
            or not hasattr(module, "register_pickle_by_value"):  # (cloudpickle < 2.0: no such registry)
        yield
        return
    registered = getattr(getattr(module, "cloudpickle", module), "_PICKLE_BY_VALUE_MODULES", set())
    with _BY_VALUE:
        ours = module in _BY_VALUE_USERS or SPAWNED_MAIN not in registered  # (else the program's own: left as is)
        if ours:
            if module not in _BY_VALUE_USERS:
                module.register_pickle_by_value(main)
            _BY_VALUE_USERS[module] = _BY_VALUE_USERS.get(module, 0) + 1
    try:
        yield
    finally:
        if ours:
            with _BY_VALUE:
                _BY_VALUE_USERS[module] -= 1
                if not _BY_VALUE_USERS[module]:
                    del _BY_VALUE_USERS[module]
                    if SPAWNED_MAIN in registered:
                        module.unregister_pickle_by_value(main)


def _writable(stream) -> bool:
    try:
        return bool(stream.writable())
    except ValueError:  # closed: nothing to lose (cloudpickle decides what it sends)
        return False


def _file_refusing_pickler(module):
    """``module.CloudPickler`` refusing files open for writing: cloudpickle sends a text file
    that can also be read (``"r+"``, ``"a+"``) as an in-memory copy of its contents, so a
    worker's writes (a query log) went nowhere, silently. A file open only for reading travels
    as that copy (its reads are the same); the standard streams travel as references."""
    if module not in _FILE_PICKLERS:
        import io

        class Pickler(module.CloudPickler):
            def reducer_override(self, obj):
                if (isinstance(obj, io.IOBase) and not isinstance(obj, (io.BytesIO, io.StringIO))
                        and obj not in (sys.stdout, sys.stderr, sys.stdin) and _writable(obj)):
                    raise pickle.PicklingError(
                        f"it holds a file open for writing ({getattr(obj, 'name', type(obj).__name__)!r}), whose "
                        "writes a worker could not make (it would get a copy of the file, or nothing); open the "
                        "file in the worker (in the oracle's first call or __setstate__) instead")
                return super().reducer_override(obj)

        _FILE_PICKLERS[module] = Pickler
    return _FILE_PICKLERS[module]
