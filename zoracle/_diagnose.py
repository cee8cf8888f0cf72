"""Checks that name why a training run does not learn, read from what the run computes anyway.

``train`` keeps them to the run's first steps (an estimate's zeros per block, the params
before the first updates) and to its error path (a diverged run queries its loss twice at one
point: a loss that answers differently is noise, not only a learning rate too large; one that
answers alike has its fast paths asked there: a ``batch`` computing another loss than the plain
call moves every difference).
"""
from __future__ import annotations

import numpy as np

from ._backend import namespace, real_numpy, to_numpy
from ._errors import told
from ._masks import _slices
from ._oracle import loss_type

#: steps a block is watched before its estimates count as "always 0" (a few minibatches)
WATCH_STEPS = 3


def beyond_rounding(grad, rounding: float = 0.0):
    """Which entries of the estimate ``grad`` are nonzero beyond the losses' rounding: ``|grad| > rounding``
    (a :class:`~zoracle.GradientEstimate`'s ``_rounding``: their loss differences more than a few units of
    the loss's last place), ``grad != 0`` where ``rounding`` is 0 (not judged). Whether a difference rounds
    to exactly 0 or to a few units depends on the CPU (its vector width, its summation order): judged so,
    the checks below say the same on any. On the estimate's backend, one O(d) pass."""
    if not rounding:
        return grad != 0
    return namespace(grad).abs(grad) > rounding


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
    """Which blocks a dense CGE run's estimates left 0 at every step watched, to within the losses'
    rounding (:func:`beyond_rounding`): the loss does not change with them over ``mu`` (dead ReLUs
    before them, a layer the forward pass does not use, a loss that detaches them, or a float32 loss
    that rounds their changes away)."""

    def __init__(self, blocks: list):
        self.names = [n for n, _ in blocks]
        self.starts = np.array([s.start for _, s in blocks], dtype=np.int64)
        self.stops = np.array([s.stop for _, s in blocks], dtype=np.int64)
        self.moved = np.zeros(len(blocks), dtype=bool)
        self.steps = 0

    @property
    def done(self) -> bool:
        return bool(self.moved.all())

    def see(self, grad, rounding: float = 0.0) -> None:
        """One step's estimate (its ``_rounding``): a block moves when any of its entries is nonzero beyond
        the losses' rounding."""
        # (one O(d) pass, one transfer of d booleans from a GPU)
        nz = np.concatenate([[0], np.cumsum(to_numpy(beyond_rounding(grad, rounding)))])
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
    return (f"train: the gradient estimates of {shown} were 0 to within the loss's rounding at each of the first "
            f"{steps} steps: the loss did not change when they moved by mu = {mu:g} (its differences were 0 or a few "
            "units of its last place, which a CPU's rounding alone makes), so they are not trained and their "
            "queries are spent for nothing. Usual causes: ReLUs that are dead for every input before them (a large "
            "negative bias, "
            "a bad input scale), a layer the forward pass does not use or detaches (.detach(), torch.no_grad()), "
            "a loss computed from other outputs, a bias right before a BatchNorm or InstanceNorm in train mode (its "
            "mean subtraction cancels it: bias=False there), or a float32 loss that rounds their changes away "
            "(raise mu). Fix the model, or pass params without these blocks")


class StillWatch:
    """Whether the params stayed bit for bit where they started though the estimates were nonzero
    (beyond the losses' rounding: :func:`beyond_rounding`) and the learning rate > 0: every update ``lr * g`` was below half the params' float spacing (a
    learning rate far too small for their dtype, or an optimizer that returns its input). Read over
    ``WATCH_STEPS`` such steps at least (a plain oracle's epoch is one step), and on past each epoch
    whose learning rate rose (a warm-up's first updates round away in float32, its later ones not).
    ``peak``: the largest learning rate of the steps before (a resumed run's): one the schedule has
    lowered since (a cosine's last steps) rounds away as it should."""

    def __init__(self, peak: float = 0.0):
        # no copy of the params: each update is compared with the step's base point, which train
        # holds anyway (a copy kept for the run was one more d-sized array at huge d)
        self.moved = False
        self.start = None  # a copy, only for an optimizer that writes into the params it is given
        self.peak = peak
        self.pushed = 0  # steps with lr > 0 and a nonzero estimate
        self.low = None  # the learning rate of the first such step (of the last epoch that deferred)
        self.lr = 0.0  # the learning rate of the last such step
        self.epoch = None  # the epoch of the first such step

    def see(self, grad, lr: float, epoch: int, prev, params, rounding: float = 0.0) -> None:
        """One step: its estimate ``grad`` at ``lr``, the params before its update (``prev``) and after;
        ``rounding``: the estimate's ``_rounding`` (entries at or below it are 0, :func:`beyond_rounding`)."""
        if self.moved:
            return
        xp = namespace(params)
        shares = getattr(xp, "may_share_memory", None)
        if params is prev or shares is None or shares(params, prev):
            # updated in place (or the input returned): this step's change cannot be read; the watch
            # starts over from here, against a copy
            if self.start is None:
                self.start = params.copy()
                self.pushed, self.low, self.lr, self.epoch = 0, None, 0.0, None
                return
        elif not bool(xp.array_equal(prev, params)):
            self.moved = True
            self.start = None
            return
        elif self.start is None:
            # equal, in other memory: the params stayed, or an optimizer wrote into its input and returned a
            # copy (`p -= ...; return p.astype(p.dtype)`); an epoch's end compares with this step's params
            self.start = params.copy()
        # (an O(d) pass: a few steps)
        if lr > 0 and (self.pushed >= WATCH_STEPS or bool(namespace(grad).any(beyond_rounding(grad, rounding)))):
            self.pushed += 1
            if self.low is None:
                self.low, self.epoch = lr, epoch
            self.lr = lr

    def verdict(self, params):
        """At an epoch's end: ``None`` to watch on, else whether to warn that the params stayed (the
        watch ends)."""
        if self.moved:
            return False
        if self.pushed < WATCH_STEPS:
            return None
        if self.start is not None and not bool(namespace(params).array_equal(params, self.start)):
            return False
        if self.lr > self.low:  # a learning rate still rising (a warm-up): its later steps may move them
            self.low = self.lr
            return None
        return self.lr >= self.peak


def still_text(first: int, epoch: int, lr: float, params) -> str:
    p = to_numpy(params)
    scale = float(np.max(np.abs(p))) if p.size else 0.0
    over = f"epoch {epoch}" if first == epoch else f"epochs {first} to {epoch}"
    return (f"train: the params did not change over {over}, though the gradient estimates were nonzero (beyond "
            "the loss's rounding) and "
            f"lr > 0 (lr was {lr:g}): either each update lr * grad was below half the float spacing of the params "
            f"({p.dtype}, max|params| = {scale:.3g}), so it rounded away: raise the learning rate by orders of "
            "magnitude (or use zo.adam, whose steps are about lr in every coordinate); or an own optimizer "
            "returned its input (it must return the updated params) or kept them where they were (a projection "
            "onto bounds every coordinate starts on, pushed outwards)")


def noise_note(loss, point, start=None, budget=None, first=None) -> str:
    """For a diverged run's message: two calls of the step's loss at one point, then at ``start`` (the
    run's first params): a noise added to the loss drowns in a diverged loss's size (0.05 on a loss of
    1e88 at params of 1e22), where the start shows it. A loss that answers differently draws its own
    noise or minibatch at each call, which CGE divides by mu. ``budget``: the queries ``max_queries``
    leaves the run (None: no budget); these probes are counted in no ``nfev``, so none passes it
    (a paid oracle with its budget spent was asked up to 6 times more, after the run's last step).
    ``first``: the loss the run's first step read at ``start`` with this same loss (None where it
    cannot be compared: another batch, no such step): the two calls now far from it, and close to
    each other, are a reading that drifts with time (a trend, not noise)."""
    plain = None
    left = np.inf if budget is None else budget
    for at, where in ((point, ""), (start, " (the run's first)")):
        if at is None or left < 2:
            continue
        left -= 2
        try:
            a, b = float(loss(at)), float(loss(at))
        except Exception:  # the run is failing anyway: the divergence is the error to see, not this probe's
            continue
        # (a GPU's or a thread pool's sums in another order differ by a few roundings: that is no noise)
        if not (np.isfinite(a) and np.isfinite(b)):
            continue
        if at is start and first is not None and np.isfinite(first):
            moved = abs((a + b) / 2 - first)
            if moved > 1e-4 * max(abs(a), abs(b), abs(first)) and moved > 100 * abs(a - b):
                return _drift_text(first, a, b)
        if abs(a - b) > 1e-4 * max(abs(a), abs(b)):
            break
        plain = a if at is point else plain
    else:
        return _fast_path_note(loss, point, plain, left) if plain is not None else ""
    # (an AskTell's losses were told for one point asked twice: no oracle to check)
    calls, check, fix = told(
        ("two calls", ", and check the oracle with zoracle.testing.check_oracle", NOISE_FIX),
        ("two losses told", "", NOISE_FIX.replace("inside the oracle", "before telling each loss")))
    return (f"{NOISY}: {calls} at the same params{where} gave {a:.6g} and {b:.6g}, and "
            "each CGE difference carries that noise divided by mu; a loss that draws its own minibatch or noise at "
            "every call needs it fixed per step: pass the data as `batches` (or seeds, see 'Noisy black boxes' "
            f"in docs/training.md); where it cannot be fixed (a hardware reading), {fix}{check}")


#: the fix for a reading that drifts with time, in each message that finds one (a diverged run's, the fast-path
#: check's); its section named as tests/test_docs_navigation.py finds it
DRIFT_FIX = ("averaging readings does not remove it: read a fixed reference point beside each query and return the "
             "difference (the ratio, for a drifting gain), or raise mu (docs/training.md, 'Drift, spikes and hangs')")


#: the fix for a loss that answers differently at one point and cannot be seeded (a hardware reading), in each
#: message that finds one
NOISE_FIX = ("average repeated readings inside the oracle (noise over the root of their number) or raise mu towards "
             "2 * sqrt(noise / curvature) (noise over mu falls, a curved loss's bias grows as mu)")

#: how noise_note's text opens when it finds the loss noisy, or drifting: cause_first reads them
NOISY, DRIFTS = ". The loss is not deterministic", ". The loss drifts with time"


def cause_first(note: str, fix: str) -> str:
    """A diverged run's advice ``fix`` (lower the learning rate, ...), led by the fix for the cause that
    ``note`` (noise_note's text) found: a noisy or drifting loss diverges at any learning rate, a lower
    one only delaying it."""
    if note.startswith(DRIFTS):
        return f"remove the loss's drift (a reference reading beside each query, or a larger mu: below), or {fix}"
    if note.startswith(NOISY):
        return f"fix the loss's noise (a seed per step, averaged readings or a larger mu: below), or {fix}"
    return fix


def _drift_text(first: float, a: float, b: float) -> str:
    """A diverged run's loss at its first params: read ``first`` at the run's first step, ``a`` and ``b``
    now (two calls in a row): far from ``first`` and close to each other, a drift, which averaging does
    not remove (the advice for noise would mislead)."""
    return (f"{DRIFTS}: at the run's first params it read {first:.6g} at the first step "
            f"and {a:.6g}, then {b:.6g} now, two calls in a row {abs(a - b):.3g} apart; a reading that changes "
            "between queries (a sensor warming up, a gain drifting) moves each CGE difference by the drift between "
            "its two queries over mu (forward: more for each later coordinate), whatever the learning rate, and "
            + DRIFT_FIX)


def _fast_path_note(loss, point, plain: float, left=np.inf) -> str:
    """For a diverged run's message: the loss's fast paths (``batch``, ``coordinate_losses`` at a step
    of 0) at the step's base point against its plain call there, ``plain``. The estimate takes the
    base loss from the plain call and the perturbed ones from a fast path: one that computes another
    loss (a mean where the call sums, another order) moves every difference by the gap over mu."""
    probes = []
    if callable(getattr(loss, "batch", None)):
        probes.append(("batch", "batch(params[None])", lambda: loss.batch(point[None, :].copy())))
    if callable(getattr(loss, "coordinate_losses", None)):
        probes.append(("coordinate_losses", "coordinate_losses(params, [0], 0.0)",
                       lambda: loss.coordinate_losses(point.copy(), np.zeros(1, dtype=np.int64), 0.0)))
    for method, call, probe in probes[:max(0, int(min(left, len(probes))))]:  # one query each
        try:
            got = probe()
            kind = loss_type(got)
            values = real_numpy(got, np.float64).reshape(-1)
            fast = float(values[0]) if values.size == 1 else np.nan
        except Exception:  # the run is failing anyway: the divergence is the error to see, not this probe's
            continue
        if np.isfinite(fast) and abs(fast - plain) > 1e-4 * max(abs(fast), abs(plain)):
            return (f". The oracle's `{method}` disagrees with its plain call at the step's base point: "
                    f"{call} gave {fast:.6g} ({kind}), the plain call {plain:.6g}; the estimate takes the base loss "
                    f"from the plain call and the perturbed ones from `{method}`, so each difference carries the gap "
                    f"divided by mu: make `{method}` compute the plain call's loss (the same reduction, minibatch "
                    "and order, unrounded), and check the oracle with zoracle.testing.check_oracle")
    return ""


#: the steps a run's history needs before its end is compared with its start
ENDED_MIN_STEPS = 10
#: the first steps whose losses' step-to-step changes measure the loss's noise (up to a fifth of the
#: run's), and the last steps whose median is the run's end (a fifth of a shorter run's, but 3 at least:
#: the median of 2 is their mean, which one spike at a 10-step run's last step moved 50 times)
ENDED_HEAD, ENDED_TAIL, ENDED_TAIL_MIN = 20, 5, 3
#: how far above its start a run's end warns: ``end - start > ENDED_RISE * scale`` (for a positive
#: loss that is steady from step to step: the end at 10 times the start or more)
ENDED_RISE = 9.0


def ended_above(steps_hist, first_step: int):
    """Whether a run ended far above where it started, read from its steps' losses: ``(start, end,
    tail)``, the loss of its first step and the median of the losses of its last ``tail`` steps, or
    None. The end is a median: one reading that spikes (100 times the loss) moves a mean of 5
    twentyfold, a median not at all; they are the params the run returns (a run a spike threw far
    climbs back down and is thrown again: its last 20 steps' median read 100 where it returned
    params at 3.5e24). The start is the first step alone, the params the run was given: a drift or
    a learning rate too large throws the params from the first update on (a warming sensor's second
    step read 467, its first 12.5). The end warns where it lies more than ``ENDED_RISE`` times
    ``scale`` above the start, ``scale`` being the larger of ``|start|`` and the mean change from one
    step's loss to the next over the first steps: a minibatch loss's noise (a first batch that read
    far below the others is no start to compare with), or the fall of a run's first steps. A mean,
    not a median: one sample's loss near a solution is mostly about 0 and now and then about 1 (the
    median change made a run whose first sample read 6e-9 warn at 0.02, its loss over all the data
    unchanged); the largest change left out: a learning rate too large, or a spike, throws the
    params in one step, which a short run's few first changes would count as noise. None where the
    history holds fewer than ``ENDED_MIN_STEPS`` steps, does not begin at step 0, or this run took
    no step (a resumed run that had ended: the run that ended it was told)."""
    n = len(steps_hist)
    if n < ENDED_MIN_STEPS or steps_hist[0]["step"] != 0 or steps_hist[-1]["step"] < first_step:
        return None
    head = np.array([float(r["loss"]) for r in steps_hist[:min(ENDED_HEAD, n // 5) + 1]])
    tail = np.array([float(r["loss"]) for r in steps_hist[-min(ENDED_TAIL, max(ENDED_TAIL_MIN, n // 5)):]])
    if not (np.isfinite(head).all() and np.isfinite(tail).all()):
        return None
    start, end = float(head[0]), float(np.median(tail))
    changes = np.sort(np.abs(np.diff(head)))[:-1]  # (the largest left out: one throw is no noise)
    scale = max(abs(start), float(np.mean(changes)) if changes.size else 0.0)
    if scale > 0 and end - start > ENDED_RISE * scale:
        return start, end, len(tail)
    return None


def ended_above_text(start: float, end: float, tail: int, n: int, lrs) -> str:
    """The warning of a run that ended far above where it started (:func:`ended_above`); ``n`` its
    steps, ``lrs`` their learning rates."""
    top = max(lrs)
    lr = f"lr was {top:g}" if min(lrs) == top else f"lr reached {top:g}"
    reading, inside = told(("a reading", "inside the oracle"), ("a value told", "before telling it"))
    return (f"train: the run ended far above where it started: the median loss of its last {tail} steps is "
            f"{end:.4g}, against {start:.4g} at its first step (of {n} steps); the params it returns are its "
            f"last step's. Likely causes, in this order: a learning rate too large ({lr}): lower it tenfold; "
            f"{reading} that now and then spikes (one in hundreds far off throws an SGD step far away): take "
            f"the median of three readings {inside}, or train with zo.sign_sgd, or RGE with shaping='ranks'; "
            f"{reading} that drifts with time: read a fixed reference point beside each query and return the "
            "difference, or raise mu; noise over mu: average readings or raise mu; a start at the optimum, "
            "where forward differences' bias (of order mu) holds the run above it: a smaller mu or "
            "scheme='central'. See 'Drift, spikes and hangs' in docs/training.md (a loss meant to rise over the "
            "run, a curriculum's, aside)")
