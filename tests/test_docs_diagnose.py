"""The warnings that docs/training.md's "When a run does not learn" quotes, as a run prints them:
a reader searches the page for the text of the warning they got."""
import re
import warnings
from pathlib import Path

import numpy as np

import zoracle as zo

SECTION = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def quoted(start: str) -> re.Pattern:
    """The section's bold quote that begins with ``start``, as a pattern: E and N any number."""
    text = SECTION.read_text(encoding="utf-8").split("## When a run does not learn", 1)[1].split("\n## ", 1)[0]
    quote = next(q for q in re.findall(r"\*\*`([^`]+)`\*\*", text) if q.startswith(start))
    parts = re.split(r"\b([EN])\b", quote)
    return re.compile("".join(r"\d+" if part in ("E", "N") else re.escape(part) for part in parts))


def test_the_quote_of_the_all_zero_epoch_warning_is_its_text():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        zo.train(lambda x: 1.0, np.zeros(3), epochs=2, steps_per_epoch=3, progress=False, rng=0)  # never changes
    messages = [str(w.message) for w in caught]
    assert any("every gradient estimate of epoch" in m for m in messages), messages
    pattern = quoted("every gradient estimate of epoch")
    assert any(pattern.search(m) for m in messages), (pattern.pattern, messages)


def test_the_quote_of_the_still_params_warning_is_its_text():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # updates of 1e-12 at params of 1e8: rounded away
        zo.train(lambda x: float(np.sum(x)) * 1e-3, np.full(3, 1e8), epochs=1, steps_per_epoch=6,
                 optimizer=zo.sgd(1e-9), progress=False, rng=0)
    messages = [str(w.message) for w in caught]
    pattern = quoted("the params did not change")
    assert any(pattern.search(m) for m in messages), (pattern.pattern, messages)
