"""benchmarks/rate_limit.py, the script behind docs/executors.md's "Staying under a rate limit"
numbers, runs (``--quick``: loopback only, a few seconds) and prints what those numbers are read
from: a settings line, one line a run, a summary. Its paced run gets no 429 (a pace under the
service's rate, no more workers than it takes at once); its run with more workers than the
service takes at once gets 429s. No timing is checked."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "rate_limit.py")

SETTINGS = re.compile(r"service: (\d+) requests/s, (\d+) at a time, [\d.]+ ms each, Retry-After (exact|whole seconds); "
                      r"(\d+) workers, tries=(\d+), jitter=[\d.]+, pace (none|[\d.]+); d=(\d+), (\d+) epochs$")
RUN = re.compile(r"run (\d+): billed=(\d+) rows=(\d+) nfev=(\d+|-) 429s=(\d+) max_in_flight=(\d+) "
                 r"wall=[\d.]+s steps=(\d+)/(\d+) error=(\S+)$")
SUMMARY = re.compile(r"summary: (\d+) runs, (\d+) finished, (\d+) stopped; 429s [\d-]+; max_in_flight [\d-]+")


def _cases(stdout):
    """[(settings match, [run matches], summary line)] from the script's output; every line is one of the three."""
    cases = []
    for line in stdout.splitlines():
        if SETTINGS.match(line):
            cases.append((SETTINGS.match(line), [], None))
        elif RUN.match(line):
            cases[-1][1].append(RUN.match(line))
        elif SUMMARY.match(line):
            cases[-1] = (*cases[-1][:2], SUMMARY.match(line))
        else:
            raise AssertionError(f"a line of none of the three forms: {line!r}\n{stdout}")
    return cases


@pytest.mark.slow
def test_quick_run_a_paced_run_gets_no_429_and_too_many_workers_get_some():
    proc = subprocess.run([sys.executable, SCRIPT, "--quick"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    cases = _cases(proc.stdout)
    assert len(cases) == 2, proc.stdout
    unpaced, paced = cases
    for settings, runs, summary in cases:
        rate, concurrency, workers, epochs = (int(settings.group(i)) for i in (1, 2, 4, 8))
        assert summary is not None and int(summary.group(1)) == len(runs) == 1, proc.stdout
        assert int(summary.group(2)) == sum(r.group(9) == "none" for r in runs), proc.stdout
        assert [int(r.group(1)) for r in runs] == [1]
        for r in runs:
            billed, rows, refused, most = (int(r.group(i)) for i in (2, 3, 5, 6))
            assert 0 < most <= min(workers, concurrency), r.group(0)  # the service refuses past C
            assert billed <= rows <= 4 * billed, r.group(0)  # up to max_queries_per_call rows a POST
            assert int(r.group(8)) == epochs, r.group(0)
            if r.group(9) == "none":
                assert r.group(4) == str(rows) and int(r.group(7)) == epochs, r.group(0)  # nfev: the answered rows
    settings, runs, _ = unpaced
    assert settings.group(6) == "none" and int(settings.group(4)) > int(settings.group(2)), settings.group(0)
    assert all(int(r.group(5)) > 0 for r in runs), proc.stdout  # more workers than C: 429s
    settings, runs, _ = paced
    assert settings.group(6) != "none" and float(settings.group(6)) < int(settings.group(1)), settings.group(0)
    assert int(settings.group(4)) <= int(settings.group(2)), settings.group(0)
    assert [r.group(5) for r in runs] == ["0"] and all(r.group(9) == "none" for r in runs), proc.stdout


def test_a_count_out_of_range_is_a_one_line_usage_error():
    proc = subprocess.run([sys.executable, SCRIPT, "--workers", "0"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-500:]
    assert "--workers" in proc.stderr.strip().splitlines()[-1] and proc.stdout == ""
