"""Names in other scripts than the terminal's or the locale's. zoracle's warnings on a
``sys.stderr`` that cannot encode every character (``sys.stderr = open("train.log", "w")``: cp1252
on Windows, ASCII under LC_ALL=C) and a checkpoint, figure or metric named in another script: Python's
warnings module lets the UnicodeEncodeError through, which failed ``train`` (a run's result lost to a
warning that said it was returned); the character is written as an escape now. A path the locale's
file names cannot hold is refused naming the argument; a folder named in bytes that are not UTF-8
takes ``zoracle defense``'s outputs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

#: the clone's root: the programs below import its zoracle
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: the program the tests run: its stderr a file in ``encoding`` (errors="strict", as open() makes it)
_PROGRAM = textwrap.dedent("""
    import os, sys
    sys.stderr = open(sys.argv[1], "w", encoding=sys.argv[2])
    import numpy as np
    import zoracle as zo
    folder = sys.argv[3]
    KW = dict(epochs=2, optimizer=zo.sgd(0.1), rng=0, progress=False)

    def loss(x):
        return float(((x - 1) ** 2).sum())
""") + "{body}" + textwrap.dedent("""
    sys.stderr.flush()
    assert sys.stderr.errors == "strict"  # the program's stream as it made it
""")


def _run(tmp_path, body, encoding="ascii"):
    folder = tmp_path / "日本-∑"
    folder.mkdir()
    log = tmp_path / "stderr.txt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _PROGRAM.format(body=textwrap.dedent(body)),
                           str(log), encoding, str(folder)], capture_output=True, text=True, env=env, timeout=300,
                          cwd=ROOT)
    return proc, log.read_text(encoding=encoding) if log.exists() else ""


def test_a_plot_that_fails_at_the_end_keeps_the_result_on_an_ascii_stderr(tmp_path):
    """The figure's path turned into a folder during the run: the warning "the plot ... could not
    be written ...; the result is returned" raised UnicodeEncodeError instead, and the run's result
    was lost."""
    pytest.importorskip("matplotlib")
    proc, err = _run(tmp_path, """
        fig = os.path.join(folder, "fig.png")

        def cb(event, record, params):
            if event == "epoch" and record["epoch"] == 1:
                os.mkdir(fig)
        res = zo.train(loss, np.zeros(3), plot=fig, callbacks=[cb], **KW)
        print("steps", res.steps)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:] + err[-2000:]
    assert proc.stdout.split() == ["steps", "2"]
    assert "UserWarning: train: the plot '" in err and "\\u65e5\\u672c-\\u2211" in err
    assert "the result is returned" in err


def test_a_checkpoint_named_in_another_script_is_warned_about_on_an_ascii_stderr(tmp_path):
    """A second run on an earlier run's checkpoint, not resuming it, is warned about before its
    first query: the warning raised UnicodeEncodeError, so train failed."""
    proc, err = _run(tmp_path, """
        ck = os.path.join(folder, "run.npz")
        zo.train(loss, np.zeros(3), checkpoint=ck, **KW)
        res = zo.train(loss, np.zeros(3), checkpoint=ck, **KW)
        print("steps", res.steps)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:] + err[-2000:]
    assert proc.stdout.split() == ["steps", "2"]
    assert "holds an earlier run" in err and "\\u65e5\\u672c-\\u2211" in err


def test_a_callbacks_value_is_warned_about_mid_run_on_a_cp1252_stderr(tmp_path):
    """A callback returning text: its warning, mid-run, showed the value in a character cp1252
    lacks and raised UnicodeEncodeError (the steps since the last checkpoint lost); the characters
    cp1252 has are written as they are."""
    proc, err = _run(tmp_path, """
        res = zo.train(loss, np.zeros(3), callbacks=[lambda event, record, params: "épuisé ✓"], **KW)
        print("steps", res.steps)
    """, encoding="cp1252")
    assert proc.returncode == 0, proc.stderr[-2000:] + err[-2000:]
    assert proc.stdout.split() == ["steps", "2"]
    assert "returned 'épuisé \\u2713'" in err


def test_a_stream_escapes_until_the_last_of_overlapping_blocks_ends():
    """Two runs in threads warning at once: the first block to end put the stream back strict while
    the other's warning was still to be written, which then raised UnicodeEncodeError."""
    import io

    from zoracle._errors import escaping

    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    first, second = escaping(stream), escaping(stream)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    stream.write("\u2211")  # inside the second block still
    second.__exit__(None, None, None)
    assert raw.getvalue() == b"\\u2211"
    assert stream.errors == "strict"
    with pytest.raises(UnicodeEncodeError):
        stream.write("\u2211")


@pytest.mark.parametrize("arg", ["checkpoint", "plot", "resume"])
def test_a_path_the_locales_file_names_cannot_hold_is_refused_naming_it(tmp_path, arg):
    """Under a locale whose file system encoding lacks a character of the path (LC_ALL=C without
    UTF-8 mode: ASCII; a latin-1 locale and a Japanese name), train raised a bare
    UnicodeEncodeError from os.path, naming neither the argument nor the fix (and a resume path
    "did not exist")."""
    if arg == "plot":
        pytest.importorskip("matplotlib")
    name = "\\u65e5" + (".png" if arg == "plot" else ".npz")
    code = textwrap.dedent(f"""
        import sys, numpy as np, zoracle as zo
        if sys.getfilesystemencoding().lower() not in ("ascii", "ansi_x3.4-1968"):
            print("SKIP", sys.getfilesystemencoding())
            raise SystemExit(0)
        try:
            zo.train(lambda x: float(x @ x), np.ones(2), epochs=1, optimizer=zo.sgd(0.1), progress=False,
                     {arg}=sys.argv[1] + "/{name}")
        except zo.ArgumentError as exc:
            print(ascii(str(exc)))
    """)
    env = dict(os.environ, LC_ALL="C", PYTHONUTF8="0",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    env.pop("PYTHONIOENCODING", None)
    proc = subprocess.run([sys.executable, "-X", "utf8=0", "-c", code, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=ROOT)
    if proc.stdout.startswith("SKIP"):
        pytest.skip(f"the file system encoding under LC_ALL=C is {proc.stdout.split()[1]} here")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"`{arg}` '" in proc.stdout and f"{name}' holds '\\u65e5'" in proc.stdout, proc.stdout
    assert "PYTHONUTF8=1" in proc.stdout
    assert os.listdir(tmp_path) == []


def test_the_defense_exports_its_classifier_into_a_folder_named_in_other_bytes(tmp_path):
    """A folder whose name is not UTF-8 (latin-1 bytes from an old archive or a share): Python reads it
    as a str with surrogate escapes, which torch.onnx.export's C++ side refused, so ``zoracle defense
    --out`` failed after training its classifier with a TypeError ("incompatible function arguments")
    that printed the model's weights."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from apps import _defense_train as T

    folder = os.path.join(str(tmp_path), os.fsdecode(b"caf\xe9"))
    try:
        os.mkdir(folder)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes no name that is not UTF-8")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    path = os.path.join(folder, "classifier.onnx")
    T.export_onnx(model, path)
    x = np.zeros((3, 1, 8, 8), dtype=np.float32) + np.arange(3, dtype=np.float32)[:, None, None, None]
    with open(path, "rb") as fh:
        got = ort.InferenceSession(fh.read(), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_defense_report_names_a_folder_named_in_other_bytes(tmp_path, monkeypatch):
    """defense.md quotes the command that regenerates the report, --out included: a folder whose
    name is not UTF-8 raised UnicodeEncodeError ("surrogates not allowed") writing it, after the
    whole run, and nothing was printed. The name's own bytes are written back."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from apps import defense

    out = os.path.join(str(tmp_path), os.fsdecode(b"caf\xe9"))
    try:
        os.mkdir(out)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes no name that is not UTF-8")
    rows = {name: defense.RowResult(name, {defense._radius_key(r): 0.5 for r in defense.RADII}, 0.0, 0, 0.0, 0.0,
                                    10, 0.1) for name in ("none", "mse", "deepzero", "hybrid", "fo")}
    report = defense.DefenseReport(defense.QUICK, rows, 0.9, 0.8, 1.0)
    monkeypatch.setattr(defense, "plot", lambda report, path: None)  # (the figure: not what is tested)
    defense.write(report, out)
    with open(os.path.join(out, "defense.md"), "rb") as fh:
        assert b"--out '" + os.fsencode(out) + b"'" in fh.read()  # (shlex-quoted)


def test_a_warning_showing_the_users_line_in_another_script_keeps_the_run_on_an_ascii_stderr(tmp_path):
    """A warning shows the user's source line it points at: a line with a name or comment in
    another script (here a comment) raised UnicodeEncodeError from Python's warnings on a strict
    ASCII stderr and failed the run, whatever the warning's own text; every warning of zoracle's
    is written with the escaping now, not only those carrying a path or a name."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""
        import sys
        sys.stderr = open(sys.argv[1], "w", encoding="ascii")
        import numpy as np
        import zoracle as zo

        def loss(x):
            return float(((x - 1) ** 2).sum())
        res = zo.train(loss, np.zeros(3), estimator=zo.CGE(mu=500.0), epochs=1, rng=0, progress=False)  # 日本
        print("steps", res.steps)
        sys.stderr.flush()
    """), encoding="utf-8")
    log = tmp_path / "stderr.txt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script), str(log)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)
    err = log.read_text(encoding="ascii") if log.exists() else ""
    assert proc.returncode == 0, proc.stderr[-2000:] + err[-2000:]
    assert proc.stdout.split() == ["steps", "1"]
    assert "over 100 times the parameters' scale" in err and "# \\u65e5\\u672c" in err, err
