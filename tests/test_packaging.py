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
    # nor PYTHONPATH: a zoracle.egg-info in the checkout (an in-tree build's, an editable install's) answered
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = json.loads(_run(code, tmp_path, env))
    if found is None:
        pytest.skip("zoracle is not pip-installed here (CI installs it editable)")
    path, editable = found
    if editable and not path.startswith(str(ROOT)):
        pytest.skip(f"the editable install here is another clone's ({path})")
    if editable:
        assert path == str(ROOT / "adapters" / "__init__.py")
    else:
        assert path.endswith(os.path.join("zoracle", "adapters", "__init__.py"))


def _setuptools_below_build_minimum():
    """The reason a --no-build-isolation build cannot run here (it builds with this setuptools,
    which must meet [build-system]'s minimum: the SPDX ``license`` needs 77), else None."""
    import re

    import setuptools

    text = (ROOT / "pyproject.toml").read_text()
    need = int(re.search(r'"setuptools>=(\d+)', text.split("[project]")[0]).group(1))
    have = int(setuptools.__version__.split(".")[0])
    return f"setuptools {setuptools.__version__} < {need} ([build-system] requires)" if have < need else None


def _source_copy(dst: Path, trees=(), files=()) -> Path:
    """A copy of the package's sources (and ``trees`` and ``files``) to build from. A build in the
    checkout leaves build/ and zoracle.egg-info there, and the next build ships their stale files:
    build/lib's (a module since removed) in the wheel, SOURCES.txt's in the sdist."""
    import shutil

    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("zoracle", "adapters", "apps", *trees):
        shutil.copytree(ROOT / name, dst / name, ignore=skip)
    for name in ("README.md", "LICENSE", "pyproject.toml", "MANIFEST.in", *files):
        if (ROOT / name).exists():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dst / name)
    return dst


@pytest.mark.slow
def test_wheel_maps_adapters_into_the_package(tmp_path):
    pytest.importorskip("setuptools")
    import importlib.util

    if _setuptools_below_build_minimum():
        pytest.skip(_setuptools_below_build_minimum())

    if importlib.util.find_spec("setuptools.command.bdist_wheel") is None and importlib.util.find_spec("wheel") is None:
        pytest.skip("no bdist_wheel here (setuptools < 70.1 without the wheel package): --no-build-isolation cannot build")
    src = _source_copy(tmp_path / "src")  # (built in ROOT, it left build/ and zoracle.egg-info there)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("zoracle-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "zoracle/adapters/__init__.py" in names and "zoracle/apps/__init__.py" in names
    assert "zoracle/py.typed" in names  # PEP 561: without it mypy and pyright ignore the annotations
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


#: what the test suite reads besides the package: the sdist carries it, so that ``python -m pytest``
#: runs in an unpacked sdist (as a distribution's packager runs it)
SDIST_TREES = ("tests", "examples", "docs", "benchmarks")
SDIST_FILES = ("README.md", "CHANGELOG.md", "CONTRIBUTING.md", "LICENSE", "pyproject.toml", "mkdocs.yml", ".ci/run")


@pytest.mark.slow
def test_sdist_carries_what_the_test_suite_reads(tmp_path):
    """setuptools puts tests/test_*.py in the sdist by default, but not tests/conftest.py (the
    ``xp`` fixture, the hypothesis profile), tests/peers_pages.py, nor the examples, docs and
    benchmarks the tests read: pytest in an unpacked sdist errored ("fixture 'xp' not found")
    and failed (examples/quickstart.py not found)."""
    pytest.importorskip("build")
    pytest.importorskip("setuptools")  # (a Python 3.12+ venv has none: --no-isolation builds with this one)
    if _setuptools_below_build_minimum():  # (a Python 3.10 venv's own is 65)
        pytest.skip(_setuptools_below_build_minimum())
    import tarfile

    src = _source_copy(tmp_path / "src", SDIST_TREES, SDIST_FILES)
    out = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                          str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    sdist = next((tmp_path / "dist").glob("zoracle-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        shipped = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    wanted = {p.relative_to(src).as_posix() for name in SDIST_TREES for p in (src / name).rglob("*") if p.is_file()}
    wanted |= set(SDIST_FILES)
    missing = sorted(wanted - shipped)
    assert not missing, f"{len(missing)} files the tests read are not in the sdist, e.g. {missing[:5]}"


def test_the_test_extras_pytest_floor_reemits_unmatched_warnings():
    """Nested ``pytest.warns`` blocks (tests/test_train.py's eval-metric test) need pytest 8, whose
    ``warns`` re-emits the warnings it did not match to the block around it; under the declared
    pytest 7 the inner block swallowed them ("DID NOT WARN" on pytest 7.0.0 and 7.4.4; 8.0.0 passes)."""
    import re

    floor = re.findall(r'"pytest>=([0-9][0-9.]*)"', (ROOT / "pyproject.toml").read_text())
    assert floor and int(floor[0].split(".")[0]) >= 8, floor


def test_the_test_extras_psutil_floor_has_net_connections():
    """The loopback tests (test_hardening_executors.py, test_executors_cluster.py) list listening
    sockets with ``psutil.Process.net_connections``, which psutil 6.0 added: under the declared
    psutil 5.9 they failed with AttributeError before checking anything."""
    import re

    floor = re.findall(r'"psutil>=([0-9][0-9.]*)"', (ROOT / "pyproject.toml").read_text())
    assert floor and int(floor[0].split(".")[0]) >= 6, floor


def test_pyproject_uses_no_metadata_setuptools_deprecates(tmp_path):
    """``license = { text = "MIT" }`` warned on every build (SetuptoolsDeprecationWarning: "By
    2027-Feb-18, you need to update your project ... or your builds will no longer be
    supported"); pip's isolated build takes the newest setuptools, so `pip install .` would stop
    working then. The SPDX string needs setuptools >= 77, which [build-system] must then require."""
    pytest.importorskip("setuptools")
    build_system = (ROOT / "pyproject.toml").read_text().split("[project]")[0]
    assert '"setuptools>=77"' in build_system, build_system
    if _setuptools_below_build_minimum():
        pytest.skip(_setuptools_below_build_minimum())
    code = """
import json, warnings
from setuptools.dist import Distribution
from setuptools.config.pyprojecttoml import apply_configuration
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    dist = apply_configuration(Distribution(), "pyproject.toml")
print(json.dumps([[w.category.__name__, str(w.message).splitlines()[0]] for w in caught
                  if issubclass(w.category, DeprecationWarning) or "Deprecat" in w.category.__name__]))
print(json.dumps(getattr(dist.metadata, "license_expression", None)))
"""
    deprecated, expression = map(json.loads, _run(code, ROOT).splitlines())
    assert deprecated == [] and expression == "MIT", (deprecated, expression)


# PEP 561 users: what a type checker sees of the installed wheel. Errors inside zoracle are not
# theirs (mypy reports none in installed packages); every documented call must be accepted, and
# (--disallow-untyped-calls, as --strict has it) none may be to an unannotated zoracle function.
# Third-party typing outside zoracle's reach: frameworks not installed here (a core-only install),
# stubs sklearn and scipy do not ship, and torch's `Parameter.grad` being Optional (docs/pytorch.md
# prints `denoiser.weight.grad.shape`). zoracle itself must be found.
_MYPY_INI = """[mypy]
ignore_missing_imports = True
[mypy-zoracle.*]
ignore_missing_imports = False
follow_imports = silent
"""
_MYPY_FLAGS = ["--no-error-summary", "--hide-error-context", "--show-error-codes", "--no-incremental",
               "--no-implicit-reexport", "--strict-equality",
               "--disallow-untyped-calls", "--untyped-calls-exclude=userblocks", "--untyped-calls-exclude=torch"]
_NOT_OURS = ('Item "None" of "Tensor | None" has no attribute "shape"',)


def _typed_site(tmp_path) -> Path:
    """The package as the wheel lays it out (adapters/ and apps/ inside zoracle/), linked to this
    checkout, in ``tmp_path/site``: an editable install's import hook is invisible to type checkers."""
    pkg = tmp_path / "site" / "zoracle"
    pkg.mkdir(parents=True)
    for entry in (ROOT / "zoracle").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name in ("adapters", "apps"):
        (pkg / name).symlink_to(ROOT / name)
    assert (pkg / "py.typed").is_file()
    return tmp_path / "site"


@pytest.mark.slow  # mypy reads NumPy's and torch's annotations: a minute or two on a cold cache
def test_documented_calls_type_check_against_the_shipped_annotations(tmp_path):
    pytest.importorskip("mypy")
    import re

    _typed_site(tmp_path)
    # every ```python block of README.md and docs/ (as test_docs runs them) and every example
    user = tmp_path / "userblocks"
    user.mkdir()
    (user / "__init__.py").write_text("")
    fence = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for m in fence.finditer(text):
            line = text.count("\n", 0, m.start()) + 2
            stem = re.sub(r"\W", "_", str(page.relative_to(ROOT).with_suffix("")))
            (user / f"{stem}_L{line}.py").write_text(m.group(1))
    for path in sorted((ROOT / "examples").glob("*.py")):
        (user / f"examples_{path.name}").write_text(path.read_text())
    assert len(list(user.glob("*.py"))) >= 12
    (tmp_path / "mypy.ini").write_text(_MYPY_INI)
    env = {**os.environ, "MYPYPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(tmp_path / "mypy.ini"),
                          "--cache-dir", str(tmp_path / "cache"), *_MYPY_FLAGS, "userblocks"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    errors = [ln for ln in out.stdout.splitlines() if ": error:" in ln and not any(s in ln for s in _NOT_OURS)]
    assert out.returncode in (0, 1) and not out.stderr.strip(), out.stderr[-2000:]
    assert not errors, "\n".join(errors)


# A user's script under `mypy --strict` (tests/data/strict_user_script.py: TorchOracle, a plain
# oracle, callbacks, eval_fn, short_budget's **kw, executors, History, retrying, checkpoints,
# check_oracle), and the calls it must refuse (tests/data/strict_user_refused.py, each marked).
_STRICT_SCRIPTS = ("strict_user_script.py", "strict_user_refused.py")


def _refused_lines(errors: list) -> tuple:
    """``(lines that must have an error, lines that have one)`` of the refused-calls script."""
    import re

    text = (ROOT / "tests" / "data" / _STRICT_SCRIPTS[1]).read_text()
    marked = {i for i, ln in enumerate(text.splitlines(), 1) if "# refused" in ln}
    got = {int(m.group(1)) for ln in errors if (m := re.search(rf"{_STRICT_SCRIPTS[1]}:(\d+):", ln))}
    return marked, got


@pytest.mark.slow  # mypy reads NumPy's and torch's annotations: 30 s or more on a cold cache
def test_a_strictly_typed_user_script_type_checks_and_foreign_calls_are_refused(tmp_path):
    """`mypy --strict` on an annotated user script failed on zoracle's side: calls to unannotated
    public functions (SerialExecutor(), DeviceExecutor, current_device, from_args, split_blocks,
    QuadraticOracle's grad/hessian/batch, smoothing's lower_confidence_bound and radius,
    TorchOracle.unbind: "Call to untyped function ... in typed context"), while wrong arguments
    to parameters typed only by their defaults (``callbacks=fn`` for ``[fn]``, ``checkpoint_every``
    of 2.5, ``sgd("0.1")``) went through. ``train``'s and ``estimate_gradient``'s ``*extra`` and
    ``**unknown`` catch-alls (typed NoReturn) must refuse SciPy's arguments."""
    pytest.importorskip("mypy")
    pytest.importorskip("torch", reason="the script's TorchOracle part imports torch (the torch extra)")
    site = _typed_site(tmp_path)
    (tmp_path / "mypy.ini").write_text("[mypy]\n[mypy-zoracle.*]\nfollow_imports = silent\n")
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--config-file", str(tmp_path / "mypy.ini"),
                          "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", "--show-error-codes",
                          *_STRICT_SCRIPTS], cwd=ROOT / "tests" / "data", env={**os.environ, "MYPYPATH": str(site)},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode in (0, 1) and not out.stderr.strip(), out.stderr[-2000:]
    errors = [ln for ln in out.stdout.splitlines() if ": error:" in ln]
    assert [ln for ln in errors if ln.startswith(_STRICT_SCRIPTS[0])] == []
    marked, got = _refused_lines(errors)
    assert len(marked) >= 7 and got == marked, "\n".join(errors)


@pytest.mark.slow
def test_the_strictly_typed_user_script_passes_pyright_strict(tmp_path):
    """The same scripts under pyright's strict mode (where pyright is installed: it is no test
    dependency). Parameters left unannotated read as Unknown there ("Type of "train" is partially
    unknown" at every call), bare ``dict`` and ``tuple`` returns as ``dict[Unknown, Unknown]``, and
    pyright types an unannotated parameter by its default: ``sgd(lr=0.1)`` refused a schedule,
    ``train(checkpoint_every="epoch")`` a step count or a timedelta, ``check_oracle(rng=0)`` a
    Generator. JoblibExecutor's ``n_workers`` (a lambda property) did not satisfy the Executor
    protocol's settable ``n_workers: int``."""
    pytest.importorskip("pyright")
    site = _typed_site(tmp_path)
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(
        {"typeCheckingMode": "strict", "extraPaths": [str(site)], "reportMissingTypeStubs": False}))
    out = subprocess.run([sys.executable, "-m", "pyright", "--project", str(tmp_path / "pyrightconfig.json"),
                          "--pythonpath", sys.executable, *_STRICT_SCRIPTS], cwd=ROOT / "tests" / "data",
                         capture_output=True, text=True, timeout=600)
    errors = [ln.strip() for ln in out.stdout.splitlines() if " - error:" in ln]
    assert out.returncode in (0, 1) and errors, out.stdout[-2000:] + out.stderr[-2000:]
    assert [ln for ln in errors if _STRICT_SCRIPTS[0] in ln] == []
    marked, got = _refused_lines([ln.replace(str(ROOT / "tests" / "data") + os.sep, "") for ln in errors])
    assert got == marked, "\n".join(errors)


def test_the_dask_extras_floor_starts_a_loopback_only_local_cluster():
    """The declared dask[distributed] 2023.1 could not start DaskExecutor('local') at all (no
    Client.register_plugin before 2023.9.2: AttributeError), and up to 2024.8.2 each worker process
    of the local cluster served its HTTP server on 0.0.0.0 and :: whatever worker_dashboard_address
    said, where design.md promises loopback-only local clusters. 2024.9.0 is the first that keeps
    every socket on 127.0.0.1 (tests/test_hardening_executors.py's loopback test)."""
    import re

    floor = re.findall(r'"dask\[distributed\]>=([0-9][0-9.]*)"', (ROOT / "pyproject.toml").read_text())
    assert floor and tuple(int(p) for p in floor[0].split(".")) >= (2024, 9), floor


def test_every_extra_that_needs_torch_declares_one_floor_and_the_docs_name_it():
    """The torch, phiflow, apps and bench extras each pin torch: a floor raised in one (2.1 was
    false: TorchOracle's autocast check needs 2.2's fallbacks, guarded in adapters/_torch_graph.py)
    and left in another lets pip keep a torch that one extra cannot run; getting-started.md says
    which floor pip keeps."""
    import re

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomli, which pytest itself needs there
        import tomli as tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    floors = {name: re.findall(r"^torch\s*>=\s*([0-9.]+)$", req)[0]
              for name, reqs in extras.items() for req in reqs if re.match(r"^torch\b", req)}
    assert {"torch", "phiflow", "apps", "bench"} <= set(floors), floors
    assert len(set(floors.values())) == 1, floors
    guide = " ".join((ROOT / "docs" / "getting-started.md").read_text().split())
    assert f"the extras ask for `torch>={next(iter(floors.values()))}`" in guide


@pytest.mark.slow
def test_the_gpu_marker_selects_the_cupy_tests():
    """pyproject declares a ``gpu`` marker ("needs a CUDA GPU") that no test carried: on a GPU
    machine ``pytest -m gpu`` ran nothing (exit 5) and ``-m "not gpu"`` kept the CuPy tests."""
    test = "tests/test_estimators.py::test_backends_agree_on_quadratic"
    # both selections in one fresh process: pytest and the suite's imports are paid once, not twice
    script = ("import sys, pytest\n"
              "for mark in ('gpu', 'not gpu'):\n"
              "    print('-m', mark, flush=True)\n"
              "    pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', '-m', mark, sys.argv[1]])\n")
    out = subprocess.run([sys.executable, "-c", script, test], cwd=ROOT, capture_output=True, text=True, timeout=120)
    ids, mark = {}, None
    for line in out.stdout.splitlines():
        if line.startswith("-m "):
            mark = line[3:]
            ids[mark] = []
        elif line.startswith(test):
            ids[mark].append(line)
    assert ids == {"gpu": [test + "[cupy]"], "not gpu": [test + "[numpy]"]}, out.stdout + out.stderr
