"""A Dask scheduler address that DaskExecutor refuses leaves no half-made distributed.Client behind.

distributed.Client starts its event-loop thread before it parses the address: a refused address
left that Client unclosed, its thread running, in a reference cycle. Whichever thread garbage
collection later ran in closed it (Client.__del__), taking distributed's LoopRunner lock: in the
new event-loop thread of a later Client or LocalCluster, whose start holds that lock, the start
waited 10 s and failed (`assert loop is not None` in LoopRunner._start_unlocked).
"""

from __future__ import annotations

import gc
import threading

import pytest

import zoracle as zo
from zoracle.executors import DaskExecutor


def _refused():
    with pytest.raises(zo.ArgumentError, match="`client` 'tcp://127.0.0.1' is not a scheduler address"):
        DaskExecutor("tcp://127.0.0.1").start()


def test_a_refused_address_leaves_no_event_loop_thread_running():
    pytest.importorskip("distributed")
    before = set(threading.enumerate())
    _refused()
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == [], f"threads left running by the refused address: {left}"


def test_a_refused_address_leaves_nothing_for_a_later_loop_start_to_wait_on():
    """Garbage collected in another thread while a loop starts (it holds LoopRunner's lock)."""
    distributed_utils = pytest.importorskip("distributed.utils")
    lock = getattr(distributed_utils.LoopRunner, "_lock", None)
    if lock is None:
        pytest.skip("this distributed's LoopRunner has no class lock")
    _refused()
    was_enabled = gc.isenabled()
    gc.disable()  # the collection runs in the helper thread only, as in the failing run
    try:
        with lock:  # as LoopRunner.start holds it while its new thread makes the event loop
            collector = threading.Thread(target=gc.collect, daemon=True)
            collector.start()
            collector.join(timeout=30)  # before the fix it waited until the lock was let go
            stuck = collector.is_alive()
        collector.join()
    finally:
        if was_enabled:
            gc.enable()
    assert not stuck, "a garbage collection waited on distributed's LoopRunner lock (a half-made Client's close)"
