"""``zoracle bench``: how fast is coordinate-wise ZO (CGE) with feature reuse?

Columns, all measured in one run on the same model, minibatch and coordinates:

(a) ``reference``: the reference algorithm: per coordinate, copy the parameter dict,
    perturb it, ``load_state_dict``, one full forward.
(b) ``inplace``: per coordinate, perturb one weight in place, full forward, restore.
(c) ``batched``: ``TorchOracle(blocks="none")``: full forwards vectorized over
    perturbations (``torch.func.vmap``), no feature reuse.
(d) ``reuse``: ``TorchOracle``: prefix once per block, closed-form perturbed layer
    outputs, ``k * B`` samples through the suffix per call.
(e) ``limit``: sum over blocks of (coordinates in block) x (suffix matmul FLOPs) x batch,
    divided by the matrix-multiply throughput measured in the same run.

(a), (b) and (c) run one full forward per coordinate, so their per-coordinate cost does
not depend on the coordinate: with ``--quick`` (or on ResNet-20) they run on a random
subset and their time is scaled to the full coordinate set (the table says so). The
benchmark checks itself: (d) twice gives bit-identical gradients, and (d) agrees with (b)
on (b)'s coordinates within float tolerance.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time

import numpy as np

HELP = "run the CGE speed benchmark (reference vs naive vs batched vs feature reuse vs FLOP limit)"
MODELS = ("mlp", "cnn", "resnet20")


def _positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _positive_float(s):
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", choices=MODELS,
                        help="model to benchmark (repeatable; default: mlp and cnn)")
    parser.add_argument("--quick", action="store_true",
                        help="subsample the slow columns (a)-(c) and use fewer repeats (under 60 s on 2 cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="model dtype (default float32)")
    parser.add_argument("--batch", type=_positive_int, default=None,
                        help="minibatch size (default 128; 2 for resnet20 on CPU, 256 on CUDA)")
    parser.add_argument("--mu", type=_positive_float, default=5e-3, help="CGE step (default 5e-3, forward differences)")
    parser.add_argument("--threads", type=_positive_int, default=1,
                        help="torch CPU threads (default 1: on a small shared CPU, threads slow the tiny naive forwards)")
    parser.add_argument("--repeat", type=_positive_int, default=None, help="timed repeats of (d), best kept (default 3, quick 2)")
    parser.add_argument("--naive-coords", type=_positive_int, default=None,
                        help="coordinates timed for (a)-(c) (default: all; quick 1500 for (b), 400 for (a) and (c))")
    parser.add_argument("--sparsity", type=float, default=None,
                        help="fraction of coordinates left out of CGE (default 0 for mlp/cnn, 0.9 for resnet20)")
    parser.add_argument("--coords", type=_positive_int, default=None,
                        help="cap on the coordinates of (d) (a random, block-spread subset; default no cap)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the model, data and coordinate subsets")
    parser.add_argument("--clock", default="auto", choices=("auto", "wall", "cpu"),
                        help="timer: wall clock, or this process's CPU time (robust on a shared machine); "
                             "auto = cpu for --device cpu with --threads 1, else wall")


# ------------------------------------------------------------------------------------------
def _build(name, args, torch):
    from zoracle.adapters.torch_models import ResNet20, make_cnn, make_mlp

    torch.manual_seed(args.seed)
    cuda = str(args.device).startswith("cuda")
    if name == "mlp":
        model, shape, B = make_mlp(), (64,), 128
    elif name == "cnn":
        model, shape, B = make_cnn(), (1, 8, 8), 128
    else:
        model, shape, B = ResNet20(), (3, 32, 32), (256 if cuda else 2)
    B = args.batch or B
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((B,) + shape).astype(args.dtype)
    y = rng.integers(0, 10, B)
    return model, x, y


_CLOCK = [time.perf_counter]


def _now():
    return _CLOCK[0]()


def _sync(torch, device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _matmul_throughput(torch, device, dtype) -> float:
    """Best FLOP/s of a square matrix product (n = 1024 on CPU, 8192 on CUDA)."""
    n = 8192 if str(device).startswith("cuda") else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = np.inf
    for _ in range(5):
        _sync(torch, device)
        t = _now()
        a @ b
        _sync(torch, device)
        best = min(best, _now() - t)
    return 2 * n**3 / best


def _naive(model, loss_fn, x, y, coords, mu, reference: bool, torch):
    """Forward-difference losses by one full forward per coordinate (columns a and b)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sizes = np.cumsum([0] + [p.numel() for _, p in named])
    out = np.empty(len(coords))
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    t0 = _now()
    with torch.no_grad():
        if reference:
            base = {n: p.detach().clone() for n, p in named}
            for r, i in enumerate(coords.tolist()):
                k = int(np.searchsorted(sizes, i, side="right") - 1)
                sd = copy.deepcopy(base)                      # copy the parameter dict
                sd[named[k][0]].view(-1)[i - sizes[k]] += mu  # perturb one entry
                model.load_state_dict(sd, strict=False)       # load it into the model
                out[r] = float(loss_fn(model(x), y).mean())   # one full forward
            model.load_state_dict(base, strict=False)
        else:
            for r, i in enumerate(coords.tolist()):
                k = int(np.searchsorted(sizes, i, side="right") - 1)
                flat = named[k][1].view(-1)
                j = i - int(sizes[k])
                old = flat[j].clone()
                flat[j] += mu
                out[r] = float(loss_fn(model(x), y).mean())
                flat[j] = old
        _ = out.sum()
    elapsed = _now() - t0
    for n, b in model.named_buffers():  # train-mode forwards moved BatchNorm running stats
        b.copy_(buffers[n])
    return out, elapsed


def _subset(coords, n, rng):
    if n >= len(coords):
        return coords
    return np.sort(rng.choice(coords, size=n, replace=False))


def bench_model(name: str, args, torch) -> dict:
    import zoracle as zo
    from zoracle.adapters.torch import TorchOracle, cross_entropy

    device = torch.device(args.device)
    tdtype = getattr(torch, args.dtype)
    model, x, y = _build(name, args, torch)
    model.to(device=device, dtype=tdtype).train()
    loss_fn = cross_entropy
    oracle = TorchOracle(model, loss_fn, (x, y), update_stats=False)
    theta = oracle.initial_params()
    d = theta.size
    rng = np.random.default_rng(args.seed + 1)
    sparsity = args.sparsity if args.sparsity is not None else (0.9 if name == "resnet20" else 0.0)
    if not 0 <= sparsity < 1:
        raise zo.ArgumentError(f"`--sparsity` must be in [0, 1), got {sparsity}")
    coords = np.arange(d)
    if sparsity > 0:
        coords = np.sort(rng.choice(d, size=max(1, int(round(d * (1 - sparsity)))), replace=False))
    if args.coords and args.coords < len(coords):
        coords = _subset(coords, args.coords, rng)
    n = len(coords)
    est = zo.CGE(mu=args.mu)
    repeat = args.repeat or (2 if args.quick else 3)

    # (d) feature reuse, twice for the repeatability check, then timed repeats
    grads, times = [], []
    for _ in range(max(2, repeat)):
        _sync(torch, device)
        t = _now()
        g = zo.estimate_gradient(oracle, theta, est, coordinates=coords if n < d else None)
        times.append(_now() - t)
        grads.append(np.asarray(g.grad)[coords].astype(np.float64))
    reuse_s, f0 = min(times), g.loss
    repeatable = all(np.array_equal(grads[0], gr) for gr in grads[1:])

    big = name == "resnet20"
    n_b = args.naive_coords or (1500 if args.quick else (256 if big else n))
    n_a = args.naive_coords or (400 if args.quick else (64 if big else n))
    n_c = args.naive_coords or (400 if args.quick else (64 if big else n))
    xt = torch.as_tensor(x, device=device)
    yt = torch.as_tensor(y, device=device)
    cb = _subset(coords, n_b, rng)
    fb, tb = _naive(model, loss_fn, xt, yt, cb, args.mu, False, torch)
    ca = _subset(coords, n_a, rng)
    _, ta = _naive(model, loss_fn, xt, yt, ca, args.mu, True, torch)
    oracle.load(theta)
    batched = TorchOracle(model, loss_fn, (x, y), update_stats=False, blocks="none")
    cc = _subset(coords, n_c, rng)
    t = _now()
    zo.estimate_gradient(batched, theta, est, coordinates=cc)
    tc = _now() - t

    # (e) FLOP limit on the same coordinates
    flops = oracle.suffix_flops()
    owner = np.searchsorted([b.start for b in oracle.blocks], coords, side="right") - 1
    total = float(sum(np.bincount(owner, minlength=len(flops)) * np.asarray(flops, dtype=np.float64))) * x.shape[0]
    thr = _matmul_throughput(torch, device, tdtype)

    # agreement of (d) with (b) on (b)'s coordinates
    xb = theta[cb]
    h = ((xb + xb.dtype.type(args.mu)) - xb).astype(np.float64)
    # (b) perturbs torch parameters in place: its step is the model dtype's representable step
    gb = (fb - f0) / h
    gd = grads[0][np.searchsorted(coords, cb)]
    eps = float(np.finfo(theta.dtype).eps)
    tol = 32 * eps * max(1.0, abs(f0)) / args.mu
    diff = float(np.max(np.abs(gd - gb)))
    res = {
        "reference_s": ta * n / len(ca),
        "inplace_s": tb * n / len(cb),
        "batched_s": tc * n / len(cc),
        "reuse_s": reuse_s,
        "limit_s": total / thr,
        "d": int(d), "coords": int(n), "batch": int(x.shape[0]), "dtype": args.dtype, "device": str(device),
        "threads": int(torch.get_num_threads()), "clock": "cpu" if _CLOCK[0] is time.process_time else "wall",
        "matmul_gflops": thr / 1e9, "suffix_gflop": total / 1e9,
        "timed_coords": {"reference": int(len(ca)), "inplace": int(len(cb)), "batched": int(len(cc)), "reuse": int(n)},
        "coords_per_s": n / reuse_s,
        "check": {"repeatable": bool(repeatable), "max_abs_diff_vs_inplace": diff, "tol": tol,
                  "ok": bool(repeatable and diff <= tol)},
        "grad_sha256": hashlib.sha256(grads[0].tobytes()).hexdigest()[:16],
    }
    if big:
        steps = int(np.ceil(50000 / x.shape[0]))
        per_step = (d * (1 - (sparsity or 0.9))) / res["coords_per_s"]
        res["epoch_minutes_at_90pct_sparsity"] = steps * per_step / 60
    return res


def _table(results: dict) -> str:
    lines = []
    cols = [("reference_s", "(a) reference"), ("inplace_s", "(b) in-place"), ("batched_s", "(c) batched"),
            ("reuse_s", "(d) reuse"), ("limit_s", "(e) FLOP limit")]
    for name, r in results.items():
        lines.append(f"{name}: d={r['d']} coords={r['coords']} batch={r['batch']} {r['dtype']} {r['device']} "
                     f"threads={r['threads']} clock={r['clock']} matmul={r['matmul_gflops']:.1f} GFLOP/s suffix={r['suffix_gflop']:.2f} GFLOP")
        for key, label in cols:
            note = ""
            tc = r["timed_coords"].get(key[:-2])
            if tc is not None and tc < r["coords"]:
                note = f"  (timed on {tc} coords, scaled)"
            ratio = r[key] / r["reuse_s"]
            lines.append(f"  {label:<16} {r[key]:10.3f} s   {ratio:8.2f} x (d){note}")
        lines.append(f"  coords/s (d): {r['coords_per_s']:.0f}")
        if "epoch_minutes_at_90pct_sparsity" in r:
            lines.append(f"  projected CIFAR-10 epoch at 90% sparsity: {r['epoch_minutes_at_90pct_sparsity']:.1f} min")
        c = r["check"]
        lines.append(f"  check: repeatable={c['repeatable']} max|g_d - g_b|={c['max_abs_diff_vs_inplace']:.2e} "
                     f"(tol {c['tol']:.1e}) -> {'OK' if c['ok'] else 'FAILED'}   sha={r['grad_sha256']}")
    return "\n".join(lines)


def run(args) -> dict:
    """Run the benchmark for the selected models; returns ``{model: results}``."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is an extra
        raise SystemExit("zoracle bench needs torch: pip install 'zoracle[torch]'") from None
    import zoracle as zo

    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise zo.ArgumentError(f"`--device {args.device}`: no CUDA device is available; use --device cpu")
    try:
        torch.device(args.device)
    except RuntimeError:
        raise zo.ArgumentError(f"`--device` must be a torch device such as cpu or cuda, got {args.device!r}") from None
    old = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    cpu_clock = args.clock == "cpu" or (args.clock == "auto" and not str(args.device).startswith("cuda")
                                        and args.threads == 1)
    _CLOCK[0] = time.process_time if cpu_clock else time.perf_counter
    try:
        models = args.model or ["mlp", "cnn"]
        return {name: bench_model(name, args, torch) for name in dict.fromkeys(models)}
    finally:
        torch.set_num_threads(old)


def main(args) -> int:
    results = run(args)
    if args.json:
        print(json.dumps(results))
    else:
        print(_table(results))
    return 0 if all(r["check"]["ok"] for r in results.values()) else 1


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser(description=HELP)
    add_arguments(p)
    sys.exit(main(p.parse_args()))
