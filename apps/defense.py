"""``zoracle defense``: certified black-box defense by denoised smoothing, trained with ZO.

A small CNN is trained on scikit-learn digits (scaled to [0, 1]) and exported to ONNX; from
then on the ONNX file is the black box. A denoiser in front of it is trained four ways at
the same noise level sigma, and every row is certified through the same black box with
randomized smoothing (:mod:`zoracle.smoothing`):

========  ==========================================================================
none      the black box alone under noise
deepzero  sparse CGE on the denoiser's parameters, loss through the black box
hybrid    ZO-AE-DS style: CGE w.r.t. the black box's input, chained by autograd
fo        first-order through the white-box torch classifier (upper bound)
========  ==========================================================================

The two ZO rows spend the same black-box loss evaluations per gradient estimate
(``--queries``, default 65: the 64 input pixels plus the base point). All three train with
Adam at the same learning rate, on the same noisy minibatches, for the same number of steps,
starting from the same MSE pre-trained denoiser (white-box, the denoiser is ours; ``--pretrain-steps
0`` turns it off).

``zoracle defense --quick --json`` prints ``{"none" | "deepzero" | "hybrid" | "fo": {"0",
"0.25", "0.5", "0.75": certified accuracy}}``; ``--out DIR`` writes ``defense.md`` (the
table), ``defense.png`` (certified accuracy against radius), ``defense.json`` and the ONNX
model.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from zoracle._checkpoint import replacing
from zoracle._errors import ArgumentError, to_stderr
from zoracle.cli import threads

HELP = "train a denoiser in front of a black-box ONNX classifier (DeepZero vs ZO-AE-DS vs FO); certify it"

ROWS = ("none", "deepzero", "hybrid", "fo")
RADII = (0.0, 0.25, 0.5, 0.75)
LABELS = {
    "none": "no denoiser",
    "mse": "MSE pre-trained denoiser only",
    "deepzero": "DeepZero (sparse CGE on the denoiser)",
    "hybrid": "ZO-AE-DS-style hybrid (CGE on the black-box input)",
    "fo": "first-order (white-box classifier)",
}
#: the paper's Table (ImageNet-10, certified accuracy % at r = 0 / 0.25 / 0.5 / 0.75)
PAPER = {
    "fo": (89.33, 81.67, 68.87, 49.80),
    "hybrid": (63.60, 52.80, 43.13, 32.73),
    "deepzero": (86.02, 76.61, 61.80, 43.05),
}


@dataclass(frozen=True)
class DefenseConfig:
    """Every knob of one run (``QUICK`` and ``FULL`` are the presets)."""

    sigma: float = 0.25
    seed: int = 0
    classifier_epochs: int = 30
    pretrain_steps: int = 1000
    steps: int = 1500
    batch: int = 64
    queries: int = 65
    lr: float = 1e-3
    mu: float = 5e-3
    test_points: int = 360
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    cert_batch: int = 20_000
    threads: int = 1


FULL = DefenseConfig()
QUICK = replace(FULL, classifier_epochs=10, pretrain_steps=300, steps=200, batch=32, n0=16, n=300)


@dataclass(frozen=True)
class RowResult:
    """One row of the report."""

    name: str
    certified: dict            # radius (str) -> certified accuracy
    abstain: float
    train_queries: int         # black-box samples evaluated while training
    queries_per_estimate: float  # black-box loss evaluations (each on a minibatch) per gradient estimate
    train_seconds: float
    certify_queries: int
    certify_seconds: float
    radii: list = field(default_factory=list, repr=False)
    correct: list = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class DefenseReport:
    config: DefenseConfig
    rows: dict                 # name -> RowResult
    clean_accuracy: float      # the black box on clean test digits
    noisy_accuracy: float      # the black box on one noisy copy of the test digits
    seconds: float

    def certified(self) -> dict:
        """``{row: {"0": acc, "0.25": acc, ...}}`` for the four rows of ``ROWS``."""
        return {name: dict(self.rows[name].certified) for name in ROWS if name in self.rows}


def _radius_key(r: float) -> str:
    return f"{r:g}"


def run_defense(config: DefenseConfig = QUICK, *, out: str | None = None, log=None) -> DefenseReport:
    """Train the black box, the three denoisers, certify all rows; return the report.

    Parameters
    ----------
    config : DefenseConfig
    out : str, optional
        Folder for the ONNX model (a temporary one when None).
    log : callable, optional
        ``log(message)`` for progress lines (default: stderr).
    """
    import torch

    log = log or (lambda msg: to_stderr(msg, flush=True))
    threads = torch.get_num_threads()
    # tiny convolutions: extra threads cost more in synchronization than they save
    torch.set_num_threads(config.threads)
    try:
        return _run(config, out, log)
    finally:
        torch.set_num_threads(threads)


def _run(config: DefenseConfig, out, log) -> DefenseReport:
    import onnxruntime as ort
    import torch

    from zoracle import smoothing
    from zoracle.adapters.onnx import OnnxClassifier

    from . import _defense_train as T

    c = config
    t_start = time.perf_counter()
    torch.manual_seed(c.seed)
    Xtr, ytr, Xte, yte = T.load_digits_split(c.seed)
    Xc, yc = Xte[: c.test_points], yte[: c.test_points]

    # 1. the classifier, exported; afterwards the ZO rows only see the ONNX file
    clf = T.train_classifier(Xtr, ytr, epochs=c.classifier_epochs, seed=c.seed)
    tmp = None if out else tempfile.TemporaryDirectory(prefix="zoracle-defense-")
    path = os.path.join(out or tmp.name, "classifier.onnx")
    T.export_onnx(clf, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = c.threads
    options.inter_op_num_threads = 1
    bb = OnnxClassifier(path, session_options=options)
    clean = float((bb.predict(Xte) == yte).mean())
    noise = np.random.default_rng([c.seed, 7]).standard_normal(Xte.shape, dtype=np.float32) * np.float32(c.sigma)
    noisy = float((bb.predict(Xte + noise) == yte).mean())
    targets = bb.predict(Xtr)  # the stability loss's labels: f(x) on clean training digits
    bb.reset_queries()
    log(f"black box {path}: clean accuracy {clean:.3f}, under sigma={c.sigma} noise {noisy:.3f}")

    # 2. denoisers: one shared MSE pre-training, then three ways of fine-tuning
    torch.manual_seed(c.seed)
    base = T.Denoiser()
    t0 = time.perf_counter()
    if c.pretrain_steps:
        T.pretrain_mse(base, Xtr, sigma=c.sigma, steps=c.pretrain_steps, batch=c.batch, seed=c.seed)
    pre_seconds = time.perf_counter() - t0
    denoisers, logs = {"none": None, "mse": base}, {"mse": T.TrainLog(c.pretrain_steps, 0, pre_seconds, ())}
    kwargs = dict(sigma=c.sigma, steps=c.steps, batch=c.batch, seed=c.seed)
    for name in ("deepzero", "hybrid", "fo"):
        den = copy.deepcopy(base)
        if name == "deepzero":
            logs[name] = T.train_deepzero(den, bb, Xtr, targets, queries=c.queries, lr=c.lr, mu=c.mu, **kwargs)
        elif name == "hybrid":
            logs[name] = T.train_hybrid(den, bb, Xtr, targets, queries=c.queries, lr=c.lr, mu=c.mu, **kwargs)
        else:
            logs[name] = T.train_fo(den, clf, Xtr, targets, lr=c.lr, **kwargs)
        denoisers[name] = den.eval()
        L = logs[name]
        log(f"{name}: {L.steps} steps, {L.queries} black-box queries "
            f"({L.queries_per_estimate:g} loss evaluations per estimate), {L.seconds:.1f} s")

    # 3. certify every row through the same black box, noise batched
    rows = {}
    for name in ("none", "mse", "deepzero", "hybrid", "fo"):
        den = denoisers[name]

        def classify(x, den=den):
            if den is None:
                return bb(x)
            with torch.no_grad():
                return bb(den(torch.from_numpy(x)).numpy())

        q0, t0 = bb.queries, time.perf_counter()
        res = smoothing.certify_batch(classify, Xc, sigma=c.sigma, n0=c.n0, n=c.n, alpha=c.alpha, num_classes=10,
                                      batch_size=c.cert_batch, rng=np.random.default_rng([c.seed, 11]))
        acc = res.certified_accuracy(yc, RADII)
        L = logs.get(name, T.TrainLog(0, 0, 0.0, ()))
        rows[name] = RowResult(
            name, {_radius_key(r): float(a) for r, a in zip(RADII, acc)}, res.abstain_rate, L.queries,
            L.queries_per_estimate, L.seconds, bb.queries - q0, time.perf_counter() - t0,
            [float(r) for r in res.radii], [bool(v) for v in res.correct(yc)],
        )
        log(f"certified {name}: " + ", ".join(f"r={k}: {v:.3f}" for k, v in rows[name].certified.items())
            + f", abstain {res.abstain_rate:.3f} ({time.perf_counter() - t0:.1f} s)")
    if tmp is not None:
        tmp.cleanup()
    return DefenseReport(config, rows, clean, noisy, time.perf_counter() - t_start)


# --------------------------------------------------------------------------------------
# report
#: DefenseConfig fields the command line does not set
_NO_FLAG = ("mu", "cert_batch")


def _label(name: str, config: DefenseConfig) -> str:
    """A row's label; the hybrid runs CGE over the 64 input pixels at 65 queries, RGE otherwise."""
    if name == "hybrid" and config.queries - 1 != 64:
        return f"ZO-AE-DS-style hybrid (RGE on the black-box input, {config.queries - 1} directions)"
    return LABELS[name]


def command_line(config: DefenseConfig, out: str | None = "results/defense") -> str:
    """The ``zoracle defense`` command that regenerates ``config`` (writing to ``out``)."""
    tail = [] if not out else [f"--out {shlex.quote(out)}"]
    if config == QUICK:
        return " ".join(["zoracle defense --quick", *tail])
    parts, unflagged = ["zoracle defense"], []
    for f, default in asdict(FULL).items():
        value = getattr(config, f)
        if value != default:
            if f in _NO_FLAG:  # settable from Python only: said beside the command, not as a flag
                unflagged.append(f"{f}={value!r}")
            else:
                parts.append(f"--{f.replace('_', '-')} {value}")
    note = f"  # and, from Python, DefenseConfig({', '.join(unflagged)})" if unflagged else ""
    return " ".join(parts + tail) + note


def markdown(report: DefenseReport, out: str | None = "results/defense") -> str:
    """The results table (ours next to the paper's), with the command that regenerates it."""
    c = report.config
    fo = report.rows.get("fo")
    head = ("| method | " + " | ".join(f"r = {r:g}" for r in RADII)
            + " | abstain | FO minus row (r = 0 / 0.25) | black-box queries (train) | queries / estimate "
              "| train time | certify time |")
    lines = [
        f"Certified accuracy (%) on scikit-learn digits, {c.test_points} test points, sigma = {c.sigma}, "
        f"n0 = {c.n0}, n = {c.n}, alpha = {c.alpha}; denoisers trained {c.steps} steps of batch {c.batch} "
        f"after {c.pretrain_steps} MSE pre-training steps. The black box alone: clean accuracy "
        f"{100 * report.clean_accuracy:.1f}%, {100 * report.noisy_accuracy:.1f}% under one draw of the noise.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for name in ("none", "mse", "deepzero", "hybrid", "fo"):
        row = report.rows[name]
        acc = [100 * row.certified[_radius_key(r)] for r in RADII]
        gap = "" if fo is None or name == "fo" else " / ".join(
            f"{100 * (fo.certified[_radius_key(r)] - row.certified[_radius_key(r)]):+.1f}" for r in RADII[:2])
        qpe = f"{row.queries_per_estimate:g}" if row.queries_per_estimate else "-"
        tq = f"{row.train_queries:,}" if row.train_queries else "0"
        lines.append(f"| {_label(name, c)} | " + " | ".join(f"{a:.1f}" for a in acc)
                     + f" | {100 * row.abstain:.1f} | {gap} | {tq} | {qpe} | {row.train_seconds:.1f} s "
                       f"| {row.certify_seconds:.1f} s |")
    lines += [
        "",
        "Paper (DeepZero, ICLR 2024, ImageNet-10, certified accuracy % at r = 0 / 0.25 / 0.5 / 0.75):",
        "",
        "| method | r = 0 | r = 0.25 | r = 0.5 | r = 0.75 |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("fo", "FO-DS"), ("hybrid", "ZO-AE-DS"), ("deepzero", "DeepZero")):
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in PAPER[name]) + " |")
    lines += ["", f"Regenerate: `{command_line(c, out)}` ({report.seconds:.0f} s in all on this machine)."]
    return "\n".join(lines) + "\n"


def plot(report: DefenseReport, path: str) -> None:
    """Certified accuracy against radius, one curve per row."""
    from matplotlib.figure import Figure  # (not pyplot: the backend and pyplot's figures stay the caller's)

    from zoracle.smoothing import certified_accuracy

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    finite = [r for row in report.rows.values() for r in row.radii if np.isfinite(r)]
    grid = np.linspace(0, max(finite + [0.8]) * 1.02, 200)
    for name in ("none", "mse", "deepzero", "hybrid", "fo"):
        row = report.rows[name]
        ax.plot(grid, certified_accuracy(np.array(row.radii), np.array(row.correct), grid),
                label=_label(name, report.config), linestyle="--" if name in ("none", "mse") else "-")
    ax.set_xlabel("L2 radius r")
    ax.set_ylabel("certified accuracy")
    ax.set_title(f"Denoised smoothing, ONNX black box (digits, sigma = {report.config.sigma})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    from zoracle._plot import save_figure

    save_figure(fig, path, dpi=120)


def write(report: DefenseReport, out: str) -> list:
    """``defense.md``, ``defense.png`` and ``defense.json`` under ``out``; returns the paths."""
    os.makedirs(out, exist_ok=True)
    md, png, js = (os.path.join(out, f"defense.{ext}") for ext in ("md", "png", "json"))
    # (a failed write keeps the last report; a folder named in other bytes than UTF-8, held as surrogate
    # escapes, is written back as those bytes in the regenerate line: "surrogates not allowed" lost the run)
    with replacing(md) as tmp, open(tmp, "w", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(markdown(report, out))
    data = {
        "config": asdict(report.config),
        "certified": {k: v.certified for k, v in report.rows.items()},
        "rows": {k: {f: getattr(v, f) for f in ("abstain", "train_queries", "queries_per_estimate",
                                               "train_seconds", "certify_queries", "certify_seconds")}
                 for k, v in report.rows.items()},
        "clean_accuracy": report.clean_accuracy,
        "noisy_accuracy": report.noisy_accuracy,
        "seconds": report.seconds,
        "command": command_line(report.config, out),
    }
    # the numbers before the figure: a plot that fails keeps them
    with replacing(js) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
    plot(report, png)
    return [md, png, js]


# --------------------------------------------------------------------------------------
# command line
def _positive(kind):
    def check(text):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not value > 0 or (kind is float and not np.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a finite number'} > 0, "
                                             f"got {text}")
        return value

    return check


def _nonneg_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _seed(text):
    value = _nonneg_int(text)
    if value >= 2**63:  # as zoracle demo and bench: torch.manual_seed overflowed after the flags were taken
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63), got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    f = FULL
    parser.add_argument("--quick", action="store_true",
                        help="small CI-sized run (fewer steps, test points and noise samples)")
    parser.add_argument("--json", action="store_true",
                        help='print {"none"|"deepzero"|"hybrid"|"fo": {"0","0.25","0.5","0.75": certified accuracy}}')
    parser.add_argument("--out", metavar="DIR",
                        help="write defense.md, defense.png, defense.json and the ONNX model here")
    parser.add_argument("--sigma", type=_positive(float),
                        help=f"noise level of smoothing and training (default {f.sigma})")
    parser.add_argument("--seed", type=_seed, help="seed of data split, models, noise (default 0)")
    parser.add_argument("--steps", type=_nonneg_int, help=f"denoiser training steps per method (default {f.steps})")
    parser.add_argument("--pretrain-steps", type=_nonneg_int,
                        help=f"white-box MSE pre-training steps, 0 = none (default {f.pretrain_steps})")
    parser.add_argument("--batch", type=_positive(int), help=f"minibatch size (default {f.batch})")
    parser.add_argument("--queries", type=_positive(int),
                        help="black-box loss evaluations per ZO estimate, both ZO rows; 65 = CGE over the 64 pixels "
                             f"in the hybrid row, other values use RGE there (default {f.queries})")
    parser.add_argument("--lr", type=_positive(float),
                        help=f"Adam learning rate of all three denoisers (default {f.lr})")
    parser.add_argument("--test-points", type=_positive(int),
                        help=f"test digits to certify (default {f.test_points}, at most 360)")
    parser.add_argument("--n0", type=_positive(int), help=f"selection noise samples per point (default {f.n0})")
    parser.add_argument("--n", type=_positive(int), help=f"estimation noise samples per point (default {f.n})")
    parser.add_argument("--alpha", type=_positive(float), help=f"certification failure probability (default {f.alpha})")
    parser.add_argument("--threads", type=threads, help="torch and onnxruntime threads (default 1)")
    parser.add_argument("--classifier-epochs", type=_positive(int),
                        help=f"epochs of the black-box classifier's own training (default {f.classifier_epochs})")


def config_from_args(args) -> DefenseConfig:
    config = QUICK if args.quick else FULL
    changes = {k: getattr(args, k) for k in ("sigma", "seed", "steps", "pretrain_steps", "batch", "queries",
                                             "lr", "test_points", "n0", "n", "alpha",
                                             "classifier_epochs", "threads") if getattr(args, k, None) is not None}
    config = replace(config, **changes)
    if not 0 < config.alpha < 1:
        raise ArgumentError(f"`--alpha` must be in (0, 1), got {config.alpha}")
    from zoracle.smoothing import _check_int, _check_n_can_certify, _noise_overflows

    for flag, count in (("--n0", config.n0), ("--n", config.n)):  # (an --n0 past int64 failed after the training,
        _check_int(flag, count, 1)                                 # naming `n0`; an --n, naming `n_a` and `n`)
    _check_n_can_certify(config.n, config.alpha, "`--n`", "`--alpha`")  # before training: it would certify nothing

    if _noise_overflows(config.sigma, np.float32):  # its noise is drawn in float32
        raise ArgumentError(f"`--sigma` {config.sigma:g} makes float32 noise overflow; pass at most "
                            f"{float(np.finfo(np.float32).max) / 40:.3g}")
    if config.test_points > 360:
        raise ArgumentError(f"`--test-points` must be at most 360 (the held-out digits), got {config.test_points}")
    if config.queries < 19:
        raise ArgumentError(
            f"`--queries` must be at least 19 (17 dense biases + 1 weight + base), got {config.queries}"
        )
    from . import _defense_train as T  # (imports torch)

    most = sum(p.numel() for p in T.Denoiser().parameters()) + 1
    if config.queries > most:  # DeepZero's dense estimate costs that much: the ZO rows would differ
        raise ArgumentError(f"`--queries` must be at most {most} (every denoiser parameter + base: a dense "
                            f"estimate), got {config.queries}")
    return config


def check(args) -> None:
    """The flags' values, refused before any work (``zoracle defense`` exits 2, as for argparse's errors)."""
    config_from_args(args)


def main(args) -> int:
    config = config_from_args(args)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    report = run_defense(config, out=args.out)
    unwritten = None  # a disk that filled during the run must not lose the results (a traceback, nothing printed)
    if args.out:
        try:
            for p in write(report, args.out):
                to_stderr(f"wrote {p}")
        except OSError as exc:
            unwritten = f"the report could not be written to {args.out!r} ({type(exc).__name__}: {exc})"
    if args.json:
        print(json.dumps(report.certified()))
    else:
        print(markdown(report, args.out))
    if unwritten is not None:
        from zoracle._errors import ZoracleError

        raise ZoracleError(f"{unwritten}; the results are printed above; free space or pass another --out")
    return 0
