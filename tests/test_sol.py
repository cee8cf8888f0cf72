"""``zoracle sol``: the CI-size run and its flags."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("phi")
pytest.importorskip("torch")

from zoracle import cli  # noqa: E402


@pytest.mark.slow  # about a minute (PhiFlow solves on NumPy): the CI script's slow run keeps it
def test_quick_run_zo_sol_beats_src(tmp_path, capsys):
    """The --quick run (fixed seeds): ZO-SOL's test MAE is below the uncorrected solver's."""
    out = tmp_path / "out"
    rc = cli.main(["sol", "--quick", "--json", "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert rc == 0
    captured = capsys.readouterr()
    maes = json.loads(captured.out.strip().splitlines()[-1])
    assert set(maes) == {"SRC", "NON", "ZO-SOL", "FO-SOL"}
    assert all(v is None or v > 0 for v in maes.values())
    assert maes["ZO-SOL"] < maes["SRC"]
    # ZO-SOL fine-tunes the NON fit through the solver: the in-the-loop steps must help
    assert maes["ZO-SOL"] < maes["NON"]
    assert "batch speed-up" in captured.err
    table = (out / "results.md").read_text()
    for name in ("SRC", "NON", "ZO-SOL", "FO-SOL", "0.119"):
        assert name in table
    assert (out / "vorticity.png").stat().st_size > 1000
    saved = json.loads((out / "results.json").read_text())
    assert saved["mae"] == maes and saved["speedup"]["max_abs_diff"] < 1e-6


@pytest.mark.parametrize("flags, message", [
    (["--fine-nx", "30"], "--fine-nx"),
    (["--sparsity", "1.5"], "--sparsity"),
    (["--unroll", "50"], "--unroll"),
    (["--lr", "-1"], "--lr"),
    (["--seed", "-1"], "--seed"),  # it failed with a traceback after the reference was computed
])
def test_bad_flags_give_one_line_errors(flags, message, capsys):
    rc = cli.main(["sol", "--quick", *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and message in err


def test_bad_reynolds_list_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["sol", "--train-re", "100,abc"])
    assert exc.value.code == 2
    assert "comma-separated" in capsys.readouterr().err
