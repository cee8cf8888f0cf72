"""Checks that name why a training run does not learn, read from what the run computes anyway.

``train`` keeps them to the run's first steps (an estimate's zeros per block, the params
before the first updates) and to its error path (a diverged run queries its loss twice at one
point: a loss that answers differently is noise, not only a learning rate too large).
"""
from __future__ import annotations

import numpy as np

from ._backend import namespace, to_numpy
from ._masks import _slices

#: steps a block is watched before its estimates count as "always exactly 0" (a few minibatches)
WATCH_STEPS = 3


def named_blocks(oracle, d: int) -> list:
    """``(name, slice)`` per block of the oracle's own layout (``param_info``, else ``blocks``),
    or ``[]`` where it declares none or none that reads as one: a dense run does not require a layout,
    so what this cannot read only turns the per-block check off."""
    for attr in ("param_info", "blocks"):
        found = getattr(oracle, attr, None)
        if found is None or isinstance(found, (str, bytes)):
            continue
        try:
            found = list(found)
            slices = _slices(found)
        except Exception:  # no layout (a simulator's block count): nothing to name, no error to raise
            return []
        if len(found) < 2 or any(s.stop > d for s in slices):
            return []
        return [(getattr(b, "name", None) or f"params[{s.start}:{s.stop}]", s) for b, s in zip(found, slices)]
    return []


class BlockWatch:
    """Which blocks a dense CGE run's estimates left exactly 0 at every step watched: the loss
    does not change with them over ``mu`` (dead ReLUs before them, a layer the forward pass does not
    use, a loss that detaches them, or a float32 loss that rounds their changes away)."""

    def __init__(self, blocks: list):
        self.names = [n for n, _ in blocks]
        self.starts = np.array([s.start for _, s in blocks], dtype=np.int64)
        self.stops = np.array([s.stop for _, s in blocks], dtype=np.int64)
        self.moved = np.zeros(len(blocks), dtype=bool)
        self.steps = 0

    @property
    def done(self) -> bool:
        return bool(self.moved.all())

    def see(self, grad) -> None:
        """One step's estimate: a block moves when any of its entries is nonzero."""
        nz = np.concatenate([[0], np.cumsum(to_numpy(grad) != 0)])  # (one O(d) pass, one transfer from a GPU)
        self.moved |= nz[self.stops] > nz[self.starts]
        self.steps += 1

    def dead(self) -> list:
        """Names of the blocks never moved, once enough steps were watched and some block moved
        (an estimate that is 0 everywhere is the whole-epoch warning's case)."""
        if self.steps < WATCH_STEPS or not self.moved.any():
            return []
        return [n for n, m in zip(self.names, self.moved) if not m]


def dead_blocks_text(names: list, steps: int, mu: float) -> str:
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return (f"train: the gradient estimates of {shown} were exactly 0 at each of the first {steps} steps: the loss "
            f"did not change when they moved by mu = {mu:g}, so they are not trained and their queries are spent "
            "for nothing. Usual causes: ReLUs that are dead for every input before them (a large negative bias, "
            "a bad input scale), a layer the forward pass does not use or detaches (.detach(), torch.no_grad()), "
            "a loss computed from other outputs, or a float32 loss that rounds their changes away (raise mu). "
            "Fix the model, or pass params without these blocks")


class StillWatch:
    """Whether the params stayed bit for bit where they started though the estimates were nonzero and
    the learning rate > 0: every update ``lr * g`` was below half the params' float spacing (a
    learning rate far too small for their dtype, or an optimizer that returns its input)."""

    def __init__(self, params):
        self.start = params.copy()  # (an own optimizer may write into the params it was given)
        self.pushed = False  # a step with lr > 0 and a nonzero estimate
        self.lr = 0.0

    def see(self, grad, lr: float) -> None:
        if not self.pushed and lr > 0 and bool(namespace(grad).any(grad)):  # (read until the first such step)
            self.pushed, self.lr = True, lr

    def still(self, params) -> bool:
        xp = namespace(params)
        return self.pushed and bool(xp.all(params == self.start))


def still_text(epoch: int, lr: float, params) -> str:
    p = to_numpy(params)
    scale = float(np.max(np.abs(p))) if p.size else 0.0
    return (f"train: the params did not change over epoch {epoch}, though the gradient estimates were nonzero and "
            f"lr > 0 (lr was {lr:g}): each update lr * grad was below half the float spacing of the params "
            f"({p.dtype}, max|params| = {scale:.3g}), so it rounded away. Raise the learning rate by orders of "
            "magnitude (or use zo.adam, whose steps are about lr in every coordinate); an own optimizer must "
            "return the updated params")


def noise_note(loss, point) -> str:
    """For a diverged run's message: two calls of the step's loss at one point. A loss that answers
    differently draws its own noise or minibatch at each call, which CGE divides by mu."""
    try:
        a, b = float(loss(point)), float(loss(point))
    except Exception:  # the run is failing anyway: the divergence is the error to see, not this probe's
        return ""
    # (a GPU's or a thread pool's sums in another order differ by a few roundings: that is no noise)
    if not (np.isfinite(a) and np.isfinite(b)) or abs(a - b) <= 1e-4 * max(abs(a), abs(b)):
        return ""
    return (f". The loss is not deterministic: two calls at the same params gave {a:.6g} and {b:.6g}, and each "
            "CGE difference carries that noise divided by mu; a loss that draws its own minibatch or noise at "
            "every call needs it fixed per step: pass the data as `batches` (or seeds, see 'Noisy black boxes' "
            "in docs/training.md), and check the oracle with zoracle.testing.check_oracle")
