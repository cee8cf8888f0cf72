"""Every ``Examples`` section in zoracle's docstrings runs as written and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import zoracle
import zoracle.adapters


def _modules() -> list:
    names = ["zoracle"] + [f"zoracle.{m.name}" for m in pkgutil.iter_modules(zoracle.__path__)
                           if m.name != "__main__"]  # __main__ runs the CLI on import
    names += [f"zoracle.adapters.{m.name}" for m in pkgutil.iter_modules(zoracle.adapters.__path__)]
    return names


def test_the_docstrings_have_examples():
    found = 0
    for name in _modules():
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        found += sum(len(t.examples) for t in doctest.DocTestFinder().find(mod, name))
    assert found >= 60


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run_as_written(name):
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as exc:  # an adapter whose framework is not installed; not a bug of ours
        if (exc.name or "").split(".")[0] in ("zoracle", "adapters", "apps"):
            raise
        pytest.skip(f"{name}: {exc}")
    result = doctest.testmod(mod, report=True, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed (see output)"
