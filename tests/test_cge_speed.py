"""Smoke run of the CGE speed benchmark: its own gradient check and its JSON keys (no timings)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from zoracle.apps import bench  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"reference_s", "inplace_s", "batched_s", "reuse_s", "limit_s"}


def _args(argv):
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(argv)


def test_quick_json_run_checks_itself():
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "cge_speed.py"), "--quick", "--json",
           "--naive-coords", "60", "--coords", "1500", "--repeat", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    assert set(res) == {"mlp", "cnn"}
    for name, r in res.items():
        assert KEYS <= set(r), name
        assert all(r[k] > 0 for k in KEYS)
        assert r["check"]["repeatable"] and r["check"]["ok"]
        assert r["check"]["max_abs_diff_vs_inplace"] <= r["check"]["tol"]
        assert r["coords"] == 1500 and r["timed_coords"]["inplace"] == 60


def test_in_process_run_is_deterministic_and_table_renders():
    args = _args(["--model", "mlp", "--quick", "--naive-coords", "40", "--coords", "800", "--repeat", "2",
                  "--dtype", "float64"])
    r1 = bench.run(args)["mlp"]
    r2 = bench.run(args)["mlp"]
    assert r1["grad_sha256"] == r2["grad_sha256"]  # two runs, identical gradients
    assert r1["check"]["ok"] and r1["check"]["tol"] < 1e-9  # float64: a tight agreement bound
    text = bench._table({"mlp": r1})
    assert "(d) reuse" in text and "OK" in text


def test_bad_flags_give_one_line_errors(capsys):
    with pytest.raises(SystemExit):
        _args(["--mu", "-1"])
    assert "must be > 0" in capsys.readouterr().err
    import zoracle as zo

    with pytest.raises(zo.ArgumentError, match="sparsity"):
        bench.run(_args(["--model", "mlp", "--sparsity", "1.5"]))
