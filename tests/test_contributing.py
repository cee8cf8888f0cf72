"""CONTRIBUTING.md stays true of this checkout: every command of its fenced blocks names files,
test ids, markers, extras, hypothesis profiles, commands and flags that exist, and every file,
fixture, marker and environment variable its text names exists (so that a rename breaks this
test, not a new contributor's first day). The site shows it as docs/contributing.md
(docs/hooks/readme.py). A slow test named by its id alone says how to run it (tests/conftest.py).

No program run and no site build, except two pytest runs that only collect.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from test_changelog import name_problems
from test_docs_links import FENCE, SCRIPT, accepted_flags, prose

ROOT = Path(__file__).resolve().parents[1]
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
FILE = re.compile(r"(?<![\w/.-])((?:\.ci/[\w.-]*\w|(?:docs|examples|benchmarks|tests|zoracle|adapters|apps)/[\w/.-]*\w"
                  r"(?:\.md|\.py|\.json|/))|[A-Z]+\.md|pyproject\.toml|mkdocs\.yml)(?![\w/])")
ENV = re.compile(r"\b((?:ZORACLE|HYPOTHESIS)_[A-Z_]+)\b")


def _pyproject() -> str:
    return (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def registered_markers() -> set:
    block = re.search(r"^markers = \[(.*?)^\]", _pyproject(), re.S | re.M).group(1)
    return set(re.findall(r'^\s*"(\w+):', block, re.M))


def extras() -> set:
    block = re.search(r"^\[project\.optional-dependencies\]\n(.*?)^\[", _pyproject(), re.S | re.M).group(1)
    return set(re.findall(r"^([\w-]+) = ", block, re.M))


def hypothesis_profiles() -> set:
    conftest = (ROOT / "tests" / "conftest.py").read_text(encoding="utf-8")
    return set(re.findall(r'register_profile\(\s*"(\w+)"', conftest))


def fixtures() -> set:
    names = set()
    for path in (ROOT / "tests").glob("*.py"):
        names |= set(re.findall(r"@pytest\.fixture[^\n]*\ndef (\w+)\(", path.read_text(encoding="utf-8")))
    return names


def ignored():
    """.gitignore's entries, or None outside a git checkout (an unpacked sdist carries no .gitignore)."""
    path = ROOT / ".gitignore"
    return path.read_text(encoding="utf-8").split() if path.is_file() else None


def command_lines(text: str) -> list:
    """(line, command) of each command of the page's fenced bash blocks, comments left out."""
    out = []
    for m in FENCE.finditer(text):
        first = text.count("\n", 0, m.start()) + 1
        for i, line in enumerate(m.group(0).splitlines()[1:-1], first + 1):
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command:
                out += [(i, part.strip()) for part in command.split("&&")]
    return out


def _marker_problems(expr: str) -> list:
    words = set(re.findall(r"\w+", expr)) - {"and", "or", "not"}
    return [f"-m {expr!r}: no marker {w!r} in pyproject's markers" for w in sorted(words - registered_markers())]


def _test_id_problems(arg: str) -> list:
    path, _, rest = arg.partition("::")
    if not (ROOT / path).is_file():
        return [f"{arg}: no {path}"]
    source = (ROOT / path).read_text(encoding="utf-8")
    return [f"{arg}: {path} defines no {name}" for name in rest.split("::") if name
            if not re.search(rf"^\s*(?:def|class) {re.escape(name.split('[')[0])}\b", source, re.M)]


def _pytest_problems(args: list) -> list:
    bad, i = [], 0
    while i < len(args):
        a = args[i]
        if a in ("-m", "-k", "-p", "-n"):
            value = args[i + 1]
            if a == "-n" and not (value.isdigit() or value in ("auto", "logical")):
                bad.append(f"-n {value}: pytest-xdist takes a number of processes, auto or logical")
            if a == "-m":
                bad += _marker_problems(value)
            elif a == "-p" and not value.startswith("no:") and not (ROOT / "tests" / f"{value}.py").is_file():
                bad.append(f"-p {value}: no plugin tests/{value}.py")
            i += 2
            continue
        if not a.startswith("-"):
            bad += _test_id_problems(a)
        i += 1
    return bad


def _program_problems(program: str, args: str) -> list:
    """``zoracle COMMAND`` or a script of benchmarks/ or examples/, with the flags given: test_docs_links' check."""
    from zoracle.cli import COMMANDS

    if program.startswith("zoracle ") and program.split()[1] not in COMMANDS:
        return [f"no command {program!r}"]
    if not program.startswith("zoracle ") and not (ROOT / program).is_file():
        return [f"no {program}"]
    flags = (w.split("=")[0] for w in args.split() if w.startswith("--"))
    return [f"{program} has no {f}" for f in flags if f not in accepted_flags(program)]


def command_problems(line: int, command: str, venvs: tuple = ()) -> list:
    """What a command of the page names that this checkout lacks; a command of a kind this test
    does not know is a problem too (teach it here, so that nothing goes unchecked)."""
    env = {}
    while re.match(r"[A-Z_]+=\S+ ", command):
        name, command = command.split(" ", 1)
        env.update([name.split("=", 1)])
    bad = [f"{k}={v}: no hypothesis profile {v!r} in tests/conftest.py" for k, v in env.items()
           if k == "HYPOTHESIS_PROFILE" and v not in hypothesis_profiles()]
    bad += [f"PYTHONPATH={v}: no folder {d}" for k, v in env.items() if k == "PYTHONPATH"
            for d in v.split(":") if not (ROOT / d).is_dir()]
    bad += [f"{k}: not an environment variable this test knows" for k in env
            if k not in ("HYPOTHESIS_PROFILE", "PYTHONPATH")]
    words = shlex.split(command)
    if words[:3] == ["python", "-m", "pytest"]:
        bad += _pytest_problems(words[3:])
    elif words[:3] == ["python3", "-m", "venv"]:
        if ignored() is not None and f"/{words[3]}/" not in ignored():
            bad.append(f"{words[3]} is not in .gitignore")
    elif words[:1] == ["."]:
        if not any(words[1] == f"{v}/bin/activate" for v in venvs):
            bad.append(f"{words[1]}: no venv made above")
    elif words[:2] == ["pip", "install"]:
        for w in words[2:]:
            if w.startswith("torch=="):
                pins = set(re.findall(r"torch==([\w.+]+)", (ROOT / ".ci" / "run").read_text(encoding="utf-8")))
                if pins != {w.split("==")[1]}:
                    bad.append(f"{w}: .ci/run pins torch=={pins}")
            elif w.startswith(".["):
                bad += [f"{w}: no extra {e!r} in pyproject" for e in w[2:-1].split(",") if e not in extras()]
            elif w != "-e":
                bad.append(f"pip install {w}: not a package this test knows")
    elif words[:1] == ["mkdocs"]:
        if not (ROOT / "mkdocs.yml").is_file() or words[1] not in ("build", "serve"):
            bad.append("no mkdocs.yml, or not `mkdocs build` or `mkdocs serve`")
    elif SCRIPT.match(command):
        bad += _program_problems(*SCRIPT.match(command).groups())
    else:
        bad.append("a command this test does not check (add it to command_problems)")
    return [f"line {line}: `{command}`: {b}" for b in bad]


def text_problems(text: str) -> list:
    """What the page's text names that this checkout lacks: files, fixtures, markers, environment
    variables; and the API names, commands and flags of its inline code (test_changelog's check)."""
    words = prose(text)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")  # .ci/venv: what CI makes
    bad = [f"{path}: no such file or folder" for path in sorted(set(FILE.findall(words)))
           if not (ROOT / path).exists() and not re.search(rf"[\s\-\"]{re.escape(path)}\b", ci)]
    bad += [f"fixture {name!r}: not defined in tests/" for name in
            sorted(set(re.findall(r"`(\w+)` fixture", words))) if name not in fixtures()]
    bad += [f"marker {name!r}: not in pyproject's markers" for name in
            sorted(set(re.findall(r"@pytest\.mark\.(\w+)", words))) if name not in registered_markers()]
    readers = [ROOT / ".ci" / "run", ROOT / "tests" / "conftest.py", *ROOT.glob("zoracle/*.py")]
    known = set(ENV.findall(" ".join(p.read_text(encoding="utf-8") for p in readers)))
    bad += [f"${name}: no code reads it" for name in sorted(set(ENV.findall(text)) - known)]
    return bad + name_problems(text, CONTRIBUTING)


def problems(text: str) -> list:
    venvs = tuple(re.findall(r"python3 -m venv (\S+)", text))
    bad = [b for line, command in command_lines(text) for b in command_problems(line, command, venvs)]
    return bad + text_problems(text)


def test_every_command_file_marker_and_flag_contributing_names_exists():
    text = CONTRIBUTING.read_text(encoding="utf-8")
    assert len(command_lines(text)) >= 12  # the page gives commands (a check of nothing passes too)
    assert len(FILE.findall(prose(text))) >= 15
    bad = problems(text)
    assert bad == [], "\n".join(bad)


def test_contributing_is_linked_from_the_readme_and_on_the_site():
    assert "](docs/contributing.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert ": contributing.md" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    hook = (ROOT / "docs" / "hooks" / "readme.py").read_text(encoding="utf-8")
    assert '"contributing.md": ROOT / "CONTRIBUTING.md"' in hook  # the stub is replaced by the root file
    # the site shows the page with its links rewritten into docs/: a link elsewhere breaks the strict build
    links = re.findall(r"\]\(([^)]+)\)", prose(CONTRIBUTING.read_text(encoding="utf-8")))
    assert links and [link for link in links if not link.startswith(("docs/", "https://", "#"))] == []


GOOD = """# Contributing

Files: `tests/conftest.py`, .ci/run (its `.ci/venv`), docs/training.md and `zoracle/_errors.py`;
the `ctrl_c` fixture; `@pytest.mark.slow`;
`$ZORACLE_TORCH_INDEX`; `zo.estimate_gradient`.

```bash
python3 -m venv .venv && . .venv/bin/activate
pip install torch==2.13.0 && pip install -e ".[all,bench]"   # 2 min
python -m pytest -q -m slow tests/test_changelog.py::test_the_checks_see_a_changelog_that_went_wrong
HYPOTHESIS_PROFILE=dev python -m pytest -q tests/test_estimators.py -k central
mkdocs build --strict
zoracle bench --quick
PYTHONPATH=tests python -m pytest -q -n 0 -p leakcheck tests/test_changelog.py
```
"""


def test_the_checks_see_a_contributing_page_that_went_wrong():
    assert problems(GOOD) == [], problems(GOOD)
    wrong = {
        "a renamed file": ("`tests/conftest.py`", "`tests/conftest_.py`"),
        "a file outside code": (".ci/run", ".ci/runs"),
        "a folder CI does not make": (".ci/venv", ".ci/env"),
        "a page": ("docs/training.md", "docs/trainings.md"),
        "a test file in a command": ("tests/test_estimators.py", "tests/test_estimator.py"),
        "a test id": ("::test_the_checks_see", "::test_the_check_see"),
        "an unregistered marker": ("-m slow", "-m quick"),
        "an unregistered marker in an expression": ("-m slow", "-m 'slow and not network'"),
        "a marker in the text": ("@pytest.mark.slow", "@pytest.mark.long"),
        "a fixture": ("`ctrl_c` fixture", "`sigint` fixture"),
        "an extra": ("all,bench", "all,benchmarks"),
        "the torch pin": ("torch==2.13.0", "torch==2.12.0"),
        "a hypothesis profile": ("=dev", "=thorough"),
        "an environment variable": ("ZORACLE_TORCH_INDEX", "ZORACLE_TORCH_URL"),
        "a flag": ("--quick", "--fast"),
        "a command": ("zoracle bench", "zoracle benches"),
        "an API name": ("zo.estimate_gradient", "zo.estimate_gradients"),
        "a command of an unknown kind": ("mkdocs build --strict", "make docs"),
        "a venv git does not ignore": ("venv .venv", "venv env/"),
        "a plugin": ("-p leakcheck", "-p leakchecks"),
        "a process count": ("-n 0", "-n none"),
        "a folder on the path": ("PYTHONPATH=tests", "PYTHONPATH=test"),
        "another venv activated": ("activate", "activate.fish"),
    }
    for what, (old, new) in wrong.items():
        assert old in GOOD, what
        assert problems(GOOD.replace(old, new)), what


@pytest.mark.parametrize("how", [["--collect-only"], ["-n", "2"], ["-n", "0"]], ids=["collect", "workers", "one-process"])
@pytest.mark.slow
def test_a_slow_test_named_by_its_id_says_how_to_run_it(how):
    """``pytest tests/x.py::test_slow`` deselected the test (pyproject's ``-m 'not slow'``) and
    printed only "1 deselected": the run ends with the command that runs it. Also where
    pytest-xdist's workers collect (and deselect) and the controller prints the summary."""
    name = "test_a_strictly_typed_user_script_type_checks_and_foreign_calls_are_refused"
    test = f"tests/test_packaging.py::{name}"
    source = (ROOT / "tests" / "test_packaging.py").read_text(encoding="utf-8")
    assert re.search(rf"@pytest\.mark\.slow.*\ndef {name}\(", source)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", *how, test],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 5, out.stdout[-2000:] + out.stderr[-2000:]  # nothing ran
    assert f"run it with: python -m pytest -m slow {test}" in out.stdout, out.stdout[-2000:]
    whole = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "tests/test_packaging.py"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0 and "-m slow" not in whole.stdout, whole.stdout[-2000:]  # a file: no hint
