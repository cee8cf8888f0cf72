"""The benchmark scripts refuse an output path they cannot write before any work (as the
`zoracle` commands do), instead of ending a run of minutes in FileNotFoundError."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def _module(name):
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)  # step_floor imports step_time, allocator imports peers
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _no_work(*args, **kwargs):
    raise AssertionError("the run started before its output path was checked")


# (script, the functions that do its work, argv before the output flag, the output flag)
CASES = [
    ("peers", ("sweep", "speed"), ["--quick", "--methods", "deepzero"], "--out"),
    ("peers", ("sweep", "speed"), ["--speed", "x.json", "--methods", "deepzero"], "--out"),
    ("allocator", ("run",), ["--methods", "deepzero", "--rounds", "1"], "--out"),
    ("step_floor", ("run",), ["--rounds", "1", "--steps", "1"], "--out"),
    ("deepzero_tables", ("exp_estimators", "exp_sparsity", "exp_ratios"), ["--quick"], "--json"),
    ("peers_scout", ("scout",), ["--variants", "recipe", "--seeds", "0"], "--out"),
]


@pytest.mark.parametrize("script, work, argv, flag", CASES, ids=[f"{c[0]}{c[2][0]}" for c in CASES])
def test_an_unwritable_output_path_is_refused_before_any_work(script, work, argv, flag, tmp_path, monkeypatch, capsys):
    module = _module(script)
    for name in work:
        monkeypatch.setattr(module, name, _no_work)
    (tmp_path / "a_file").write_text("")
    for bad in (tmp_path / "a_file" / "out.json", tmp_path):  # under a file; a folder
        with pytest.raises(SystemExit) as exc:
            module.main(argv + [flag, str(bad)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"{flag} {bad}: cannot write there" in err
