"""The peers study's black box and methods (``benchmarks/peers.py``): the methods and their
tuning grid, the data sets and models, the :class:`Bench` (one oracle, the minibatch stream, the
query and time ledger) and the runners, one per method."""

from __future__ import annotations

import math
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

#: the peers timed by ``--speed`` (SNES and PGPE both through ``TorchOracle.batch`` and one plain call a candidate)
SPEED_PEERS = ("snes", "pgpe", "sepcma", "fdsgd")
