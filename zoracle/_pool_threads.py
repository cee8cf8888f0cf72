"""What a pool thread of a threading executor runs: one shard, as the calling thread would.

A thread pool is bitwise the serial run only if every call computes the same bits in a pool
thread as in the thread that called ``train``. torch's intra-op thread count can differ between
threads: ``threadpoolctl.threadpool_limits(1)`` (docs/executors.md's way to limit the driver)
sets OpenMP's limit in the calling thread alone, and a pool thread keeps the count it first ran
torch with, which a later ``torch.set_num_threads`` does not change. A long reduction (a loss's
mean over 800,000 values) was then split another way on the pool's threads, a few 1e-14 off the
serial estimate (tests/test_reproducibility.py). Each shard now runs with the caller's count; it
is left set in the pool thread (``torch.set_num_threads`` also sets torch's process-wide count,
to the one the caller runs with).
"""

from __future__ import annotations

import sys
import threading

from ._executors_core import run_task_guarded

#: ids of the executors whose shard the current thread is running (nested-run detection)
RUNNING = threading.local()


def torch_threads() -> int | None:
    """torch's intra-op thread count in the calling thread; None where torch is not imported."""
    torch = sys.modules.get("torch")
    return None if torch is None else int(torch.get_num_threads())


def run_in_thread(owner: int, threads: int | None, oracle, shard, params):
    """A shard in a pool thread with the caller's torch ``threads`` (:func:`torch_threads`),
    marked so that a nested run of ``owner`` fails fast."""
    if threads is not None and torch_threads() != threads:
        sys.modules["torch"].set_num_threads(threads)
    ids = getattr(RUNNING, "ids", None)
    if ids is None:
        ids = RUNNING.ids = set()
    ids.add(owner)
    try:
        return run_task_guarded(oracle, shard, params)
    finally:
        ids.discard(owner)
