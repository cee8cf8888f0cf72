"""How far zoracle's CGE step is from the fastest one this CPU can run, side by side in one run.

On the demo model (digits, d = 1,898; the study's smallest size, where DeepZero is 3.3-4.8x
faster per query than the closest peer and issue 13 asks for 10x), one process times, in
interleaved rounds so that all share the machine's state:

- ``zoracle``: a demo-recipe step, ``zo.estimate_gradient`` through ``TorchOracle`` (bind the
  minibatch, CGE on 220 coordinates: 10% of every weight layer, biases dense), as
  ``benchmarks/step_time.py`` times it;
- ``by hand``: the same estimate written out for this one model with torch kernels only (no
  oracle, plan or checks): the base forward, then each perturbed coordinate's closed form
  (a first-convolution weight changes one channel, run through the second convolution; a
  second-convolution weight changes one channel's four pooled features; a classifier weight
  changes one logit), every perturbed logit row through the same ``nn.CrossEntropyLoss`` in
  one call, laid out class-major (``class_major``, below) as ``TorchOracle`` runs it. It is
  checked against zoracle's estimate before timing;
- ``zoracle-es``: the closest peer's step at this size, RGE with rank shaping and 50
  antithetic pairs (101 queries) through ``TorchOracle.batch``, as ``benchmarks/peers.py``
  runs it;
- ``zoracle, one coordinate a block``: zoracle's step on each block's first weight alone, what
  a step costs whatever its coordinates (the plain call, and each block's prefix and suffix);
- the loss alone: ``nn.CrossEntropyLoss`` on the step's 220 x 32 logit rows, laid out class-major as
  zoracle and the hand-written step run it (and, for comparison, in the plain row layout);
- ZO-GraSP once (192 directions on 250 images: the demo recipe's one-off cost).

It also counts the torch calls (operators called from Python) of zoracle's step, of its step
on one coordinate a block and of the hand-written step. It prints microseconds per query and
the ratios, and projects a 150,000-query run (the issue's budget): DeepZero's steps plus
ZO-GraSP against ``zoracle-es``'s queries (each method's training-loop cost, about 0.2 s of a
DeepZero run, left out)::

    python benchmarks/step_floor.py --out step_floor.json
    python benchmarks/step_floor.py --report step_floor.json   # the markdown table

``--mask study`` times both steps on the coordinates the study's own demo-recipe run estimates
(``peers.py``'s ``deepzero`` at seed 0, its first epoch: ZO-GraSP's layer ratios put more of
them in the first convolution, the dearest block, than the 10% of every layer above) and adds
the hand-written step's set-up (its index tensors, built once per mask: that run draws a mask
an epoch) to its time per step, spread over an epoch's steps::

    python benchmarks/step_floor.py --mask study --out step_floor_study.json

``--root`` times the zoracle of another checkout (as ``step_time.py --root`` does); the
hand-written step, timed in the same process, makes the two runs comparable on a machine
whose speed drifts: compare zoracle's time over the hand-written one's::

    git worktree add /tmp/old 47d2d99 && python benchmarks/step_floor.py --root /tmp/old
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import step_time

BUDGET = 150_000  # the budget, for the projected run
MU = 5e-3


def class_major(loss_fn, rows, y):
    """``loss_fn(rows, y)`` on the logits laid out ``(1, classes, rows padded to 64)``: the layout
    ``TorchOracle`` runs a stock ``nn.CrossEntropyLoss`` in on few classes (written out here so
    that ``--root`` can time a checkout without it)."""
    import torch

    n, c = rows.shape
    m = -(-n // 64) * 64
    z = torch.zeros((1, c, m), dtype=rows.dtype)
    z[0, :, :n] = rows.T
    t = torch.zeros((1, m), dtype=y.dtype)
    t[0, :n] = y
    return loss_fn(z, t)[0, :n]


FIXED = "zoracle, one coordinate a block"
COMPILED = "by hand, torch.compile"


def torch_calls(fn) -> int:
    """Torch operator calls that ``fn()`` makes from Python (functions and tensor methods, each
    a dispatch; attribute reads such as ``.shape`` left out), counted by a torch function mode on
    a second call: what a first call builds once (a mask's index tensors, a bound batch's
    caches) is not counted."""
    from torch.overrides import TorchFunctionMode

    class Count(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") != "__get__":
                self.n += 1
            return func(*args, **(kwargs or {}))

    fn()
    with Count() as count:
        fn()
    return count.n


class _FirstStep(Exception):
    pass


def study_mask(zo, data: str = "digits") -> np.ndarray:
    """The boolean mask of the first step of the study's demo-recipe run (``peers.py``'s
    ``deepzero``, seed 0, the timing runs' setting): read from the run itself, by wrapping
    ``zoracle._run_loop.estimate_gradient`` (the training step's) for its first call, which ends the run."""
    import peers
    import zoracle._run_loop as loop_module

    got = {}
    real = loop_module.estimate_gradient

    def first(oracle, params, estimator, **kw):
        got["mask"], got["d"] = kw["coordinates"], params.size
        raise _FirstStep

    bench = peers.Bench(peers.load_data(data, 0), data, 0 if data == "digits" else 16, 0, BUDGET)
    runs = peers._merged([os.path.join(step_time.HERE, "peers_results", f"{data}.json")])
    loop_module.estimate_gradient = first
    try:
        peers.run_one(bench, "deepzero", peers.timing_setting(runs, data, bench.width, "deepzero", 30_000))
    except _FirstStep:
        pass
    finally:
        loop_module.estimate_gradient = real
    c = np.asarray(got["mask"])
    mask = np.zeros(got["d"], dtype=bool)
    mask[np.flatnonzero(c) if c.dtype == bool else c] = True
    return mask


class HandStep:
    """The demo recipe's CGE estimate on the digits demo CNN, written out for that model alone.

    ``conv3x3(1->8, pad 1) - ReLU - conv3x3(8->16, stride 2, pad 1) - ReLU - avgpool 2 - linear(64->10)``
    on 8x8 images. ``grad(x, y)`` returns the forward-difference estimate of every coordinate in
    ``mask`` (zoracle's order: ascending), with zoracle's representable step ``(w + mu) - w``.
    """

    def __init__(self, oracle, params, mask, loss_fn):
        import numpy as np
        import torch

        names = [i.name for i in oracle.param_info]
        if names != ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"] or params.size != 1898:
            raise ValueError(f"HandStep is written for the digits demo CNN (d = 1,898), got {names}, d = {params.size}")
        self.loss_fn = loss_fn
        theta = torch.as_tensor(params, dtype=torch.float32)
        sl = {i.name: i.slice for i in oracle.param_info}
        coords = np.flatnonzero(mask)

        def local(name):
            s = sl[name]
            return torch.as_tensor(coords[(coords >= s.start) & (coords < s.stop)] - s.start)

        def step(values):
            return (values + MU) - values

        self.W1, self.b1 = theta[sl["0.weight"]].view(8, 1, 3, 3), theta[sl["0.bias"]]
        self.W2, self.b2 = theta[sl["2.weight"]].view(16, 8, 3, 3), theta[sl["2.bias"]]
        self.W3, self.b3 = theta[sl["6.weight"]].view(10, 64), theta[sl["6.bias"]]
        c1w, c1b, c2w, c2b, lw, lb = (local(n) for n in sl)
        self.h = torch.cat([step(self.W1.reshape(-1)[c1w]), step(self.b1[c1b]), step(self.W2.reshape(-1)[c2w]),
                            step(self.b2[c2b]), step(self.W3.reshape(-1)[lw]), step(self.b3[lb])])
        # first convolution: the channel each coordinate changes, and a weight's 8x8 window of the padded input
        self.n1w, self.c1 = len(c1w), torch.cat([c1w // 9, c1b])
        p, q = (c1w % 9) // 3, c1w % 3
        pix = torch.arange(8)
        self.win1 = ((p[:, None, None] + pix[None, :, None]) * 10 + q[:, None, None] + pix[None, None, :]).reshape(-1)
        # the changed channel through the second convolution: its 9 taps at the 4x4 outputs, by matmul
        self.taps = torch.tensor([(2 * oy + ky) * 10 + 2 * ox + kx for oy in range(4) for ox in range(4)
                                  for ky in range(3) for kx in range(3)])
        self.W2c = self.W2[:, self.c1].permute(1, 2, 3, 0).reshape(len(self.c1), 9, 16).contiguous()
        # average pool and classifier as matrices: 4x4 positions -> 2x2 cells -> logits
        pool = torch.zeros(4, 16)
        for oy in range(4):
            for ox in range(4):
                pool[(oy // 2) * 2 + ox // 2, oy * 4 + ox] = 0.25
        self.poolT = pool.T.contiguous()  # (16 positions, 4 cells)
        W3v = self.W3.view(10, 16, 4)  # (logit, channel, cell)
        self.M = torch.einsum("cp,ioc->poi", pool, W3v).reshape(256, 10).contiguous()  # channels-last a2 -> logits
        # second convolution: the output channel each coordinate changes, a weight's 16 input positions
        self.n2w, self.o2 = len(c2w), torch.cat([c2w // 72, c2b])
        c, p2, q2 = (c2w % 72) // 9, (c2w % 9) // 3, c2w % 3
        at = torch.tensor([2 * oy * 10 + 2 * ox for oy in range(4) for ox in range(4)])
        self.win2 = ((c * 100 + p2 * 10 + q2)[:, None] + at[None, :]).reshape(-1)
        self.W3o = W3v.index_select(1, self.o2).permute(1, 2, 0).contiguous()  # (k2, 4 cells, 10)
        # classifier: the logit each coordinate changes, a weight's input feature
        self.n3w, self.i3, self.j3 = len(lw), torch.cat([lw // 64, lb]), lw % 64

    def grad(self, x, y):
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            B = x.shape[0]
            h1 = F.conv2d(x, self.W1, self.b1, 1, 1)
            a1 = h1.relu()
            h2 = F.conv2d(a1, self.W2, self.b2, 2, 1)
            a2 = h2.relu()
            f = F.avg_pool2d(a2, 2).flatten(1)
            z = F.linear(f, self.W3, self.b3)
            base = class_major(self.loss_fn, z, y).mean()
            h1w, h1b, rest = self.h[:self.n1w], self.h[self.n1w:len(self.c1)], self.h[len(self.c1):]
            # first convolution: k1 changed channels -> second convolution -> logits
            k1 = len(self.c1)
            dh = torch.empty(k1, B, 64)
            dh[:self.n1w] = F.pad(x, (1, 1, 1, 1)).view(B, 100).index_select(1, self.win1).view(B, self.n1w, 64) \
                .transpose(0, 1) * h1w[:, None, None]
            dh[self.n1w:] = h1b[:, None, None]
            da = (h1.view(B, 8, 64).index_select(1, self.c1).transpose(0, 1) + dh).relu_() \
                - a1.view(B, 8, 64).index_select(1, self.c1).transpose(0, 1)
            U = F.pad(da.reshape(k1 * B, 8, 8), (1, 1, 1, 1)).view(k1 * B, 100).index_select(1, self.taps)
            h2p = torch.baddbmm(h2.permute(0, 2, 3, 1).reshape(1, B * 16, 16), U.view(k1, B * 16, 9), self.W2c)
            z1 = torch.addmm(self.b3, h2p.relu_().view(k1 * B, 256), self.M)
            # second convolution: k2 changed channels -> their 4 pooled features -> logits
            k2 = len(self.o2)
            d2 = torch.empty(k2, B, 16)
            d2[:self.n2w] = F.pad(a1, (1, 1, 1, 1)).view(B, 800).index_select(1, self.win2).view(B, self.n2w, 16) \
                .transpose(0, 1) * rest[:self.n2w, None, None]
            d2[self.n2w:] = rest[self.n2w:k2, None, None]
            h2o = h2.view(B, 16, 16).index_select(1, self.o2).transpose(0, 1)
            dp = torch.matmul((h2o + d2).relu_() - a2.view(B, 16, 16).index_select(1, self.o2).transpose(0, 1),
                              self.poolT)
            z2 = torch.baddbmm(z.unsqueeze(0), dp, self.W3o).view(k2 * B, 10)
            # classifier: one logit each
            k3 = len(self.i3)
            add = torch.empty(k3, B)
            add[:self.n3w] = f.index_select(1, self.j3).T * rest[k2:k2 + self.n3w, None]
            add[self.n3w:] = rest[k2 + self.n3w:, None]
            z3 = z.unsqueeze(0).repeat(k3, 1, 1)
            z3[torch.arange(k3), :, self.i3] += add
            rows = torch.cat([z1, z2, z3.view(k3 * B, 10)])
            losses = class_major(self.loss_fn, rows, y.repeat(k1 + k2 + k3)).view(-1, B).mean(1)
            return ((losses - base) / self.h).double().numpy()


def run(rounds: int = 5, steps: int = 60, root: str | None = None, mask_of: str = "layers",
        compiled: bool = False) -> dict:
    import torch

    zo = step_time.import_zoracle(root)
    from zoracle._pruning import grasp_queries, zo_grasp
    from zoracle.apps._digits import per_class

    oracle, params, mask, batches, data = step_time.demo_step(zo, "digits")
    if mask_of == "study":
        mask = study_mask(zo)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
    hand = HandStep(oracle, params, mask, loss_fn)
    tensors = [(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)) for x, y in batches]
    cge, es = zo.CGE(mu=MU), zo.RGE(mu=0.05, directions=50, scheme="central", shaping="ranks")
    # the check: the hand-written estimate is zoracle's, up to float32 rounding of the two losses
    # (a few units in the last place of the loss, over mu)
    ref = zo.estimate_gradient(oracle.bind(batches[0]), params, cge, coordinates=mask)
    diff = float(np.abs(hand.grad(*tensors[0]) - ref.grad[mask]).max())
    scale = float(np.abs(ref.grad[mask]).max())
    tol = 8 * float(np.finfo(np.float32).eps) * oracle.bind(batches[0])(params) / MU
    if not diff <= tol:
        raise SystemExit(f"the hand-written step differs from zoracle's by {diff:.3g} (allowed {tol:.3g}, "
                         f"largest partial {scale:.3g})")
    rows = np.repeat(np.arange(10, dtype=np.float32)[None], mask.sum() * 32, 0) * 0.1
    logits = torch.as_tensor(rows) + torch.randn(rows.shape, generator=torch.Generator().manual_seed(0))
    labels = torch.as_tensor(np.tile(batches[0][1], int(mask.sum())))
    es_queries = 2 * 50 + 1

    # the step's fixed cost: one coordinate a block (each block's first weight), the same calls per block
    # as the full mask and almost none of its per-coordinate work
    one = np.zeros_like(mask)
    one[[b.start for b in oracle.blocks]] = True
    methods = {
        "zoracle": lambda k: zo.estimate_gradient(oracle.bind(batches[k]), params, cge, coordinates=mask),
        FIXED: lambda k: zo.estimate_gradient(oracle.bind(batches[k]), params, cge, coordinates=one),
        "by hand": lambda k: hand.grad(*tensors[k]),
        "zoracle-es": lambda k: zo.estimate_gradient(oracle.bind(batches[k]), params, es, rng=k),
        "loss alone": lambda k: class_major(loss_fn, logits, labels),
        "loss alone, rows": lambda k: loss_fn(logits, labels),
        "hand set-up": lambda k: HandStep(oracle, params, mask, loss_fn),
    }
    compile_info = None
    if compiled:  # the hand-written step through torch.compile (inductor: one graph, C++ kernels)
        t = time.perf_counter()
        fast = torch.compile(hand.grad, dynamic=False)
        first = fast(*tensors[0])
        compile_info = {"compile_s": time.perf_counter() - t,
                        "max_abs_diff_vs_eager": float(np.abs(first - hand.grad(*tensors[0])).max())}
        methods[COMPILED] = lambda k: fast(*tensors[k])
    calls = {name: torch_calls(lambda: methods[name](0)) for name in ("zoracle", FIXED, "by hand")}
    # the fixed step's calls by part: the plain call at the base point, then each block's
    # coordinate_losses on its first weight alone (its prefix and suffix work)
    bound = oracle.bind(batches[0])
    parts = {"plain call": torch_calls(lambda: bound(params)),
             "no coordinate": torch_calls(lambda: bound.coordinate_losses(params, [], MU))}
    for i, b in enumerate(oracle.blocks):
        parts[f"block {i}"] = torch_calls(lambda: bound.coordinate_losses(params, [b.start], MU))
    best = {}
    for r in range(rounds + 1):  # round 0 warms up
        for name, fn in methods.items():
            t = time.perf_counter()
            for k in range(steps):
                fn(k % len(batches))
            ms = (time.perf_counter() - t) / steps * 1e3
            if r:
                best[name] = min(best.get(name, ms), ms)
    grasp_batch = per_class(data["x"], data["y"], 25, seed=0)
    scored = [i.slice for i in oracle.param_info if i.kind != "bias"]
    grasp_s = []
    for _ in range(2):
        t = time.perf_counter()
        zo_grasp(oracle.bind(grasp_batch), params, blocks=scored, mu=MU, directions=192, rng=0)
        grasp_s.append(time.perf_counter() - t)
    k = int(mask.sum())
    # the recipe draws a mask an epoch: the hand-written step builds its index tensors that often
    starts = [b.start for b in oracle.blocks]
    per_block = np.bincount(np.searchsorted(starts, np.flatnonzero(mask), side="right") - 1,
                            minlength=len(starts)).tolist()
    hand_ms = best["by hand"] + best["hand set-up"] / len(batches)
    us = {"zoracle": best["zoracle"] / (k + 1) * 1e3, "by hand": hand_ms / (k + 1) * 1e3,
          "zoracle-es": best["zoracle-es"] / es_queries * 1e3}
    run_steps = (BUDGET - grasp_queries(192)) // (k + 1)
    es_run = BUDGET * us["zoracle-es"] / 1e6

    def projected(ms_step):
        return es_run / (run_steps * ms_step / 1e3 + min(grasp_s))

    return {"d": int(params.size), "coordinates": k, "ms_per_step": best, "us_per_query": us,
            "check_max_abs_diff": diff, "check_allowed": tol, "check_largest_partial": scale, "zo_grasp_s": min(grasp_s),
            "es_over_zoracle": us["zoracle-es"] / us["zoracle"], "es_over_hand": us["zoracle-es"] / us["by hand"],
            "projected_150k": {"steps": run_steps, "zoracle-es_s": es_run,
                               "es_over_zoracle": projected(best["zoracle"]), "es_over_hand": projected(hand_ms),
                               "es_over_hand_without_loss": projected(hand_ms - best["loss alone"])},
            "torch_calls": calls, "torch_calls_by_part": parts, "mask": mask_of, "coordinates_per_block": per_block,
            "compiled": compile_info,
            "steps_per_mask": len(batches), "rounds": rounds, "steps": steps, "zoracle": os.path.dirname(zo.__file__)}


def table(r: dict) -> str:
    """Markdown: one row per timed method of a :func:`run` result, then the projected run."""
    us, ms, proj = r["us_per_query"], r["ms_per_step"], r["projected_150k"]
    es = us["zoracle-es"]
    lines = ["| step | queries | ms a step | us / query | `zoracle-es` x its time per query | 150,000-query run, "
             "`zoracle-es` x its time |", "|---|---|---|---|---|---|"]
    setup = ms.get("hand set-up")  # results before the set-up was timed: the step alone
    per_mask = r.get("steps_per_mask")
    hand_label = ("the same estimate written by hand" if setup is None else
                  f"the same estimate written by hand, its set-up spread over a mask's {per_mask} steps")
    for name, label, key in (("zoracle", "zoracle's CGE step (`TorchOracle`)", "es_over_zoracle"),
                             ("by hand", hand_label, "es_over_hand")):
        step_ms = ms[name] + (setup / per_mask if name == "by hand" and setup is not None else 0.0)
        lines.append(f"| {label} | {r['coordinates'] + 1} | {step_ms:.2f} | {us[name]:.1f} | {es / us[name]:.1f} | "
                     f"{proj[key]:.1f} |")
    if FIXED in ms:  # results before the fixed cost was timed have no such row
        blocks = len(r["coordinates_per_block"])
        lines.append(f"| zoracle's step on one coordinate a block (what a step costs whatever its coordinates) | "
                     f"{blocks + 1} | {ms[FIXED]:.2f} | - | - | - |")
    lines.append(f"| `zoracle-es` (`TorchOracle.batch`) | 101 | {ms['zoracle-es']:.2f} | {es:.1f} | 1.0 | 1.0 |")
    lines.append(f"| the loss alone, on the step's {32 * r['coordinates']:,} rows | - | {ms['loss alone']:.2f} | - | - | - |")
    if "loss alone, rows" in ms:  # results before the class-major loss timed only the row layout
        lines.append(f"| the same loss in the row layout | - | {ms['loss alone, rows']:.2f} | - | - | - |")
    if setup is not None:
        lines.append(f"| the hand-written step's set-up, once a mask | - | {setup:.2f} | - | - | - |")
    if r.get("compiled"):
        c = r["compiled"]
        lines.append(f"| the hand-written step through `torch.compile` (compiled once in {c['compile_s']:.1f} s; "
                     f"differs from it by at most {c['max_abs_diff_vs_eager']:.2g}) | {r['coordinates'] + 1} | "
                     f"{ms[COMPILED]:.2f} | - | - | - |")
    return "\n".join(lines) + (f"\n\nZO-GraSP once: {r['zo_grasp_s']:.2f} s. A 150,000-query run: {proj['steps']} steps "
                                f"and ZO-GraSP against {proj['zoracle-es_s']:.1f} s of `zoracle-es`; by hand without the "
                                f"loss's time: {proj['es_over_hand_without_loss']:.1f}x. Check: the hand-written estimate "
                                f"differs from zoracle's by at most {r['check_max_abs_diff']:.2g} (allowed "
                                f"{r['check_allowed']:.2g}; largest partial {r['check_largest_partial']:.2g})."
                                + (f" Coordinates per block (the mask: {r['mask']}): {r['coordinates_per_block']}."
                                   if "mask" in r else "")
                                + (" Torch calls a step (operators called from Python, attribute reads left out): "
                                   f"zoracle's {r['torch_calls']['zoracle']}, on one coordinate a block "
                                   f"{r['torch_calls'][FIXED]}, by hand {r['torch_calls']['by hand']}. The fixed "
                                   "step's by part: " + ", ".join(f"{k} {v}" for k, v in r["torch_calls_by_part"].items())
                                   + " (`coordinate_losses` on no coordinate, and on each block's first weight)."
                                   if "torch_calls" in r else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds, best kept (default 5)")
    p.add_argument("--steps", type=int, default=60, help="steps of each method a round (default 60)")
    p.add_argument("--out", default=None, metavar="JSON", help="also save the result here")
    p.add_argument("--report", default=None, metavar="JSON", help="only print the table of a saved result")
    p.add_argument("--root", default=None, help="a zoracle checkout whose step to time instead of the installed one "
                   "(the hand-written step and the loss are this file's)")
    p.add_argument("--compiled", action="store_true",
                   help="also time the hand-written step through torch.compile (needs a C++ compiler; compiles once)")
    p.add_argument("--mask", choices=("layers", "study"), default="layers",
                   help="layers: 10%% of every weight layer, biases dense (default); study: the first mask of the "
                   "study's demo-recipe run (ZO-GraSP's layer ratios)")
    a = p.parse_args(argv)
    if a.report:
        if not os.path.isfile(a.report):
            p.error(f"--report: no such results file: {a.report}")
        with open(a.report) as f:
            print(table(json.load(f)))
        return 0
    if a.rounds < 1 or a.steps < 1:
        p.error("--rounds and --steps must be at least 1")
    if a.out is not None:  # before the rounds, not after them
        from zoracle.cli import _writable

        why = _writable(a.out, "file")
        if why:
            p.error(f"--out {a.out}: cannot write there ({why})")
    r = run(a.rounds, a.steps, a.root, a.mask, a.compiled)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(r, f)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
