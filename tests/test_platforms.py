"""zoracle off Linux (macOS, Windows), simulated on Linux: the POSIX-only modules and calls taken
away (fcntl, os.fork, os.getuid, os.sched_getaffinity, SIGALRM and SIGUSR1), multiprocessing's
"spawn" start method (the default on macOS and Windows), and Windows' refusal to replace a file
that another program holds open."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import zoracle as zo
from zoracle import _checkpoint


def loss(x):
    return float(np.sum((x - 1.0) ** 2))


def run(path, epochs=3, resume=False):
    return zo.train(loss, np.zeros(6), epochs=epochs, estimator=zo.CGE(), checkpoint=str(path), resume=resume,
                    progress=False)


def held_open(times, name="run.npz"):
    """An ``os.replace`` that Windows refuses ``times`` times while ``name`` exists and is open
    elsewhere (PermissionError, "Access is denied"), then does the rename; and its calls."""
    real, calls = os.replace, []

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == name and os.path.exists(dst):
            calls.append(dst)
            if len(calls) <= times:
                raise PermissionError(errno.EACCES, "Access is denied", dst)
        return real(src, dst, *args, **kwargs)

    return replace, calls


def test_a_save_on_windows_waits_for_a_program_that_has_the_checkpoint_open(tmp_path, monkeypatch):
    """Windows cannot rename a file onto one that another program holds open: a virus scanner, the
    search indexer or a sync tool (OneDrive) reading the previous save for a moment ended the run
    at its next save (CheckpointError: "Access is denied"). The rename is tried again meanwhile."""
    monkeypatch.setattr(_checkpoint, "_WINDOWS", True, raising=False)
    replace, calls = held_open(2)
    monkeypatch.setattr(os, "replace", replace)
    res = run(tmp_path / "run.npz")
    assert len(calls) >= 3  # refused twice, then done
    monkeypatch.undo()
    again = run(tmp_path / "run.npz", epochs=3, resume=True)  # the file holds the finished run
    assert again.nfev == res.nfev and np.array_equal(again.params, res.params)


def test_a_rename_windows_keeps_refusing_names_the_program_holding_the_file(tmp_path, monkeypatch):
    """Still refused after the wait: the error said only "its folder is no longer writable", while on
    Windows the usual cause is another program holding the file open; both are named now."""
    run(tmp_path / "run.npz", epochs=1)
    monkeypatch.setattr(_checkpoint, "_WINDOWS", True, raising=False)
    monkeypatch.setattr(_checkpoint, "REPLACE_WAIT_S", 0.05, raising=False)
    replace, calls = held_open(10 ** 6)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(zo.CheckpointError, match="another program holds the file open") as info:
        run(tmp_path / "run.npz", epochs=3, resume=True)
    assert "Access is denied" in str(info.value) and "OneDrive" in str(info.value)
    assert len(calls) >= 2


def test_reports_written_through_replacing_wait_on_windows_too(tmp_path, monkeypatch):
    """``replacing`` (the reports of ``zoracle defense`` and ``zoracle sol``) renames as a save does."""
    monkeypatch.setattr(_checkpoint, "_WINDOWS", True, raising=False)
    replace, calls = held_open(1, "results.md")
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "results.md"
    target.write_text("old")
    with _checkpoint.replacing(str(target)) as tmp, open(tmp, "w") as fh:
        fh.write("new")
    assert target.read_text() == "new" and len(calls) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["results.md"]  # no temporary file left


def test_a_figure_on_windows_waits_for_a_viewer_that_has_it_open(tmp_path, monkeypatch):
    """A run's figure is renamed onto the previous one as a checkpoint is: an image viewer holding
    it open (Windows) is waited for as well."""
    pytest.importorskip("matplotlib")
    res = zo.train(loss, np.zeros(4), epochs=2, estimator=zo.CGE(), progress=False)
    target = tmp_path / "curves.png"
    target.write_bytes(b"old")
    monkeypatch.setattr(_checkpoint, "_WINDOWS", True, raising=False)
    replace, calls = held_open(1, "curves.png")
    monkeypatch.setattr(os, "replace", replace)
    res.history.plot(str(target))
    assert target.read_bytes()[:4] == b"\x89PNG" and len(calls) == 2


def test_the_windows_refusal_of_process_workers_names_the_command_line_flag_too(monkeypatch):
    """``zoracle demo --workers 2`` on Windows was told to use ``JoblibExecutor(n, backend='threading')``,
    which a command line cannot pass; the flag that works there is named too."""
    from zoracle.executors import JoblibExecutor

    with monkeypatch.context() as m:  # (undone before pytest reports: its pathlib follows os.name)
        m.setattr(os, "name", "nt")
        with pytest.raises(zo.ZoracleError, match="POSIX") as info:
            with JoblibExecutor(2):
                pass
    assert "--dask local:N" in str(info.value)


def test_off_windows_a_refused_rename_fails_at_once(tmp_path, monkeypatch):
    """On POSIX a PermissionError from a rename is the folder's mode, which waiting does not change."""
    monkeypatch.setattr(_checkpoint, "_WINDOWS", False, raising=False)
    replace, calls = held_open(10 ** 6, "results.md")
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "results.md"
    target.write_text("old")
    with pytest.raises(PermissionError):
        with _checkpoint.replacing(str(target)) as tmp, open(tmp, "w") as fh:
            fh.write("new")
    assert len(calls) == 1 and target.read_text() == "old"


def test_a_checkpointed_run_without_posix_only_calls(tmp_path, monkeypatch):
    """No fcntl (Windows: the save goes on unlocked), no os.getuid (Windows), no os.fork and
    os.sched_getaffinity (macOS, Windows), no SIGALRM or SIGUSR1 (Windows): a run saves and resumes."""
    monkeypatch.setitem(sys.modules, "fcntl", None)
    for name in ("getuid", "fork", "sched_getaffinity"):
        monkeypatch.delattr(os, name, raising=False)
    for name in ("SIGALRM", "SIGUSR1"):
        monkeypatch.delattr(signal, name, raising=False)
    res = run(tmp_path / "run.npz", epochs=2)
    more = run(tmp_path / "run.npz", epochs=4, resume=True)
    assert more.nfev > res.nfev and sorted(p.name for p in tmp_path.iterdir()) == ["run.npz"]


_SIMULATED = textwrap.dedent("""
    import multiprocessing, os, signal, sys, tempfile
    sys.modules["fcntl"] = None
    keep = os.register_at_fork  # (torch, imported by the demo, registers with it on POSIX)
    for name in ("fork", "register_at_fork", "getuid", "sched_getaffinity"):
        if hasattr(os, name):
            delattr(os, name)
    for name in ("SIGALRM", "SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            delattr(signal, name)
    multiprocessing.set_start_method("spawn", force=True)
    import numpy as np
    import zoracle as zo
    from zoracle.executors import JoblibExecutor

    def loss(x):
        return float(np.sum((x - 1.0) ** 2))

    if __name__ == "__main__":
        path = os.path.join(tempfile.mkdtemp(), "run.npz")
        serial = zo.train(loss, np.zeros(6), epochs=2, estimator=zo.CGE(), checkpoint=path, progress=False)
        with JoblibExecutor(2) as ex:
            par = zo.train(loss, np.zeros(6), epochs=4, estimator=zo.CGE(), checkpoint=path, resume=True,
                           executor=ex, progress=False)
        print("resumed in workers", par.nfev > serial.nfev)
        if sys.argv[1:] == ["demo"]:
            os.register_at_fork = keep
            from zoracle.cli import main
            sys.exit(main(["demo", "--quick", "--epochs", "1", "--methods", "fo,deepzero", "--workers", "2"]))
""")


@pytest.mark.slow  # (about 15 s: a fresh interpreter running the demo on 2 spawned workers; CI runs it with -m slow)
def test_spawn_and_no_posix_only_calls_in_a_fresh_interpreter(tmp_path):
    """``import zoracle``, a checkpointed run resumed on process workers, and ``zoracle demo --quick``
    with --workers, in an interpreter without fcntl, os.fork, os.register_at_fork (until torch),
    os.getuid, os.sched_getaffinity, SIGALRM and SIGUSR1, started with "spawn"."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    script = tmp_path / "sim.py"
    script.write_text(_SIMULATED)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(zo.__file__)),
                                                        os.environ.get("PYTHONPATH", "")]),
               USER="sim", LOKY_MAX_CPU_COUNT="2")  # (getpass without getuid; joblib warns on Linux only)
    r = subprocess.run([sys.executable, "-W", "error", str(script), "demo"], capture_output=True, text=True,
                       timeout=400, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed in workers True" in r.stdout
    assert "DeepZero" in r.stdout and "smoke test" in r.stdout
