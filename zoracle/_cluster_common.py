"""What DaskExecutor and RayExecutor share: their optional imports, an address's local form,
the check that a script guards its ``__main__``, and the reaper of a dead driver's processes."""

from __future__ import annotations

import ast
import numbers
import os
import sys

from ._errors import ArgumentError, MissingExtra, ZoracleError
from ._executors_core import MAX_WORKERS
from ._executors_local import _descendants, _proc_table


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


def worker_count(n_workers, count):
    """A local cluster's workers: ``n_workers``, else the N of ``'local:N'`` (``count``), else None;
    refused unless an integer from 1 to ``MAX_WORKERS``."""
    n = n_workers if n_workers is not None else count
    if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1):
        raise ArgumentError(f"`n_workers` must be an integer >= 1, got {n_workers!r}")
    if n is not None and n > MAX_WORKERS:  # as JoblibExecutor's n_jobs
        raise ArgumentError(f"`n_workers` must be at most {MAX_WORKERS} workers, got {n!r}")
    return n


def _missing(name: str, extra: str) -> MissingExtra:
    return MissingExtra(f"{name} is needed for this executor; install it with pip install -e '.[{extra}]'")


def _require(name: str, extra: str) -> None:
    """Fail at construction, as executors.md says, when ``name`` is not installed (it is imported
    when the executor starts)."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        raise _missing(name, extra)


def _import(name: str, extra: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise _missing(name, extra) from exc


# ----------------------------------------------------------------------------- __main__ guard
def _is_main_test(node) -> bool:
    """Whether ``node`` is ``__name__ == "__main__"`` (either side)."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)):
        return False
    sides = [node.left, node.comparators[0]]
    return (any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides)
            and any(isinstance(x, ast.Constant) and x.value == "__main__" for x in sides))


def unguarded_main_line(frame=None):
    """Line of the script's top-level statement that led here, when it is not under
    ``if __name__ == "__main__":``; None when guarded, interactive or not run as a script."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path or not str(path).endswith(".py") or not os.path.isfile(path):
        return None
    spec = getattr(main, "__spec__", None)
    if spec is not None and str(getattr(spec, "name", "")).endswith(".__main__"):
        return None  # `python -m package`: multiprocessing's spawn never runs a package's __main__ again
    frame = frame or sys._getframe(1)
    while frame is not None and not (frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:
        return None
    line = frame.f_lineno
    try:
        with open(path, "rb") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):  # any `if` mentioning __name__ == "__main__", at any depth
        if (isinstance(node, ast.If) and node.lineno <= line <= node.end_lineno
                and any(_is_main_test(t) for t in ast.walk(node.test))):
            return None
    return line


def check_main_guard(what: str, spec: str) -> None:
    """Refuse to start spawned workers from an unguarded script (they re-import it).

    Dask's worker processes start with multiprocessing's "spawn" (or "forkserver"), which
    re-runs the script's top level in every worker: without a guard each worker would try
    to start a cluster of its own and fail with pages of tracebacks.
    """
    import multiprocessing

    if multiprocessing.current_process().daemon:  # (multiprocessing's own refusal came inside every nanny,
        # pages of AssertionError tracebacks ending in "Nanny failed to start")
        raise ZoracleError(
            f"{what}({spec!r}) starts worker processes, and this process is a daemonic one "
            f"({multiprocessing.current_process().name}, e.g. a multiprocessing.Pool worker), which may not have "
            "children; pass processes=False for worker threads, use JoblibExecutor (its workers are no "
            "multiprocessing children), or run this code in a concurrent.futures.ProcessPoolExecutor, whose "
            "workers are not daemonic")
    try:
        import dask

        method = dask.config.get("distributed.worker.multiprocessing-method", "spawn")
    except Exception:  # no config: Dask's default
        method = "spawn"
    if method == "fork" or multiprocessing.parent_process() is not None:
        return
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if isinstance(main_file, str) and main_file.startswith("<") and main_file.endswith(">"):
        # `python - < script.py`: a worker re-imports the main module from that "file", which is not
        # one (FileNotFoundError inside every nanny, then "Nanny failed to start")
        raise ZoracleError(
            f"{what}({spec!r}) starts worker processes that re-import the main script, and this one was read "
            f"from {main_file} (no file to import); save it as a file and run that, or use python -c, or set "
            f"Dask's distributed.worker.multiprocessing-method to 'fork'")
    line = unguarded_main_line(sys._getframe(1))
    if line is not None:
        script = os.path.basename(sys.modules["__main__"].__file__)
        raise ZoracleError(
            f"{what}({spec!r}) starts worker processes that re-import {script}, and line {line} of it runs "
            f"outside `if __name__ == \"__main__\":`; move the code that runs the executor under that guard "
            f"(or pass the address of a running scheduler)"
        )


_REAPER = """
import os, shutil, signal, sys, time
driver, folder, procs = int(sys.argv[1]), sys.argv[2], [p.split(":") for p in sys.argv[3:]]
def started(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None
while os.getppid() == driver:
    time.sleep(0.5)
for pid, start in procs:
    if started(pid) == start:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
if folder:
    time.sleep(1.0)
    shutil.rmtree(folder, ignore_errors=True)
"""


def start_reaper(folder: str | None):
    """A watchdog that SIGKILLs this driver's current descendants (and removes ``folder``)
    if the driver dies without closing, e.g. on SIGKILL. Linux only; returns the process."""
    import subprocess

    if not sys.platform.startswith("linux"):
        return None
    table, me = _proc_table(), os.getpid()
    kids = [f"{pid}:{table[pid][1]}" for pid in _descendants(me, table)]
    return subprocess.Popen([sys.executable, "-c", _REAPER, str(me), folder or "", *kids],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _stop_reaper(reaper) -> None:
    if reaper is not None:
        reaper.kill()
        reaper.wait()
