"""benchmarks/recipe_bounds.py, whose twelve-seed numbers docs/training.md quotes: one seed at
a small budget runs the recipe without the box, with it (ZO-GraSP inside it) and with it on uniform
ratios, each within the budget, and prints the paired summaries."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "recipe_bounds.py"


def _load():
    spec = importlib.util.spec_from_file_location("recipe_bounds", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_one_seed_runs_the_three_plans_within_the_budget(capsys):
    assert _load().main(["--data", "digits", "--budget", "3000", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    runs = re.findall(r"seed 0 plan=([\w:]+)\s+nfev=(\d+) test=([0-9.]+)", out)
    assert [r[0] for r in runs] == ["zo_grasp", "box:zo_grasp", "box:uniform"], out
    assert all(0 < int(n) <= 3000 and 0.0 <= float(t) <= 1.0 for _, n, t in runs), out
    # ZO-GraSP's 2 * 193 queries made in the box as without it; the uniform plan makes none of them
    assert runs[0][1] == runs[1][1] and int(runs[2][1]) <= int(runs[0][1]) - 2 * 193 + 30, out  # (+ train's check)
    for plan in ("box:zo_grasp", "box:uniform"):
        assert re.search(rf"{plan} .*paired mean difference [+-][0-9.]+ points .*ahead in [01] of 1 seeds", out), out


def test_a_budget_or_seeds_out_of_range_is_refused_naming_the_flag(capsys):
    mod = _load()
    for argv, flag in ((["--budget", "10"], "--budget"), (["--seeds", "a"], "--seeds")):
        with pytest.raises(SystemExit):
            mod.main(argv)
        assert flag in capsys.readouterr().err
