"""Every ``Examples`` section in zoracle's docstrings runs as written and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
import re

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
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    left = {}  # docstring -> the modules its examples import that are not installed (an extra's)
    for test in doctest.DocTestFinder().find(mod, name):
        left[test.name] = missing_imports(test)
        if not left[test.name]:
            runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed (see output)"
    if any(left.values()):
        pytest.skip(f"{name}: " + "; ".join(f"{t} imports {', '.join(m)}, not installed" for t, m in left.items() if m))


IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import\b|import\s+(.+))", re.M)


def missing_imports(test: doctest.DocTest) -> list:
    """The top-level modules that a docstring's examples import and this environment lacks:
    ``OnnxClassifier``'s example fits its model with scikit-learn and skl2onnx, which the 'onnx'
    extra does not install (the 'apps' extra does)."""
    names = set()
    for example in test.examples:
        for source, imported in IMPORT.findall(example.source):
            for part in [source] if source else imported.split(","):
                names.add(part.split()[0].split(".")[0])
    return sorted(n for n in names if importlib.util.find_spec(n) is None)


def test_missing_imports_names_what_an_example_imports_and_is_not_installed():
    text = (">>> import numpy as np, _zoracle_no_such_a as a\n>>> from _zoracle_no_such_b.x import y\n"
            ">>> import zoracle.adapters\n>>> x = 'import _zoracle_not_an_import'\n")
    test = doctest.DocTestParser().get_doctest(text, {}, "t", None, 0)
    assert missing_imports(test) == ["_zoracle_no_such_a", "_zoracle_no_such_b"]


def test_a_docstring_whose_example_imports_a_missing_module_is_skipped_not_failed(monkeypatch):
    """Where scikit-learn is not installed (the 'onnx' extra alone), ``OnnxClassifier``'s example
    failed (4 of 7 examples in zoracle.adapters.onnx) instead of skipping; the module's other
    examples still run."""
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e '.[onnx]')")
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a, _real=importlib.util.find_spec:
                        None if n == "sklearn" else _real(n, *a))
    with pytest.raises(pytest.skip.Exception, match=r"OnnxClassifier imports (skl2onnx, )?sklearn, not installed"):
        test_docstring_examples_run_as_written("zoracle.adapters.onnx")


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
