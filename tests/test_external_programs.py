"""Oracles that run an external program (a simulator binary) with ``subprocess.run``: what the
user sees when the program fails."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import zoracle as zo
from zoracle.executors import JoblibExecutor

#: a "simulator" that says why it fails on stderr and exits 3, as solvers do
FAILING = "import sys; print('progress 1/10'); print('solver diverged: singular matrix at node 17', file=sys.stderr); sys.exit(3)"


def run_failing(x):
    r = subprocess.run([sys.executable, "-c", FAILING], capture_output=True, text=True, check=True)
    return float(r.stdout)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_program_s_stderr_is_in_the_oracle_error(workers):
    """The OracleError showed only CalledProcessError's str(), "Command [...] returned non-zero
    exit status 3.": why the program failed, on the stderr the oracle captured, was nowhere (a
    process worker's error reaches the driver as text, so not even the traceback's cause had it)."""
    ex = JoblibExecutor(workers) if workers else None
    try:
        with pytest.raises(zo.OracleError) as info:
            zo.estimate_gradient(run_failing, np.zeros(2), zo.CGE(), executor=ex)
    finally:
        if ex is not None:
            ex.close()
    msg = str(info.value)
    assert ("returned non-zero exit status 3; the program's stderr ends with:\n"
            "    solver diverged: singular matrix at node 17") in msg
    assert "progress 1/10" not in msg.split("ends with:")[1]  # stderr, not stdout, when stderr has something


def test_program_output_falls_back_to_stdout_decodes_bytes_and_keeps_the_end():
    from zoracle._errors import program_output

    err = subprocess.CalledProcessError(1, ["sim"], output=b"line 1\nfatal: no mesh\n", stderr=b"")
    assert program_output(err) == "the program's stdout ends with:\n    line 1\n    fatal: no mesh"
    long = subprocess.CalledProcessError(1, ["sim"], stderr="x" * 5000 + "the end")
    out = program_output(long, limit=100)
    assert out.endswith("the end") and "..." in out and len(out) < 200
    timed = subprocess.TimeoutExpired(["sim"], 5.0, output="iteration 99\n")
    assert program_output(timed) == "the program's stdout ends with:\n    iteration 99"
    # nothing captured (the program wrote to the terminal), or another error: no clause
    assert program_output(subprocess.CalledProcessError(1, ["sim"])) == ""
    assert program_output(ValueError("x")) == ""


@pytest.mark.slow
def test_a_program_cut_off_by_its_own_timeout_is_named_with_its_output():
    """The pattern the docs give for a hanging simulator: ``subprocess.run(..., timeout=)`` kills
    it, and the OracleError names the query and shows what the program had printed."""
    hang = "import sys, time; print('iteration 99', flush=True); time.sleep(60)"

    def oracle(x):
        subprocess.run([sys.executable, "-c", hang], capture_output=True, text=True, check=True, timeout=2)
        return 0.0

    with pytest.raises(zo.OracleError) as info:
        zo.estimate_gradient(oracle, np.zeros(2), zo.CGE())
    msg = str(info.value)
    assert msg.startswith("oracle raised at the base point") and "TimeoutExpired" in msg
    assert msg.endswith("timed out after 2 seconds; the program's stdout ends with:\n    iteration 99")
