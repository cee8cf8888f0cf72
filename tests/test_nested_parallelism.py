"""zoracle inside someone else's parallelism: a hyperparameter sweep that runs ``zo.train`` as the tasks
of a process pool (``multiprocessing.Pool``, ``concurrent.futures.ProcessPoolExecutor``, joblib, Dask),
with zoracle's defaults or an executor of its own in each task."""
import concurrent.futures
import multiprocessing
import os
import sys

import numpy as np
import pytest

import zoracle as zo

pytestmark = pytest.mark.skipif(os.name != "posix", reason="pseudo-terminals and fork are POSIX only")

_FORK = multiprocessing.get_context("fork")


def _loss(x):
    return float(np.sum(np.sin(x) ** 2 + 0.1 * x))


def _task(lr, inner=None):
    """One task of a sweep: the trained params' bytes."""
    from zoracle.executors import JoblibExecutor

    if inner is None:
        result = zo.train(_loss, np.linspace(0, 1, 12), epochs=2, optimizer=zo.sgd(lr), rng=3, progress=False)
    else:
        with JoblibExecutor(2, backend=inner) as ex:
            result = zo.train(_loss, np.linspace(0, 1, 12), epochs=2, optimizer=zo.sgd(lr), rng=3, executor=ex,
                              progress=False)
    return result.params.tobytes()


def _train_on_a_terminal(lr):
    """What ``train``'s default bar writes to a terminal (a pseudo-terminal 100 columns wide, standing in
    for the one a sweep's parent and all its workers share)."""
    import fcntl
    import io
    import pty
    import struct
    import termios
    import tty

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    tty.setraw(slave)  # (no "\r" added before each "\n": what is read is what was written)
    stream = io.TextIOWrapper(os.fdopen(slave, "wb", buffering=0), encoding="utf-8", write_through=True)
    old = sys.stderr
    sys.stderr = stream
    try:
        zo.train(_loss, np.linspace(0, 1, 12), epochs=3, optimizer=zo.sgd(lr), rng=3)
    finally:
        sys.stderr = old
        stream.close()
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # (EIO: the writing end is closed and everything was read)
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return out.decode("utf-8", "replace"), multiprocessing.current_process().name, os.getpid()


def test_the_pseudo_terminal_shows_a_redrawn_bar_in_the_main_process():
    """The check below is no vacuous one: on this terminal, in a process of its own, ``train`` redraws its
    bar in place (a ``\\r`` that starts no new line), untagged."""
    out, _, _ = _train_on_a_terminal(0.01)
    assert "\r" in out.replace("\r\n", "\n"), out
    assert "[" not in out.split("train:", 1)[0], out


@pytest.mark.parametrize("pool", ["Pool", "ProcessPoolExecutor"])
def test_a_sweep_task_in_a_worker_process_writes_whole_lines_named_by_its_process(pool):
    """Tasks of a sweep in a process pool share the parent's terminal: each redrew its bar with ``\\r`` on
    the one line they all write, which showed one bar flickering between the runs (the step of one, the
    loss and lr of another). In a worker process, ``train`` writes whole lines (as to a log file), each
    starting with the worker's name and pid, so that the interleaved lines of the tasks tell the runs apart."""
    if pool == "Pool":
        with _FORK.Pool(2) as p:
            outs = p.map(_train_on_a_terminal, [0.01, 0.02])
    else:
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=_FORK) as p:
            outs = list(p.map(_train_on_a_terminal, [0.01, 0.02]))
    for out, name, pid in outs:
        lines = out.replace("\r\n", "\n").split("\n")
        assert "\r" not in out.replace("\r\n", "\n"), f"a bar redrawn in place in a pool's worker: {out!r}"
        assert lines[-1] == "" and len(lines) >= 3, out
        for line in lines[:-1]:
            assert line.startswith(f"[{name} pid {pid}] "), out
            assert len(line) <= 100, f"the line outgrew the terminal's 100 columns by its tag: {line!r}"
        assert "epoch 3/3: 100%" in lines[-2], out


def _train_into_a_log(lr):
    import io

    old, sys.stderr = sys.stderr, io.StringIO()
    try:
        zo.train(_loss, np.linspace(0, 1, 12), epochs=2, optimizer=zo.sgd(lr), rng=3)
        return sys.stderr.getvalue(), multiprocessing.current_process().name, os.getpid()
    finally:
        sys.stderr = old


def test_a_sweep_task_writing_to_a_log_names_its_process_on_each_line():
    """``python sweep.py 2> sweep.log``: the tasks' lines interleave in one log; each names its process."""
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=_FORK) as p:
        outs = list(p.map(_train_into_a_log, [0.01, 0.02]))
    for out, name, pid in outs:
        lines = out.split("\n")
        assert lines[-1] == "" and len(lines) >= 3 and "\r" not in out, out
        assert all(line.startswith(f"[{name} pid {pid}] ") for line in lines[:-1]), out
    assert _train_into_a_log(0.01)[0].startswith("train:"), "a run in a process of its own got a tag"


@pytest.mark.parametrize("inner", [None, "loky", "threading"])
def test_a_sweep_in_daemonic_pool_workers_matches_the_serial_runs_bit_for_bit(inner):
    """multiprocessing.Pool's workers are daemonic (no multiprocessing children): zoracle's process
    workers are no multiprocessing children, so ``JoblibExecutor(2)`` starts there, and every task's
    result is the serial run's, bit for bit."""
    lrs = [0.01, 0.03]
    serial = [_task(lr) for lr in lrs]
    with _FORK.Pool(2) as p:
        assert p.starmap(_task, [(lr, inner) for lr in lrs]) == serial


def test_a_sweep_with_joblib_matches_the_serial_runs_bit_for_bit():
    """joblib.Parallel's loky workers run each task, which starts a ``JoblibExecutor(2)`` of its own."""
    from joblib import Parallel, delayed

    lrs = [0.01, 0.03]
    serial = [_task(lr) for lr in lrs]
    assert Parallel(2, backend="loky")(delayed(_task)(lr, "loky") for lr in lrs) == serial


def test_dask_local_cluster_in_a_daemonic_worker_is_refused_naming_the_fix():
    """``DaskExecutor("local")`` in a ``multiprocessing.Pool`` worker (daemonic: no children) is refused
    before a nanny starts, with the ways out."""
    pytest.importorskip("distributed")
    with _FORK.Pool(1) as p:
        message = p.apply(_dask_local_refusal)
    assert "daemonic" in message and "processes=False" in message and "JoblibExecutor" in message, message


def _dask_local_refusal():
    from zoracle.executors import DaskExecutor

    try:
        with DaskExecutor("local:1") as ex:
            zo.train(_loss, np.linspace(0, 1, 12), epochs=1, rng=3, executor=ex, progress=False)
    except Exception as exc:
        return str(exc)
    return "no error"


def _dask_task(lr):
    out, name, pid = _train_on_a_terminal(lr)
    return out, name, pid, (_task(lr), _task(lr, "loky")), os.environ.get("OMP_NUM_THREADS")


@pytest.mark.slow
def test_a_sweep_of_dask_tasks_matches_serial_and_writes_named_lines():
    """``client.submit`` of a function that calls ``zo.train`` on a local (loopback) Dask cluster of worker
    processes (one with a ``JoblibExecutor(2)`` of its own): the results are the serial runs', and the bars
    are lines named by the worker process."""
    distributed = pytest.importorskip("distributed")
    lrs = [0.01, 0.03]
    serial = [_task(lr) for lr in lrs]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as cluster, distributed.Client(cluster) as client:
        outs = client.gather([client.submit(_dask_task, lr, pure=False) for lr in lrs])
    for (out, name, pid, params, threads), want in zip(outs, serial):
        assert params == (want, want)
        assert threads == "1", "Dask's workers no longer limit BLAS/OpenMP threads, as docs/executors.md says"
        assert "\r" not in out.replace("\r\n", "\n"), out
        assert all(line.startswith(f"[{name} pid {pid}] ") for line in out.split("\n")[:-1]), out


@pytest.mark.slow
def test_a_sweep_of_ray_tasks_matches_the_serial_runs_bit_for_bit():
    """``ray.remote`` tasks that call ``zo.train`` (one with a ``JoblibExecutor(2)`` of its own) on a local
    Ray session whose files stay in a temporary folder: the results are the serial runs'."""
    ray = pytest.importorskip("ray")
    import tempfile

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # (Ray's workers cannot import tests/)
    lrs = [0.01, 0.03]
    serial = [_task(lr) for lr in lrs]
    import conftest
    from zoracle._executors_ray import _private_token

    tmp = tempfile.mkdtemp(prefix="s", dir=conftest.RAY_DIR)  # (short: Ray's socket paths must fit 107 bytes)
    _private_token()  # (the token file conftest points Ray at, private, as RayExecutor makes it)
    ray.init(num_cpus=2, _temp_dir=tmp, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(_task)
        assert ray.get([task.remote(lr) for lr in lrs]) == serial
        assert ray.get([task.remote(lr, "loky") for lr in lrs]) == serial
        threads = ray.get(ray.remote(num_cpus=1)(lambda: os.environ.get("OMP_NUM_THREADS")).remote())
        assert threads == "1", "Ray's tasks no longer limit BLAS/OpenMP threads, as docs/executors.md says"
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
