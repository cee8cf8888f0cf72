"""The training guide as a reader navigates it: each topic is a heading, which MkDocs' table of
contents, a search engine and a reader scanning the page see, not a paragraph led by a bold phrase
(training.md's first 920 lines were one section of 16 such paragraphs), and every section that
zoracle's messages send a user to ("docs/training.md, "Noisy black boxes"") is a heading of its
page. Reads the pages and zoracle's source; no site build, no program run."""

from __future__ import annotations

import ast
import re

import pytest

from test_docs_links import DOCS, ROOT, _names, _norm, headings, plain, prose


def bold_led_paragraphs(text: str) -> list:
    """The paragraphs of a page's prose (not list items, headings or code) that open with a bold
    phrase, as (line, the phrase)."""
    text = prose(text)
    out = []
    for m in re.finditer(r"(?:^|\n[ \t]*\n)(\*\*((?:[^*\n]|\n(?![ \t]*\n))+?)\*\*)", text):
        out.append((text.count("\n", 0, m.start(1)) + 1, re.sub(r"\s+", " ", m.group(2))))
    return out


def test_bold_led_paragraphs_are_found():
    page = ("# P\n\n**A topic.** Its text.\n\n- **A list item.** Not a topic.\n\nText with **bold** inside.\n\n"
            "**A topic whose bold phrase\nruns on.** Its text.\n")
    assert bold_led_paragraphs(page) == [(3, "A topic."), (9, "A topic whose bold phrase runs on.")]


def test_the_summary_pages_topics_are_headings():
    """concepts.md, peers.md and sol.md: each topic a heading (peers.md had 8 bold-led paragraphs, one
    bold phrase over two lines; sol.md 4 and no heading at all; concepts.md's "Oracle capabilities"
    276 lines without a subheading), and the sections other pages and tests name are among them."""
    topics = {
        "concepts.md": ["Read-only arguments: `coords`, features and `params`",
                        "One call for every block: `fused_coordinate_losses`", "A least-squares oracle",
                        "A two-layer MLP on minibatches", "The step in the params' dtype, and `compute_dtype`",
                        "Coarse losses: narrow types and rounded values", "Checking an oracle: `check_oracle`",
                        "The check at a run's first estimate"],
        "peers.md": ["In short: where each method wins",
                     "Claim: coordinate-wise estimation with pruning scales to deep models where random search "
                     "does not", "Claim: sparse CGE beats RGE at the same query budget",
                     "Where each method wins, per query", "Where each method wins, per second",
                     "The FLOP limit is below 10x up to d = 13k", "What changed DeepZero's result", "Caveats"],
        "sol.md": ["The simulator", "Batching is the whole trick", "Methods", "Default run",
                   "What differs from the paper, honestly"],
    }
    for page, names in topics.items():
        text = (DOCS / page).read_text(encoding="utf-8")
        assert bold_led_paragraphs(text) == [], page
        found = {_norm(plain(h)) for h in headings(text)}
        for topic in names:
            assert _norm(plain(topic)) in found, (page, topic)
    # "Oracle capabilities" has subheadings, the check of a run's first estimate among them
    concepts = (DOCS / "concepts.md").read_text(encoding="utf-8")
    section = concepts.split("## Oracle capabilities\n")[1].split("\n## ")[0]
    assert len(re.findall(r"^### ", prose(section), re.M)) >= 8


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
    """(source file, page, section) for each ``docs/PAGE.md, "Section"`` in the strings of zoracle, its adapters and apps."""
    out = []
    for path in sorted(p for top in ("zoracle", "adapters", "apps") for p in (ROOT / top).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for m in re.finditer(r"([\w-]+\.md), (?:\"([A-Z][^\"\n]*)\"|'([A-Z][^'\n]*)')", node.value):
                    out.append((path.relative_to(ROOT).as_posix(), m.group(1), m.group(2) or m.group(3)))
    return out


@pytest.mark.slow
def test_every_section_a_message_names_is_a_heading():
    found = messages_naming_sections()
    assert ("training.md", "Metrics beside the loss") in {(p, s) for _, p, s in found}
    bad = []
    for source, page, section in found:
        names = {_norm(plain(h)) for h in headings((DOCS / page).read_text(encoding="utf-8"))}
        if not _names(section, names):
            bad.append(f"{source}: {page}, \"{section}\" is no heading of {page}")
    assert bad == [], "\n".join(bad)


def test_the_studys_runs_of_bold_led_paragraphs_are_headings():
    """peers-study.md: each run of bold-led paragraphs under one heading (eight under "At the issue's
    budget: 150,000 queries", five under "Methods, models and protocol") is a run of headings, the
    sections the pages quote ("The class-major loss", "Adam's momentum at 79 queries per weight")
    among them. A lone bold lead is left (no run); so is "Per second, side by side", the name of a
    section of its own that the site's and GitHub's #per-second-side-by-side lead to."""
    text = (DOCS / "peers-study.md").read_text(encoding="utf-8")
    left = {_norm(b) for _, b in bold_led_paragraphs(text)}
    names = {_norm(plain(h)) for h in headings(text)}
    for topic in ["Models", "Protocol", "Budget", "Machine", "Commands", "Is it the settings?",
                  "The rate against the queries per weight: 0.085 over its root, within 0.03-0.1 "
                  "(`zo.recipes.default_lr`)", "Adam's momentum at 79 queries per weight",
                  "And between, to place the line", "Looking for DeepZero's lead on digits at 150,000 queries",
                  "Averaging the weights, and the shape of the learning rate", "A guard: `fill_small_blocks`",
                  "ZO-GraSP scored again during the run", "SNES's spread, split the same way",
                  "A step in proportion to the partial", "The largest size at 150,000 queries",
                  "d of about 2k on an AVX2 machine", "Under zoracle's allocator policy",
                  "The class-major loss (commit ed9e90e)",
                  "The run's own mask, and one call for every block (commits dc32046, 481b115, 007326e, 4afed2d "
                  "and 5d4c67c)", "The largest size at 150,000 queries, timed again",
                  "Where the step's time goes, counted (commits 3a42adb to 22a5b73)"]:
        assert _norm(plain(topic)) in names and _norm(topic) not in left, topic
    assert len(left) <= 5, sorted(left)
    # the one section of that name is still the ## one the links lead to
    assert [h for h in headings(text) if _norm(plain(h)) == "per second, side by side"] == ["Per second, side by side"]
