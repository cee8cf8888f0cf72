"""A threading executor's pool threads run torch with the calling thread's count (zoracle/_pool_threads.py);
``torch.set_num_threads`` there also set torch's process-wide count, which every thread the process
starts later runs torch with: it has to be left as the run found it."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import zoracle as zo
from zoracle.executors import JoblibExecutor


def _in_a_new_thread(fn):
    got = []
    t = threading.Thread(target=lambda: got.append(fn()))
    t.start()
    t.join()
    return got[0]


@pytest.mark.parametrize("runs", [1, 3])
def test_a_threaded_run_in_a_threadpoolctl_limit_leaves_torchs_process_wide_count(runs):
    """A threaded run inside ``threadpoolctl.threadpool_limits(1)`` (docs/executors.md's way to limit
    the driver) left torch's process-wide count at 1: after the limit, a thread started later (a
    server's, a data loader's, another executor's pool) ran torch on 1 thread where it had run on 2."""
    torch = pytest.importorskip("torch")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen = []

    def loss(theta):
        seen.append(torch.get_num_threads())
        t = torch.tensor(theta)
        return float((t * t).sum())

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # torch's process-wide count, which a new thread starts with
    try:
        assert _in_a_new_thread(torch.get_num_threads) == 2
        with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
            with JoblibExecutor(2, backend="threading") as ex:
                for _ in range(runs):
                    got = zo.estimate_gradient(loss, np.linspace(-1.0, 1.0, 6), zo.CGE(scheme="central"), executor=ex)
        assert np.allclose(got.grad, 2 * np.linspace(-1.0, 1.0, 6))
        assert seen and set(seen) == {1}  # the pool's threads ran with the caller's count, as before
        assert torch.get_num_threads() == 2
        assert _in_a_new_thread(torch.get_num_threads) == 2  # (1 before: the pool threads' setting)
    finally:
        torch.set_num_threads(before)


def test_two_runs_setting_two_counts_leave_the_process_wide_count_as_found():
    """Two executors run from two threads, one caller's count 2, the other's 1 (its threadpoolctl limit),
    their pool threads each setting theirs: the count put back is the one found before either, whichever
    of them set the process-wide count last."""
    torch = pytest.importorskip("torch")
    from zoracle._pool_threads import _put_back, _set_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _in_a_new_thread(lambda: _set_threads(torch, 2))  # (the first: it finds 2)
        assert _in_a_new_thread(lambda: _set_threads(torch, 1))
        assert _in_a_new_thread(torch.get_num_threads) == 1  # while they run
        _in_a_new_thread(lambda: _put_back(torch))
        _in_a_new_thread(lambda: _put_back(torch))  # the last to finish: it set 2, the count is 1 now
        assert _in_a_new_thread(torch.get_num_threads) == 2
    finally:
        torch.set_num_threads(before)
