"""Milliseconds per sparse-CGE step of the demo recipe through TorchOracle, optionally for the
code of another checkout, so two versions can be timed side by side on one machine.

One step is what ``zo.train`` does each step of ``zoracle demo``: bind the next minibatch
(32 samples) and estimate the gradient on a 90%-sparse mask (10% of every scored layer,
biases dense: 220 coordinates on digits), through the prefix/suffix path. The time is the
best of ``--repeats`` means over ``--steps`` steps, after a warm-up; the estimates are
printed as a SHA-256 prefix, equal across versions when their arithmetic is::

    python benchmarks/step_time.py --data digits
    git worktree add /tmp/old 814a9e7 && python benchmarks/step_time.py --data digits --root /tmp/old

``reuse_freed_memory`` says whether the process ran under zoracle's allocator policy
(``zo.reuse_freed_memory``; None for a checkout without it, which runs under glibc's default):
``ZORACLE_MALLOC=system`` runs this checkout under glibc's default too, to time a code
change apart from the policy.

``--root`` imports ``zoracle`` (with its ``adapters`` and ``apps``) from that checkout instead
of the installed one; the model, data and masks are this file's. ``--fraction F`` puts F of
every weight layer on the mask instead of 10% (biases stay dense), to split a step's time
into the part every step pays and the part each coordinate adds::

    for f in 0.01 0.05 0.1 0.2 0.5 1; do python benchmarks/step_time.py --fraction $f --steps 60; done
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def import_zoracle(root: str | None):
    """``zoracle`` from the checkout at ``root`` (its ``zoracle/``, ``adapters/`` and ``apps/``)."""
    if root is None:
        import zoracle
        return zoracle
    root = os.path.abspath(root)
    if not os.path.isfile(os.path.join(root, "zoracle", "__init__.py")):
        raise SystemExit(f"--root {root!r} is not a zoracle checkout (no zoracle/__init__.py)")
    sys.path.insert(0, root)
    import zoracle
    for sub in ("adapters", "apps"):
        spec = importlib.util.spec_from_file_location(f"zoracle.{sub}", os.path.join(root, sub, "__init__.py"),
                                                      submodule_search_locations=[os.path.join(root, sub)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[f"zoracle.{sub}"] = mod
        spec.loader.exec_module(mod)
    if not zoracle.__file__.startswith(root):
        raise SystemExit(f"zoracle was already imported from {zoracle.__file__}, not from --root {root!r}")
    return zoracle


def demo_step(zo, data: str = "digits", fraction: float = 0.1):
    """``(oracle, params, mask, batches, data)`` of a demo-recipe step: the study's demo CNN
    (seed 0) through TorchOracle, ``fraction`` of every weight layer on the mask (biases dense),
    and one epoch of minibatches of 32."""
    import numpy as np
    import torch

    sys.path.insert(0, HERE)
    import peers  # the study's data and models (only torch and scikit-learn)

    torch.set_num_threads(1)
    width = 0 if data == "digits" else 16
    from zoracle.adapters.torch import TorchOracle

    oracle = TorchOracle(peers.make_model(data, width, 0), torch.nn.CrossEntropyLoss(reduction="none"))
    params = oracle.initial_params()
    rng = np.random.default_rng(0)
    mask = np.zeros(params.size, dtype=bool)
    for info in oracle.param_info:
        n = info.slice.stop - info.slice.start
        if info.kind == "bias":
            mask[info.slice] = True
        else:
            mask[info.slice.start + rng.choice(n, max(1, round(n * fraction)), replace=False)] = True
    d = peers.load_data(data, 0)
    return oracle, params, mask, zo.Minibatches((d["x"], d["y"]), 32, seed=0)(0), d


def run(data: str = "digits", steps: int = 150, repeats: int = 3, root: str | None = None,
        fraction: float = 0.1) -> dict:
    zo = import_zoracle(root)
    import numpy as np

    oracle, params, mask, batches, _ = demo_step(zo, data, fraction)
    est = zo.CGE(mu=5e-3)
    digest = hashlib.sha256()

    def timed(n, record=False):
        t = time.perf_counter()
        for k in range(n):
            g = zo.estimate_gradient(oracle.bind(batches[k % len(batches)]), params, est, coordinates=mask)
            if record:
                digest.update(np.ascontiguousarray(g.grad).tobytes())
        return (time.perf_counter() - t) / n * 1e3

    # the allocator policy estimate_gradient sets since zo.reuse_freed_memory (None: a checkout without it,
    # run under glibc's default); set before the warm-up so that every timed step runs under one policy
    reuse = zo.reuse_freed_memory() if hasattr(zo, "reuse_freed_memory") else None
    timed(len(batches), record=True)  # warm-up, and the estimates whose hash is printed
    times = [timed(steps) for _ in range(repeats)]
    return {"data": data, "d": int(params.size), "fraction": fraction, "coordinates": int(mask.sum()), "steps": steps,
            "ms_per_step": min(times), "all_ms": times, "grad_sha256": digest.hexdigest()[:16], "reuse_freed_memory": reuse,
            "zoracle": os.path.dirname(zo.__file__)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))  # the whole first sentence
    p.add_argument("--data", choices=("digits", "mnist1d"), default="digits")
    p.add_argument("--steps", type=int, default=150, help="steps a timed repeat (default 150)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats, best kept (default 3)")
    p.add_argument("--root", default=None, help="a zoracle checkout to time instead of the installed one")
    p.add_argument("--fraction", type=float, default=0.1, help="share of each weight layer on the mask, biases "
                   "dense (default 0.1: the demo recipe's 90%% sparsity)")
    a = p.parse_args(argv)
    if a.steps < 1 or a.repeats < 1:
        p.error("--steps and --repeats must be at least 1")
    if not 0 < a.fraction <= 1:
        p.error(f"--fraction must lie in (0, 1], got {a.fraction}")
    print(json.dumps(run(a.data, a.steps, a.repeats, a.root, a.fraction)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
