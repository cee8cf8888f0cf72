"""docs/troubleshooting.md quotes each message's first words and sends the reader to the section
that explains it. tests/test_troubleshooting.py checks that some stable words of every warning are
on the page; these check what it does not: every form of a message a user may get starts as the
page quotes it (the divergence error's three forms, the coarse-loss warning read from the values),
and an entry's link lands on a section that speaks of its cause. Also the drift arithmetic that
docs/training.md 'Drift, spikes and hangs' states, against an estimate."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

import zoracle as zo

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "troubleshooting.md"


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("`", "")).strip().lower()


def _slug(heading: str) -> str:
    h = re.sub(r"[^\w\s-]", "", re.sub(r"[`*]", "", heading).lower())
    return re.sub(r"\s+", "-", h.strip())


def _section(page: str, anchor: str | None) -> str:
    """The text under ``anchor``'s heading, up to the next heading of its level or above; without an
    anchor, the page's text before its first ``##`` heading."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    if anchor is None:
        return text.split("\n## ", 1)[0]
    heads = [(m.start(), len(m.group(1)), m.group(2)) for m in re.finditer(r"^(#+) (.*)$", text, re.M)]
    for i, (pos, level, title) in enumerate(heads):
        if _slug(title) == anchor:
            ends = [p for p, lv, _ in heads[i + 1:] if lv <= level]
            return text[pos:ends[0] if ends else len(text)]
    raise AssertionError(f"{page}#{anchor}: no such section")


def _entry(words: str) -> str:
    """The troubleshooting entry whose heading holds ``words`` (its heading and text)."""
    found = [e for e in PAGE.read_text(encoding="utf-8").split("\n### ") if words in e.split("\n", 1)[0]]
    assert len(found) == 1, words
    return found[0]


def test_every_form_of_the_divergence_error_is_quoted_on_the_page():
    """`training diverged at step … (epoch …): …` has three endings; a run that diverges by growth
    (the usual one: a spike, a drift) raised the `max|params| grew to` one, not on the page."""
    tree = ast.parse((ROOT / "zoracle" / "_run_loop.py").read_text(encoding="utf-8"))
    forms = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
            if parts and parts[0].startswith("training diverged at step "):
                tail = next(p for p in parts if p.startswith("): "))[3:]
                forms.append(re.split(r"[;(]", tail)[0].strip())
    assert sorted(forms) == ["max|params| grew to", "params became non-finite",
                             "the gradient estimate is non-finite"]
    errors = _norm(PAGE.read_text(encoding="utf-8").split("\n## The errors", 1)[1].split("\n## ", 1)[0])
    for words in forms:
        assert _norm(words) in errors, words


@pytest.mark.parametrize("words", ["are multiples of", "carry only", "are whole numbers"])
def test_the_coarse_loss_warning_read_from_the_values_starts_as_quoted(words):
    """A loss judged by its values (rounded, a float16 model's float, a mean of whole numbers) warns
    `estimate_gradient: the oracle's losses <words> …`, not `… returns float32 losses`."""
    assert any(s.startswith(words) for s in _strings(ROOT / "zoracle" / "_grid.py"))
    heading = _norm(_entry("estimate_gradient: the oracle").split("\n", 1)[0])
    assert _norm("estimate_gradient: the oracle's losses are multiples of") in heading
    assert _norm(words) in heading


def test_a_mean_of_whole_numbers_warns_as_the_page_quotes():
    rng = np.random.default_rng(0)
    W, x0 = rng.standard_normal((5, 4)), rng.standard_normal(4)

    def loss(x):  # minus the mean of 5 whole-number returns
        return -float(np.mean(np.floor(100.0 * (1.0 + np.tanh(W @ x)))))

    with pytest.warns(UserWarning) as rec:
        zo.estimate_gradient(loss, x0, zo.CGE(mu=0.01), rng=0)
    text = next(str(w.message) for w in rec if "resolves a partial derivative" in str(w.message))
    assert text.startswith("estimate_gradient: the oracle's losses are multiples of "), text
    assert "estimate_gradient: the oracle's losses are multiples of" in PAGE.read_text(encoding="utf-8")


def _strings(path: Path) -> list:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


#: an entry's heading words -> a phrase the section its links name must hold (what the reader came for)
LINKED = {
    "through a copy that vectorized full forwards do not reach": "functional_call",
    "TorchOracle: loss_fn raised on half of the batch": "raises on half the batch",
    "TorchOracle: torch.func.vmap failed": "torch.func.vmap",
    "DaskExecutor: restarting worker(s)": "without a nanny cannot be restarted",
    "its plain call is not deterministic": "drifts with time",
}


@pytest.mark.parametrize("heading", sorted(LINKED))
def test_an_entry_links_to_a_section_that_explains_it(heading):
    links = re.findall(r"\]\(([\w/.-]+\.md)(?:#([\w-]+))?\)", _entry(heading))
    assert links, heading
    held = [_norm(_section(page, anchor or None)) for page, anchor in links]
    assert any(_norm(LINKED[heading]) in text for text in held), (heading, links)


class _Drifting:
    """A constant loss read by a sensor whose reading rises ``c`` a reading: the estimate is the drift alone."""

    def __init__(self, c):
        self.c, self.t = c, 0

    def __call__(self, x):
        self.t += 1
        return 1.0 + self.c * self.t


def test_the_drift_each_cge_partial_carries_is_as_the_training_guide_states():
    n, c, mu = 5, 1e-3, 0.1
    fwd = zo.estimate_gradient(_Drifting(c), np.zeros(n), zo.CGE(mu=mu), rng=0).grad
    np.testing.assert_allclose(fwd, c * np.arange(1, n + 1) / mu, rtol=1e-6)  # c * i / mu
    central = zo.estimate_gradient(_Drifting(c), np.zeros(n), zo.CGE(mu=mu, scheme="central"), rng=0).grad
    np.testing.assert_allclose(central, np.full(n, -c * n / (2 * mu)), rtol=1e-6)  # -c * n / (2 * mu)
    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    assert "partial derivative carries `c * i / mu`" in text
    assert "so each carries `-c * n / (2 * mu)`" in text
