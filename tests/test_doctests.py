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
    except ImportError as exc:  # an adapter whose framework is not installed; not a bug of ours
        # (the adapters re-raise the ModuleNotFoundError as an ImportError naming the extra to install)
        missing = exc if isinstance(exc, ModuleNotFoundError) else exc.__cause__
        if not isinstance(missing, ModuleNotFoundError) or (missing.name or "").split(".")[0] in ("zoracle", "adapters", "apps"):
            raise
        pytest.skip(f"{name}: {exc}")
    result = doctest.testmod(mod, report=True, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed (see output)"


def test_an_adapter_whose_framework_is_missing_is_skipped(monkeypatch):
    """The adapters turn a missing framework's ModuleNotFoundError into an ImportError naming the
    extra to install, which the skip above (for ModuleNotFoundError only) never caught: without
    PhiFlow the doctest run of zoracle.adapters.phiflow failed instead of skipping."""
    import sys

    monkeypatch.setitem(sys.modules, "phi", None)  # `import phi` raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "zoracle.adapters.phiflow", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs PhiFlow"):
        test_docstring_examples_run_as_written("zoracle.adapters.phiflow")
    monkeypatch.setitem(sys.modules, "zoracle.adapters._no_such_module_of_ours", None)
    with pytest.raises(ModuleNotFoundError):  # one of ours missing still fails
        test_docstring_examples_run_as_written("zoracle.adapters._no_such_module_of_ours")
