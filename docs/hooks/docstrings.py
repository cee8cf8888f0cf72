"""MkDocs hook: docstrings are written for Sphinx-style readers (numpy style, with roles and
``.. math::``), but the API pages are Markdown, which printed them raw: ``:func:certify``,
``:class:~zoracle.ArgumentError``, ``.. math:: \\hat g = ...``.

This hook drops the role names (``:func:`certify``` shows as ``certify``; a leading ``~``
shows the last dotted part, as Sphinx does) and shows a ``.. math::`` formula as a code block.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:func|class|meth|attr|mod|exc|data|obj):<code>(~?)([^<]*)</code>")
MATH = re.compile(r"<p>\.\. math::[ \t]*\n?(.*?)</p>", re.S)


def _role(m) -> str:
    name = m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)
    return f"<code>{name}</code>"


def _math(m) -> str:
    lines = m.group(1).splitlines()
    indent = min((len(ln) - len(ln.lstrip()) for ln in lines if ln.strip()), default=0)
    return "<pre><code>" + "\n".join(ln[indent:] for ln in lines).strip() + "</code></pre>"


def on_page_content(html, page, config, files):
    return MATH.sub(_math, ROLE.sub(_role, html))
