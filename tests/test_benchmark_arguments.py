"""The benchmark scripts refuse a count out of range with one line naming the flag, before any
work, as argparse does (they ended in UnboundLocalError, IndexError, torch's or numpy's errors,
or a silent run of no queries)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = [
    ("estimators.py", ["--repeats", "0"], "--repeats"),
    ("estimators.py", ["--n", "-5"], "--n"),
    ("gpu_devices.py", ["--cpu-devices", "-1"], "--cpu-devices"),
    ("own_loop.py", ["--repeats", "0"], "--repeats"),
    ("gpu_devices.py", ["--cpu-devices", "2", "--repeats", "0"], "--repeats"),
    ("peers.py", ["--seeds", "a", "--methods", "deepzero"], "--seeds"),
    ("peers.py", ["--widths", "-3", "--methods", "deepzero"], "--widths"),
    ("peers.py", ["--threads", "0", "--methods", "deepzero"], "--threads"),
    ("peers.py", ["--methods", "deepzero-krs,rge", "--setting", '{"lr": 0.03}', "--budget", "500"], "--setting"),
    ("peers_scout.py", ["--budget", "-5", "--variants", "recipe", "--seeds", "0"], "--budget"),
    ("peers_scout.py", ["--seeds", "a,b"], "--seeds"),
]


@pytest.mark.parametrize("script, argv, flag", CASES, ids=[f"{c[0]}{c[1][0]}{c[1][1]}" for c in CASES])
def test_a_count_out_of_range_is_a_one_line_usage_error(script, argv, flag):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *argv], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-500:])
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and "error:" in last and flag in last, last
