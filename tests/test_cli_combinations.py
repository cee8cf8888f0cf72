"""Flag combinations of the ``zoracle`` commands, typed as users type them: each either runs or
ends in one line naming the flag and its fix (exit code 2 for a usage error), never a traceback,
an abort or a flag that is silently ignored."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoracle import cli
from zoracle.cli import main


def _usage_error(capsys, argv) -> str:
    """``zoracle ARGV``'s one stderr line, after checking it exits 2 (a usage error)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def never_run(monkeypatch):
    """The commands' ``main`` fails the test if reached: their flags must be refused before."""
    def refuse(name):
        mod = importlib.import_module(f"zoracle.apps.{cli.COMMANDS[name][0]}")
        monkeypatch.setattr(mod, "main", lambda args: pytest.fail(f"zoracle {name} ran with {vars(args)}"))

    return refuse


@pytest.mark.parametrize("argv, flag", [
    (["--methods", "fo", "--lr", "0.5"], "--lr"),  # DeepZero's learning rate, where the user meant --fo-lr
    (["--methods", "fo", "--mu=1e-3"], "--mu"),
    (["--methods", "fo", "--sparsity", "0.5"], "--sparsity"),
    (["--methods", "fo", "--ratios", "smart"], "--ratios"),
    (["--methods", "fo", "--mask-interval", "5"], "--mask-interval"),
    (["--methods", "deepzero", "--fo-lr", "0.5"], "--fo-lr"),
    (["--methods", "deepzero,fo", "--rge-lr", "0.5"], "--rge-lr"),
    (["--methods", "fo", "--workers", "2"], "--workers"),
    (["--methods", "fo", "--dask", "local"], "--dask"),
    (["--methods", "fo", "--ray", "auto"], "--ray"),
    (["--methods", "fo", "--shard-timeout", "5"], "--shard-timeout"),
    (["--methods", "deepzero", "--ray", "auto", "--allow-network"], "--allow-network"),
    (["--methods", "deepzero", "--ray=ray://user:secret@host:10001", "--allow-net"], "--allow-network"),
])
def test_demo_refuses_a_flag_of_a_method_it_does_not_run(argv, flag, capsys, never_run):
    """`--methods fo --lr 0.5` trained first-order SGD at --fo-lr's default, and `--methods fo
    --dask ADDRESS` ran serially: both said nothing."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    never_run("demo")
    line = _usage_error(capsys, ["demo", "--quick", "--epochs", "1", *argv])
    assert line.startswith(f"zoracle demo: error: {flag} ") and "drop it" in line and "secret" not in line
    assert "--methods" in line or "--ray" in line


@pytest.mark.parametrize("argv", [["--methods", "rge", "--lr", "0.5"], ["--methods", "fo", "--fo-lr", "0.2"],
                                  ["--methods", "fo", "--workers", "1"], ["--lr", "1", "--fo-lr", "1", "--rge-lr", "1"],
                                  ["--methods", "deepzero", "--shard-timeout", "60", "--sparsity", "0.5"]])
def test_demo_takes_the_flags_of_the_methods_it_runs(argv):
    """(rge sizes its budget from a DeepZero run: --lr sets that run's rate.)"""
    from zoracle.apps import demo

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(argv)
    assert demo._check(args)


def test_demo_refuses_epochs_whose_steps_overflow_before_any_work(capsys, never_run):
    """`--epochs 10**23` loaded the data, then failed naming the schedule's `total_steps` (exit 1)."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    never_run("demo")
    line = _usage_error(capsys, ["demo", "--methods", "fo", "--epochs", str(10**23)])
    assert line.startswith("zoracle demo: error: --epochs must be at most ") and "total_steps" not in line


def test_sol_refuses_no_fo_with_fo_steps(capsys, never_run):
    """`--no-fo --fo-steps 50` skipped FO-SOL and said nothing of its --fo-steps."""
    from zoracle._errors import ArgumentError
    from zoracle.apps import sol

    parser = argparse.ArgumentParser()
    sol.add_arguments(parser)
    with pytest.raises(ArgumentError, match="`--no-fo` skips FO-SOL, which `--fo-steps` 50 asks to run"):
        sol.config_from_args(parser.parse_args(["--quick", "--fo-steps", "50", "--no-fo"]))
    assert sol.config_from_args(parser.parse_args(["--quick", "--no-fo", "--fo-steps", "0"])).fo_steps == 0
    pytest.importorskip("phi")
    never_run("sol")
    line = _usage_error(capsys, ["sol", "--quick", "--no-fo", "--fo-steps=50"])
    assert "drop one of them" in line


@pytest.mark.parametrize("device", ["foo", "", "local", "cpu:x"])
def test_bench_refuses_an_unknown_device_as_a_usage_error(device, capsys, never_run):
    """`--device foo` was refused by the run, after torch's import: exit 1, not 2 as argparse's."""
    pytest.importorskip("torch")
    never_run("bench")
    line = _usage_error(capsys, ["bench", "--model", "mlp", "--quick", f"--device={device}"])
    assert line.startswith("zoracle bench: error: `--device` must be a torch device this machine has")


@pytest.mark.parametrize("flag", ["--n0", "--n"])
def test_defense_refuses_a_noise_count_past_int64_naming_its_flag(flag, capsys, never_run):
    """`--n0 10**23` trained all three denoisers, then failed naming smoothing's `n0` (exit 1);
    `--n 10**23` was refused naming `n_a` and `n`."""
    for module in ("torch", "sklearn", "onnx", "onnxruntime"):
        pytest.importorskip(module)
    never_run("defense")
    line = _usage_error(capsys, ["defense", "--quick", f"{flag}={10**23}"])
    assert line == (f"zoracle defense: error: `{flag}` must be an integer >= 1 and at most {2**63 - 1}, "
                    f"got {10**23}")


@pytest.mark.parametrize("argv", [["--model", "deepzero", "--sparsity", "0.5"],
                                  ["--model=fallback", "--model", "deepzero", "--naive-coords", "10"]])
def test_bench_refuses_a_column_flag_no_chosen_model_has(argv, capsys, never_run):
    """`--model deepzero --sparsity 0.5` ran deepzero's own comparison, which takes neither
    --sparsity nor --naive-coords, and said nothing of them."""
    pytest.importorskip("torch")
    never_run("bench")
    line = _usage_error(capsys, ["bench", "--quick", *argv])
    assert line.startswith(f"zoracle bench: error: `{argv[-2]}` sets the columns (a)-(d)") and "drop it" in line
    from zoracle.apps import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    bench.check(parser.parse_args(["--model", "mlp", *argv]))  # taken where a chosen model has the columns


@pytest.mark.parametrize("batch", [str(10**23), str(10**13)])
def test_bench_refuses_a_batch_it_cannot_allocate_in_one_line(batch, capsys):
    """`--batch 10**23` ended in numpy's traceback (ValueError: Maximum allowed dimension exceeded;
    10**13: its MemoryError)."""
    pytest.importorskip("torch")
    assert main(["bench", "--model", "mlp", "--quick", "--repeat", "1", "--batch", batch]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"zoracle bench: error: `--batch` {batch}: its inputs cannot be allocated "
                                        + err.split("cannot be allocated ", 1)[1].strip()]
    assert err.rstrip().endswith("pass a smaller --batch")


@pytest.mark.parametrize("argv, said", [
    (["demo", "--sparsity", "0,5"], "argument --sparsity: expected a number, got '0,5' (write a decimal point, "
                                    "whatever the locale: 0.5)"),
    (["demo", "--mu=1,5e-3"], "got '1,5e-3' (write a decimal point, whatever the locale: 1.5e-3)"),
    (["sol", "--lr", " 3,0 "], "got ' 3,0 ' (write a decimal point, whatever the locale: 3.0)"),
    (["demo", "--lr", "abc"], "argument --lr: expected a number, got 'abc'"),
    (["demo", "--epochs", "1,5"], "argument --epochs: expected an integer, got '1,5'"),
])
def test_a_decimal_comma_is_refused_with_its_fix(argv, said, capsys):
    """A German or Turkish user's `--sparsity 0,5` got argparse's "invalid float value: '0,5'",
    which names no fix."""
    pytest.importorskip("torch")
    if argv[0] == "sol":
        pytest.importorskip("phi")
    line = _usage_error(capsys, argv)
    assert said in line and "invalid" not in line
    if "'1,5'" in said:
        assert "decimal point" not in line  # an integer has none


@pytest.mark.slow
def test_a_shard_timeout_on_the_calling_process_exits_with_its_error_not_an_abort(tmp_path):
    """`zoracle demo --shard-timeout` with no workers: the timeout's thread, left inside torch's
    forward, was still running when the interpreter finalized: "terminate called without an active
    exception" and exit code 134 (SIGABRT) after the error line."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "zoracle", "demo", "--quick", "--epochs", "1", "--methods", "deepzero",
                        "--shard-timeout", "1e-9"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")]
                                                                                if p])))
    assert r.returncode == 1, r.stderr
    assert "terminate called" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("pass a larger --shard-timeout")


def test_serial_timeout_waits_at_exit_for_the_thread_it_left():
    """The thread a SerialExecutor timeout leaves in its call is waited for at exit (a while), so the
    interpreter does not finalize with it inside an extension's call (torch: an abort, exit 134)."""
    import threading

    import numpy as np

    from zoracle import executors

    release = threading.Event()
    ran = []

    def slow(p):
        release.wait(30)
        ran.append(1)
        return float(np.sum(p))

    import zoracle as zo

    with pytest.raises(executors.ShardTimeout):
        zo.estimate_gradient(slow, np.zeros(2), estimator=zo.CGE(mu=1e-3),
                             executor=executors.SerialExecutor(timeout=0.05))
    left = [ref() for ref in executors._LEFT if ref() is not None and ref().is_alive()]
    assert left
    release.set()
    executors._wait_left()  # the atexit handler
    assert not any(t.is_alive() for t in left) and ran


@pytest.mark.parametrize("case", ["missing", "suffix", "itself"])
def test_plot_refuses_its_arguments_as_usage_errors(case, tmp_path, capsys):
    """A missing checkpoint, a figure suffix matplotlib cannot write and a figure that is the checkpoint
    were refused by the command's run: exit 1, as a run that fails, not 2 as for a usage error."""
    pytest.importorskip("matplotlib")
    import numpy as np

    import zoracle as zo

    ckpt = tmp_path / "r\u00fcn \u00fc.npz"
    zo.train(lambda p: float(np.sum(p ** 2)), np.ones(3), epochs=1, steps_per_epoch=2, optimizer=zo.sgd(0.1),
             progress=False, checkpoint=ckpt)
    argv = {"missing": [str(tmp_path / "n\u00f6.npz"), str(tmp_path / "a.png")],
            "suffix": [str(ckpt), str(tmp_path / "a.xyz")], "itself": [str(ckpt), str(ckpt)]}[case]
    line = _usage_error(capsys, ["plot", *argv])
    said = {"missing": "does not exist or is not a file", "suffix": "matplotlib cannot write '.xyz' files",
            "itself": "is the checkpoint: the figure would replace it"}[case]
    assert said in line
    assert main(["plot", "--x=step", str(ckpt), str(tmp_path / "d\u00e9j\u00e0" / "a b.svg")]) == 0


def test_plot_takes_its_figure_with_dash_o_too(tmp_path, capsys):
    """`zoracle plot run.npz -o run.png` was refused ("unrecognized arguments: -o"); it now draws what
    `zoracle plot run.npz run.png` draws, and a figure given twice as two files is refused, naming both."""
    pytest.importorskip("matplotlib")
    import numpy as np

    import zoracle as zo

    ckpt = tmp_path / "run.npz"
    zo.train(lambda p: float(np.sum(p ** 2)), np.ones(3), epochs=1, steps_per_epoch=2, optimizer=zo.sgd(0.1),
             progress=False, checkpoint=ckpt)
    title = ["--title", "t"]  # the default title is the checkpoint's path: the same in both figures
    assert main(["plot", str(ckpt), str(tmp_path / "a.png"), *title]) == 0
    assert main(["plot", str(ckpt), "-o", str(tmp_path / "b.png"), *title]) == 0
    assert main(["plot", str(ckpt), f"--output={tmp_path / 'c.png'}", *title]) == 0
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "a.png").read_bytes() == (tmp_path / "c.png").read_bytes()
    assert main(["plot", str(ckpt), str(tmp_path / "d.png"), "-o", str(tmp_path / "d.png"), *title]) == 0
    assert main(["plot", str(ckpt), str(tmp_path / "d.png"), "-o", f"{tmp_path}/./d.png", *title]) == 0  # one file
    capsys.readouterr()
    line = _usage_error(capsys, ["plot", str(ckpt), str(tmp_path / "e.png"), "-o", str(tmp_path / "f.png")])
    assert "name two files" in line and "e.png" in line and "f.png" in line
    line = _usage_error(capsys, ["plot", str(ckpt), "-o", str(tmp_path / "a.xyz")])
    assert "matplotlib cannot write '.xyz' files" in line
    assert not (tmp_path / "e.png").exists() and not (tmp_path / "f.png").exists()


def test_a_learning_rate_past_float32s_range_is_reported_as_a_divergence_alone():
    """`zoracle demo --lr 1e300`: numpy's "RuntimeWarning: overflow encountered in cast" (naming a line
    of zoracle/_optim.py) came before the divergence's error, and was itself the error where warnings
    are errors (as in this suite)."""
    import numpy as np

    import zoracle as zo

    with pytest.raises(zo.ArgumentError, match=r"training diverged at step 0 .* lower the learning rate"):
        zo.train(lambda p: float(np.sum(p.astype(np.float64) ** 2)), np.ones(3, np.float32), optimizer=zo.sgd(1e300),
                 estimator=zo.CGE(mu=1e-2), epochs=1, steps_per_epoch=2, progress=False)


# ---- every combination, generated: argv as users type it (deterministic profile) ----

_VALUES = ["1", "0", "-1", "-0", "0.5", "2", "1e-3", "1e400", "nan", "inf", "", " ", "abc", "0,5", "1_0", "0x10",
           str(10**23), "local", "local:0", "local:2", "auto", "cpu", "foo", "\u00fc", "{tmp}/a b/\u00fc.png",
           "{tmp}/d\u00e9j\u00e0", os.devnull]  # {tmp}: the test's folder


def _flags(name):
    mod = importlib.import_module(f"zoracle.apps.{cli.COMMANDS[name][0]}")
    parser = argparse.ArgumentParser()
    mod.add_arguments(parser)
    return [(a.option_strings[-1], a.nargs != 0, list(a.choices or ())) for a in parser._actions
            if a.option_strings and "-h" not in a.option_strings]


@st.composite
def _argv(draw, name, tmp):
    argv = [name]
    for flag, takes, choices in draw(st.lists(st.sampled_from(_flags(name)), max_size=4)):
        typed = draw(st.sampled_from([flag, flag[:max(4, len(flag) - 2)]]))  # argparse takes an unambiguous prefix
        if not takes:
            argv.append(typed)
            continue
        value = draw(st.sampled_from(choices + _VALUES)).replace("{tmp}", tmp)
        argv += draw(st.sampled_from([[typed, value], [f"{typed}={value}"]]))
    return argv


@pytest.mark.parametrize("name", ["demo", "bench", "defense", "sol"])
@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_generated_flag_combinations_run_or_refuse_in_one_line(name, data, capsys, monkeypatch, tmp_path):
    for module in ("torch", "sklearn", "onnx", "onnxruntime", "phi", "matplotlib"):
        pytest.importorskip(module)
    mod = importlib.import_module(f"zoracle.apps.{cli.COMMANDS[name][0]}")
    ran = []
    monkeypatch.setattr(mod, "main", lambda args: ran.append(args) or 0)
    monkeypatch.setenv("ZORACLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # a relative `--out 1` that passes the checks makes its folder (left in the checkout before)
    argv = data.draw(_argv(name, str(tmp_path)))
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if ran:
        assert code == 0
        return
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (argv, code, err)
    assert lines[0].startswith(f"zoracle {name}: error: ") and "-" in lines[0].split("error: ", 1)[1], (argv, err)


@pytest.mark.parametrize("given, end", [("90", "got 90.0; a percentage? give --sparsity 0.9"),
                                        ("1.5", "got 1.5"), ("100", "got 100.0")])
def test_demo_and_bench_name_the_fraction_of_a_percentage_sparsity(capsys, never_run, given, end):
    """`--sparsity 90` said only that it must be in [0, 1): give 0.9 (a whole percentage only)."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    never_run("demo")
    never_run("bench")
    line = _usage_error(capsys, ["demo", "--sparsity", given])
    assert line.startswith("zoracle demo: error: --sparsity must be in [0, 1) (0.9 = keep 10%), ") and line.endswith(end)
    line = _usage_error(capsys, ["bench", "--quick", "--sparsity", given])
    assert line.startswith("zoracle bench: error: `--sparsity` must be in [0, 1), ") and line.endswith(end), line
