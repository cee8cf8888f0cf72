"""Reproducibility across thread counts, worker counts and resumes (what docs/executors.md,
"Same answer as serial", and docs/design.md promise).

A seeded ``zo.train`` of CGE, RGE, SNES and ZO-GraSP ends on the same bits serially, on threads,
on processes and after a resume on another executor; a threading executor runs torch with the
calling thread's thread count, so a driver limited by ``threadpoolctl`` (as the docs advise)
gets the serial bits there too.
"""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo
from zoracle.executors import JoblibExecutor, SerialExecutor

SIZES = (8 * 6, 6, 6 * 2, 2)  # a two-layer net: W1, b1, W2, b2
BLOCKS = [slice(sum(SIZES[:i]), sum(SIZES[:i + 1])) for i in range(len(SIZES))]
DATA = np.random.default_rng(0).standard_normal((2, 32, 8 + 2))

ESTIMATORS = {
    "cge": dict(estimator=zo.CGE(mu=1e-3)),
    "rge": dict(estimator=zo.RGE(mu=1e-3, directions=12)),
    "snes": dict(estimator=zo.SNES(mu=0.05, population=12)),
    "zo_grasp": dict(estimator=zo.CGE(mu=1e-3), sparsity=0.7, ratios="zo_grasp", grasp_directions=8, blocks=BLOCKS),
}


class Net:
    """A NumPy oracle whose ``batch`` evaluates k points in one product (a fast path)."""

    def __init__(self, rows=None, max_queries_per_call=None):
        self.rows = rows
        if max_queries_per_call is not None:
            self.max_queries_per_call = max_queries_per_call

    def bind(self, batch):
        return Net(DATA[batch], getattr(self, "max_queries_per_call", None))

    def batch(self, P):
        P = np.asarray(P, dtype=np.float64)
        cut = np.cumsum(SIZES)[:-1]
        w1, b1, w2, b2 = np.split(P, cut, axis=1)
        x, y = self.rows[:, :8], self.rows[:, 8:]
        h = np.tanh(np.einsum("ni,kih->knh", x, w1.reshape(-1, 8, 6)) + b1[:, None, :])
        return ((h @ w2.reshape(-1, 6, 2) + b2[:, None, :] - y) ** 2).mean(axis=(1, 2))

    def __call__(self, p):
        return float(self.batch(np.asarray(p)[None])[0])


P0 = np.random.default_rng(1).standard_normal(sum(SIZES)) * 0.3


def run(name, epochs=3, oracle=None, **kw):
    return zo.train(oracle or Net(), P0, batches=[0, 1], epochs=epochs, optimizer=zo.sgd(0.05, momentum=0.9),
                    rng=7, progress=False, **ESTIMATORS[name], **kw)


@pytest.fixture(scope="module")
def processes():
    with JoblibExecutor(2) as ex:
        yield ex


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_threads_processes_chunking_and_a_resume_on_another_executor_end_on_the_serial_bits(name, tmp_path, processes):
    """The measured promise: every executor, another ``max_queries_per_call`` and a checkpoint of
    a serial run resumed on processes (and one of a process run resumed serially) give the serial
    run's bits, without a warning (a resume may change the executor: docs/training.md)."""
    ref = run(name).params
    with JoblibExecutor(3, backend="threading") as threads:
        assert np.array_equal(run(name, executor=threads).params, ref)
    assert np.array_equal(run(name, executor=processes).params, ref)
    assert np.array_equal(run(name, oracle=Net(max_queries_per_call=5)).params, ref)
    for first, then in ((SerialExecutor(), processes), (processes, SerialExecutor())):
        path = tmp_path / f"{name}.npz"
        path.unlink(missing_ok=True)
        run(name, epochs=1, executor=first, checkpoint=path)
        resumed = run(name, executor=then, checkpoint=path, resume=True)
        assert np.array_equal(resumed.params, ref)


def test_a_threading_executor_runs_torch_with_the_calling_threads_thread_count():
    """docs/executors.md limits the driver with ``threadpoolctl.threadpool_limits(1)``, which sets
    OpenMP's limit in the calling thread alone: the pool's threads ran torch with its
    process-wide count (2 here), and a loss whose mean is long enough to be split over threads
    differed from the serial one in its last bits (2.7e-14 on a 2-core machine)."""
    torch = pytest.importorskip("torch")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    x = torch.tensor(np.random.default_rng(0).standard_normal((200_000, 4)))
    seen = []

    def loss(theta):
        seen.append(torch.get_num_threads())
        return float(((x * torch.tensor(theta)) ** 2).mean())

    theta, est = np.linspace(-1.0, 1.0, 4), zo.RGE(mu=1e-3, directions=6)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # torch's process-wide count, which a new thread starts with
    try:
        with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
            assert torch.get_num_threads() == 1  # the calling thread's limit
            serial = zo.estimate_gradient(loss, theta, est, rng=0)
            seen.clear()
            with JoblibExecutor(2, backend="threading") as ex:
                threads = zo.estimate_gradient(loss, theta, est, rng=0, executor=ex)
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
    assert threads.loss == serial.loss and np.array_equal(threads.grad, serial.grad)


def test_a_threading_executor_follows_torch_set_num_threads_called_between_runs():
    """The pool's threads outlive a run: once they had run torch they kept the count torch had
    then, and a ``torch.set_num_threads(1)`` before the next run reached only the calling thread
    (5.1e-14 off the serial estimate on a 2-core machine)."""
    torch = pytest.importorskip("torch")
    x = torch.tensor(np.random.default_rng(0).standard_normal((200_000, 4)))
    seen = []

    def loss(theta):
        seen.append(torch.get_num_threads())
        return float(((x * torch.tensor(theta)) ** 2).mean())

    theta, est = np.linspace(-1.0, 1.0, 4), zo.RGE(mu=1e-3, directions=6)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with JoblibExecutor(2, backend="threading") as ex:
            zo.estimate_gradient(loss, theta, est, rng=0, executor=ex)  # the pool's threads run torch at 2
            torch.set_num_threads(1)
            serial = zo.estimate_gradient(loss, theta, est, rng=0)
            seen.clear()
            threads = zo.estimate_gradient(loss, theta, est, rng=0, executor=ex)
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
    assert threads.loss == serial.loss and np.array_equal(threads.grad, serial.grad)
