"""docs/troubleshooting.md has an entry for every warning zoracle gives: a user who meets one
searches the docs for its first words. Each ``warn(...)`` call in zoracle/ and adapters/ is listed
in :data:`SITES` by its file and function, with the stable words of its message (those that hold
whatever the values); the test checks the words against the code (the function's own strings, or
the module that builds the message) and against the page. A warning added without an entry, an
entry whose words left the code, or a page without them fails. Reads source and the page; runs
nothing of zoracle's, except the last tests, which check messages fixed to name their fix."""

from __future__ import annotations

import ast
import re
import shutil
import tokenize
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "troubleshooting.md"

#: "path::function" -> one entry per ``warn(...)`` call in that function, in source order: the
#: message's stable words (a tuple of them for a call whose message has several forms), and the
#: module (or modules) whose strings hold them where the function's own do not (a message built
#: by a helper)
SITES: dict = {
    "adapters/_phiflow_sim.py::reference_trajectories": [("could not be cached at",)],
    "adapters/_torch_batches.py::_warn_fallback": [  # (why the split is off: from the capture, or found later)
        (("every perturbation runs a full forward (no feature reuse)", "a step's parameters are not contiguous"),
         ("adapters/_torch_chain.py", "adapters/_torch_reference.py", "adapters/_torch_layout.py"))],
    "adapters/_torch_batches.py::_full_chunk": [("TorchOracle: torch.func.vmap failed", "adapters/_torch_exact.py")],
    "adapters/_torch_exact.py::_rows_coupled": [("loss_fn raised on half of the batch",)],
    "adapters/_torch_exact.py::_note_whole": [("a speed cost, not an error (the estimates are exact)",)],
    "adapters/_torch_exact.py::full_coordinate_losses": [
        ("TorchOracle: torch.func.vmap failed", "adapters/_torch_exact.py")],
    "adapters/_torch_exact.py::_vmap_off": [("through a copy that vectorized full forwards do not reach",)],
    "adapters/_torch_guards.py::_autocast_off": [("TorchOracle: queried inside torch.autocast(",)],
    "adapters/_torch_repeat.py::_not_repeatable": [("is not repeatable",)],
    "adapters/_torch_repeat.py::_check_full_forward": [("with its in-place activations run out of place",)],
    "adapters/onnx.py::__init__": [("OnnxClassifier: the onnx package is not installed, so",)],
    "adapters/onnx.py::__call__": [("successive calls' inputs differ in", "adapters/_onnx_checks.py"),
                                   ("declares a fixed batch of 1 on input", "adapters/_onnx_checks.py")],
    "adapters/torch.py::__init__": [(("in bfloat16 where the CPU has bfloat16 units", "runs in TF32"),
                                     "adapters/_torch_guards.py")],
    "adapters/torch.py::__call__": [("write buffers in their train-mode forward and then read them",)],
    "zoracle/_ask_tell_run.py::_warn_large": [("AskTell: this estimate asks its",)],
    "zoracle/_cadence.py::warn_rewrites": [("each save rewrites the whole history so far",)],
    "zoracle/_checkpoint.py::_shared_lock": [("its lock file",)],
    "zoracle/_epochs.py::_epoch_batches": [("fewer than `steps_per_epoch`",),
                                           ("it returned for the epoch before",)],
    "zoracle/_epochs.py::_warn_unreplayed_loader": [("returned a DataLoader that shuffles by",)],
    "zoracle/_estimators.py::_warn_coarse": [("resolves a partial derivative only to", "zoracle/_oracle.py"),
                                             ("resolves a partial derivative only to", "zoracle/_grid.py")],
    "zoracle/_executors_cluster.py::_restart": [("DaskExecutor: restarting worker(s)",),
                                                ("may still be inside an abandoned oracle call",)],
    "zoracle/_executors_local.py::_run_locked": [("its plain call at the base point updates the model's own state",)],
    "zoracle/_fastcheck.py::check_fast_paths": [("its plain call is not deterministic", "zoracle/_fastcheck.py"),
                                                ("disagrees with its plain call at", "zoracle/_fastcheck.py")],
    "zoracle/_history.py::column": [("so the column is all NaN",)],
    "zoracle/_malloc.py::reuse_freed_memory": [("is neither 'system'", "zoracle/_malloc.py")],
    "zoracle/_pruning.py::_check_second_point": [("ZO-GraSP's second point params + mu * g lies",)],
    "zoracle/_pruning.py::smart_ratio": [("smart_ratio: linear layers at keep ratio",),
                                         ("smart_ratio: the conv layers kept whole leave",)],
    "zoracle/_resume.py::check": [("was written before checkpoints recorded the batches",),
                                  ("recorded the rows of dict batches",)],
    "zoracle/_run_end.py::_warn_ended_above": [("train: the run ended far above where it started", "zoracle/_diagnose.py")],
    "zoracle/_run_end.py::finish_run": [("train: the oracle could not load the trained parameters into its model",),
                                        ("train: the plot",)],
    "zoracle/_run_loop.py::_update": [("update() must return a state whose `count` is one more",)],
    "zoracle/_run_loop.py::epoch_warnings": [("train: every gradient estimate of epoch",),
                                             ("were 0 to within the loss's rounding at each of the first",
                                              "zoracle/_diagnose.py"),
                                             ("train: the params did not change over", "zoracle/_diagnose.py")],
    "zoracle/_run_loop.py::end_epoch": [("The run stops here and returns its result, without this",)],
    "zoracle/_run_save.py::save": [("no checkpoint written at the end, the result is returned",),
                                   ("was rewritten by another writer since",),
                                   ("could not be written at step",)],
    "zoracle/_run_setup.py::check_counts": [("has no effect without `eval_fn`",)],
    "zoracle/_run_setup.py::choose_keep": [("scored weights: only the dense blocks train",)],
    "zoracle/_run_setup.py::resumed": [("is in other train/eval modes (or update_stats) than in the run",)],
    "zoracle/_train_checks.py::_check_every_step": [("steps spend their queries without moving the parameters",)],
    "zoracle/_train_checks.py::_warn_huge_mu": [("is over 100 times the parameters' scale",)],
    "zoracle/_train_checks.py::_warn_tiny_mu": [("float spacings of",)],
    "zoracle/_train_checks.py::_warn_sign_decay": [("with sparse CGE moves every weight by the full lr each step",)],
    "zoracle/_train_checks.py::_check_overwrite": [("holds an earlier run, which this run does not resume from",)],
    "zoracle/_train_checks.py::_warn_zero_blocks": [("ZO-GraSP keeps no coordinates of",)],
    "zoracle/_train_records.py::_stops": [("only True stops training",)],
    "zoracle/_train_records.py::_metrics": [("returned a metric named",)],
    "zoracle/recipes.py::short_budget": [("short_budget: one epoch of warm-up is",)],
}

#: ``warn`` calls that give no message of their own, with why
EXCLUDED = {
    "zoracle/_errors.py::warn": "the helper itself (its warnings.warn issues the caller's message)",
    "zoracle/_ask_tell.py::_hand_over": "re-issues, at the caller's tell(), a warning that AskTell's run thread "
                                         "found: every such message is one of SITES",
}


def _norm(text: str) -> str:
    """Text as a search finds it: no backticks, one space between words, lower case."""
    return re.sub(r"\s+", " ", text.replace("`", "")).strip().lower()


def _warn_calls(path: Path) -> list:
    """(function name, call node) of each ``warn(...)`` / ``warnings.warn(...)`` in ``path``, in
    source order; a call at module level has the function name ``<module>``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []

    def visit(node, fn):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else fn
            if isinstance(child, ast.Call) and (
                    (isinstance(child.func, ast.Name) and child.func.id == "warn")
                    or (isinstance(child.func, ast.Attribute) and child.func.attr == "warn"
                        and isinstance(child.func.value, ast.Name) and child.func.value.id == "warnings")):
                out.append((fn, child))
            visit(child, inner)

    visit(tree, "<module>")
    return sorted(out, key=lambda c: (c[1].lineno, c[1].col_offset))


def warn_sites(root: Path = ROOT) -> dict:
    """"path::function" -> its ``warn`` calls, for every module of zoracle/ and adapters/."""
    sites: dict = {}
    for path in sorted([*(root / "zoracle").rglob("*.py"), *(root / "adapters").rglob("*.py")]):
        for fn, call in _warn_calls(path):
            sites.setdefault(f"{path.relative_to(root).as_posix()}::{fn}", []).append(call)
    return sites


def _strings(node) -> list:
    """The string literals under ``node`` (an f-string's literal parts each on their own)."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _function(path: Path, name: str):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if name == "<module>":
        return tree
    found = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]
    return ast.Module(body=found, type_ignores=[])


def problems(sites: dict, page_text: str, root: Path = ROOT) -> list:
    """What keeps the page from covering ``sites``: a call without an entry, an entry without its
    call, words not in the code, words not on the page."""
    bad = []
    page = _norm(page_text)
    for key, calls in sites.items():
        if key in EXCLUDED:
            continue
        entries = SITES.get(key)
        if entries is None:
            bad.append(f"{key} (line {calls[0].lineno}): a warning with no entry in SITES and on the page")
            continue
        if len(entries) != len(calls):
            bad.append(f"{key}: {len(calls)} warn() calls, {len(entries)} entries in SITES")
    for key, entries in SITES.items():
        if key not in sites:
            bad.append(f"{key}: in SITES, but no warn() call there any more")
            continue
        path, fn = key.split("::")
        for entry in entries:
            where = entry[1] if len(entry) > 1 else None
            modules = (where,) if isinstance(where, str) else where
            strings = ([s for m in modules for s in _strings(ast.parse((root / m).read_text(encoding="utf-8")))]
                       if where else _strings(_function(root / path, fn)))
            for words in entry[0] if isinstance(entry[0], tuple) else (entry[0],):  # (one message, or its forms)
                if not any(words in s for s in strings):
                    bad.append(f"{key}: {words!r} is no longer in the message's code ({where or fn})")
                if _norm(words) not in page:
                    bad.append(f"{key}: {words!r} is not on docs/troubleshooting.md")
    return bad


@pytest.mark.slow
def test_every_warning_has_its_entry_on_the_page():
    bad = problems(warn_sites(), PAGE.read_text(encoding="utf-8"))
    assert bad == [], "\n".join(bad)


def test_the_check_sees_every_warn_call():
    """Every ``warn(`` written in zoracle/ and adapters/ is one the scan found (none missed by a form
    the AST walk does not know), and none lost by a scan that finds nothing."""
    sites = warn_sites()
    found = sum(len(calls) for calls in sites.values())
    written = 0
    for path in [*(ROOT / "zoracle").rglob("*.py"), *(ROOT / "adapters").rglob("*.py")]:
        with open(path, "rb") as f:  # (tokens: a `warn(` in a string or a comment is none)
            toks = [tok.string for tok in tokenize.tokenize(f.readline)
                    if tok.type in (tokenize.NAME, tokenize.OP)]
        for i, tok in enumerate(toks[:-1]):
            if tok == "warn" and toks[i + 1] == "(" and (i == 0 or toks[i - 1] != "def"):
                written += toks[i - 1] != "." or (i > 1 and toks[i - 2] == "warnings")
    assert found == written
    assert found >= 50  # (59 when the page was written)


@pytest.mark.slow
def test_a_new_warning_without_an_entry_fails(tmp_path):
    """A module with a warn() call no entry names, and an entry whose words left the code or the page."""
    for folder in ("zoracle", "adapters"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    extra = tmp_path / "zoracle" / "_new.py"
    extra.write_text("from ._errors import warn\n\n\ndef f():\n    warn('train: a brand-new warning')\n",
                     encoding="utf-8")
    page = PAGE.read_text(encoding="utf-8")
    bad = problems(warn_sites(tmp_path), page, tmp_path)
    assert bad == ["zoracle/_new.py::f (line 5): a warning with no entry in SITES and on the page"]
    # words gone from the page
    bad = problems(warn_sites(tmp_path), page.replace("AskTell: this estimate asks its", "AskTell asks"), tmp_path)
    assert any("'AskTell: this estimate asks its' is not on docs/troubleshooting.md" in b for b in bad)
    # words gone from the code
    moved = tmp_path / "zoracle" / "_history.py"
    moved.write_text(moved.read_text(encoding="utf-8").replace("so the column is all NaN", "so: NaN"),
                     encoding="utf-8")
    bad = problems(warn_sites(tmp_path), page, tmp_path)
    assert any("'so the column is all NaN' is no longer in the message's code" in b for b in bad)


def test_the_page_is_linked_from_the_readme_and_the_nav():
    assert "docs/troubleshooting.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert ": troubleshooting.md" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


# ---- messages that now name their fix (house style: name the argument, show the value, say the fix)

def test_smart_ratio_lowering_the_linear_keep_ratio_names_the_argument_and_fix():
    import zoracle as zo

    with pytest.warns(UserWarning) as rec:
        zo.smart_ratio([slice(0, 100), slice(100, 200)], 0.9, kinds=["conv", "linear"], linear_keep=0.3)
    text = str(rec[0].message)
    assert "linear layers at keep ratio 0.3 need 30 of the 20 kept weights" in text  # (as before)
    assert "`linear_keep`=0.3 now" in text and "pass linear_keep below 0.2 " in text and "a lower `sparsity`" in text


def test_smart_ratio_raising_the_linear_keep_ratio_names_the_argument_and_fix():
    import zoracle as zo

    with pytest.warns(UserWarning) as rec:
        zo.smart_ratio([slice(0, 10), slice(10, 110)], 0.5, kinds=["conv", "linear"], linear_keep=0.3)
    text = str(rec[0].message)
    assert "raising the linear layers' keep ratio from 0.3 to" in text  # (as before)
    assert "pass linear_keep=0.45 (`linear_keep`=0.3 now)" in text and "a higher `sparsity`" in text


@pytest.mark.parametrize("estimator", ["cge", "rge"])  # (CGE's coordinate path, RGE's full forwards)
def test_a_parameter_read_through_a_copy_names_the_fix(estimator):
    torch = pytest.importorskip("torch")
    from adapters.torch import TorchOracle

    import zoracle as zo

    class Held(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)
            self.held = [self.lin.weight]  # read through this list: functional_call does not reach it

        def forward(self, x):
            return x @ self.held[0].T + self.lin.bias

    torch.manual_seed(0)
    model = Held().double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    oracle = TorchOracle(model, torch.nn.functional.cross_entropy, (x, y))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        zo.estimate_gradient(oracle, oracle.initial_params(), zo.CGE() if estimator == "cge" else zo.RGE(directions=4),
                             rng=0)
    texts = [str(w.message) for w in rec if "through a copy" in str(w.message)]
    assert len(texts) == 1, [str(w.message) for w in rec]
    assert "parameter 'lin.weight'" in texts[0]
    assert "read it in the forward as a module attribute (self.lin.weight)" in texts[0]
    # (the estimate itself is right either way)
    assert np.isfinite(oracle(oracle.initial_params()))


def test_a_misspelt_zoracle_malloc_names_the_values_it_takes():
    from zoracle._malloc import plan

    apply, reason = plan({"ZORACLE_MALLOC": "sytem"}, "glibc")
    assert apply is False and reason.startswith("ZORACLE_MALLOC='sytem' is neither 'system'")  # (as before)
    assert "set ZORACLE_MALLOC=system or ZORACLE_MALLOC=zoracle, or unset it" in reason


def test_a_metric_renamed_for_a_record_field_says_how_to_name_it():
    import zoracle as zo

    with pytest.warns(RuntimeWarning) as rec:
        zo.train(lambda x: float(np.sum(x ** 2)), np.ones(2), epochs=1, steps_per_epoch=1, progress=False,
                 eval_fn=lambda p: {"loss": 1.0})
    text = next(str(w.message) for w in rec if "metric named" in str(w.message))
    assert "it is stored as 'eval_loss'" in text  # (as before)
    assert "give it another name in eval_fn's dict" in text


def test_a_short_later_epoch_names_the_fix():
    """An epoch from the second on that gives fewer batches than `steps_per_epoch` (the first is
    refused, with its fix): the warning says what to change, as the refusal does."""
    import zoracle as zo

    with pytest.warns(UserWarning) as rec:
        zo.train(_Seeded(), np.zeros(3), batches=lambda e: [1.0, 2.0] if e == 0 else [1.0], steps_per_epoch=2,
                 epochs=2, estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.01), progress=False, rng=0)
    text = next(str(w.message) for w in rec if "fewer than `steps_per_epoch`" in str(w.message))
    assert "`batches(1)` gave 1 batches, fewer than `steps_per_epoch`=2: the epoch runs 1 steps" in text
    assert "give 2 batches every epoch, or pass a `steps_per_epoch` no larger than the fewest" in text


class _Seeded:
    """A loss with a seed per batch (``bind``), for batches that are numbers."""

    def __call__(self, x):
        return float(np.sum((x - 1.0) ** 2))

    def bind(self, b):
        return lambda x: float(np.sum((x - b) ** 2))
