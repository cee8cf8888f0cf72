"""A sweep: ``zo.train`` called many times in one long-lived process, each run with an executor
of its own. What a run leaves in the process (servers, logging handlers, ``sys.path`` entries)
must not add up: the state after a few runs is the state after one."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import zoracle as zo

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quad(x):
    return float(((x - 1.0) ** 2).sum())


def _dask_state(distributed) -> dict:
    gc.collect()
    return {
        # every Scheduler and Worker adds a DequeHandler to its logger, taken off when it is collected
        "handlers": sum(len(logging.getLogger(name).handlers)
                        for name in ("distributed.scheduler", "distributed.worker")),
        # (type(), not isinstance: isinstance reads __class__, which warns on a deprecated torch.distributed object)
        "servers": sum(issubclass(type(o), distributed.core.Server) for o in gc.get_objects()),
        "sys.path": list(sys.path),
        "importer cache": sorted(k for k in sys.path_importer_cache
                                 if isinstance(k, str) and "dask-scratch-space" in k),
    }


@pytest.mark.slow
def test_a_sweep_of_runs_each_with_its_own_local_dask_cluster_leaves_no_server_behind():
    """Each closed local cluster stayed in memory (its Scheduler and in-process Workers, with their
    logs and task records: megabytes a run), held by distributed's unbounded cache of handler
    signatures, each with a logging handler; and its servers' scratch folders, removed on close,
    stayed at the front of ``sys.path`` (distributed takes one out only while it is still first)."""
    distributed = pytest.importorskip("distributed")
    from zoracle.executors import DaskExecutor

    path = list(sys.path)
    cached = _dask_state(distributed)["importer cache"]  # (earlier tests' own clusters may leave some)

    def run(i):
        with DaskExecutor("local:2", processes=False) as ex:
            res = zo.train(_quad, np.zeros(4), epochs=1, steps_per_epoch=2, progress=False, executor=ex, rng=i)
        assert res.nfev == 10

    run(0)
    after_one = _dask_state(distributed)
    for i in range(1, 4):
        run(i)
    assert _dask_state(distributed) == after_one
    assert after_one["sys.path"] == path and after_one["importer cache"] == cached


def _lock_files(folder) -> list:
    return sorted(f for d in os.listdir(folder) if d.startswith("zoracle-locks-")
                  for f in os.listdir(os.path.join(folder, d)))


def test_a_sweep_of_checkpointed_runs_leaves_no_lock_file_a_run(tmp_path, monkeypatch):
    """Each checkpoint's saves lock a private file named by its path in the temp folder: a sweep
    giving each run its own checkpoint left one file a run there, for good."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))

    def run(i):
        zo.train(_quad, np.zeros(4), epochs=2, progress=False, rng=i, checkpoint=tmp_path / f"run{i}.npz")

    run(0)
    after_one = _lock_files(temp)
    for i in range(1, 6):
        run(i)
    assert _lock_files(temp) == after_one == []
    assert zo.load_checkpoint(tmp_path / "run5.npz")[1]["step"] == 2


_LOCKED_COUNT = """
import sys
from zoracle._checkpoint import writer_lock
path, counter, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for _ in range(n):
    with writer_lock(path):
        with open(counter) as f:
            value = int(f.read())
        with open(counter, "w") as f:
            f.write(str(value + 1))
"""


def test_savers_of_one_checkpoint_still_take_turns_when_the_lock_file_is_removed(tmp_path):
    """The lock's holder removes its file before letting go: a saver that was waiting on it then
    holds the lock of a removed file, and must open the path again rather than run beside a saver
    that locked the path's new file. Three processes each add 1 to a count 150 times under the
    lock: no addition is lost."""
    counter = tmp_path / "count"
    counter.write_text("0")
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([_ROOT, os.environ.get("PYTHONPATH", "")]), "TMPDIR": str(temp)}
    procs = [subprocess.Popen([sys.executable, "-c", _LOCKED_COUNT, str(tmp_path / "run.npz"), str(counter), "150"],
                              env=env) for _ in range(3)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    assert counter.read_text() == "450"
    assert os.listdir(temp) == [f"zoracle-locks-{os.getuid()}"] and _lock_files(temp) == []
