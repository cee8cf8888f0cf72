"""Forward parallelism on a CPU-bound plain-callable oracle: serial vs 2 workers of each kind.

The oracle holds the GIL (many small NumPy operations in a Python loop, about 5 ms per
call, calibrated at start), so threads cannot help and processes should give nearly 2x on
two cores. Every executor is started (and sent the oracle once, in a warm-up estimate)
before timing; each timing is the best of ``--repeats`` dense CGE estimates. Each
executor's speedup divides a serial timing taken right before it (same load) by its own;
``serial_s`` is the best serial timing of the run.

Usage::

    python benchmarks/parallel_speed.py            # table
    python benchmarks/parallel_speed.py --json     # {"serial_s", "loky2_s", "threading2_s", "dask2_s", "ray2_s", ...}

Per-shard overhead is measured separately on a no-op oracle (wall seconds per shard with
nothing to compute), and reported from the CPU-bound runs as
``RunStats.overhead_per_shard_s`` (idle or transfer time per shard).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

import zoracle as zo
from zoracle.executors import DaskExecutor, JoblibExecutor, RayExecutor


class SlowOracle:
    """``sum(sin(x)^2)`` plus ``loops`` rounds of tiny NumPy work that holds the GIL."""

    def __init__(self, loops: int):
        self.loops = int(loops)

    def __call__(self, x):
        v = x[:16].copy()
        acc = 0.0
        for _ in range(self.loops):
            v = np.tanh(v * 0.5 + 0.1)
            acc += float(v[0])
        return float(np.sum(np.sin(x) ** 2) + 1e-12 * acc)


def noop(x):
    return float(x[0])


def calibrate(target_s: float) -> SlowOracle:
    x = np.ones(64)
    o = SlowOracle(200)
    t = min(_time_call(o, x) for _ in range(5))
    o = SlowOracle(max(1, round(200 * target_s / t)))
    return o


def _time_call(o, x) -> float:
    t0 = time.perf_counter()
    o(x)
    return time.perf_counter() - t0


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--dim", type=int, default=256, help="parameters = CGE queries per estimate (default 256)")
    p.add_argument("--call-ms", type=float, default=5.0, help="target oracle cost per call in ms (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="timed estimates per executor, best kept (default 3)")
    p.add_argument("--skip", default="", help="comma-separated executors to skip: dask,ray")
    args = p.parse_args(argv)
    if args.dim < 2 or args.repeats < 1 or args.call_ms <= 0:
        p.error("--dim must be >= 2, --repeats >= 1 and --call-ms > 0")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - {"dask", "ray"}:  # a typo ran the executor it meant to skip
        p.error(f"--skip takes dask and/or ray, got {', '.join(sorted(skip - {'dask', 'ray'}))}")

    oracle = calibrate(args.call_ms / 1e3)
    x = np.random.default_rng(0).standard_normal(args.dim)
    est = zo.CGE()
    call_s = min(_time_call(oracle, x) for _ in range(5))
    ref = zo.estimate_gradient(oracle, x, est)
    out = {"call_ms": round(call_s * 1e3, 3), "queries": ref.nfev, "cpus": os.cpu_count()}
    out["serial_s"] = best_of(lambda: zo.estimate_gradient(oracle, x, est), args.repeats)

    tmp = tempfile.mkdtemp(prefix="zr", dir="/tmp")
    if not any(k in os.environ for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")):
        # keep Ray's generated auth token out of ~/.ray (set before Ray is imported)
        token = os.path.join(tmp, "auth_token")
        with open(os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(os.urandom(32).hex())
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    makers = {
        "loky2": lambda: JoblibExecutor(2, backend="loky"),
        "threading2": lambda: JoblibExecutor(2, backend="threading"),
        "dask2": lambda: DaskExecutor("local:2"),
        # Ray cannot bind a local session to loopback: this benchmark accepts that explicitly
        "ray2": lambda: RayExecutor("local:2", allow_network=True, _temp_dir=tmp),
    }
    overhead, adjacent = {}, {}
    for name, make in makers.items():
        if name[:-1] in skip:
            out[f"{name}_s"] = None
            continue
        try:
            ex = make()
            ex.__enter__()
        except ImportError as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
            out[f"{name}_s"] = None
            continue
        try:
            got = zo.estimate_gradient(oracle, x, est, executor=ex)  # warm-up: oracle shipped, costs learnt
            if not np.allclose(got.grad, ref.grad, rtol=0, atol=1e-12):
                raise SystemExit(f"{name}: parallel estimate differs from serial")
            # serial again right before: the speedup compares runs made under the same load
            adjacent[name] = best_of(lambda: zo.estimate_gradient(oracle, x, est), args.repeats)
            out[f"{name}_s"] = best_of(lambda: zo.estimate_gradient(oracle, x, est, executor=ex), args.repeats)
            stats = ex.last_run
            zo.estimate_gradient(noop, x, est, executor=ex)
            noop_s = best_of(lambda: zo.estimate_gradient(noop, x, est, executor=ex), args.repeats)
            overhead[name] = {
                "shards": stats.shards,
                "idle_or_transfer_ms_per_shard": round(stats.overhead_per_shard_s * 1e3, 3),
                "noop_ms_per_shard": round(noop_s / max(1, ex.last_run.shards) * 1e3, 3),
            }
        finally:
            ex.close()
    out["serial_s"] = min([out["serial_s"], *adjacent.values()])
    out["speedup"] = {name: (round(adjacent[name] / out[f"{name}_s"], 3) if out[f"{name}_s"] else None)
                      for name in makers}
    out["per_shard_overhead"] = overhead
    if args.json:
        print(json.dumps(out))
    else:
        print(f"oracle: {out['call_ms']:.2f} ms per call, {out['queries']} queries per estimate, "
              f"{out['cpus']} CPUs")
        print(f"{'executor':<12}{'seconds':>10}{'speedup':>10}{'shards':>8}{'idle ms/shard':>15}{'no-op ms/shard':>16}")
        print(f"{'serial':<12}{out['serial_s']:>10.3f}{1.0:>10.2f}")
        for name in makers:
            v = out[f"{name}_s"]
            if v is None:
                print(f"{name:<12}{'skipped':>10}")
                continue
            o = overhead[name]
            print(f"{name:<12}{v:>10.3f}{out['speedup'][name]:>10.2f}{o['shards']:>8}"
                  f"{o['idle_or_transfer_ms_per_shard']:>15.3f}{o['noop_ms_per_shard']:>16.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
