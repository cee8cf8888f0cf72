"""DeepZero against evolution strategies at equal query budgets: a model-size sweep.

Every method trains the same small CNN (the demo's digits CNN, or its 1-D twin on MNIST-1D)
with a hidden dense layer of ``--widths`` units to sweep the parameter count d, from the same
initial weights, through the same black box ``params -> loss on the current minibatch`` (one TorchOracle, one torch thread),
and stops at the same number of loss queries:

* ``deepzero``: zoracle's demo recipe (ZO-GraSP ratios, sparse CGE at 90% sparsity, masks
  redrawn every epoch, SGD momentum 0.9, weight decay 5e-4, cosine schedule with warm-up),
  through TorchOracle's coordinate / feature-reuse fast path;
* ``deepzero-k``: the same recipe with a fixed number of estimated coordinates per step
  (200, biases included) instead of a fixed 10% of the weights: sparsity = 1 - 200 / d;
* ``deepzero-w``: the demo recipe with a warm-up of 5% of the steps instead of one epoch
  (at short budgets one epoch is a large share of the run);
* ``deepzero-s``: the demo recipe with fresh random masks every step instead of every epoch
  (with per-epoch masks 90% of the weights stay frozen for a whole epoch);
* ``deepzero-a``: the demo recipe with Adam (weight decay 5e-4) instead of SGD with momentum;
* ``deepzero-ka``: both changes that scale: 200 coordinates a step and Adam;
* ``deepzero-kas``: the short-budget recipe: 50 coordinates a step (biases included), a
  fresh mask every step (``mask_shuffle_interval="step"``) and Adam, ZO-GraSP ratios kept;
* ``deepzero-krs``: ``zo.recipes.short_budget(fill_small_blocks=False)``, zoracle's short-budget
  recipe: ``deepzero-kas`` with Adam's momentum off (``b1=0``: each measured partial derivative
  moves its weight at once, divided by the root of its running mean square); it spends at most
  the budget (``train(max_queries=...)``). The recipe's default below ``FILL_FROM_STEPS`` steps
  (and at every budget when the runs in ``peers_results`` were made, until 2026-12-03);
* ``deepzero-krsf``: ``zo.recipes.short_budget(fill_small_blocks=True)``: ``deepzero-krs`` with one
  coordinate a step in every block of at most 50 weights that ZO-GraSP's split leaves empty;
  the recipe's default from ``FILL_FROM_STEPS`` steps on (:func:`short_budget_default`);
* ``deepzero-krsd``: ``zo.recipes.short_budget`` with its own defaults for the coordinates a step
  (:func:`zoracle.recipes.default_coordinates`: 100 from 40 queries per weight on, else 50) and
  the fill: what the recipe runs by default (the learning rate from the setting);
* ``rge``: zoracle RGE with 99 directions + the base point (100 queries a step);
* ``zoracle-es``: zoracle RGE with NES rank shaping (``shaping="ranks"``), 50 antithetic pairs
  + the base point (101 queries a step), sigma 0.05, Adam with a cosine schedule: OpenAI-ES
  through ``zo.train``, the populations through ``TorchOracle.batch``;
* ``zoracle-snes``: ``zo.SNES`` through ``zo.train`` with ``zo.sgd(1.0)``: the same algorithm
  and settings as ``snes`` (population 100, no base point), on zoracle's oracle and batching;
* ``snes``, ``pgpe`` (ClipUp): EvoTorch, population 100, one minibatch per generation,
  the population evaluated through ``TorchOracle.batch`` (vmapped forwards);
* ``sepcma``: pycma with ``CMA_diagonal`` (sep-CMA-ES), default population;
* ``fdsgd``: SGD on ``scipy.optimize.approx_fprime`` forward differences (d + 1 plain
  calls a step; no step at all when d + 1 exceeds the budget).

Each method gets a 3-setting grid, run at the first seed; the setting with the best final
accuracy on a validation split (carved from the training set, never the test set) is then
run at the other seeds. Accuracy (validation and test) is recorded at 10 points of the
budget together with the training wall time (evaluation excluded).

    python benchmarks/peers.py --quick                         # one small point, a few minutes
    python benchmarks/peers.py --data digits,mnist1d --widths 0,160,1600 --seeds 0,1,2 --out peers.json
    python benchmarks/peers.py --report peers.json --plot peers.png   # table + plot of a (partial) run
    python benchmarks/peers.py --report a.json --every-setting   # a row per setting run (each given with --setting)
    python benchmarks/peers.py --leads a.json+b.json,c.json --ratios speed.json   # issue 13's acceptance tables

Results are appended to ``--out`` after every run, so an interrupted sweep keeps its data
and a rerun skips what is done. Needs the ``bench`` extra (evotorch, cma) for the ES peers.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import numpy as np

# the study's modules, beside this script; their names stay peers.py's (peers_scout.py, allocator.py,
# step_floor.py, step_time.py and the tests read them here)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers_bench import (BATCH, DEFAULT_METHODS, GRID, KEEP, KEEP_FRESH, METHODS, POP, RUNNERS,  # noqa: E402, F401
                         SPEED_PEERS, Bench, _deepzero_steps, _evotorch_problem, _run_searcher, _train_rge, load_data,
                         make_model, run_deepzero, run_deepzero_a, run_deepzero_k, run_deepzero_ka, run_deepzero_kas,
                         run_deepzero_krs, run_deepzero_krsd, run_deepzero_krsf, run_deepzero_s, run_deepzero_w,
                         run_fdsgd, run_pgpe, run_rge, run_sepcma, run_snes, run_zoracle_es, run_zoracle_snes,
                         step_recorder)
from peers_results import (_failed, _file_and_methods, _finite_stat, _isa, _key, _label, _load,  # noqa: E402, F401
                           _markdown, _merged, _save, _summary_row, best_setting, plot, settings_for, summarize, table,
                           timing_setting)
from peers_study import (RECIPES, _in_words, _study, _verdict, leads, leads_table, p_text,  # noqa: E402, F401
                         rank_test, ratios, ratios_table, short_budget_default, wins, wins_plot, wins_table)


def machine() -> dict:
    """What a run's floats depend on beyond the code: the CPU, the vector instruction set torch's
    kernels use (``ATEN_CPU_CAPABILITY`` can lower it) and the numeric libraries' versions. The same
    seed gives a different model under a different instruction set (docs/peers.md). Fixed for a
    process, so read once."""
    return dict(_machine())


@functools.cache
def _machine() -> dict:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "numpy": np.__version__}


def run_one(bench, method: str, setting: dict, **extra) -> dict:
    import zoracle as zo

    bench.start()
    error, params = None, None
    try:
        params = RUNNERS[method](bench, **setting, **extra)
    except (zo.ArgumentError, zo.OracleError) as exc:  # diverged (non-finite params or loss): keep the record, mark it
        error = str(exc).splitlines()[0]
    if params is not None and (not bench.curve or bench.curve[-1][0] < bench.queries):
        bench.final(params)  # stopped short of the last mark (schedule rounding, one FD step past d)
    if not bench.curve:
        bench.curve.append([bench.queries, bench.seconds(), float("nan"), float("nan")])
    last = bench.curve[-1]
    return {"data": bench.name, "width": bench.width, "d": bench.d, "method": method, "setting": setting,
            "seed": bench.seed, "budget": bench.budget, "queries": last[0], "seconds": last[1],
            "val_acc": last[2], "test_acc": last[3], "curve": bench.curve, "error": error, "machine": machine()}


# ----------------------------------------------------------------------------- sweep
def sweep(args, log=print) -> list:
    import torch

    torch.set_num_threads(args.threads)
    runs = _load(args.out)
    here = machine()["cpu_capability"]

    def seen(r):  # a run under another instruction set is another run; an unrecorded one is this machine's
        return _key(r), _isa(r) or here

    done = {seen(r) for r in runs}
    # runs of this sweep's points made by another sweep (a --settings-from run at a budget now
    # tuned): copied into --out, in their file's order, and not run again
    for r in [r for path in args.reuse.split(",") if path for r in _load(path)]:
        if (r["data"] in args.data and r["width"] in args.widths and r["method"] in args.methods
                and r["budget"] == args.budget and seen(r) not in done):
            runs.append(r)
            done.add(seen(r))
    if args.reuse:
        _save(args.out, runs)
    fixed = [r for path in args.settings_from.split(",") if path for r in _load(path)] if args.settings_from else None
    datas = {}
    for name in args.data:
        for width in args.widths:
            for method in args.methods:
                grid = GRID[method][:args.grid] if args.grid else GRID[method]
                source = max((w for w in args.tune_widths if w < width), default=None)
                for i, seed in enumerate(args.seeds):
                    if args.setting is not None:  # the setting given on the command line, no tuning
                        todo = [(args.setting, "given")]
                    elif fixed is not None:  # new seeds of the settings chosen in an earlier sweep, no tuning
                        chosen = settings_for(fixed, name, width, method, args.settings_budget or args.budget)
                        if chosen is None:
                            raise SystemExit(f"--settings-from has no chosen setting for {method} on {name} at width "
                                             f"{width} and budget {args.settings_budget or args.budget}")
                        todo = [(chosen, "fresh")]
                    elif i == 0 and args.tune_widths and width not in args.tune_widths and source is not None:
                        chosen = best_setting(runs, name, source, method, args.budget)  # tuned at a smaller width
                        todo = [(chosen, "transfer")] if chosen is not None else [(s, "tune") for s in grid]
                    elif i == 0:
                        todo = [(s, "tune") for s in grid]
                    else:
                        chosen = best_setting(runs, name, width, method, args.budget)
                        todo = [(chosen, "seed")] if chosen is not None else []
                    for setting, role in todo:
                        rec = {"data": name, "width": width, "method": method, "setting": setting, "seed": seed,
                               "budget": args.budget, "start": args.start, "batch_order": args.batch_order,
                               "rng": args.rng, "dtype": args.dtype}
                        if seen(rec) in done:
                            continue
                        start = seed if args.start is None else args.start  # the weights' and the split's seed
                        if (name, start) not in datas:
                            datas[(name, start)] = load_data(name, start)
                        bench = Bench(datas[(name, start)], name, width, seed, args.budget, model_seed=start,
                                      batch_seed=args.batch_order, rng_seed=args.rng, dtype=args.dtype)
                        r = run_one(bench, method, setting)
                        r["role"] = role
                        if args.dtype != "float32":  # the studies' black box computes in float32: unrecorded there
                            r["dtype"] = args.dtype
                        for key in ("start", "batch_order", "rng"):
                            if getattr(args, key) is not None:
                                r[key] = getattr(args, key)
                        runs.append(r)
                        done.add(seen(r))
                        _save(args.out, runs)
                        log(f"{name} d={r['d']} {method} {setting} seed {seed}: val {100 * r['val_acc']:.2f}% "
                            f"test {100 * r['test_acc']:.2f}% in {r['seconds']:.1f} s ({r['queries']:,} queries)"
                            + (f" [{r['error']}]" if r["error"] else ""))
    return runs


# ----------------------------------------------------------------------------- speed
#: methods whose queries go through TorchOracle's coordinate path (their multiply-adds are counted on a replay)
COORDINATE_METHODS = tuple(m for m in METHODS if m.startswith("deepzero"))


def forward_macs(model, x) -> int:
    """Multiply-adds of one forward per sample: Linear and Conv layers, counted with hooks
    (activations, pooling and the loss are not counted)."""
    import torch
    from torch import nn

    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Linear):
            total[0] += mod.in_features * mod.out_features * (out.numel() // out.shape[-1])
        else:  # one output element of a convolution reads (in_channels / groups) * kernel weights
            total[0] += mod.weight[0].numel() * out.numel()

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            model(torch.as_tensor(np.asarray(x[:1], dtype=np.float32)))
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def executed_macs(fn):
    """``(fn(), multiply-adds of the matrix products and convolutions torch ran meanwhile)``,
    counted by ``torch.utils.flop_counter.FlopCounterMode`` (vmapped batches included)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn()
    return out, counter.get_total_flops() // 2


def add_macs(rows, log=print) -> list:
    """Multiply-adds of every speed row. A full-forward method spends ``queries * 32 *
    forward_macs``. The coordinate-path methods are replayed (untimed, same seed and setting)
    and what they ran is counted (:func:`executed_macs`): ZO-GraSP's forwards, the base
    losses, the cached activations, the closed forms and the suffixes. ``mac_ratio`` is a
    row's multiply-adds per query over DeepZero's demo recipe's at the same point: the
    ``ratio`` (of seconds per query) the two would have at equal multiply-add throughput."""
    datas, per = {}, {}
    for r in rows:
        key = (r["data"], r["width"])
        if r["data"] not in datas:
            datas[r["data"]] = load_data(r["data"], 0)
        if key not in per:
            per[key] = forward_macs(make_model(r["data"], r["width"], 0), datas[r["data"]]["x"])
        if r["method"] in COORDINATE_METHODS:
            bench = Bench(datas[r["data"]], r["data"], r["width"], 0, r.get("budget", 30_000))
            r["macs"] = executed_macs(lambda: run_one(bench, r["method"], r["setting"]))[1]
        else:
            r["macs"] = r["queries"] * BATCH * per[key]
        log(f"{r['data']} d={r['d']} {r['method']} ({r['eval']}): {r['macs'] / 1e9:.2f} GMAC")
    return mac_ratios(rows)


def mac_ratios(rows) -> list:
    """Set each row's ``mac_ratio``: its multiply-adds per query over the demo recipe's."""
    for r in rows:
        dz = _demo_row(rows, r)
        ok = dz and dz["macs"] and r["macs"] and r["queries"] and dz["queries"]
        r["mac_ratio"] = (r["macs"] / r["queries"]) / (dz["macs"] / dz["queries"]) if ok else float("nan")
    return rows


def _demo_row(rows, r):
    """The demo recipe's (``deepzero``) row at ``r``'s point, or None."""
    return next((x for x in rows if (x["data"], x["width"], x["method"]) == (r["data"], r["width"], "deepzero")), None)


def speed(args, log=print) -> list:
    """Training seconds per query of every method at every point, measured one after another in
    one process (seed 0, the setting tuned in the ``--speed`` files), SNES and PGPE both through
    ``TorchOracle.batch`` and through one plain call per candidate. ``--settings-budget N``
    takes the settings tuned at budget N (e.g. 30,000's choices for a 150,000-query timing), and
    for a method not run at N the setting it ran with at the timing's budget (:func:`timing_setting`).
    Ratios are a method's seconds per query over DeepZero's (the demo recipe through
    TorchOracle's coordinate path). Every method runs under zoracle's allocator policy
    (``zo.reuse_freed_memory``; ``ZORACLE_MALLOC=system`` keeps glibc's default), recorded
    in each row; files written before it ran under glibc's default. The rows then get their
    multiply-adds (:func:`add_macs`, on replays after every timing)."""
    import torch

    import zoracle as zo

    torch.set_num_threads(args.threads)
    # every method under the one allocator policy (the first zo.train would set it mid-table otherwise)
    reuse = zo.reuse_freed_memory()
    runs = _merged((args.speed or "").split(","))
    rows = []
    for name in args.data:
        data = load_data(name, 0)
        for width in args.widths:
            for method in args.methods:
                tuned_at = args.settings_budget or args.budget  # the settings of another budget's files
                setting = timing_setting(runs, name, width, method, tuned_at, args.budget)
                for ev in (("batch", "plain") if method in SPEED_PEERS[:2] else ("batch",)):
                    bench = Bench(data, name, width, 0, args.budget, peer_eval=ev)
                    r = run_one(bench, method, setting)
                    row = {"data": name, "d": r["d"], "width": width, "method": method, "eval": ev, "setting": setting,
                           "budget": args.budget, "queries": r["queries"], "seconds": r["seconds"], "test_acc": r["test_acc"],
                           "s_per_query": r["seconds"] / r["queries"] if r["queries"] else float("nan"),
                           "machine": r["machine"], "reuse_freed_memory": reuse}
                    rows.append(row)
                    log(f"{name} d={r['d']} {method} ({ev}): {r['seconds']:.2f} s for {r['queries']:,} queries, "
                        f"test {100 * r['test_acc']:.1f}%")
    for r in rows:
        dz = _demo_row(rows, r)
        r["ratio"] = r["s_per_query"] / dz["s_per_query"] if dz else float("nan")
    return add_macs(rows, log=log)  # after every timing: the replays do not disturb them


def speed_table(rows) -> str:
    head = ("data", "d", "method", "populations", "queries", "train s", "us / query", "x DeepZero's time", "GMAC",
            "x DeepZero's MACs")
    lines = [head] + [(r["data"], f"{r['d']:,}", r["method"], r["eval"] if r["method"] in SPEED_PEERS[:3] else "-",
                       f"{r['queries']:,}", f"{r['seconds']:.2f}", f"{1e6 * r['s_per_query']:.1f}",
                       f"{r['ratio']:.1f}", f"{r['macs'] / 1e9:.2f}" if "macs" in r else "-",
                       f"{r['mac_ratio']:.1f}" if "mac_ratio" in r else "-") for r in rows]
    return _markdown(lines)


def _ints(s):
    return [int(v) for v in str(s).split(",") if v.strip()]


def _parser() -> argparse.ArgumentParser:
    """The command line (every option and its help)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one small point: digits, width 0 (d = 1,898), 30,000 queries, 1 seed")
    p.add_argument("--data", default="digits", help="comma-separated: digits, mnist1d (default digits)")
    p.add_argument("--widths", default="0", help="hidden units (digits: 0, 160, 1600 -> d = 1,898 / 13,258 / 121,258; mnist1d: 16, 128, 1200)")
    p.add_argument("--budget", type=int, default=60_000, help="loss queries per run (default 60,000)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; the first tunes (default 0)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"subset of {', '.join(METHODS)}")
    p.add_argument("--grid", type=int, default=0, help="use only the first N grid settings (default all 3)")
    p.add_argument("--tune-widths", default="", help="run the grid only at these widths; larger ones reuse the "
                   "setting tuned at the nearest smaller one (default: grid everywhere)")
    p.add_argument("--settings-from", default="", metavar="JSON", help="run every seed with the setting chosen "
                   "in these --out files (comma-separated) instead of tuning: new seeds of a finished sweep")
    p.add_argument("--setting", default=None, metavar="JSON", help="run every seed with this setting (a JSON "
                   "object, e.g. '{\"lr\": 0.07642}') instead of tuning")
    p.add_argument("--reuse", default="", metavar="JSON", help="comma-separated files whose runs of this sweep's "
                   "points (data, width, method, budget) count as done and are copied into --out: tuning at a budget "
                   "that --settings-from runs reached counts those runs as grid points at the tuning seed")
    p.add_argument("--settings-budget", type=int, default=None, metavar="N", help="with --settings-from or --speed: the "
                   "settings chosen at budget N (default --budget), e.g. 30000's choices for a longer run")
    p.add_argument("--start", type=int, default=None, metavar="SEED", help="with --settings-from: every seed starts "
                   "from this seed's weights and train / validation split; only the run's own randomness (minibatch "
                   "order, samples, coordinates) follows --seeds")
    p.add_argument("--batch-order", type=int, default=None, metavar="SEED", help="with --settings-from: every seed "
                   "draws its minibatches in this seed's order")
    p.add_argument("--rng", type=int, default=None, metavar="SEED", help="with --settings-from: every seed's method "
                   "draws its own random numbers (samples, coordinates, directions) from this seed; what the seed "
                   "still sets is the start (unless --start) and the minibatch order (unless --batch-order)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="the float the black box "
                   "computes in (default float32, as in every study; float64 converts the same start)")
    p.add_argument("--out", default=None, help="JSON file of all runs, appended after each run; reruns skip done runs")
    p.add_argument("--report", default=None, metavar="JSON", help="only print the table of existing --out files (comma-separated)")
    p.add_argument("--plot", default=None, metavar="PNG", help="save accuracy vs queries / vs seconds (with --wins: "
                   "every seed of each recipe and best peer)")
    p.add_argument("--every-setting", action="store_true", help="a row for every setting a method ran (a study of "
                   "settings, each run with --setting), not only the chosen one")
    p.add_argument("--json", action="store_true", help="print the summary rows as JSON instead of the table")
    p.add_argument("--speed", default=None, metavar="JSON", help="speed table: every method once per point in this "
                   "process (settings tuned in these comma-separated result files)")
    p.add_argument("--macs", default=None, metavar="JSON", help="add the multiply-add counts to an existing --speed "
                   "file (rewritten in place) and print its table")
    p.add_argument("--leads", default=None, metavar="FILES", help="per query, at the largest size: each DeepZero "
                   "recipe against the best peer; comma-separated studies, each one or more files joined by '+' "
                   "(FILE@m1/m2: only those methods' runs of FILE)")
    p.add_argument("--ratios", default=None, metavar="JSON", help="per second: the peer closest to DeepZero's time per "
                   "query at every point of these --speed files (comma-separated)")
    p.add_argument("--wins", default=None, metavar="FILES", help="where each method wins, at every size: per query "
                   "from these studies (as --leads), per second from the --ratios files")
    return p


def _check_files(p, flags, hint, required):
    """Each of ``flags`` (name, value) names existing results files; ``required`` ones must be given."""
    for flag, value in flags:
        missing = [f for f in (value or "").replace("+", ",").split(",")
                   if f and not os.path.isfile(_file_and_methods(f)[0])]
        if (value is not None or required) and (missing or not (value or "").strip(",+")):
            p.error(f"{flag}: no such results file: {', '.join(missing)}" if missing else
                    f"{flag}: name the results files ({hint})")


def _rows_of(files):
    return [r for path in files.split(",") if path for r in _load(path)]


def _one_dtype(p, flag, groups):
    """A study row (--leads, --wins) averaging a float32 and a float64 black box's seeds: refused, as --report."""
    for g in groups:
        if len({r.get("dtype", "float32") for r in _merged(g.split("+"))}) > 1:
            p.error(f"{flag} got runs of float32 and float64 black boxes in one study ({g}): give each dtype's "
                    "files a study of their own")


def _check_outputs_and_numbers(p, args) -> None:
    """What every command checks first: the output paths writable (before the runs, not after them),
    ``--threads`` and ``--grid`` in range, the comma-separated integers."""
    from zoracle.cli import _writable

    for flag, path in (("--out", args.out), ("--plot", args.plot)):  # before the runs, not after them
        why = _writable(path, "file") if path is not None else None
        if why:
            p.error(f"{flag} {path}: cannot write there ({why})")
    if args.threads < 1 or args.grid < 0:
        p.error(f"--threads must be >= 1 and --grid >= 0, got {args.threads} and {args.grid}")
    for flag in ("seeds", "widths", "tune_widths"):
        try:
            values = _ints(getattr(args, flag))
        except ValueError:
            p.error(f"--{flag.replace('_', '-')} takes comma-separated integers, got {getattr(args, flag)!r}")
        if any(v < 0 for v in values):
            p.error(f"--{flag.replace('_', '-')} must be 0 or more, got {getattr(args, flag)!r}")


def _wins_command(p, args) -> int:
    """``--wins`` (with ``--ratios``): where each method wins, its table and, with ``--plot``, its plot."""
    _check_files(p, (("--wins", args.wins), ("--ratios", args.ratios)), "--wins needs --ratios: the per-second half",
                 True)
    _one_dtype(p, "--wins", [g for g in args.wins.split(",") if g])
    studies = [(_study(g.split("+")), _merged(g.split("+"))) for g in args.wins.split(",") if g]
    rows = wins(studies, _rows_of(args.ratios))
    if args.plot:
        wins_plot(rows, args.plot)
    print(wins_table(rows))
    return 0


def _leads_command(p, args) -> int:
    """``--leads`` and ``--ratios``: issue 13's acceptance tables."""
    _check_files(p, (("--leads", args.leads), ("--ratios", args.ratios)),
                 "comma-separated; with --leads, files of one study joined by '+'", False)
    if args.leads:
        _one_dtype(p, "--leads", [g for g in args.leads.split(",") if g])
        print(leads_table(leads([_merged(g.split("+")) for g in args.leads.split(",") if g])))
    if args.ratios:
        print(ratios_table(ratios(_rows_of(args.ratios))))
    return 0


def _macs_command(args) -> int:
    """``--macs``: the multiply-add counts added to a ``--speed`` file (rewritten in place), and its table."""
    import torch

    torch.set_num_threads(args.threads)  # the replays follow the timed runs' arithmetic (one thread)
    rows = add_macs(_load(args.macs), log=lambda m: print(m, file=sys.stderr, flush=True))
    _save(args.macs, rows)
    print(json.dumps(rows) if args.json else speed_table(rows))
    return 0


def _speed_command(p, args) -> int:
    """``--speed``: every method timed once per point, its table."""
    args.data = [s.strip() for s in args.data.split(",") if s.strip()]
    args.widths = _ints(args.widths)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if any(m not in METHODS for m in args.methods) or "deepzero" not in args.methods:
        p.error("--speed needs --methods from the known ones, deepzero included")
    rows = speed(args, log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.out:
        _save(args.out, rows)
    print(json.dumps(rows) if args.json else speed_table(rows))
    return 0


def _report_runs(p, args) -> list:
    """``--report``: the runs of existing results files; several (parallel sweeps) merge, a run present twice
    counts once."""
    _check_files(p, (("--report", args.report),), "comma-separated", True)
    raw = _rows_of(args.report)
    if not raw or any("seed" not in r for r in raw):
        p.error(f"--report: {args.report} holds no accuracy runs of this study (a --speed file goes to --ratios; "
                "FILE@m1/m2 keeps only those methods' runs)")
    runs = _merged(args.report.split(","))
    if len({r.get("dtype", "float32") for r in runs}) > 1:  # a row would average the two black boxes' runs
        p.error("--report got runs of float32 and float64 black boxes: report each dtype's files on their own")
    return runs


def _check_setting(p, args) -> None:
    """``--setting``: a JSON object, not with ``--settings-from``, whose keys every method takes (checked before
    the first run, not at the method that takes no such key)."""
    try:
        args.setting = json.loads(args.setting)
    except ValueError as e:
        p.error(f"--setting must be a JSON object such as '{{\"lr\": 0.1}}': {e}")
    if not isinstance(args.setting, dict) or args.settings_from:
        p.error("--setting takes a JSON object, and not with --settings-from (which chooses the setting)")
    import inspect

    for method in args.methods:  # before the first run, not at the method that takes no such key
        takes = inspect.signature(RUNNERS[method]).parameters
        unknown = [k for k in args.setting if k not in takes or k == "bench"]
        if unknown and not any(v.kind is v.VAR_KEYWORD for v in takes.values()):
            p.error(f"--setting: {method} takes no {', '.join(map(repr, unknown))} (its settings: "
                    f"{', '.join(k for k in takes if k != 'bench')})")


def _sweep_runs(p, args) -> list:
    """A sweep (or ``--quick``): its choices checked, then its runs (every run of ``--out`` included)."""
    if args.quick:
        args.data, args.widths, args.budget, args.seeds = "digits", "0", 30_000, "0"
    args.data = [s.strip() for s in args.data.split(",") if s.strip()]
    args.widths, args.seeds, args.tune_widths = _ints(args.widths), _ints(args.seeds), _ints(args.tune_widths)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS] + [x for x in args.data if x not in ("digits", "mnist1d")]
    if bad or not args.seeds or not args.widths or args.budget < 1:
        p.error(f"unknown or empty choice: {bad or 'seeds/widths/budget'}")
    if args.setting is not None:
        _check_setting(p, args)
    if args.dtype != "float32" and not args.settings_from and args.setting is None:
        p.error("--dtype float64 needs --settings-from or --setting: it runs settings chosen on the float32 black "
                "box, it does not tune (a tuning would mix the two dtypes' runs)")
    for flag, value in (("--start", args.start), ("--batch-order", args.batch_order), ("--rng", args.rng)):
        if value is not None and not args.settings_from and args.setting is None:
            p.error(f"{flag} needs --settings-from or --setting: a run with a part of its randomness fixed runs the settings "
                    "already chosen, it does not tune")
    return sweep(args, log=lambda m: print(m, file=sys.stderr, flush=True))


def main(argv=None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    _check_outputs_and_numbers(p, args)
    if args.wins is not None:
        return _wins_command(p, args)
    if args.leads is not None or args.ratios is not None:
        return _leads_command(p, args)
    if args.macs is not None:
        return _macs_command(args)
    if args.speed is not None:
        return _speed_command(p, args)
    runs = _report_runs(p, args) if args.report else _sweep_runs(p, args)
    rows = summarize(runs, every_setting=args.every_setting)
    if args.plot:
        plot(runs, args.plot)
    print(json.dumps(rows) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
