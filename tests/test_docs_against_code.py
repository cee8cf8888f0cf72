"""What the pages say, held to the code: the numbers getting-started.md's Platforms states, what a
user sees when an AskTell (training.md, "Ask and tell") is closed between its checkpoints, and that
training.md's annotated blocks of this kind pass ``mypy --strict``."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

import zoracle as zo
from zoracle import _checkpoint, _executors_local

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8").split("## Platforms", 1)[1]


def _seconds(pattern: str) -> float:
    m = re.search(pattern, " ".join(PLATFORMS.split()))
    assert m, f"getting-started.md's Platforms no longer says {pattern!r}"
    return float(m.group(1))


def test_the_platforms_seconds_are_the_codes():
    """Windows' retry of a save that another program holds open, and a worker's poll for a dead driver
    off Linux: the seconds the page states are the constants the code waits."""
    assert _seconds(r"is tried again for ([\d.]+) s before it fails") == _checkpoint.REPLACE_WAIT_S
    assert _seconds(r"by polling \(within ([\d.]+) s\)") == _executors_local.WATCH_PARENT_S


def test_an_ask_tell_closed_between_its_saves_says_so_in_words(tmp_path, caplog):
    """close() with steps not yet saved saves them and says so, as Ctrl-C in train does; the line named
    the private exception that ends the run's thread, ``stopped inside step 3 (_Closed)``."""
    path = tmp_path / "run.npz"
    opt = zo.AskTell(np.zeros(3), epochs=1, steps_per_epoch=10, checkpoint=str(path), checkpoint_every="1h",
                     progress=False, rng=0)
    for _ in range(3):
        opt.tell([float(((x - 3) ** 2).sum()) for x in opt.ask()])
    opt.ask()
    with caplog.at_level(logging.WARNING, logger="zoracle"):
        opt.close()
    assert zo.load_checkpoint(str(path))[1]["step"] == 3
    text = caplog.text
    assert "stopped inside step 3 (AskTellClosed)" in text and "resume=True continues there" in text, text
    assert "_Closed" not in text, text


@pytest.mark.slow  # mypy reads NumPy's annotations: half a minute on a cold cache
def test_the_ask_tell_and_metrics_blocks_type_check_strictly(tmp_path):
    """training.md's "Ask and tell" and "Metrics beside the loss" blocks are a user's annotated script:
    they pass ``mypy --strict`` (the ask/tell block's ``def measure(x):`` did not: "Function is missing a
    type annotation", and each call of it "Call to untyped function ... in typed context")."""
    pytest.importorskip("mypy")
    import os
    import subprocess
    import sys

    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    blocks = [m.group(1) for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.S | re.M)
              if "zo.AskTell" in m.group(1) or "def log_step(" in m.group(1)]
    assert len(blocks) == 4
    for i, code in enumerate(blocks):
        (tmp_path / f"block{i}.py").write_text(code)
    ini = "[mypy]\nignore_missing_imports = True\n[mypy-zoracle.*]\nfollow_imports = silent\n"
    (tmp_path / "mypy.ini").write_text(ini)
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--config-file", "mypy.ini", "--cache-dir",
                          str(tmp_path / "cache"), "--no-error-summary", *(f"block{i}.py" for i in range(len(blocks)))],
                         cwd=tmp_path, env={**os.environ, "MYPYPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and not out.stderr.strip(), out.stdout + out.stderr[-2000:]
