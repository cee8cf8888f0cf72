"""Checkpoints without pickle: one ``.npz`` file holding arrays plus a JSON header.

The JSON (format tag, version, settings, counters, history) is stored inside the archive
as a ``uint8`` array, so params, optimizer state and metadata are written together and
a single ``os.replace`` makes the update atomic: a run killed while saving leaves the
previous checkpoint intact. Loading uses ``allow_pickle=False``; a truncated, corrupt or
foreign file raises :class:`CheckpointError`, never a silent restart.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from ._backend import to_numpy
from ._errors import ZoracleError

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "check_compatible", "FORMAT", "VERSION"]

FORMAT = "zoracle-checkpoint"
VERSION = 1
_META = "__meta__"


class CheckpointError(ZoracleError):
    """A checkpoint could not be read, or it does not match the run resuming from it."""


def save_checkpoint(path, arrays: dict, meta: dict) -> str:
    """Atomically write ``arrays`` (name -> array) and ``meta`` (JSON-serializable) to ``path``.

    The file is first written next to ``path`` (same directory, so ``os.replace`` is an
    atomic rename), flushed and fsynced. Returns the path written.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "run.npz")
    >>> _ = save_checkpoint(p, {"params": np.arange(3.0)}, {"step": 7})
    >>> arrays, meta = load_checkpoint(p)
    >>> arrays["params"].tolist(), meta["step"]
    ([0.0, 1.0, 2.0], 7)
    """
    path = os.fspath(path)
    if _META in arrays:
        raise ValueError(f"array name {_META!r} is reserved")
    header = dict(meta, format=FORMAT, version=VERSION)
    blob = np.frombuffer(json.dumps(header, sort_keys=True, allow_nan=True).encode("utf-8"), dtype=np.uint8)
    payload = {k: np.asarray(to_numpy(v)) for k, v in arrays.items()}
    payload[_META] = blob
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:  # make the rename itself durable where the platform allows
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_checkpoint(path):
    """``(arrays, meta)`` from a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    CheckpointError
        Missing, truncated, corrupt or not a zoracle checkpoint (the message says which
        and what to do).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist; check the path or start without `resume`")
    fix = "delete it to start over, or resume from another checkpoint"
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if _META not in names:
                raise CheckpointError(f"{path!r} is an .npz file but not a zoracle checkpoint (no {_META!r}); {fix}")
            meta = json.loads(z[_META].tobytes().decode("utf-8"))
            arrays = {k: z[k] for k in names if k != _META}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path!r} is corrupt or truncated ({type(exc).__name__}: {exc}); {fix}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a zoracle checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r}); {fix}")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path!r} has format version {meta.get('version')!r}, this zoracle reads version {VERSION}; {fix}"
        )
    return arrays, meta


def check_compatible(path, saved: dict, expected: dict) -> None:
    """Raise :class:`CheckpointError` listing every setting in ``expected`` that ``saved`` contradicts."""
    diffs = [
        f"{k}: checkpoint has {saved.get(k)!r}, this run has {v!r}"
        for k, v in expected.items()
        if saved.get(k) != v
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r} was written by a run with different settings ("
            + "; ".join(diffs)
            + "); resume with the same settings, or delete the checkpoint to start over"
        )
