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
not depend on the coordinate: with ``--quick``, on ResNet-20 (all three) and on the other
larger models ((a)) they run on a random subset and their time is scaled to the full
coordinate set (the table says so). The
benchmark checks itself: (d) twice gives bit-identical gradients, and (d) agrees with (b)
on (b)'s coordinates within float tolerance.

Models: ``mlp`` and ``cnn`` (``nn.Sequential``), ``resnet20`` (``zoracle_steps()``), and
``resnet18`` (torchvision layout, width 8) and ``mobilenet_v3_small`` (width 0.25), written
the way torchvision writes them, with no annotation for zoracle. Two more comparisons:

``deepzero``: (a') DeepZero's training path (``DistributedCGEModel.calculate_grads`` in the
    reference code), reimplemented: ResNet-20 split at its 12 module boundaries, every
    module's input cached once, then per coordinate perturb in place, one batch-B forward
    through the remaining modules, restore; forward differences. Against ``TorchOracle`` CGE
    on the same weights, minibatch and coordinates; reports the ratio and the cosine.
``fallback``: ``TorchOracle(blocks="none")`` (full forwards, no feature reuse) against the
    textbook loop (b) on a model with over a million parameters.

``--json`` prints every time and, under ``ratios``, every ratio ``other / zoracle`` (above 1:
zoracle is faster).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
import warnings

import numpy as np

from zoracle._errors import percent_hint
from zoracle.cli import threads

HELP = "run the CGE speed benchmark (reference vs naive vs batched vs feature reuse vs FLOP limit)"
MODELS = ("mlp", "cnn", "resnet20", "resnet18", "mobilenet_v3_small", "deepzero", "fallback")
DEFAULT_MODELS = ("mlp", "cnn", "resnet18", "mobilenet_v3_small", "deepzero", "fallback")
SPECIAL = ("deepzero", "fallback")  # comparisons of their own, without the columns (a)-(d)
ZOO_MODELS = ("resnet18", "mobilenet_v3_small")  # torchvision-style, from torch_models.ZOO
FALLBACK_WIDTH = 24  # torchvision-style ResNet-18 at width 24: 1.59M parameters


def _number(s, kind):
    """``kind(s)``, or argparse's error in plain words (not "invalid _positive_int value")."""
    try:
        return kind(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {s!r}") from None


def _positive_int(s):
    v = _number(s, int)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _seed(s):
    v = _number(s, int)
    if not 0 <= v < 2**63:  # as zoracle demo: NumPy seeds are non-negative
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63), got {s}")
    return v


def _positive_float(s):
    v = _number(s, float)
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {s}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", choices=MODELS,
                        help="model or comparison to run (repeatable; default: all but resnet20)")
    parser.add_argument("--quick", action="store_true",
                        help="subsample the slow columns (a)-(c) and use fewer repeats (about 2 CPU minutes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="model dtype (default float32)")
    parser.add_argument("--batch", type=_positive_int, default=None,
                        help="minibatch size (default 128 for mlp/cnn; 32 for the torchvision-style models, "
                             "deepzero and fallback; resnet20 2; 256 on CUDA)")
    parser.add_argument("--mu", type=_positive_float, default=5e-3, help="CGE step (default 5e-3, forward differences)")
    parser.add_argument("--threads", type=threads, default=1,
                        help="torch CPU threads (default 1: on a small shared CPU, threads slow the tiny naive forwards)")
    parser.add_argument("--repeat", type=_positive_int, default=None,
                        help="timed repeats, best kept (default 3; quick 2, 1 for deepzero and fallback)")
    parser.add_argument("--naive-coords", type=_positive_int, default=None,
                        help="coordinates timed for (a)-(c) (default: all on mlp and cnn; on the larger models 64 "
                             "for (a), and on resnet20 256 for (b) and 64 for (c); quick: 1500 for (b) and 400 for "
                             "(a) and (c), on the larger models 400 and 200)")
    parser.add_argument("--sparsity", type=float, default=None,
                        help="fraction of coordinates left out of CGE (default 0 for mlp/cnn, 0.9 for resnet20)")
    parser.add_argument("--coords", type=_positive_int, default=None,
                        help="cap on the coordinates of (d) (a random subset; default no cap for mlp/cnn/resnet20, "
                             "2000 (quick 1000) for resnet18/mobilenet_v3_small, 1000 for deepzero, "
                             "200 (quick 100) for fallback)")
    parser.add_argument("--seed", type=_seed, default=0, help="seed for the model, data and coordinate subsets")
    parser.add_argument("--clock", default="auto", choices=("auto", "wall", "cpu"),
                        help="timer: wall clock, or this process's CPU time (robust on a shared machine); "
                             "auto = cpu for --device cpu with --threads 1, else wall")


# ------------------------------------------------------------------------------------------
def _default_batch(name, args):
    if args.batch:
        return args.batch
    if str(args.device).startswith("cuda"):
        return 256
    return {"mlp": 128, "cnn": 128, "resnet20": 2}.get(name, 32)


def _inputs(make, batch):
    """``make()``, the random minibatch of ``--batch`` ``batch``; one too large to allocate is refused
    naming the flag (``--batch 10**23`` ended in numpy's traceback)."""
    try:
        return make()
    except (MemoryError, ValueError) as exc:
        # ValueError: "Maximum allowed dimension exceeded" (10**23), "array is too big" (10**18)
        if isinstance(exc, ValueError) and not ("dimension" in str(exc) or "too big" in str(exc)):
            raise
        from zoracle import ArgumentError

        raise ArgumentError(f"`--batch` {batch}: its inputs cannot be allocated ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120]}); pass a smaller --batch") from None


def _build(name, args, torch):
    from zoracle.adapters.torch_models import ZOO, ResNet20, make_cnn, make_mlp, zoo_batch

    torch.manual_seed(args.seed)
    B = _default_batch(name, args)
    if name in ZOO_MODELS:
        x, y = _inputs(lambda: zoo_batch(name, B, seed=args.seed, dtype=args.dtype), B)
        return ZOO[name].build(), x, y
    if name == "mlp":
        model, shape = make_mlp(), (64,)
    elif name == "cnn":
        model, shape = make_cnn(), (1, 8, 8)
    else:
        model, shape = ResNet20(), (3, 32, 32)
    rng = np.random.default_rng(args.seed)
    x = _inputs(lambda: rng.standard_normal((B,) + shape).astype(args.dtype), B)
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


def _dropouts(model, torch):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.training]


def _naive(model, loss_fn, x, y, coords, mu, reference: bool, torch):
    """Forward-difference losses by one full forward per coordinate (columns a and b).

    The model stays in its mode (BatchNorm in train mode uses minibatch statistics) with
    dropout switched off, as inside the oracle; running statistics are restored afterwards.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sizes = np.cumsum([0] + [p.numel() for _, p in named])
    out = np.empty(len(coords))
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    drop = _dropouts(model, torch)
    for m in drop:
        m.eval()
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
    for m in drop:
        m.train()
    for n, b in model.named_buffers():  # train-mode forwards moved BatchNorm running stats
        b.copy_(buffers[n])
    return out, elapsed


def _subset(coords, n, rng):
    if n >= len(coords):
        return coords
    return np.sort(rng.choice(coords, size=n, replace=False))


def _timed_estimates(oracle, theta, est, coords, repeat, torch, device):
    """CGE estimates on ``coords``: (best seconds of the first ``repeat``, grads, loss, warnings).

    Runs at least twice: the second run checks that estimates are repeatable.
    """
    import zoracle as zo

    d = theta.size
    grads, times = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(max(2, repeat)):
            _sync(torch, device)
            t = _now()
            g = zo.estimate_gradient(oracle, theta, est, coordinates=coords if len(coords) < d else None)
            _sync(torch, device)
            times.append(_now() - t)
            grads.append(np.asarray(g.grad)[coords].astype(np.float64))
    msgs = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return min(times[:repeat]), grads, float(g.loss), msgs


def _agreement(theta, coords, grad, cb, fb, f0, mu) -> tuple:
    """(max |g - g_b|, tolerance) of an estimate against loop (b) on (b)'s coordinates."""
    xb = theta[cb]
    # (b) perturbs torch parameters in place: its step is the model dtype's representable step
    h = ((xb + xb.dtype.type(mu)) - xb).astype(np.float64)
    gb = (fb - f0) / h
    gd = grad[np.searchsorted(coords, cb)]
    eps = float(np.finfo(theta.dtype).eps)
    return float(np.max(np.abs(gd - gb))), 32 * eps * max(1.0, abs(f0)) / mu


def _exact64(model, loss_fn, x, y, coords, mu, torch, zo, TorchOracle) -> tuple:
    """(max |g - g_b|, tolerance) of (d) against loop (b) on a float64 copy of the model, on
    ``coords`` (sorted): there both are exact to round-off, where float32's tolerance (its
    rounding over mu) exceeds most partials and would pass a fast path that zeroed a layer."""
    m64 = copy.deepcopy(model).double()
    o64 = TorchOracle(m64, loss_fn, (x, y), update_stats=False)
    t64 = o64.initial_params()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the float32 run reported its own warnings
        est = zo.estimate_gradient(o64, t64, zo.CGE(mu=mu), coordinates=coords)
    o64.load(t64)
    xt = torch.as_tensor(x).to(next(m64.parameters()).device, torch.float64)
    yt = torch.as_tensor(y).to(xt.device)
    fb, _ = _naive(m64, loss_fn, xt, yt, coords, mu, False, torch)
    return _agreement(t64, coords, np.asarray(est.grad)[coords], coords, fb, float(est.loss), mu)


def _flop_limit(oracle, coords, batch, torch, device, tdtype):
    """Column (e) in seconds, or None when the oracle has no split to count suffixes on."""
    blocks = oracle.blocks
    if not blocks:
        return None, None, None
    flops = oracle.suffix_flops()
    owner = np.searchsorted([b.start for b in blocks], coords, side="right") - 1
    total = float(sum(np.bincount(owner, minlength=len(flops)) * np.asarray(flops, dtype=np.float64))) * batch
    thr = _matmul_throughput(torch, device, tdtype)
    return total / thr, thr, total


def _model_coords(name, d, args, rng):
    if name == "resnet20":
        sparsity = args.sparsity if args.sparsity is not None else 0.9
    else:
        sparsity = args.sparsity if args.sparsity is not None else 0.0
    if not 0 <= sparsity < 1:
        import zoracle as zo

        raise zo.ArgumentError(f"`--sparsity` must be in [0, 1), got {sparsity}{percent_hint('--sparsity', sparsity)}")
    coords = np.arange(d)
    if sparsity > 0:
        coords = np.sort(rng.choice(d, size=max(1, int(round(d * (1 - sparsity)))), replace=False))
    cap = args.coords or ((1000 if args.quick else 2000) if name in ZOO_MODELS else None)
    if cap and cap < len(coords):
        coords = _subset(coords, cap, rng)
    return coords, sparsity


def bench_model(name: str, args, torch) -> dict:
    """Columns (a)-(e) on one model (see the module docstring)."""
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
    coords, sparsity = _model_coords(name, d, args, rng)
    n = len(coords)
    est = zo.CGE(mu=args.mu)
    repeat = args.repeat or (2 if args.quick else 3)

    # (d) feature reuse, twice for the repeatability check, then timed repeats
    reuse_s, grads, f0, msgs = _timed_estimates(oracle, theta, est, coords, repeat, torch, device)
    repeatable = all(np.array_equal(grads[0], gr) for gr in grads[1:])

    big = name != "mlp" and name != "cnn"
    n_b = args.naive_coords or ((400 if big else 1500) if args.quick else (256 if name == "resnet20" else n))
    n_a = args.naive_coords or ((200 if big else 400) if args.quick else (64 if big else n))
    n_c = args.naive_coords or ((200 if big else 400) if args.quick else (64 if name == "resnet20" else n))
    xt = torch.as_tensor(x, device=device)
    yt = torch.as_tensor(y, device=device)
    cb = _subset(coords, n_b, rng)
    fb, tb = _naive(model, loss_fn, xt, yt, cb, args.mu, False, torch)
    ca = _subset(coords, n_a, rng)
    _, ta = _naive(model, loss_fn, xt, yt, ca, args.mu, True, torch)
    oracle.load(theta)
    batched = TorchOracle(model, loss_fn, (x, y), update_stats=False, blocks="none")
    cc = _subset(coords, n_c, rng)
    with warnings.catch_warnings(record=True) as caught_c:
        warnings.simplefilter("always")  # blocks="none" is asked for; a vmap fallback is reported
        # its first call checks the model (about one call's time): not timed, as (d)'s is not
        zo.estimate_gradient(batched, theta, est, coordinates=cc[:2])
        t = _now()
        zo.estimate_gradient(batched, theta, est, coordinates=cc)
        tc = _now() - t
    # (c) is vectorized only where torch.func.vmap runs the model: torchvision's in-place
    # residual add (out += identity) makes it run one full forward at a time
    batched_loop = any("vmap" in str(w.message) for w in caught_c)

    limit_s, thr, total = _flop_limit(oracle, coords, x.shape[0], torch, device, tdtype)
    diff, tol = _agreement(theta, coords, grads[0], cb, fb, f0, args.mu)
    diff64, tol64 = (diff, tol) if tdtype == torch.float64 else \
        _exact64(model, loss_fn, x, y, _subset(cb, 64, rng), args.mu, torch, zo, TorchOracle)  # float64 already checked
    res = {
        "reference_s": ta * n / len(ca),
        "inplace_s": tb * n / len(cb),
        "batched_s": tc * n / len(cc),
        "reuse_s": reuse_s,
        "limit_s": limit_s,
        "d": int(d), "coords": int(n), "batch": int(x.shape[0]), "dtype": args.dtype, "device": str(device),
        "threads": int(torch.get_num_threads()), "clock": "cpu" if _CLOCK[0] is time.process_time else "wall",
        "matmul_gflops": None if thr is None else thr / 1e9, "suffix_gflop": None if total is None else total / 1e9,
        "blocks": len(oracle.blocks), "warnings": msgs, "batched_one_at_a_time": bool(batched_loop),
        "timed_coords": {"reference": int(len(ca)), "inplace": int(len(cb)), "batched": int(len(cc)), "reuse": int(n)},
        "coords_per_s": n / reuse_s,
        "check": {"repeatable": bool(repeatable), "max_abs_diff_vs_inplace": diff, "tol": tol,
                  "max_abs_diff_vs_inplace_float64": diff64, "tol_float64": tol64,
                  "ok": bool(repeatable and diff <= tol and diff64 <= tol64)},
        "grad_sha256": hashlib.sha256(grads[0].tobytes()).hexdigest()[:16],
    }
    res["ratios"] = {k: (None if res[f"{k}_s"] is None else res[f"{k}_s"] / reuse_s)
                     for k in ("reference", "inplace", "batched", "limit")}
    if name == "resnet20":
        steps = int(np.ceil(50000 / x.shape[0]))
        per_step = (d * (1 - 0.9)) / res["coords_per_s"]  # the paper's 90%, whatever --sparsity timed
        res["epoch_minutes_at_90pct_sparsity"] = steps * per_step / 60
    return res


# ------------------------------------------------------------------------------------------
# (a') DeepZero's training path, reimplemented: the reference's ``calculate_grads`` splits
# ResNet-20 into 12 modules (conv1, bn1 + ReLU, the 9 residual blocks with the average pool
# after the last, fc), caches every module's input once per minibatch, then for each
# coordinate perturbs one entry in place, runs one batch-B forward from the input of the
# module owning it to the loss, and restores it.
def _deepzero_modules(model, F):
    """ResNet-20 (``torch_models.ResNet20``) as the reference's 12 modules, in forward order."""
    last = model.layers[-1]

    def stem_bn(t):
        return F.relu(model.bn1(t))

    def last_pool(t):
        return F.adaptive_avg_pool2d(last(t), 1).flatten(1)

    return [model.conv1, stem_bn] + list(model.layers[:-1]) + [last_pool, model.linear]


def _deepzero_module_of(name: str) -> int:
    """Index of the module (of the 12) that owns the parameter ``name``."""
    parts = name.split(".")
    if parts[0] == "layers":
        return 2 + int(parts[1])
    return {"conv1": 0, "bn1": 1, "linear": 11}[parts[0]]


def deepzero_cge(model, x, y, coords, mu, torch):
    """(a'): forward-difference CGE on ``coords`` the way the reference trains: (grad, loss, seconds)."""
    F = torch.nn.functional
    mods = _deepzero_modules(model, F)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    starts = np.cumsum([0] + [p.numel() for _, p in named])
    owner = np.searchsorted(starts, coords, side="right") - 1
    first = [_deepzero_module_of(n) for n, _ in named]
    losses = torch.empty(len(coords), dtype=torch.float64)
    t0 = _now()
    with torch.no_grad():
        feats = [x]  # feats[m]: the input of module m
        for m in mods:
            feats.append(m(feats[-1]))
        base = F.cross_entropy(feats[-1], y)
        for r, (k, i) in enumerate(zip(owner.tolist(), coords.tolist())):
            flat, j = named[k][1].view(-1), i - int(starts[k])
            old = flat[j].clone()
            flat[j] += mu
            h = feats[first[k]]
            for m in mods[first[k]:]:
                h = m(h)
            flat[j] = old
            losses[r] = F.cross_entropy(h, y)
        grad = ((losses - float(base)) / mu).numpy()
    return grad, float(base), _now() - t0


def _deepzero_flop_ratio(model, oracle, x, coords, torch):
    """Multiply-add FLOPs of (a') over those of the oracle's suffixes on ``coords`` (None without a split).

    (a') runs every Linear / Conv layer from the owning module on; the oracle counts its
    suffixes with ``suffix_flops()`` (the perturbed layer's closed form is not counted).
    """
    blocks = oracle.blocks
    if not blocks:
        return None
    mods = _deepzero_modules(model, torch.nn.functional)
    count, hooks = [0], []

    def hook(mod, inp, out):
        w = mod.weight
        count[0] += 2 * (w.numel() // w.shape[0]) * out.numel() if not isinstance(mod, torch.nn.Linear) \
            else 2 * w.numel() * (out.numel() // out.shape[-1])

    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
            hooks.append(m.register_forward_hook(hook))
    per_module, h = [], x[:1]
    try:
        with torch.no_grad():
            for m in mods:
                count[0] = 0
                h = m(h)
                per_module.append(count[0])
    finally:
        for hk in hooks:
            hk.remove()
    tail = np.cumsum(per_module[::-1])[::-1]
    named = [n for n, p in model.named_parameters() if p.requires_grad]
    starts = np.cumsum([0] + [p.numel() for p in model.parameters() if p.requires_grad])
    owner = np.searchsorted(starts, coords, side="right") - 1
    ref = float(sum(tail[_deepzero_module_of(named[k])] for k in owner))
    flops = np.asarray(oracle.suffix_flops(), dtype=np.float64)
    ours = float(flops[np.searchsorted([b.start for b in blocks], coords, side="right") - 1].sum())
    return ref / ours if ours > 0 else None


def bench_deepzero(args, torch) -> dict:
    """(a') against ``TorchOracle`` CGE on ResNet-20: same weights, minibatch and coordinates."""
    import zoracle as zo
    from zoracle.adapters.torch import TorchOracle, cross_entropy

    device = torch.device(args.device)
    model, x, y = _build("resnet20", argparse.Namespace(**{**vars(args), "batch": _default_batch("deepzero", args)}),
                         torch)
    model.to(device=device, dtype=getattr(torch, args.dtype)).train()
    xt, yt = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)
    with torch.no_grad():  # the 12-module split is the model
        split = xt
        for m in _deepzero_modules(model, torch.nn.functional):
            split = m(split)
        same = bool(torch.allclose(split, model(xt), rtol=1e-4, atol=1e-5))
    oracle = TorchOracle(model, cross_entropy, (x, y), update_stats=False)
    theta = oracle.initial_params()
    rng = np.random.default_rng(args.seed + 1)
    coords = np.sort(rng.choice(theta.size, size=min(theta.size, args.coords or 1000), replace=False))
    repeat = args.repeat or (1 if args.quick else 3)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    runs = []
    for _ in range(repeat):
        runs.append(deepzero_cge(model, xt, yt, coords, args.mu, torch))
        for n, b in model.named_buffers():  # its train-mode forwards moved BatchNorm running stats
            b.copy_(buffers[n])
    dz_s, dz_grad = min(r[2] for r in runs), runs[0][0]
    oracle.load(theta)
    zo_s, grads, f0, msgs = _timed_estimates(oracle, theta, zo.CGE(mu=args.mu), coords, repeat, torch, device)
    g = grads[0]
    cosine = float(g @ dz_grad / (np.linalg.norm(g) * np.linalg.norm(dz_grad)))
    ok = same and cosine >= 0.999 and all(np.array_equal(g, gr) for gr in grads[1:])
    return {
        "deepzero_s": dz_s, "reuse_s": zo_s, "ratios": {"deepzero": dz_s / zo_s},
        "flop_ratio": _deepzero_flop_ratio(model, oracle, xt, coords, torch),
        "d": int(theta.size), "coords": int(len(coords)), "batch": int(x.shape[0]), "dtype": args.dtype,
        "device": str(device), "threads": int(torch.get_num_threads()),
        "clock": "cpu" if _CLOCK[0] is time.process_time else "wall", "modules": 12,
        "blocks": len(oracle.blocks), "warnings": msgs, "repeat": int(repeat),
        "check": {"cosine": cosine, "split_equals_model": same, "loss_diff": abs(f0 - runs[0][1]), "ok": bool(ok)},
        "grad_sha256": hashlib.sha256(g.tobytes()).hexdigest()[:16],
    }


def bench_fallback(args, torch) -> dict:
    """``TorchOracle(blocks="none")`` vs loop (b) at d >= 1M (ResNet-18 layout, width 24)."""
    import zoracle as zo
    from zoracle.adapters.torch import TorchOracle, cross_entropy
    from zoracle.adapters.torch_models import resnet18, zoo_batch

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = resnet18(width=FALLBACK_WIDTH).to(device=device, dtype=getattr(torch, args.dtype)).train()
    B = _default_batch("fallback", args)
    x, y = _inputs(lambda: zoo_batch("resnet18", B, seed=args.seed, dtype=args.dtype), B)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # blocks="none" is asked for, not a fallback
        oracle = TorchOracle(model, cross_entropy, (x, y), update_stats=False, blocks="none")
        theta = oracle.initial_params()
        rng = np.random.default_rng(args.seed + 1)
        coords = np.sort(rng.choice(theta.size, size=min(theta.size, args.coords or (100 if args.quick else 200)),
                                    replace=False))
        repeat = args.repeat or (1 if args.quick else 3)
        zo.estimate_gradient(oracle, theta, zo.CGE(mu=args.mu), coordinates=coords[:2])  # its first-call checks, untimed
        fb_s, grads, f0, _ = _timed_estimates(oracle, theta, zo.CGE(mu=args.mu), coords, repeat, torch, device)
    oracle.load(theta)
    xt, yt = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)
    loops = [_naive(model, cross_entropy, xt, yt, coords, args.mu, False, torch) for _ in range(repeat)]
    loop_s = min(t for _, t in loops)
    diff, tol = _agreement(theta, coords, grads[0], coords, loops[0][0], f0, args.mu)
    return {
        "inplace_s": loop_s, "fallback_s": fb_s, "ratios": {"inplace": loop_s / fb_s},
        "d": int(theta.size), "coords": int(len(coords)), "batch": int(x.shape[0]), "dtype": args.dtype,
        "device": str(device), "threads": int(torch.get_num_threads()),
        "clock": "cpu" if _CLOCK[0] is time.process_time else "wall", "width": FALLBACK_WIDTH,
        "check": {"max_abs_diff_vs_inplace": diff, "tol": tol, "ok": bool(diff <= tol)},
    }


# ------------------------------------------------------------------------------------------
def _header(name, r):
    return f"{name}: d={r['d']} coords={r['coords']} batch={r['batch']} {r['dtype']} {r['device']} " \
           f"threads={r['threads']} clock={r['clock']}"


def _model_lines(name, r) -> list:
    extra = "" if r["matmul_gflops"] is None else \
        f" matmul={r['matmul_gflops']:.1f} GFLOP/s suffix={r['suffix_gflop']:.2f} GFLOP"
    lines = [_header(name, r) + extra + f" blocks={r['blocks']}"]
    cols = [("reference_s", "(a) reference"), ("inplace_s", "(b) in-place"), ("batched_s", "(c) batched"),
            ("reuse_s", "(d) reuse"), ("limit_s", "(e) FLOP limit")]
    for key, label in cols:
        if r[key] is None:
            lines.append(f"  {label:<16} {'n/a':>10}     (no split to count suffix FLOPs on)")
            continue
        note = ""
        tc = r["timed_coords"].get(key[:-2])
        if tc is not None and tc < r["coords"]:
            note = f"  (timed on {tc} coords, scaled)"
        if key == "batched_s" and r.get("batched_one_at_a_time"):
            note += "  (vmap refused the model: one forward at a time)"
        lines.append(f"  {label:<16} {r[key]:10.3f} s   {r[key] / r['reuse_s']:8.2f} x (d){note}")
    lines.append(f"  coords/s (d): {r['coords_per_s']:.0f}")
    if "epoch_minutes_at_90pct_sparsity" in r:
        lines.append(f"  projected CIFAR-10 epoch at 90% sparsity: {r['epoch_minutes_at_90pct_sparsity']:.1f} min")
    c = r["check"]
    lines.append(f"  check: repeatable={c['repeatable']} max|g_d - g_b|={c['max_abs_diff_vs_inplace']:.2e} "
                 f"(tol {c['tol']:.1e}), in float64 {c['max_abs_diff_vs_inplace_float64']:.2e} "
                 f"(tol {c['tol_float64']:.1e}) -> {'OK' if c['ok'] else 'FAILED'}   sha={r['grad_sha256']}")
    return lines


def _table(results: dict) -> str:
    lines = []
    for name, r in results.items():
        if name == "deepzero":
            c = r["check"]
            lines += [_header(name, r) + f" modules=12 blocks={r['blocks']}",
                      f"  (a') DeepZero training path {r['deepzero_s']:10.3f} s   {r['ratios']['deepzero']:8.2f} x (d)",
                      f"  (d) TorchOracle CGE         {r['reuse_s']:10.3f} s",
                      "  suffix FLOPs (a') / (d): " + ("n/a" if r["flop_ratio"] is None else f"{r['flop_ratio']:.2f}"),
                      f"  check: cosine={c['cosine']:.6f} split==model={c['split_equals_model']} "
                      f"-> {'OK' if c['ok'] else 'FAILED'}"]
        elif name == "fallback":
            c = r["check"]
            lines += [_header(name, r) + f" (ResNet-18 layout, width {r['width']})",
                      f"  (b) in-place loop           {r['inplace_s']:10.3f} s   {r['ratios']['inplace']:8.2f} x fallback",
                      f"  TorchOracle(blocks='none')  {r['fallback_s']:10.3f} s",
                      f"  check: max|g - g_b|={c['max_abs_diff_vs_inplace']:.2e} (tol {c['tol']:.1e}) "
                      f"-> {'OK' if c['ok'] else 'FAILED'}"]
        else:
            lines += _model_lines(name, r)
        for w in r.get("warnings", []):
            lines.append(f"  warning: {w[:200]}")
    return "\n".join(lines)


def run(args) -> dict:
    """Run the benchmark for the selected models; returns ``{model: results}``."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is an extra
        raise SystemExit("zoracle bench needs torch: pip install -e '.[torch]'") from None
    check(args)
    tf32 = None
    if str(args.device).startswith("cuda"):  # every method in full float32: TF32 would round the finite differences
        conv = getattr(torch.backends.cudnn, "conv", None)
        knob, attr, full = (conv, "fp32_precision", "ieee") if hasattr(conv, "fp32_precision") else \
            (torch.backends.cudnn, "allow_tf32", False)  # torch before 2.9
        tf32 = (knob, attr, getattr(knob, attr))
        setattr(knob, attr, full)
    old = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    cpu_clock = args.clock == "cpu" or (args.clock == "auto" and not str(args.device).startswith("cuda")
                                        and args.threads == 1)
    _CLOCK[0] = time.process_time if cpu_clock else time.perf_counter
    special = {"deepzero": bench_deepzero, "fallback": bench_fallback}
    try:
        models = args.model or list(DEFAULT_MODELS)
        return {name: (special[name](args, torch) if name in special else bench_model(name, args, torch))
                for name in dict.fromkeys(models)}
    finally:
        torch.set_num_threads(old)
        if tf32 is not None:  # the caller's precision back
            setattr(*tf32)


def check(args) -> None:
    """The flags' values, refused before any work (exit 2, as for argparse's errors); ``--device``
    too (``--device foo`` was refused by run, after torch's import: exit 1)."""
    import zoracle as zo

    if args.sparsity is not None and not 0 <= args.sparsity < 1:
        raise zo.ArgumentError(f"`--sparsity` must be in [0, 1), got {args.sparsity}{percent_hint('--sparsity', args.sparsity)}")
    models = list(dict.fromkeys(args.model or DEFAULT_MODELS))
    for flag, value in (("--sparsity", args.sparsity), ("--naive-coords", args.naive_coords)):
        if value is not None and all(m in SPECIAL for m in models):  # (taken, and ignored, by them)
            raise zo.ArgumentError(f"`{flag}` sets the columns (a)-(d) of the other models; --model "
                                   f"{' --model '.join(models)} has none: drop it, or add a --model such as mlp")
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is an extra (main names it)
        return
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise zo.ArgumentError(f"`--device {args.device}`: no CUDA device is available; use --device cpu")
    try:
        torch.device(args.device)
        torch.empty(0, device=args.device)  # a device this torch build has no support for (mps, xpu) fails here
    except (RuntimeError, AssertionError, ImportError) as exc:  # (xpu: "Torch not compiled with XPU enabled")
        raise zo.ArgumentError(f"`--device` must be a torch device this machine has, such as cpu or cuda, got "
                               f"{args.device!r} ({str(exc).splitlines()[0][:120]})") from None


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
