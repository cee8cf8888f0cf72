"""Estimator planner paths side by side, in one run: plain calls vs BatchOracle vs CoordinateOracle.

The oracle is the logistic loss of a linear model on a fixed data set (n samples, d = 10,000
features): a plain call is a matrix-vector product (memory-bound, reads the whole data
matrix), a batch is one matrix-matrix product over many perturbed parameter vectors, and
the coordinate path uses the rank-one structure ``A (w + s e_i) = A w + s A[:, i]``.

    python benchmarks/estimators.py            # table
    python benchmarks/estimators.py --json     # {"d", "call_s", "batch_s", "coordinate_s", "batch_speedup", ...}
    python benchmarks/estimators.py --threads 2

BLAS threads are pinned for the whole run (threadpoolctl; default 1) and printed: the same
path can take 20x longer with an oversubscribed BLAS pool on a busy machine, so timings
are only comparable at a stated thread count.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

import zoracle as zo


class LogisticLoss:
    """Mean logistic loss of ``sign(y) * (A w)``; callable only."""

    def __init__(self, A, y):
        self.A, self.y = A, y

    def __call__(self, w):
        return float(np.logaddexp(0.0, -self.y * (self.A @ w)).mean())


class BatchLogisticLoss(LogisticLoss):
    def batch(self, W):
        Z = W @ self.A.T  # (k, n): one BLAS-3 product for k parameter vectors
        return np.logaddexp(0.0, -self.y * Z).mean(axis=1)


class CoordinateLogisticLoss(LogisticLoss):
    def coordinate_losses(self, w, coords, step):
        z = self.A @ w
        Z = z[None, :] + step * self.A[:, coords].T  # rank-one update per coordinate
        return np.logaddexp(0.0, -self.y * Z).mean(axis=1)


def run(d: int = 10_000, n: int = 64, seed: int = 0, repeats: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d)) / np.sqrt(d)
    y = np.sign(rng.standard_normal(n))
    w = rng.standard_normal(d) * 0.1
    est = zo.CGE(mu=1e-4)
    out, grads = {"d": d, "n": n}, {}
    for name, cls in (("call", LogisticLoss), ("batch", BatchLogisticLoss), ("coordinate", CoordinateLogisticLoss)):
        best = np.inf
        for _ in range(repeats):
            t = time.perf_counter()
            e = zo.estimate_gradient(cls(A, y), w, est)
            best = min(best, time.perf_counter() - t)
        out[f"{name}_s"] = best
        out[f"{name}_nfev"] = e.nfev
        grads[name] = e.grad
    scale = np.abs(grads["call"]).max()
    out["max_rel_diff"] = float(max(np.abs(grads[k] - grads["call"]).max() for k in grads) / scale)
    out["batch_speedup"] = out["call_s"] / out["batch_s"]
    out["coordinate_speedup"] = out["call_s"] / out["coordinate_s"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=10_000, help="parameter dimension (default 10000)")
    p.add_argument("--n", type=int, default=64, help="data set size (default 64)")
    p.add_argument("--repeats", type=int, default=1, help="repeat each path, keep the fastest")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads, pinned for the run (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = p.parse_args(argv)
    if a.threads < 1:
        p.error(f"--threads must be >= 1, got {a.threads}")
    for flag, value in (("--d", a.d), ("--n", a.n), ("--repeats", a.repeats)):
        if value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    with threadpool_limits(limits=a.threads, user_api="blas"):
        blas = [{"library": i["internal_api"], "threads": i["num_threads"]} for i in threadpool_info()
                if i["user_api"] == "blas"]
        r = run(a.d, a.n, repeats=a.repeats)
    r["blas"] = blas
    ok = r["max_rel_diff"] <= 1e-6  # the three paths compute one gradient: a wrong path fails the run
    if a.json:
        print(json.dumps(r))
        return 0 if ok else 1
    libs = ", ".join(f"{b['library']} {b['threads']} thread{'s' if b['threads'] != 1 else ''}" for b in blas)
    print(f"BLAS: {libs or 'none found by threadpoolctl'}")
    print(f"full forward CGE, d = {r['d']}, logistic loss on n = {r['n']} samples ({r['call_nfev']} queries each)")
    print(f"{'path':<12}{'seconds':>10}{'speed-up':>10}")
    for name in ("call", "batch", "coordinate"):
        print(f"{name:<12}{r[name + '_s']:>10.3f}{r['call_s'] / r[name + '_s']:>9.1f}x")
    print(f"gradients agree to {r['max_rel_diff']:.1e} (relative){'' if ok else ': MORE THAN 1e-6, a path is wrong'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
