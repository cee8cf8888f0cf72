"""DeepZero against evolution strategies at equal query budgets: a model-size sweep.

Every method trains the same small CNN (the demo's digits CNN, or its 1-D twin on MNIST-1D)
with a hidden dense layer of ``--widths`` units to sweep the parameter count d, from the same
initial weights, through the same black box ``params -> loss on the current minibatch`` (one TorchOracle, one torch thread),
and stops at the same number of loss queries:

* ``deepzero``: zoracle's demo recipe (ZO-GraSP ratios, sparse CGE at 90% sparsity, masks
  redrawn every epoch, SGD momentum 0.9, weight decay 5e-4, cosine schedule with warm-up),
  through TorchOracle's coordinate / feature-reuse fast path;
* ``deepzero-k``: the same recipe with a fixed number of estimated coordinates per step
  (200, biases included) instead of a fixed 10% of the weights: sparsity = 1 - 200 / d;
* ``deepzero-w``: the demo recipe with a warm-up of 5% of the steps instead of one epoch
  (at short budgets one epoch is a large share of the run);
* ``deepzero-s``: the demo recipe with fresh random masks every step instead of every epoch
  (with per-epoch masks 90% of the weights stay frozen for a whole epoch);
* ``deepzero-a``: the demo recipe with Adam (weight decay 5e-4) instead of SGD with momentum;
* ``deepzero-ka``: both changes that scale: 200 coordinates a step and Adam;
* ``deepzero-kas``: the short-budget recipe: 50 coordinates a step (biases included), a
  fresh mask every step (``mask_shuffle_interval="step"``) and Adam, ZO-GraSP ratios kept;
* ``deepzero-krs``: ``zo.recipes.short_budget(fill_small_blocks=False)``, zoracle's short-budget
  recipe: ``deepzero-kas`` with Adam's momentum off (``b1=0``: each measured partial derivative
  moves its weight at once, divided by the root of its running mean square); it spends at most
  the budget (``train(max_queries=...)``). The recipe's default below ``FILL_FROM_STEPS`` steps
  (and at every budget when the runs in ``peers_results`` were made, until 2026-12-03);
* ``deepzero-krsf``: ``zo.recipes.short_budget(fill_small_blocks=True)``: ``deepzero-krs`` with one
  coordinate a step in every block of at most 50 weights that ZO-GraSP's split leaves empty;
  the recipe's default from ``FILL_FROM_STEPS`` steps on (:func:`short_budget_default`);
* ``deepzero-krsd``: ``zo.recipes.short_budget`` with its own defaults for the coordinates a step
  (:func:`zoracle.recipes.default_coordinates`: 100 from 40 queries per weight on, else 50) and
  the fill: what the recipe runs by default (the learning rate from the setting);
* ``rge``: zoracle RGE with 99 directions + the base point (100 queries a step);
* ``zoracle-es``: zoracle RGE with NES rank shaping (``shaping="ranks"``), 50 antithetic pairs
  + the base point (101 queries a step), sigma 0.05, Adam with a cosine schedule: OpenAI-ES
  through ``zo.train``, the populations through ``TorchOracle.batch``;
* ``zoracle-snes``: ``zo.SNES`` through ``zo.train`` with ``zo.sgd(1.0)``: the same algorithm
  and settings as ``snes`` (population 100, no base point), on zoracle's oracle and batching;
* ``snes``, ``pgpe`` (ClipUp): EvoTorch, population 100, one minibatch per generation,
  the population evaluated through ``TorchOracle.batch`` (vmapped forwards);
* ``sepcma``: pycma with ``CMA_diagonal`` (sep-CMA-ES), default population;
* ``fdsgd``: SGD on ``scipy.optimize.approx_fprime`` forward differences (d + 1 plain
  calls a step; no step at all when d + 1 exceeds the budget).

Each method gets a 3-setting grid, run at the first seed; the setting with the best final
accuracy on a validation split (carved from the training set, never the test set) is then
run at the other seeds. Accuracy (validation and test) is recorded at 10 points of the
budget together with the training wall time (evaluation excluded).

    python benchmarks/peers.py --quick                         # one small point, a few minutes
    python benchmarks/peers.py --data digits,mnist1d --widths 0,160,1600 --seeds 0,1,2 --out peers.json
    python benchmarks/peers.py --report peers.json --plot peers.png   # table + plot of a (partial) run
    python benchmarks/peers.py --report a.json --every-setting   # a row per setting run (each given with --setting)
    python benchmarks/peers.py --leads a.json+b.json,c.json --ratios speed.json   # issue 13's acceptance tables

Results are appended to ``--out`` after every run, so an interrupted sweep keeps its data
and a rerun skips what is done. Needs the ``bench`` extra (evotorch, cma) for the ES peers.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time

import numpy as np

METHODS = ("deepzero", "deepzero-k", "deepzero-w", "deepzero-s", "deepzero-a", "deepzero-ka", "deepzero-kas", "deepzero-krs", "deepzero-krsf", "deepzero-krsd", "rge", "zoracle-es", "zoracle-snes", "snes",
           "pgpe", "sepcma", "fdsgd")
DEFAULT_METHODS = ("deepzero", "deepzero-krs", "rge", "zoracle-es", "snes", "pgpe", "sepcma", "fdsgd")
POP = 100  # ES population and RGE queries per step
KEEP = 200  # deepzero-k: coordinates estimated per step, whatever d
KEEP_FRESH = 50  # deepzero-kas: coordinates per step, a fresh mask each step
BATCH = 32  # samples in every minibatch of the black box

# the tuning grid: three settings per method (see module docstring)
GRID = {
    "deepzero": [{"lr": 0.3}, {"lr": 1.0}, {"lr": 3.0}],
    "deepzero-k": [{"lr": 0.3}, {"lr": 1.0}, {"lr": 3.0}],
    "deepzero-w": [{"lr": 0.3}, {"lr": 1.0}, {"lr": 3.0}],
    "deepzero-s": [{"lr": 0.3}, {"lr": 1.0}, {"lr": 3.0}],
    "deepzero-a": [{"lr": 0.01}, {"lr": 0.03}, {"lr": 0.1}],
    "deepzero-ka": [{"lr": 0.03}, {"lr": 0.1}, {"lr": 0.3}],
    "deepzero-kas": [{"lr": 0.03}, {"lr": 0.1}, {"lr": 0.3}],
    "deepzero-krs": [{"lr": 0.03}, {"lr": 0.1}, {"lr": 0.3}],
    "deepzero-krsf": [{"lr": 0.03}, {"lr": 0.1}, {"lr": 0.3}],
    "deepzero-krsd": [{"lr": 0.03}, {"lr": 0.1}, {"lr": 0.3}],
    # RGE's usable step shrinks like q / d: the grid is c * q / d
    "rge": [{"c": 0.15}, {"c": 0.5}, {"c": 1.5}],
    "zoracle-es": [{"sigma": 0.02, "lr": 0.03}, {"sigma": 0.05, "lr": 0.03}, {"sigma": 0.1, "lr": 0.03}],
    "snes": [{"stdev": 0.01}, {"stdev": 0.03}, {"stdev": 0.1}],
    "zoracle-snes": [{"stdev": 0.01}, {"stdev": 0.03}, {"stdev": 0.1}],
    "pgpe": [{"clr": 0.01, "stdev": 0.02}, {"clr": 0.03, "stdev": 0.05}, {"clr": 0.1, "stdev": 0.1}],
    "sepcma": [{"sigma": 0.01}, {"sigma": 0.03}, {"sigma": 0.1}],
    "fdsgd": [{"lr": 0.3}, {"lr": 1.0}, {"lr": 3.0}],
}


# ----------------------------------------------------------------------------- data, models
def load_data(name: str, seed: int = 0) -> dict:
    """float32 inputs, int64 labels: train / val (20% of train, stratified) / test."""
    if name == "digits":
        from zoracle.apps._digits import load_digits_split

        d = load_digits_split(seed=0)
        x, y, xt, yt = d.x_train, d.y_train, d.x_test, d.y_test
    elif name == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = 4000  # procedurally generated, offline: 3200 train / 800 test
        raw = make_dataset(args)
        x, y = raw["x"].astype(np.float32)[:, None], raw["y"].astype(np.int64)
        xt, yt = raw["x_test"].astype(np.float32)[:, None], raw["y_test"].astype(np.int64)
    else:
        raise ValueError(f"`data` must be 'digits' or 'mnist1d', got {name!r}")
    rng = np.random.default_rng(1000 + seed)
    val = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        val[rng.choice(idx, size=int(round(0.2 * len(idx))), replace=False)] = True
    return {"x": x[~val], "y": y[~val], "xv": x[val], "yv": y[val], "xt": xt, "yt": yt}


def make_model(data: str, width: int, seed: int):
    """The demo CNN, with a hidden layer of ``width`` units before the classifier when ``width`` > 0.

    digits: conv3x3(1->8)-ReLU, conv3x3(8->16, stride 2)-ReLU, 2x2 average pool, then
    linear(64->10) (width 0: the demo's 1,898 weights) or linear(64->width)-ReLU-linear(width->10)
    (d = 1,258 + 75 width: 13,258 at 160, 121,258 at 1600). mnist1d: the 1-D twin
    (conv5(1->8), conv3(8->16, stride 2), average pool 4, 80 features; d = 458 + 91 width: 1,914 at 16, 12,106 at 128, 109,658 at 1200).
    The size grows in the dense layers: a forward costs about 2 d + 50k FLOPs per sample,
    where widening the convolutions would cost about 32 d, which this CPU study cannot afford.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if data == "digits":
        body = [nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                nn.AvgPool2d(2), nn.Flatten()]
        features = 64
    else:
        body = [nn.Conv1d(1, 8, 5, padding=2), nn.ReLU(), nn.Conv1d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                nn.AvgPool1d(4), nn.Flatten()]
        features = 80
    head = [nn.Linear(features, 10)] if width == 0 else [nn.Linear(features, width), nn.ReLU(), nn.Linear(width, 10)]
    return nn.Sequential(*body, *head)


# ----------------------------------------------------------------------------- the black box
class Bench:
    """One (data, width, seed) point: the oracle, the minibatch stream, the query and time ledger."""

    def __init__(self, data: dict, name: str, width: int, seed: int, budget: int, batch_size: int = BATCH,
                 points: int = 10, peer_eval: str = "batch", model_seed: int | None = None,
                 batch_seed: int | None = None, rng_seed: int | None = None, dtype: str = "float32"):
        import torch

        import zoracle as zo
        from zoracle.adapters.torch import TorchOracle

        self.data, self.name, self.width, self.seed, self.budget = data, name, width, seed, int(budget)
        self.rng_seed = seed if rng_seed is None else rng_seed  # the method's own draws (samples, coordinates)
        self.peer_eval = peer_eval  # "batch": a population is one vmapped TorchOracle.batch; "plain": a call per row
        model = make_model(name, width, seed if model_seed is None else model_seed)  # model_seed: another start
        # the black box computes in float32 (every study) or in float64 (the same start, converted)
        self.dtype = np.dtype(dtype)
        self.oracle = TorchOracle(model, torch.nn.CrossEntropyLoss(reduction="none"), dtype=getattr(torch, dtype))
        self.p0 = self.oracle.initial_params()
        self.d = int(self.p0.size)
        self.batches = zo.Minibatches((data["x"], data["y"]), batch_size, seed=seed if batch_seed is None else batch_seed)
        self.marks = [int(round(self.budget * (i + 1) / points)) for i in range(points)]
        self.queries, self.curve = 0, []
        self._epoch, self._pos, self._list = 0, 0, self.batches(0)
        self._eval_s, self._t0 = 0.0, None

    # -- clock: training time only (evaluation subtracted)
    def start(self):
        self.queries, self.curve, self._eval_s = 0, [], 0.0
        self._epoch, self._pos, self._list = 0, 0, self.batches(0)
        self._t0 = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self._t0 - self._eval_s

    def done(self) -> bool:
        return self.queries >= self.budget

    def next_batch(self):
        if self._pos >= len(self._list):
            self._epoch, self._pos = self._epoch + 1, 0
            self._list = self.batches(self._epoch)
        b = self._list[self._pos]
        self._pos += 1
        return b

    def losses(self, P) -> np.ndarray:
        """One generation: the rows of ``P`` on the next minibatch (``TorchOracle.batch``, or one plain
        ``params -> float`` call per row when ``peer_eval="plain"``, as an ES library drives a black box)."""
        oracle = self.oracle.bind(self.next_batch())
        P = np.ascontiguousarray(P, dtype=self.dtype)
        out = oracle.batch(P) if self.peer_eval == "batch" else np.array([oracle(row) for row in P])
        self.queries += len(out)
        return out

    def plain(self):
        """A plain ``params -> float`` black box bound to the next minibatch (counts its calls)."""
        oracle = self.oracle.bind(self.next_batch())

        def f(p):
            self.queries += 1
            return oracle(np.array(p, dtype=self.dtype))  # a copy: scipy hands read-only views
        return f

    def accuracy(self, params, split: str) -> float:
        x, y = (self.data["xv"], self.data["yv"]) if split == "val" else (self.data["xt"], self.data["yt"])
        return float((self.oracle.predict(np.asarray(params, dtype=self.dtype), x).argmax(1) == y).mean())

    def record(self, params, queries=None) -> None:
        """Log (queries, train seconds, val acc, test acc) each time the run passes a budget mark."""
        if queries is not None:
            self.queries = int(queries)
        if not self.marks or self.queries < self.marks[min(len(self.curve), len(self.marks) - 1)]:
            return
        t = time.perf_counter()
        secs = self.seconds()
        while len(self.curve) < len(self.marks) and self.queries >= self.marks[len(self.curve)]:
            row = [self.queries, secs, self.accuracy(params, "val"), self.accuracy(params, "test")]
            self.curve.append(row)
        self._eval_s += time.perf_counter() - t

    def final(self, params) -> None:
        t = time.perf_counter()
        self.curve.append([self.queries, self.seconds(), self.accuracy(params, "val"), self.accuracy(params, "test")])
        self._eval_s += time.perf_counter() - t


# ----------------------------------------------------------------------------- methods
def step_recorder(bench, spent: int = 0):
    """A ``zo.train`` callback: adds each step's queries to ``spent`` (ZO-GraSP's, which ``train``
    makes before the first step), records at the budget marks, and stops once the budget is spent."""
    total = [int(spent)]

    def cb(event, rec, params):
        if event != "step":
            return None
        total[0] += rec["nfev"]
        bench.record(params, total[0])
        return bench.done()
    return cb


def _deepzero_steps(bench, sparsity, kinds, grasp) -> tuple:
    """Queries per sparse-CGE step (scored weights kept + dense biases + base) -> (steps, epochs)."""
    scored = sum(i.slice.stop - i.slice.start for i in bench.oracle.param_info if i.kind in kinds)
    per_step = int(round((1 - sparsity) * scored)) + (bench.d - scored) + 1
    steps = max(2, (bench.budget - grasp) // per_step)
    return steps, -(-steps // len(bench.batches))


def run_deepzero(bench, lr, sparsity=0.9, warmup=None, optimizer="sgd", ratios="zo_grasp", shuffle=1, **opts):
    import zoracle as zo
    from zoracle.apps._digits import per_class

    from zoracle._pruning import grasp_queries

    grasp = grasp_queries(192) if ratios == "zo_grasp" else 0  # ZO-GraSP's queries, counted by train() too
    steps, epochs = _deepzero_steps(bench, sparsity, opts.get("score_kinds", ("conv", "linear")), grasp)
    warm = min(len(bench.batches), steps - 1) if warmup is None else max(1, int(warmup * steps))
    sched = zo.cosine_schedule(lr, total_steps=steps, warmup_steps=warm)
    optimizer = (zo.sgd(sched, momentum=0.9, weight_decay=5e-4) if optimizer == "sgd"
                 else zo.adam(sched, weight_decay=5e-4))
    d = bench.data
    return zo.train(bench.oracle, bench.p0, batches=bench.batches, epochs=epochs, estimator=zo.CGE(mu=5e-3),
             sparsity=sparsity, ratios=ratios, grasp_batch=per_class(d["x"], d["y"], 25, seed=bench.seed),
             grasp_directions=192, mask_shuffle_interval=shuffle, optimizer=optimizer, callbacks=[step_recorder(bench, grasp)], rng=bench.rng_seed,
             progress=False, **opts).params


def run_deepzero_k(bench, lr, keep=KEEP, optimizer="sgd", shuffle=1):
    # biases join the sparse set: at large widths their dense estimate alone would cost more than `keep`
    return run_deepzero(bench, lr, sparsity=max(0.0, 1.0 - keep / bench.d), score_kinds=("conv", "linear", "bias"),
                        optimizer=optimizer, shuffle=shuffle)


def _train_rge(bench, steps, estimator, optimizer):
    """``zo.train`` with an RGE-family estimator, recording at every budget mark until the budget is spent."""
    import zoracle as zo

    return zo.train(bench.oracle, bench.p0, batches=bench.batches, epochs=-(-steps // len(bench.batches)),
                    estimator=estimator, optimizer=optimizer, callbacks=[step_recorder(bench, bench.queries)],
                    rng=bench.rng_seed, progress=False).params


def run_rge(bench, c):
    import zoracle as zo

    q = POP - 1
    steps = bench.budget // POP
    lr = c * q / bench.d
    sched = zo.cosine_schedule(lr, total_steps=steps, warmup_steps=min(len(bench.batches), steps - 1))
    return _train_rge(bench, steps, zo.RGE(mu=5e-3, directions=q), zo.sgd(sched, momentum=0.9, weight_decay=5e-4))


def run_zoracle_es(bench, lr, sigma=0.05, pairs=POP // 2):
    import zoracle as zo

    q = int(pairs)  # antithetic pairs: 2 q + 1 queries a step
    steps = bench.budget // (2 * q + 1)
    return _train_rge(bench, steps, zo.RGE(mu=sigma, directions=q, scheme="central", shaping="ranks"),
                      zo.adam(zo.cosine_schedule(lr, total_steps=steps)))


def run_zoracle_snes(bench, stdev):
    """``zo.SNES`` through ``zo.train``: EvoTorch's SNES settings (population 100, centre lr 1 as
    ``zo.sgd(1.0)``, the paper's sigma lr), populations through ``TorchOracle.batch``."""
    import zoracle as zo

    return _train_rge(bench, bench.budget // POP, zo.SNES(mu=stdev, population=POP), zo.sgd(1.0))


def _evotorch_problem(bench):
    import logging

    import torch
    from evotorch import Problem

    logging.getLogger("evotorch").setLevel(logging.WARNING)

    class BlackBoxProblem(Problem):
        def __init__(self):
            super().__init__("min", solution_length=bench.d, initial_bounds=(-0.1, 0.1), dtype=torch.float32,
                             seed=bench.rng_seed)

        def _evaluate_batch(self, solutions):
            losses = bench.losses(solutions.values.detach().cpu().numpy().copy())
            solutions.set_evals(torch.as_tensor(losses, dtype=torch.float32))

    return BlackBoxProblem()


def _run_searcher(bench, searcher):
    import torch

    center = bench.p0
    while not bench.done():
        searcher.step()
        center = torch.as_tensor(searcher.status["center"]).detach().cpu().numpy().copy()  # evotorch: read-only
        bench.record(center)
    return center


def run_snes(bench, stdev):
    import torch
    from evotorch.algorithms import SNES

    problem = _evotorch_problem(bench)
    return _run_searcher(bench, SNES(problem, stdev_init=stdev, popsize=POP, center_init=torch.from_numpy(bench.p0)))


def run_pgpe(bench, clr, stdev):
    import torch
    from evotorch.algorithms import PGPE

    problem = _evotorch_problem(bench)
    return _run_searcher(bench, PGPE(problem, popsize=POP, center_learning_rate=clr, stdev_learning_rate=0.1,
                              stdev_init=stdev, optimizer="clipup", ranking_method="centered",
                              center_init=torch.from_numpy(bench.p0)))


def run_sepcma(bench, sigma):
    import cma

    es = cma.CMAEvolutionStrategy(bench.p0.astype(np.float64), sigma,
                                  {"CMA_diagonal": True, "seed": bench.rng_seed + 1, "verbose": -9,
                                   "maxfevals": float("inf"), "tolfun": 0, "tolx": 0, "tolfunhist": 0,
                                   "tolstagnation": 10**9})
    while not bench.done():
        X = es.ask()
        es.tell(X, bench.losses(np.asarray(X)).tolist())
        bench.record(es.mean)
    return es.mean


def run_fdsgd(bench, lr):
    from scipy.optimize import approx_fprime

    p = bench.p0.astype(np.float64)
    steps = bench.budget // (bench.d + 1)  # 0 when one full gradient costs more than the budget
    bench.record(p, 0) if steps == 0 else None
    for s in range(steps):
        f = bench.plain()
        g = approx_fprime(p, f, 5e-3)  # d + 1 calls of f, each counted
        p = p - lr * 0.5 * (1 + math.cos(math.pi * s / steps)) * g
        bench.record(p)
    return p


def run_deepzero_w(bench, lr):
    return run_deepzero(bench, lr, warmup=0.05)


def run_deepzero_s(bench, lr):
    return run_deepzero(bench, lr, shuffle="step")


def run_deepzero_a(bench, lr):
    return run_deepzero(bench, lr, optimizer="adam")


def run_deepzero_ka(bench, lr):
    return run_deepzero_k(bench, lr, optimizer="adam")


def run_deepzero_kas(bench, lr):
    return run_deepzero_k(bench, lr, keep=KEEP_FRESH, optimizer="adam", shuffle="step")


def run_deepzero_krs(bench, lr, fill_small_blocks=False, coordinates=KEEP_FRESH):
    """``zo.recipes.short_budget(fill_small_blocks=False)``: zoracle's DeepZero recipe for short
    budgets, its small blocks left as ZO-GraSP splits them at every budget, 50 coordinates a step
    (None for each: the recipe's default)."""
    import zoracle as zo
    from zoracle._pruning import grasp_queries
    from zoracle.apps._digits import per_class

    kw = zo.recipes.short_budget(bench.oracle, bench.p0, bench.budget, batches=bench.batches, lr=lr,
                                 coordinates=coordinates, fill_small_blocks=fill_small_blocks)
    d = bench.data
    return zo.train(bench.oracle, bench.p0, batches=bench.batches, grasp_batch=per_class(d["x"], d["y"], 25, seed=bench.seed),
                    callbacks=[step_recorder(bench, grasp_queries(kw["grasp_directions"]))], rng=bench.rng_seed,
                    progress=False, **kw).params


def run_deepzero_krsf(bench, lr):
    """``zo.recipes.short_budget(fill_small_blocks=True)``."""
    return run_deepzero_krs(bench, lr, fill_small_blocks=True)


def run_deepzero_krsd(bench, lr):
    """``zo.recipes.short_budget`` with its defaults for the coordinates a step and the fill
    (:func:`zoracle.recipes.default_coordinates`: 100 from 40 queries per weight on, else 50)."""
    return run_deepzero_krs(bench, lr, fill_small_blocks=None, coordinates=None)


RUNNERS = {"deepzero-kas": run_deepzero_kas, "deepzero-krs": run_deepzero_krs, "deepzero-krsf": run_deepzero_krsf, "deepzero-krsd": run_deepzero_krsd, "deepzero": run_deepzero, "deepzero-k": run_deepzero_k, "deepzero-w": run_deepzero_w, "deepzero-s": run_deepzero_s, "deepzero-a": run_deepzero_a, "deepzero-ka": run_deepzero_ka, "rge": run_rge, "zoracle-es": run_zoracle_es, "zoracle-snes": run_zoracle_snes, "snes": run_snes,
           "pgpe": run_pgpe, "sepcma": run_sepcma, "fdsgd": run_fdsgd}


def machine() -> dict:
    """What a run's floats depend on beyond the code: the CPU, the vector instruction set torch's
    kernels use (``ATEN_CPU_CAPABILITY`` can lower it) and the numeric libraries' versions. The same
    seed gives a different model under a different instruction set (docs/peers.md). Fixed for a
    process, so read once."""
    return dict(_machine())


@functools.cache
def _machine() -> dict:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "numpy": np.__version__}


def run_one(bench, method: str, setting: dict, **extra) -> dict:
    import zoracle as zo

    bench.start()
    error, params = None, None
    try:
        params = RUNNERS[method](bench, **setting, **extra)
    except (zo.ArgumentError, zo.OracleError) as exc:  # diverged (non-finite params or loss): keep the record, mark it
        error = str(exc).splitlines()[0]
    if params is not None and (not bench.curve or bench.curve[-1][0] < bench.queries):
        bench.final(params)  # stopped short of the last mark (schedule rounding, one FD step past d)
    if not bench.curve:
        bench.curve.append([bench.queries, bench.seconds(), float("nan"), float("nan")])
    last = bench.curve[-1]
    return {"data": bench.name, "width": bench.width, "d": bench.d, "method": method, "setting": setting,
            "seed": bench.seed, "budget": bench.budget, "queries": last[0], "seconds": last[1],
            "val_acc": last[2], "test_acc": last[3], "curve": bench.curve, "error": error, "machine": machine()}


# ----------------------------------------------------------------------------- sweep, report
def _key(r: dict) -> tuple:
    return (r["data"], r["width"], r["method"], json.dumps(r["setting"], sort_keys=True), r["seed"], r["budget"],
            r.get("start"), r.get("batch_order"), r.get("rng"), r.get("dtype", "float32"))


def _isa(r: dict):
    """The instruction set a run's torch kernels used, or None where the run did not record it."""
    return (r.get("machine") or {}).get("cpu_capability")


def _file_and_methods(path: str):
    """``"runs.json@snes/pgpe"`` -> ``("runs.json", {"snes", "pgpe"})``; a plain path keeps every method (None)."""
    file, at, methods = path.rpartition("@")
    return (file, set(methods.split("/")) - {""}) if at and file.endswith(".json") else (path, None)


def _load(path):
    """The runs of a results file; ``path@m1/m2`` keeps only the runs of methods ``m1`` and ``m2``
    (a study that takes some methods' seeds from another study's file)."""
    if not path:  # no --out: a sweep kept in memory only (`--quick`)
        return []
    path, methods = _file_and_methods(path)
    if path and os.path.exists(path):
        with open(path) as f:
            runs = json.load(f)
        return runs if methods is None else [r for r in runs if r["method"] in methods]
    return []


def _save(path, runs) -> None:
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(runs, f)
    os.replace(tmp, path)


def _merged(paths) -> list:
    """The runs of several result files (parallel sweeps): a run present twice counts once."""
    return list({(_key(r), _isa(r)): r for path in paths if path for r in _load(path)}.values())


def best_setting(runs, data, width, method, budget):
    """The grid setting with the best final validation accuracy at the tuning seed (ties: first).

    A width tuned after a setting was transferred to it counts that transferred run (same seed)
    as one of its grid points, and a budget tuned after a setting was brought to it with
    ``--settings-from`` counts that fresh run (same seed) the same way."""
    here = [r for r in runs if (r["data"], r["width"], r["method"], r["budget"]) == (data, width, method, budget)]
    tuned = [r for r in here if r.get("role") == "tune"]
    if tuned:
        tuned += [r for r in here if r.get("role") in ("transfer", "fresh") and r["seed"] == tuned[0]["seed"]]
    if not tuned:
        moved = [r for r in here if r.get("role") in ("transfer", "fresh")]
        moved = moved or [r for r in here if r.get("role") == "given"]  # --setting: one setting, no tuning
        return moved[0]["setting"] if moved else None
    return max(tuned, key=lambda r: -1.0 if r["val_acc"] != r["val_acc"] else r["val_acc"])["setting"]


def settings_for(runs, data, width, method, budget):
    """The setting ``--settings-from`` gives ``method``: the one chosen in ``runs``; for
    ``deepzero-krsf`` where none was tuned (every sweep before the fill existed), the one
    ``deepzero-krs`` chose, since the two differ only in the fill."""
    chosen = best_setting(runs, data, width, method, budget)
    if chosen is None and method == "deepzero-krsf":
        chosen = best_setting(runs, data, width, "deepzero-krs", budget)
    return chosen


def timing_setting(runs, data, width, method, budget, run_budget=None) -> dict:
    """The setting a timing run uses: the one tuned at ``budget``, else the one ``runs`` ran at the
    timing's own budget ``run_budget`` (a method only run there, such as ``deepzero-krsd`` at
    150,000 queries in ``wide_small_*.json``), else the middle of the grid."""
    return (best_setting(runs, data, width, method, budget)
            or (run_budget is not None and best_setting(runs, data, width, method, run_budget))
            or GRID[method][len(GRID[method]) // 2])


def sweep(args, log=print) -> list:
    import torch

    torch.set_num_threads(args.threads)
    runs = _load(args.out)
    here = machine()["cpu_capability"]

    def seen(r):  # a run under another instruction set is another run; an unrecorded one is this machine's
        return _key(r), _isa(r) or here

    done = {seen(r) for r in runs}
    # runs of this sweep's points made by another sweep (a --settings-from run at a budget now
    # tuned): copied into --out, in their file's order, and not run again
    for r in [r for path in args.reuse.split(",") if path for r in _load(path)]:
        if (r["data"] in args.data and r["width"] in args.widths and r["method"] in args.methods
                and r["budget"] == args.budget and seen(r) not in done):
            runs.append(r)
            done.add(seen(r))
    if args.reuse:
        _save(args.out, runs)
    fixed = [r for path in args.settings_from.split(",") if path for r in _load(path)] if args.settings_from else None
    datas = {}
    for name in args.data:
        for width in args.widths:
            for method in args.methods:
                grid = GRID[method][:args.grid] if args.grid else GRID[method]
                source = max((w for w in args.tune_widths if w < width), default=None)
                for i, seed in enumerate(args.seeds):
                    if args.setting is not None:  # the setting given on the command line, no tuning
                        todo = [(args.setting, "given")]
                    elif fixed is not None:  # new seeds of the settings chosen in an earlier sweep, no tuning
                        chosen = settings_for(fixed, name, width, method, args.settings_budget or args.budget)
                        if chosen is None:
                            raise SystemExit(f"--settings-from has no chosen setting for {method} on {name} at width "
                                             f"{width} and budget {args.settings_budget or args.budget}")
                        todo = [(chosen, "fresh")]
                    elif i == 0 and args.tune_widths and width not in args.tune_widths and source is not None:
                        chosen = best_setting(runs, name, source, method, args.budget)  # tuned at a smaller width
                        todo = [(chosen, "transfer")] if chosen is not None else [(s, "tune") for s in grid]
                    elif i == 0:
                        todo = [(s, "tune") for s in grid]
                    else:
                        chosen = best_setting(runs, name, width, method, args.budget)
                        todo = [(chosen, "seed")] if chosen is not None else []
                    for setting, role in todo:
                        rec = {"data": name, "width": width, "method": method, "setting": setting, "seed": seed,
                               "budget": args.budget, "start": args.start, "batch_order": args.batch_order,
                               "rng": args.rng, "dtype": args.dtype}
                        if seen(rec) in done:
                            continue
                        start = seed if args.start is None else args.start  # the weights' and the split's seed
                        if (name, start) not in datas:
                            datas[(name, start)] = load_data(name, start)
                        bench = Bench(datas[(name, start)], name, width, seed, args.budget, model_seed=start,
                                      batch_seed=args.batch_order, rng_seed=args.rng, dtype=args.dtype)
                        r = run_one(bench, method, setting)
                        r["role"] = role
                        if args.dtype != "float32":  # the studies' black box computes in float32: unrecorded there
                            r["dtype"] = args.dtype
                        for key in ("start", "batch_order", "rng"):
                            if getattr(args, key) is not None:
                                r[key] = getattr(args, key)
                        runs.append(r)
                        done.add(seen(r))
                        _save(args.out, runs)
                        log(f"{name} d={r['d']} {method} {setting} seed {seed}: val {100 * r['val_acc']:.2f}% "
                            f"test {100 * r['test_acc']:.2f}% in {r['seconds']:.1f} s ({r['queries']:,} queries)"
                            + (f" [{r['error']}]" if r["error"] else ""))
    return runs


def summarize(runs, every_setting: bool = False) -> list:
    """Per (data, d, budget, method): the chosen setting's test accuracy over seeds and its speed.

    Runs made under different instruction sets (:func:`machine`) are never pooled: where the runs
    mix them, each gets its own rows, with the set in ``"isa"`` (None: not recorded). With
    ``every_setting``, every setting a method ran gets its own row, in the order first run (a
    study of one method's settings, each given with ``--setting``)."""
    rows = []
    split = len({_isa(r) for r in runs}) > 1
    keys = sorted({(r["data"], r["d"], r["width"], r["budget"], r["method"], _isa(r) if split else None) for r in runs},
                  key=lambda k: (k[0], k[1], k[3], METHODS.index(k[4]), k[5] or ""))
    for data, d, width, budget, method, isa in keys:
        mine = [r for r in runs if not split or _isa(r) == isa]
        point = [r for r in mine if (r["data"], r["width"], r["budget"], r["method"]) == (data, width, budget, method)]
        if every_setting:  # each setting as first run, in that order
            first = {}
            for r in point:
                first.setdefault(json.dumps(r["setting"], sort_keys=True), r["setting"])
            settings = list(first.values())
        else:
            settings = [best_setting(mine, data, width, method, budget)]
        for chosen in settings:
            rows.append(_summary_row(point, data, d, width, budget, method, chosen) | ({"isa": isa} if split else {}))
    return rows


def _summary_row(point, data, d, width, budget, method, chosen) -> dict:
    """One row of :func:`summarize`: the runs of one point and method at setting ``chosen``."""
    sel = sorted({r["seed"]: r for r in point if r["setting"] == chosen}.values(), key=lambda r: r["seed"])
    # a run that diverged before its first evaluation has no accuracy (NaN): named, not averaged in silence
    failed = sorted(r["seed"] for r in sel if r["test_acc"] != r["test_acc"])
    sel = [r for r in sel if r["test_acc"] == r["test_acc"]] or sel
    acc = np.array([r["test_acc"] for r in sel]) * 100
    secs = np.array([r["seconds"] for r in sel])
    return {"data": data, "d": d, "width": width, "budget": budget, "method": method, "setting": chosen,
            "seeds": sorted(r["seed"] for r in sel), "test_acc": acc.tolist(),
            "mean": _finite_stat(np.mean, acc), "min": _finite_stat(np.min, acc), "max": _finite_stat(np.max, acc),
            "val_acc": _finite_stat(np.mean, [r["val_acc"] for r in sel]) * 100,
            "seconds": float(secs.mean()), "queries": int(np.mean([r["queries"] for r in sel])),
            "qps": float(np.mean([r["queries"] / max(r["seconds"], 1e-9) for r in sel])), "failed": failed}


def _finite_stat(f, values) -> float:
    """``f`` of the numbers among ``values`` that are not NaN; NaN where none is (every seed failed),
    without NumPy's "Mean of empty slice" / "All-NaN slice" warnings in the report's output."""
    a = np.asarray(values, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(f(a)) if a.size else float("nan")


def _failed(row) -> str:
    """``, 2 failed (seeds 1, 2)``: the seeds whose runs diverged before any accuracy, left out of the row's numbers."""
    seeds = row.get("failed") or []
    return f", {len(seeds)} failed (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})" if seeds else ""


def _label(row) -> str:
    """A summary row's method, with its instruction set where the runs mixed them."""
    return row["method"] + (f" [{row['isa'] or 'not recorded'}]" if "isa" in row else "")


def _markdown(lines) -> str:
    """A markdown table: the header row ``lines[0]``, then the rest."""
    return "\n".join("| " + " | ".join(map(str, row)) + " |" + ("\n|" + "---|" * len(lines[0]) if i == 0 else "")
                     for i, row in enumerate(lines))


def table(rows) -> str:
    head = ("data", "d", "queries", "method", "setting", "test acc % (seeds)", "val %", "wall s", "queries/s")
    lines = [head]
    for r in rows:
        accs = " / ".join(f"{a:.2f}" for a in r["test_acc"])
        mean = f"{r['mean']:.2f}" + (f" ({accs})" if len(r["test_acc"]) > 1 else "") + _failed(r)
        setting = ", ".join(f"{k} {v}" for k, v in (r["setting"] or {}).items())
        lines.append((r["data"], f"{r['d']:,}", f"{r['queries']:,}", _label(r), setting, mean,
                      f"{r['val_acc']:.2f}", f"{r['seconds']:.1f}", f"{r['qps']:,.0f}"))
    return _markdown(lines)


def plot(runs, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarize(runs)
    points = sorted({(r["data"], r["d"], r["width"], r["budget"]) for r in rows})
    fig, axes = plt.subplots(len(points), 2, figsize=(11, 3.6 * len(points)), squeeze=False)
    for (data, d, width, budget), ax in zip(points, axes):
        for r in (r for r in rows if (r["data"], r["d"], r["budget"]) == (data, d, budget)):
            sel = [x for x in runs if (x["data"], x["width"], x["budget"], x["method"]) == (data, width, budget,
                                                                                            r["method"])
                   and x["setting"] == r["setting"] and ("isa" not in r or _isa(x) == r["isa"])]
            n = min(len(x["curve"]) for x in sel)
            q = np.array([[c[0] for c in x["curve"][:n]] for x in sel]).mean(0)
            s = np.array([[c[1] for c in x["curve"][:n]] for x in sel]).mean(0)
            a = np.array([[100 * c[3] for c in x["curve"][:n]] for x in sel])
            color = plt.get_cmap("tab20")(METHODS.index(r["method"]) % 20)
            for axis, xs in ((ax[0], q), (ax[1], s)):
                keep = (xs > 0) & (q > 0)  # a run with no query (FD-SGD past its budget) has no point
                axis.plot(xs[keep], a.mean(0)[keep], marker=".", color=color, label=f"{_label(r)} ({len(sel)})")
                if len(sel) > 1:
                    axis.fill_between(xs[keep], a.min(0)[keep], a.max(0)[keep], color=color, alpha=0.2)
        ax[0].set(xlabel="loss queries", ylabel="test accuracy (%)", title=f"{data}, d = {d:,}, {budget:,} queries")
        ax[1].set(xlabel="training wall time (s, 1 torch thread)", xscale="log", title=f"{data}, d = {d:,}: per second")
        ax[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels collide on short ranges
        for axis in ax:
            axis.grid(alpha=0.3)
        ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SPEED_PEERS = ("snes", "pgpe", "sepcma", "fdsgd")
#: methods whose queries go through TorchOracle's coordinate path (their multiply-adds are counted on a replay)
COORDINATE_METHODS = tuple(m for m in METHODS if m.startswith("deepzero"))


def forward_macs(model, x) -> int:
    """Multiply-adds of one forward per sample: Linear and Conv layers, counted with hooks
    (activations, pooling and the loss are not counted)."""
    import torch
    from torch import nn

    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Linear):
            total[0] += mod.in_features * mod.out_features * (out.numel() // out.shape[-1])
        else:  # one output element of a convolution reads (in_channels / groups) * kernel weights
            total[0] += mod.weight[0].numel() * out.numel()

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            model(torch.as_tensor(np.asarray(x[:1], dtype=np.float32)))
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def executed_macs(fn):
    """``(fn(), multiply-adds of the matrix products and convolutions torch ran meanwhile)``,
    counted by ``torch.utils.flop_counter.FlopCounterMode`` (vmapped batches included)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn()
    return out, counter.get_total_flops() // 2


def add_macs(rows, log=print) -> list:
    """Multiply-adds of every speed row. A full-forward method spends ``queries * 32 *
    forward_macs``. The coordinate-path methods are replayed (untimed, same seed and setting)
    and what they ran is counted (:func:`executed_macs`): ZO-GraSP's forwards, the base
    losses, the cached activations, the closed forms and the suffixes. ``mac_ratio`` is a
    row's multiply-adds per query over DeepZero's demo recipe's at the same point: the
    ``ratio`` (of seconds per query) the two would have at equal multiply-add throughput."""
    datas, per = {}, {}
    for r in rows:
        key = (r["data"], r["width"])
        if r["data"] not in datas:
            datas[r["data"]] = load_data(r["data"], 0)
        if key not in per:
            per[key] = forward_macs(make_model(r["data"], r["width"], 0), datas[r["data"]]["x"])
        if r["method"] in COORDINATE_METHODS:
            bench = Bench(datas[r["data"]], r["data"], r["width"], 0, r.get("budget", 30_000))
            r["macs"] = executed_macs(lambda: run_one(bench, r["method"], r["setting"]))[1]
        else:
            r["macs"] = r["queries"] * BATCH * per[key]
        log(f"{r['data']} d={r['d']} {r['method']} ({r['eval']}): {r['macs'] / 1e9:.2f} GMAC")
    return mac_ratios(rows)


def mac_ratios(rows) -> list:
    """Set each row's ``mac_ratio``: its multiply-adds per query over the demo recipe's."""
    for r in rows:
        dz = _demo_row(rows, r)
        ok = dz and dz["macs"] and r["macs"] and r["queries"] and dz["queries"]
        r["mac_ratio"] = (r["macs"] / r["queries"]) / (dz["macs"] / dz["queries"]) if ok else float("nan")
    return rows


def _demo_row(rows, r):
    """The demo recipe's (``deepzero``) row at ``r``'s point, or None."""
    return next((x for x in rows if (x["data"], x["width"], x["method"]) == (r["data"], r["width"], "deepzero")), None)


def speed(args, log=print) -> list:
    """Training seconds per query of every method at every point, measured one after another in
    one process (seed 0, the setting tuned in the ``--speed`` files), SNES and PGPE both through
    ``TorchOracle.batch`` and through one plain call per candidate. ``--settings-budget N``
    takes the settings tuned at budget N (e.g. 30,000's choices for a 150,000-query timing), and
    for a method not run at N the setting it ran with at the timing's budget (:func:`timing_setting`).
    Ratios are a method's seconds per query over DeepZero's (the demo recipe through
    TorchOracle's coordinate path). Every method runs under zoracle's allocator policy
    (``zo.reuse_freed_memory``; ``ZORACLE_MALLOC=system`` keeps glibc's default), recorded
    in each row; files written before it ran under glibc's default. The rows then get their
    multiply-adds (:func:`add_macs`, on replays after every timing)."""
    import torch

    import zoracle as zo

    torch.set_num_threads(args.threads)
    # every method under the one allocator policy (the first zo.train would set it mid-table otherwise)
    reuse = zo.reuse_freed_memory()
    runs = _merged((args.speed or "").split(","))
    rows = []
    for name in args.data:
        data = load_data(name, 0)
        for width in args.widths:
            for method in args.methods:
                tuned_at = args.settings_budget or args.budget  # the settings of another budget's files
                setting = timing_setting(runs, name, width, method, tuned_at, args.budget)
                for ev in (("batch", "plain") if method in SPEED_PEERS[:2] else ("batch",)):
                    bench = Bench(data, name, width, 0, args.budget, peer_eval=ev)
                    r = run_one(bench, method, setting)
                    row = {"data": name, "d": r["d"], "width": width, "method": method, "eval": ev, "setting": setting,
                           "budget": args.budget, "queries": r["queries"], "seconds": r["seconds"], "test_acc": r["test_acc"],
                           "s_per_query": r["seconds"] / r["queries"] if r["queries"] else float("nan"),
                           "machine": r["machine"], "reuse_freed_memory": reuse}
                    rows.append(row)
                    log(f"{name} d={r['d']} {method} ({ev}): {r['seconds']:.2f} s for {r['queries']:,} queries, "
                        f"test {100 * r['test_acc']:.1f}%")
    for r in rows:
        dz = _demo_row(rows, r)
        r["ratio"] = r["s_per_query"] / dz["s_per_query"] if dz else float("nan")
    return add_macs(rows, log=log)  # after every timing: the replays do not disturb them


def speed_table(rows) -> str:
    head = ("data", "d", "method", "populations", "queries", "train s", "us / query", "x DeepZero's time", "GMAC",
            "x DeepZero's MACs")
    lines = [head] + [(r["data"], f"{r['d']:,}", r["method"], r["eval"] if r["method"] in SPEED_PEERS[:3] else "-",
                       f"{r['queries']:,}", f"{r['seconds']:.2f}", f"{1e6 * r['s_per_query']:.1f}",
                       f"{r['ratio']:.1f}", f"{r['macs'] / 1e9:.2f}" if "macs" in r else "-",
                       f"{r['mac_ratio']:.1f}" if "mac_ratio" in r else "-") for r in rows]
    return _markdown(lines)


#: the DeepZero recipes issue 13's acceptance is judged on: the demo (paper) recipe and
#: ``zo.recipes.short_budget``, zoracle's recipe for budgets of a few queries per weight
RECIPES = ("deepzero", "deepzero-krs", "deepzero-krsf", "deepzero-krsd")  # the demo recipe, short_budget without and
# with the fill (50 a step), and with its defaults


def short_budget_default(method: str, budget: int, setting=None, d: int | None = None):
    """True where ``method`` is what ``zo.recipes.short_budget`` runs by default at ``budget`` queries
    in this study (every block sampled, ZO-GraSP's 386 queries first): ``deepzero-krsd`` (its own
    defaults) always; ``deepzero-krsf`` and ``deepzero-krs`` (50 coordinates and the base point a
    step) where the default is 50 a step (:func:`zoracle.recipes.default_coordinates` of the budget
    and the model's ``d``; below 40 queries per weight), ``deepzero-krsf`` (small blocks filled)
    from ``FILL_FROM_STEPS`` steps on and ``deepzero-krs`` below; and, given the run's ``setting``
    and ``d``, at the default learning rate (:func:`zoracle.recipes.default_lr`; every weight of the
    study's models is sampled). False for the others or another rate, None for any other method."""
    from zoracle._pruning import grasp_queries
    from zoracle.recipes import FILL_FROM_STEPS, default_coordinates, default_lr

    if method not in ("deepzero-krs", "deepzero-krsf", "deepzero-krsd"):
        return None
    if method == "deepzero-krsd":
        ok = True
    else:
        steps = (budget - grasp_queries(192)) // (KEEP_FRESH + 1)
        ok = (method == "deepzero-krsf") == (steps >= FILL_FROM_STEPS)
        if d is not None:
            ok = ok and default_coordinates(budget, d) == KEEP_FRESH
    if setting is None or d is None or "lr" not in setting:
        return ok
    return ok and setting["lr"] == default_lr(budget, d)


def _verdict(recipe: dict, peers: list) -> str:
    """Ahead of every peer by more than the seed spread (its worst seed above every peer seed),
    behind (a peer's worst seed above its best), or level (the ranges overlap)."""
    if recipe["min"] > max(p["max"] for p in peers):
        return "ahead of every peer by more than the spread"
    behind = [_label(p) for p in peers if p["min"] > recipe["max"]]
    if behind:
        return f"behind {', '.join(behind)} by more than the spread"
    return "level: ranges overlap"


def p_text(p: float) -> str:
    """A p-value to two significant digits, or more where two would round one below 0.05 up to
    0.05 (printed beside "p < 0.05")."""
    text, digits = f"{p:.2g}", 2
    while p < 0.05 <= float(text) and digits < 17:  # (0.04996: three digits still read 0.05)
        digits += 1
        text = f"{p:.{digits}g}"
    return text


def rank_test(a, b) -> float:
    """The two-sided Mann-Whitney U test of two sets of seeds' accuracies: exact where the pooled
    seeds split at most 100,000 ways (every split counted, tied accuracies given their mean rank),
    else scipy's normal approximation. (scipy's own choice turns to the approximation at the first
    tie, and a test digit is 0.28 points: three seeds all above three others got p = 0.077, where
    2 of the 20 splits are as uneven and p = 0.1.)"""
    import itertools

    from scipy.stats import mannwhitneyu, rankdata

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.isnan(a).any() or np.isnan(b).any():  # (a method whose every seed failed): no ranks, as scipy's nan
        return float("nan")
    n, total = len(a), len(a) + len(b)
    if math.comb(total, n) > 100_000:
        return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    ranks = rankdata(np.concatenate([a, b]))
    centre = n * (total + 1) / 2  # the rank sum's mean under the null, midranks included
    observed = abs(ranks[:n].sum() - centre)
    sums = np.array([ranks[list(s)].sum() for s in itertools.combinations(range(total), n)])
    return float(np.mean(np.abs(sums - centre) >= observed - 1e-9))


def leads(groups) -> list:
    """Per query, at each data set's largest size: each DeepZero recipe against the best peer.

    ``groups`` are lists of runs (one study each, e.g. ``--report`` files merged). Peers are
    the methods that are not DeepZero variants; the best is the one with the highest mean test
    accuracy over its seeds, and the verdict (:func:`_verdict`) weighs every peer. ``p`` is the
    two-sided Mann-Whitney U test of the recipe's seeds against the best peer's: how often
    test accuracies drawn from one distribution would be ranked as unevenly as these."""
    rows = []
    for runs in groups:
        summary = summarize(runs)
        for data in sorted({r["data"] for r in summary}):
            d = max(r["d"] for r in summary if r["data"] == data)
            for budget in sorted({r["budget"] for r in summary if (r["data"], r["d"]) == (data, d)}):
                here = [r for r in summary if (r["data"], r["d"], r["budget"]) == (data, d, budget)]
                peers = [r for r in here if not r["method"].startswith("deepzero")]
                if not peers:
                    continue
                best = max(peers, key=lambda r: r["mean"])
                for recipe in (r for m in RECIPES for r in here if r["method"] == m):
                    p = rank_test(recipe["test_acc"], best["test_acc"])
                    rows.append({"data": data, "d": d, "budget": budget, "recipe": recipe, "best": best,
                                 "lead": recipe["mean"] - best["mean"], "p": p, "verdict": _verdict(recipe, peers),
                                 "default": short_budget_default(recipe["method"], budget, recipe["setting"], d)})
    return rows


def leads_table(rows) -> str:
    def acc(r):
        return f"{r['mean']:.1f} ({r['min']:.1f}-{r['max']:.1f}, {len(r['test_acc'])} seeds{_failed(r)})"
    head = ("data", "d", "queries", "recipe", "test %", "best peer", "its test %", "lead, points", "rank test p",
            "verdict", "short_budget's default here")
    lines = [head] + [(r["data"], f"{r['d']:,}", f"{r['budget']:,}", _label(r["recipe"]), acc(r["recipe"]),
                       _label(r["best"]), acc(r["best"]), f"{r['lead']:+.1f}", p_text(r['p']), r["verdict"],
                       {None: "-", True: "yes", False: "no"}[r.get("default")])
                      for r in rows]
    return _markdown(lines)


def ratios(rows) -> list:
    """Per second, at every point of ``--speed`` rows: the peer closest to the demo recipe's time
    per query (the smallest ratio; populations batched or plain counted apart), against 10x.
    ``recipe_ratio`` is that peer's time per query over the short-budget recipe's
    (``deepzero-krs``, the recipe that trains at the largest size), ``default_ratio`` the same
    over ``deepzero-krsd``'s (the recipe with its own defaults: 100 coordinates a step from 40
    queries per weight on); NaN where that recipe was not timed."""
    out = []
    for key in sorted({(r["data"], r["d"], r["budget"]) for r in rows}):
        here = [r for r in rows if (r["data"], r["d"], r["budget"]) == key]
        peers = [r for r in here if not r["method"].startswith("deepzero") and r["ratio"] == r["ratio"]]
        demo = next((r for r in here if r["method"] == "deepzero"), None)
        if not peers or demo is None:
            continue
        near = min(peers, key=lambda r: r["ratio"])
        krs, krsd = (next((r for r in here if r["method"] == m), None) for m in (RECIPES[1], RECIPES[3]))
        out.append({"data": key[0], "d": key[1], "budget": key[2], "us": 1e6 * demo["s_per_query"], "peer": near,
                    "ratio": near["ratio"], "peers": len(peers), "met": all(r["ratio"] >= 10 for r in peers),
                    "recipe_ratio": near["s_per_query"] / krs["s_per_query"] if krs else float("nan"),
                    "default_ratio": near["s_per_query"] / krsd["s_per_query"] if krsd else float("nan")})
    return out


def ratios_table(rows) -> str:
    """Markdown of :func:`ratios`; the ``deepzero-krsd`` column only where some point timed it."""
    def x(v):
        return f"{v:.1f}" if v == v else "-"
    krsd = any(r["default_ratio"] == r["default_ratio"] for r in rows)
    head = ("data", "d", "queries", "DeepZero us / query", "closest peer", "x DeepZero's time", "its x MACs",
            "10x ahead of every peer", "closest peer x deepzero-krs's time") + (
            ("closest peer x deepzero-krsd's time",) if krsd else ())
    lines = [head] + [(r["data"], f"{r['d']:,}", f"{r['budget']:,}", f"{r['us']:.1f}",
                       r["peer"]["method"] + (f" ({r['peer']['eval']})" if r["peer"]["method"] in SPEED_PEERS[:2] else ""),
                       f"{r['ratio']:.1f}", f"{r['peer']['mac_ratio']:.1f}" if "mac_ratio" in r["peer"] else "-",
                       f"{'yes' if r['met'] else 'no'} ({r['peers']} peers)", x(r["recipe_ratio"]))
                      + ((x(r["default_ratio"]),) if krsd else ()) for r in rows]
    return _markdown(lines)


def _study(paths) -> str:
    """A study's short name: its first results file without the data set (``long_tuned``)."""
    stem = os.path.splitext(os.path.basename(paths[0]))[0]
    for data in ("digits", "mnist1d"):
        stem = stem.removesuffix(f"_{data}").removesuffix(data)
    return stem.strip("_") or "sweep"


def _in_words(recipe: dict, best: dict, p: float) -> str:
    """Who wins per query, in words: by more than the seed spread, in the rank test only, or neither."""
    if min(len(recipe["test_acc"]), len(best["test_acc"])) < 2:
        return f"{'DeepZero' if recipe['mean'] > best['mean'] else _label(best)} on one seed (no spread)"
    if recipe["min"] > best["max"]:
        return "DeepZero, by more than the spread"
    if best["min"] > recipe["max"]:
        return f"{_label(best)}, by more than the spread"
    if p < 0.05:
        ahead = "DeepZero" if recipe["mean"] > best["mean"] else _label(best)
        return f"{ahead} in the mean (p < 0.05); ranges overlap"
    return "level"


def wins(studies, speed_rows) -> list:
    """Where each method wins, one row per study and point (data, d, queries), every size.

    Per query (``studies``: ``(name, runs)``): the best DeepZero recipe of :data:`RECIPES` and
    the best peer by mean test accuracy, their difference, the two-sided rank test and who wins
    (:func:`_in_words`; the best peer only, where :func:`leads` weighs every peer). Per second
    (``speed_rows``, from ``--speed`` files): the demo recipe against the closest peer
    (:func:`ratios`). A point only timed gets dashes in the per-query half. Where a study mixes
    instruction sets, only the runs of the set with the most seeds are compared, unless that set
    has no recipe or no peer (a study that reruns the recipes against a peer's earlier runs): then
    every set's, each labelled with its set."""
    fast = {(r["data"], r["d"], r["budget"]): r for r in ratios(speed_rows)}
    rows, seen = [], set()
    for name, runs in studies:
        summary = summarize(runs)
        for point in sorted({(r["data"], r["d"], r["budget"]) for r in summary}):
            here = [r for r in summary if (r["data"], r["d"], r["budget"]) == point]
            if any("isa" in r for r in here):  # runs under several instruction sets: the set with the most seeds,
                isa = max({r["isa"] for r in here}, key=lambda i: sum(len(r["test_acc"]) for r in here if r["isa"] == i))
                same = [r for r in here if r["isa"] == isa]
                if any(r["method"] in RECIPES for r in same) and any(not r["method"].startswith("deepzero") for r in same):
                    here = same  # unless it lacks the recipes or the peers: then across sets, each row labelled
            recipes = [r for r in here if r["method"] in RECIPES]
            peers = [r for r in here if not r["method"].startswith("deepzero")]
            if not recipes or not peers:
                continue
            recipe, best = max(recipes, key=lambda r: r["mean"]), max(peers, key=lambda r: r["mean"])
            p = rank_test(recipe["test_acc"], best["test_acc"])
            rows.append({"data": point[0], "d": point[1], "budget": point[2], "study": name, "recipe": recipe,
                         "best": best, "lead": recipe["mean"] - best["mean"], "p": p,
                         "words": _in_words(recipe, best, p), "speed": fast.get(point)})
            seen.add(point)
    rows += [{"data": k[0], "d": k[1], "budget": k[2], "study": "-", "speed": v} for k, v in fast.items() if k not in seen]
    return sorted(rows, key=lambda r: (r["data"], r["d"], r["budget"]))


def wins_table(rows) -> str:
    def acc(r):
        n = len(r["test_acc"])
        return f"{_label(r)} {r['mean']:.1f} ({r['min']:.1f}-{r['max']:.1f}, {n} seed{'s' if n > 1 else ''}{_failed(r)})"

    def fast(s):
        if s is None:
            return "-"
        peer = s["peer"]["method"] + (f" ({s['peer']['eval']})" if s["peer"]["method"] in SPEED_PEERS[:2] else "")
        return f"{s['ratio']:.1f}x faster than {peer}" + ("" if s["met"] else ", under 10x")
    head = ("data", "d", "queries", "study", "per query: DeepZero recipe, test %", "best peer, test %", "points",
            "rank test p", "per query, who wins", "per second: DeepZero's demo recipe")
    lines = [head] + [(r["data"], f"{r['d']:,}", f"{r['budget']:,}", r["study"],
                       *((acc(r["recipe"]), acc(r["best"]), f"{r['lead']:+.1f}", p_text(r['p']), r["words"])
                         if "recipe" in r else ("-",) * 5), fast(r["speed"])) for r in rows]
    return _markdown(lines)


def wins_plot(rows, path) -> None:
    """Every seed's test accuracy of each :func:`wins` row's DeepZero recipe and best peer, side by
    side, one panel per data set: where the two sets of dots do not overlap, one method wins by
    more than the seed spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "recipe" in r]
    datas = sorted({r["data"] for r in rows})
    fig, axes = plt.subplots(len(datas), 1, figsize=(11, 3.4 * len(datas)), squeeze=False)
    for data, (ax,) in zip(datas, axes):
        here = [r for r in rows if r["data"] == data]
        for i, r in enumerate(here):
            for side, (who, color) in enumerate(((r["recipe"], "tab:blue"), (r["best"], "tab:orange"))):
                acc = np.asarray(who["test_acc"])
                x = i + (side - 0.5) * 0.3 + np.linspace(-0.06, 0.06, len(acc))
                ax.scatter(x, acc, s=14, color=color, label=("DeepZero recipe", "best peer")[side] if i == 0 else None)
                ax.text(i + (side - 0.5) * 0.3, acc.max() + 1, _label(who).replace(" [", "\n["), ha="center",
                        va="bottom", fontsize=6)
        ax.set_xticks(range(len(here)), [f"d = {r['d']:,}\n{r['budget']:,} q\n{r['study']}" for r in here], fontsize=7)
        ax.set(ylabel="test accuracy (%), every seed", title=f"{data}: where each method wins per query")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ints(s):
    return [int(v) for v in str(s).split(",") if v.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one small point: digits, width 0 (d = 1,898), 30,000 queries, 1 seed")
    p.add_argument("--data", default="digits", help="comma-separated: digits, mnist1d (default digits)")
    p.add_argument("--widths", default="0", help="hidden units (digits: 0, 160, 1600 -> d = 1,898 / 13,258 / 121,258; mnist1d: 16, 128, 1200)")
    p.add_argument("--budget", type=int, default=60_000, help="loss queries per run (default 60,000)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; the first tunes (default 0)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"subset of {', '.join(METHODS)}")
    p.add_argument("--grid", type=int, default=0, help="use only the first N grid settings (default all 3)")
    p.add_argument("--tune-widths", default="", help="run the grid only at these widths; larger ones reuse the "
                   "setting tuned at the nearest smaller one (default: grid everywhere)")
    p.add_argument("--settings-from", default="", metavar="JSON", help="run every seed with the setting chosen "
                   "in these --out files (comma-separated) instead of tuning: new seeds of a finished sweep")
    p.add_argument("--setting", default=None, metavar="JSON", help="run every seed with this setting (a JSON "
                   "object, e.g. '{\"lr\": 0.07642}') instead of tuning")
    p.add_argument("--reuse", default="", metavar="JSON", help="comma-separated files whose runs of this sweep's "
                   "points (data, width, method, budget) count as done and are copied into --out: tuning at a budget "
                   "that --settings-from runs reached counts those runs as grid points at the tuning seed")
    p.add_argument("--settings-budget", type=int, default=None, metavar="N", help="with --settings-from or --speed: the "
                   "settings chosen at budget N (default --budget), e.g. 30000's choices for a longer run")
    p.add_argument("--start", type=int, default=None, metavar="SEED", help="with --settings-from: every seed starts "
                   "from this seed's weights and train / validation split; only the run's own randomness (minibatch "
                   "order, samples, coordinates) follows --seeds")
    p.add_argument("--batch-order", type=int, default=None, metavar="SEED", help="with --settings-from: every seed "
                   "draws its minibatches in this seed's order")
    p.add_argument("--rng", type=int, default=None, metavar="SEED", help="with --settings-from: every seed's method "
                   "draws its own random numbers (samples, coordinates, directions) from this seed; what the seed "
                   "still sets is the start (unless --start) and the minibatch order (unless --batch-order)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="the float the black box "
                   "computes in (default float32, as in every study; float64 converts the same start)")
    p.add_argument("--out", default=None, help="JSON file of all runs, appended after each run; reruns skip done runs")
    p.add_argument("--report", default=None, metavar="JSON", help="only print the table of existing --out files (comma-separated)")
    p.add_argument("--plot", default=None, metavar="PNG", help="save accuracy vs queries / vs seconds (with --wins: "
                   "every seed of each recipe and best peer)")
    p.add_argument("--every-setting", action="store_true", help="a row for every setting a method ran (a study of "
                   "settings, each run with --setting), not only the chosen one")
    p.add_argument("--json", action="store_true", help="print the summary rows as JSON instead of the table")
    p.add_argument("--speed", default=None, metavar="JSON", help="speed table: every method once per point in this "
                   "process (settings tuned in these comma-separated result files)")
    p.add_argument("--macs", default=None, metavar="JSON", help="add the multiply-add counts to an existing --speed "
                   "file (rewritten in place) and print its table")
    p.add_argument("--leads", default=None, metavar="FILES", help="per query, at the largest size: each DeepZero "
                   "recipe against the best peer; comma-separated studies, each one or more files joined by '+' "
                   "(FILE@m1/m2: only those methods' runs of FILE)")
    p.add_argument("--ratios", default=None, metavar="JSON", help="per second: the peer closest to DeepZero's time per "
                   "query at every point of these --speed files (comma-separated)")
    p.add_argument("--wins", default=None, metavar="FILES", help="where each method wins, at every size: per query "
                   "from these studies (as --leads), per second from the --ratios files")
    args = p.parse_args(argv)
    from zoracle.cli import _writable

    for flag, path in (("--out", args.out), ("--plot", args.plot)):  # before the runs, not after them
        why = _writable(path, "file") if path is not None else None
        if why:
            p.error(f"{flag} {path}: cannot write there ({why})")
    if args.threads < 1 or args.grid < 0:
        p.error(f"--threads must be >= 1 and --grid >= 0, got {args.threads} and {args.grid}")
    for flag in ("seeds", "widths", "tune_widths"):
        try:
            values = _ints(getattr(args, flag))
        except ValueError:
            p.error(f"--{flag.replace('_', '-')} takes comma-separated integers, got {getattr(args, flag)!r}")
        if any(v < 0 for v in values):
            p.error(f"--{flag.replace('_', '-')} must be 0 or more, got {getattr(args, flag)!r}")

    def check_files(flags, hint, required):
        """Each of ``flags`` (name, value) names existing results files; ``required`` ones must be given."""
        for flag, value in flags:
            missing = [f for f in (value or "").replace("+", ",").split(",")
                       if f and not os.path.isfile(_file_and_methods(f)[0])]
            if (value is not None or required) and (missing or not (value or "").strip(",+")):
                p.error(f"{flag}: no such results file: {', '.join(missing)}" if missing else
                        f"{flag}: name the results files ({hint})")

    def rows_of(files):
        return [r for path in files.split(",") if path for r in _load(path)]

    def one_dtype(flag, groups):
        """A study row (--leads, --wins) averaging a float32 and a float64 black box's seeds: refused, as --report."""
        for g in groups:
            if len({r.get("dtype", "float32") for r in _merged(g.split("+"))}) > 1:
                p.error(f"{flag} got runs of float32 and float64 black boxes in one study ({g}): give each dtype's "
                        "files a study of their own")

    if args.wins is not None:
        check_files((("--wins", args.wins), ("--ratios", args.ratios)), "--wins needs --ratios: the per-second half",
                    True)
        one_dtype("--wins", [g for g in args.wins.split(",") if g])
        studies = [(_study(g.split("+")), _merged(g.split("+"))) for g in args.wins.split(",") if g]
        rows = wins(studies, rows_of(args.ratios))
        if args.plot:
            wins_plot(rows, args.plot)
        print(wins_table(rows))
        return 0
    if args.leads is not None or args.ratios is not None:
        check_files((("--leads", args.leads), ("--ratios", args.ratios)),
                    "comma-separated; with --leads, files of one study joined by '+'", False)
        if args.leads:
            one_dtype("--leads", [g for g in args.leads.split(",") if g])
            print(leads_table(leads([_merged(g.split("+")) for g in args.leads.split(",") if g])))
        if args.ratios:
            print(ratios_table(ratios(rows_of(args.ratios))))
        return 0
    if args.macs is not None:
        import torch

        torch.set_num_threads(args.threads)  # the replays follow the timed runs' arithmetic (one thread)
        rows = add_macs(_load(args.macs), log=lambda m: print(m, file=sys.stderr, flush=True))
        _save(args.macs, rows)
        print(json.dumps(rows) if args.json else speed_table(rows))
        return 0
    if args.speed is not None:
        args.data = [s.strip() for s in args.data.split(",") if s.strip()]
        args.widths = _ints(args.widths)
        args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if any(m not in METHODS for m in args.methods) or "deepzero" not in args.methods:
            p.error("--speed needs --methods from the known ones, deepzero included")
        rows = speed(args, log=lambda m: print(m, file=sys.stderr, flush=True))
        if args.out:
            _save(args.out, rows)
        print(json.dumps(rows) if args.json else speed_table(rows))
        return 0
    if args.report:  # several files (parallel sweeps) merge; a run present twice counts once
        check_files((("--report", args.report),), "comma-separated", True)
        raw = rows_of(args.report)
        if not raw or any("seed" not in r for r in raw):
            p.error(f"--report: {args.report} holds no accuracy runs of this study (a --speed file goes to --ratios; "
                    "FILE@m1/m2 keeps only those methods' runs)")
        runs = _merged(args.report.split(","))
        if len({r.get("dtype", "float32") for r in runs}) > 1:  # a row would average the two black boxes' runs
            p.error("--report got runs of float32 and float64 black boxes: report each dtype's files on their own")
    else:
        if args.quick:
            args.data, args.widths, args.budget, args.seeds = "digits", "0", 30_000, "0"
        args.data = [s.strip() for s in args.data.split(",") if s.strip()]
        args.widths, args.seeds, args.tune_widths = _ints(args.widths), _ints(args.seeds), _ints(args.tune_widths)
        args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        bad = [m for m in args.methods if m not in METHODS] + [x for x in args.data if x not in ("digits", "mnist1d")]
        if bad or not args.seeds or not args.widths or args.budget < 1:
            p.error(f"unknown or empty choice: {bad or 'seeds/widths/budget'}")
        if args.setting is not None:
            try:
                args.setting = json.loads(args.setting)
            except ValueError as e:
                p.error(f"--setting must be a JSON object such as '{{\"lr\": 0.1}}': {e}")
            if not isinstance(args.setting, dict) or args.settings_from:
                p.error("--setting takes a JSON object, and not with --settings-from (which chooses the setting)")
            import inspect

            for method in args.methods:  # before the first run, not at the method that takes no such key
                takes = inspect.signature(RUNNERS[method]).parameters
                unknown = [k for k in args.setting if k not in takes or k == "bench"]
                if unknown and not any(v.kind is v.VAR_KEYWORD for v in takes.values()):
                    p.error(f"--setting: {method} takes no {', '.join(map(repr, unknown))} (its settings: "
                            f"{', '.join(k for k in takes if k != 'bench')})")
        if args.dtype != "float32" and not args.settings_from and args.setting is None:
            p.error("--dtype float64 needs --settings-from or --setting: it runs settings chosen on the float32 black "
                    "box, it does not tune (a tuning would mix the two dtypes' runs)")
        for flag, value in (("--start", args.start), ("--batch-order", args.batch_order), ("--rng", args.rng)):
            if value is not None and not args.settings_from and args.setting is None:
                p.error(f"{flag} needs --settings-from or --setting: a run with a part of its randomness fixed runs the settings "
                        "already chosen, it does not tune")
        runs = sweep(args, log=lambda m: print(m, file=sys.stderr, flush=True))
    rows = summarize(runs, every_setting=args.every_setting)
    if args.plot:
        plot(runs, args.plot)
    print(json.dumps(rows) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
