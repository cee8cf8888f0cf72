"""What ``zo.recipes.short_budget(bounds=...)`` costs: ZO-GraSP inside the box (Rademacher directions).

Inside ``bounds`` ZO-GraSP queries along Rademacher directions (each query moves every coordinate by
exactly mu), its points kept in the box shrunk by mu (``zo.zo_grasp(bounds=...)``); without, along
Gaussian ones. This runs three plans on the peers study's demo CNN (``benchmarks/peers.py``: digits,
d = 1,898, or MNIST-1D's twin at width 16, d = 1,914), the same seeds for all: the recipe without a
box (Gaussian ZO-GraSP), the recipe with the box (-10, 10), wide enough never to bind (Rademacher
ZO-GraSP: the difference is the directions'), and that plan with ``ratios="uniform"`` in place of
ZO-GraSP (its queries left unspent), and prints each run's test accuracy and the paired differences::

    OMP_NUM_THREADS=1 python benchmarks/recipe_bounds.py --data digits --budget 30000 --seeds 0-11
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _seeds(text: str) -> list:
    try:
        if "-" in text:
            a, b = (int(v) for v in text.split("-"))
            seeds = list(range(a, b + 1))
        else:
            seeds = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds as 0-11 or 0,1,2, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"seeds as 0-11 or 0,1,2 (each >= 0), got {text!r}")
    return seeds


def _budget(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1_000:
        raise argparse.ArgumentTypeError(f"a budget of at least 1000 queries, got {text!r}")
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("digits", "mnist1d"), default="digits")
    p.add_argument("--budget", type=_budget, default=30_000)
    p.add_argument("--seeds", type=_seeds, default=_seeds("0-11"))
    args = p.parse_args(argv)

    import torch

    import zoracle as zo
    from peers_bench import Bench, load_data, step_recorder
    from zoracle._pruning import grasp_queries
    from zoracle.apps._digits import per_class

    torch.set_num_threads(1)
    data = load_data(args.data)
    width = 16 if args.data == "mnist1d" else 0
    plans = ("zo_grasp", "box:zo_grasp", "box:uniform")
    acc: dict = {plan: [] for plan in plans}
    for seed in args.seeds:
        for plan in plans:
            b = Bench(data, args.data, width, seed, args.budget)
            kw = zo.recipes.short_budget(b.oracle, b.p0, args.budget, batches=b.batches,
                                         bounds=(-10.0, 10.0) if plan.startswith("box") else None)
            if plan == "box:uniform" and kw["ratios"] == "zo_grasp":  # (its steps; ZO-GraSP's queries not made)
                kw["ratios"] = "uniform"
                kw["max_queries"] -= grasp_queries(kw.pop("grasp_directions"))
            spent = grasp_queries(kw["grasp_directions"]) if kw["ratios"] == "zo_grasp" else 0
            b.start()
            t = time.perf_counter()
            res = zo.train(b.oracle, b.p0, batches=b.batches, callbacks=[step_recorder(b, spent)], rng=seed,
                           grasp_batch=per_class(data["x"], data["y"], 25, seed=seed), progress=False, **kw)
            b.final(res.params)
            acc[plan].append(b.curve[-1][3])
            print(f"{args.data} d={b.d} seed {seed} plan={plan:12s} nfev={res.nfev} "
                  f"test={b.curve[-1][3]:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
    a = np.array(acc["zo_grasp"])
    for plan in plans[1:]:
        r = np.array(acc[plan])
        diff = r - a
        sem = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        print(f"{args.data} {args.budget}: {plan} {100 * r.mean():.1f}% ({100 * r.min():.1f}-{100 * r.max():.1f}) "
              f"against zo_grasp without the box {100 * a.mean():.1f}% ({100 * a.min():.1f}-{100 * a.max():.1f}): "
              f"paired mean difference {100 * diff.mean():+.1f} points (standard error {100 * sem:.1f}), "
              f"ahead in {int((r > a).sum())} of {len(a)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
