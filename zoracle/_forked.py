"""Run locks that a forked child gets back free.

``os.fork`` copies a lock as it is: one that another thread of the parent held (an executor in
the middle of a run there, a service training in threads) stays held in the child, where that
thread does not exist, and the child's first run on the executor waited for it forever. The
child's locks are made anew, before any code of the child runs (``os.register_at_fork``): an
executor's run lock (:func:`run_lock`) and every :class:`ForkSafeLock` (the library's module locks:
the progress bars' stream swap, the fast-path verdicts, the direction rows' cache, a trace or a
simulation of an adapter, which a thread may hold for seconds)."""

from __future__ import annotations

import os
import threading
import weakref

_HOLDERS: weakref.WeakSet = weakref.WeakSet()
_LOCKS: weakref.WeakSet = weakref.WeakSet()


class ForkSafeLock:
    """``make()`` (``threading.Lock`` or ``threading.RLock``), made anew in a forked child: free there,
    whatever thread of the parent held it at the fork. Used as the lock it wraps (``with``,
    ``acquire``, ``release``)."""

    __slots__ = ("_make", "_lock", "__weakref__")

    def __init__(self, make=threading.Lock):
        self._make, self._lock = make, make()
        _LOCKS.add(self)

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()


def run_lock(holder) -> threading.Lock:
    """A new lock for ``holder``'s ``_lock`` (one run at a time; ``holder._owner`` is the thread in
    the run): in a forked child both are reset, a free lock and no owner."""
    _HOLDERS.add(holder)
    return threading.Lock()


def _after_fork_in_child() -> None:
    for holder in list(_HOLDERS):
        holder._lock, holder._owner = threading.Lock(), None
    for lock in list(_LOCKS):
        lock._lock = lock._make()


if hasattr(os, "register_at_fork"):  # (not on Windows, which has no fork)
    os.register_at_fork(after_in_child=_after_fork_in_child)
