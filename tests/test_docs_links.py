"""The documentation as a reader navigates it: every relative link and #anchor of README.md and
docs/ lands somewhere (on the MkDocs site and, outside the API pages, on GitHub, whose heading
ids differ: ``{ #id }`` is an MkDocs attribute that GitHub shows as text), every section named
in quotes ("see "Looking for a lead"") is a section of the page or of a page it links to, and
every API name, keyword argument and command-line flag the prose shows in backticks or
commands exists with that spelling.

No site build (test_docs.py builds it where the docs extra is installed) and no program run:
these read the pages and import zoracle and the adapters whose frameworks are installed.
"""

from __future__ import annotations

import ast
import functools
import html
import importlib
import importlib.util
import inspect
import re
import unicodedata
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```[ \t]*$", re.S | re.M)
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
ATTR_ID = re.compile(r"\s*\{:?\s*#([\w-]+)[^}]*\}\s*$")
HTML_ID = re.compile(r"<(\w+)\b[^>]*?\b(id|name)=[\"']([^\"']+)[\"']")


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def prose(text: str) -> str:
    """The page without its fenced code blocks (lines kept, so line numbers stay)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def headings(text: str) -> list:
    """The raw text of each ATX heading outside code blocks, in order."""
    return [m.group(1) for m in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", prose(text), re.M)]


def plain(heading: str) -> str:
    """A heading's text as rendered: no links' targets, code marks, emphasis or HTML tags."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    return html.unescape(text.replace("`", "").replace("**", "").replace("__", "")).strip()


def mkdocs_slug(text: str) -> str:
    """Python-Markdown's toc slugify (MkDocs' default): ASCII, word characters, runs of spaces
    and hyphens as one hyphen."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def github_slug(text: str) -> str:
    """GitHub's heading ids: lower case, punctuation dropped, each space a hyphen (not merged)."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _unique(slugs: list, sep: str) -> set:
    seen, out = {}, set()
    for s in slugs:
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}{sep}{n}")
    return out


def anchors(page: Path, site: bool) -> set:
    """The ids a link may name on ``page``: on the MkDocs site (``site``) or on GitHub."""
    text = page.read_text(encoding="utf-8")
    out = {m.group(3) for m in HTML_ID.finditer(text) if m.group(2) == "id" or m.group(1) == "a"}
    if site:
        explicit = [ATTR_ID.search(h) for h in headings(text)]
        out |= {m.group(1) for m in explicit if m}
        out |= _unique([mkdocs_slug(plain(h)) for h, m in zip(headings(text), explicit) if not m], "_")
        out |= set(re.findall(r"^::: ([\w.]+)", text, re.M))  # mkdocstrings: the object's path
    else:
        out |= _unique([github_slug(plain(h)) for h in headings(text)], "-")
    return out


def links(page: Path) -> list:
    """(line, target) for every relative link and image of a page (not web addresses)."""
    text = prose(page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", lambda m: " " * len(m.group(0)), text)
    out = []
    for m in LINK.finditer(text):
        target = m.group(1)
        if not re.match(r"[a-z]+:", target):
            out.append((_line(text, m.start()), target))
    return out


def resolve(page: Path, target: str):
    """(file, anchor) a page's link lands on; README's links as GitHub reads them."""
    path, _, anchor = target.partition("#")
    return (page.parent / path).resolve() if path else page, anchor


def test_slugs_are_the_renderers():
    # MkDocs merges a run of spaces and hyphens; GitHub makes each space a hyphen
    assert mkdocs_slug("`zoracle demo` { #demo }") == "zoracle-demo-demo"
    assert github_slug(plain("`zoracle demo` { #demo }")) == "zoracle-demo--demo-"
    assert mkdocs_slug("Issue 13's acceptance, from the saved results") == "issue-13s-acceptance-from-the-saved-results"
    assert github_slug("A / B: c_d") == "a--b-c_d" and mkdocs_slug("A / B: c_d") == "a-b-c_d"
    assert mkdocs_slug("The fill as the default from 1,400 steps") == "the-fill-as-the-default-from-1400-steps"
    assert _unique(["a", "a", "b"], "_") == {"a", "a_1", "b"}


def test_every_relative_link_lands_on_a_file_the_site_has():
    """A README link works on GitHub from the repository root and on the site after the hook
    rewrites ``docs/`` (docs/hooks/readme.py): so it points into docs/. A page's link stays
    inside docs/ (MkDocs strict refuses a link out of it), and an image exists."""
    bad = []
    for page in PAGES:
        for line, target in links(page):
            where = f"{_rel(page)}:{line}: ({target})"
            path, anchor = resolve(page, target)
            if not path.is_file():
                bad.append(f"{where}: no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
            elif page.name == "README.md" and page.parent == ROOT and not target.split("#")[0].startswith("docs/"):
                bad.append(f"{where}: the site's home page has only docs/ (write a web address)")
            elif page.parent != ROOT and not path.is_relative_to(DOCS):
                bad.append(f"{where}: outside docs/, not on the site")
    assert bad == [], "\n".join(bad)


def test_every_anchor_is_a_heading_of_its_page_on_the_site_and_on_github():
    """An #anchor names an id of the page it points at: an MkDocs heading slug, a ``{ #id }`` or
    an ``<a id>``. Outside the API pages (rendered from docstrings on the site only) it must also
    be one GitHub makes: a review found the README's links to benchmarks.md#cge-speed and
    #allocator, ids given by ``{ #cge-speed }``, landing at the top of the page on GitHub."""
    bad = []
    for page in PAGES:
        for line, target in links(page):
            path, anchor = resolve(page, target)
            if not anchor or not path.is_file():
                continue
            where = f"{_rel(page)}:{line}: ({target})"
            if anchor not in anchors(path, site=True):
                bad.append(f"{where}: no #{anchor} on the site")
            if not path.is_relative_to(DOCS / "api") and anchor not in anchors(path, site=False):
                bad.append(f"{where}: no #{anchor} on GitHub (an <a id=\"{anchor}\"></a> in the heading gives both)")
    assert bad == [], "\n".join(bad)


# ---- sections named in quotes ------------------------------------------------------------

def _norm(name: str) -> str:
    return re.sub(r"\s+", " ", name.replace("\u2019", "'")).strip().strip(".,;:").lower()


@functools.lru_cache(maxsize=None)
def section_names(page: Path) -> frozenset:
    """What a reader can find on a page by a quoted name: its headings, the bold lead of a
    paragraph or list item (``**Six more seeds.**``), a paragraph that is one line ending in a
    colon (``Why the FLOP limit is low:``), and a table's cells (a quoted row or column label)."""
    text = prose(page.read_text(encoding="utf-8"))
    names = [plain(ATTR_ID.sub("", h)) for h in headings(text)]
    names += re.findall(r"^[ \t]*(?:[-*][ \t]+|\d+\.[ \t]+)?\*\*(.+?)\*\*", text, re.M | re.S)
    names += re.findall(r"(?:^|\n)[ \t]*\n([^\n|#`]+):[ \t]*\n[ \t]*\n", text)
    for row in re.findall(r"^[ \t]*\|(.+)\|[ \t]*$", text, re.M):
        names += [c for c in row.split("|") if c.strip() and set(c.strip()) - set("-: ")]
    return frozenset(_norm(plain(n)) for n in names)


def _names(quote: str, names: set) -> bool:
    """A quote names a section exactly or by its head, up to a colon, comma, period or
    parenthesis ("Looking for a lead" for "Looking for a lead: 30 more variants ...")."""
    q = _norm(quote)
    return any(n == q or (n.startswith(q) and n[len(q):len(q) + 2] in (": ", ", ", ". ", " (", ":", ",", "."))
               for n in names)


#: A page that sends its reader to another for every quoted name it does not hold itself
#: ("Every section named in quotes that is not on this page ... is in the study in detail").
PAIRED = {"peers.md": ["peers-study.md"], "peers-study.md": ["peers.md"]}

QUOTE = re.compile(r"[\"\u201c]([A-Z][^\"\u201d\n]*(?:\n[^\"\u201d\n]+)?)[\"\u201d]")
#: a quote the sentence defines (""Under 10x" marks where ...") is a label, not a reference
DEFINED = re.compile(r"(?:\*\*)?\s+(?:means|marks|counts)\b")


def quoted_references(page: Path) -> list:
    """(line, quote, pages it may be on) for each capitalized quote of two words or more in a
    page's prose (code spans and code blocks aside)."""
    raw = page.read_text(encoding="utf-8")
    text = re.sub(r"`[^`]*`", lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose(raw))
    out = []
    for para in re.finditer(r"(?:[^\n]+\n?)+", text):
        block = para.group(0)
        linked = {resolve(page, t)[0] for _, t in links_in(block)}
        where = [page, *linked, *(DOCS / p for p in PAIRED.get(page.name, []))]
        for m in QUOTE.finditer(block):
            quote = re.sub(r"\s+", " ", m.group(1)).strip()
            if len(quote.split()) >= 2 and not DEFINED.match(block, m.end()):
                out.append((_line(text, para.start() + m.start()), quote, [p for p in where if p.suffix == ".md"]))
    return out


def links_in(block: str) -> list:
    return [(0, m.group(1)) for m in LINK.finditer(block) if not re.match(r"[a-z]+:", m.group(1))]


def test_quoted_section_names_are_found_as_meant(tmp_path):
    names = {_norm(n) for n in ["Looking for a lead: 30 more variants at the largest size",
                                "Where the step's time goes, counted (commits 3a42adb to 22a5b73)"]}
    assert _names("Looking for a lead", names) and _names("Where the step\u2019s time goes, counted", names)
    assert not _names("Looking for a", names) and not _names("The fill as the default", names)
    page = ROOT / "docs" / "peers.md"
    assert "why the flop limit is low" in section_names(page)  # a one-line paragraph ending in a colon
    assert "six more seeds" in section_names(ROOT / "docs" / "peers-study.md")  # a bold lead
    # a renamed heading: the quote that sends readers to it is found and named nowhere
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n## The fill as the default from 1,400 steps\n\nAs in \"The fill by default\" and\n"
                    "\"The fill as the default from 1,400 steps\"; \"No spread\" means equal.\n", encoding="utf-8")
    refs = quoted_references(page)
    assert [(line, q) for line, q, _ in refs] == [(5, "The fill by default"),
                                                  (6, "The fill as the default from 1,400 steps")]
    assert [_names(q, section_names(page)) for _, q, _ in refs] == [False, True]


def test_every_quoted_section_name_is_a_section():
    """A section named in quotes ("see "The fill as the default"") is a heading, bold lead or
    table label of the page itself, of a page its paragraph links to, or (peers.md and
    peers-study.md, as each says) of its companion page: a heading renamed leaves the quotes
    that send readers to it pointing nowhere, which no site build reports."""
    bad = []
    for page in PAGES:
        for line, quote, where in quoted_references(page):
            if not any(_names(quote, section_names(p)) for p in where if p.is_file()):
                bad.append(f"{_rel(page)}:{line}: \"{quote}\" is not a section of "
                           + ", ".join(sorted({_rel(p) for p in where})))
    assert bad == [], "\n".join(bad)


# ---- API names in the prose ----------------------------------------------------------------

MODULES = ("zoracle", "zoracle.executors", "zoracle.recipes", "zoracle.smoothing", "zoracle.testing",
           "zoracle.adapters.torch", "zoracle.adapters.torch_models", "zoracle.adapters.onnx",
           "zoracle.adapters.phiflow")
DOTTED = re.compile(r"(?<![\w.])((?:zo|zoracle|adapters)(?:\.[A-Za-z_]\w*)+)")
CALL = re.compile(r"(?<![\w.])([A-Za-z_][\w.]*)\(")


def code_spans() -> list:
    """(page, line, text, paragraph) of every inline code span in the prose of README.md and
    docs/ (``paragraph``: the line its paragraph starts on), and the object of every ``::: name``
    directive of the API pages."""
    out = []
    for page in PAGES:
        text = prose(page.read_text(encoding="utf-8"))
        for para in re.finditer(r"(?:[^\n]*\S[^\n]*(?:\n|$))+", text):
            start = _line(text, para.start())
            for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", para.group(0)):
                span = re.sub(r"\s+", " ", m.group(1))
                out.append((page, _line(text, para.start() + m.start()), span, start))
        # the API pages' mkdocstrings directives, checked here too where the site is not built
        out += [(page, _line(text, m.start()), m.group(1), 0) for m in re.finditer(r"^::: ([\w.]+)", text, re.M)]
    return out


def _import(name: str):
    """The object a dotted name of the docs names (``zo.`` is zoracle, ``adapters.`` is
    zoracle.adapters); None where its framework is not installed; AttributeError if absent."""
    parts = name.split(".")
    parts[:1] = {"zo": ["zoracle"], "adapters": ["zoracle", "adapters"]}.get(parts[0], parts[:1])
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as e:
            if e.name and not e.name.startswith("zoracle"):
                return None  # torch, onnxruntime or phi missing: a core-only install
            continue
        except ImportError:
            return None  # an adapter's "needs torch" message
        for attr in parts[i:]:
            if inspect.isclass(obj) and not hasattr(obj, attr) and _has(obj, attr):
                return None  # a dataclass field, on instances only
            obj = getattr(obj, attr)
        return obj
    raise AttributeError(name)


@functools.lru_cache(maxsize=None)
def public_callables() -> dict:
    """Bare name -> object for the public callables (and their public methods' names)."""
    out = {}
    for module in MODULES:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for name in mod.__all__:
            obj = getattr(mod, name)
            if callable(obj):
                out.setdefault(name, obj)
    return out


def _source_parameters(module: str) -> set:
    """The parameter names of the public callables of ``module``, whose framework is not
    installed here, read from its source and the private modules it imports from (a
    dataclass's fields are its constructor's parameters), so a core-only install still knows
    ``TorchOracle``'s keywords."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return set()
    main = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    trees = [main] + [ast.parse((Path(spec.origin).parent / f"{node.module}.py").read_text(encoding="utf-8"))
                      for node in main.body if isinstance(node, ast.ImportFrom) and node.level == 1
                      and node.module and (Path(spec.origin).parent / f"{node.module}.py").is_file()]
    public = {n for node in main.body if isinstance(node, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
              for n in ast.literal_eval(node.value)}

    def names(fn) -> set:
        a = fn.args
        return {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs} - {"self", "cls"}

    out = set()
    for tree in trees:
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in public:
                out |= names(node)
            elif isinstance(node, ast.ClassDef) and node.name in public:
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                            item.name == "__init__" or not item.name.startswith("_")):
                        out |= names(item)
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        out.add(item.target.id)
    return out


def _parameters(obj):
    """(names, takes **kwargs, names without a default) of a callable; None where it has no
    signature to read."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return None
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in ("self", "cls")]
    return ([p.name for p in named], any(p.kind is p.VAR_KEYWORD for p in params),
            [p.name for p in named if p.default is p.empty])


def _arguments(span: str, start: int) -> str:
    """The text between the parenthesis opened just before ``start`` and its match."""
    depth, i = 1, start
    while i < len(span) and depth:
        depth += {"(": 1, ")": -1}.get(span[i], 0)
        i += 1
    return span[start:i - 1]


def _top_level(args: str) -> list:
    parts, depth, cur = [], 0, ""
    for ch in args:
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return parts + [cur.strip()] if cur.strip() else parts


#: keyword arguments the prose shows for other libraries' calls: torch's, subprocess's, SciPy's
#: (``abs_step``; ``bounds``, ``maxfev``, ``method``, ``jac``, ``options``, ``disp``, which ``train``
#: refuses naming its way: docs/training.md's "Coming from SciPy"), Dask's ``LocalCluster``
#: and ``ray.init``'s (``security``, ``_temp_dir``: through the executors' ``**kwargs``), torchvision's
#: DenseNet's (``memory_efficient``: docs/pytorch.md's untraceable submodule)
FOREIGN_KEYWORDS = {"reduction", "track_running_stats", "log_to_driver", "drop_last", "capture_output", "check",
                    "inplace", "requires_grad", "assign", "cwd", "env", "args", "output", "training", "min", "max",
                    "threads_per_worker", "broadcast", "alternative", "dynamo", "dtype", "update_stats", "target",
                    "abs_step", "bounds", "maxfev", "method", "jac", "options", "disp", "security",
                    "_temp_dir", "memory_efficient"}


def _has(cls, attr: str) -> bool:
    return (hasattr(cls, attr) or attr in getattr(cls, "__dataclass_fields__", {})
            or attr in getattr(cls, "__annotations__", {}))


def api_problems(spans) -> list:
    """What is wrong with the API names of ``spans``, as :func:`code_spans` gives them."""
    calls = public_callables()
    every_parameter = {n for obj in calls.values() for n in (_parameters(obj) or ([],))[0]}
    for obj in calls.values():
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                fn = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
                if not attr.startswith("_") and callable(fn):
                    every_parameter |= set((_parameters(fn) or ([],))[0])
    for module in MODULES:  # an adapter whose framework is missing: its keywords from its source
        try:
            importlib.import_module(module)
        except ImportError:
            every_parameter |= _source_parameters(module)
    bad = []
    # a paragraph that writes out a signature (``zo.sgd(lr, *, momentum, ...)``) lists
    # signatures: a call there whose arguments are all names shows the parameters' names
    listing = {(page, para) for page, _, span, para in spans if re.search(r"\(.*[(,] ?\*,", span)}
    for page, line, span, para in spans:
        where = f"{_rel(page)}:{line}: `{span}`"
        if span.startswith(("python ", "zoracle ", "pip ", "--")) or "zo.NAME" in span:
            continue  # commands (test_docs_commands) and a placeholder
        for name in DOTTED.findall(span):
            try:
                _import(name)
            except AttributeError:
                bad.append(f"{where}: no {name}")
        for cls, attr in re.findall(r"(?<![\w.])([A-Z]\w+)\.([A-Za-z_]\w*)", span):  # TorchOracle.bind
            if inspect.isclass(calls.get(cls)) and not _has(calls[cls], attr):
                bad.append(f"{where}: {cls} has no {attr}")
        for m in CALL.finditer(span):
            name, args = m.group(1), _arguments(span, m.end())
            try:
                obj = _import(name) if DOTTED.fullmatch(name) else calls.get(name)
            except AttributeError:
                continue  # reported above
            sig = _parameters(obj) if obj is not None else None
            if sig is None:
                continue
            names, var_kw, required = sig
            parts = _top_level(args)
            for part in parts:
                kw = re.match(r"(\w+)\s*=(?!=)", part)
                if kw and kw.group(1) not in names and not var_kw:
                    bad.append(f"{where}: {name}() has no argument {kw.group(1)}= (it takes {', '.join(names)})")
            shown = [re.match(r"\w+", p).group(0) for p in parts if re.match(r"\w+", p)]
            if "*" in parts and shown != names:  # a signature written out: its names in order
                bad.append(f"{where}: {name}'s signature is ({', '.join(names)})")
            elif ((page, para) in listing and parts and all(re.fullmatch(r"[a-z_]\w*", p) for p in parts)
                  and (shown != names[:len(shown)] or not set(required) <= set(shown))):
                bad.append(f"{where}: {name}'s parameters are ({', '.join(names)})")
        # a keyword on its own (`fill_small_blocks=True`): an argument of some public callable
        if re.fullmatch(r"[a-z_]\w*=\S*(?:, [a-z_]\w*=\S*)*", span):
            for kw in re.findall(r"([a-z_]\w*)=", span):
                if kw not in every_parameter and kw not in FOREIGN_KEYWORDS:
                    bad.append(f"{where}: no public callable takes {kw}=")
    return bad


def test_every_api_name_in_the_prose_exists_with_that_spelling():
    """``zo.X``, ``zoracle.x.Y`` and ``adapters.x.Y`` in backticks resolve; a call shown with
    keywords (``zo.recipes.short_budget(fill_small_blocks=True)``, ``TorchOracle(blocks="none")``)
    uses keywords its callable takes; a signature written out (``zo.sgd(lr, *, momentum, ...)``)
    is the signature; a keyword shown alone is an argument of some public callable."""
    bad = api_problems(code_spans())
    assert bad == [], "\n".join(bad)


def test_the_api_check_sees_a_misspelt_name_keyword_or_signature():
    page = ROOT / "docs" / "training.md"
    spans = ["zo.reuse_freed_memory()", "zo.recipes.short_budget(fill_small_blocks=True)", "TorchOracle.bind",
             "zo.sgd(lr, *, momentum, nesterov, weight_decay)", "fill_small_blocks=True", "zo.TrainResult.nfev",
             "zo.linear_warmup(schedule, warmup_steps)", "zo.Optimizer(init, update, lr, name, config)"]
    assert api_problems([(page, 1, s, 1) for s in spans]) == []
    wrong = ["zo.reuse_free_memory()", "zo.recipes.short_budget(fill_small_block=True)", "zo.Minibatches.bind",
             "zo.sgd(lr, *, momentum, weight_decay)", "fill_small_block=True", "zoracle.executors.ShardTimeOut",
             "zo.linear_warmup(schedule, n)", "zo.Optimizer(init, update, lr)"]
    found = api_problems([(page, i, s, 1) for i, s in enumerate(wrong)] + [(page, 99, spans[3], 1)])
    assert sorted({int(b.split(":")[1]) for b in found}) == list(range(len(wrong))), found
    # outside a paragraph of signatures, a call's arguments are the reader's own names
    assert api_problems([(page, 1, "zo.linear_warmup(schedule, n)", 1)]) == []


# ---- command lines -------------------------------------------------------------------------

SCRIPT = re.compile(r"(?<![\w/.-])(?:python3? )?((?:benchmarks|examples)/\w+\.py|zoracle (?:\w+))((?:[ \t]+[^\s;&|#>`]+)*)")


def commands() -> list:
    """(page, line, program, flags) of every command line in the docs, for the benchmark and
    example scripts and ``zoracle COMMAND``: in fenced blocks (continuation lines joined; the
    line of the opening fence) and in inline code."""
    from zoracle.cli import COMMANDS

    out = []
    for page in PAGES:
        raw = page.read_text(encoding="utf-8")
        blocks = [(_line(raw, m.start()), m.group(0)) for m in FENCE.finditer(raw)]
        text = prose(raw)
        blocks += [(_line(text, m.start()), m.group(1)) for m in re.finditer(r"(?<!`)`([^`\n]+)`(?!`)", text)]
        for line, block in blocks:
            for m in SCRIPT.finditer(re.sub(r"\\\n\s*", " ", block)):
                program = m.group(1)
                if program.startswith("zoracle ") and program.split()[1] not in COMMANDS:
                    continue  # prose: "zoracle makes ..."
                flags = [f.split("=")[0] for f in m.group(2).split() if re.match(r"--[\w-]", f)]
                out.append((page, line, program, flags))
    return out


@functools.lru_cache(maxsize=None)
def accepted_flags(program: str) -> frozenset:
    """The options a program defines (its source's ``"--flag"`` literals: no import, no run)."""
    if program.startswith("zoracle "):
        source = (ROOT / "apps" / f"{program.split()[1]}.py").read_text(encoding="utf-8")
    else:
        source = (ROOT / program).read_text(encoding="utf-8")
        via_cli = re.search(r"main\(\[\"(\w+)\"", source)  # examples/sol.py is `zoracle sol`
        if via_cli:
            return accepted_flags(f"zoracle {via_cli.group(1)}")
    flags = set(re.findall(r"[\"'](--[\w-]+)[\"']", source)) | {"--help"}
    if "add_executor_arguments" in source:
        import zoracle.executors as ex

        flags |= set(re.findall(r"--[\w-]+", ex.add_executor_arguments.__doc__))
    return frozenset(flags)


def test_every_command_line_names_flags_its_program_takes():
    """``python benchmarks/peers.py --leads ...`` and ``zoracle demo --methods ...`` as the
    pages write them: each program exists and defines each flag (test_benchmark_arguments
    runs the scripts; this reads them, so it takes no time)."""
    found, bad = commands(), []
    assert len(found) > 100 and {p for _, _, p, _ in found} >= {"benchmarks/peers.py", "zoracle demo"}
    for page, line, program, flags in found:
        where = f"{_rel(page)}:{line}: {program}"
        path = ROOT / ("apps/" + program.split()[1] + ".py" if program.startswith("zoracle ") else program)
        if not path.is_file():
            bad.append(f"{where}: no {path.relative_to(ROOT)}")
            continue
        bad += [f"{where}: no {f} (it takes {', '.join(sorted(accepted_flags(program)))})"
                for f in flags if f not in accepted_flags(program)]
    assert bad == [], "\n".join(bad)


def test_an_adapter_whose_framework_is_missing_still_names_its_keywords():
    """Without torch or PhiFlow (Python 3.10 and 3.13 had no torch wheels) the adapters do not
    import, and `read=False` (ParamInfo's field) and `relative=True` (the SOL oracle's) were
    reported as keywords no public callable takes: their source names them."""
    assert {"read", "blocks"} <= _source_parameters("zoracle.adapters.torch")
    assert "relative" in _source_parameters("zoracle.adapters.phiflow")
    assert "no_such_keyword" not in _source_parameters("zoracle.adapters.torch")
