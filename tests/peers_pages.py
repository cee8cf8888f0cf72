"""The study against evolution strategies is two pages: docs/peers.md (the summary) and docs/peers-study.md
(the runs, tables and commands). Tests that check a quote or a table against the saved results read both."""

from __future__ import annotations

import io
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ("peers.md", "peers-study.md")


def open_peers() -> io.StringIO:
    """Both pages' text, summary first, as one file-like object (``with open_peers() as f``)."""
    texts = []
    for name in PAGES:
        with open(os.path.join(ROOT, "docs", name), encoding="utf-8") as f:
            texts.append(f.read())
    return io.StringIO("\n".join(texts))
