"""The lowest releases pyproject's bounds admit run what uses them: a lab's environment with older
releases pinned gets those floors (``pip install`` keeps what is installed when it satisfies a
bound; ``uv pip install --resolution lowest`` picks them). The core's floors with Python 3.11
wheels (numpy 1.23.2, scipy 1.9.2, joblib 1.2.0, tqdm 4.60.0) run the core's tests; the test
extra's floors below were lower than what the suite uses (helper h361)."""

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
        m = re.fullmatch(rf"{re.escape(dist)}\s*>=\s*([0-9][0-9.]*)", req)
        if m:
            return _release(m.group(1))
        if re.match(rf"{re.escape(dist)}\b", req):
            return (0,)
    raise AssertionError(f"{dist} is not in the {extra!r} extra: {reqs[extra]}")


def test_declared_floor_reads_the_extras_bounds():
    assert declared_floor("psutil", "test") == (6,)
    assert declared_floor("pytest-timeout", "test") == (0,)  # (no bound)
    assert declared_floor("torch", "torch") >= (2, 2)


@pytest.mark.parametrize("dist, extra, need, why", NEEDED, ids=[n[0] for n in NEEDED])
def test_the_test_extras_floors_have_what_the_suite_uses(dist, extra, need, why):
    have = declared_floor(dist, extra)
    assert have >= need, (f"pyproject's [{extra}] extra admits {dist} {'.'.join(map(str, have))}, "
                          f"which lacks what the suite uses: {why}; raise it to {dist}>={'.'.join(map(str, need))}")


def test_the_suite_uses_the_hypothesis_argument_its_floor_is_for():
    """The entry above stays while the suite needs it: drop both together."""
    assert "st.characters(codec=" in (ROOT / "tests" / "test_properties_session69.py").read_text(encoding="utf-8")
