"""A forked child gets the library's locks back free, whatever thread of the parent held them.

``os.fork`` copies a lock as it is: one another thread held at the fork (the progress bars' stream swap,
the direction rows' cache, the fast-path verdicts, a PhiFlow simulation or a torch trace, which a thread
may hold for seconds) stayed held in the child, where that thread does not exist, and the child's first
use of it waited forever. zoracle/_forked.py makes each :class:`ForkSafeLock` anew in the child.
"""
from __future__ import annotations

import os
import sys
import threading
import warnings

import pytest

from zoracle import _bar, _fastcheck, _forked, _plan

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")


def _child_can_take(lock, wait: float = 5.0) -> bool:
    """Hold ``lock`` in another thread, fork, and report whether the child takes it within ``wait`` s."""
    held, done = threading.Event(), threading.Event()

    def hold():
        with lock:
            held.set()
            done.wait(30)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert held.wait(10)
    try:
        with warnings.catch_warnings():  # (3.12+: a DeprecationWarning on forking a process with threads)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: no pytest machinery, only the exit code
            code = 0 if lock.acquire(timeout=wait) else 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status) == 0
    finally:
        done.set()
        t.join(10)


def _locks():
    yield "_bar._SWAP", _bar._SWAP
    yield "_plan._ROWS.lock", _plan._ROWS.lock
    yield "_fastcheck._VERDICTS.lock", _fastcheck._VERDICTS.lock
    from zoracle import _executors_cluster
    yield "_executors_cluster._DASK_LOCK", _executors_cluster._DASK_LOCK


@pytest.mark.parametrize("name", [n for n, _ in _locks()])
def test_a_forked_child_takes_a_core_lock_another_thread_held_at_the_fork(name):
    lock = dict(_locks())[name]
    assert _child_can_take(lock), f"{name} stayed held in the forked child"


@pytest.mark.parametrize("module,attr", [("adapters._torch_graph", "_TRACE_LOCK"),
                                         ("adapters._torch_chain", "_UNFOLD_LOCK"),
                                         ("adapters._torch_chain", "_LOCKS_GUARD"),
                                         ("adapters._phiflow_sim", "_ONE_SIMULATION")])
def test_a_forked_child_takes_an_adapters_lock_another_thread_held_at_the_fork(module, attr):
    pytest.importorskip("torch" if "torch" in module else "phi")
    import importlib

    lock = getattr(importlib.import_module(module), attr)
    assert _child_can_take(lock), f"{module}.{attr} stayed held in the forked child"


def test_a_fork_safe_rlock_is_reentrant_and_a_plain_lock_is_not():
    r, plain = _forked.ForkSafeLock(threading.RLock), _forked.ForkSafeLock()
    with r, r:  # reentrant: no hang
        pass
    with plain:
        assert not plain.acquire(blocking=False)
    assert plain.acquire(blocking=False)
    plain.release()


def test_the_lock_a_plain_threading_lock_would_be_hangs_in_the_child_so_the_check_can_fail():
    """The check itself: a plain lock another thread held stays held in the child."""
    if sys.platform == "darwin":
        pytest.skip("fork with threads is unreliable on macOS")
    # the child waits out its whole timeout here (the thread holding the lock was not forked: nothing
    # in the child releases it), so a shorter one gives the same answer without 5 s of waiting
    assert not _child_can_take(threading.Lock(), wait=0.5)
