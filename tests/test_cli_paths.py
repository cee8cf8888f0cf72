"""The CLI's output paths are checked where the command writes them, and its printed lines
cannot fail on a character the terminal's encoding lacks."""

from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np
import pytest

import zoracle as zo
from zoracle import cli


def test_a_plot_path_through_folders_that_do_not_exist_is_written_where_it_was_checked(tmp_path, monkeypatch):
    """abspath read "a/b/../../c/x.png" as ./c/x.png and made ./c; the figure, saved after the run
    through the path as written, failed there (FileNotFoundError: no folder a/b)."""
    pytest.importorskip("matplotlib")
    from apps.demo import _plot

    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(plot="a/b/../../c/x.png")
    cli.check_outputs("demo", args)
    _plot({"deepzero": {"curve": [0.5, 0.6], "loss": [1.0, 0.5]}}, args.plot)  # demo's save at the end of its run
    assert (tmp_path / "c" / "x.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("attr, cmd", [("out", "sol"), ("out", "defense"), ("cache", "sol")])
def test_an_output_folder_through_a_file_is_made_where_it_was_checked(tmp_path, monkeypatch, attr, cmd):
    """"f/../d" (f a file) passed the check at ./d; the command's own os.makedirs of it, as
    written, raised NotADirectoryError."""
    if attr == "out":  # (--out writes a figure: refused first without matplotlib)
        pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("")
    args = argparse.Namespace(**{attr: "f/../d"})
    cli.check_outputs(cmd, args)
    os.makedirs(getattr(args, attr), exist_ok=True)  # as `zoracle sol` and `zoracle defense` make it
    with open(os.path.join(getattr(args, attr), "results.md"), "w") as fh:
        fh.write("ok")
    assert (tmp_path / "d" / "results.md").read_text() == "ok"


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="a symlinked folder")
def test_dotdot_after_a_symlink_is_checked_where_the_system_resolves_it(tmp_path, monkeypatch):
    """"link/../y" is the link target's sibling y for the system; abspath checked (and made) ./y."""
    pytest.importorskip("matplotlib")  # (sol's --out writes a figure)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere" / "x").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere" / "x", tmp_path / "link")
    args = argparse.Namespace(out="link/../y")
    cli.check_outputs("sol", args)
    assert (tmp_path / "elsewhere" / "y").is_dir() and not (tmp_path / "y").exists()
    assert args.out == "link/../y"  # found as written: left as the user wrote it


def test_an_ordinary_relative_path_is_left_as_written(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")  # (sol's --out writes a figure)
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(out="runs/one")
    cli.check_outputs("sol", args)
    assert args.out == "runs/one" and (tmp_path / "runs" / "one").is_dir()


def _run(argv, stdout):
    """``zoracle ARGV`` with ``stdout`` as sys.stdout; its exit code."""
    old = sys.stdout
    sys.stdout = stdout
    try:
        return cli.main(argv)
    finally:
        sys.stdout = old


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_zoracle_plot_prints_a_path_its_stdout_cannot_encode(tmp_path, encoding):
    """PYTHONIOENCODING=ascii (or a latin-1 terminal) and a figure named "fig-∑.png": the
    figure was written, then its line raised UnicodeEncodeError (exit 1, a traceback)."""
    pytest.importorskip("matplotlib")
    ckpt = tmp_path / "ünï" / "run.npz"
    zo.train(lambda x: float(x @ x), np.ones(3), epochs=2, optimizer=zo.sgd(0.1), rng=0, progress=False,
             checkpoint=ckpt, eval_fn=lambda p: {"précision": 1.0})
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding=encoding, write_through=True)  # errors="strict", as a terminal's
    figure = tmp_path / "fig-∑.png"
    assert _run(["plot", str(ckpt), str(figure)], out) == 0
    assert figure.read_bytes()[:4] == b"\x89PNG"
    assert raw.getvalue().decode(encoding).strip().endswith("fig-\\u2211.png: 2 steps, 2 epochs, 8 queries")
    assert out.errors == "strict"  # the caller's stream as it was
