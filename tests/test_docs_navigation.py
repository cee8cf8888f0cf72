"""The training guide as a reader navigates it: each topic is a heading, which MkDocs' table of
contents, a search engine and a reader scanning the page see, not a paragraph led by a bold phrase
(training.md's first 920 lines were one section of 16 such paragraphs), and every section that
zoracle's messages send a user to ("docs/training.md, "Noisy black boxes"") is a heading of its
page. Reads the pages and zoracle's source; no site build, no program run."""

from __future__ import annotations

import ast
import re

from test_docs_links import DOCS, ROOT, _names, _norm, headings, plain, prose


def bold_led_paragraphs(text: str) -> list:
    """The paragraphs of a page's prose (not list items, headings or code) that open with a bold
    phrase, as (line, the phrase)."""
    text = prose(text)
    out = []
    for m in re.finditer(r"(?:^|\n[ \t]*\n)(\*\*([^*\n]+)\*\*)", text):
        out.append((text.count("\n", 0, m.start(1)) + 1, m.group(2)))
    return out


def test_bold_led_paragraphs_are_found():
    page = "# P\n\n**A topic.** Its text.\n\n- **A list item.** Not a topic.\n\nText with **bold** inside.\n"
    assert bold_led_paragraphs(page) == [(3, "A topic.")]


def test_the_training_guides_topics_are_headings():
    text = (DOCS / "training.md").read_text(encoding="utf-8")
    assert bold_led_paragraphs(text) == []
    names = {_norm(plain(h)) for h in headings(text)}
    for topic in ["What `train` takes", "Following a run through `logging`", "Metrics beside the loss",
                  "Noisy black boxes", "Short budgets: `zo.recipes.short_budget`",
                  "What a run queries besides its estimates", "What it returns", "Checkpoints and resume",
                  "Preemption (SLURM, Kubernetes)", "Going on otherwise"]:
        assert _norm(plain(topic)) in names, topic


def messages_naming_sections() -> list:
    """(source file, page, section) for each ``docs/PAGE.md, "Section"`` in zoracle's strings."""
    out = []
    for path in sorted((ROOT / "zoracle").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for m in re.finditer(r"([\w-]+\.md), (?:\"([A-Z][^\"\n]*)\"|'([A-Z][^'\n]*)')", node.value):
                    out.append((path.relative_to(ROOT).as_posix(), m.group(1), m.group(2) or m.group(3)))
    return out


def test_every_section_a_message_names_is_a_heading():
    found = messages_naming_sections()
    assert ("training.md", "Metrics beside the loss") in {(p, s) for _, p, s in found}
    bad = []
    for source, page, section in found:
        names = {_norm(plain(h)) for h in headings((DOCS / page).read_text(encoding="utf-8"))}
        if not _names(section, names):
            bad.append(f"{source}: {page}, \"{section}\" is no heading of {page}")
    assert bad == [], "\n".join(bad)
