"""The documentation runs as written: every fenced Python block of README.md and docs/ executes.

Each block runs on its own, in a fresh namespace and an empty temporary directory, so a
block can rely only on what it shows itself (no hidden preamble, no names from an earlier
block). Bash blocks are commands for the reader and stay documentation.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import inspect
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
# a block that imports one of these is skipped where it is not installed (core-only installs)
OPTIONAL = {"torch": "torch", "sklearn": "scikit-learn", "onnxruntime": "onnxruntime", "phi": "phiflow",
            "dask": "dask", "ray": "ray", "matplotlib": "matplotlib", "jax": "jax", "gymnasium": "gymnasium",
            "pandas": "pandas"}


ADAPTERS = {"torch": "torch", "torch_models": "torch", "onnx": "onnxruntime", "phiflow": "phi"}


def needed_modules(code: str) -> set:
    """Top-level modules a block imports, zoracle's adapters mapped to their framework."""
    lines = [ln for ln in code.splitlines() if re.match(r"\s*(import|from)\s", ln)]
    out = set()
    for name in re.findall(r"[A-Za-z_][\w.]*", " ".join(lines)):
        parts = name.split(".")
        out.add(parts[0])
        if parts[:2] == ["zoracle", "adapters"] and len(parts) > 2:
            out.add(ADAPTERS.get(parts[2], parts[2]))
    if re.search(r"\bplot\s*=\s*[\"']|\.plot\(", code):  # train(plot="run.png") and result.plot() draw with it
        out.add("matplotlib")
    return out


def test_needed_modules_sees_frameworks_behind_adapters():
    code = "import numpy as np, torch, zoracle as zo\nfrom zoracle.adapters.onnx import OnnxClassifier\nx = 1\n"
    assert {"numpy", "torch", "zoracle", "onnxruntime"} <= needed_modules(code)
    assert "x" not in needed_modules(code)


def release(version: str) -> tuple:
    """The leading numbers of a release, ``"1.11.0rc1"`` as ``(1, 11, 0)``."""
    return tuple(int(n) for n in re.match(r"\d+(?:\.\d+)*", version).group().split("."))


def stated_releases(code: str) -> list:
    """(distribution, release) for each ``# scipy >= 1.11`` a block's comments state: an API newer
    than the floor pyproject declares for the core's dependency (a lab's older SciPy runs zoracle,
    not that block)."""
    return [(dist, release(v)) for dist, v in re.findall(r"#.*?\b(numpy|scipy|joblib) >= (\d+(?:\.\d+)*)", code)]


def test_stated_releases_reads_a_blocks_comments():
    code = "x = 1  # scipy >= 1.11: once an iteration\ny = 2  # numpy >= 2\nz = 'scipy >= 9'\n"
    assert stated_releases(code) == [("scipy", (1, 11)), ("numpy", (2,))]
    assert release("1.11.0rc1") == (1, 11, 0) and release("2.4.6") > (2,) and release("1.9.2")[:2] < (1, 11)


def python_blocks():
    """(page, line, code) for every ```python block, in page order."""
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 2
            out.append(pytest.param(page, line, m.group(1), id=f"{page.relative_to(ROOT)}:{line}"))
    return out


BLOCKS = python_blocks()


def test_the_docs_have_python_blocks():
    pages = {p.values[0].name for p in BLOCKS}
    assert len(BLOCKS) >= 8 and {"README.md", "concepts.md", "training.md", "pytorch.md", "executors.md",
                                    "defense.md"} <= pages


@pytest.mark.parametrize("page, line, code", BLOCKS)
def test_python_block_runs_as_written(page, line, code, tmp_path, monkeypatch):
    for module in sorted(needed_modules(code) & set(OPTIONAL)):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {OPTIONAL[module]}")
    for dist, need in stated_releases(code):  # a newer release than pyproject's floor, as the block says
        have = importlib.metadata.version(dist)
        if release(have)[:len(need)] < need:
            pytest.skip(f"needs {dist} >= {'.'.join(map(str, need))}, as the block says ({have} here)")
    # in this process (one torch import for all blocks), in an empty directory, in a fresh
    # namespace run as a script; the suite's filters make zoracle's warnings errors here too
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__", "__file__": str(tmp_path / "block.py")}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
    printed = out.getvalue()
    for comment in shown_outputs(code):
        missing = [tok for tok in comment_tokens(comment) if not appears(tok, printed)]
        assert not missing, f"the block prints {printed!r}; its comment shows {comment!r}: {missing} not printed"


NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")


def shown_outputs(code: str) -> list:
    """The output a block's ``print(...)  # <output>`` lines show, or a comment line right under a
    print without one (a long print): the comment up to its first ": ", "; " or " (" (what
    follows explains it)."""
    out, prev = [], ""
    for ln in code.splitlines():
        comment = None
        if "print(" in ln and "#" in ln:
            comment = ln.split("#", 1)[1].strip()
        elif ln.lstrip().startswith("#") and "print(" in prev and "#" not in prev:
            comment = ln.lstrip()[1:].strip()
        if comment is not None:
            out.append(re.split(r": |; | \(", comment, maxsplit=1)[0])
        prev = ln
    return out


#: numbers shown as alternatives, ``67.3%/71.4%``: what a block prints on different machines
ALTERNATIVES = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?%?(?:/-?\d[\d,]*(?:\.\d+)?%?)+")


PERCENT = re.compile(NUMBER.pattern + "%?")


def comment_tokens(comment: str) -> list:
    """The numbers and booleans a comment shows (``4,200`` as 4200; a percentage keeps its
    ``%``); alternatives (``67.3%/71.4%``) as one token, ``67.3%|71.4%``, any of which may be
    printed."""
    alts = ["|".join(PERCENT.findall(m.replace(",", ""))) for m in ALTERNATIVES.findall(comment)]
    rest = ALTERNATIVES.sub(" ", comment)
    return ([t.replace(",", "") for t in PERCENT.findall(rest)] + alts
            + re.findall(r"\b(?:True|False)\b", comment))


def appears(tok: str, printed: str) -> bool:
    """An integer or boolean printed as shown; a decimal within its last shown digit; a
    percentage (an accuracy) within its last digit or 5% of itself (a run on another
    instruction set moves an accuracy like a new seed: see peers.md). A loss or a count from a
    seeded float64 run gets no such slack."""
    if "|" in tok:
        return any(appears(t, printed) for t in tok.split("|"))
    if tok in ("True", "False"):
        return re.search(rf"\b{tok}\b", printed) is not None
    nums = [float(n.replace(",", "")) for n in NUMBER.findall(printed)]
    percent = tok.endswith("%")
    tok = tok.rstrip("%")
    value = float(tok)
    if "." not in tok and not percent:
        return value in nums
    digits = len(tok.split(".")[1]) if "." in tok else 0
    slack = max(0.5 * 10.0 ** -digits, 0.05 * abs(value) if percent else 0.0)
    return any(abs(n - value) <= slack for n in nums)


def test_shown_outputs_are_read_as_meant():
    code = "print(a)   # 180.0 41: the loss at x and 2d + 1 queries\nprint(b)  # about -2.03 after 4,200 queries\n"
    assert [comment_tokens(c) for c in shown_outputs(code)] == [["180.0", "41"], ["-2.03", "4200"]]
    assert appears("-2.03", "-2.0329 4200") and appears("4200", "-2.0329 4200") and not appears("4201", "4200")
    assert not appears("180.0", "190.0 41") and appears("True", "x True") and not appears("True", "Truest")
    # a long print shows its output on the comment line under it (a review found two such blocks unchecked)
    under = "print(len(p0),\n      short.nfev)\nprint(n, m)\n# 20458 19970 67.3%\nx = 1  # not an output\n# nor this\n"
    assert [comment_tokens(c) for c in shown_outputs(under)] == [["20458", "19970", "67.3%"]]
    # alternatives: what one block prints on different machines, any one of them
    assert comment_tokens("20458 19970 67.3%/71.4% 21158 10.1%") == ["20458", "19970", "21158", "10.1%",
                                                                      "67.3%|71.4%"]
    assert appears("67.3%|71.4%", "9 71.4% 2") and appears("67.3%|71.4%", "67.2%")
    assert not appears("67.3%|71.4%", "80.0%")
    # an accuracy may move 5% with the CPU; a seeded loss only within its last digit
    assert appears("71.0%", "74.4%") and not appears("-2.03", "-1.9806") and appears("-2.03", "-2.0329")


def test_every_print_in_a_block_shows_its_output():
    """A block that prints shows what it prints (``print(...)  # <output>``, or a comment line
    under a long print), so the reader can compare and the runner above checks its numbers: a
    review found training.md's DeepZero loop printing its query count and test accuracy, and
    its resume example printing the refusal, with neither shown nor checked."""
    silent = []
    for p in BLOCKS:
        page, line, code = p.values
        prints = sum("print(" in ln for ln in code.splitlines())
        if len(shown_outputs(code)) < prints:
            silent.append(f"{page.relative_to(ROOT)}:{line}")
    assert silent == []


def test_readme_links_into_docs_exist():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#\s]+)", text)
    assert links, "the README links into docs/"
    for link in links:
        assert (ROOT / link).is_file(), link


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in (ROOT / "docs").rglob("*.md"):
        rel = page.relative_to(ROOT / "docs").as_posix()
        assert f": {rel}" in nav, f"docs/{rel} is not in mkdocs.yml's nav"


def test_readme_first_screen_has_install_and_the_two_commands():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    first = "\n".join(lines[:40])
    for needle in ("python3 -m venv", "pip install torch==2.13.0", 'pip install -e ".[all]"', "zoracle demo",
                   "python -m pytest -q", "download.pytorch.org/whl/cpu"):
        assert needle in first, needle
    assert len(lines) <= 120, f"README.md has {len(lines)} lines: keep it to a screen or two, move the rest to docs/"


def test_ci_runs_the_readmes_test_command_in_a_venv():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python3 -m venv" in ci and "python -m pytest -q\n" in ci and "mkdocs build --strict" in ci
    assert "python -m pytest -q" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="needs the docs extra (pip install -e '.[docs]')")
@pytest.mark.slow
def test_site_builds_in_strict_mode(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    home = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "python3 -m venv" in home and "Quickstart" in home  # the README's first screen is the site's
    changelog = (tmp_path / "site" / "changelog" / "index.html").read_text(encoding="utf-8")
    from zoracle import __version__

    assert f"[{__version__}]" in changelog and "replaced by" not in changelog  # CHANGELOG.md, not the stub
    contributing = (tmp_path / "site" / "contributing" / "index.html").read_text(encoding="utf-8")
    assert "HYPOTHESIS_PROFILE" in contributing and "replaced by" not in contributing  # CONTRIBUTING.md
    api = (tmp_path / "site" / "api" / "core" / "index.html").read_text(encoding="utf-8")
    assert "estimate_gradient" in api and "Parameters" in api  # rendered from the docstrings
    # the docstrings' Sphinx roles and math directives are not shown raw (":func:certify", ".. math::")
    for page in ("core", "executors", "smoothing-testing", "adapters"):
        html = (tmp_path / "site" / "api" / page / "index.html").read_text(encoding="utf-8")
        raw = re.findall(r":(?:func|class|meth|attr|mod|exc|data|obj):<code>[^<]*|\.\. math::", html)
        assert raw == [], f"api/{page}: {raw[:5]}"
    # module constants are rendered with their docstrings (griffe reads a string after the
    # assignment, not a ``#:`` comment before it: ABSTAIN, fork and the recipes' constants were absent)
    from zoracle import recipes

    constants = [n for n in recipes.__all__ if not callable(getattr(recipes, n))]
    wanted = [("smoothing-testing", "zoracle.smoothing.ABSTAIN"), ("adapters", "adapters.torch.fork")]
    for page, ident in wanted + [("core", f"zoracle.recipes.{n}") for n in constants]:
        html = (tmp_path / "site" / "api" / page / "index.html").read_text(encoding="utf-8")
        assert f'id="{ident}"' in html, (page, ident)
    # every public name of every module the pages render is on its page (one without a docstring is
    # left out: adapters.torch_models.ZOO was)
    pages = {"core": ["zoracle"], "executors": ["zoracle.executors"],
             "smoothing-testing": ["zoracle.smoothing", "zoracle.testing", "zoracle.testing.strategies"],
             "adapters": ["adapters.torch", "adapters.torch_models", "adapters.onnx", "adapters.phiflow"]}
    absent = []
    for page, modules in pages.items():
        html = (tmp_path / "site" / "api" / page / "index.html").read_text(encoding="utf-8")
        for modname in modules:
            try:
                mod = importlib.import_module(modname)
            except ImportError:  # an adapter whose framework is not installed (mkdocstrings reads the source)
                continue
            absent += [f"{modname}.{n}" for n in mod.__all__
                       if not inspect.ismodule(getattr(mod, n)) and f'id="{modname}.{n}"' not in html]
    assert absent == []


def test_api_reference_lists_every_public_name():
    """The API pages name their members by hand: a public name left out is missing from the site
    (a review found ShardTimeout, NestedRunError, ToDeviceError and recipes.default_coordinates
    absent, though the docs send readers to them)."""
    import argparse

    import zoracle.executors as ex
    import zoracle.recipes as recipes

    members = re.findall(r"^\s+- (\w+)\s*$", (ROOT / "docs" / "api" / "executors.md").read_text(encoding="utf-8"), re.M)
    assert sorted(set(ex.__all__) - set(members)) == []
    core = set(re.findall(r"^::: zoracle\.recipes\.(\w+)", (ROOT / "docs" / "api" / "core.md").read_text(encoding="utf-8"),
                          re.M))
    assert sorted(n for n in recipes.__all__ if n not in core) == []  # the constants too
    # add_executor_arguments' docstring names every flag it adds
    parser = argparse.ArgumentParser()
    ex.add_executor_arguments(parser)
    flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    assert [f for f in flags if f not in ex.add_executor_arguments.__doc__] == []


def test_pages_count_the_rows_and_commands_the_code_has():
    """defense.md said "Four rows" over a table of five (the MSE-only row); design.md's diagram
    left out ``zoracle plot``."""
    from zoracle.apps import defense
    from zoracle.cli import COMMANDS

    words = {"three": 3, "four": 4, "five": 5, "six": 6}
    text = (ROOT / "docs" / "defense.md").read_text(encoding="utf-8")
    said = re.search(r"(\w+) rows, all at sigma", text).group(1).lower()
    assert words[said] == len(defense.LABELS)
    line = next(ln for ln in (ROOT / "docs" / "design.md").read_text(encoding="utf-8").splitlines() if "CLI (zoracle" in ln)
    assert [c for c in COMMANDS if c not in re.findall(r"\b\w+\b", line)] == []


def _parameters_section(doc):
    """The names a numpydoc ``Parameters`` section lists, in order (None without one)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    starts = [i for i, ln in enumerate(lines[:-1]) if ln.strip() == "Parameters" and set(lines[i + 1].strip()) == {"-"}]
    if not starts:
        return None
    names = []
    for i in range(starts[0] + 2, len(lines)):
        ln = lines[i]
        if i + 1 < len(lines) and ln.strip() and not ln.startswith(" ") and lines[i + 1].strip() \
                and set(lines[i + 1].strip()) == {"-"}:
            break  # the next section
        m = re.match(r"^(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*)\s*(?::|$)", ln)
        if m and not ln.startswith(" "):
            names += [n.strip().lstrip("*") for n in m.group(1).split(",")]
    return names


def _public_callables():
    import inspect as _inspect
    import importlib

    import zoracle

    out = [(f"zoracle.{n}", getattr(zoracle, n)) for n in zoracle.__all__]
    for name in ("zoracle.executors", "zoracle.recipes", "zoracle.smoothing", "zoracle.testing",
                 "zoracle.adapters.torch", "zoracle.adapters.torch_models", "zoracle.adapters.onnx",
                 "zoracle.adapters.phiflow"):
        try:
            mod = importlib.import_module(name)
        except ImportError:  # an adapter whose framework is not installed
            continue
        out += [(f"{name}.{n}", getattr(mod, n)) for n in mod.__all__]
    found = []
    for name, obj in out:
        if not (_inspect.isfunction(obj) or _inspect.isclass(obj)):
            continue  # modules, constants, instances such as adapters.torch.fork
        found.append((name, obj))
        if _inspect.isclass(obj):
            for attr, value in vars(obj).items():
                fn = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
                if not attr.startswith("_") and _inspect.isfunction(fn):
                    found.append((f"{name}.{attr}", fn))
    return found


def test_every_parameters_section_lists_exactly_the_signature():
    """``help(zo.train)`` and the API pages list a callable's parameters from its numpydoc
    ``Parameters`` section: a review found ``train``'s without ``score_kinds``,
    ``grasp_directions``, ``grasp_batch``, ``eval_every`` and ``checkpoint_every`` (so the
    rendered table had no row, type or default for them), ``zo_grasp``'s without
    ``common_random_numbers`` and ``recipes.layer_scales``' without three of its five."""
    wrong = []
    for name, obj in _public_callables():
        doc = obj.__doc__
        if inspect.isclass(obj) and _parameters_section(doc) is None:
            doc = obj.__init__.__doc__
        listed = _parameters_section(doc)
        if listed is None:
            continue  # documented in prose
        try:
            sig = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
        except (TypeError, ValueError):
            continue
        if listed != sig:
            wrong.append(f"{name}: signature {sig}, Parameters section {listed}")
    assert wrong == []
