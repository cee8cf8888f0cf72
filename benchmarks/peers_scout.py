"""Variants of the short-budget DeepZero recipe at the peers study's largest size.

Each variant starts from ``zo.recipes.short_budget`` (``deepzero-krs`` in ``peers.py``: ZO-GraSP
layer ratios, 50 coordinates a step, a fresh mask every step, Adam with ``b1=0``, lr 0.1) and
changes one thing: where the 50 coordinates go (or how many a step), how often a weight can be drawn (or in which order), whether
draws follow the partial derivatives measured so far, the optimizer, each layer's step size, CGE's ``mu``,
the estimator of the wide layers, the learning rate's decay, which weights are evaluated (a moving
average of the run's), how ZO-GraSP's split treats small blocks (``--splits`` prints that split per
seed), or whether ZO-GraSP scores again during the run. Every run goes through the
same black box, minibatch stream and 30,000-query budget as ``peers.py``; accuracies are
validation (the choice) and test (reported).

    python benchmarks/peers_scout.py --data digits --width 1600 --seeds 0,1,2 --out scout_digits.json
    python benchmarks/peers_scout.py --data mnist1d --width 1200 --seeds 0,1,2 --out scout_mnist1d.json
    python benchmarks/peers_scout.py --report scout_digits.json,scout_mnist1d.json

The block names (``0.weight`` ... ``8.bias``) are those of ``peers.make_model``: the first
and second convolutions (0, 2), the wide hidden layer (6) and the classifier (8).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402

CONVS = ("0.weight", "0.bias", "2.weight", "2.bias")
WITH_CLASSIFIER = {"0.weight": 7, "0.bias": 1, "6.weight": 34, "8.weight": 8}  # conv1-hidden, 8 moved to the classifier

# name -> (what it changes, options of run_variant)
#: digits seed 0's ZO-GraSP split of the recipe's 50 coordinates (docs/peers-study.md, "Why a seed fails")
SPLIT_0 = {"0.weight": 8, "0.bias": 2, "6.weight": 40}

VARIANTS = {
    "recipe": ("`zo.recipes.short_budget` as in the study (lr 0.1)", {}),
    "uniform-ratios": ("uniform layer ratios instead of ZO-GraSP's", {"ratios": "uniform"}),
    "classifier-only": ("all 50 coordinates on the classifier (45 weights, 5 biases)",
                        {"counts": {"8.weight": 45, "8.bias": 5}}),
    "conv1-hidden": ("ZO-GraSP's typical split without ZO-GraSP: 8 on the first conv, 42 on the hidden layer",
                     {"counts": {"0.weight": 7, "0.bias": 1, "6.weight": 42}}),
    "conv1-hidden-classifier": ("`conv1-hidden` with 8 of the hidden layer's 42 on the classifier instead, which "
                                "ZO-GraSP leaves untrained on digits", {"counts": WITH_CLASSIFIER}),
    "conv1-hidden-classifier-steps": ("the same with `layer-steps`' step sizes",
                                      {"counts": WITH_CLASSIFIER, "layer_scale": {}}),
    "convs-only": ("all 50 on the two convolutions", {"counts": {"0.weight": 20, "0.bias": 4, "2.weight": 20, "2.bias": 6}}),
    "every-layer": ("some in every layer (12 / 13 / 15 / 10)",
                    {"counts": {"0.weight": 10, "0.bias": 2, "2.weight": 10, "2.bias": 3, "6.weight": 15, "8.weight": 10}}),
    "pool-20": ("draw each step's coordinates from a fixed pool of 20x a step's (each pool weight ~29 times)", {"pool": 20}),
    "pool-80": ("the same with a pool of 80x a step's (~7 times)", {"pool": 80}),
    "mu-0.05": ("CGE mu 0.05 instead of 5e-3", {"mu": 0.05}),
    "mu-0.5": ("CGE mu 0.5: differences over about the step length", {"mu": 0.5}),
    "sign-0.3": ("sign-SGD lr 0.3, no weight decay", {"optimizer": "sign", "lr": 0.3, "weight_decay": 0.0}),
    "sign-1": ("sign-SGD lr 1.0, no weight decay", {"optimizer": "sign", "lr": 1.0, "weight_decay": 0.0}),
    "sign-1-wd": ("sign-SGD lr 1.0 with coupled weight decay 5e-4", {"optimizer": "sign", "lr": 1.0}),
    "sgd-1": ("plain SGD lr 1.0", {"optimizer": "sgd", "lr": 1.0}),
    "sgd-10": ("plain SGD lr 10", {"optimizer": "sgd", "lr": 10.0}),
    "importance": ("draw each layer's coordinates in proportion to row x column mean absolute partial measured so far "
                   "(80%), uniformly (20%)", {"importance": {"eps": 0.2}}),
    "importance-half": ("the same, half importance, half uniform", {"importance": {"eps": 0.5}}),
    "importance-mild": ("the same (80 / 20), with the importance raised to the power 0.3",
                        {"importance": {"eps": 0.2, "power": 0.3}}),
    "coords-100": ("100 coordinates a step instead of 50 (half as many steps)", {"coordinates": 100}),
    "coords-200": ("200 coordinates a step (a quarter as many steps)", {"coordinates": 200}),
    "coords-25": ("25 coordinates a step (twice as many steps)", {"coordinates": 25}),
    "coords-12": ("12 coordinates a step (four times as many steps)", {"coordinates": 12}),
    "layer-steps": ("each layer's step times the square root of its initial weight RMS over the largest layer RMS "
                    "(digits: first conv 1, second conv and hidden 0.6, classifier 0.28)", {"layer_scale": {}}),
    "layer-steps-1": ("the same without the square root (digits: 1 / 0.37 / 0.38 / 0.08)",
                      {"layer_scale": {"power": 1.0}}),
    "classifier-step": ("only the classifier's step scaled as in `layer-steps` (digits 0.28, MNIST-1D 0.25)",
                        {"layer_scale": {"layers": "last"}}),
    "layer-steps-wide": ("as `layer-steps`, relative to the layer with the most weights (the hidden layer keeps "
                         "its step, the convolutions' grow: digits 1.6 / 0.98)", {"layer_scale": {"ref": "widest"}}),
    "layer-steps-b1": ("`layer-steps` with Adam's momentum (b1 = 0.9, as `deepzero-kas`)",
                       {"layer_scale": {}, "b1": 0.9}),
    "cycle": ("each layer's coordinates drawn without replacement: every weight measured once before any twice "
              "(a fresh draw each step leaves e^-k of a layer unmeasured after k draws a weight)", {"cycle": True}),
    "cycle-layer-steps": ("`cycle` and `layer-steps`", {"cycle": True, "layer_scale": {}}),
    "cycle-layer-steps-b1": ("`cycle` and `layer-steps-b1`", {"cycle": True, "layer_scale": {}, "b1": 0.9}),
    "average-0.03": ("the recipe's run, evaluated at an exponential moving average of its weights (time constant 3% "
                     "of the budget; the run itself is unchanged)", {"average": 0.03}),
    "average-0.1": ("the same with a time constant of 10% of the budget", {"average": 0.1}),
    "linear": ("lr decays linearly to 0 after the warm-up instead of along a cosine", {"schedule": ("linear", 0.0)}),
    "sqrt-decay": ("lr decays to 0 after the warm-up as the square root of the steps left (more of it late than "
                   "`linear`)", {"schedule": ("power", 0.5)}),
    "quadratic-decay": ("lr decays to 0 after the warm-up as the square of the steps left (less of it late than "
                        "`linear`)", {"schedule": ("power", 2.0)}),
    "wsd-0.2": ("lr held at its peak after the warm-up, then decayed linearly to 0 over the last 20% of the steps",
                {"schedule": ("linear", 0.8)}),
    "floor-small": ("ZO-GraSP's split, but every block of at most 50 weights that it leaves empty gets one coordinate "
                    "a step, taken from the block with the most (`short_budget(fill_small_blocks=True)`)",
                    {"fill_small_blocks": True}),
    "floor-hidden": ("`floor-small` without the last block (the classifier's bias): every other block of at most 50 "
                     "weights that ZO-GraSP leaves empty gets one coordinate a step", {"fill_small_blocks": "hidden"}),
    "grasp-768": ("ZO-GraSP with 768 directions instead of 192 (1,538 queries instead of 386)", {"grasp_directions": 768}),
    "floor-small-768": ("`floor-small` and `grasp-768` together", {"fill_small_blocks": True, "grasp_directions": 768}),
    "floor-small-b1": ("`floor-small` with Adam's momentum (b1 = 0.9)", {"fill_small_blocks": True, "b1": 0.9}),
    "uniform-b1": ("`uniform-ratios` with Adam's momentum (b1 = 0.9)", {"ratios": "uniform", "b1": 0.9}),
    "floor-small-100": ("`floor-small` with 100 coordinates a step (half as many steps)",
                        {"fill_small_blocks": True, "coordinates": 100}),
    "floor-small-200": ("`floor-small` with 200 coordinates a step (a quarter as many steps)",
                        {"fill_small_blocks": True, "coordinates": 200}),
    "floor-small-400": ("`floor-small` with 400 coordinates a step (an eighth as many steps)",
                        {"fill_small_blocks": True, "coordinates": 400}),
    "layer-steps-fill": ("`layer-steps` and `floor-small` together (`short_budget(layer_steps=0.5, fill_small_blocks=True)`)",
                         {"layer_scale": {}, "fill_small_blocks": True}),
    "split-9": ("MNIST-1D seed 9's ZO-GraSP split at every seed: 3 / 0 / 12 / 1 on the convolutions, 34 hidden",
                {"counts": {"0.weight": 3, "2.weight": 12, "2.bias": 1, "6.weight": 34}}),
    "split-9+bias": ("`split-9` with one of conv2's coordinates on conv1's bias",
                     {"counts": {"0.weight": 3, "0.bias": 1, "2.weight": 11, "2.bias": 1, "6.weight": 34}}),
    "split-10": ("MNIST-1D seed 10's split at every seed: 6 / 1 / 9 / 0 on the convolutions, 34 hidden",
                 {"counts": {"0.weight": 6, "0.bias": 1, "2.weight": 9, "6.weight": 34}}),
    "split-10-bias": ("`split-10` with conv1's bias coordinate moved to conv2's bias",
                      {"counts": {"0.weight": 6, "2.weight": 9, "2.bias": 1, "6.weight": 34}}),
    "layer-norm-0.3": ("Adam without momentum with one second moment per block instead of per weight: a measured "
                       "weight moves in proportion to its partial over the block's RMS partial (lr 0.3)",
                       {"optimizer": "layer-normalized", "lr": 0.3}),
    "layer-norm-1": ("the same at lr 1", {"optimizer": "layer-normalized", "lr": 1.0}),
    "layer-norm-0.1": ("the same at lr 0.1", {"optimizer": "layer-normalized", "lr": 0.1}),
    "layer-norm-0.03": ("the same at lr 0.03", {"optimizer": "layer-normalized", "lr": 0.03}),
    "start-0": ("the recipe from seed 0's start at every seed (its weights and its train / validation split): "
                "ZO-GraSP's directions, the minibatch order and the coordinates drawn change with the seed",
                {"start": 0}),
    "split-0": ("digits seed 0's ZO-GraSP split at every seed: 8 / 2 / 0 / 0 on the convolutions, 40 hidden",
                {"counts": SPLIT_0}),
    "split-0-start-0": ("`split-0` from seed 0's start at every seed (its weights and its train / validation split): "
                        "only the minibatch order and the coordinates drawn change with the seed",
                        {"counts": SPLIT_0, "start": 0}),
    "split-0-coords": ("`split-0-start-0` with seed 0's minibatch order too: only the coordinates drawn change",
                       {"counts": SPLIT_0, "start": 0, "batch_seed": 0}),
    "split-0-batches": ("`split-0-start-0` with seed 0's coordinate draws too: only the minibatch order changes",
                        {"counts": SPLIT_0, "start": 0, "rng": 0}),
    "cge-convs+es": ("hybrid: CGE on 50 conv weights + OpenAI-ES (50 pairs, sigma 0.02, Adam 0.03) on the rest",
                     {"hybrid": True}),
    "regrasp-4": ("ZO-GraSP scored again at the current weights (on a fresh batch of 25 a class) after a quarter, half "
                  "and three quarters of the steps; its new split replaces the old (3 x 386 more queries, fewer steps)",
                  {"regrasp": 4}),
    "regrasp-10": ("the same, nine times (every tenth of the steps)", {"regrasp": 10}),
}


def _with_dense(masks, parts):
    """The sorted coordinate set of per-block draws ``parts`` and every dense block of ``masks``."""
    return np.sort(np.concatenate(parts + [np.arange(b.start, b.stop) for b in masks.dense]))


@contextlib.contextmanager
def _masks_drawn_by(coordinates):
    """``DynamicMasks.coordinates`` replaced by ``coordinates(self, epoch, step)`` inside the block."""
    import zoracle._masks as masks

    original = masks.DynamicMasks.coordinates
    masks.DynamicMasks.coordinates = coordinates
    try:
        yield
    finally:
        masks.DynamicMasks.coordinates = original


@contextlib.contextmanager
def _fill_all_but_last():
    """``fill_small_blocks`` that leaves the last block (the classifier's bias) as ZO-GraSP ranked it
    (scouting only): every other small empty block is filled as ``zoracle._pruning.fill_small_blocks``
    fills it, from the block with the most."""
    import zoracle._pruning as pruning

    original = pruning.fill_small_blocks

    def fill(counts, sizes):
        counts, sizes = np.asarray(counts, dtype=np.int64), np.asarray(sizes, dtype=np.int64)
        held = sizes.copy()
        held[-1] = counts.sum() + 1  # too large to fill
        return original(counts, held)

    pruning.fill_small_blocks = fill
    try:
        yield
    finally:
        pruning.fill_small_blocks = original


def _pooled_masks(pool: int, seed: int):
    """Per-step masks drawn from a fixed pool of ``pool`` x each block's per-step count (scouting only)."""
    pools = {}

    def coordinates(self, epoch, step=None):
        counts = self.counts
        if "p" not in pools:
            r = np.random.default_rng([seed, 77])
            pools["p"] = [np.sort(r.choice(np.arange(b.start, b.stop), size=min(b.stop - b.start, int(c) * pool),
                                           replace=False)) for b, c in zip(self.blocks, counts)]
        r = np.random.default_rng([seed, 78, int(step)])
        parts = [p[r.choice(len(p), size=int(c), replace=False)] for p, c in zip(pools["p"], counts) if c]
        return _with_dense(self, parts)

    return _masks_drawn_by(coordinates)


def _cycled_masks(seed: int):
    """Per-step masks that walk each block through random orders without replacement (scouting only).

    Block ``l`` takes its ``c`` coordinates a step from the front of a queue of random
    permutations of its weights (from ``(seed, 93, l, cycle)``), one cycle after another. When
    fewer than ``c`` are left, the next permutation is appended with the weights still queued
    moved to its end, so that no step draws a weight twice. Every weight is drawn once a cycle:
    at any step the draw counts of a block's weights differ by at most one.
    """
    state = {"queues": None, "cycles": None, "memo": (None, None)}

    def coordinates(self, epoch, step=None):
        step = int(step)
        if state["memo"][0] == step:  # asked twice for one step
            return state["memo"][1]
        if state["queues"] is None:
            state["queues"] = [np.empty(0, np.int64) for _ in self.blocks]
            state["cycles"] = [0] * len(self.blocks)
        parts = []
        for l, (b, c) in enumerate(zip(self.blocks, (int(c) for c in self.counts))):
            if not c:
                continue
            q = state["queues"][l]
            if q.size < c:
                state["cycles"][l] += 1
                order = b.start + np.random.default_rng([seed, 93, l, state["cycles"][l]]).permutation(b.stop - b.start)
                late = np.isin(order, q)  # drawn this step to end the last cycle: last in the new one
                q = np.concatenate([q, order[~late], order[late]])
            parts.append(q[:c])
            state["queues"][l] = q[c:]
        out = _with_dense(self, parts)
        state["memo"] = (step, out)
        return out

    return _masks_drawn_by(coordinates)


class _Importance:
    """Row x column importance of each scored block from the partial derivatives measured so far.

    A block of shape ``(rows, *rest)`` is a ``rows x prod(rest)`` matrix (a bias is one column).
    After each step, the ``|partial|`` of every measured weight is added to its row's and its
    column's sums. The next draw takes a weight with probability ``(1 - eps) q + eps / n`` with
    ``q`` proportional to ``(row mean x column mean) ** power``; each mean is shrunk towards the
    block's mean by ``prior`` pseudo-measurements, so unmeasured rows and columns count as average,
    and a row whose measurements were all 0 (a ReLU unit dead on those batches) is drawn less.
    """

    def __init__(self, info, blocks, eps=0.2, power=1.0, prior=1.0):
        by_start = {i.slice.start: tuple(i.shape) for i in info}
        self.blocks, self.eps, self.power, self.prior = list(blocks), float(eps), float(power), float(prior)
        self.shapes = [(s[0], int(np.prod(s[1:])) if len(s) > 1 else 1) for s in (by_start[b.start] for b in self.blocks)]
        self.sums = [[np.zeros(r), np.zeros(r), np.zeros(c), np.zeros(c)] for r, c in self.shapes]  # row sum, n, col sum, n
        self.total = np.zeros((len(self.blocks), 2))  # |partial| sum, n

    def probs(self, l):
        """Draw probabilities over block ``l``'s weights (None: uniform, nothing measured yet)."""
        s, n = self.total[l]
        if n == 0 or s <= 0:
            return None
        m, a = s / n, self.prior
        rs, rn, cs, cn = self.sums[l]
        q = np.outer((rs + a * m) / (rn + a), (cs + a * m) / (cn + a)).ravel() ** self.power
        return (1 - self.eps) * q / q.sum() + self.eps / q.size

    def observe(self, coords, grad):
        for l, b in enumerate(self.blocks):
            sel = coords[(coords >= b.start) & (coords < b.stop)]
            if sel.size:
                g = np.abs(np.asarray(grad[sel], dtype=np.float64))
                row, col = np.divmod(sel - b.start, self.shapes[l][1])
                rs, rn, cs, cn = self.sums[l]
                np.add.at(rs, row, g), np.add.at(rn, row, 1), np.add.at(cs, col, g), np.add.at(cn, col, 1)
                self.total[l] += (g.sum(), g.size)


@contextlib.contextmanager
def _importance_masks(bench, eps=0.2, power=1.0, prior=1.0):
    """Per-step masks drawn by :class:`_Importance` (scouting only). Yields ``observe(grad)``, which
    the optimizer calls with each step's estimate (the partials of the coordinates just drawn)."""
    state = {}

    def coordinates(self, epoch, step=None):
        imp = state.setdefault("imp", _Importance(bench.oracle.param_info, self.blocks, eps, power, prior))
        r = np.random.default_rng([bench.rng_seed, 91, int(step)])
        parts = [b.start + r.choice(b.stop - b.start, size=int(k), replace=False, p=imp.probs(l))
                 for l, (b, k) in enumerate(zip(self.blocks, self.counts)) if k]
        state["coords"] = _with_dense(self, parts)
        return state["coords"]

    def observe(grad):
        if "coords" in state:
            state["imp"].observe(state["coords"], grad)

    with _masks_drawn_by(coordinates):
        yield observe


def _regrasp(bench, parts: int, steps: int, sparsity: float, mu: float, directions: int, fill_small: bool,
             spent: int):
    """``(callback, context)``: ZO-GraSP scored again at ``parts - 1`` evenly spaced steps, at the
    weights reached, on a fresh batch of 25 samples a class; the new split replaces the one the
    per-step masks draw from. The callback is ``peers.step_recorder``'s, with each new ZO-GraSP's
    queries added to the next step's (scouting only)."""
    import dataclasses

    import zoracle as zo
    from zoracle._masks import DynamicMasks
    from zoracle._pruning import grasp_queries
    from zoracle.apps._digits import per_class

    draw, record = DynamicMasks.coordinates, peers.step_recorder(bench, spent)
    holder, pending, done = {}, [0], [0]
    at = {int(round(j * steps / parts)): j for j in range(1, parts)}
    d = bench.data

    def coordinates(self, epoch, step=None):  # train's masks, or the same masks with the latest split
        masks = holder.setdefault("masks", self)
        return draw(holder.get("now", masks), epoch, step)

    def cb(event, rec, params):
        if event != "step":
            return None
        stop = record(event, {**rec, "nfev": rec["nfev"] + pending[0]}, params)
        pending[0], done[0] = 0, done[0] + 1
        j = at.get(done[0])
        if j is not None and not stop:
            masks = holder["masks"]
            batch = per_class(d["x"], d["y"], 25, seed=1000 * (bench.seed + 1) + j)
            scores = zo.zo_grasp(bench.oracle, params, blocks=masks.blocks, mu=mu, directions=directions,
                                 rng=np.random.default_rng([bench.rng_seed, 2, j]), batch=batch)
            holder["now"] = dataclasses.replace(
                masks, ratios=zo.layer_ratios(scores, masks.blocks, sparsity, fill_small=fill_small))
            pending[0] = grasp_queries(directions)
        return stop

    return cb, _masks_drawn_by(coordinates)


def _hybrid(bench, lr=0.1, kc=50, pairs=50, sigma=0.02, lr_es=0.03):
    """CGE on ``kc`` random conv weights (Adam b1=0) and antithetic rank-shaped ES on every other weight, each step."""
    import zoracle as zo
    from zoracle._estimators import centered_ranks

    conv = np.zeros(bench.d, bool)
    for info in bench.oracle.param_info:
        conv[info.slice] |= info.name in CONVS
    cidx, didx = np.flatnonzero(conv), np.flatnonzero(~conv)
    steps = bench.budget // (kc + 1 + 2 * pairs)
    oc = zo.adam(zo.cosine_schedule(lr, total_steps=steps, warmup_steps=min(len(bench.batches), steps - 1)), b1=0.0,
                 weight_decay=5e-4)
    oe = zo.adam(zo.cosine_schedule(lr_es, total_steps=steps))
    p = bench.p0.copy()
    sc, se = oc.init(p), oe.init(p)
    rng = np.random.default_rng(bench.rng_seed)
    used = 0
    for _ in range(steps):
        f = bench.oracle.bind(bench.next_batch())
        est = zo.estimate_gradient(f, p, zo.CGE(mu=5e-3), coordinates=np.sort(rng.choice(cidx, kc, replace=False)))
        p, sc = oc.update(est.grad, sc, p)
        u = rng.standard_normal((pairs, didx.size)).astype(np.float32)
        P = np.repeat(p[None], 2 * pairs, 0)
        P[:pairs, didx] += sigma * u
        P[pairs:, didx] -= sigma * u
        w = centered_ranks(f.batch(P))
        g = np.zeros_like(p)
        g[didx] = (w[:pairs] - w[pairs:]) @ u / (2 * pairs * sigma)
        p, se = oe.update(g, se, p)
        used += est.nfev + 2 * pairs
        bench.record(p, used)
    return p


class _Decay:
    """``peak`` until step ``start``, then down to 0 at ``total_steps`` as ``(1 - x) ** power`` (``x`` from 0 to 1)."""

    def __init__(self, peak: float, start: int, total_steps: int, power: float):
        self.peak, self.start, self.total_steps, self.power = peak, start, total_steps, power

    def __repr__(self) -> str:
        return f"decay(peak={self.peak}, start={self.start}, total_steps={self.total_steps}, power={self.power})"

    def __call__(self, step: int) -> float:
        if step < self.start:
            return self.peak
        return self.peak * max(0.0, 1.0 - (step - self.start) / max(1, self.total_steps - self.start)) ** self.power


def _layer_normalized(schedule, slices, weight_decay: float = 5e-4, b2: float = 0.999, eps: float = 1e-8):
    """Adam without momentum, but with one second moment per block (the mean square of the
    block's nonzero partials each step) instead of one per weight: a measured weight moves by
    ``lr * g / rms(block)``, in proportion to its partial, where the recipe's per-weight Adam
    moves every newly measured weight by the same ``lr * sqrt((1 - b2**t) / (1 - b2))``
    whatever its partial (decoupled weight decay, as the recipe's). Scouting only."""
    from zoracle._optim import AdamState, Optimizer, _lr_at, as_schedule

    schedule = as_schedule(schedule, "lr")

    def init(params):
        return AdamState(0, np.zeros(0), np.zeros(len(slices)))

    def update(grad, state, params, lr=None):
        step = _lr_at(schedule, state.count, lr)
        t = state.count + 1
        nu, d = state.nu * b2, np.zeros_like(params)
        for k, sl in enumerate(slices):
            g = grad[sl]
            measured = g[g != 0]
            if measured.size:
                nu[k] += (1 - b2) * float(np.mean(measured.astype(np.float64) ** 2))
            if nu[k] > 0:
                d[sl] = g / (np.sqrt(nu[k] / (1 - b2 ** t)) + eps)
        new = (params - step * (d + weight_decay * params)).astype(params.dtype, copy=False)
        return new, AdamState(t, state.mu, nu)

    return Optimizer(init, update, schedule, "layer-normalized",
                     f"layer_normalized(lr={schedule!r}, b2={b2}, weight_decay={weight_decay})", weight_decay)


def _HoldDecay(peak: float, total_steps: int, warmup_steps: int, hold: float, power: float = 1.0):
    """lr: ``zo.linear_warmup`` over ``warmup_steps``, held at ``peak`` until ``hold`` of the steps, then down
    to 0 as ``(1 - x) ** power`` over the rest (``power=1``: linearly)."""
    import zoracle as zo

    return zo.linear_warmup(_Decay(peak, max(warmup_steps, int(hold * total_steps)), total_steps, power), warmup_steps)


def _averaging_recorder(bench, spent: int, window: float):
    """``peers.step_recorder`` fed an exponential moving average of the weights (time constant
    ``window`` of the budget, in queries; bias-corrected) instead of the current ones.
    Returns ``(callback, average)``; ``average()`` is the average after the last step."""
    record, state = peers.step_recorder(bench, spent), {"m": None, "w": 0.0}

    def average():
        return (state["m"] / state["w"]).astype(np.float32)

    def cb(event, rec, params):
        if event != "step":
            return None
        a = float(np.exp(-rec["nfev"] / (window * bench.budget)))
        p = np.asarray(params, dtype=np.float64)
        state["m"] = (1 - a) * p if state["m"] is None else a * state["m"] + (1 - a) * p
        state["w"] = a * state["w"] + (1 - a)
        return record(event, rec, average())
    return cb, average


def run_variant(bench, lr=0.1, ratios=None, counts=None, pool=None, mu=None, optimizer=None, weight_decay=5e-4,
                hybrid=False, importance=None, coordinates=None, layer_scale=None, b1=0.0, cycle=False,
                average=None, schedule=None, fill_small_blocks=False, grasp_directions=192, regrasp=None):
    import zoracle as zo
    from zoracle._pruning import grasp_queries
    from zoracle.apps._digits import per_class

    if hybrid:
        return _hybrid(bench, lr)
    k = sum(counts.values()) if counts is not None else coordinates or peers.KEEP_FRESH
    extra = 0 if regrasp is None else (regrasp - 1) * grasp_queries(grasp_directions)  # ZO-GraSP scored again
    kw = zo.recipes.short_budget(bench.oracle, bench.p0, bench.budget - extra, batches=bench.batches, lr=lr,
                                 coordinates=k, weight_decay=weight_decay, b1=b1, grasp_directions=grasp_directions,
                                 fill_small_blocks=bool(fill_small_blocks))
    fixed = counts is not None or ratios == "uniform"  # no ZO-GraSP: its queries go to steps
    grasp = 0 if fixed else grasp_queries(kw["grasp_directions"])
    steps = (bench.budget - extra - grasp) // (k + 1)  # every weight is sampled: k and the base point a step
    if counts is not None:
        info = [i for i in bench.oracle.param_info if i.kind in zo.recipes.SHORT_BUDGET_KINDS]
        unknown = set(counts) - {i.name for i in info}
        if unknown:
            raise ValueError(f"counts name blocks this model lacks: {sorted(unknown)}")
        ratios = [counts.get(i.name, 0) / (i.slice.stop - i.slice.start) for i in info]
    if fixed:
        kw.update(ratios=ratios, max_queries=steps * (k + 1), epochs=-(-steps // len(bench.batches)))
    warm = min(len(bench.batches), steps - 1)
    sched = zo.cosine_schedule(lr, total_steps=steps, warmup_steps=warm)
    if schedule is not None:  # ("linear", hold): at the peak until `hold` of the steps, then linear to 0;
        kind, value = schedule  # ("power", p): from the warm-up's end to 0 as (1 - x) ** p
        hold, power = (float(value), 1.0) if kind == "linear" else (0.0, float(value))
        sched = _HoldDecay(lr, steps, warm, hold, power)
        kw["optimizer"] = zo.adam(sched, b1=b1, weight_decay=weight_decay)
    if optimizer == "sign":
        kw["optimizer"] = zo.sign_sgd(sched, weight_decay=weight_decay)
    elif optimizer == "sgd":
        kw["optimizer"] = zo.sgd(sched, weight_decay=weight_decay)
    elif optimizer == "layer-normalized":
        kw["optimizer"] = _layer_normalized(sched, [i.slice for i in bench.oracle.param_info], weight_decay)
    elif fixed:  # the recipe's optimizer, on the longer run
        kw["optimizer"] = zo.adam(sched, b1=b1, weight_decay=weight_decay)
    if mu is not None:
        kw["estimator"] = zo.CGE(mu=mu)
    if layer_scale is not None:  # zo.recipes.short_budget(layer_steps=p) is {"power": p}
        from zoracle._optim import scaled

        scale = zo.recipes.layer_scales(bench.oracle.param_info, bench.p0, **layer_scale)
        kw["optimizer"] = scaled(kw["optimizer"], scale, f"layer_scales({layer_scale})")
    d = bench.data
    with contextlib.ExitStack() as stack:
        if pool:
            stack.enter_context(_pooled_masks(pool, bench.rng_seed))
        if cycle:
            stack.enter_context(_cycled_masks(bench.rng_seed))
        if fill_small_blocks == "hidden":
            stack.enter_context(_fill_all_but_last())
        if importance:
            observe, opt = stack.enter_context(_importance_masks(bench, **importance)), kw["optimizer"]

            def update(grad, state, params, lr=None):
                observe(grad)
                return opt.update(grad, state, params, lr=lr)
            kw["optimizer"] = opt._replace(update=update)
        recorder, averaged = (peers.step_recorder(bench, grasp), None) if average is None else \
            _averaging_recorder(bench, grasp, average)
        if regrasp is not None:
            recorder, ctx = _regrasp(bench, regrasp, steps, kw["sparsity"], kw["estimator"].mu, grasp_directions,
                                     fill_small_blocks, grasp)
            stack.enter_context(ctx)
        params = zo.train(bench.oracle, bench.p0, batches=bench.batches, grasp_batch=per_class(d["x"], d["y"], 25, seed=bench.seed),
                          callbacks=[recorder], rng=bench.rng_seed, progress=False, **kw).params
        return params if averaged is None else averaged()


def scout(args, log=functools.partial(print, flush=True)) -> list:
    import torch

    torch.set_num_threads(1)
    peers.RUNNERS["scout"] = run_variant
    runs = peers._load(args.out)
    # a run is done when one of the same point, variant, seed and rate is in --out (one file can hold several --lr)
    done = {(r["data"], r["width"], r["variant"], r["seed"], r["budget"], r["setting"].get("lr")) for r in runs}
    if args.lr and any(VARIANTS[v][1].get("lr", args.lr) != args.lr for v in args.variants):
        raise SystemExit("--lr: a variant chosen sets its own lr; run it without --lr")
    for name in args.variants:
        for seed in args.seeds:
            if (args.data, args.width, name, seed, args.budget, args.lr or VARIANTS[name][1].get("lr")) in done:
                continue
            setting = {**VARIANTS[name][1], **({"lr": args.lr} if args.lr else {})}
            start = setting.pop("start", seed)  # the seed of the weights and the train / validation split
            bench = peers.Bench(peers.load_data(args.data, start), args.data, args.width, seed, args.budget,
                                model_seed=start, batch_seed=setting.pop("batch_seed", None),
                                rng_seed=setting.pop("rng", None))
            t = time.perf_counter()
            r = peers.run_one(bench, "scout", setting)
            r.update(variant=name, method="deepzero-krs-variant")
            runs.append(r)
            peers._save(args.out, runs)
            log(f"{args.data} d={bench.d} {name} seed {seed}: val {100 * r['val_acc']:.1f} test "
                f"{100 * r['test_acc']:.1f} ({r['queries']} queries, {time.perf_counter() - t:.0f} s)")
    return runs


def splits(data: str, width: int, seeds, budget: int = 150_000) -> str:
    """Markdown: ZO-GraSP's split of the recipe's 50 coordinates a step over the blocks, per seed
    (``zo.train``'s keep ratios times the block sizes), and the same with ``fill_small_blocks``."""
    import torch

    import zoracle as zo
    from zoracle._pruning import fill_small_blocks, grasp_queries
    from zoracle.apps._digits import per_class

    torch.set_num_threads(1)
    lines = []
    for seed in seeds:
        bench = peers.Bench(peers.load_data(data, seed), data, width, seed, budget)
        kw = zo.recipes.short_budget(bench.oracle, bench.p0, budget, batches=bench.batches, coordinates=peers.KEEP_FRESH,
                                     fill_small_blocks=False)  # ZO-GraSP's split as ranked; the fill is its last column
        kw["max_queries"] = grasp_queries(kw["grasp_directions"]) + 2 * (peers.KEEP_FRESH + 1)  # ZO-GraSP, 2 steps
        d = bench.data
        res = zo.train(bench.oracle, bench.p0, batches=bench.batches, grasp_batch=per_class(d["x"], d["y"], 25, seed=seed),
                       rng=seed, progress=False, **kw)
        info = [i for i in bench.oracle.param_info if i.kind in zo.recipes.SHORT_BUDGET_KINDS]
        sizes = np.array([i.slice.stop - i.slice.start for i in info])
        counts = np.rint(res.ratios * sizes).astype(int)
        if not lines:
            names = [f"{i.name} ({n:,})" for i, n in zip(info, sizes)]
            lines = ["| seed | " + " | ".join(names) + " | filled |", "|---|" + "---|" * (len(names) + 1)]
        filled = fill_small_blocks(counts, sizes)
        moved = ", ".join(f"{i.name} {b - a:+d}" for i, a, b in zip(info, counts, filled) if b != a)
        lines.append(f"| {seed} | " + " | ".join(map(str, counts)) + f" | {moved or '-'} |")
    return "\n".join(lines)


def versus(runs, base: str, others) -> str:
    """Markdown: each of ``others`` against ``base``, per data set, size and budget, on the seeds both ran: mean test
    accuracy of each (worst and best seed), the difference, and the two-sided Mann-Whitney U test of the two sets of
    seeds. A variant run at several learning rates at a point (files of several ``--lr`` runs) gets a row per rate,
    named ``variant@lr``; ``base`` must have one rate there."""
    lines = ["| data | d | queries | variant | seeds | test % | `" + base + "` test % | difference, points | rank test p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for data, d, budget in sorted({(r["data"], r["d"], r["budget"]) for r in runs}):  # a file may hold several sizes
        here = [r for r in runs if (r["data"], r["d"], r["budget"]) == (data, d, budget)]
        lrs = {}
        for r in here:
            lrs.setdefault(r["variant"], set()).add(r["setting"].get("lr"))
        if len(lrs.get(base, ())) > 1:
            raise ValueError(f"`{base}` ran at learning rates {sorted(lrs[base])} at {data}, d = {d:,}: "
                             "compare against one rate (pass one --lr's files)")

        def name(r):
            return r["variant"] if len(lrs[r["variant"]]) == 1 else f"{r['variant']}@{r['setting']['lr']:g}"
        at = {(name(r), r["seed"]): r for r in here}
        for other in others:
            for label in sorted({v for v, _ in at if v == other or v.startswith(other + "@")}, key=lambda v: float(v.partition("@")[2] or -1)):
                seeds = sorted(s for v, s in at if v == label and (base, s) in at)
                if not seeds:
                    continue
                a = 100 * np.array([at[label, s]["test_acc"] for s in seeds])
                b = 100 * np.array([at[base, s]["test_acc"] for s in seeds])
                p = peers.rank_test(a, b)
                lines.append(f"| {data} | {d:,} | {budget:,} | `{label}` | {len(seeds)} | {a.mean():.1f} ({a.min():.1f}-{a.max():.1f}) | "
                             f"{b.mean():.1f} ({b.min():.1f}-{b.max():.1f}) | {a.mean() - b.mean():+.1f} | {peers.p_text(p)} |")
    return "\n".join(lines)


def lr_table(runs, min_seeds: int = 2) -> str:
    """Markdown: the short-budget recipe's learning rate against the queries per weight.

    One row per data set, size and budget; a column per learning rate run, each cell the mean
    validation and test accuracy over its seeds (``val / test (seeds)``), the rule's rate
    (:func:`zoracle.recipes.default_lr`, every weight of these models sampled) and the rate with
    the best validation mean. Takes the scout's ``recipe`` and ``floor-small`` runs and the
    study's ``deepzero-krs`` and ``deepzero-krsf`` (``peers.py``): the same two runs (a test
    checks it). A rate run on fewer than ``min_seeds`` seeds at a point (a tuning seed's grid) is
    left out there."""
    from zoracle.recipes import FILL_FROM_STEPS, default_lr

    as_variant = {"deepzero-krs": "recipe", "deepzero-krsf": "floor-small"}
    cells = {}
    for r in runs:
        name = r.get("variant") or as_variant.get(r["method"])
        if name not in ("recipe", "floor-small") or set(r["setting"]) - {"lr", "fill_small_blocks"}:
            continue
        cells.setdefault((r["data"], r["d"], r["budget"], name), {}).setdefault(r["setting"]["lr"], {})[r["seed"]] = r
    cells = {key: {lr: by_seed for lr, by_seed in c.items() if len(by_seed) >= min_seeds} for key, c in cells.items()}
    cells = {key: c for key, c in cells.items() if c}
    rates = sorted({lr for c in cells.values() for lr in c}, reverse=True)
    rule = {key: default_lr(key[2], key[1]) for key in cells}
    fixed = [lr for lr in rates if any(lr != rule[key] and lr in c for key, c in cells.items())]
    lines = ["| data | d | queries | queries a weight | small blocks | " + " | ".join(f"lr {lr:g}" for lr in fixed)
             + " | the rule's lr | the rule | best by validation |", "|---|---|---|---|---|" + "---|" * (len(fixed) + 3)]

    def cell(by_seed):
        if not by_seed:
            return "-"
        v = [100 * by_seed[s]["val_acc"] for s in sorted(by_seed)]
        t = [100 * by_seed[s]["test_acc"] for s in sorted(by_seed)]
        return f"{np.mean(v):.1f} / {np.mean(t):.1f} ({len(t)})"
    for key in sorted(cells, key=lambda k: (k[0], k[1], k[2], k[3])):
        data, d, budget, name = key
        c = cells[key]
        best = max(c, key=lambda lr: np.mean([r["val_acc"] for r in c[lr].values()]))
        lines.append(f"| {data} | {d:,} | {budget:,} | {budget / d:.2f} | {'filled' if name == 'floor-small' else 'as ranked'} | "
                     + " | ".join(cell(c.get(lr, {})) if lr != rule[key] else "(the rule)" for lr in fixed)
                     + f" | {rule[key]:g} | {cell(c.get(rule[key], {}))} | {best:g} |")
    lines.append(f"\nCells: validation / test accuracy %, mean over the seeds run (their number; rates run on fewer "
                 f"than {min_seeds} seeds left out). Small blocks are filled from {FILL_FROM_STEPS:,} steps on, as the "
                 "recipe does by default.")
    return "\n".join(lines)


def report(runs) -> str:
    """Markdown: one row per variant, val and test mean (min-max) per data set.

    A data set run at more than one size or budget gets a pair of columns for each, headed
    ``digits, d = 1,898, 150,000 queries`` (one such point: headed by the data set alone)."""
    points = sorted({(r["data"], r["d"], r["budget"]) for r in runs})
    datas = sorted({p[0] for p in points})

    def head(p):
        if sum(q[0] == p[0] for q in points) == 1:
            return p[0]
        return f"{p[0]}, d = {p[1]:,}, {p[2]:,} queries"
    lines = ["| variant | what changes | " + " | ".join(f"{head(p)}: val % | {head(p)}: test %" for p in points) + " |",
             "|---|---|" + "---|---|" * len(points)]

    def cell(vals):
        v = 100 * np.array(vals)
        return f"{v.mean():.1f} ({v.min():.0f}-{v.max():.0f})" if len(v) else "-"
    for name, (what, _) in VARIANTS.items():
        rows = [r for r in runs if r["variant"] == name]
        if not rows:
            continue
        cells = []
        for p in points:
            here = [r for r in rows if (r["data"], r["d"], r["budget"]) == p]
            cells += [cell([r["val_acc"] for r in here]), cell([r["test_acc"] for r in here])]
        lines.append(f"| `{name}` | {what} | " + " | ".join(cells) + " |")
    seeds = sorted({r["seed"] for r in runs})
    lines.append(f"\nSeeds {', '.join(map(str, seeds))}; d = " + ", ".join(
        f"{' / '.join(f'{x:,}' for x in sorted({r['d'] for r in runs if r['data'] == d}))} ({d})" for d in datas) + ".")
    fewer = []  # variants run on some of the seeds (of one data set, when the data sets differ)
    for name in VARIANTS:
        by_data = {d: sorted({r["seed"] for r in runs if r["variant"] == name and r["data"] == d}) for d in datas}
        by_data = {d: s for d, s in by_data.items() if s}
        if len({tuple(s) for s in by_data.values()}) == 1:
            s = next(iter(by_data.values()))
            if s != seeds:
                fewer.append(f"`{name}` on seeds {', '.join(map(str, s))} only")
        else:
            fewer += [f"`{name}` on seeds {', '.join(map(str, s))} only on {d}" for d, s in by_data.items() if s != seeds]
    if fewer:
        lines[-1] += " " + "; ".join(fewer) + "."
    lrs = sorted({r["setting"]["lr"] for r in runs if "lr" in r["setting"] and "lr" not in VARIANTS[r["variant"]][1]})
    if lrs:  # run with --lr
        lines[-1] += f" Every variant at lr {' / '.join(map(str, lrs))} (`--lr`), the recipe's included."
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", choices=("digits", "mnist1d"), help="digits or mnist1d")
    p.add_argument("--width", type=int, default=1600, help="hidden units (the study's largest: 1600 digits, 1200 mnist1d)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budget", type=int, default=30_000)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate of every variant (default: each variant's, 0.1)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {', '.join(VARIANTS)}")
    p.add_argument("--out", default=None, help="JSON of all runs, appended after each; reruns skip done runs")
    p.add_argument("--splits", action="store_true", help="only print ZO-GraSP's split of a step's coordinates per "
                   "seed (and what fill_small_blocks moves), at --data, --width, --seeds, --budget")
    p.add_argument("--report", default=None, metavar="JSON",
                   help="only print the table of these files (comma-separated), of the --variants given")
    p.add_argument("--by-lr", action="store_true", help="with --report: the recipe's learning rates against the "
                   "queries per weight (runs of recipe and floor-small, and peers.py's deepzero-krs and -krsf)")
    p.add_argument("--versus", default=None, metavar="VARIANT", help="with --report: each other --variants' test "
                   "accuracy against this one's, on the seeds both ran, with the rank test")
    args = p.parse_args(argv)
    if args.budget < 1 or args.width < 0:
        p.error(f"--budget must be >= 1 and --width >= 0, got {args.budget} and {args.width}")
    try:
        [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    args.variants = args.variants.split(",")
    if args.out is not None:  # before the first run, not after it
        from zoracle.cli import _writable

        why = _writable(args.out, "file")
        if why:
            p.error(f"--out {args.out}: cannot write there ({why})")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)}; pick from {', '.join(VARIANTS)}")
    if args.versus is not None and (args.versus not in VARIANTS or not args.report):
        p.error(f"--versus needs --report and a variant, got {args.versus!r}")
    if args.report:  # with --variants: only those rows (e.g. the variants run on more seeds)
        missing = [f for f in args.report.split(",") if f and not os.path.isfile(f)]
        if missing:
            p.error(f"--report: no such results file: {', '.join(missing)}")
        runs = [r for path in args.report.split(",") for r in peers._load(path)]
        if not runs or (not args.by_lr and any("variant" not in r for r in runs)):  # (--by-lr reads the study's)
            p.error(f"--report: {args.report} holds no scouting runs (files of peers_scout.py --out; the study's "
                    "files go to peers.py --report)")
        if args.by_lr:
            print(lr_table(runs))
        elif args.versus:
            print(versus(runs, args.versus, [v for v in args.variants if v != args.versus]))
        else:
            print(report([r for r in runs if r["variant"] in args.variants]))
        return 0
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.splits:
        print(splits(args.data, args.width, args.seeds, args.budget))
        return 0
    scout(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
