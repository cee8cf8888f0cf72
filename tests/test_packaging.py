"""Layout: the core stays light, and zoracle.adapters imports from source, editable and wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["torch", "cupy", "onnxruntime", "phi", "dask", "distributed", "ray", "onnx", "matplotlib", "sklearn"]


def _run(code: str, cwd, env=None) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_core_import_and_estimate_pull_in_no_framework(tmp_path):
    code = f"""
import sys, json
sys.path.insert(0, {str(ROOT)!r})
import numpy as np, zoracle as zo, zoracle.executors, zoracle.testing
zo.estimate_gradient(lambda x: float(x @ x), np.ones(10), zo.CGE())
zo.estimate_gradient(lambda x: float(x @ x), np.ones(10), zo.RGE(directions=4), rng=0)
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
"""
    assert json.loads(_run(code, tmp_path)) == []


_NO_EDITABLE = """
import sys
# drop an editable install's finder: this proves the plain source-tree mapping on its own
sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in (getattr(f, '__module__', '') or type(f).__module__).lower()
                    and 'editable' not in type(f).__name__.lower() and 'editable' not in getattr(f, '__name__', '').lower()]
sys.path.insert(0, {root!r})
"""


def test_adapters_import_from_a_source_checkout(tmp_path):
    code = _NO_EDITABLE.format(root=str(ROOT)) + """
import zoracle, zoracle.adapters, zoracle.apps
print(zoracle.adapters.__file__)
print(zoracle.apps.__file__)
"""
    out = _run(code, tmp_path).split()
    assert out == [str(ROOT / "adapters" / "__init__.py"), str(ROOT / "apps" / "__init__.py")]


def test_adapters_import_from_the_installed_package(tmp_path):
    # run outside the checkout, so only the installed distribution can answer
    code = """
import json
from importlib import metadata
try:
    dist = metadata.distribution("zoracle")
except metadata.PackageNotFoundError:
    print(json.dumps(None)); raise SystemExit
import zoracle.adapters, zoracle.apps
url = json.loads(dist.read_text("direct_url.json") or "{}")
print(json.dumps([zoracle.adapters.__file__, bool(url.get("dir_info", {}).get("editable"))]))
"""
    found = json.loads(_run(code, tmp_path))
    if found is None:
        pytest.skip("zoracle is not pip-installed here (CI installs it editable)")
    path, editable = found
    if editable and not path.startswith(str(ROOT)):
        pytest.skip(f"the editable install here is another clone's ({path})")
    if editable:
        assert path == str(ROOT / "adapters" / "__init__.py")
    else:
        assert path.endswith(os.path.join("zoracle", "adapters", "__init__.py"))


def test_wheel_maps_adapters_into_the_package(tmp_path):
    pytest.importorskip("setuptools")
    import importlib.util

    if importlib.util.find_spec("setuptools.command.bdist_wheel") is None and importlib.util.find_spec("wheel") is None:
        pytest.skip("no bdist_wheel here (setuptools < 70.1 without the wheel package): --no-build-isolation cannot build")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("zoracle-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "zoracle/adapters/__init__.py" in names and "zoracle/apps/__init__.py" in names
    assert not any(n.startswith(("adapters/", "apps/", "tests/")) for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = _NO_EDITABLE.format(root=str(site)) + """
import zoracle.adapters, zoracle.cli
print(zoracle.adapters.__file__)
"""
    out = _run(code, tmp_path)
    assert out.strip() == str(site / "zoracle" / "adapters" / "__init__.py")


def test_cli_help_and_errors(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "zoracle", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "demo" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "zoracle", "nosuchcommand"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "invalid choice" in bad.stderr
    bare = subprocess.run([sys.executable, "-m", "zoracle"], capture_output=True, text=True, cwd=ROOT)
    assert bare.returncode == 2 and bare.stdout == "" and "COMMAND" in bare.stderr and "demo" in bare.stderr


def test_another_clones_editable_install_does_not_supply_this_clones_adapters(tmp_path):
    """With another clone installed editable, `python -m pytest` here ran this clone's core with
    that clone's adapters and apps: the editable finder's answer was taken wherever it pointed."""
    other = tmp_path / "other"
    for name in ("adapters", "apps"):
        (other / name).mkdir(parents=True)
        (other / name / "__init__.py").write_text("WHICH = 'other clone'\n")
    code = f"""
import importlib.util, sys
class OtherClone:  # an editable install's finder, mapping zoracle.<name> to another clone
    def find_spec(self, name, path=None, target=None):
        for sub in ("adapters", "apps"):
            if name == "zoracle." + sub:
                init = {str(other)!r} + "/" + sub + "/__init__.py"
                return importlib.util.spec_from_file_location(name, init, submodule_search_locations=[init[:-12]])
sys.meta_path.insert(0, OtherClone())
import zoracle, zoracle.adapters, zoracle.apps
print(zoracle.adapters.__file__, zoracle.apps.__file__)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert str(other) not in out and out.split()[0] == str(ROOT / "adapters" / "__init__.py"), out
