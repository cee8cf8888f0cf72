"""``examples/policy_search.py``: policy search on gymnasium's CartPole through zo.train, each step's
queries playing the same seeded episodes through ``bind``. It trains, and the seeds it hands the
oracle make a run on process workers, stopped and resumed, the uninterrupted serial run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, *argv):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "policy_search.py"), *argv], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr, r.stderr
    return r.stdout.strip()


@pytest.mark.slow
def test_policy_search_trains_and_resumes_on_workers_as_it_runs_serially(tmp_path):
    pytest.importorskip("gymnasium")
    whole = _run(tmp_path, "--epochs", "2")
    m = re.fullmatch(r"CartPole-v1, snes, d = 5: held-out return ([\d.]+) -> ([\d.]+) after 20 steps, 160 queries", whole)
    assert m, whole
    before, after = map(float, m.groups())
    assert after > before + 50, whole  # a linear policy balances the pole far longer than the zero policy
    first = _run(tmp_path, "--epochs", "1", "--workers", "2", "--checkpoint", "run.npz")
    assert first.endswith("after 10 steps, 80 queries"), first
    assert _run(tmp_path, "--epochs", "2", "--checkpoint", "run.npz") == whole
