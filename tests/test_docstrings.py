"""The public docstrings against the code: every parameter of a public callable is described
in the docstring that ``help()`` shows for it, and every public name with a ``>>>`` example
lives in a module whose examples tests/test_doctests.py runs."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

MODULES = ("zoracle", "zoracle.recipes", "zoracle.executors", "zoracle.smoothing", "zoracle.testing",
           "zoracle.testing.strategies", "zoracle.adapters.torch", "zoracle.adapters.onnx",
           "zoracle.adapters.phiflow")

# (qualified name, parameter) -> why its docstring need not name it (none needed at present).
# Left out by rule instead: exceptions (zoracle raises them, users do not build them), a
# Protocol's constructor (its signature is (*args, **kwargs): it is implemented, not called), and
# zoracle.adapters.torch_models (a zoo of test models after torchvision's and timm's; their
# arguments are layer sizes).
ALLOWED: dict[tuple[str, str], str] = {}


def _module(name):
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # an adapter whose framework is not installed
        missing = exc if isinstance(exc, ModuleNotFoundError) else exc.__cause__
        if not isinstance(missing, ModuleNotFoundError) or (missing.name or "").split(".")[0] in ("zoracle", "adapters"):
            raise
        pytest.skip(f"{name}: {exc}")


def _public(mod):
    """``(qualified name, callable, text it must be described in)`` for the module's public names
    and their classes' own public methods (a method's parameters may be described in its class's
    docstring, which ``help()`` shows above it)."""
    for name in mod.__all__:
        obj = getattr(mod, name)
        qual = f"{mod.__name__}.{name}"
        if inspect.ismodule(obj) or not callable(obj):
            continue
        if inspect.isclass(obj):
            if issubclass(obj, BaseException):
                continue  # raised by zoracle, not built by its users
            cdoc = inspect.getdoc(obj) or ""
            if not getattr(obj, "_is_protocol", False):  # (see ALLOWED)
                yield qual, obj, cdoc + "\n" + (inspect.getdoc(vars(obj).get("__init__")) or "")
            for mname, member in vars(obj).items():
                if mname.startswith("_"):
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member):
                    yield f"{qual}.{mname}", member, (inspect.getdoc(member) or "") + "\n" + cdoc
        else:
            yield qual, obj, inspect.getdoc(obj) or ""


def _described(name: str, doc: str) -> bool:
    """Whether ``doc`` describes the parameter ``name``: a numpydoc entry (``name : type``, or
    ``a, name, b`` on a line of its own) or the name inside inline code (````name````,
    ````name="step"````, ````f(name, ...)````), not a word of the prose that happens to match."""
    if re.search(r"^\s*(?:\*{0,2}\w+\s*,\s*)*\*{0,2}%s(?:\s*,\s*\*{0,2}\w+)*\s*(?::|$)" % re.escape(name), doc, re.M):
        return True
    word = r"(?<![\w])%s(?![\w])" % re.escape(name)
    return any(re.search(word, code) for code in re.findall(r"``(.+?)``", doc, re.S))


def _undescribed(modname):
    out = []
    for qual, obj, doc in _public(_module(modname)):
        try:
            params = inspect.signature(obj).parameters.values()
        except (TypeError, ValueError):
            continue
        names = [p.name for p in params]
        assert all(p in names for q, p in ALLOWED if q == qual), f"{qual}: ALLOWED names no parameter of it"
        for p in params:
            if p.name in ("self", "cls") or (qual, p.name) in ALLOWED:
                continue
            if not _described(p.name, doc):
                out.append(f"{qual}: {p}")
    return out


@pytest.mark.parametrize("modname", MODULES)
def test_every_parameter_is_described(modname):
    missing = _undescribed(modname)
    assert not missing, "parameters their docstring does not describe:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("modname", MODULES)
def test_every_public_member_has_a_docstring(modname):
    """The API pages (mkdocstrings) leave out a method or property without a docstring of its
    own, and ``help()`` shows it bare: SerialExecutor.run, CertificateBatch.certified_accuracy,
    TorchOracle.model and 24 more were missing from the site."""
    mod = _module(modname)
    bare = []
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.ismodule(obj):
            continue
        if not (getattr(obj, "__doc__", None) or "").strip() and (callable(obj) or inspect.isclass(obj)):
            bare.append(name)
        if not inspect.isclass(obj):
            continue
        for mname, member in vars(obj).items():
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if not mname.startswith("_") and (isinstance(member, property) or inspect.isfunction(member)) \
                    and not (member.__doc__ or "").strip():
                bare.append(f"{name}.{mname}")
    assert not bare, f"public names of {modname} without a docstring: {bare}"


def test_parameter_descriptions_are_told_from_prose():
    assert _described("params", "params : array\n    The point.")
    assert _described("n0", "sigma, n0, n, alpha\n    Noise level, ...")
    assert _described("scheme", 'with ``scheme="central"`` the bias is O(mu^2)')
    assert _described("coords", "``coordinate_losses(params, coords, step)``")
    assert not _described("x", "y : array\n    Values along the x axis.")  # another entry's prose
    assert not _described("step", "one step of the solver")  # a word of the prose
    assert not _described("n", "``n_a`` of them")


@pytest.mark.parametrize("modname", MODULES)
def test_every_public_example_is_doctested(modname):
    import pkgutil

    import zoracle
    import zoracle.adapters

    # the modules tests/test_doctests.py runs: zoracle's and the adapters', private ones included
    run = {f"{pkg.__name__}.{m.name}" for pkg in (zoracle, zoracle.adapters)
           for m in pkgutil.iter_modules(pkg.__path__)}
    for qual, obj, doc in _public(_module(modname)):
        if ">>>" in doc:
            home = getattr(obj, "__module__", "")
            home = "zoracle." + home if home.startswith("adapters") else home
            assert home in run, f"{qual}'s examples live in {home}, which tests/test_doctests.py does not run"
