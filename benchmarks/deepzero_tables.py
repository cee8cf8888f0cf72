"""Regenerate the DeepZero result tables in docs/benchmarks.md (paper reproductions).

Three experiments, all offline (scikit-learn digits; MNIST-1D generated procedurally by
``mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())``):

1. ``estimators``: CGE vs first-order (FO) vs RGE at equal queries (RGE with q = d
   directions, so a step costs d + 1 queries like dense CGE), on digits (small CNN) and
   MNIST-1D (MLP) - the small-scale analogue of the paper's Fig. 2.
2. ``sparsity``: DeepZero (ZO-GraSP ratios, sparse CGE, dynamic masks) at 80/90/95/99%
   gradient sparsity next to FO trained with the *same* sparse gradient (autograd
   gradient restricted to the same masks) and dense FO - the analogue of Fig. 4.
3. ``ratios``: per-layer keep ratios at 90% from ZO-GraSP (q = 192), FO-GraSP (autograd
   Hessian-gradient product), Smart Ratio, uniform and random, the Spearman rank
   correlation of ZO vs FO GraSP scores, and DeepZero's test accuracy with each ratio set.

Usage::

    python benchmarks/deepzero_tables.py                 # all three, markdown to stdout
    python benchmarks/deepzero_tables.py --only ratios --seeds 3 --json out.json

Every number is measured in this run; wall times of methods in the same table are
measured side by side on the same machine, one after the other, with one torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import zoracle as zo  # noqa: E402
from zoracle.adapters.torch import TorchOracle  # noqa: E402
from zoracle.apps._digits import load_digits_split, per_class  # noqa: E402
from zoracle.apps.demo import make_model as demo_cnn  # noqa: E402

CE = nn.CrossEntropyLoss(reduction="none")


# ------------------------------------------------------------------ data and models
class Data:
    def __init__(self, xtr, ytr, xte, yte):
        self.x_train, self.y_train, self.x_test, self.y_test = xtr, ytr, xte, yte


def digits():
    d = load_digits_split(seed=0)
    return Data(d.x_train, d.y_train, d.x_test, d.y_test)


def mnist1d():
    import mnist1d.data

    d = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())  # offline, never get_dataset()
    mean, std = d["x"].mean(), d["x"].std()
    f = lambda a: ((a - mean) / std).astype(np.float32)  # noqa: E731
    return Data(f(d["x"]), d["y"].astype(np.int64), f(d["x_test"]), d["y_test"].astype(np.int64))


def small_cnn(seed):
    """A 4/8-channel version of the demo CNN (666 weights): dense CGE stays cheap."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))


def mlp1d(seed):
    """MLP 40-24-10 for MNIST-1D (1234 weights)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 10))


def accuracy(oracle, params, data):
    return float((oracle.predict(params, data.x_test).argmax(1) == data.y_test).mean())


def schedule(lr, steps, warm):
    return zo.cosine_schedule(lr, total_steps=steps, warmup_steps=min(warm, steps - 1))


# ------------------------------------------------------------------ training runs
def run_fo(make, data, epochs, bs, lr, seed, masks=None):
    """Autograd SGD; with ``masks`` (a DynamicMasks) the gradient is restricted to the same coordinates."""
    model = make(seed)
    oracle = TorchOracle(model, CE)
    batches = zo.Minibatches((torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)), bs, seed=seed)
    sched = schedule(lr, epochs * len(batches), len(batches))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    info = oracle.param_info
    step, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        keep = None
        if masks is not None:
            keep = np.zeros(oracle.size, dtype=bool)
            keep[masks.coordinates(epoch)] = True
        for x, y in batches(epoch):
            for g in opt.param_groups:
                g["lr"] = sched(step)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if keep is not None:
                for p, i in zip(model.parameters(), info):
                    p.grad.mul_(torch.from_numpy(keep[i.slice].reshape(i.shape)).to(p.dtype))
            opt.step()
            step += 1
    secs = time.perf_counter() - t0
    return {"acc": accuracy(oracle, oracle.initial_params(), data), "queries": step, "seconds": secs}


def run_zo(make, data, epochs, bs, lr, seed, estimator, **kw):
    oracle = TorchOracle(make(seed), CE)
    p0 = oracle.initial_params()
    batches = zo.Minibatches((data.x_train, data.y_train), bs, seed=seed)
    sched = schedule(lr, epochs * len(batches), len(batches))
    t0 = time.perf_counter()
    res = zo.train(oracle, p0, batches=batches, epochs=epochs, estimator=estimator,
                   optimizer=zo.sgd(sched, momentum=0.9, weight_decay=5e-4), rng=seed, progress=False, **kw)
    secs = time.perf_counter() - t0
    return {"acc": accuracy(oracle, res.params, data), "queries": int(res.nfev), "seconds": secs,
            "ratios": None if res.ratios is None else [round(float(r), 4) for r in res.ratios]}


def mean_runs(fn, seeds):
    runs = [fn(s) for s in seeds]
    out = {k: float(np.mean([r[k] for r in runs])) for k in ("acc", "queries", "seconds")}
    out["acc_std"] = float(np.std([r["acc"] for r in runs]))
    out["ratios"] = runs[0].get("ratios")
    return out


# ------------------------------------------------------------------ experiments
def exp_estimators(seeds, quick):
    rows = []
    setups = [("digits", digits(), small_cnn, 20, 32, {"fo": 0.1, "cge": 0.1, "rge": 0.02}),
              ("MNIST-1D", mnist1d(), mlp1d, 15, 64, {"fo": 0.1, "cge": 0.1, "rge": 0.02})]
    for name, data, make, epochs, bs, lrs in setups:
        epochs = max(1, epochs // 5) if quick else epochs
        d = TorchOracle(make(0), CE).size
        res = {
            "FO (autograd)": mean_runs(lambda s: run_fo(make, data, epochs, bs, lrs["fo"], s), seeds),
            "CGE (dense)": mean_runs(lambda s: run_zo(make, data, epochs, bs, lrs["cge"], s, zo.CGE()), seeds),
            f"RGE (q = d = {d})": mean_runs(
                lambda s: run_zo(make, data, epochs, bs, lrs["rge"], s, zo.RGE(directions=d)), seeds),
        }
        for method, r in res.items():
            rows.append({"data": name, "d": d, "epochs": epochs, "method": method, **r})
        print(f"  estimators/{name} done", file=sys.stderr)
    return rows


def exp_sparsity(seeds, quick):
    data = digits()
    epochs, bs, lr = (3 if quick else 30), 32, 0.3
    rows = []
    info = TorchOracle(demo_cnn(0), CE).param_info
    scored, dense = zo.split_blocks(info)
    dense_fo = mean_runs(lambda s: run_fo(demo_cnn, data, epochs, bs, 0.1, s), seeds)
    for sp in (0.8, 0.9, 0.95, 0.99):
        gb = per_class(data.x_train, data.y_train, 25)

        def dz(s, sp=sp):
            return run_zo(demo_cnn, data, epochs, bs, lr, s, zo.CGE(), sparsity=sp, ratios="zo_grasp",
                          grasp_batch=gb, mask_shuffle_interval=1)

        z = mean_runs(dz, seeds)

        def fo_sparse(s, sp=sp, ratios=z["ratios"]):
            # the same ratios and the same masks (same seed -> same DynamicMasks as zo.train's)
            root = int(np.random.default_rng(s).integers(2**63))
            masks = zo.DynamicMasks(scored, ratios, seed=root, interval=1, dense=dense)
            return run_fo(demo_cnn, data, epochs, bs, lr, s, masks=masks)  # DeepZero's own recipe

        f = mean_runs(fo_sparse, seeds)
        rows.append({"sparsity": sp, "deepzero": z, "fo_sparse": f, "fo_dense": dense_fo})
        print(f"  sparsity {sp} done", file=sys.stderr)
    return rows


def fo_grasp_scores(make, data, seed):
    """GraSP's -theta * (H g) with autograd (Hessian-gradient product), flat like the oracle's params."""
    model = make(seed)
    x, y = per_class(data.x_train, data.y_train, 25)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    params = [p for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, params, create_graph=True)
    gv = sum((gi * gi.detach()).sum() for gi in g)
    hg = torch.autograd.grad(gv, params)
    return np.concatenate([(-p.detach() * h).reshape(-1).numpy() for p, h in zip(params, hg)]).astype(np.float64)


def exp_ratios(seeds, quick):
    from scipy.stats import spearmanr

    data = digits()
    epochs, bs, lr, sp = (3 if quick else 30), 32, 0.3, 0.9
    oracle = TorchOracle(demo_cnn(0), CE)
    info = oracle.param_info
    scored, dense = zo.split_blocks(info)
    names = [i.name for i in info if i.kind in ("conv", "linear")]
    x, y = per_class(data.x_train, data.y_train, 25)
    p0 = oracle.initial_params()
    zo_scores = zo.zo_grasp(oracle.bind((x, y)), p0, blocks=scored, directions=192, rng=0)
    fo_scores = fo_grasp_scores(demo_cnn, data, 0)
    idx = np.concatenate([np.arange(s.start, s.stop) for s in scored])
    rho = float(spearmanr(zo_scores[idx], fo_scores[idx])[0])
    rho_abs = float(spearmanr(np.abs(zo_scores[idx]), np.abs(fo_scores[idx]))[0])
    ratio_sets = {
        "ZO-GraSP (q = 192)": zo.layer_ratios(zo_scores, scored, sp),
        "FO-GraSP (autograd)": zo.layer_ratios(fo_scores, scored, sp),
        "Smart Ratio": zo.smart_ratio([i for i in info if i.kind in ("conv", "linear")], sp),
        "uniform": zo.uniform_ratios(scored, sp),
        "random pruning": zo.random_ratios(scored, sp, rng=0),
    }
    rows = []
    for label, ratios in ratio_sets.items():
        r = mean_runs(lambda s, ratios=ratios: run_zo(demo_cnn, data, epochs, bs, lr, s, zo.CGE(), sparsity=sp,
                                                       ratios=ratios, mask_shuffle_interval=1), seeds)
        rows.append({**r, "ratios_from": label, "ratios": dict(zip(names, [round(float(v), 4) for v in ratios]))})
        print(f"  ratios/{label} done", file=sys.stderr)
    return {"spearman_signed": rho, "spearman_abs": rho_abs, "rows": rows}


# ------------------------------------------------------------------ markdown
def fmt_acc(r):
    s = f"{100 * r['acc']:.2f}"
    return s + (f" ± {100 * r['acc_std']:.2f}" if r.get("acc_std") else "")


def md_estimators(rows):
    out = ["| data | d | epochs | method | test acc % | queries | wall time (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        q = f"{int(r['queries']):,} grads" if r["method"].startswith("FO") else f"{int(r['queries']):,}"
        out.append(f"| {r['data']} | {r['d']} | {r['epochs']} | {r['method']} | {fmt_acc(r)} | {q} | {r['seconds']:.1f} |")
    return "\n".join(out)


def md_sparsity(rows):
    head = "| | " + " | ".join(f"{int(round(100 * r['sparsity']))}%" for r in rows) + " |"
    out = [head, "|---" * (len(rows) + 1) + "|"]
    out.append("| DeepZero (ZO, sparse CGE) | " + " | ".join(fmt_acc(r["deepzero"]) for r in rows) + " |")
    out.append("| FO, same sparse gradient | " + " | ".join(fmt_acc(r["fo_sparse"]) for r in rows) + " |")
    out.append("| FO dense | " + " | ".join(fmt_acc(rows[0]["fo_dense"]) for _ in rows) + " |")
    out.append("| DeepZero queries per step | " + " | ".join(
        f"{r['deepzero']['queries'] / max(1, r['fo_sparse']['queries']):.0f}" for r in rows) + " |")
    out.append("| DeepZero wall time (s) | " + " | ".join(f"{r['deepzero']['seconds']:.1f}" for r in rows) + " |")
    return "\n".join(out)


def md_ratios(res):
    rows = res["rows"]
    names = list(rows[0]["ratios"])
    out = ["| keep ratios from | " + " | ".join(f"`{n}`" for n in names) + " | DeepZero test acc % |",
           "|---" * (len(names) + 2) + "|"]
    for r in rows:
        out.append(f"| {r['ratios_from']} | " + " | ".join(f"{r['ratios'][n]:.3f}" for n in names)
                   + f" | {fmt_acc(r)} |")
    out.append("")
    out.append(f"Spearman rank correlation of ZO-GraSP vs FO-GraSP scores over the scored weights: "
               f"{res['spearman_signed']:.3f} (signed), {res['spearman_abs']:.3f} (|score|).")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("estimators", "sparsity", "ratios"), action="append",
                        help="run only this experiment (repeatable; default all three)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds to average (default 1)")
    parser.add_argument("--quick", action="store_true", help="a few epochs only (smoke test, numbers meaningless)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.json is not None:  # before the experiments, not after them
        from zoracle.cli import _writable

        why = _writable(args.json, "file")
        if why:
            parser.error(f"--json {args.json}: cannot write there ({why})")
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    todo = args.only or ["estimators", "sparsity", "ratios"]
    results, t0 = {}, time.perf_counter()
    for name in todo:
        print(f"running {name} ...", file=sys.stderr)
        results[name] = {"estimators": exp_estimators, "sparsity": exp_sparsity, "ratios": exp_ratios}[name](seeds, args.quick)
    cmd = "python benchmarks/deepzero_tables.py" + "".join(f" --only {n}" for n in (args.only or [])) + (
        f" --seeds {args.seeds}" if args.seeds > 1 else "") + (" --quick" if args.quick else "")
    print(f"<!-- generated by `{cmd}` in {time.perf_counter() - t0:.0f} s, torch {torch.__version__}, 1 thread -->")
    if "estimators" in results:
        print("\n### CGE vs FO vs RGE at equal queries\n\n" + md_estimators(results["estimators"]))
    if "sparsity" in results:
        print("\n### DeepZero accuracy vs gradient sparsity (digits CNN, 1898 weights)\n\n" + md_sparsity(results["sparsity"]))
    if "ratios" in results:
        print("\n### Layer-wise keep ratios at 90% sparsity (digits CNN)\n\n" + md_ratios(results["ratios"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
