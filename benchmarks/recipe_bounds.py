"""What ``zo.recipes.short_budget(bounds=...)`` costs: uniform ratios in place of ZO-GraSP.

ZO-GraSP queries along Gaussian directions, which leave any box, so the recipe given ``bounds``
spreads its coordinates a step by ``ratios="uniform"`` and spends ZO-GraSP's queries on steps.
This runs the recipe with and without a box on the peers study's demo CNN (``benchmarks/peers.py``:
digits, d = 1,898, or MNIST-1D's twin at width 16, d = 1,914), the same seeds for both, the box
(-10, 10) wide enough never to bind (the difference is the ratios'), and prints each run's test
accuracy and the paired difference::

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
    acc: dict = {False: [], True: []}
    for seed in args.seeds:
        for boxed in (False, True):
            b = Bench(data, args.data, width, seed, args.budget)
            kw = zo.recipes.short_budget(b.oracle, b.p0, args.budget, batches=b.batches,
                                         bounds=(-10.0, 10.0) if boxed else None)
            spent = grasp_queries(kw["grasp_directions"]) if kw["ratios"] == "zo_grasp" else 0
            b.start()
            t = time.perf_counter()
            res = zo.train(b.oracle, b.p0, batches=b.batches, callbacks=[step_recorder(b, spent)], rng=seed,
                           grasp_batch=per_class(data["x"], data["y"], 25, seed=seed), progress=False, **kw)
            b.final(res.params)
            acc[boxed].append(b.curve[-1][3])
            print(f"{args.data} d={b.d} seed {seed} ratios={kw['ratios']:9s} nfev={res.nfev} "
                  f"test={b.curve[-1][3]:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
    a, u = np.array(acc[False]), np.array(acc[True])
    print(f"{args.data} {args.budget}: zo_grasp test {100 * a.mean():.1f}% ({100 * a.min():.1f}-{100 * a.max():.1f}), "
          f"uniform {100 * u.mean():.1f}% ({100 * u.min():.1f}-{100 * u.max():.1f}), paired mean difference "
          f"(uniform - zo_grasp) {100 * (u - a).mean():+.1f} points, uniform ahead in {int((u > a).sum())} of {len(a)} "
          "seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
