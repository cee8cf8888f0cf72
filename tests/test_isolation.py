"""What a run leaves behind in the process that made it: state that leaked from one part of a
program into a later one (found by running the suite's files in other orders)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import zoracle as zo
from zoracle._executors_local import usable_cpus
from zoracle.executors import DaskExecutor, JoblibExecutor

_NANNY_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_",
               "PYTHONHASHSEED")


def _threads(x):
    return float(os.environ["OMP_NUM_THREADS"])


def test_a_local_dask_cluster_leaves_this_processs_environment_as_it_was(monkeypatch, tmp_path):
    """Each nanny of a local cluster sets distributed's pre-spawn environment (OMP_NUM_THREADS=1,
    MALLOC_TRIM_THRESHOLD_, PYTHONHASHSEED=6640) in the driver's os.environ before spawning its
    worker, and it stayed there: every later subprocess inherited it, and a JoblibExecutor's
    workers ran on one thread each instead of their share of the CPUs."""
    pytest.importorskip("distributed", reason="dask[distributed] not installed (pip install -e '.[dask]')")
    for k in _NANNY_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # the program's own value: its Dask workers get it too
    with DaskExecutor("local:1", local_directory=str(tmp_path)) as ex:
        ex.start()
        during = {k: os.environ.get(k) for k in _NANNY_VARS}
        worker = {k: next(iter(ex.client.run(os.getenv, k).values())) for k in _NANNY_VARS}
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # the program's own, set while the cluster runs
    after = {k: os.environ.get(k) for k in _NANNY_VARS}
    assert worker["OMP_NUM_THREADS"] == "1" and worker["MKL_NUM_THREADS"] == "3"  # the workers keep Dask's
    assert worker["PYTHONHASHSEED"] == "6640"
    assert during == {k: "3" if k == "MKL_NUM_THREADS" else None for k in _NANNY_VARS}
    assert after == {**during, "OPENBLAS_NUM_THREADS": "2"}
    with JoblibExecutor(1) as ex:  # a process worker's threads follow the CPUs again, not Dask's 1
        got = zo.estimate_gradient(_threads, np.ones(1), zo.CGE(), executor=ex).loss
    assert got == usable_cpus()
