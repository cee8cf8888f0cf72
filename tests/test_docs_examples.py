"""The examples the docs point to run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_torch_example_trains_checkpoints_resumes_and_plots(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    # `--quick` as its docstring and --help show it ("the test runs this"); it ran `--epochs 2`, and
    # no test ran `--quick`
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "train_torch.py"), "--quick", "--out", str(out)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr  # feature reuse through zoracle_steps(): no fallback warning
    lines = r.stdout.splitlines()
    assert lines[0].startswith("stopped after epoch 2 of 4") and lines[1].startswith("resumed and finished 4 epochs")
    first, total = (int(line.split(" queries")[0].split()[-1].replace(",", "")) for line in lines[:2])
    assert 0 < first < total  # the resumed run continued the counters, it did not start over
    assert (out / "checkpoint.npz").stat().st_size > 0 and (out / "train_torch.png").stat().st_size > 1000


def _train_torch_main(argv, tmp_path, monkeypatch, capsys):
    """``python examples/train_torch.py ARGV`` in this process (the test above runs it as a script;
    another interpreter importing torch and scikit-learn took most of these tests' time): its exit
    code and stderr. Any exception but SystemExit fails the test, as a traceback would."""
    import runpy

    script = str(ROOT / "examples" / "train_torch.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [script, *argv])  # argparse names the program from it
    mod = runpy.run_path(script, run_name="not_main")
    with pytest.raises(SystemExit) as exit_:
        mod["main"](argv)
    return exit_.value.code, capsys.readouterr().err


def test_train_torch_example_rejects_a_single_epoch(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    code, err = _train_torch_main(["--epochs", "1"], tmp_path, monkeypatch, capsys)
    assert code == 2 and "--epochs must be >= 2" in err


def test_train_torch_example_names_an_out_folder_it_cannot_create(tmp_path, monkeypatch, capsys):
    """As its sibling examples do: one line naming --out, not a FileNotFoundError traceback."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    code, err = _train_torch_main(["--out", "/proc/zoracle-test"], tmp_path, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    assert "train_torch.py: error: --out /proc/zoracle-test: cannot create the folder" in err


def test_examples_that_import_an_extra_name_it_in_their_docstring():
    """A core-only install (``pip install -e .``) has no scikit-learn or torch: an example that
    imports one says which extra brings it, as the commands do, instead of leaving a bare
    ModuleNotFoundError to explain itself."""
    import ast

    for path in sorted((ROOT / "examples").glob("*.py")):
        tree = ast.parse(path.read_text())
        top = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
               for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
               for a in (n.names if isinstance(n, ast.Import) else [n])}
        if top & {"sklearn", "torch", "matplotlib"}:
            assert 'pip install -e ".[apps]"' in (ast.get_docstring(tree) or ""), path.name


def test_estimators_benchmark_pins_and_prints_blas_threads():
    pytest.importorskip("threadpoolctl")
    import json

    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "estimators.py"), "--d", "300", "--n", "16",
                        "--threads", "1", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["blas"] and all(b["threads"] == 1 for b in out["blas"])
    assert out["call_nfev"] == out["batch_nfev"] == out["coordinate_nfev"] == 301 and out["max_rel_diff"] < 1e-6
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "estimators.py"), "--d", "300", "--n", "16"],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and table.stdout.startswith("BLAS: ") and "1 thread" in table.stdout.splitlines()[0]


@pytest.mark.parametrize("name", ["defense", "sol"])
def test_command_wrapping_examples_name_themselves_in_usage_and_errors(tmp_path, name):
    """They printed ``usage: zoracle defense`` (a command the user did not type)."""
    script = str(ROOT / "examples" / f"{name}.py")
    r = subprocess.run([sys.executable, script, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    if r.returncode != 0 and "pip install" in r.stderr:  # the command's extra is missing here (named)
        pytest.skip(r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0, r.stderr  # anything else is a broken example, not a skip
    assert r.stdout.startswith(f"usage: python examples/{name}.py ")
    r = subprocess.run([sys.executable, script, "--out", "/proc/zoracle-test"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0 and "pip install" in r.stderr:  # --help needs no extra; a run checks the extra first
        pytest.skip(r.stderr.strip().splitlines()[-1])
    assert r.returncode != 0 and f"python examples/{name}.py: error: --out /proc/zoracle-test" in r.stderr
