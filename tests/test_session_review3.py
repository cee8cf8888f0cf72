"""Review of the CLI-combination, exit-wait and tqdm-lock commits (h317)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

LEFT_BEHIND = textwrap.dedent("""
    import signal, sys, time
    import numpy as np
    import zoracle as zo
    from zoracle import executors

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job ignores it)
    executors.EXIT_WAIT = 120.0  # the exit waits long for the thread left behind: the Ctrl-C ends it

    def loss(x):
        time.sleep(300)  # hangs: the timeout leaves its thread behind
        return float(x @ x)

    try:
        with executors.SerialExecutor(timeout=0.2) as ex:
            zo.estimate_gradient(loss, np.ones(2), zo.CGE(), executor=ex)
    except zo.ZoracleError:
        print("timed out", flush=True)
""")


@pytest.mark.skipif(os.name != "posix", reason="SIGINT sent to a child process")
@pytest.mark.slow
def test_a_ctrl_c_during_the_exit_wait_ends_the_program_as_interrupted(tmp_path):
    """A Ctrl-C while the exit waited for a thread a timeout left behind printed "Exception ignored in
    atexit callback" and a traceback of zoracle's, and the program exited 0, as if it had finished:
    a shell loop over runs went on to the next one. It ends as a Ctrl-C'd program does (SIGINT)."""
    script = tmp_path / "left.py"
    script.write_text(LEFT_BEHIND)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "timed out"
        time.sleep(2.0)  # (in the exit's wait by now: the program has nothing else to do)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)  # (not the 120 s wait)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGINT, (proc.returncode, err)
    assert "Traceback" not in err and "Exception ignored" not in err, err


TORCH_LEFT_BEHIND = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    import zoracle as zo
    from zoracle import executors

    torch.set_num_threads(1)
    executors.EXIT_WAIT = 120.0  # (a slow machine's matmul too)
    A = torch.randn(2000, 2000)

    def loss(x):  # a call of a second or so inside torch, timed out at once
        return float((A @ A).sum()) * 0 + float(x @ x)

    ex = executors.JoblibExecutor(2, backend="threading", timeout=0.01)
    try:
        with ex:
            zo.estimate_gradient(loss, np.ones(2), zo.CGE(), executor=ex)
    except zo.ZoracleError as exc:
        print(type(exc).__name__, flush=True)
""")


@pytest.mark.slow
def test_a_thread_a_threading_pools_timeout_left_inside_torch_is_waited_for_at_exit(tmp_path):
    """The exit waited for the threads a SerialExecutor's timeout left behind, not for those of a
    threading pool: one still inside torch's matmul when the interpreter finalized aborted the
    program after it had reported the timeout ("terminate called without an active exception", 134)."""
    pytest.importorskip("torch")
    script = tmp_path / "left_torch.py"
    script.write_text(TORCH_LEFT_BEHIND)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.stdout.strip() == "ShardTimeout", (done.stdout, done.stderr)
    assert done.returncode == 0 and "terminate called" not in done.stderr, (done.returncode, done.stderr)


@pytest.mark.parametrize("argv, said", [
    (["--methods", "fo", "--lr", "0.5"], "--lr 0.5 is for deepzero and rge"),
    (["--methods", "fo", "--lr", "0.5"], "pass --fo-lr 0.5"),  # the flag the user meant
    (["--methods", "deepzero", "--fo-lr", "0.05"], "pass --lr 0.05"),
    (["--methods", "deepzero,fo", "--rge-lr", "0.5"], "--lr and --fo-lr"),
    (["--methods", "fo", "--ratios", "smart"], "--ratios smart is for"),
])
def test_demos_refusal_of_another_methods_flag_shows_its_value_and_the_flag_meant(argv, said, capsys):
    """`--methods fo --lr 0.5` was refused with "drop it, or add deepzero to --methods": no value,
    and not the likely fix, first-order SGD's own --fo-lr."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from zoracle.cli import main

    with pytest.raises(SystemExit) as info:
        main(["demo", "--quick", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and said in err and "drop it" in err, err


@pytest.mark.parametrize("batch", [10**18, 10**23])
def test_bench_refuses_a_batch_past_any_size_in_one_line(batch, capsys):
    """`zoracle bench --batch 10**18`: numpy's "array is too big" (not the "Maximum allowed dimension
    exceeded" of 10**23, which was refused) ended in a traceback."""
    pytest.importorskip("torch")
    from zoracle.cli import main

    capsys.readouterr()
    assert main(["bench", "--model", "mlp", "--quick", "--batch", str(batch)]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"`--batch` {batch}: its inputs cannot be allocated" in lines[0], err
    assert "pass a smaller --batch" in lines[0]
