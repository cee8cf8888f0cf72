"""What a pool thread of a threading executor runs: one shard, as the calling thread would.

A thread pool is bitwise the serial run only if every call computes the same bits in a pool
thread as in the thread that called ``train``. torch's intra-op thread count can differ between
threads: ``threadpoolctl.threadpool_limits(1)`` (docs/executors.md's way to limit the driver)
sets OpenMP's limit in the calling thread alone, and a pool thread keeps the count it first ran
torch with, which a later ``torch.set_num_threads`` does not change. A long reduction (a loss's
mean over 800,000 values) was then split another way on the pool's threads, a few 1e-14 off the
serial estimate (tests/test_reproducibility.py). Each shard now runs with the caller's count; it
is left set in the pool thread. ``torch.set_num_threads`` also sets torch's process-wide count, the
one every thread started later runs torch with: once the pool threads that set theirs have run
their shards, it is put back as they found it (a run inside ``threadpool_limits(1)`` left it at 1,
and a server's or another pool's threads started after the run then ran torch on one thread).
"""

from __future__ import annotations

import contextlib
import sys
import threading

from ._executors_core import run_task_guarded

#: ids of the executors whose shard the current thread is running (nested-run detection)
RUNNING = threading.local()


def torch_threads() -> int | None:
    """torch's intra-op thread count in the calling thread; None where torch is not imported."""
    torch = sys.modules.get("torch")
    return None if torch is None else int(torch.get_num_threads())


#: pool threads running a shard after setting their torch count, torch's process-wide count before the first,
#: and the count the last of them set (two executors' runs in two threads may set two)
_SET = {"threads": 0, "found": None, "set": None}
_SET_LOCK = threading.Lock()


def _in_new_thread(fn, *args):
    """``fn(*args)`` in a thread of its own: torch's process-wide count is the one such a thread starts with,
    and a count it sets holds in no other thread (OpenMP's is per thread)."""
    got = []
    thread = threading.Thread(target=lambda: got.append(fn(*args)), name="zoracle-torch-threads")
    thread.start()
    thread.join()
    return got[0]


def _set_threads(torch, threads: int) -> bool:
    """Set this thread's torch count to ``threads``; False where no thread could be started to read
    the process-wide count first (an interpreter exiting): the count is left as it is."""
    with _SET_LOCK:
        if not _SET["threads"]:
            try:
                _SET["found"] = _in_new_thread(torch.get_num_threads)
            except RuntimeError:
                return False
        _SET["threads"] += 1
        _SET["set"] = threads
        torch.set_num_threads(threads)
    return True


def _put_back(torch) -> None:
    """The process-wide count as the first :func:`_set_threads` found it, once no shard that set its
    own runs: set from a thread of its own, so that the pool threads keep theirs (their next shards
    set nothing)."""
    with _SET_LOCK:
        _SET["threads"] -= 1
        if not _SET["threads"] and _SET["found"] != _SET["set"]:
            with contextlib.suppress(RuntimeError):  # (no thread to be had: an interpreter exiting)
                _in_new_thread(torch.set_num_threads, _SET["found"])


def run_in_thread(owner: int, threads: int | None, oracle, shard, params):
    """A shard in a pool thread with the caller's torch ``threads`` (:func:`torch_threads`),
    marked so that a nested run of ``owner`` fails fast."""
    torch = sys.modules["torch"] if threads is not None and torch_threads() != threads else None
    if torch is not None and not _set_threads(torch, threads):
        torch = None
    ids = getattr(RUNNING, "ids", None)
    if ids is None:
        ids = RUNNING.ids = set()
    ids.add(owner)
    try:
        return run_task_guarded(oracle, shard, params)
    finally:
        ids.discard(owner)
        if torch is not None:
            _put_back(torch)
