"""Run locks that a forked child gets back free.

``os.fork`` copies a lock as it is: one that another thread of the parent held (an executor in
the middle of a run there, a service training in threads) stays held in the child, where that
thread does not exist, and the child's first run on the executor waited for it forever. The
child's locks are made anew, before any code of the child runs (``os.register_at_fork``)."""

from __future__ import annotations

import os
import threading
import weakref

_HOLDERS: weakref.WeakSet = weakref.WeakSet()


def run_lock(holder) -> threading.Lock:
    """A new lock for ``holder``'s ``_lock`` (one run at a time; ``holder._owner`` is the thread in
    the run): in a forked child both are reset, a free lock and no owner."""
    _HOLDERS.add(holder)
    return threading.Lock()


def _after_fork_in_child() -> None:
    for holder in list(_HOLDERS):
        holder._lock, holder._owner = threading.Lock(), None


if hasattr(os, "register_at_fork"):  # (not on Windows, which has no fork)
    os.register_at_fork(after_in_child=_after_fork_in_child)
