"""DeviceExecutor on a multi-GPU machine: one worker per GPU vs one GPU, same CGE estimate.

Builds a small CNN (``zoracle.adapters.torch_models.make_cnn``) as a TorchOracle with
feature reuse, estimates a dense CGE gradient on one device in this process, then with
``DeviceExecutor`` over every visible GPU (each worker builds its own copy of the model on
its device through the oracle's ``to_device``), checks both estimates agree and prints the
times. ``--cpu-devices N`` runs the same script with N CPU "devices" (a dry run for
machines without GPUs).

Usage::

    python benchmarks/gpu_devices.py --json                  # all visible GPUs
    python benchmarks/gpu_devices.py --cpu-devices 2 --json  # dry run on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import zoracle as zo
from zoracle.executors import DeviceExecutor, usable_cpus


class DeviceTorchOracle:
    """A picklable recipe for a TorchOracle: the model is built where the oracle lands.

    ``to_device(device)`` (called once per DeviceExecutor worker) returns a copy that
    builds its model and batch on ``device`` at first use. Every capability is delegated,
    so the driver sees the same SplitOracle / CoordinateOracle / BatchOracle.
    """

    def __init__(self, seed: int, channels: int, x, y, device: str = "cpu", dtype: str = "float64"):
        self.seed, self.channels, self.x, self.y = seed, channels, x, y
        self.device, self.dtype = device, dtype
        self._oracle = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_oracle"] = None  # rebuilt on arrival
        return state

    def to_device(self, device):
        return DeviceTorchOracle(self.seed, self.channels, self.x, self.y, device, self.dtype)

    @property
    def oracle(self):
        if self._oracle is None:
            import torch
            from zoracle.adapters.torch import TorchOracle
            from zoracle.adapters.torch_models import make_cnn

            torch.manual_seed(self.seed)
            model = make_cnn(channels=self.channels, num_classes=10, in_channels=1, batchnorm=False)
            model = model.to(device=self.device, dtype=getattr(torch, self.dtype)).eval()
            self._oracle = TorchOracle(model, torch.nn.CrossEntropyLoss(reduction="none"), (self.x, self.y))
        return self._oracle

    # delegated capabilities --------------------------------------------------------------
    @property
    def blocks(self):
        return self.oracle.blocks

    @property
    def max_queries_per_call(self):
        return self.oracle.max_queries_per_call

    @property
    def block_costs(self):
        return self.oracle.block_costs

    def __call__(self, params):
        return self.oracle(params)

    def batch(self, params_batch):
        return self.oracle.batch(params_batch)

    def coordinate_losses(self, params, coords, step):
        return self.oracle.coordinate_losses(params, coords, step)

    def prefix(self, params, block):
        return self.oracle.prefix(params, block)

    def suffix(self, features, params, block, coords, step):
        return self.oracle.suffix(features, params, block, coords, step)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cpu-devices", type=int, default=0, metavar="N",
                   help="dry run with N CPU 'devices' instead of the visible GPUs")
    p.add_argument("--channels", type=int, default=16, help="CNN width (default 16)")
    p.add_argument("--batch", type=int, default=64, help="minibatch size (default 64)")
    p.add_argument("--repeats", type=int, default=2, help="timed estimates each, best kept (default 2)")
    args = p.parse_args(argv)
    if args.cpu_devices < 0:
        p.error(f"--cpu-devices must be >= 1 (0, or left out: the visible GPUs), got {args.cpu_devices}")
    for flag, value in (("--channels", args.channels), ("--batch", args.batch), ("--repeats", args.repeats)):
        if value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    try:
        import torch
    except ImportError:
        p.error("needs torch: pip install -e '.[torch]'")
    if args.cpu_devices:
        devices = ["cpu"] * args.cpu_devices
        # the one-device baseline runs here: give it the threads one worker gets (DeviceExecutor
        # pins each to cores / workers unless OMP_NUM_THREADS is set), or the speed-up compares
        # thread counts, not devices (all cores here against one per worker: 11-18x on 2 cores)
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0)
                              or max(1, usable_cpus() // args.cpu_devices))
    else:
        n = torch.cuda.device_count()
        if n < 1:
            p.error("no CUDA device visible; use --cpu-devices N for a dry run")
        devices = [f"cuda:{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 1, 8, 8))
    y = rng.integers(0, 10, args.batch)
    local = DeviceTorchOracle(0, args.channels, x, y).to_device(devices[0])
    theta = local.oracle.initial_params()
    est = zo.CGE(mu=1e-4)

    def timed(executor=None):
        best, out = np.inf, None
        for _ in range(args.repeats):
            if devices[0].startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = zo.estimate_gradient(local, theta, est, executor=executor)
            best = min(best, time.perf_counter() - t0)
        return best, out

    zo.estimate_gradient(local, theta, est)  # warm-up: kernels, cost measurement
    one_s, ref = timed()
    with DeviceExecutor(devices) as ex:
        zo.estimate_gradient(local, theta, est, executor=ex)  # warm-up: every worker builds its model
        many_s, got = timed(ex)
        stats = ex.last_run
    err = float(np.max(np.abs(got.grad - ref.grad)) / max(1e-30, float(np.max(np.abs(ref.grad)))))
    out = {"devices": devices, "params": int(theta.size), "queries": int(ref.nfev),
           "one_device_s": round(one_s, 4), "all_devices_s": round(many_s, 4),
           "speedup": round(one_s / many_s, 3), "max_rel_diff": err, "shards": stats.shards,
           "one_device_threads": torch.get_num_threads(), "worker_threads": ex.threads,
           "overhead_ms_per_shard": round(stats.overhead_per_shard_s * 1e3, 3)}
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>22}: {v}")
    if err > 1e-9:
        print(f"estimates differ: max relative difference {err:.3g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
