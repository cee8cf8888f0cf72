"""Objects that travel to workers as their cloudpickle bytes (:class:`Pickled`, loaded by the worker
that receives one), and the cloudpickle pickler that refuses a file open for writing."""

from __future__ import annotations

import pickle
import sys

from ._errors import ZoracleError


def cloudpickle_module():
    try:
        import cloudpickle
    except ImportError:  # joblib < 1.5 vendors it
        from joblib.externals import cloudpickle
    return cloudpickle


class Pickled:
    """An object travelling as its cloudpickle bytes, loaded by the worker that receives it.

    cloudpickle ships classes defined in the driver's ``__main__`` by value (plain pickle
    names them, and a worker cannot import the driver's script); loading gives the worker a
    private copy whose arrays it may write (not a read-only view of an object store), and an
    object whose ``__setstate__`` raises there is a shard's error (reported, retried), not a
    broken transfer. Loaded, it keeps the object and lets go of the bytes, so a worker that
    holds it (a Dask scatter) keeps one copy, not two. A load that fails keeps the bytes and
    raises a :class:`ZoracleError` naming ``what`` failed.
    """

    def __init__(self, blob: bytes, what: str = "the oracle"):
        self.blob, self.what, self.obj = blob, what, None

    def load(self):
        if self.obj is None:
            try:
                self.obj = pickle.loads(self.blob)  # cloudpickle output loads with plain pickle
            except Exception as exc:
                raise ZoracleError(
                    f"{self.what} could not be loaded (unpickled) on the worker ({type(exc).__name__}: {exc}); the "
                    "modules its classes come from must be importable there, and its __setstate__ must work there"
                ) from exc
            self.blob = None
        return self.obj


_FILE_PICKLERS: dict = {}


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
