"""The functions over 150 lines of code split into named parts (h342) keep what a user sees:
short_budget's warning still points at the caller's line, check_oracle still reports the same
problems in its order, and benchmarks/peers.py, split into sibling modules, still offers every
name the other benchmark scripts and the tests read from it."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import zoracle as zo
from zoracle.testing import OracleCheckError, QuadraticOracle, check_oracle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def test_short_budgets_warm_up_warning_points_at_the_callers_line():
    """short_budget's checks moved into helpers; its warning (stacklevel=2) stays in short_budget, so
    `-W` filters, logging.captureWarnings and the printed location still name the user's line."""
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        zo.recipes.short_budget(None, np.zeros(100), 2_000, steps_per_epoch=500)
    mine = [w for w in got if "one epoch of warm-up is" in str(w.message)]
    assert [(os.path.abspath(w.filename), w.lineno) for w in mine] == [(os.path.abspath(__file__), line)]


def test_short_budget_refuses_its_arguments_in_the_documented_order():
    """The checks moved to _checked_numbers and _epoch_length run in short_budget's order: the
    first bad argument is the one named, and batches are checked after every number."""
    with pytest.raises(zo.ArgumentError, match="`budget`"):
        zo.recipes.short_budget(None, np.zeros(10), 0, coordinates=0, mu=-1.0)
    with pytest.raises(zo.ArgumentError, match="`coordinates`"):
        zo.recipes.short_budget(None, np.zeros(10), 100, coordinates=0, mu=-1.0)
    with pytest.raises(zo.ArgumentError, match="`b1` must be in"):
        zo.recipes.short_budget(None, np.zeros(10), 100, b1=1.0, weight_decay=-1.0)
    with pytest.raises(zo.ArgumentError, match="`fill_small_blocks` must be True, False or None"):
        zo.recipes.short_budget(None, np.zeros(10), 100, fill_small_blocks="yes", steps_per_epoch=0)
    with pytest.raises(zo.ArgumentError, match="has no len"):
        zo.recipes.short_budget(None, np.zeros(10), 100, batches=lambda e: [1, 2])


class _WrongSign(QuadraticOracle):
    """coordinate_losses (and so suffix) with the step's sign flipped, and a batch one row short."""

    def coordinate_losses(self, params, coords, step):
        return super().coordinate_losses(params, coords, -step)

    def batch(self, X):
        return super().batch(X)[:-1] if len(X) > 1 else super().batch(X)


def test_check_oracle_reports_every_problem_in_its_order_and_queries_the_same_points():
    """check_oracle's checks became a _Checker's methods; its report, its message (batch before
    coordinate_losses, at params before the second point) and its queries are a pure function of
    the oracle and rng, the same in a second run."""
    def run():
        seen = []
        oracle = _WrongSign(np.diag(np.arange(1.0, 7.0)))
        real = oracle.__call__

        class Logged(_WrongSign):
            def __call__(self, x):
                seen.append(np.asarray(x).tobytes())
                return real(x)
        oracle.__class__ = Logged
        with pytest.raises(OracleCheckError) as exc:
            check_oracle(oracle, np.linspace(-1.0, 1.0, 6), rng=3)
        return str(exc.value), seen

    message, seen = run()
    problems = re.findall(r"\n  - ([\w+]+)( at a second point)?", message)
    once = ["batch"] * 2 + ["coordinate_losses"] * 2 + ["prefix+suffix"] * 2  # the one-row batch passes
    assert problems == [(p, "") for p in once] + [(p, " at a second point") for p in once]
    assert "check_oracle found 12 problem(s) with Logged" in message
    assert (message, seen) == run() and len(seen) > 50


@pytest.fixture(scope="module")
def peers():
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("peers_split_check", os.path.join(BENCH, "peers.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peers_keeps_every_name_the_other_scripts_and_the_tests_read(peers):
    """peers_scout.py, allocator.py, step_floor.py, step_time.py and the tests read `peers.<name>`:
    each still resolves, to the one object of the sibling module it moved to."""
    read = set()
    for folder in (BENCH, os.path.join(ROOT, "tests")):
        for name in os.listdir(folder):
            if name.endswith(".py") and name != "peers.py":
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    read |= set(re.findall(r"\bpeers\.([A-Za-z_]\w*)\b(?!\.(?:md|py|json|png))", f.read()))
    read -= {"py", "md", "json", "png"}
    assert {"Bench", "run_one", "_load", "RUNNERS", "rank_test", "short_budget_default"} <= read
    assert sorted(n for n in read if not hasattr(peers, n)) == []
    bench = importlib.import_module("peers_bench")
    assert peers.RUNNERS is bench.RUNNERS and peers.Bench is bench.Bench  # one registry: peers_scout adds to it


def test_peers_help_lists_every_option_of_the_study(peers):
    """`python benchmarks/peers.py --help` as the docs show it: the parser moved into _parser()."""
    out = subprocess.run([sys.executable, os.path.join(BENCH, "peers.py"), "--help"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env=dict(os.environ, COLUMNS="200"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: peers.py [-h] [--quick]")
    assert "DeepZero against evolution strategies at equal query budgets: a model-size sweep." in out.stdout
    flags = re.findall(r"^  (--[\w-]+)", out.stdout, flags=re.M)
    assert flags == ["--quick", "--data", "--widths", "--budget", "--seeds", "--methods", "--grid", "--tune-widths",
                     "--settings-from", "--setting", "--reuse", "--settings-budget", "--start", "--batch-order", "--rng",
                     "--threads", "--dtype", "--out", "--report", "--plot", "--every-setting", "--json", "--speed",
                     "--macs", "--leads", "--ratios", "--wins"]
