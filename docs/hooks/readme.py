"""MkDocs hook: the site's home page is README.md, so the README's first screen is the site's,
and its changelog and contributing pages are CHANGELOG.md and CONTRIBUTING.md.

``docs/index.md``, ``docs/changelog.md`` and ``docs/contributing.md`` are stubs; this hook replaces
their text with the root file's and rewrites its links into ``docs/`` (``docs/training.md``) to site-relative ones
(``training.md``), so that strict mode checks them like every other link.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: the site page (a stub in docs/) -> the root file that replaces it
ROOT_PAGES = {"index.md": README, "changelog.md": ROOT / "CHANGELOG.md", "contributing.md": ROOT / "CONTRIBUTING.md"}


def on_page_markdown(markdown, page, config, files):
    source = ROOT_PAGES.get(page.file.src_uri)
    if source is None:
        return markdown
    text = source.read_text(encoding="utf-8")
    return re.sub(r"\]\(docs/", "](", text)
