"""The package as it ships: the sdist rebuilds a wheel that holds the package and its metadata,
nothing else, and the metadata (version, classifiers) agrees with the sources it came from."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from test_packaging import _NO_EDITABLE, SDIST_FILES, SDIST_TREES, _run, _setuptools_below_build_minimum, _source_copy

ROOT = Path(__file__).resolve().parents[1]
#: the wheel's package folders and the source folders they come from (pyproject's package-dir)
PACKAGE_DIRS = {"zoracle": "zoracle", "zoracle/adapters": "adapters", "zoracle/apps": "apps"}
DIST_INFO = {"METADATA", "WHEEL", "RECORD", "entry_points.txt", "top_level.txt", "licenses/LICENSE"}


def _project() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomli, which pytest itself needs there
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _source_version(root: Path = ROOT) -> str:
    """``__version__`` as zoracle/__init__.py spells it (read, not imported: the import may find
    another clone's zoracle)."""
    return re.search(r'^__version__ = "([^"]+)"$', (root / "zoracle" / "__init__.py").read_text(), re.M).group(1)


def test_the_package_reports_pyprojects_version():
    """``zoracle.__version__`` (``zoracle --version``, every checkpoint's ``zoracle_version``) is
    written beside pyproject's ``version``, which the wheel and CHANGELOG.md carry: a release that
    bumps one must bump the other."""
    assert _source_version() == _project()["version"]


def test_the_classifiers_agree_with_requires_python_and_the_license_expression():
    """pyproject declared no classifiers: an index showed no supported Python versions, and the
    wheel did not say it is typed although it ships py.typed. The version classifiers must start
    at requires-python's floor, and no "License ::" classifier may sit beside the SPDX ``license``
    (PEP 639: setuptools refuses the pair)."""
    project = _project()
    classifiers = project.get("classifiers", [])
    floor = tuple(int(p) for p in re.fullmatch(r">=\s*(\d+\.\d+)", project["requires-python"]).group(1).split("."))
    minors = sorted(tuple(int(p) for p in m.groups()) for c in classifiers
                    if (m := re.fullmatch(r"Programming Language :: Python :: (\d+)\.(\d+)", c)))
    assert minors and minors[0] == floor, (floor, minors)
    assert minors == [(3, n) for n in range(floor[1], minors[-1][1] + 1)], minors  # no gaps
    assert ("Typing :: Typed" in classifiers) == (ROOT / "zoracle" / "py.typed").is_file(), classifiers
    assert not [c for c in classifiers if c.startswith("License ::")], classifiers
    assert len(set(classifiers)) == len(classifiers), classifiers


def test_every_classifier_is_one_the_index_accepts():
    """PyPI refuses an upload with a classifier not on its list (trove-classifiers, no test
    dependency: this runs where it is installed)."""
    trove = pytest.importorskip("trove_classifiers", reason="the list of valid classifiers is trove-classifiers'")
    classifiers = _project().get("classifiers", [])
    unknown = sorted(set(classifiers) - set(trove.classifiers))
    assert classifiers and not unknown, unknown


def _metadata(text: str) -> tuple:
    """``(fields, description)`` of a METADATA file: each field's values in order."""
    head, _, description = text.partition("\n\n")
    fields: dict = {}
    for line in head.splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    return fields, description


@pytest.mark.slow  # two builds (sdist, then a wheel from it): 10-30 s
def test_the_sdist_rebuilds_a_wheel_of_the_package_and_nothing_else(tmp_path):
    """From a source tree with a checkout's byte-code in it, build the sdist, then a wheel from the
    sdist alone (as pip does from an index): the wheel holds every file of zoracle/, adapters/ and
    apps/ at its place under zoracle/, the licence, the ``zoracle`` command and metadata that
    match pyproject, and no tests, benchmarks, byte-code or egg-info."""
    pytest.importorskip("build")
    pytest.importorskip("setuptools")
    if _setuptools_below_build_minimum():
        pytest.skip(_setuptools_below_build_minimum())
    src = _source_copy(tmp_path / "src", SDIST_TREES, SDIST_FILES)
    for junk in ("zoracle/__pycache__/cli.cpython-311.pyc", "adapters/__pycache__/torch.cpython-311.pyc",
                 "tests/__pycache__/conftest.cpython-311-pytest-8.3.0.pyc"):
        (src / junk).parent.mkdir(parents=True, exist_ok=True)
        (src / junk).write_bytes(b"\0" * 16)
    out = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir",
                          str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    sdist = next((tmp_path / "dist").glob("zoracle-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert not [n for n in in_sdist if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    sources = {f"{folder}/{p.relative_to(src / folder).as_posix()}" for folder in PACKAGE_DIRS.values()
               for p in (src / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    rebuild = {"pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "PKG-INFO"}
    assert not (sources | rebuild) - in_sdist, sorted((sources | rebuild) - in_sdist)[:10]

    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path / "wheel"), str(sdist)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next((tmp_path / "wheel").glob("zoracle-*.whl"))
    version = _source_version(src)
    assert wheel.name == f"zoracle-{version}-py3-none-any.whl"
    to_wheel = {v: k for k, v in PACKAGE_DIRS.items()}
    wanted = {to_wheel[s.split("/", 1)[0]] + "/" + s.split("/", 1)[1] for s in sources}
    wanted |= {f"zoracle-{version}.dist-info/{name}" for name in DIST_INFO}
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        meta = whl.read(f"zoracle-{version}.dist-info/METADATA").decode()
        entry_points = whl.read(f"zoracle-{version}.dist-info/entry_points.txt").decode()
        licence = whl.read(f"zoracle-{version}.dist-info/licenses/LICENSE")
        whl.extractall(tmp_path / "site")
    assert {"zoracle/py.typed", "zoracle/cli.py", "zoracle/testing/__init__.py", "zoracle/adapters/torch.py",
            "zoracle/apps/demo.py"} <= names
    assert sorted(names - wanted) == [] and sorted(wanted - names) == []
    assert licence == (ROOT / "LICENSE").read_bytes()
    assert re.search(r"^\[console_scripts\]\nzoracle = zoracle\.cli:main$", entry_points, re.M), entry_points

    project = _project()
    fields, description = _metadata(meta)
    assert fields["Version"] == [version] == [project["version"]]
    assert fields["Requires-Python"] == [project["requires-python"]]
    assert fields["License-Expression"] == [project["license"]]
    assert fields.get("Classifier", []) == project.get("classifiers", [])
    assert set(fields["Provides-Extra"]) == set(project["optional-dependencies"])
    assert fields["Description-Content-Type"] == ["text/markdown"]
    assert description.strip() == (ROOT / "README.md").read_text(encoding="utf-8").strip()

    # the unpacked wheel alone (no checkout, no editable finder) runs the command
    code = _NO_EDITABLE.format(root=str(tmp_path / "site")) + """
import zoracle.cli
try:
    zoracle.cli.main(["--version"])
except SystemExit as stop:
    assert stop.code in (0, None), stop.code
print(zoracle.__file__)
"""
    out = _run(code, tmp_path).splitlines()
    assert out == [f"zoracle {version}", str(tmp_path / "site" / "zoracle" / "__init__.py")], out
