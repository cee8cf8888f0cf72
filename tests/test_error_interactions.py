"""Error texts where the session's parts meet (h298): a program's stderr under a shard's note, a
worker's traceback under a refusal of the oracle's value."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import zoracle as zo
from zoracle.executors import JoblibExecutor

FAILING = "import sys; print('solver diverged: singular matrix at node 17', file=sys.stderr); sys.exit(3)"


def run_failing(x):
    subprocess.run([sys.executable, "-c", FAILING], capture_output=True, text=True, check=True)
    return 0.0


def returns_text(x):
    return "loss " * 100


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_the_shard_note_stands_below_a_program_s_stderr(backend):
    # it was appended to stderr's last line, indented as the program's output:
    # "    solver diverged: singular matrix at node 17 [shard 1/3: the base point, on worker 0 ...]"
    with JoblibExecutor(2, backend) as ex, pytest.raises(zo.OracleError) as info:
        zo.estimate_gradient(run_failing, np.zeros(2), zo.CGE(), executor=ex)
    lines = str(info.value).splitlines()
    assert lines[-2] == "    solver diverged: singular matrix at node 17"
    assert lines[-1].startswith("[shard ") and lines[-1].endswith("]")


def test_a_refused_value_from_a_process_worker_chains_no_worker_traceback():
    # the oracle raised nothing: the chained text was zoracle's own frames, ending with the message again
    with JoblibExecutor(2) as ex, pytest.raises(zo.OracleError, match="expected a finite real scalar") as info:
        zo.estimate_gradient(returns_text, np.zeros(2), zo.CGE(), executor=ex)
    assert info.value.__cause__ is None and info.value.cause is None
    assert str(info.value).count("expected a finite real scalar") == 1


def test_the_demo_masks_a_password_in_the_cluster_address_it_could_not_reach(capsys):
    # the executor's own error masked it, and the demo's line around it showed it again:
    # "--dask tcp://alice:s3cret@127.0.0.1:1: could not start or reach the cluster (... 'tcp://***@127.0.0.1:1' ..."
    pytest.importorskip("distributed")
    pytest.importorskip("torch")
    from zoracle.cli import main

    assert main(["demo", "--quick", "--methods", "deepzero", "--dask", "tcp://alice:s3cret@127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert "s3cret" not in err and "--dask tcp://***@127.0.0.1:1: could not start or reach the cluster" in err, err
