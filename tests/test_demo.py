"""``zoracle demo``: the --quick smoke run prints the table, --json has the contract keys."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from zoracle.cli import main  # noqa: E402


def test_demo_quick_json_and_plot(tmp_path, capsys):
    plot = tmp_path / "curves.png"
    assert main(["demo", "--quick", "--json", "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"deepzero", "fo", "rge"}
    for m in out.values():
        assert {"test_acc", "queries", "seconds"} <= set(m) and 0 <= m["test_acc"] <= 1 and m["seconds"] > 0
    dz, rge = out["deepzero"], out["rge"]
    # same query budget: RGE's directions per step + 1 = DeepZero's average queries per step
    assert abs(rge["queries"] - dz["queries"]) <= 0.01 * dz["queries"]
    assert dz["details"]["queries_per_step"] < 0.2 * 1898  # 90% sparse: ~10% of weights + dense biases
    assert out["deepzero"]["test_acc"] > 0.2  # far above chance (0.1) after the 3 quick epochs
    assert plot.stat().st_size > 1000


def test_demo_quick_prints_the_table():
    # the real console entry point, as a user runs it
    r = subprocess.run([sys.executable, "-m", "zoracle", "demo", "--quick", "--epochs", "1", "--methods", "fo,deepzero"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["method", "test", "acc"]
    assert any(line.startswith("DeepZero") for line in lines) and any(line.startswith("first-order") for line in lines)


@pytest.mark.parametrize("argv, match", [
    (["--sparsity", "1.5"], "--sparsity"),
    (["--epochs", "0"], "--epochs"),
    (["--methods", "sgd"], "--methods"),
    (["--ratios", "best"], "invalid choice"),
    (["--lr", "-1"], "--lr"),
])
def test_demo_bad_flags_give_one_line_errors(argv, match):
    r = subprocess.run([sys.executable, "-m", "zoracle", "demo", *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and match in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_demo_help_documents_every_flag():
    r = subprocess.run([sys.executable, "-m", "zoracle", "demo", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for flag in ("--quick", "--json", "--plot", "--epochs", "--sparsity", "--workers"):
        assert flag in r.stdout
