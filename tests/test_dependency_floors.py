"""The lowest releases pyproject's bounds admit run what uses them: a lab's environment with older
releases pinned gets those floors (``pip install`` keeps what is installed when it satisfies a
bound; ``uv pip install --resolution lowest`` picks them). The core's floors with Python 3.11
wheels (numpy 1.23.2, scipy 1.9.2, joblib 1.2.0, tqdm 4.60.0) run the core's tests; the test
extra's floors below were lower than what the suite uses (helper h361). The optional extras' floors
were tried the same way, each in a venv of its own with the core and that extra pinned at its floor
(helper h385): ``EXTRAS`` below holds the ones that had to rise."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: (distribution, extra, the first release that has it, what the suite needs of it)
NEEDED = [
    ("hypothesis", "test", (6, 83), "st.characters(codec=...) (tests/test_properties_session69.py); "
                                    "6.80 to 6.82 raised TypeError while the module was collected"),
    ("pytest", "test", (8, 0, 1), "a pytest.importorskip inside a pytest.warns block is a skip; 8.0.0 "
                                  "failed the test with DID NOT WARN (tests/test_low_precision_losses.py)"),
]


#: (distribution, extra, the lowest release that runs the extra's tests at its floor, what the lower ones did)
_NUMPY_2 = ("was built against numpy 1 but does not bound it, so pip installs numpy 2 beside it: importing "
            "onnxruntime printed '_ARRAY_API not found' and running a session killed the interpreter "
            "(tests/test_adapter_onnx.py); 1.18.1 requires numpy<2, and 1.19 is built against numpy 2")
EXTRAS = [
    ("onnxruntime", "onnx", (1, 18, 1), "onnxruntime 1.16 to 1.18.0 " + _NUMPY_2),
    ("onnxruntime-gpu", "onnx-gpu", (1, 18, 1), "onnxruntime-gpu 1.16 to 1.18.0, as onnxruntime, " + _NUMPY_2),
    ("onnxruntime", "apps", (1, 18, 1), "onnxruntime 1.16 to 1.18.0 " + _NUMPY_2),
    ("onnx", "apps", (1, 16), "every onnxscript release (0.1.0 on; the apps extra names it unbounded) requires "
                              "onnx>=1.16: pip could not install the extra with onnx 1.14 (ResolutionImpossible)"),
    ("mkdocstrings", "docs", (1, 0, 7), "mkdocstrings 0.26 to 1.0.6 do not bound the packages that broke them: "
                                        "with the mkdocs-autorefs pip installs, 0.26's mkdocs build failed "
                                        "('dict' object has no attribute 'link_titles'), and with pymdown-extensions "
                                        "13, 0.27 to 1.0.6's did (Highlight.__init__() missing 1 required positional "
                                        "argument: 'md'; tests/test_docs.py::test_site_builds_in_strict_mode)"),
    ("ray", "ray", (2, 10), "Ray 2.9 imports pkg_resources (ray/_private/pydantic_compat.py), which setuptools 81 "
                            "and later lack (pip installs the newest beside torch, which requires setuptools): every "
                            "Ray worker died at its start with 'No module named pkg_resources' "
                            "(tests/test_executors_cluster.py's TestRay); Ray 2.10 no longer imports it"),
]


def _release(version: str) -> tuple:
    return tuple(int(n) for n in version.split("."))


def declared_floor(dist: str, extra: str) -> tuple:
    """The release ``dist>=...`` names in pyproject's ``extra`` (``(0,)`` where it names none)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        tomllib = pytest.importorskip("tomli")
    reqs = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    for req in reqs[extra]:
        m = re.fullmatch(rf"{re.escape(dist)}(?:\[[\w,]+\])?\s*>=\s*([0-9][0-9.]*)(?:\s*,.*)?", req)
        if m:
            return _release(m.group(1))
        if re.match(rf"{re.escape(dist)}\b", req):
            return (0,)
    raise AssertionError(f"{dist} is not in the {extra!r} extra: {reqs[extra]}")


def test_declared_floor_reads_the_extras_bounds():
    assert declared_floor("psutil", "test") == (6,)
    assert declared_floor("pytest-timeout", "test") == (0,)  # (no bound)
    assert declared_floor("torch", "torch") >= (2, 2)
    assert declared_floor("mkdocs", "docs") >= (1, 6)  # with its upper bound
    assert declared_floor("mkdocstrings", "docs") > (0,)  # with its extra, mkdocstrings[python]


@pytest.mark.parametrize("dist, extra, need, why", NEEDED, ids=[n[0] for n in NEEDED])
def test_the_test_extras_floors_have_what_the_suite_uses(dist, extra, need, why):
    have = declared_floor(dist, extra)
    assert have >= need, (f"pyproject's [{extra}] extra admits {dist} {'.'.join(map(str, have))}, "
                          f"which lacks what the suite uses: {why}; raise it to {dist}>={'.'.join(map(str, need))}")


def test_the_suite_uses_the_hypothesis_argument_its_floor_is_for():
    """The entry above stays while the suite needs it: drop both together."""
    assert "st.characters(codec=" in (ROOT / "tests" / "test_properties_session69.py").read_text(encoding="utf-8")


@pytest.mark.parametrize("dist, extra, need, why", EXTRAS, ids=[f"{n[0]}-{n[1]}" for n in EXTRAS])
def test_the_optional_extras_floors_run_their_tests(dist, extra, need, why):
    have = declared_floor(dist, extra)
    assert have >= need, (f"pyproject's [{extra}] extra admits {dist} {'.'.join(map(str, have))}, "
                          f"which fails the extra's tests: {why}; raise it to {dist}>={'.'.join(map(str, need))}")
