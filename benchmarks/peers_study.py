"""The peers study's acceptance tables (``benchmarks/peers.py --leads``, ``--ratios``, ``--wins``):
each DeepZero recipe against the best peer per query, the closest peer per second, and where
each method wins, with the rank test behind them."""

from __future__ import annotations

import math
import os

import numpy as np

from peers_bench import KEEP_FRESH, SPEED_PEERS
from peers_results import _failed, _label, _markdown, summarize


#: the DeepZero recipes issue 13's acceptance is judged on: the demo (paper) recipe and
#: ``zo.recipes.short_budget``, zoracle's recipe for budgets of a few queries per weight
RECIPES = ("deepzero", "deepzero-krs", "deepzero-krsf", "deepzero-krsd")  # the demo recipe, short_budget without and
# with the fill (50 a step), and with its defaults


def short_budget_default(method: str, budget: int, setting=None, d: int | None = None):
    """True where ``method`` is what ``zo.recipes.short_budget`` runs by default at ``budget`` queries
    in this study (every block sampled, ZO-GraSP's 386 queries first): ``deepzero-krsd`` (its own
    defaults) always; ``deepzero-krsf`` and ``deepzero-krs`` (50 coordinates and the base point a
    step) where the default is 50 a step (:func:`zoracle.recipes.default_coordinates` of the budget
    and the model's ``d``; below 40 queries per weight), ``deepzero-krsf`` (small blocks filled)
    from ``FILL_FROM_STEPS`` steps on and ``deepzero-krs`` below; and, given the run's ``setting``
    and ``d``, at the default learning rate (:func:`zoracle.recipes.default_lr`; every weight of the
    study's models is sampled). False for the others or another rate, None for any other method."""
    from zoracle._pruning import grasp_queries
    from zoracle.recipes import FILL_FROM_STEPS, default_coordinates, default_lr

    if method not in ("deepzero-krs", "deepzero-krsf", "deepzero-krsd"):
        return None
    if method == "deepzero-krsd":
        ok = True
    else:
        steps = (budget - grasp_queries(192)) // (KEEP_FRESH + 1)
        ok = (method == "deepzero-krsf") == (steps >= FILL_FROM_STEPS)
        if d is not None:
            ok = ok and default_coordinates(budget, d) == KEEP_FRESH
    if setting is None or d is None or "lr" not in setting:
        return ok
    return ok and setting["lr"] == default_lr(budget, d)


def _verdict(recipe: dict, peers: list) -> str:
    """Ahead of every peer by more than the seed spread (its worst seed above every peer seed),
    behind (a peer's worst seed above its best), or level (the ranges overlap)."""
    if recipe["min"] > max(p["max"] for p in peers):
        return "ahead of every peer by more than the spread"
    behind = [_label(p) for p in peers if p["min"] > recipe["max"]]
    if behind:
        return f"behind {', '.join(behind)} by more than the spread"
    return "level: ranges overlap"


def p_text(p: float) -> str:
    """A p-value to two significant digits, or more where two would round one below 0.05 up to
    0.05 (printed beside "p < 0.05")."""
    text, digits = f"{p:.2g}", 2
    while p < 0.05 <= float(text) and digits < 17:  # (0.04996: three digits still read 0.05)
        digits += 1
        text = f"{p:.{digits}g}"
    return text


def rank_test(a, b) -> float:
    """The two-sided Mann-Whitney U test of two sets of seeds' accuracies: exact where the pooled
    seeds split at most 100,000 ways (every split counted, tied accuracies given their mean rank),
    else scipy's normal approximation. (scipy's own choice turns to the approximation at the first
    tie, and a test digit is 0.28 points: three seeds all above three others got p = 0.077, where
    2 of the 20 splits are as uneven and p = 0.1.)"""
    import itertools

    from scipy.stats import mannwhitneyu, rankdata

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.isnan(a).any() or np.isnan(b).any():  # (a method whose every seed failed): no ranks, as scipy's nan
        return float("nan")
    n, total = len(a), len(a) + len(b)
    if math.comb(total, n) > 100_000:
        return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    ranks = rankdata(np.concatenate([a, b]))
    centre = n * (total + 1) / 2  # the rank sum's mean under the null, midranks included
    observed = abs(ranks[:n].sum() - centre)
    sums = np.array([ranks[list(s)].sum() for s in itertools.combinations(range(total), n)])
    return float(np.mean(np.abs(sums - centre) >= observed - 1e-9))


def leads(groups) -> list:
    """Per query, at each data set's largest size: each DeepZero recipe against the best peer.

    ``groups`` are lists of runs (one study each, e.g. ``--report`` files merged). Peers are
    the methods that are not DeepZero variants; the best is the one with the highest mean test
    accuracy over its seeds, and the verdict (:func:`_verdict`) weighs every peer. ``p`` is the
    two-sided Mann-Whitney U test of the recipe's seeds against the best peer's: how often
    test accuracies drawn from one distribution would be ranked as unevenly as these."""
    rows = []
    for runs in groups:
        summary = summarize(runs)
        for data in sorted({r["data"] for r in summary}):
            d = max(r["d"] for r in summary if r["data"] == data)
            for budget in sorted({r["budget"] for r in summary if (r["data"], r["d"]) == (data, d)}):
                here = [r for r in summary if (r["data"], r["d"], r["budget"]) == (data, d, budget)]
                peers = [r for r in here if not r["method"].startswith("deepzero")]
                if not peers:
                    continue
                best = max(peers, key=lambda r: r["mean"])
                for recipe in (r for m in RECIPES for r in here if r["method"] == m):
                    p = rank_test(recipe["test_acc"], best["test_acc"])
                    rows.append({"data": data, "d": d, "budget": budget, "recipe": recipe, "best": best,
                                 "lead": recipe["mean"] - best["mean"], "p": p, "verdict": _verdict(recipe, peers),
                                 "default": short_budget_default(recipe["method"], budget, recipe["setting"], d)})
    return rows


def leads_table(rows) -> str:
    def acc(r):
        return f"{r['mean']:.1f} ({r['min']:.1f}-{r['max']:.1f}, {len(r['test_acc'])} seeds{_failed(r)})"
    head = ("data", "d", "queries", "recipe", "test %", "best peer", "its test %", "lead, points", "rank test p",
            "verdict", "short_budget's default here")
    lines = [head] + [(r["data"], f"{r['d']:,}", f"{r['budget']:,}", _label(r["recipe"]), acc(r["recipe"]),
                       _label(r["best"]), acc(r["best"]), f"{r['lead']:+.1f}", p_text(r['p']), r["verdict"],
                       {None: "-", True: "yes", False: "no"}[r.get("default")])
                      for r in rows]
    return _markdown(lines)


def ratios(rows) -> list:
    """Per second, at every point of ``--speed`` rows: the peer closest to the demo recipe's time
    per query (the smallest ratio; populations batched or plain counted apart), against 10x.
    ``recipe_ratio`` is that peer's time per query over the short-budget recipe's
    (``deepzero-krs``, the recipe that trains at the largest size), ``default_ratio`` the same
    over ``deepzero-krsd``'s (the recipe with its own defaults: 100 coordinates a step from 40
    queries per weight on); NaN where that recipe was not timed."""
    out = []
    for key in sorted({(r["data"], r["d"], r["budget"]) for r in rows}):
        here = [r for r in rows if (r["data"], r["d"], r["budget"]) == key]
        peers = [r for r in here if not r["method"].startswith("deepzero") and r["ratio"] == r["ratio"]]
        demo = next((r for r in here if r["method"] == "deepzero"), None)
        if not peers or demo is None:
            continue
        near = min(peers, key=lambda r: r["ratio"])
        krs, krsd = (next((r for r in here if r["method"] == m), None) for m in (RECIPES[1], RECIPES[3]))
        out.append({"data": key[0], "d": key[1], "budget": key[2], "us": 1e6 * demo["s_per_query"], "peer": near,
                    "ratio": near["ratio"], "peers": len(peers), "met": all(r["ratio"] >= 10 for r in peers),
                    "recipe_ratio": near["s_per_query"] / krs["s_per_query"] if krs else float("nan"),
                    "default_ratio": near["s_per_query"] / krsd["s_per_query"] if krsd else float("nan")})
    return out


def ratios_table(rows) -> str:
    """Markdown of :func:`ratios`; the ``deepzero-krsd`` column only where some point timed it."""
    def x(v):
        return f"{v:.1f}" if v == v else "-"
    krsd = any(r["default_ratio"] == r["default_ratio"] for r in rows)
    head = ("data", "d", "queries", "DeepZero us / query", "closest peer", "x DeepZero's time", "its x MACs",
            "10x ahead of every peer", "closest peer x deepzero-krs's time") + (
            ("closest peer x deepzero-krsd's time",) if krsd else ())
    lines = [head] + [(r["data"], f"{r['d']:,}", f"{r['budget']:,}", f"{r['us']:.1f}",
                       r["peer"]["method"] + (f" ({r['peer']['eval']})" if r["peer"]["method"] in SPEED_PEERS[:2] else ""),
                       f"{r['ratio']:.1f}", f"{r['peer']['mac_ratio']:.1f}" if "mac_ratio" in r["peer"] else "-",
                       f"{'yes' if r['met'] else 'no'} ({r['peers']} peers)", x(r["recipe_ratio"]))
                      + ((x(r["default_ratio"]),) if krsd else ()) for r in rows]
    return _markdown(lines)


def _study(paths) -> str:
    """A study's short name: its first results file without the data set (``long_tuned``)."""
    stem = os.path.splitext(os.path.basename(paths[0]))[0]
    for data in ("digits", "mnist1d"):
        stem = stem.removesuffix(f"_{data}").removesuffix(data)
    return stem.strip("_") or "sweep"


def _in_words(recipe: dict, best: dict, p: float) -> str:
    """Who wins per query, in words: by more than the seed spread, in the rank test only, or neither."""
    if min(len(recipe["test_acc"]), len(best["test_acc"])) < 2:
        return f"{'DeepZero' if recipe['mean'] > best['mean'] else _label(best)} on one seed (no spread)"
    if recipe["min"] > best["max"]:
        return "DeepZero, by more than the spread"
    if best["min"] > recipe["max"]:
        return f"{_label(best)}, by more than the spread"
    if p < 0.05:
        ahead = "DeepZero" if recipe["mean"] > best["mean"] else _label(best)
        return f"{ahead} in the mean (p < 0.05); ranges overlap"
    return "level"


def wins(studies, speed_rows) -> list:
    """Where each method wins, one row per study and point (data, d, queries), every size.

    Per query (``studies``: ``(name, runs)``): the best DeepZero recipe of :data:`RECIPES` and
    the best peer by mean test accuracy, their difference, the two-sided rank test and who wins
    (:func:`_in_words`; the best peer only, where :func:`leads` weighs every peer). Per second
    (``speed_rows``, from ``--speed`` files): the demo recipe against the closest peer
    (:func:`ratios`). A point only timed gets dashes in the per-query half. Where a study mixes
    instruction sets, only the runs of the set with the most seeds are compared, unless that set
    has no recipe or no peer (a study that reruns the recipes against a peer's earlier runs): then
    every set's, each labelled with its set."""
    fast = {(r["data"], r["d"], r["budget"]): r for r in ratios(speed_rows)}
    rows, seen = [], set()
    for name, runs in studies:
        summary = summarize(runs)
        for point in sorted({(r["data"], r["d"], r["budget"]) for r in summary}):
            here = [r for r in summary if (r["data"], r["d"], r["budget"]) == point]
            if any("isa" in r for r in here):  # runs under several instruction sets: the set with the most seeds,
                isa = max({r["isa"] for r in here}, key=lambda i: sum(len(r["test_acc"]) for r in here if r["isa"] == i))
                same = [r for r in here if r["isa"] == isa]
                if any(r["method"] in RECIPES for r in same) and any(not r["method"].startswith("deepzero") for r in same):
                    here = same  # unless it lacks the recipes or the peers: then across sets, each row labelled
            recipes = [r for r in here if r["method"] in RECIPES]
            peers = [r for r in here if not r["method"].startswith("deepzero")]
            if not recipes or not peers:
                continue
            recipe, best = max(recipes, key=lambda r: r["mean"]), max(peers, key=lambda r: r["mean"])
            p = rank_test(recipe["test_acc"], best["test_acc"])
            rows.append({"data": point[0], "d": point[1], "budget": point[2], "study": name, "recipe": recipe,
                         "best": best, "lead": recipe["mean"] - best["mean"], "p": p,
                         "words": _in_words(recipe, best, p), "speed": fast.get(point)})
            seen.add(point)
    rows += [{"data": k[0], "d": k[1], "budget": k[2], "study": "-", "speed": v} for k, v in fast.items() if k not in seen]
    return sorted(rows, key=lambda r: (r["data"], r["d"], r["budget"]))


def wins_table(rows) -> str:
    def acc(r):
        n = len(r["test_acc"])
        return f"{_label(r)} {r['mean']:.1f} ({r['min']:.1f}-{r['max']:.1f}, {n} seed{'s' if n > 1 else ''}{_failed(r)})"

    def fast(s):
        if s is None:
            return "-"
        peer = s["peer"]["method"] + (f" ({s['peer']['eval']})" if s["peer"]["method"] in SPEED_PEERS[:2] else "")
        return f"{s['ratio']:.1f}x faster than {peer}" + ("" if s["met"] else ", under 10x")
    head = ("data", "d", "queries", "study", "per query: DeepZero recipe, test %", "best peer, test %", "points",
            "rank test p", "per query, who wins", "per second: DeepZero's demo recipe")
    lines = [head] + [(r["data"], f"{r['d']:,}", f"{r['budget']:,}", r["study"],
                       *((acc(r["recipe"]), acc(r["best"]), f"{r['lead']:+.1f}", p_text(r['p']), r["words"])
                         if "recipe" in r else ("-",) * 5), fast(r["speed"])) for r in rows]
    return _markdown(lines)


def wins_plot(rows, path) -> None:
    """Every seed's test accuracy of each :func:`wins` row's DeepZero recipe and best peer, side by
    side, one panel per data set: where the two sets of dots do not overlap, one method wins by
    more than the seed spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "recipe" in r]
    datas = sorted({r["data"] for r in rows})
    fig, axes = plt.subplots(len(datas), 1, figsize=(11, 3.4 * len(datas)), squeeze=False)
    for data, (ax,) in zip(datas, axes):
        here = [r for r in rows if r["data"] == data]
        for i, r in enumerate(here):
            for side, (who, color) in enumerate(((r["recipe"], "tab:blue"), (r["best"], "tab:orange"))):
                acc = np.asarray(who["test_acc"])
                x = i + (side - 0.5) * 0.3 + np.linspace(-0.06, 0.06, len(acc))
                ax.scatter(x, acc, s=14, color=color, label=("DeepZero recipe", "best peer")[side] if i == 0 else None)
                ax.text(i + (side - 0.5) * 0.3, acc.max() + 1, _label(who).replace(" [", "\n["), ha="center",
                        va="bottom", fontsize=6)
        ax.set_xticks(range(len(here)), [f"d = {r['d']:,}\n{r['budget']:,} q\n{r['study']}" for r in here], fontsize=7)
        ax.set(ylabel="test accuracy (%), every seed", title=f"{data}: where each method wins per query")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
