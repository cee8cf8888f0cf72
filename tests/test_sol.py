"""``zoracle sol``: the CI-size run and its flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
    (["--seed", str(2 ** 64)], "`--seed` must be < 2**64"),  # a traceback from torch.manual_seed
    (["--factor", "1"], "`--factor` must be >= 2"),  # died with "oracle returned nan at the base point"
    (["--train-re", "0.001"], "--train-re: `re` = 0.001 needs"),  # it named `re`, not the flag
    (["--test-re", "0.001"], "--test-re: `re` = 0.001 needs"),
])
def test_bad_flags_give_one_line_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exc:  # refused before any work: a usage error, exit 2 as argparse's own
        cli.main(["sol", "--quick", *flags])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and message in err


def test_bad_reynolds_list_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["sol", "--train-re", "100,abc"])
    assert exc.value.code == 2
    assert "comma-separated" in capsys.readouterr().err


@pytest.mark.slow
def test_log_reports_the_trained_loss_and_the_exact_sparsity(tmp_path, monkeypatch, capsys):
    """The log printed the last step's minibatch loss *before* its update as the trained loss,
    and ``--sparsity 0.9999`` as "100% gradient sparsity"."""
    import re

    import numpy as np

    import zoracle as zo

    seen = {}
    train = zo.train

    def spy(oracle, params, **kw):
        seen["oracle"], seen["start"] = oracle, np.array(params, copy=True)
        seen["result"] = res = train(oracle, params, **kw)
        return res

    monkeypatch.setattr(zo, "train", spy)
    # --quick under the flags: 3 Reynolds numbers, not 5, and the CI size's offline fit and speed probe
    with pytest.warns(UserWarning, match=r"keeps round\(\(1 - sparsity\) \* 324\) = 0 of the 324 scored weights"):
        rc = cli.main(["sol", "--quick", "--fine-nx", "16", "--factor", "2", "--warmup", "2", "--steps", "3",
                       "--unroll", "1", "--zo-steps", "2", "--no-fo", "--no-plot", "--sparsity", "0.9999", "--json",
                       "--cache", str(tmp_path)])
    assert rc == 0
    err = capsys.readouterr().err
    assert "sparse CGE at 99.99% gradient sparsity" in err
    m = re.search(r"relative training loss on all (\d+) training start states (\S+) -> (\S+) in 2 steps", err)
    assert m, err
    oracle, res = seen["oracle"], seen["result"]
    assert int(m[1]) == len(oracle.starts)
    assert float(m[2]) == pytest.approx(oracle(seen["start"]), abs=1e-4)
    assert float(m[3]) == pytest.approx(oracle(res.params), abs=1e-4)


def test_an_unwritable_zoracle_cache_is_named_up_front(tmp_path):
    """$ZORACLE_CACHE, the documented default of --cache, naming a file: the error named the
    API's `cache_dir` (a keyword the command line has not) after PhiFlow had loaded."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {**os.environ, "ZORACLE_CACHE": str(blocker)}
    r = subprocess.run([sys.executable, "-m", "zoracle", "sol", "--quick"], capture_output=True, text=True,
                       timeout=120, env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and r.stdout == "" and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"zoracle sol: error: $ZORACLE_CACHE {blocker}: cannot write there"), lines[0]
    assert "--cache DIR" in lines[0] and "cache_dir" not in lines[0]


def test_an_unwritable_default_cache_in_the_home_folder_is_named_up_front(tmp_path):
    """Neither --cache nor $ZORACLE_CACHE: the default ~/.cache/zoracle under a home that cannot
    hold it (read-only, or a file) was refused only after PhiFlow had loaded, naming the API's
    `cache_dir`, a keyword the command line has not."""
    home = tmp_path / "a-file"
    home.write_text("not a directory")
    env = {k: v for k, v in os.environ.items() if k != "ZORACLE_CACHE"}
    env["HOME"] = str(home)
    code = ("import sys\nfrom zoracle.cli import main\n"
            "try:\n    main(['sol', '--quick'])\nexcept SystemExit as e:\n    print(e.code, 'phi' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"zoracle sol: error: --cache (default) {home}/.cache/zoracle: cannot write there"), lines[0]
    assert "--cache DIR" in lines[0] and "$ZORACLE_CACHE" in lines[0] and "cache_dir" not in lines[0]
    assert r.stdout.split() == ["2", "False"], r.stdout  # a usage error, and PhiFlow never imported


def test_an_unwritable_out_is_refused_before_the_command_loads_phiflow(tmp_path):
    """``zoracle sol --out /proc/...``: the output check ran after sol's own flag check, which
    imports PhiFlow and builds the fine solver (9 s here); before that check existed, 1.3 s."""
    code = ("import sys, time\nt0 = time.perf_counter()\nfrom zoracle.cli import main\n"
            "try:\n    main(['sol', '--quick', '--out', '/proc/no-such-dir/out'])\nexcept SystemExit as e:\n"
            "    print(e.code, 'phi' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "--out /proc/no-such-dir/out: cannot write there" in r.stderr, r.stderr
    assert r.stdout.split() == ["2", "False"], r.stdout  # refused, and PhiFlow never imported


@pytest.mark.slow
def test_a_tilde_in_out_cache_and_zoracle_cache_means_the_home_folder(tmp_path, monkeypatch, capsys):
    """The CLI checked `--out ~/res` (and `--cache`, `$ZORACLE_CACHE`) with ~ expanded, creating
    $HOME/res, then wrote every file into a folder literally named ~ in the working directory."""
    from zoracle.adapters import phiflow as pf

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("ZORACLE_CACHE", "~/env-cache")
    rc = cli.main(["sol", "--quick", "--fine-nx", "16", "--factor", "2", "--warmup", "2", "--steps", "3",
                   "--unroll", "1", "--zo-steps", "1", "--no-fo", "--no-plot", "--json", "--out", "~/res"])
    assert rc == 0
    assert (home / "res" / "results.json").is_file() and (home / "res" / "results.md").is_file()
    assert len(list((home / "env-cache").glob("wake-*.npz"))) == 1
    flow = pf.WakeFlow(nx=16, ny=32)
    ref = pf.reference_trajectories(flow, [200.0], factor=2, warmup=0, steps=1, cache_dir="~/zc")
    assert ref.path.startswith(str(home / "zc"))
    assert not (cwd / "~").exists()


@pytest.mark.slow  # the --quick run (about a minute)
def test_a_vorticity_plot_that_fails_at_the_end_keeps_the_results(tmp_path, capsys, monkeypatch):
    """--out is checked at the start; a disk that filled during the run made the figure's write raise
    a bare OSError inside run(): no results.md, no results.json and no table, after the whole run."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    out = tmp_path / "out"
    assert cli.main(["sol", "--quick", "--json", "--out", str(out), "--cache", str(tmp_path / "cache")]) == 1
    captured = capsys.readouterr()
    maes = json.loads(captured.out.strip().splitlines()[-1])
    assert set(maes) == {"SRC", "NON", "ZO-SOL", "FO-SOL"}
    assert json.loads((out / "results.json").read_text())["mae"] == maes
    assert "vorticity.png' could not be written (OSError: [Errno 28] No space left on device)" in captured.err


@pytest.mark.slow  # the --quick run (about half a minute)
def test_a_full_disk_at_the_end_still_prints_the_results(tmp_path, capsys, monkeypatch):
    """A disk that filled during the run fails the figure and then results.md: the table must still
    be printed and the exit be 1 naming both files (results.md's OSError was a traceback before the
    table, losing the whole run's results)."""
    pytest.importorskip("matplotlib")
    import builtins
    import importlib

    from matplotlib.figure import Figure

    sol = importlib.import_module("zoracle.apps.sol")
    out = tmp_path / "out"

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    def full_open(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).startswith(str(out)):
            raise OSError(28, "No space left on device")
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", full)
    monkeypatch.setattr(sol, "open", full_open, raising=False)
    rc = cli.main(["sol", "--fine-nx", "16", "--factor", "2", "--warmup", "2", "--steps", "3", "--unroll", "1",
                   "--zo-steps", "1", "--no-fo", "--out", str(out), "--cache", str(tmp_path / "cache")])
    captured = capsys.readouterr()
    assert rc == 1
    assert "| ZO-SOL |" in captured.out  # the table, printed
    assert "the results could not be written" in captured.err and "vorticity.png' could not be written" in captured.err
