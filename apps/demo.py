"""``zoracle demo``: DeepZero vs first-order SGD vs RGE on the bundled scikit-learn digits.

One small CNN (no download: ``sklearn.datasets.load_digits``), three trainings from the same
initial weights on the same minibatches:

* **DeepZero**: ZO-GraSP layer-wise keep ratios (q = 192 directions on 25 samples per
  class), sparse CGE at 90% gradient sparsity over random masks redrawn every
  ``--mask-interval`` epochs (biases dense), feature reuse through the torch adapter's
  prefix/suffix split (used automatically by ``estimate_gradient``), SGD with momentum
  0.9, weight decay 5e-4 and a cosine schedule with one warm-up epoch;
* **FO**: the same model and recipe with autograd gradients (the upper reference);
* **RGE**: randomized estimates with as many directions per step as DeepZero spends
  queries, so both use the same query budget.

It prints a table (test accuracy, loss queries, wall time) and, with ``--json``, one JSON
object ``{"deepzero": {...}, "fo": {...}, "rge": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from zoracle._errors import percent_hint, to_stderr

from . import percent

HELP = "train a small CNN on scikit-learn digits with DeepZero vs first-order vs RGE"

METHODS = ("deepzero", "fo", "rge")

DIGITS = 1797  # images in scikit-learn's digits: an epoch takes at most that many steps


class _Noted(argparse.Action):
    """argparse action of a flag that only some methods use: stores the value and notes the flag in
    ``args.given`` (``--methods fo --lr 0.5`` trained with --fo-lr's default and said nothing)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = set(getattr(namespace, "given", ())) | {self.dest}


#: flag -> (its attribute, the methods it sets something for)
METHOD_FLAGS = {"--sparsity": ("sparsity", ("deepzero", "rge")), "--ratios": ("ratios", ("deepzero", "rge")),
                "--mask-interval": ("mask_interval", ("deepzero", "rge")), "--lr": ("lr", ("deepzero", "rge")),
                "--fo-lr": ("fo_lr", ("fo",)), "--rge-lr": ("rge_lr", ("rge",)), "--mu": ("mu", ("deepzero", "rge"))}

#: method -> the flag of its learning rate
LR_FLAGS = {"deepzero": "--lr", "fo": "--fo-lr", "rge": "--rge-lr"}


def add_arguments(parser) -> None:
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs for every method (default 35; 3 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a 3-epoch smoke test of the pipeline; too short to rank the methods (not a comparison)")
    parser.add_argument("--batch-size", type=int, default=32, help="minibatch size (default 32)")
    parser.add_argument("--sparsity", action=_Noted, type=float, default=0.9,
                        help="DeepZero gradient sparsity over conv/linear weights, in [0, 1) (default 0.9)")
    parser.add_argument("--ratios", action=_Noted, default="zo_grasp",
                        choices=("zo_grasp", "smart", "uniform", "random"),
                        help="layer-wise keep ratios of DeepZero (default zo_grasp)")
    parser.add_argument("--mask-interval", action=_Noted, type=int, default=1,
                        help="epochs between fresh random masks (default 1; the paper uses 5 over 50 epochs)")
    parser.add_argument("--lr", action=_Noted, type=float, default=0.3,
                        help="peak learning rate of DeepZero (default 0.3)")
    parser.add_argument("--fo-lr", action=_Noted, type=float, default=0.1,
                        help="peak learning rate of first-order SGD (default 0.1)")
    parser.add_argument("--rge-lr", action=_Noted, type=float, default=0.02,
                        help="peak learning rate of the RGE run (default 0.02)")
    parser.add_argument("--mu", action=_Noted, type=float, default=5e-3,
                        help="finite-difference step of CGE and RGE (default 5e-3)")
    parser.add_argument("--methods", default="deepzero,fo,rge",
                        help="comma-separated subset of deepzero,fo,rge to run (default all three; rge alone "
                             "still sizes its query budget from a DeepZero run of the same settings)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the initial weights and all ZO randomness")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: this model's ops are too small to gain from more)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--plot", metavar="PATH", default=None, help="save training curves to this image (matplotlib)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar per training run")
    try:
        from zoracle.executors import add_executor_arguments
    except ImportError:  # pragma: no cover - older core without parallel executors
        return
    add_executor_arguments(parser)


def _check(args) -> list:
    from zoracle import ArgumentError

    if args.epochs is None:
        args.epochs = 3 if args.quick else 35
    if args.epochs < 1:
        raise ArgumentError(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        raise ArgumentError(f"--batch-size must be >= 1, got {args.batch_size}")
    most = (2**63 - 1) // -(-DIGITS // args.batch_size)  # the schedules count steps in 64 bits
    if args.epochs > most:  # (refused after the data had loaded, naming the schedule's `total_steps`)
        raise ArgumentError(f"--epochs must be at most {most} at --batch-size {args.batch_size} (its steps are "
                            f"counted in 64 bits), got {args.epochs}")
    if not 0 <= args.sparsity < 1:
        raise ArgumentError(f"--sparsity must be in [0, 1) (0.9 = keep 10%), got {args.sparsity}"
                            f"{percent_hint('--sparsity', args.sparsity)}")
    if args.mask_interval < 1:
        raise ArgumentError(f"--mask-interval must be >= 1, got {args.mask_interval}")
    for name in ("lr", "fo_lr", "rge_lr", "mu"):
        v = getattr(args, name)
        if not 0 < v < float("inf"):
            raise ArgumentError(f"--{name.replace('_', '-')} must be a finite number > 0, got {v}")
    most = 8 * (os.cpu_count() or 1)
    if not 1 <= args.threads <= most:  # thousands of threads crash torch's pool
        raise ArgumentError(f"--threads must be in [1, {most}] (8 per core), got {args.threads}")
    if not 0 <= args.seed < 2**63:
        raise ArgumentError(f"--seed must be in [0, 2**63), got {args.seed}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ArgumentError(f"--methods must list some of {', '.join(METHODS)}, got {args.methods!r}")
    given = getattr(args, "given", ())
    for flag, (attr, used_by) in METHOD_FLAGS.items():
        if attr in given and not set(used_by) & set(methods):
            value = getattr(args, attr)
            meant = ""  # a learning rate: most likely meant for a method run (`--methods fo --lr 0.5`)
            if flag in LR_FLAGS.values():
                ours = list(dict.fromkeys(LR_FLAGS[m] for m in METHODS if m in methods))
                meant = (f" (for the learning rate of --methods {args.methods}, pass {ours[0]} {value})"
                         if len(ours) == 1 else f" (the learning rates of --methods {args.methods} are "
                         f"{' and '.join(ours)})")
            raise ArgumentError(f"{flag} {value} is for {' and '.join(used_by)}, which --methods {args.methods} does "
                                f"not run; drop it{meant}, or add {used_by[0]} to --methods")
    if not {"deepzero", "rge"} & set(methods):  # first-order SGD makes no queries: main drops the executor
        given = [flag for flag, on in (("--workers", getattr(args, "workers", 1) not in (None, 1)),
                                       ("--dask", getattr(args, "dask", None) is not None),
                                       ("--ray", getattr(args, "ray", None) is not None),
                                       ("--shard-timeout", getattr(args, "timeout", None) is not None)) if on]
        if given:  # (`--methods fo --dask ADDRESS` ran serially and said nothing)
            raise ArgumentError(f"{given[0]} does nothing with --methods {args.methods} (first-order SGD makes no "
                                "queries to spread or time out); drop it, or add deepzero or rge to --methods")
    return methods


def check(args) -> None:
    """The flags' values, refused before any work (``zoracle demo`` exits 2, as for argparse's errors);
    the executor flags too (--workers 0 was refused by main, after torch and the data: exit 1)."""
    _check(args)
    from zoracle._errors import MissingExtra
    from zoracle.executors import from_args

    try:
        executor = from_args(args)  # builds, starts nothing (a cluster is reached in main)
    except MissingExtra:  # a missing extra: main names it (exit 1)
        return
    if executor is not None and callable(getattr(executor, "close", None)):
        executor.close()


def make_model(seed: int):
    """conv3x3(1->8)-ReLU, conv3x3(8->16, stride 2)-ReLU, 2x2 average pool, linear(64->10); 1898 weights.

    No BatchNorm: in train mode every perturbation needs its own batch statistics, which
    costs far more than the convolutions at this size (see docs/benchmarks.md, `zoracle demo`).
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 10),
    )


def _accuracy(oracle, params, x, y) -> float:
    return float((oracle.predict(params, x).argmax(1) == y).mean())


def run_zo(kind, args, data, p0, executor, budget=None) -> dict:
    """Train with DeepZero (``kind="deepzero"``) or RGE at ``budget`` total queries."""
    import torch

    import zoracle as zo
    from zoracle.adapters.torch import TorchOracle

    from ._digits import per_class

    model = make_model(args.seed)
    oracle = TorchOracle(model, torch.nn.CrossEntropyLoss(reduction="none"))
    oracle.load(p0)
    batches = zo.Minibatches((data.x_train, data.y_train), args.batch_size, seed=args.seed)
    steps = args.epochs * len(batches)

    def sched(lr):
        return zo.cosine_schedule(lr, total_steps=steps, warmup_steps=min(len(batches), steps - 1))

    common = dict(batches=batches, epochs=args.epochs, executor=executor, rng=args.seed, progress=args.progress,
                  eval_fn=lambda p: {"test_acc": _accuracy(oracle, p, data.x_test, data.y_test)})
    t0 = time.perf_counter()
    if kind == "deepzero":
        res = zo.train(oracle, p0, estimator=zo.CGE(mu=args.mu), sparsity=args.sparsity, ratios=args.ratios,
                       grasp_batch=per_class(data.x_train, data.y_train, 25, seed=args.seed), grasp_directions=192,
                       mask_shuffle_interval=args.mask_interval,
                       optimizer=zo.sgd(sched(args.lr), momentum=0.9, weight_decay=5e-4), **common)
    else:
        q = max(1, int(round(budget / steps)) - 1)  # q directions + the base point = DeepZero's queries per step
        res = zo.train(oracle, p0, estimator=zo.RGE(mu=args.mu, directions=q),
                       optimizer=zo.sgd(sched(args.rge_lr), momentum=0.9, weight_decay=5e-4), **common)
    seconds = time.perf_counter() - t0
    out = {"test_acc": _accuracy(oracle, res.params, data.x_test, data.y_test), "queries": int(res.nfev),
           "seconds": seconds, "curve": [e.get("test_acc") for e in res.history.epochs],
           "loss": [float(e["loss"]) for e in res.history.epochs]}
    if kind == "deepzero":
        names = [i.name for i in oracle.param_info if i.kind in ("conv", "linear")]
        out["ratios"] = {n: round(float(r), 4) for n, r in zip(names, res.ratios)}
        out["queries_per_step"] = int(res.history.steps[-1]["nfev"])
    else:
        out["directions"] = q
    return out


def run_fo(args, data, p0) -> dict:
    """First-order SGD (autograd) with the same model, initial weights, batches and recipe."""
    import torch

    import zoracle as zo
    from zoracle import ArgumentError
    from zoracle.adapters.torch import TorchOracle

    model = make_model(args.seed)
    oracle = TorchOracle(model, torch.nn.CrossEntropyLoss(reduction="none"))
    oracle.load(p0)
    xt, yt = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    batches = zo.Minibatches((xt, yt), args.batch_size, seed=args.seed)
    steps = args.epochs * len(batches)
    sched = zo.cosine_schedule(args.fo_lr, total_steps=steps, warmup_steps=min(len(batches), steps - 1))
    opt = torch.optim.SGD(model.parameters(), lr=args.fo_lr, momentum=0.9, weight_decay=5e-4)
    t0 = time.perf_counter()
    step, curve, losses = 0, [], []
    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        for x, y in batches(epoch):
            for g in opt.param_groups:
                g["lr"] = sched(step)
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            if not math.isfinite(loss.item()):  # reported as the ZO runs' divergence is, not as 10% accuracy
                raise ArgumentError(f"training diverged at step {step} (epoch {epoch}): the first-order loss became "
                                    f"{loss.item()}; lower --fo-lr (lr was {sched(step):g})")
            loss.backward()
            opt.step()
            total += loss.item()
            step += 1
        losses.append(total / len(batches))
        curve.append(_accuracy(oracle, oracle.initial_params(), data.x_test, data.y_test))
    seconds = time.perf_counter() - t0
    # one forward + one backward per step: reported as `steps` gradient evaluations
    return {"test_acc": curve[-1], "queries": step, "seconds": seconds, "curve": curve, "loss": losses}


def _table(results: dict, args) -> str:
    rows = [("method", "test acc", "queries", "wall time")]
    label = {"deepzero": f"DeepZero (sparse CGE {percent(args.sparsity)}, {args.ratios})",
             "fo": "first-order SGD (autograd)", "rge": "RGE, same query budget"}
    for m in METHODS:
        if m in results:
            r = results[m]
            if "error" in r:  # diverged, or not run: the others' results stand
                rows.append((label[m], r["error"].split(":")[0], "-", "-"))
                continue
            q = f"{r['queries']:,}" + (" grads" if m == "fo" else "")
            rows.append((label[m], f"{100 * r['test_acc']:.2f}%", q, f"{r['seconds']:.1f} s"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


#: printed by every --quick run: its numbers must not be read as a ranking
SMOKE_NOTE = ("smoke test (--quick, {epochs} epochs): checks that every method runs; {epochs} epochs cannot rank "
              "the methods, so this is not a comparison (run `zoracle demo` for that)")


def _plot(results: dict, path: str, title: str | None = None) -> None:
    from matplotlib.figure import Figure  # (not pyplot: the backend and pyplot's figures stay the caller's)

    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for m, r in results.items():
        ep = range(1, len(r["curve"]) + 1)
        axes[0].plot(ep, [100 * a for a in r["curve"]], marker=".", label=m)
        axes[1].plot(ep, r["loss"], marker=".", label=m)
    axes[0].set(xlabel="epoch", ylabel="test accuracy (%)", title="digits: test accuracy")
    axes[1].set(xlabel="epoch", ylabel="training loss", title="mean minibatch loss", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from zoracle._plot import save_figure

    save_figure(fig, path, dpi=120)


def main(args) -> int:
    methods = _check(args)
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _main(args, methods)
    finally:  # main() may run inside a larger program (tests): leave torch as found
        torch.set_num_threads(previous_threads)



def _first_line(text: str, limit: int = 400) -> str:
    """The first line of an error's text for the demo's one-line refusal, cut at ``limit`` characters
    with an ellipsis ("no detail" for none): a cut at 200 without one ended an executor's own advice
    mid-word ("... or 'local' for a local )")."""
    lines = text.strip().splitlines()
    if not lines:
        return "no detail"
    return lines[0] if len(lines[0]) <= limit else lines[0][:limit - 3] + "..."

def _main(args, methods) -> int:
    import torch

    from zoracle import ArgumentError

    from ._digits import load_digits_split

    try:
        from zoracle.executors import from_args
    except ImportError:  # pragma: no cover
        from_args = None
    executor = from_args(args) if from_args is not None else None  # its flags are checked either way
    if not {"deepzero", "rge"} & set(methods):
        executor = None  # first-order SGD makes no queries: no workers to start
    if executor is not None:  # started (and a cluster reached) before any work, so a bad address costs nothing
        flag = "--dask" if args.dask else "--ray" if args.ray else "--workers"
        try:
            executor.__enter__()
        except Exception as exc:
            from zoracle._errors import shown_address

            address = shown_address(args.dask or args.ray or args.workers)  # (a password in it masked, as the executor's)
            ray = sys.modules.get("ray") if args.ray else None  # (imported by the executor that failed)
            denied = getattr(getattr(ray, "exceptions", None), "AuthenticationError", ())
            if isinstance(exc, denied):  # Ray's traceback, then several lines of its help
                detail = _first_line(str(getattr(exc, "message", "")))
                raise ArgumentError(f"--ray {address}: the Ray cluster refused this driver's authentication "
                                    f"({detail}); "
                                    "check that the cluster's auth token is on this machine (~/.ray/auth_token, the "
                                    "file RAY_AUTH_TOKEN_PATH names, or RAY_AUTH_TOKEN) and that RAY_AUTH_MODE=token "
                                    "is set, as on the cluster") from None
            if not isinstance(exc, (ConnectionError, TimeoutError, OSError, ValueError)):
                raise
            fix = (f"use {flag} local" if flag != "--workers" else "use fewer --workers, or none")
            raise ArgumentError(f"{flag} {address}: could not start or reach the cluster ({type(exc).__name__}: "
                                f"{_first_line(str(exc))}); "
                                f"check the address and that the cluster is running, or {fix}") from None
    results = {}
    log = to_stderr if not args.json else (lambda msg: None)
    try:  # the executor is closed whatever fails from here on (loading the data included)
        data = load_digits_split(seed=args.seed)
        from zoracle.adapters.torch import TorchOracle

        oracle0 = TorchOracle(make_model(args.seed), torch.nn.CrossEntropyLoss(reduction="none"))
        p0 = oracle0.initial_params()
        log(f"digits: {len(data.y_train)} train / {len(data.y_test)} test images, CNN with {p0.size} weights, "
            f"{args.epochs} epochs, batch {args.batch_size}")
        if {"deepzero", "rge"} & set(methods):  # before the first-order run, whose result the error would lose
            from zoracle._estimators import StepError, as_seen, check_step

            try:  # (the float32 model takes its steps in float32)
                check_step(as_seen(oracle0, p0), args.mu, "forward",
                           "CGE" if "deepzero" in methods else "RGE")  # the estimator the user asked for
            except StepError as exc:
                raise ArgumentError(f"--mu {args.mu:g}: {exc}".replace("use mu >=", "use --mu >=")) from None

        def attempt(method, run):
            """A method that diverges is reported as such; the others' results stand (a late RGE
            divergence threw away the finished runs)."""
            try:
                return run()
            except ArgumentError as exc:
                if not str(exc).startswith("training diverged"):
                    raise
                flag = {"fo": "--fo-lr", "deepzero": "--lr", "rge": "--rge-lr"}[method]
                text = str(exc) if flag in str(exc) else f"{exc} ({flag})"
                log(f"{method}: {text}")
                return {"error": f"diverged: {text}"}

        if "fo" in methods:
            results["fo"] = attempt("fo", lambda: run_fo(args, data, p0))
            if "error" not in results["fo"]:
                log(f"fo: {100 * results['fo']['test_acc']:.2f}% in {results['fo']['seconds']:.1f} s")
        if "deepzero" in methods or "rge" in methods:
            dz = attempt("deepzero", lambda: run_zo("deepzero", args, data, p0, executor))
            if "deepzero" in methods:
                results["deepzero"] = dz
                if "error" not in dz:
                    log(f"deepzero: {100 * dz['test_acc']:.2f}% in {dz['seconds']:.1f} s, ratios {dz['ratios']}")
            if "rge" in methods and "error" in dz:
                results["rge"] = {"error": "not run: RGE gets DeepZero's query budget, and DeepZero "
                                           + dz["error"]}
            elif "rge" in methods:
                results["rge"] = attempt("rge", lambda: run_zo("rge", args, data, p0, executor, budget=dz["queries"]))
                if "error" not in results["rge"]:
                    log(f"rge: {100 * results['rge']['test_acc']:.2f}% in {results['rge']['seconds']:.1f} s")
    finally:
        if executor is not None:
            executor.__exit__(None, None, None)
    ordered = {m: results[m] for m in METHODS if m in results}
    failed = {m: r["error"] for m, r in ordered.items() if "error" in r}
    unwritten = None  # a figure that fails at the end (a disk filled meanwhile) must not lose the results
    if args.plot and len(failed) < len(ordered):
        try:
            _plot({m: r for m, r in ordered.items() if m not in failed}, args.plot,
                  title=SMOKE_NOTE.format(epochs=args.epochs).split(":")[0] + ": not a comparison" if args.quick else None)
            log(f"saved training curves to {args.plot}")
        except OSError as exc:
            unwritten = (f"the training curves {args.plot!r} could not be written ({type(exc).__name__}: {exc}); "
                         "the results are printed above")
    if args.json:  # strict JSON: a NaN loss is null
        print(json.dumps(_finite({m: r if "error" in r else {k: r[k] for k in ("test_acc", "queries", "seconds")} | {
            "details": {k: v for k, v in r.items() if k not in ("test_acc", "queries", "seconds")}}
            for m, r in ordered.items()}), allow_nan=False))
    else:
        print(_table(ordered, args))
    if args.quick:  # on stdout under the table; on stderr with --json (stdout stays one JSON object)
        (to_stderr if args.json else print)(SMOKE_NOTE.format(epochs=args.epochs))
    if failed:  # after the results: exit 1 naming what failed
        raise ArgumentError("; ".join(f"{m} {e}" for m, e in failed.items()))
    if unwritten is not None:  # after the results: exit 1 naming the file
        from zoracle._errors import ZoracleError

        raise ZoracleError(unwritten)
    return 0


def _finite(value):
    """``value`` with every non-finite float as None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
