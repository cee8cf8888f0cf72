"""CHANGELOG.md stays a changelog of this code: its newest release is pyproject's version (or
[Unreleased] above it), its releases descend with ISO dates, each bullet is one line under a
Keep a Changelog section, and every API name, keyword, command, flag and file it names exists
(so it cannot rot when a name changes). The site shows it as docs/changelog.md (docs/hooks/readme.py).

No program run and no site build: these read the file and import zoracle.
"""

from __future__ import annotations

import datetime
import importlib.util
import re
from pathlib import Path

import zoracle
from test_docs_links import DOTTED, SCRIPT, _import, _line, accepted_flags, api_problems, prose

ROOT = Path(__file__).resolve().parents[1]
CHANGELOG = ROOT / "CHANGELOG.md"
RELEASE = re.compile(r"\[(\d+(?:\.\d+)*)\] - (\d{4}-\d{2}-\d{2})")
SECTIONS = ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security")
FILE = re.compile(r"(?<![\w/.-])((?:docs|examples|benchmarks|tests)/[\w/.-]*\w\.(?:md|py|json))")


def pyproject_version() -> str:
    return re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M).group(1)


def structure_problems(text: str, version: str) -> list:
    """What is wrong with the release headings and sections of a changelog ``text`` whose
    newest release must be ``version``."""
    bad, releases, section = [], [], None
    for n, line in enumerate(prose(text).splitlines(), 1):
        if line.startswith("## "):
            head = line[3:].strip()
            section = head
            if head == "[Unreleased]":
                if releases or n != _first_release_line(text):
                    bad.append(f"line {n}: ## [Unreleased] comes first, above every release")
                continue
            m = RELEASE.fullmatch(head)
            if not m:
                bad.append(f"line {n}: '## {head}' is not '## [Unreleased]' or '## [X.Y.Z] - YYYY-MM-DD'")
                continue
            try:
                date = datetime.date.fromisoformat(m.group(2))
            except ValueError:
                bad.append(f"line {n}: '## {head}': {m.group(2)} is not a date")
                continue
            releases.append((n, m.group(1), tuple(int(p) for p in m.group(1).split(".")), date))
        elif line.startswith("### "):
            if section is None:
                bad.append(f"line {n}: '{line}' is outside a release")
            elif line[4:].strip() not in SECTIONS:
                bad.append(f"line {n}: '{line}' is not one of the sections {', '.join(SECTIONS)}")
        elif section is not None and line.strip() and not line.startswith("- "):
            bad.append(f"line {n}: a release's text is one bullet a line ('- ...'), got {line[:60]!r}")
    if not releases:
        return bad + ["no release heading '## [X.Y.Z] - YYYY-MM-DD'"]
    if releases[0][1] != version:
        bad.append(f"line {releases[0][0]}: the newest release is {releases[0][1]}, pyproject's version is {version} "
                   f"(its section goes first, or right under ## [Unreleased])")
    for (n, s1, v1, d1), (_, s2, v2, d2) in zip(releases, releases[1:]):
        if not v1 > v2:
            bad.append(f"line {n}: {s1} comes above {s2}: the newest release goes first")
        if d1 < d2:
            bad.append(f"line {n}: {s1} is dated {d1}, before {s2}'s {d2}")
    return bad


def _first_release_line(text: str) -> int:
    return next((n for n, line in enumerate(prose(text).splitlines(), 1) if line.startswith("## ")), 0)


def spans(text: str, page: Path = CHANGELOG) -> list:
    """(page, line, text, paragraph) of each inline code span, as test_docs_links reads pages."""
    out, text = [], prose(text)
    for para in re.finditer(r"(?:[^\n]*\S[^\n]*(?:\n|$))+", text):
        start = _line(text, para.start())
        for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", para.group(0)):
            out.append((page, _line(text, para.start() + m.start()), re.sub(r"\s+", " ", m.group(1)), start))
    return out


def name_problems(text: str, page: Path = CHANGELOG) -> list:
    """Every ``zo.NAME`` / ``zoracle.NAME`` (in code or not) is public and exists; calls in code
    take the keywords shown (test_docs_links' check); each ``zoracle COMMAND`` and script exists
    with its flags; each file named exists."""
    from zoracle.cli import COMMANDS

    bad = []
    for name in sorted(set(DOTTED.findall(prose(text)))):
        parts = name.split(".")
        if parts[0] in ("zo", "zoracle"):
            top = parts[1]
            public = top in zoracle.__all__ or (not top.startswith("_") and importlib.util.find_spec(f"zoracle.{top}"))
            if not public or any(p.startswith("_") for p in parts):
                bad.append(f"{name}: not zoracle's public API")
                continue
        try:
            _import(name)
        except AttributeError:
            bad.append(f"{name}: no such name")
    found = spans(text, page)
    bad += api_problems(found)
    for _, line, span, _ in found:
        for m in SCRIPT.finditer(span):
            program = m.group(1)
            if program.startswith("zoracle "):
                if program.split()[1] not in COMMANDS:
                    if span.startswith("zoracle "):  # (not `import zoracle as zo`)
                        bad.append(f"line {line}: `{span}`: no command {program!r}")
                    continue
            elif not (ROOT / program).is_file():
                bad.append(f"line {line}: `{span}`: no {program}")
                continue
            bad += [f"line {line}: `{span}`: {program} has no {f}" for f in
                    (f.split("=")[0] for f in m.group(2).split() if re.match(r"--[\w-]", f))
                    if f not in accepted_flags(program)]
    bad += [f"{path}: no such file" for path in sorted(set(FILE.findall(text))) if not (ROOT / path).is_file()]
    return bad


def test_the_changelog_starts_at_this_version_and_its_releases_descend_with_dates():
    assert structure_problems(CHANGELOG.read_text(encoding="utf-8"), pyproject_version()) == []


def test_every_name_the_changelog_mentions_exists():
    text = CHANGELOG.read_text(encoding="utf-8")
    assert len(DOTTED.findall(text)) >= 20  # it names the API (a check of nothing passes too)
    bad = name_problems(text)
    assert bad == [], "\n".join(bad)


def test_the_changelog_is_linked_from_the_readme_and_on_the_site():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/changelog.md)" in readme
    assert ": changelog.md" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    hook = (ROOT / "docs" / "hooks" / "readme.py").read_text(encoding="utf-8")
    assert '"changelog.md": ROOT / "CHANGELOG.md"' in hook  # the stub is replaced by the root file


GOOD = """# Changelog

## [Unreleased]

### Added

- `zo.AskTell(max_points=)`.

## [0.2.0] - 2026-12-06

### Fixed

- `zo.train(checkpoint_every="10min")` and `zoracle demo --quick`.

## [0.1.0] - 2026-11-28

### Added

- `zo.estimate_gradient` in docs/training.md.
"""


def test_the_checks_see_a_changelog_that_went_wrong():
    assert structure_problems(GOOD, "0.2.0") == [] and name_problems(GOOD) == []
    released = GOOD[:GOOD.index("## [Unreleased]")] + GOOD[GOOD.index("## [0.2.0]"):]
    assert structure_problems(released, "0.2.0") == []  # no unreleased changes
    wrong = {
        "another version": (GOOD, "0.3.0"),
        "no date": (GOOD.replace(" - 2026-12-06", ""), "0.2.0"),
        "not a date": (GOOD.replace("2026-12-06", "2026-13-06"), "0.2.0"),
        "ascending": (GOOD.replace("[0.2.0]", "[0.0.9]"), "0.0.9"),
        "dated before the older": (GOOD.replace("2026-12-06", "2026-11-01"), "0.2.0"),
        "unreleased below": (released.replace("## [0.1.0]", "## [Unreleased]\n\n## [0.1.0]"), "0.2.0"),
        "a section outside a release": (GOOD.replace("## [Unreleased]\n", ""), "0.2.0"),
        "unknown section": (GOOD.replace("### Fixed", "### Improved"), "0.2.0"),
        "a wrapped bullet": (GOOD.replace("`zoracle demo --quick`.", "\n  `zoracle demo --quick`."), "0.2.0"),
    }
    for what, (text, version) in wrong.items():
        assert structure_problems(text, version), what
    for name in ("`zo.AskTel`", "`zo.AskTell(max_point=)`", "`zo._train`", "`zoracle.executors.ShardTimeOut`",
                 "`zoracle demo --no-such-flag`", "`zoracle demos`", "docs/no-such-page.md", "`zo.History.from_file`"):
        assert name_problems(GOOD.replace("`zo.estimate_gradient`", name)), name
