"""MkDocs hook: the site's home page is README.md, so the README's first screen is the site's.

``docs/index.md`` is a stub; this hook replaces its text with README.md and rewrites the
README's links into ``docs/`` (``docs/training.md``) to site-relative ones (``training.md``),
so that strict mode checks them like every other link.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "index.md":
        return markdown
    text = README.read_text(encoding="utf-8")
    return re.sub(r"\]\(docs/", "](", text)
