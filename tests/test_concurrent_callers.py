"""zoracle called from contexts other than a script's main thread: a process forked while another
thread runs on an executor, a local Dask cluster started inside a multiprocessing.Pool worker,
runs in threads of one process drawing their progress bars on one terminal."""

from __future__ import annotations

import importlib.util
import io
import multiprocessing
import os
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import zoracle as zo
from zoracle.executors import DaskExecutor, JoblibExecutor


def _loss(x):
    return float(np.sum((x - 0.25) ** 2 * np.arange(1.0, x.size + 1)))


def _in_child(fn, limit: float = 60.0) -> int | None:
    """``fn()`` in a child made by ``os.fork``: its exit code (0: it returned), or None where it was
    still running after ``limit`` seconds (killed then)."""
    with warnings.catch_warnings():  # (3.12+: "this process is multi-threaded, fork() may deadlock")
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = 0 if fn() else 2
        finally:
            os._exit(code)
    end = time.monotonic() + limit
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="os.fork of a multi-threaded process: Linux")
@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_a_process_forked_while_another_thread_runs_on_the_executor(backend, tmp_path):
    """A service training in threads forks (a worker of its own, multiprocessing's "fork") while one
    thread is inside a run on a shared executor: the child got the executor's run lock as it was,
    held by a thread that does not exist in the child, and its first run there waited forever. The
    child's run now starts workers of its own and gives the serial gradient."""
    started, release = tmp_path / "started", tmp_path / "release"

    def blocking(x):  # (a local function: sent by value to process workers)
        open(started, "a").close()
        while not os.path.exists(release):
            time.sleep(0.01)
        return float(np.sum(x ** 2))

    serial = zo.estimate_gradient(_loss, np.zeros(4), zo.CGE()).grad
    with JoblibExecutor(2, backend=backend) as ex:
        zo.estimate_gradient(_loss, np.zeros(4), zo.CGE(), executor=ex)  # started, its workers up
        busy = threading.Thread(target=zo.estimate_gradient, args=(blocking, np.zeros(4), zo.CGE()),
                                kwargs=dict(executor=ex), daemon=True)
        busy.start()
        try:
            end = time.monotonic() + 60
            while not started.exists() and time.monotonic() < end:
                time.sleep(0.01)
            assert started.exists(), "the other thread's run did not start"
            code = _in_child(lambda: np.array_equal(
                zo.estimate_gradient(_loss, np.zeros(4), zo.CGE(), executor=ex).grad, serial))
        finally:
            release.touch()
            busy.join(60)
        assert code is not None, "the forked child's run on the executor hung (its run lock came held)"
        assert code == 0, f"the forked child's run failed or differed from serial (exit code {code})"
        # the parent's executor runs on, its lock free
        np.testing.assert_array_equal(zo.estimate_gradient(_loss, np.zeros(4), zo.CGE(), executor=ex).grad,
                                      serial)


def _start_local_dask(_):
    try:
        with DaskExecutor("local:1"):
            return "started"
    except BaseException as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                    reason="dask not installed (pip install -e '.[dask]')")
def test_a_local_dask_cluster_in_a_daemonic_pool_worker_says_why_and_the_fix():
    """A multiprocessing.Pool worker is daemonic and may not start processes: DaskExecutor("local:N")
    there failed with pages of "daemonic processes are not allowed to have children" tracebacks
    inside every nanny, then "RuntimeError: Nanny failed to start". It now refuses before anything
    starts, saying why and what runs there instead."""
    # spawned: a forked worker of this process (onnxruntime's and torch's threads from earlier tests) hung
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        got = pool.apply_async(_start_local_dask, (None,)).get(timeout=120)
    finally:
        pool.terminate()
        pool.join()
    assert got.startswith("ZoracleError: DaskExecutor('local:1') starts worker processes"), got
    for fix in ("daemonic", "processes=False", "JoblibExecutor", "ProcessPoolExecutor"):
        assert fix in got, got


class _Terminal(io.StringIO):
    """A terminal's stream (``isatty``) that keeps what it was sent."""

    def isatty(self):
        return True


def _screen(text: str) -> list:
    """The lines a terminal shows after ``text``: characters overwrite, ``\\r`` goes to the line's
    start, ``\\n`` to the next line's (a terminal's output translation), ESC[A one line up."""
    rows, row, col = [[]], 0, 0
    i = 0
    while i < len(text):
        if text.startswith("\x1b[A", i):
            row, i = max(row - 1, 0), i + 3
            continue
        c, i = text[i], i + 1
        if c == "\r":
            col = 0
        elif c == "\n":
            row, col = row + 1, 0
            rows.extend([] for _ in range(row + 1 - len(rows)))
        else:
            line = rows[row]
            line.extend(" " for _ in range(col + 1 - len(line)))
            line[col], col = c, col + 1
    return ["".join(r).rstrip() for r in rows]


def test_prints_of_runs_in_threads_beside_their_progress_bars(monkeypatch):
    """Four runs in threads of one process (a service training small models), each printing in its
    eval_fn while the others' bars are drawn on the terminal: a print cleared its own run's bar
    only, wrote over another bar's line and moved every bar down a line, leaving bar fragments on
    the screen ("eval run 1%|████ | 40/80 ..."), and the last bar closed left the cursor 100 columns
    in. The screen now shows the printed lines whole, and no bar once the runs are done."""
    term = _Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    together = threading.Barrier(4)

    def run(k):
        def eval_fn(params):
            together.wait(timeout=60)  # every run's bar is drawn when each prints
            print(f"eval of run {k}")
            return {"m": float(k)}

        return zo.train(_loss, np.zeros(6) + k, epochs=2, steps_per_epoch=3, estimator=zo.CGE(),
                        eval_fn=eval_fn, progress=True)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(4)))
    print("done")
    shown = [line for line in _screen(term.getvalue()) if line]
    assert sorted(shown[:-1]) == sorted(f"eval of run {k}" for k in range(4) for _ in range(2)), shown
    assert shown[-1] == "done", shown
    for k, r in enumerate(results):  # and each run computed what it computes alone
        alone = zo.train(_loss, np.zeros(6) + k, epochs=2, steps_per_epoch=3, estimator=zo.CGE(), progress=False)
        np.testing.assert_array_equal(r.params, alone.params)
