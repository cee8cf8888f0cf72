"""A core-only install, or one extra alone: what each missing dependency says, before any query."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import zoracle as zo


def _counted():
    calls = []

    def loss(x):
        calls.append(1)
        return float(x @ x)

    return loss, calls


@pytest.mark.parametrize("name, fix", [
    ("dask", "DaskExecutor('local')"),
    ("Ray", "RayExecutor('auto')"),
    ("threads", "JoblibExecutor(2, backend='threading')"),
    ("threading", "JoblibExecutor(2, backend='threading')"),
    ("processes", "JoblibExecutor(2) (worker processes)"),
    ("loky", "JoblibExecutor(2) (worker processes)"),
])
@pytest.mark.parametrize("entry", ["train", "estimate_gradient"])
def test_an_executor_named_by_its_kind_is_answered_with_that_executor(name, fix, entry):
    """``executor="dask"`` was answered with ``DaskExecutor('dask')`` (an address no scheduler has), and
    ``executor="threads"`` with a cluster's executor: the kind named gets its own executor, and the
    cluster kinds the extra that installs them; refused before any query."""
    loss, calls = _counted()
    with pytest.raises(zo.ArgumentError) as info:
        if entry == "train":
            zo.train(loss, np.arange(3.0), epochs=1, executor=name, progress=False)
        else:
            zo.estimate_gradient(loss, np.arange(3.0), zo.CGE(), executor=name)
    text = str(info.value)
    assert f"got str {name!r}; for that, pass executor=zoracle.executors.{fix}" in text, text
    assert f"Executor({name!r})" not in text, text
    if name.lower() in ("dask", "ray"):
        assert f"pip install -e '.[{name.lower()}]'" in text, text
    assert calls == []


def test_an_executor_address_keeps_the_cluster_hint():
    loss, calls = _counted()
    with pytest.raises(zo.ArgumentError, match=r"DaskExecutor\('tcp://10\.0\.0\.5:8786'\) or RayExecutor"):
        zo.estimate_gradient(loss, np.arange(3.0), zo.CGE(), executor="tcp://10.0.0.5:8786")
    assert calls == []


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.mark.parametrize("script, missing", [
    ("train_torch.py", "torch"),
    ("train_torch.py", "sklearn"),
    ("train_torch.py", "matplotlib"),  # (its plot at the end: refused before the run, not after it)
    ("logreg_breast_cancer.py", "sklearn"),
    ("policy_search.py", "gymnasium"),
])
def test_an_example_without_its_extra_names_it_in_one_line(script, missing):
    """`python examples/train_torch.py` with the 'torch' extra alone ended in a ModuleNotFoundError
    traceback (scikit-learn), and without matplotlib after the whole run, at its plot."""
    if script == "train_torch.py" and missing != "torch":  # without torch, the line names torch, imported first
        pytest.importorskip("torch", reason="the case is the 'torch' extra alone (pip install -e '.[torch]')")
    code = (f"import runpy, sys\nsys.modules[{missing!r}] = None\nsys.argv = [{script!r}, '--quick']\n"
            f"runpy.run_path({os.path.join(EXAMPLES, script)!r}, run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"python examples/{script}: needs the 'apps' extra (") and missing in lines[0]
    assert lines[0].endswith('install it with: pip install -e ".[apps]"  (from the zoracle clone)'), lines[0]
    assert r.stdout == ""  # nothing ran
