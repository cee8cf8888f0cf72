"""``zoracle sol``: solver-in-the-loop correction of a coarse PhiFlow wake-flow solver (ZO-SOL).

Trains a small correction CNN for the coarse solver on a few Reynolds numbers and tests it
on unseen ones, against the downsampled fine solution (Um et al. 2020; DeepZero's ZO-SOL):

- SRC: the coarse solver alone;
- NON: the network fitted offline on precomputed (coarse step, fine) pairs;
- ZO-SOL: DeepZero (sparse CGE, 95% gradient sparsity) through the black-box solver;
- FO-SOL: the same unrolled loss differentiated by autograd (PhiFlow's torch backend).

Prints a Markdown table (test MAE, wall time, queries), a batch speed-up line and writes a
vorticity plot of one test run. ``--json`` prints only ``{"SRC", "NON", "ZO-SOL", "FO-SOL"}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np

from zoracle._checkpoint import replacing
from zoracle._errors import ArgumentError, to_stderr

from . import percent

HELP = "solver-in-the-loop correction of a coarse PhiFlow wake-flow solver (ZO-SOL)"

#: the paper's test MAE (DeepZero, Fig. on the wake-flow benchmark)
PAPER = {"SRC": 0.180, "NON": 0.153, "ZO-SOL": 0.119, "FO-SOL": 0.074}
METHODS = ("SRC", "NON", "ZO-SOL", "FO-SOL")


@dataclass(frozen=True)
class Config:
    """One experiment size. ``quick()`` is the CI size, the defaults the ~9 minute run (docs/sol.md)."""

    fine_nx: int = 128
    factor: int = 4
    warmup: int = 150
    steps: int = 60
    train_re: tuple = (150.0, 300.0, 600.0)
    test_re: tuple = (200.0, 450.0)
    unroll: int = 4
    channels: int = 6
    kernel: int = 3
    zo_steps: int = 60
    starts_per_step: int = 4
    sparsity: float = 0.95
    lr: float = 1e-4
    init: str = "non"
    mu: float = 5e-3
    non_epochs: int = 60
    fo_steps: int = 30
    speedup_k: int = 8
    seed: int = 0

    @staticmethod
    def quick() -> "Config":
        return Config(fine_nx=64, warmup=16, steps=8, train_re=(150.0, 600.0), test_re=(300.0,), unroll=2,
                      channels=4, zo_steps=6, starts_per_step=3, lr=3e-4, non_epochs=30, fo_steps=1, speedup_k=3)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``zoracle sol`` (their help names the default and ``--quick``'s value, from :class:`Config`)."""
    full, quick = Config(), Config.quick()

    def default(field, fmt=str):  # "default 60, quick 6" (a value --quick keeps is said once)
        a, b = fmt(getattr(full, field)), fmt(getattr(quick, field))
        return f"default {a}" + ("" if a == b else f", quick {b}")

    def res(v):
        return ",".join(f"{r:g}" for r in v)

    parser.add_argument("--quick", action="store_true", help="CI size: small grids, few steps (about a minute)")
    parser.add_argument("--json", action="store_true",
                        help='print only {"SRC", "NON", "ZO-SOL", "FO-SOL": test MAE or null} as JSON')
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="write results.md, results.json and vorticity.png here (default: no files)")
    parser.add_argument("--cache", metavar="DIR", default=None,
                        help="cache of fine trajectories (default $ZORACLE_CACHE or ~/.cache/zoracle)")
    parser.add_argument("--fine-nx", type=int, default=None,
                        help=f"fine grid cells along x (y gets twice as many; {default('fine_nx')})")
    parser.add_argument("--factor", type=int, default=None,
                        help=f"coarsening factor fine -> coarse ({default('factor')})")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"fine steps simulated before recording (transient; {default('warmup')})")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"recorded steps per run (also the test rollout length; {default('steps')})")
    parser.add_argument("--train-re", type=_floats, default=None,
                        help=f"training Reynolds numbers, comma-separated ({default('train_re', res)})")
    parser.add_argument("--test-re", type=_floats, default=None,
                        help=f"test Reynolds numbers, comma-separated ({default('test_re', res)})")
    parser.add_argument("--unroll", type=int, default=None,
                        help=f"solver steps unrolled per loss (paper: 16; {default('unroll')})")
    parser.add_argument("--zo-steps", type=int, default=None, help=f"ZO-SOL optimizer steps ({default('zo_steps')})")
    parser.add_argument("--sparsity", type=float, default=None,
                        help=f"gradient sparsity of sparse CGE ({default('sparsity')})")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"ZO-SOL and FO-SOL learning rate (Adam; {default('lr', lambda v: f'{v:g}')})")
    parser.add_argument("--init", choices=("non", "zero"), default=None,
                        help="start ZO-SOL and FO-SOL from the NON fit (default) or from no correction")
    parser.add_argument("--fo-steps", type=int, default=None,
                        help=f"FO-SOL optimizer steps, 0 skips FO-SOL ({default('fo_steps')})")
    parser.add_argument("--no-fo", action="store_true", help="skip FO-SOL (reported as null)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the vorticity plot")
    parser.add_argument("--seed", type=int, default=None, help="seed of the network init and ZO masks (default 0)")


def _floats(text: str) -> tuple:
    try:
        vals = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 150,300, got {text!r}") from None
    if not vals or any(not math.isfinite(v) or v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"Reynolds numbers must be finite and > 0, got {text!r}")
    return vals


def config_from_args(args) -> Config:
    """The :class:`Config` for parsed flags (validated; errors name the flag)."""
    cfg = Config.quick() if args.quick else Config()
    over = {}
    for flag, field in (("fine_nx", "fine_nx"), ("factor", "factor"), ("warmup", "warmup"), ("steps", "steps"),
                        ("train_re", "train_re"), ("test_re", "test_re"), ("unroll", "unroll"),
                        ("zo_steps", "zo_steps"), ("sparsity", "sparsity"), ("lr", "lr"), ("fo_steps", "fo_steps"),
                        ("seed", "seed"), ("init", "init")):
        v = getattr(args, flag, None)
        if v is not None:
            over[field] = v
    if getattr(args, "no_fo", False):
        if getattr(args, "fo_steps", None):  # (`--no-fo --fo-steps 50` skipped FO-SOL and said nothing)
            raise ArgumentError(f"`--no-fo` skips FO-SOL, which `--fo-steps` {args.fo_steps} asks to run; "
                                "drop one of them")
        over["fo_steps"] = 0
    cfg = replace(cfg, **over)
    # --factor 1 makes the coarse solver the fine one: SRC's loss is 0 and the relative loss 0/0
    checks = (("--fine-nx", cfg.fine_nx, 8), ("--factor", cfg.factor, 2), ("--warmup", cfg.warmup, 0),
              ("--steps", cfg.steps, 1), ("--unroll", cfg.unroll, 1), ("--zo-steps", cfg.zo_steps, 1),
              ("--fo-steps", cfg.fo_steps, 0), ("--seed", cfg.seed, 0))
    for flag, v, lo in checks:
        if v < lo:
            raise ArgumentError(f"`{flag}` must be >= {lo}, got {v}")
    if cfg.seed >= 2 ** 64:  # torch's seeds are 64-bit: a larger one died in torch.manual_seed
        raise ArgumentError(f"`--seed` must be < 2**64, got {cfg.seed}")
    if cfg.fine_nx % cfg.factor or cfg.fine_nx // cfg.factor < 4:
        raise ArgumentError(
            f"`--fine-nx` {cfg.fine_nx} must be divisible by `--factor` {cfg.factor} with at least 4 coarse cells"
        )
    if cfg.unroll > cfg.steps:
        raise ArgumentError(f"`--unroll` {cfg.unroll} must not exceed `--steps` {cfg.steps}")
    if not 0 <= cfg.sparsity < 1:
        raise ArgumentError(f"`--sparsity` must be in [0, 1) (0.95 = estimate 5% of the weights), got {cfg.sparsity}")
    if not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise ArgumentError(f"`--lr` must be a finite number > 0, got {cfg.lr}")
    return cfg


@dataclass(frozen=True)
class MethodResult:
    """Test MAE, training wall time and solver queries of one method."""

    name: str
    mae: float | None
    seconds: float
    queries: int
    note: str = ""


@dataclass(frozen=True)
class SolResult:
    """Everything ``run`` measured."""

    config: Config
    methods: tuple
    reference_seconds: float
    reference_cached: bool
    speedup: dict
    vorticity_path: str | None

    def maes(self) -> dict:
        return {m.name: (None if m.mae is None else float(m.mae)) for m in self.methods}


def _check_reynolds(fine, cfg: Config) -> None:
    """The Reynolds numbers the fine solver can step stably (errors name the flag)."""
    import zoracle as zo

    for flag, res in (("--train-re", cfg.train_re), ("--test-re", cfg.test_re)):  # named as the command line
        try:
            fine.substeps(res)
        except zo.ArgumentError as exc:
            raise zo.ArgumentError(f"{flag}: {exc}") from None


def seen_test_note(cfg: Config) -> str | None:
    """A line for the log when a test Reynolds number is also a training one (its flow is no unseen one)."""
    seen = sorted({float(r) for r in cfg.test_re} & {float(r) for r in cfg.train_re})
    if not seen:
        return None
    return (f"note: test Re {', '.join(f'{r:g}' for r in seen)} also in --train-re: its test rollout is on a "
            "flow the correction trained on, not an unseen one (pass other --test-re values for that)")


def check(args) -> None:
    """The flags' values, refused before any work (``zoracle sol`` exits 2, as for argparse's errors)."""
    cfg = config_from_args(args)
    from zoracle.adapters import phiflow as pf

    _check_reynolds(pf.WakeFlow(nx=cfg.fine_nx, ny=2 * cfg.fine_nx), cfg)


def run(cfg: Config, *, cache=None, log=print, plot_path=None) -> SolResult:
    """Run the whole benchmark for ``cfg``; ``log`` receives progress lines."""
    with warnings.catch_warnings():  # PhiFlow's own warnings off for this run: the caller's filters put back
        warnings.filterwarnings("ignore", module="phi")
        warnings.filterwarnings("ignore", module="phiml")
        return _run(cfg, cache, log, plot_path)


def _run(cfg: Config, cache, log, plot_path) -> SolResult:
    import torch

    import zoracle as zo
    from zoracle.adapters import phiflow as pf

    torch.manual_seed(cfg.seed)
    fine = pf.WakeFlow(nx=cfg.fine_nx, ny=2 * cfg.fine_nx)
    coarse = fine.coarsened(cfg.factor)
    _check_reynolds(fine, cfg)
    if (note := seen_test_note(cfg)) is not None:
        log(note)
    all_re = tuple(cfg.train_re) + tuple(cfg.test_re)
    ref = pf.reference_trajectories(fine, all_re, factor=cfg.factor, warmup=cfg.warmup, steps=cfg.steps,
                                    cache_dir=cache, progress=log)
    log(f"reference: fine {fine.nx}x{fine.ny} -> coarse {coarse.nx}x{coarse.ny}, "
        f"{'loaded from ' + ref.path if ref.cached else f'computed in {ref.seconds:.1f} s, ' + (('cached at ' + ref.path) if ref.path else 'not cached')}")
    n_train = len(cfg.train_re)
    train = ref.select(np.arange(n_train))
    test = ref.select(np.arange(n_train, len(all_re)))
    net = pf.correction_net(channels=cfg.channels, kernel=cfg.kernel, seed=cfg.seed, out_scale=0.0)
    p0 = pf.flat_params(net)
    oracle = pf.SolverInTheLoop(coarse, net, train, unroll=cfg.unroll, max_queries_per_call=1024, relative=True)
    log(f"correction CNN: {oracle.d} parameters; {len(oracle.starts)} training start states, unroll {cfg.unroll}")

    # batch speed-up: k perturbations one by one vs as one batched simulation
    k = cfg.speedup_k
    rng = np.random.default_rng(cfg.seed)
    P = p0[None] + 1e-3 * rng.standard_normal((k, oracle.d))
    probe = oracle.bind(oracle.starts[:1])
    t0 = time.perf_counter()
    single = np.array([probe(p) for p in P])
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = probe.batch(P)
    t_batch = time.perf_counter() - t0
    speedup = {"k": k, "one_by_one_s": t_single, "batched_s": t_batch, "speedup": t_single / t_batch,
               "max_abs_diff": float(np.max(np.abs(single - batched)))}
    log(f"batch speed-up: {k} perturbations one by one {t_single:.2f} s, as one batched simulation "
        f"{t_batch:.2f} s -> {speedup['speedup']:.1f}x (max |difference| {speedup['max_abs_diff']:.1e})")

    results = {"SRC": MethodResult("SRC", None, 0.0, 0)}
    params = {"SRC": np.zeros_like(p0)}

    log(f"NON: offline fit on {train.vx.shape[0] * (train.vx.shape[1] - 1)} precomputed pairs")
    p_non, s_non = pf.fit_offline(coarse, net, train, epochs=cfg.non_epochs, seed=cfg.seed, params=p0)
    params["NON"] = p_non
    results["NON"] = MethodResult("NON", None, s_non, 0, f"{train.vx.shape[0] * (train.vx.shape[1] - 1)} "
                                  "precomputed one-step pairs, no solver in the loop")

    start = p_non if cfg.init == "non" else p0
    log(f"ZO-SOL: sparse CGE at {percent(cfg.sparsity)} gradient sparsity, {cfg.zo_steps} steps from "
        f"{'the NON fit' if cfg.init == 'non' else 'no correction'}")
    batches = zo.Minibatches((oracle.starts,), batch_size=min(cfg.starts_per_step, len(oracle.starts)),
                             seed=cfg.seed)
    epochs = -(-cfg.zo_steps // len(batches))
    t0 = time.perf_counter()
    res = zo.train(oracle, start, batches=batches, epochs=epochs, steps_per_epoch=min(len(batches), cfg.zo_steps),
                   estimator=zo.CGE(mu=cfg.mu), optimizer=zo.adam(cfg.lr), sparsity=cfg.sparsity,
                   ratios="uniform", mask_shuffle_interval=1, rng=cfg.seed, progress=False,
                   callbacks=[lambda event, record, _p: event == "step" and record["step"] + 1 >= cfg.zo_steps])
    params["ZO-SOL"] = res.params
    # the history holds each step's minibatch loss *before* its update: measure the start and
    # the trained params on every training start state instead (one more batched simulation)
    before, after = oracle.batch(np.stack([start, res.params]))
    log(f"ZO-SOL: relative training loss on all {len(oracle.starts)} training start states {before:.4f} -> "
        f"{after:.4f} in {res.steps} steps, {res.nfev} queries")
    results["ZO-SOL"] = MethodResult("ZO-SOL", None, time.perf_counter() - t0, int(res.nfev),
                                     f"{res.steps} steps of sparse CGE, losses only")

    if cfg.fo_steps > 0:
        log(f"FO-SOL: autograd through PhiFlow's torch backend, {cfg.fo_steps} steps")
        try:
            p_fo, s_fo = pf.fit_differentiable(coarse, net, train, starts=oracle.starts, unroll=cfg.unroll,
                                               iterations=cfg.fo_steps, lr=cfg.lr,
                                               batch_size=cfg.starts_per_step, seed=cfg.seed, params=start)
            params["FO-SOL"] = p_fo
            results["FO-SOL"] = MethodResult("FO-SOL", None, s_fo, cfg.fo_steps,
                                             f"{cfg.fo_steps} step(s), each a forward + backward pass")
        except Exception as exc:  # the torch backend may not differentiate some PhiFlow build
            results["FO-SOL"] = MethodResult("FO-SOL", None, 0.0, 0, f"omitted: {type(exc).__name__}: {exc}")
            log(f"FO-SOL omitted: {exc}")
    else:
        results["FO-SOL"] = MethodResult("FO-SOL", None, 0.0, 0, "skipped (--no-fo / --fo-steps 0)")

    names = [n for n in METHODS if n in params]
    log(f"test: {cfg.steps}-step rollouts at Re = {list(cfg.test_re)} for {', '.join(names)} (one batch)")
    traj = pf.rollout(coarse, net, test, np.stack([params[n] for n in names]), cfg.steps)
    maes = pf.mean_abs_error(traj, test)
    for n, m in zip(names, maes):
        results[n] = replace(results[n], mae=float(m))
    vort = None
    if plot_path is not None:
        try:
            vort = _plot(pf, coarse, test, traj, names, plot_path, cfg)
        except OSError as exc:  # a disk filled meanwhile: the results are kept (written and printed)
            log(f"the vorticity plot {os.fspath(plot_path)!r} could not be written ({type(exc).__name__}: {exc})")
    return SolResult(cfg, tuple(results[n] for n in METHODS), ref.seconds, ref.cached, speedup, vort)


def _plot(pf, coarse, test, traj, names, path, cfg):
    from matplotlib.figure import Figure  # (not pyplot: the backend and pyplot's figures stay the caller's)

    run_i, t = 0, traj[0].shape[2] - 1
    panels = [("reference (fine, downsampled)", test.vx[run_i, t], test.vy[run_i, t])]
    for n in ("SRC", "ZO-SOL"):
        j = names.index(n)
        panels.append((n, traj[0][j, run_i, t], traj[1][j, run_i, t]))
    w = [pf.vorticity(coarse, vx, vy) for _, vx, vy in panels]
    lim = max(float(np.abs(v).max()) for v in w) or 1.0
    fig = Figure(figsize=(3 * len(panels), 5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, _, _), v in zip(axes[0], panels, w):
        ax.imshow(v.T, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim,
                  extent=(0, coarse.width, 0, coarse.height))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x")
    axes[0][0].set_ylabel("y")
    fig.suptitle(f"vorticity, Re = {test.re[run_i]:g}, step {t} of the test rollout", fontsize=10)
    fig.tight_layout()
    from zoracle._plot import save_figure

    save_figure(fig, path, dpi=110)
    return str(path)


def markdown(res: SolResult) -> str:
    """The results table (with the paper's numbers) and the setup in a few lines."""
    cfg = res.config
    c = cfg.fine_nx // cfg.factor
    lines = [
        f"Wake flow, fine {cfg.fine_nx}x{2 * cfg.fine_nx} -> coarse {c}x{2 * c}; train Re {list(cfg.train_re)}, "
        f"test Re {list(cfg.test_re)}; {cfg.steps}-step test rollouts; unroll {cfg.unroll}; "
        f"ZO-SOL and FO-SOL start from {'the NON fit' if cfg.init == 'non' else 'no correction'}.",
        "",
        "| method | test MAE (here) | MAE / SRC | paper MAE | train wall s | loss queries | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    src = next(m.mae for m in res.methods if m.name == "SRC")
    for m in res.methods:
        mae = "n/a" if m.mae is None else f"{m.mae:.4f}"
        rel = "n/a" if m.mae is None or not src else f"{m.mae / src:.3f}"
        lines.append(f"| {m.name} | {mae} | {rel} | {PAPER[m.name]:.3f} | {m.seconds:.1f} | {m.queries} | {m.note} |")
    s = res.speedup
    lines += ["", f"Batch speed-up: {s['k']} perturbations one by one {s['one_by_one_s']:.2f} s, batched "
                  f"{s['batched_s']:.2f} s ({s['speedup']:.1f}x; max |difference| {s['max_abs_diff']:.1e})."]
    return "\n".join(lines)


def main(args) -> int:
    """Entry point of ``zoracle sol``."""
    cfg = config_from_args(args)
    out = None if args.out is None else os.path.expanduser(args.out)  # where the CLI checked it (~ expanded)
    if out is not None:
        os.makedirs(out, exist_ok=True)
    log = to_stderr if args.json else print
    t0 = time.perf_counter()
    plot = None if (out is None or args.no_plot) else os.path.join(out, "vorticity.png")
    try:
        res = run(cfg, cache=args.cache, log=log, plot_path=plot)
    except ImportError as exc:
        from zoracle._errors import ZoracleError

        raise ZoracleError(f"{exc}; install with: pip install -e \".[phiflow,apps]\"  (from the zoracle clone)") from None
    table = markdown(res)
    total = time.perf_counter() - t0
    unwritten = []  # a disk that filled during the run must not lose the printed results
    if out is not None:
        try:
            # (through a temporary file each: a failed write keeps the previous run's results, not half of them)
            with replacing(os.path.join(out, "results.md")) as tmp, open(tmp, "w", encoding="utf-8") as fh:
                fh.write(table + f"\n\nTotal wall time {total:.1f} s.\n")
            with replacing(os.path.join(out, "results.json")) as tmp, open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"mae": res.maes(), "config": asdict(cfg), "speedup": res.speedup,
                           "methods": [asdict(m) for m in res.methods], "seconds": total}, fh, indent=2)
        except OSError as exc:
            unwritten.append(f"the results could not be written to {out!r} ({type(exc).__name__}: {exc})")
    if args.json:
        print(json.dumps(res.maes()))
    else:
        print(table)
        if res.vorticity_path:
            print(f"vorticity plot: {res.vorticity_path}")
        print(f"total wall time {total:.1f} s")
    if plot is not None and res.vorticity_path is None:  # after the results: exit 1 naming the file
        unwritten.insert(0, f"the vorticity plot {plot!r} could not be written")
    if unwritten:
        from zoracle._errors import ZoracleError

        raise ZoracleError("; ".join(unwritten) + "; the results are printed above")
    return 0
