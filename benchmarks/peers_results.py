"""The peers study's results (``benchmarks/peers.py``): the results files, the settings chosen in
them, and the summary table and plot of a sweep."""

from __future__ import annotations

import json
import os

import numpy as np

from peers_bench import GRID, METHODS


def _key(r: dict) -> tuple:
    return (r["data"], r["width"], r["method"], json.dumps(r["setting"], sort_keys=True), r["seed"], r["budget"],
            r.get("start"), r.get("batch_order"), r.get("rng"), r.get("dtype", "float32"))


def _isa(r: dict):
    """The instruction set a run's torch kernels used, or None where the run did not record it."""
    return (r.get("machine") or {}).get("cpu_capability")


def _file_and_methods(path: str):
    """``"runs.json@snes/pgpe"`` -> ``("runs.json", {"snes", "pgpe"})``; a plain path keeps every method (None)."""
    file, at, methods = path.rpartition("@")
    return (file, set(methods.split("/")) - {""}) if at and file.endswith(".json") else (path, None)


def _load(path):
    """The runs of a results file; ``path@m1/m2`` keeps only the runs of methods ``m1`` and ``m2``
    (a study that takes some methods' seeds from another study's file)."""
    if not path:  # no --out: a sweep kept in memory only (`--quick`)
        return []
    path, methods = _file_and_methods(path)
    if path and os.path.exists(path):
        with open(path) as f:
            runs = json.load(f)
        return runs if methods is None else [r for r in runs if r["method"] in methods]
    return []


def _save(path, runs) -> None:
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(runs, f)
    os.replace(tmp, path)


def _merged(paths) -> list:
    """The runs of several result files (parallel sweeps): a run present twice counts once."""
    return list({(_key(r), _isa(r)): r for path in paths if path for r in _load(path)}.values())


def best_setting(runs, data, width, method, budget):
    """The grid setting with the best final validation accuracy at the tuning seed (ties: first).

    A width tuned after a setting was transferred to it counts that transferred run (same seed)
    as one of its grid points, and a budget tuned after a setting was brought to it with
    ``--settings-from`` counts that fresh run (same seed) the same way."""
    here = [r for r in runs if (r["data"], r["width"], r["method"], r["budget"]) == (data, width, method, budget)]
    tuned = [r for r in here if r.get("role") == "tune"]
    if tuned:
        tuned += [r for r in here if r.get("role") in ("transfer", "fresh") and r["seed"] == tuned[0]["seed"]]
    if not tuned:
        moved = [r for r in here if r.get("role") in ("transfer", "fresh")]
        moved = moved or [r for r in here if r.get("role") == "given"]  # --setting: one setting, no tuning
        return moved[0]["setting"] if moved else None
    return max(tuned, key=lambda r: -1.0 if r["val_acc"] != r["val_acc"] else r["val_acc"])["setting"]


def settings_for(runs, data, width, method, budget):
    """The setting ``--settings-from`` gives ``method``: the one chosen in ``runs``; for
    ``deepzero-krsf`` where none was tuned (every sweep before the fill existed), the one
    ``deepzero-krs`` chose, since the two differ only in the fill."""
    chosen = best_setting(runs, data, width, method, budget)
    if chosen is None and method == "deepzero-krsf":
        chosen = best_setting(runs, data, width, "deepzero-krs", budget)
    return chosen


def timing_setting(runs, data, width, method, budget, run_budget=None) -> dict:
    """The setting a timing run uses: the one tuned at ``budget``, else the one ``runs`` ran at the
    timing's own budget ``run_budget`` (a method only run there, such as ``deepzero-krsd`` at
    150,000 queries in ``wide_small_*.json``), else the middle of the grid."""
    return (best_setting(runs, data, width, method, budget)
            or (run_budget is not None and best_setting(runs, data, width, method, run_budget))
            or GRID[method][len(GRID[method]) // 2])


def summarize(runs, every_setting: bool = False) -> list:
    """Per (data, d, budget, method): the chosen setting's test accuracy over seeds and its speed.

    Runs made under different instruction sets (:func:`machine`) are never pooled: where the runs
    mix them, each gets its own rows, with the set in ``"isa"`` (None: not recorded). With
    ``every_setting``, every setting a method ran gets its own row, in the order first run (a
    study of one method's settings, each given with ``--setting``)."""
    rows = []
    split = len({_isa(r) for r in runs}) > 1
    keys = sorted({(r["data"], r["d"], r["width"], r["budget"], r["method"], _isa(r) if split else None) for r in runs},
                  key=lambda k: (k[0], k[1], k[3], METHODS.index(k[4]), k[5] or ""))
    for data, d, width, budget, method, isa in keys:
        mine = [r for r in runs if not split or _isa(r) == isa]
        point = [r for r in mine if (r["data"], r["width"], r["budget"], r["method"]) == (data, width, budget, method)]
        if every_setting:  # each setting as first run, in that order
            first = {}
            for r in point:
                first.setdefault(json.dumps(r["setting"], sort_keys=True), r["setting"])
            settings = list(first.values())
        else:
            settings = [best_setting(mine, data, width, method, budget)]
        for chosen in settings:
            rows.append(_summary_row(point, data, d, width, budget, method, chosen) | ({"isa": isa} if split else {}))
    return rows


def _summary_row(point, data, d, width, budget, method, chosen) -> dict:
    """One row of :func:`summarize`: the runs of one point and method at setting ``chosen``."""
    sel = sorted({r["seed"]: r for r in point if r["setting"] == chosen}.values(), key=lambda r: r["seed"])
    # a run that diverged before its first evaluation has no accuracy (NaN): named, not averaged in silence
    failed = sorted(r["seed"] for r in sel if r["test_acc"] != r["test_acc"])
    sel = [r for r in sel if r["test_acc"] == r["test_acc"]] or sel
    acc = np.array([r["test_acc"] for r in sel]) * 100
    secs = np.array([r["seconds"] for r in sel])
    return {"data": data, "d": d, "width": width, "budget": budget, "method": method, "setting": chosen,
            "seeds": sorted(r["seed"] for r in sel), "test_acc": acc.tolist(),
            "mean": _finite_stat(np.mean, acc), "min": _finite_stat(np.min, acc), "max": _finite_stat(np.max, acc),
            "val_acc": _finite_stat(np.mean, [r["val_acc"] for r in sel]) * 100,
            "seconds": float(secs.mean()), "queries": int(np.mean([r["queries"] for r in sel])),
            "qps": float(np.mean([r["queries"] / max(r["seconds"], 1e-9) for r in sel])), "failed": failed}


def _finite_stat(f, values) -> float:
    """``f`` of the numbers among ``values`` that are not NaN; NaN where none is (every seed failed),
    without NumPy's "Mean of empty slice" / "All-NaN slice" warnings in the report's output."""
    a = np.asarray(values, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(f(a)) if a.size else float("nan")


def _failed(row) -> str:
    """``, 2 failed (seeds 1, 2)``: the seeds whose runs diverged before any accuracy, left out of the row's numbers."""
    seeds = row.get("failed") or []
    return f", {len(seeds)} failed (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})" if seeds else ""


def _label(row) -> str:
    """A summary row's method, with its instruction set where the runs mixed them."""
    return row["method"] + (f" [{row['isa'] or 'not recorded'}]" if "isa" in row else "")


def _markdown(lines) -> str:
    """A markdown table: the header row ``lines[0]``, then the rest."""
    return "\n".join("| " + " | ".join(map(str, row)) + " |" + ("\n|" + "---|" * len(lines[0]) if i == 0 else "")
                     for i, row in enumerate(lines))


def table(rows) -> str:
    head = ("data", "d", "queries", "method", "setting", "test acc % (seeds)", "val %", "wall s", "queries/s")
    lines = [head]
    for r in rows:
        accs = " / ".join(f"{a:.2f}" for a in r["test_acc"])
        mean = f"{r['mean']:.2f}" + (f" ({accs})" if len(r["test_acc"]) > 1 else "") + _failed(r)
        setting = ", ".join(f"{k} {v}" for k, v in (r["setting"] or {}).items())
        lines.append((r["data"], f"{r['d']:,}", f"{r['queries']:,}", _label(r), setting, mean,
                      f"{r['val_acc']:.2f}", f"{r['seconds']:.1f}", f"{r['qps']:,.0f}"))
    return _markdown(lines)


def plot(runs, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarize(runs)
    points = sorted({(r["data"], r["d"], r["width"], r["budget"]) for r in rows})
    fig, axes = plt.subplots(len(points), 2, figsize=(11, 3.6 * len(points)), squeeze=False)
    for (data, d, width, budget), ax in zip(points, axes):
        for r in (r for r in rows if (r["data"], r["d"], r["budget"]) == (data, d, budget)):
            sel = [x for x in runs if (x["data"], x["width"], x["budget"], x["method"]) == (data, width, budget,
                                                                                            r["method"])
                   and x["setting"] == r["setting"] and ("isa" not in r or _isa(x) == r["isa"])]
            n = min(len(x["curve"]) for x in sel)
            q = np.array([[c[0] for c in x["curve"][:n]] for x in sel]).mean(0)
            s = np.array([[c[1] for c in x["curve"][:n]] for x in sel]).mean(0)
            a = np.array([[100 * c[3] for c in x["curve"][:n]] for x in sel])
            color = plt.get_cmap("tab20")(METHODS.index(r["method"]) % 20)
            for axis, xs in ((ax[0], q), (ax[1], s)):
                keep = (xs > 0) & (q > 0)  # a run with no query (FD-SGD past its budget) has no point
                axis.plot(xs[keep], a.mean(0)[keep], marker=".", color=color, label=f"{_label(r)} ({len(sel)})")
                if len(sel) > 1:
                    axis.fill_between(xs[keep], a.min(0)[keep], a.max(0)[keep], color=color, alpha=0.2)
        ax[0].set(xlabel="loss queries", ylabel="test accuracy (%)", title=f"{data}, d = {d:,}, {budget:,} queries")
        ax[1].set(xlabel="training wall time (s, 1 torch thread)", xscale="log", title=f"{data}, d = {d:,}: per second")
        ax[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels collide on short ranges
        for axis in ax:
            axis.grid(alpha=0.3)
        ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
