"""Checkpoints without pickle: one ``.npz`` file holding arrays plus a JSON header.

The JSON (format tag, version, settings, counters, history) is stored inside the archive
as a ``uint8`` array, so params, optimizer state and metadata are written together and
a single ``os.replace`` makes the update atomic: a run killed while saving leaves the
previous checkpoint intact. Each writer uses its own temporary name (host, pid and a random
token), so two writers of one checkpoint never collide; temporary files left by a killed
writer of this host are removed by the next save.

Loading never unpickles and never trusts the archive: only the expected members are read,
each ``.npy`` header is parsed first, and a member whose declared size exceeds what its
shape and dtype allow (or the archive's own size) is refused before any byte is read. A
truncated, corrupt or foreign file raises :class:`CheckpointError`, never a silent restart.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import numbers
import os
import re
import socket
import sys
import uuid
import zipfile
import zlib
from typing import Any, Callable, Sequence

import numpy as np

from ._backend import to_numpy
from ._errors import ArgumentError, ZoracleError, masked_entries, told, user_stacklevel, warn

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "check_compatible", "check_writable",
           "existing_checkpoint",
           "FORMAT", "VERSION"]

FORMAT = "zoracle-checkpoint"
VERSION = 1
#: the header field naming the zoracle release that wrote a checkpoint: a reader of an older
#: release meeting a newer format (or a field it does not know) names both releases
WRITER = "zoracle_version"
_META = "__meta__"
_FIX = "delete it to start over, or resume from another checkpoint"
# a file zoracle did not write is the user's: never advise deleting it
_FOREIGN = "pass the path of a checkpoint that zo.train{} or save_checkpoint wrote"  # ({}: AskTell's name, where told)


def new_run(path) -> str:
    """The way to go on from a checkpoint with other settings (a resume continues one run only)."""
    start = told("zo.train(oracle, ", "zo.AskTell(")  # (an AskTell's run: no oracle, a new AskTell)
    return (f"to go on from its parameters with other settings, start a new run from them with a checkpoint of its "
            f"own: {start}zo.load_checkpoint({os.fspath(path)!r})[0]['params'], ..., checkpoint='new.npz') "
            "(its optimizer state, step count and history start afresh)")


def release() -> str:
    """This zoracle's release (``zoracle.__version__``)."""
    from . import __version__  # (the package is initialized by the time a checkpoint is read or written)

    return __version__


def written_by(meta: dict) -> str:
    """The release that wrote a checkpoint, from its header: "zoracle 0.2.0", or "a newer zoracle"
    for a header without the field (written before it was recorded, or by hand)."""
    v = meta.get(WRITER) if isinstance(meta, dict) else None
    return f"zoracle {v}" if isinstance(v, str) and v else "a newer zoracle"


def upgrade(reads: str = "") -> str:
    """The advice for a checkpoint newer than this reader (``reads``: what this one reads): it is
    the user's run, kept (upgrading reads it; deleting it, the advice for a damaged one, loses it). zoracle
    is installed from its clone (``pip install -e``), so the upgrade is made there: ``pip install
    --upgrade zoracle`` would not touch that install."""
    return (f"this is zoracle {release()}{reads}: upgrade zoracle to read it (git pull in the zoracle clone, "
            "then pip install -e . there)")


class CheckpointError(ZoracleError):
    """A checkpoint could not be read, or it does not match the run resuming from it."""

    #: True when the file is not one zoracle wrote at all (another program's file)
    foreign = False


def _foreign(message: str) -> CheckpointError:
    exc = CheckpointError(f"{message}; {_FOREIGN.format(told('', ', zo.AskTell'))}")
    exc.foreign = True
    return exc


# -------------------------------------------------------------------------------- writing
def _host_tag() -> str:
    return format(zlib.crc32(socket.gethostname().encode("utf-8", "replace")), "08x")


#: the most bytes a temporary name adds after its prefix (host, pid and token: "-".join of 8, up to 10 and 12)
_TMP_TAIL = 32


def _name_max(folder: str) -> int:
    """The longest file name (in bytes) ``folder``'s file system takes: 255 on most (ext4, XFS, APFS,
    NTFS), less on some (eCryptfs: 143); 255 where it cannot be asked (the folder not made yet)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError, TypeError):  # (no pathconf on Windows)
        return 255


def _tmp_prefix(path: str) -> str:
    """The start of ``path``'s temporary names: ``.NAME.tmp-``, with NAME shortened (and a hash of the
    whole name added) where the temporary name would pass the longest name the folder takes: a
    checkpoint named with 220 of the 255 bytes a name may have was refused as "File name too long"."""
    base = os.path.basename(path)
    prefix, most = f".{base}.tmp-", _name_max(os.path.dirname(os.path.abspath(path))) - _TMP_TAIL
    if len(os.fsencode(prefix)) <= most:
        return prefix
    tag = format(zlib.crc32(os.fsencode(base)), "08x")
    while base and len(os.fsencode(f".{base}~{tag}.tmp-")) > most:
        base = base[:-1]
    return f".{base}~{tag}.tmp-"


def _tmp_path(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.join(folder, f"{_tmp_prefix(path)}{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:12]}")


#: True on Windows, where a file that another program holds open cannot be replaced
_WINDOWS = os.name == "nt"

#: seconds a rename refused on Windows (PermissionError) is tried again before it fails: a virus
#: scanner, the search indexer, a sync tool (OneDrive, Dropbox) or a reader holds the file a moment
REPLACE_WAIT_S = 2.0


def replace_file(src: str, dst: str) -> None:
    """``os.replace(src, dst)``. On Windows a file open in another program cannot be replaced
    (PermissionError, "Access is denied"): a virus scanner or a sync tool looking at the previous
    save for a moment ended the run; the rename is tried again for up to ``REPLACE_WAIT_S``."""
    if not _WINDOWS:
        os.replace(src, dst)
        return
    import time

    end, pause = time.monotonic() + REPLACE_WAIT_S, 0.01
    while True:
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if time.monotonic() >= end:
                raise
            time.sleep(pause)
            pause = min(2 * pause, 0.2)


@contextlib.contextmanager
def replacing(path):
    """A temporary path next to ``path`` (its target's, through a symlink) for the caller to write,
    renamed onto ``path`` when the block ends without an error and removed otherwise: a write that
    fails (a full disk) leaves what ``path`` held as it was, and no temporary file. A report
    written in place was cut short, and the previous run's report with it."""
    target = os.path.realpath(path)
    tmp = _tmp_path(target)
    try:
        yield tmp
        replace_file(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours (EPERM), or cannot tell: keep its file
        return True
    return True


def clean_stale(path) -> list:
    """Remove temporary files of ``path`` left by writers of this host that no longer run.

    Files of live processes (another writer mid-save), of this process and of other hosts
    are kept. Returns the names removed. POSIX only (elsewhere nothing is removed).
    """
    path = os.fspath(path)
    if os.name != "posix":
        return []
    folder = os.path.dirname(os.path.abspath(path))
    prefix, host = _tmp_prefix(path), _host_tag()
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for name in names:
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix):].split("-")
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
            pid = int(parts[1])  # this version's names: host-pid-token
        elif len(parts) == 1 and parts[0].isdigit():
            pid = int(parts[0])  # older versions: pid only
        else:
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            os.remove(os.path.join(folder, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def as_path(path, name: str = "checkpoint", example: str = "run.npz") -> str:
    """``path`` (str, bytes or os.PathLike) as a str, a leading ``~`` expanded to the home folder
    (as the CLI and a shell do); anything else raises an ArgumentError naming ``name`` (a bare
    ``os.fspath`` TypeError named neither the argument nor the fix)."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentError(f"`{name}` must be a file path such as {example!r}, got {type(path).__name__} {path!r}")
    path = os.fspath(path)
    path = os.fsdecode(path) if isinstance(path, bytes) else path
    word = _CONFIG_WORDS.get(path.strip().lower(), "")
    if word != "":  # str(None) or a config's null or boolean as text: a file "None" written, or read, silently
        # (left out only where None is what the argument takes: a path to read, or a command's, needs one)
        fix = (f"pass {name}={word}" if name == "resume" else f"leave `{name}` out (None)"
               if word is not True and name in _OPTIONAL_PATHS else f"pass a file path such as {example!r}")
        raise ArgumentError(f"`{name}` is the text {path!r}, a null or a boolean written out (as a config file or a "
                            f"command line gives it), not a file name: {fix} (or './{path.strip()}' for a file of "
                            "that name)")
    path = os.path.expanduser(path)
    try:
        os.fsencode(path)
    except UnicodeEncodeError as exc:  # (LC_ALL=C without UTF-8 mode, a latin-1 locale and a Japanese name): the
        # first os.path call raised it bare, naming neither the argument nor the fix; a resume path "did not exist"
        raise ArgumentError(f"`{name}` {path!r} holds {path[exc.start]!r}, which file names cannot hold under this "
                            f"locale (its file system encoding is {sys.getfilesystemencoding()}); pass a path "
                            "without it, or run Python in UTF-8 mode (PYTHONUTF8=1 or python -X utf8)") from None
    return path


# what a config's null or boolean becomes as text (str(None), YAML's null, JSON's true)
_CONFIG_WORDS = {"none": None, "null": None, "true": True, "false": False}
#: train's path arguments whose None turns them off
_OPTIONAL_PATHS = ("checkpoint", "plot")


def _file_path(path, name: str, example: str) -> str:
    """``path`` (``as_path``'s) when a save could replace what is there with a regular file."""
    path = as_path(path, name, example)
    if not path:
        raise ArgumentError(f"`{name}` is an empty path; pass a file path such as {example!r}")
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        raise ArgumentError(f"`{name}` {path!r} is a directory; pass a file path such as {os.path.join(path, example)!r}")
    if os.path.exists(path) and not os.path.isfile(path):  # a save replaces it with a regular file
        raise ArgumentError(f"`{name}` {path!r} exists and is not a regular file (a device, pipe or socket); "
                            f"pass a file path such as {example!r}")
    return path


#: errno -> what to do when a save fails with it (others: another path). The advice "free space" said
#: for every failure was wrong for a folder remounted read-only (after a disk error) or a mounted file
_SAVE_FIXES = {getattr(errno, "EDQUOT", errno.ENOSPC): "free space (the disk quota is used up) or pass another path",
               errno.ENOSPC: "free space or pass another path",  # (after: ENOSPC's own where there is no EDQUOT)
               errno.EROFS: "its file system became read-only (remounted after a disk error?): pass a path on "
                            "another one",
               errno.EACCES: "its folder is no longer writable: make it writable again or pass another path",
               errno.EPERM: "its folder is no longer writable: make it writable again or pass another path",
               errno.EBUSY: "the file is a mount point of its own (a single file mounted, as `docker run -v "
                            "file:file` does), which a save cannot rename a new file onto: mount its folder instead, "
                            "or pass another path"}


def save_fix(exc: OSError) -> str:
    """The fix to name for a save that failed with ``exc``."""
    if _WINDOWS and isinstance(exc, PermissionError):  # (Windows says "Access is denied" for both causes)
        return ("another program holds the file open (Windows cannot replace an open file: a viewer, a script "
                "reading it, a virus scanner or a sync tool such as OneDrive), or its folder is not writable: close "
                "that program, or pass a path outside a synced folder")
    return _SAVE_FIXES.get(exc.errno, "pass another path")


def _mounted_file(path: str) -> bool:
    """Whether ``path`` (a real path) is a file mounted on its own (``docker run -v a.npz:/x/a.npz``,
    Kubernetes' subPath): a rename onto it fails (EBUSY), so every save would. Linux only (read from
    /proc/self/mountinfo); False elsewhere or when that cannot be read."""
    if not os.path.isfile(path):
        return False
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return False

    def unescape(m):  # mountinfo writes a space in a path as \040
        return bytes([int(m.group(1), 8)])

    want = os.fsencode(path)
    return any(len(fields) > 4 and re.sub(rb"\\([0-7]{3})", unescape, fields[4]) == want
               for fields in (line.split(b" ") for line in lines))


def check_writable(path, name: str = "checkpoint", example: str = "run.npz") -> str:
    """Fail now, before any query, when ``path`` cannot be written; returns the path.

    Creates the folder if needed and writes (then removes) a temporary file next to
    ``path``, exactly as a save would. Also removes stale temporary files (see
    :func:`clean_stale`). ``example``: the file name the message suggests inside a directory.
    """
    path = _file_path(path, name, example)
    target = os.path.realpath(path)  # a symlink's target is what a save writes
    if _mounted_file(target):  # (found at the first save, after its work)
        raise ArgumentError(f"`{name}` {path!r} is a file mounted on its own (as `docker run -v file:file` mounts "
                            "one): a save writes a new file and renames it onto the old one, which a mount point "
                            "refuses; mount its folder instead and pass a path inside it")
    made, tmp = False, None
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = _tmp_path(target)  # (after the folder is made: its file system's longest name)
        if len(os.fsencode(os.path.basename(target))) > _name_max(os.path.dirname(target)):  # (the save's rename)
            raise OSError(errno.ENAMETOOLONG, "File name too long")
        with open(tmp, "xb") as f:
            made = True
            f.write(b"0")
        os.remove(tmp)
    except OSError as exc:
        if made:  # created, then the write failed (a full disk): leave nothing behind
            try:
                os.remove(tmp)
            except OSError:
                pass
        why, fix = f"{type(exc).__name__}: {exc.strerror or exc}", "choose a writable folder"
        if exc.errno == errno.ENAMETOOLONG:
            fix = f"pass a shorter path (a file name there may have {_name_max(os.path.dirname(target))} bytes)"
        up = os.path.dirname(target)
        while os.path.dirname(up) != up and not os.path.lexists(up):
            up = os.path.dirname(up)
        if os.path.exists(up) and not os.path.isdir(up):  # ("File exists" from makedirs named no file)
            why, fix = f"{up!r} is a file, not a folder", "pass a path inside a folder"
        raise ArgumentError(f"`{name}` {path!r} cannot be written ({why}); {fix}") from None
    clean_stale(os.path.realpath(path))
    return path


class Records:
    """A list of JSON records that only grows (a run's history), for a checkpoint's header: each
    record is encoded once, at the first save that holds it. Encoding the whole history again at
    every save made a run saving at each step quadratic in its steps (0.34 s a save at 100,000
    steps). The encoded records are kept as one UTF-8 buffer, which a save writes as it is (a text
    per record, about 55 bytes of object each on top of its JSON, was joined, bracketed, spliced
    into the header and encoded at each save: five copies of the history, three held at once). The
    text is the one ``json.dumps`` gives the list; a record must not change once saved."""

    def __init__(self, records: list):
        self.records = records
        self._count = 0  # the records encoded so far
        self._body = bytearray()  # their JSON, ", "-separated, without the brackets

    def body(self, default) -> bytearray:
        """The records' JSON between the list's brackets (UTF-8), the new ones encoded now."""
        new = self.records[self._count:]
        if new:
            part = ", ".join(json.dumps(rec, sort_keys=True, allow_nan=True, default=default) for rec in new)
            self._body += (b", " if self._count else b"") + part.encode("utf-8")
            self._count += len(new)
        return self._body

    def text(self, default) -> str:
        return "[" + self.body(default).decode("utf-8") + "]"


def _placeholders(value, raw: dict):
    """``value`` with each :class:`Records` in its dicts replaced by a token string (``raw`` maps
    the token to it), so the header is encoded once without them; with ``raw`` None, by its list."""
    if isinstance(value, Records):
        if raw is None:
            return value.records
        token = f"\x00zoracle-records-{len(raw)}\x00"
        raw[token] = value
        return token
    if isinstance(value, dict):
        return {k: _placeholders(v, raw) for k, v in value.items()}
    return value


#: seconds a save waits for another zoracle process's save of the same checkpoint (a save takes
#: seconds) before it goes on without the lock (a holder stopped with Ctrl-Z must not hang it)
LOCK_WAIT_S = 60.0


def _lock_file(path) -> str:
    """A lock file private to this user for the checkpoint ``path`` (by its real path), in the temp
    folder: not the checkpoint's folder, which another program may lock (``flock . python run.py``
    kept a job alone in its folder, and a save waiting on that folder's lock waited for good), and
    where no file is left beside the user's."""
    import hashlib
    import stat
    import tempfile

    folder = os.path.join(tempfile.gettempdir(), f"zoracle-locks-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():  # planted by another user: not used
        raise OSError(f"{folder} is not this user's folder")
    return os.path.join(folder, hashlib.sha256(os.fsencode(os.path.realpath(path))).hexdigest()[:32] + ".lock")


def _same_file(fd: int, name: str) -> bool:
    """Whether ``name`` is still the file open at ``fd`` (not removed, nor made again, since)."""
    try:
        a, b = os.fstat(fd), os.stat(name)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def writer_lock(path):
    """Hold an exclusive lock for ``path`` against other processes' saves of the same checkpoint: a
    run's check that the file is still its own, its save and its reading of what it wrote are then
    one step for another run given the same path. The lock is a ``flock`` on a private file named by
    the checkpoint's real path (:func:`_lock_file`), waited for at most ``LOCK_WAIT_S``; where the
    platform cannot lock (no ``fcntl``, no ``getuid``, a temp folder that cannot be used), or the wait
    ends, the save goes on unlocked. The holder removes the file before it lets go (a sweep of runs,
    each with its own checkpoint, left one file a run in the temp folder): a waiter that then gets the
    lock of a removed file opens the path again. The temp folder is a machine's own: savers on other
    machines (two batch jobs given one checkpoint on a shared file system) take turns on
    :func:`_shared_lock` too. Yields whether both locks are held."""
    import time

    fd = name = None
    try:
        try:
            import fcntl

            name = _lock_file(path)
            end = time.monotonic() + LOCK_WAIT_S
            while True:
                fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o600)
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= end:
                            raise
                        time.sleep(0.05)
                if _same_file(fd, name):
                    break
                fd, gone = None, fd
                os.close(gone)  # locked after its holder removed it: another saver may hold the path's new file
                if time.monotonic() >= end:
                    raise BlockingIOError
        except (ImportError, OSError, AttributeError, ValueError):  # (no lock rather than no save)
            if fd is not None:
                os.close(fd)
            fd = None
    except BaseException:  # Ctrl-C while waiting: no descriptor (or lock) left behind
        if fd is not None:
            os.close(fd)
        raise
    try:
        with _shared_lock(path) as shared:
            yield fd is not None and shared
    finally:
        if fd is not None:
            try:
                os.unlink(name)  # while held: a saver waiting on it finds it gone, and opens the path again
            except OSError:
                pass
            os.close(fd)  # (releases the lock)


def _lock_holder(name: str):
    """``(host tag, pid, (inode, mtime))`` of the lock file ``name``; None where it is gone (or unreadable)."""
    try:
        with open(name, "rb") as f:
            st = os.fstat(f.fileno())
            host, _, pid = f.read(64).decode("ascii", "replace").strip().partition(" ")
    except FileNotFoundError:
        return None
    except OSError:  # (another user's: a holder that cannot be told, as one of another machine)
        try:
            st, host, pid = os.stat(name), "", ""
        except OSError:
            return None
    return host, int(pid) if pid.isdigit() else 0, (st.st_ino, st.st_mtime_ns)


#: the lock files beside checkpoints that this process's savers hold (:func:`_take`, :func:`_shared_lock`):
#: one that names this process's pid and is not among them was left by an earlier process of that pid
_HELD: set = set()


def _take(name: str):
    """Create the lock file ``name`` (``O_EXCL``: atomic on local file systems and NFSv3+), holding this
    host's tag and this process's id; its inode and mtime, or None where another saver holds it."""
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    _HELD.add(name)  # (before the file names this process: another thread reads it as held)
    try:
        os.write(fd, f"{_host_tag()} {os.getpid()}\n".encode("ascii"))
    except BaseException:  # (a full disk: no lock file that names no holder left behind)
        _HELD.discard(name)
        os.close(fd)
        os.remove(name)
        raise
    os.close(fd)
    try:
        st = os.stat(name)  # (after the close: a network file system's own times)
    except OSError:
        _HELD.discard(name)
        raise
    return st.st_ino, st.st_mtime_ns


@contextlib.contextmanager
def _shared_lock(path):
    """Take turns with savers of ``path`` on other machines: a lock file beside the checkpoint (where
    they all see it), created with ``O_EXCL`` and removed after the save. A holder on this machine
    whose process is gone (SIGKILL mid-save) is removed at once, and so is one that names this
    process but none of its threads holds (a container restarted after a kill mid-save runs as the
    same pid: each of its saves waited ``LOCK_WAIT_S``, went on unlocked and left the file); one of
    another machine is waited for
    at most ``LOCK_WAIT_S``, then taken as stale (removed, if still the file first seen) or, held by a
    live process of this machine (stopped with Ctrl-Z), left and gone on without. Where the file cannot
    be made (a read-only folder) the save goes on unlocked, and reports its own error. Yields whether
    the lock is held."""
    import time

    target = os.path.realpath(path)
    name = os.path.join(os.path.dirname(target), _tmp_prefix(target) + "lock")
    held = None
    try:
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)  # (the first save makes the folder)
            first = end = None  # the holder waited for, and until when
            while True:
                held = _take(name)
                holder = None if held is not None else _lock_holder(name)
                if holder is None:  # taken (or let go meanwhile: tried again)
                    if held is not None:
                        break
                    continue
                host, pid, seen = holder
                here = host == _host_tag() and os.name == "posix"  # (Windows' os.kill(pid, 0) is a Ctrl-C)
                if here and (name not in _HELD if pid == os.getpid() else not _alive(pid)):
                    _remove_if(name, seen)  # left by a saver of this machine that was killed mid-save
                    continue
                if seen != first:  # a holder of its own (another saver took it since): waited for afresh
                    first, end = seen, time.monotonic() + LOCK_WAIT_S
                if time.monotonic() < end:
                    time.sleep(0.05)
                    continue
                if not here:  # another machine's, unchanged for LOCK_WAIT_S: its saver is gone
                    _remove_if(name, seen)
                    held = _take(name)
                warn(f"checkpoint {path!r}: its lock file {name!r} (a save by {host or 'another user'}, pid "
                     f"{pid}) stayed {LOCK_WAIT_S:.0f} s; " + ("taken as left by a saver killed mid-save" if
                     not here else "saved without it (its saver is stopped)") + ": if another job saves to "
                     "this path, give each job a checkpoint of its own", stacklevel=user_stacklevel())
                break  # (a live saver of this machine, stopped: gone on without, as writer_lock does)
        except OSError:  # (no lock rather than no save)
            pass
    except BaseException:  # Ctrl-C while taking it: no lock file left behind
        if held is not None:
            _HELD.discard(name)
            _remove_if(name, None, held)
        raise
    try:
        yield held is not None
    finally:
        if held is not None:
            _HELD.discard(name)
            _remove_if(name, None, held)


def _remove_if(name: str, seen, mine=None) -> None:
    """Remove the lock file ``name`` if it is still the one seen (``seen``: its inode and mtime) or
    this saver's (``mine``, as :func:`_take` returned it): never a lock another saver took since."""
    holder = _lock_holder(name)
    if holder is None or holder[2] != (seen if seen is not None else mine):
        return
    try:
        os.remove(name)
    except OSError:
        pass


def save_checkpoint(path, arrays: dict, meta: dict) -> str:
    """Atomically write ``arrays`` (name -> array) and ``meta`` (JSON-serializable) to ``path``.

    The file is first written next to ``path`` (same directory, so ``os.replace`` is an
    atomic rename) under a name unique to this writer, flushed and fsynced; a symlink is
    followed (its target is written). Returns the path written. The header also holds
    ``format``, ``version`` (of the file format) and ``zoracle_version`` (the release that wrote
    it), in place of any keys of those names in ``meta``: a reader of an older release refuses
    a newer format naming both releases.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "run.npz")
    >>> _ = save_checkpoint(p, {"params": np.arange(3.0)}, {"step": 7})
    >>> arrays, meta = load_checkpoint(p)
    >>> arrays["params"].tolist(), meta["step"]
    ([0.0, 1.0, 2.0], 7)
    """
    path = _file_path(path, "path", "run.npz")
    # refuse now what load_checkpoint would refuse later: the file must read back
    if not isinstance(arrays, dict) or not all(isinstance(k, str) and k for k in arrays):
        raise ArgumentError("`arrays` must be a dict of name (a non-empty str) -> array")
    if not isinstance(meta, dict):
        raise ArgumentError(f"`meta` must be a dict (the JSON header), got {type(meta).__name__}")
    if _META in arrays:
        raise ArgumentError(f"array name {_META!r} is reserved for the header")
    for k, v in arrays.items():
        if isinstance(v, np.ma.MaskedArray) and np.ma.is_masked(v):  # np.asarray drops the mask, keeps what it hid
            raise ArgumentError(f"array {k!r} is a numpy.MaskedArray{masked_entries(v)}: a checkpoint holds plain "
                                "arrays, and the data hidden behind the mask would come back as values; save the "
                                f"mask as an array of its own, e.g. {{{k!r}: a.filled(0.0), {k + '_mask'!r}: "
                                "np.ma.getmaskarray(a)}")
    payload = {k: np.asarray(to_numpy(v)) for k, v in arrays.items()}
    for k, a in payload.items():
        if a.dtype.hasobject or a.dtype.kind not in "biuf":
            raise ArgumentError(f"array {k!r} has dtype {a.dtype}: a checkpoint holds numeric arrays only (bool, "
                                "int, float; never pickled objects), which is all load_checkpoint reads")

    def plain(v):  # NumPy scalars in the header, as the Python numbers they hold
        if isinstance(v, np.generic) and v.dtype.kind in "biuf":
            out = v.item()  # a np.longdouble's item() is itself: json called plain on it again, without end
            return float(out) if isinstance(out, np.floating) else out
        raise TypeError(f"{type(v).__name__} is not JSON")

    header = dict(meta, format=FORMAT, version=VERSION, **{WRITER: release()})
    raw: dict = {}
    try:
        text = json.dumps(_placeholders(header, raw), sort_keys=True, allow_nan=True, default=plain)
        if any(text.count(json.dumps(token)) != 1 for token in raw):  # a value of the header holds a token
            text, raw = json.dumps(_placeholders(header, None), sort_keys=True, allow_nan=True, default=plain), {}
        pieces, start = [], 0  # the header's bytes around each history's: its own buffer, written as it is
        for at, token in sorted((text.index(json.dumps(token)), token) for token in raw):
            pieces += [text[start:at].encode("utf-8"), b"[", raw[token].body(plain), b"]"]
            start = at + len(json.dumps(token))
        pieces.append(text[start:].encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"`meta` must hold JSON values (str, numbers, bools, None, lists, dicts with str keys): "
                            f"{exc}") from None
    target = os.path.realpath(path)  # through a symlink to its target (replacing the link would leave it stale)
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    tmp = _tmp_path(target)
    try:
        with open(tmp, "wb") as f:
            try:  # the file replaced keeps its mode (a checkpoint made private stays private)
                if os.chmod in os.supports_fd:
                    os.chmod(f.fileno(), os.stat(target).st_mode & 0o7777)
            except OSError:  # (gone meanwhile, or a file system without modes: the save matters more)
                pass
            _write_npz(f, payload, pieces)
            f.flush()
            os.fsync(f.fileno())
        replace_file(tmp, target)
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
    clean_stale(path)
    return path


def _write_npz(f, arrays: dict, header: list) -> None:
    """The archive ``np.savez(f, **arrays, __meta__=...)`` writes (members stored, each zip64), the
    header's member (``uint8``) written from its pieces (``header``, bytes): the history, a run's
    largest part, is not copied into one array first, nor that array into a chunk to write."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fid:
                np.lib.format.write_array(fid, a, allow_pickle=False)
        with zf.open(f"{_META}.npy", "w", force_zip64=True) as fid:
            np.lib.format.write_array_header_1_0(fid, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                       "fortran_order": False, "shape": (sum(map(len, header)),)})
            for piece in header:
                fid.write(piece)


# -------------------------------------------------------------------------------- reading
def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, limit: int, spec=None) -> np.ndarray:
    """One ``.npy`` member, its header checked before any data is read (never unpickles)."""
    name = info.filename[:-4]
    if info.file_size > limit:
        raise CheckpointError(
            f"checkpoint {path!r}: member {name!r} declares {info.file_size} bytes, more than the "
            f"{limit} it may hold; the file is corrupt or not written by zoracle; {_FIX}"
        )
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version} in member {name!r}")
        if dtype.hasobject or dtype.kind not in "biuf":
            raise CheckpointError(f"checkpoint {path!r}: member {name!r} has dtype {dtype}; only numeric arrays "
                                  f"are read (never pickled objects); {_FIX}")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes + f.tell() != info.file_size:
            raise ValueError(f"member {name!r}: header says {shape} {dtype} but the member holds "
                             f"{info.file_size - f.tell()} data bytes")
        if spec is not None:
            want_shape, want_dtypes = spec
            if (want_shape is not None and tuple(shape) != tuple(want_shape)) or (
                    want_dtypes is not None and dtype not in want_dtypes):
                raise CheckpointError(
                    f"checkpoint {path!r}: array {name!r} has shape {tuple(shape)} dtype {dtype}, this run expects "
                    f"shape {want_shape} dtype {' or '.join(map(str, want_dtypes or ['any']))}; "
                    f"resume with the same settings or {_FIX}"
                )
        out = np.empty(math.prod(shape), dtype=dtype)
        if nbytes and f.readinto(memoryview(out.view(np.uint8))) != nbytes:
            raise EOFError(f"member {name!r} ends early")
        if f.read(1):  # also makes zipfile check the CRC
            raise ValueError(f"member {name!r} is longer than its header says")
    return out.reshape(shape, order="F" if fortran else "C")


def load_checkpoint(path: str | os.PathLike[str], expected: dict[str, Any] | None = None, prefixes: Sequence[str] = (),
                    check: Callable[[dict[str, Any]], object] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(arrays, meta)`` from a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : path
    expected : dict, optional
        ``name -> (shape or None, dtypes or None)``: read only these members (plus those
        whose name starts with one of ``prefixes``), and refuse one whose shape or dtype
        differs. Members not expected are never read. Default: read every member.
    prefixes : tuple of str, optional
        Name prefixes of further members to read with ``expected`` (``()``: none).
    check : callable, optional
        ``check(meta)`` runs after the header is read and before any array is; what it
        raises propagates unchanged (raise :class:`CheckpointError` to refuse the file).

    Raises
    ------
    ArgumentError
        ``prefixes`` not a sequence of strings, or ``check`` not callable (before the file is opened).
    CheckpointError
        Missing, truncated, corrupt or not a zoracle checkpoint (the message says which
        and what to do), or an array of another shape or dtype than ``expected``.
    """
    path = as_path(path, "path")
    expected = _check_expected(expected)
    given = prefixes
    if not isinstance(prefixes, (str, bytes)):
        try:
            prefixes = tuple(prefixes)  # (a generator: checked here, read again for every member)
        except TypeError:  # None or a number: "'NoneType' object is not iterable"
            prefixes = None
    if prefixes is None or isinstance(prefixes, (str, bytes)) or not all(isinstance(p, str) for p in prefixes):
        raise ArgumentError(f"`prefixes` must be a tuple of name prefixes such as ('opt/',), or () for none, "
                            f"got {given if prefixes is None else prefixes!r}")
    if check is not None and not callable(check):
        raise ArgumentError(f"`check` must be a callable check(meta) or None, got {type(check).__name__} {check!r}")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a directory; pass the checkpoint file (e.g. run.npz) inside it")
    if os.path.exists(path) and not os.path.isfile(path):  # (not "does not exist": it does)
        raise CheckpointError(f"checkpoint {path!r} is not a regular file (a device, pipe or socket); pass the "
                              "checkpoint file (e.g. run.npz)")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist; check the path or start without `resume`")
    from_check = None
    try:  # a file this process may not read (its mode, another user's) is no corrupt file to delete
        fh = open(path, "rb")
    except OSError as exc:
        err = CheckpointError(f"checkpoint {path!r} cannot be read ({type(exc).__name__}: {exc.strerror or exc}); "
                              "check its permissions (or copy it where this process may read it) and try again")
        err.corrupt = True  # (unreadable: not overwritten by a run that does not resume from it)
        raise err from None
    try:
        # one open file for the size and the archive: a run replacing the checkpoint (os.replace)
        # between two opens paired the old file's size with the new one's header ("corrupt")
        with fh as f, contextlib.ExitStack() as stack:
            size = os.fstat(f.fileno()).st_size
            magic = f.read(6)
            if magic[:2] != b"PK" and magic != b"\x93NUMPY":  # every .npz is a zip archive
                raise _foreign(f"{path!r} is not a zoracle checkpoint (not a zip archive, as every .npz file is)")
            if magic == b"\x93NUMPY":
                raise _foreign(f"{path!r} is a single .npy array, not a zoracle checkpoint (.npz written by "
                               f"zoracle.train or save_checkpoint)")
            f.seek(0)
            zf = stack.enter_context(zipfile.ZipFile(f))
            members = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
            if _META not in members:
                raise _foreign(f"{path!r} is an .npz file but not a zoracle checkpoint (no {_META!r})")
            blob = _read_member(zf, members[_META], path, size)
            meta = json.loads(blob.tobytes().decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise _foreign(f"{path!r} is not a zoracle checkpoint (format "
                               f"{meta.get('format') if isinstance(meta, dict) else None!r})")
            version = meta.get("version")
            if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
                raise CheckpointError(f"checkpoint {path!r} has format version {version}, written by "
                                      f"{written_by(meta)}; {upgrade(f', which reads format version {VERSION} only')}")
            if version != VERSION:
                raise CheckpointError(f"checkpoint {path!r} has format version {version!r}, this "
                                      f"zoracle reads version {VERSION}; {_FIX}")
            if check is not None:
                try:
                    check(meta)
                except Exception as exc:  # the caller's verdict on a readable file: passed on as raised
                    from_check = exc  # (re-raised as it is: a wrapper showed as a second error in the traceback)
                    raise
            arrays = {}
            # the bytes the members without an expected shape declare, together (the header's too): at
            # most the archive's size, as in every file zoracle writes (uncompressed). Each alone was
            # held to that size, and 800 deflated ones of a 390 KB file made 228 MiB of arrays
            declared = members[_META].file_size
            for name, info in members.items():
                if name == _META:
                    continue
                spec = None
                if expected is not None and name in expected:
                    shape, dtypes = expected[name]
                    spec = shape, None if dtypes is None else tuple(np.dtype(t) for t in dtypes)
                elif expected is not None and not any(name.startswith(p) for p in prefixes):
                    continue
                if spec is None or spec[0] is None:
                    declared += info.file_size
                    if declared > size and info.file_size <= size:  # (one member too large alone: named as such)
                        raise CheckpointError(
                            f"checkpoint {path!r}: its members declare {declared} bytes in all (up to {name!r}), "
                            f"more than the file's {size}; zoracle writes them uncompressed, so the file is corrupt "
                            f"or not written by zoracle; {_FIX}")
                    arrays[name] = _read_member(zf, info, path, size, spec)
                else:
                    shape, dtypes = spec
                    limit = min(size, 4096 + math.prod(shape) * max((t.itemsize for t in dtypes or ()), default=16))
                    arrays[name] = _read_member(zf, info, path, limit, spec)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, KeyError, UnicodeDecodeError,
            NotImplementedError, RuntimeError, OverflowError, MemoryError) as exc:
        if exc is from_check:  # (a ValueError of its own is no sign of a corrupt file to delete)
            raise
        err = CheckpointError(f"checkpoint {path!r} is corrupt or truncated ({type(exc).__name__}: {exc}); {_FIX}")
        err.corrupt = True
        raise err from None
    return arrays, meta


def _check_expected(expected):
    """``expected`` as ``load_checkpoint`` reads it, refused before the file is opened (a malformed
    entry failed inside the read, and was reported as a corrupt checkpoint to delete)."""
    if expected is None:
        return None
    form = "a dict name -> (shape or None, dtypes or None), e.g. {'params': ((10,), ('float64',))}"
    if not isinstance(expected, dict):
        raise ArgumentError(f"`expected` must be {form}, got {type(expected).__name__} {expected!r}")
    out = {}
    for name, spec in expected.items():
        ok = isinstance(name, str) and isinstance(spec, (tuple, list)) and len(spec) == 2
        shape, dtypes = spec if ok else (None, None)
        ok = ok and (shape is None or (isinstance(shape, (tuple, list)) and all(
            isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0 for n in shape)))
        ok = ok and (dtypes is None or (isinstance(dtypes, (tuple, list)) and len(dtypes) > 0))
        try:
            dtypes = dtypes if not ok or dtypes is None else tuple(np.dtype(t) for t in dtypes)
        except TypeError:
            ok = False
        if not ok:
            raise ArgumentError(f"`expected` must be {form}; entry {name!r} is {spec!r}")
        out[name] = (None if shape is None else tuple(int(n) for n in shape), dtypes)
    return out


def existing_checkpoint(path) -> str | None:
    """What is at ``path`` now: None (nothing), ``"run"`` (a checkpoint zoracle wrote, possibly of
    another version), ``"foreign"`` (a file zoracle did not write) or ``"unreadable"`` (a corrupt
    or truncated zip: zoracle's saves are atomic, so not one of its checkpoints, as far as can be
    told). Reads the header only."""
    path = os.fspath(path)
    if not os.path.exists(path) or os.path.isdir(path) or (os.path.isfile(path) and os.path.getsize(path) == 0):
        return None  # an empty file (tempfile.mkstemp's) holds nothing to keep
    try:
        load_checkpoint(path, expected={})
    except CheckpointError as exc:
        return "foreign" if exc.foreign else "unreadable" if getattr(exc, "corrupt", False) else "run"
    return "run"


def other_release(meta) -> str:
    """For a refusal of a checkpoint that another release wrote (``meta``: its header), both releases
    named and the way on where a default changed between them; ``""`` for this release's own. An
    upgrade that changed a default (a recipe's learning rate) was refused as settings the user had
    changed, with the advice to resume with the same settings: the call was the same."""
    v = meta.get(WRITER) if isinstance(meta, dict) else release()
    if v == release():
        return ""
    who = f"zoracle {v}" if isinstance(v, str) and v else "zoracle 0.1.0 (before checkpoints recorded their release)"
    return (f"it was written by {who} and this is zoracle {release()}: where a default changed between them (such as "
            "zo.recipes.short_budget's lr), pass the checkpoint's value explicitly to continue that run; ")


def _one_block(saved: dict, expected: dict, meta) -> str:
    """The way on where the checkpoint's run scored all its weights as one block and this run splits
    them into several: that run had no ``blocks`` (zo.recipes.short_budget's keyword arguments carried
    none before commit f228acd of 2026-12-04, whatever ``blocks`` it planned with), and blocks=None continues it."""
    was, now, d = saved.get("blocks"), expected.get("blocks"), saved.get("d")
    if was != [[0, d]] or saved.get("dense") or not (isinstance(now, list) and len(now) > 1):
        return ""
    old = isinstance(meta, dict) and WRITER not in meta  # written before f005dc0 (2026-12-06)
    return (f"its run scored all {d} weights as one block, as train does without `blocks`: to continue it, pass "
            "blocks=None" + (" (zo.recipes.short_budget(..., blocks=...) before commit f228acd of 2026-12-04 planned "
                             "with the blocks but did not pass them on to train: del kw['blocks'] from its keyword "
                             "arguments)"
                             if old else "") + "; ")


def check_compatible(path, saved: dict, expected: dict, meta=None) -> None:
    """Raise :class:`CheckpointError` listing every setting in ``expected`` that ``saved`` contradicts
    (``meta``, the header, names the release that wrote it where that is another one)."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {os.fspath(path)!r}: header field 'config' is {type(saved).__name__}, "
                              f"expected an object; {_FIX}")
    diffs = [
        f"{k}: checkpoint has {saved.get(k)!r}, this run has {v!r}"
        for k, v in expected.items()
        if saved.get(k) != v
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r} was written by a run with different settings ("
            + "; ".join(diffs)
            + "); " + _one_block(saved, expected, meta) + other_release(meta)
            + "resume with the same settings, or delete the checkpoint to start over; "
            + new_run(path)
        )
