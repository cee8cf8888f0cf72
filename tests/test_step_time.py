"""benchmarks/step_time.py: the per-step timer times the installed code or another checkout's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "step_time.py")


def _run(*args):
    out = subprocess.run([sys.executable, SCRIPT, "--steps", "2", "--repeats", "1", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    return out


@pytest.mark.slow  # benchmarks/step_time.py end to end, twice (installed and --root), each a torch process
def test_step_time_installed_and_checkout_agree(tmp_path):
    a = _run("--data", "mnist1d")
    assert a.returncode == 0, a.stderr
    r = json.loads(a.stdout)
    assert r["d"] == 1914 and r["coordinates"] == 236 and r["ms_per_step"] > 0 and len(r["all_ms"]) == 1
    b = _run("--data", "mnist1d", "--root", ROOT)  # this checkout, imported by path
    assert b.returncode == 0, b.stderr
    rb = json.loads(b.stdout)
    assert os.path.realpath(rb["zoracle"]) == os.path.realpath(os.path.join(ROOT, "zoracle"))
    assert rb["grad_sha256"] == r["grad_sha256"]  # the same code gives the same estimates
    bad = _run("--root", str(tmp_path))
    assert bad.returncode != 0 and "not a zoracle checkout" in bad.stderr


def test_step_time_fraction_sets_the_mask(capsys, one_torch_thread):
    # the script's main() in this process (the slow test above runs it as a script): three more
    # interpreters importing torch and scikit-learn took most of this test's time
    sys.path.insert(0, os.path.dirname(SCRIPT))
    import step_time

    r = []
    for f in ("0.1", "0.5", "1"):
        assert step_time.main(["--steps", "2", "--repeats", "1", "--data", "digits", "--fraction", f]) == 0
        r.append(json.loads(capsys.readouterr().out))
    assert [x["coordinates"] for x in r] == [220, 34 + 36 + 576 + 320, 1898]  # biases dense; 0.5 of 72, 1152, 640
    assert [x["fraction"] for x in r] == [0.1, 0.5, 1.0]
    with pytest.raises(SystemExit) as bad:
        step_time.main(["--fraction", "0"])
    assert bad.value.code != 0 and "--fraction must lie in (0, 1]" in capsys.readouterr().err


def test_step_time_help_states_its_whole_first_sentence():
    out = subprocess.run([sys.executable, SCRIPT, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse rewraps the description
    assert "optionally for the code of another checkout, so two versions can be timed side by side" in text
