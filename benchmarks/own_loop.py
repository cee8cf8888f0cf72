"""What ``zo.estimate_gradient`` costs in a loop of your own (docs/training.md, "Using zoracle's
estimates in your own loop"), each timing the best of ``--repeats`` means::

    python benchmarks/own_loop.py

- ``executor``: a ``JoblibExecutor(2)`` made per call against one kept for the loop, and a
  ``zo.train`` step on the kept one (CGE, d = 20);
- ``own cost``: a call against the textbook loop of the same queries, ``(f(x + mu e_i) - f(x)) / mu``,
  on a loss of a few microseconds a query, at d = 2, 20 and 1,000;
- ``torch``: a step of the docs' ``torch.optim`` loop (bind, estimate, set ``.grad``, ``opt.step()``)
  against a ``zo.train`` step of the same model and minibatches.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import zoracle as zo
from zoracle.executors import JoblibExecutor


def best(fn, n: int, repeats: int) -> float:
    """The best of ``repeats`` mean seconds of ``n`` calls of ``fn``."""
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t) / n)
    return min(out)


def loss(x):
    return float(np.sum((x - 1.0) ** 2))


def textbook(x, mu=5e-3):
    f0, g = loss(x), np.empty_like(x)
    for i in range(x.size):
        xp = x.copy()
        xp[i] += mu
        g[i] = (loss(xp) - f0) / mu
    return g


def executor(repeats: int) -> dict:
    x = np.zeros(20)

    def per_call():
        with JoblibExecutor(2) as ex:
            zo.estimate_gradient(loss, x, executor=ex)

    with JoblibExecutor(2) as ex:
        kept = best(lambda: zo.estimate_gradient(loss, x, executor=ex), 50, repeats)
        step = best(lambda: zo.train(loss, x, epochs=1, steps_per_epoch=50, executor=ex, progress=False), 1,
                    repeats) / 50
    return {"per_call_s": best(per_call, 3, repeats), "kept_ms": 1e3 * kept, "train_step_ms": 1e3 * step}


def own_cost(repeats: int) -> dict:
    out = {}
    for d in (2, 20, 1000):
        x = np.zeros(d)
        n = max(5, 20_000 // d)
        out[d] = (1e3 * best(lambda: zo.estimate_gradient(loss, x), n, repeats),
                  1e3 * best(lambda: textbook(x), n, repeats))
    return out


def torch_steps(repeats: int) -> dict:
    import torch

    from zoracle.adapters.torch import TorchOracle

    def setup():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
        x = torch.randn(256, 4, dtype=torch.float64)
        return model, x, (x ** 2).sum(1, keepdim=True)

    model, x, y = setup()
    oracle = TorchOracle(model, torch.nn.MSELoss(reduction="none"))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    step = [0]

    def own():
        rows = slice(32 * (step[0] % 8), 32 * (step[0] % 8) + 32)
        est = zo.estimate_gradient(oracle.bind((x[rows], y[rows])), oracle.initial_params(), zo.CGE())
        g = torch.from_numpy(est.grad)
        for info in oracle.param_info:
            p = model.get_parameter(info.name)
            p.grad = g[info.slice].view(info.shape).to(p)
        opt.step()
        step[0] += 1

    mine = best(own, 200, repeats)
    model, x, y = setup()
    oracle = TorchOracle(model, torch.nn.MSELoss(reduction="none"))
    data = zo.Minibatches((x, y), batch_size=32)
    steps = 25 * len(data)
    theirs = best(lambda: zo.train(oracle, oracle.initial_params(), batches=data, epochs=25, optimizer=zo.adam(0.05),
                                   progress=False), 1, repeats) / steps
    return {"torch_optim_step_ms": 1e3 * mine, "train_step_ms": 1e3 * theirs}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timings of each, keep the fastest (default 5)")
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {a.repeats}")
    ex = executor(a.repeats)
    print(f"executor: made per call {ex['per_call_s']:.2f} s a call, kept {ex['kept_ms']:.1f} ms; "
          f"a zo.train step on the kept one {ex['train_step_ms']:.1f} ms (d = 20)")
    for d, (call, loop) in own_cost(a.repeats).items():
        print(f"own cost: d = {d}: a call {call:.3g} ms, the textbook loop {loop:.3g} ms")
    t = torch_steps(a.repeats)
    print(f"torch: a torch.optim loop step {t['torch_optim_step_ms']:.1f} ms, "
          f"a zo.train step {t['train_step_ms']:.1f} ms")


if __name__ == "__main__":
    main()
