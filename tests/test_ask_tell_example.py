"""examples/ask_tell.py runs as its docstring says: it trains through the instrument program, stops
with --stop-after, and a second run resumes from its checkpoint without redoing a step."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "examples" / "ask_tell.py")
FINAL = re.compile(r"final loss (\S+) \(start (\S+)\) after (\d+) steps, (\d+) queries \((\d+) steps measured by this run\)")


def _run(cwd, *argv):
    r = subprocess.run([sys.executable, SCRIPT, *argv], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr, r.stderr
    return r.stdout.splitlines()


@pytest.mark.slow
def test_ask_tell_example_trains_stops_and_resumes(tmp_path):
    first = _run(tmp_path, "--stop-after", "20")
    assert first[-1] == "stopped after step 20: run the script again to resume", first
    assert (tmp_path / "ask_tell.npz").stat().st_size > 0
    second = _run(tmp_path)
    assert second[0] == "resumed from ask_tell.npz at step 20 (100 queries)", second
    assert not any(line.startswith(("step 10:", "step 20:")) for line in second)  # no step measured twice
    doc = Path(SCRIPT).read_text().split('"""')[1]  # the docstring's numbers are this run's
    quoted = doc.split("The second prints")[1].split("::", 1)[1].strip().splitlines()
    assert [line.strip() for line in quoted] == second, (quoted, second)
    final, start, steps, queries, measured = FINAL.fullmatch(second[-1]).groups()
    assert (int(steps), int(queries), int(measured)) == (40, 200, 20)
    assert float(final) < 0.01 * float(start)  # the instrument's error, down from 8 to its noise
    again = _run(tmp_path)  # a finished run: nothing left to measure
    assert again[0] == "resumed from ask_tell.npz at step 40 (200 queries)" and len(again) == 2, again
    assert again[1] == second[-1].replace("(20 steps measured", "(0 steps measured")
    # the stopped and resumed run is the uninterrupted one: the same losses and final measurement
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    uninterrupted = _run(fresh)
    assert uninterrupted == first[:-1] + second[1:-1] + [second[-1].replace("(20 steps", "(40 steps")]
