"""What a user sees when the file system misbehaves under a checkpoint, a figure or a command's
output: long names, saves refused for a reason other than a full disk, a file mounted on its own,
a file where a folder should be, a disk that fills as a command writes its report."""

from __future__ import annotations

import errno
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import zoracle as zo

KW = dict(epochs=2, steps_per_epoch=3, optimizer=zo.sgd(0.1), rng=0, progress=False)


def _loss(x):
    return float(((x - 1) ** 2).sum())


@pytest.mark.parametrize("stem", ["r" * 236, "日" * 78 + "ab"], ids=["ascii-240-bytes", "cjk-240-bytes"])
def test_a_checkpoint_named_near_the_longest_name_is_written_and_resumed(tmp_path, stem):
    """A name of 240 bytes (the limit is 255) was refused before the first query as "File name too
    long; choose a writable folder": the temporary file a save writes first adds ~40 bytes to it."""
    name = stem + ".npz"
    assert 230 < len(os.fsencode(name)) <= 255
    if hasattr(os, "pathconf") and os.pathconf(tmp_path, "PC_NAME_MAX") < 255:
        pytest.skip("the temporary folder's file system takes names under 255 bytes")
    ck = str(tmp_path / name)
    first = zo.train(_loss, np.zeros(3), checkpoint=ck, **KW)
    more = zo.train(_loss, np.zeros(3), checkpoint=ck, resume=True, **dict(KW, epochs=3))
    assert more.history.steps[:6] == first.history.steps and more.steps == 9
    assert os.listdir(tmp_path) == [name]  # no temporary file left
    if importlib.util.find_spec("matplotlib") is not None:
        fig = str(tmp_path / (stem + ".png"))  # the figure is written through a temporary name too
        more.plot(fig)
        assert sorted(os.listdir(tmp_path)) == sorted([name, stem + ".png"])


@pytest.mark.skipif(os.name != "posix", reason="stale temporary files are found by pid on POSIX")
def test_a_long_named_checkpoints_stale_temporary_file_is_removed(tmp_path):
    """The shortened temporary names are still found (and removed) once their writer is gone."""
    from zoracle._checkpoint import _host_tag, _tmp_prefix, check_writable

    ck = str(tmp_path / ("s" * 240 + ".npz"))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = tmp_path / f"{_tmp_prefix(ck)}{_host_tag()}-{int(gone.stdout)}-0123456789ab"
    stale.write_bytes(b"half a checkpoint")
    assert len(os.fsencode(stale.name)) <= 255
    check_writable(ck)
    assert os.listdir(tmp_path) == []


def test_a_name_longer_than_the_folder_takes_is_refused_naming_the_fix(tmp_path):
    with pytest.raises(zo.ArgumentError, match=r"File name too long\); pass a shorter path \(a file name there may "
                                               r"have \d+ bytes\)"):
        zo.train(_loss, np.zeros(3), checkpoint=str(tmp_path / ("n" * 260 + ".npz")), **KW)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("code,fix", [
    (errno.EROFS, "its file system became read-only"),
    (errno.EACCES, "its folder is no longer writable: make it writable again or pass another path"),
    (errno.EBUSY, "the file is a mount point of its own"),
    (errno.EIO, "; pass another path"),
])
def test_a_save_that_fails_for_another_reason_than_a_full_disk_names_that_reason(tmp_path, monkeypatch, code, fix):
    """Every failed save said "free space or pass another path": wrong for a folder remounted
    read-only after a disk error (EROFS), one whose permissions changed (EACCES), or a file
    mounted on its own (EBUSY, the rename refused)."""
    import zoracle._run_save as tr

    real, calls = tr.save_checkpoint, []

    def save(path, arrays, meta):
        calls.append(meta["step"])
        if len(calls) > 1:
            raise OSError(code, os.strerror(code))
        return real(path, arrays, meta)

    monkeypatch.setattr(tr, "save_checkpoint", save)
    ck = tmp_path / "run.npz"
    with pytest.raises(zo.CheckpointError, match="at step 2 .*the checkpoint there still holds step 1") as info:
        zo.train(_loss, np.zeros(3), checkpoint=str(ck), checkpoint_every=1, **KW)
    assert fix in str(info.value) and "free space" not in str(info.value)
    assert zo.load_checkpoint(ck)[1]["step"] == 1


def test_a_full_disk_still_says_free_space(tmp_path, monkeypatch):
    import zoracle._run_save as tr

    real = tr.save_checkpoint
    monkeypatch.setattr(tr, "save_checkpoint", lambda p, a, m: real(p, a, m) if m["step"] < 2 else
                        (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(zo.CheckpointError, match="No space left on device.*free space or pass another path"):
        zo.train(_loss, np.zeros(3), checkpoint=str(tmp_path / "run.npz"), checkpoint_every=1, **KW)


def test_a_file_where_a_folder_should_be_is_named(tmp_path):
    """The message was "cannot be written (FileExistsError: File exists); choose a writable
    folder", naming neither the file in the way nor what exists."""
    (tmp_path / "runs").write_text("a file, not a folder")
    for where in ("runs/run.npz", "runs/a/b/run.npz"):
        with pytest.raises(zo.ArgumentError, match=r"'.*runs' is a file, not a folder\); pass a path inside a folder"):
            zo.train(_loss, np.zeros(3), checkpoint=str(tmp_path / where), **KW)
    assert os.listdir(tmp_path) == ["runs"]


_MOUNTED = """
import sys, numpy as np, zoracle as zo
try:
    zo.train(lambda x: float(((x - 1) ** 2).sum()), np.zeros(3), epochs=2, steps_per_epoch=3, optimizer=zo.sgd(0.1),
             rng=0, progress=False, checkpoint=sys.argv[1], resume=True)
except zo.ArgumentError as exc:
    print("refused:", exc)
except zo.CheckpointError as exc:
    print("failed at a save:", exc)
else:
    print("saved")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mount namespaces and mountinfo are Linux's")
def test_a_checkpoint_file_mounted_on_its_own_is_refused_before_the_first_query(tmp_path):
    """A file bind-mounted on its own (``docker run -v $PWD/run.npz:/app/run.npz``) passed the
    check before the first query, then every save failed (EBUSY: a rename onto a mount point), the
    first after an epoch's work. Run in a private mount namespace (``unshare``: the test's mount is
    gone with its process); skipped where this user may not make one."""
    host, seen = tmp_path / "host", tmp_path / "container"
    host.mkdir()
    seen.mkdir()
    zo.train(_loss, np.zeros(3), checkpoint=str(host / "run.npz"), epochs=1, steps_per_epoch=3,
             optimizer=zo.sgd(0.1), rng=0, progress=False)
    (seen / "run.npz").write_bytes(b"")
    before = (host / "run.npz").read_bytes()
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount")
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace for this user: {probe.stderr.decode(errors='replace').strip()}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's zoracle
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [root, os.environ.get("PYTHONPATH")] if p))
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'mount --bind "$1" "$2" && exec "$3" -c "$4" "$2"', "sh", str(host / "run.npz"),
                           str(seen / "run.npz"), sys.executable, _MOUNTED],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused:") and "mounted on its own" in done.stdout, done.stdout
    assert (host / "run.npz").read_bytes() == before  # untouched


def test_defense_prints_its_results_when_its_report_cannot_be_written(tmp_path, monkeypatch, capsys):
    """A disk that filled during ``zoracle defense --out DIR`` (minutes of training and
    certification) ended in a traceback from writing defense.md, and the results, printed after
    the files, were never shown. The run is replaced by its report (built as the command's own);
    the files' writes fail as a full disk's."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from zoracle.apps import defense
    from zoracle.cli import main as cli

    rows = {name: defense.RowResult(name, {"0": 0.9, "0.25": 0.7, "0.5": 0.4, "0.75": 0.1}, 0.0, 0, 0.0, 0.0, 10, 0.1)
            for name in ("none", "mse", "deepzero", "hybrid", "fo")}
    report = defense.DefenseReport(defense.QUICK, rows, 0.9, 0.8, 1.0)
    monkeypatch.setattr(defense, "run_defense", lambda config, out=None: report)

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(defense, "open", lambda *a, **k: Full(), raising=False)
    out = tmp_path / "out"
    rc = cli(["defense", "--quick", "--json", "--out", str(out)])
    got = capsys.readouterr()
    assert rc == 1
    assert json.loads(got.out) == report.certified()  # the results, printed
    assert "the report could not be written to" in got.err and "No space left on device" in got.err
    assert "the results are printed above" in got.err


def _half_then_full(out):
    """An ``open`` whose files under ``out`` take half of what is written, then fail as a full disk."""
    import builtins

    class Half:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    def opener(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        return Half(f) if "w" in mode and str(path).startswith(str(out)) else f

    return opener


def test_defense_keeps_the_previous_report_when_a_rewrite_fails(tmp_path, monkeypatch, capsys):
    """defense.md and defense.json were rewritten in place: a disk that filled during the write
    left half a file, and the previous run's report (of the same --out) was gone with it."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from zoracle.apps import defense
    from zoracle.cli import main as cli

    out = tmp_path / "out"
    out.mkdir()
    (out / "defense.md").write_text("the previous run's report\n")
    (out / "defense.json").write_text('{"previous": true}\n')
    rows = {name: defense.RowResult(name, {"0": 0.9, "0.25": 0.7, "0.5": 0.4, "0.75": 0.1}, 0.0, 0, 0.0, 0.0, 10, 0.1)
            for name in ("none", "mse", "deepzero", "hybrid", "fo")}
    report = defense.DefenseReport(defense.QUICK, rows, 0.9, 0.8, 1.0)
    monkeypatch.setattr(defense, "run_defense", lambda config, out=None: report)
    monkeypatch.setattr(defense, "open", _half_then_full(out), raising=False)
    assert cli(["defense", "--quick", "--json", "--out", str(out)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert (out / "defense.md").read_text() == "the previous run's report\n"
    assert sorted(os.listdir(out)) == ["defense.json", "defense.md"]  # no temporary file left
    monkeypatch.undo()  # the report's first file written: the second fails the same way
    monkeypatch.setattr(defense, "run_defense", lambda config, out=None: report)
    full = _half_then_full(out)
    monkeypatch.setattr(defense, "open", lambda p, mode="r", *a, **k: (full if ".defense.json" in str(p) else open)(
        p, mode, *a, **k), raising=False)
    assert cli(["defense", "--quick", "--json", "--out", str(out)]) == 1
    assert (out / "defense.json").read_text() == '{"previous": true}\n'
    assert (out / "defense.md").read_text().startswith("Certified accuracy")  # (this one was written whole)


@pytest.mark.slow  # a small `zoracle sol` run (about half a minute)
def test_sol_keeps_the_previous_results_when_a_rewrite_fails(tmp_path, monkeypatch, capsys):
    """results.md and results.json were rewritten in place: a disk that filled during the write left
    half a file, and the previous run's results (of the same --out) were gone with them."""
    pytest.importorskip("phi")
    import importlib

    from zoracle.cli import main as cli

    sol = importlib.import_module("zoracle.apps.sol")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.md").write_text("the previous run's table\n")
    monkeypatch.setattr(sol, "open", _half_then_full(out), raising=False)
    rc = cli(["sol", "--fine-nx", "16", "--factor", "2", "--warmup", "2", "--steps", "3", "--unroll", "1",
              "--zo-steps", "1", "--no-fo", "--no-plot", "--out", str(out), "--cache", str(tmp_path / "cache")])
    captured = capsys.readouterr()
    assert rc == 1 and "| ZO-SOL |" in captured.out and "the results could not be written" in captured.err
    assert (out / "results.md").read_text() == "the previous run's table\n"
    assert os.listdir(out) == ["results.md"]  # no temporary file, no half results.json
