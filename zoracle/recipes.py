"""Ready-made :func:`zoracle.train` settings.

A recipe is a function that returns ``train``'s keyword arguments, so every choice it makes
stays visible and can be overridden::

    kw = zo.recipes.short_budget(oracle, params, budget=30_000, batches=batches)
    result = zo.train(oracle, params, batches=batches, **kw)

The paper's recipe (DeepZero, ICLR 2024: 90% sparsity, masks redrawn every 5 epochs, SGD
with momentum, lr 0.1 after 3 warm-up epochs) is the one for budgets of many queries per weight;
``zoracle demo`` runs it scaled to digits, with masks redrawn every epoch and peak lr 0.3 after
one warm-up epoch (``--mask-interval``, ``--lr``).
"""

from __future__ import annotations

import itertools
import math
import numbers
from typing import Any

import numpy as np

from ._backend import to_numpy
from ._bounds import as_box
from ._errors import ArgumentError, config_hint, short_repr, warn
from ._estimators import CGE, float64_values, validate_params
from ._optim import adam, scaled
from ._oracle import capabilities
from ._pruning import grasp_queries, split_blocks
from ._schedules import _count, _positive, cosine_schedule
from ._epochs import _steps_per_epoch
from ._train_checks import _check_batches, _check_layout, _check_size, _check_steps_per_epoch, _resolve_blocks

__all__ = ["SHORT_BUDGET_KINDS", "FILL_FROM_STEPS", "LR_SCALE", "LR_MAX", "LR_MIN", "COORDINATES", "WIDE_COORDINATES",
           "WIDE_FROM", "default_lr", "default_coordinates", "short_budget", "layer_scales"]

SHORT_BUDGET_KINDS = ("conv", "linear", "bias")
"""The parameter kinds ``short_budget`` samples coordinates from by default (biases join the
sparse set: dense, they alone could outspend a step)."""
FILL_FROM_STEPS = 1_400
"""``short_budget`` fills small empty blocks by default from this many steps on (measured in
docs/peers.md)."""
LR_SCALE = 0.085
"""``short_budget``'s default peak learning rate is ``LR_SCALE / sqrt(q)`` for ``q`` queries
per sampled weight, kept within ``[LR_MIN, LR_MAX]`` (:func:`default_lr`; measured in
docs/peers.md)."""
LR_MAX = 0.1
"""The largest default peak learning rate of ``short_budget`` (:func:`default_lr`)."""
LR_MIN = 0.03
"""The smallest default peak learning rate of ``short_budget`` (:func:`default_lr`)."""
COORDINATES = 50
"""``short_budget``'s default coordinates a step, below ``WIDE_FROM`` queries per sampled
weight (:func:`default_coordinates`; measured in docs/peers.md)."""
WIDE_COORDINATES = 100
"""``short_budget``'s default coordinates a step from ``WIDE_FROM`` queries per sampled weight
on (:func:`default_coordinates`)."""
WIDE_FROM = 40
"""The queries per sampled weight from which ``short_budget`` uses ``WIDE_COORDINATES``."""


def default_lr(budget: int, sampled: int) -> float:
    """``short_budget``'s default peak learning rate for ``budget`` queries and ``sampled``
    weights: ``LR_SCALE / sqrt(budget / sampled)`` (0.085 over the root of the queries per
    weight), kept within ``[LR_MIN, LR_MAX]`` (0.03 and 0.1), to four significant digits. So
    0.1 up to 0.72 queries per weight, 0.06 at 2, 0.04 at 4.5 and 0.03 from 8.03 on.

    The more often a weight is measured, the smaller each of its steps: with Adam and no
    momentum every measurement moves a weight by about the learning rate, in a direction whose
    noise adds up over its measurements like a random walk's, and a rate that falls as one over
    the square root of the measurements keeps that noise level. Measured in ``docs/peers.md``
    ("The rate against the queries per weight"): at d = 12-13k (1.4-6.5 queries per weight,
    twelve seeds a point) the rule's rate has the best validation mean of the four rates tried
    (0.03, 0.055, 0.1 and its own) at 9 of 14 points and is at most 1.7 points behind
    elsewhere, where 0.1 and 0.03 are each 6-7 points behind the best somewhere; at the largest
    size and 150,000 queries (1.2-1.4 queries per weight) it is ahead of 0.1 and 0.055 on both
    data sets. At d = 12-13k and 30,000 queries (0.054-0.057, twelve seeds each against the
    three best peers) it has MNIST-1D ahead of every peer (45.6% against 40.7%; 38.2% at the
    0.03 the study had run there) and digits behind RGE with rank shaping (83.8% against
    86.8%). The bounds are where the fall stops paying: at 0.25 queries per weight 0.055 is
    7-8 points worse than 0.1; at 79, 0.01 is level on digits and 10 points worse than 0.03 on
    MNIST-1D.

    >>> default_lr(30_000, 121_258), default_lr(150_000, 121_258), default_lr(26_516, 13_258), default_lr(150_000, 1_898)
    (0.1, 0.07642, 0.0601, 0.03)
    """
    q = _count("budget", budget, 1) / _count("sampled", sampled, 1)
    return float(f"{min(LR_MAX, max(LR_MIN, LR_SCALE / math.sqrt(q))):.4g}")


def default_coordinates(budget: int, sampled: int) -> int:
    """``short_budget``'s default coordinates a step for ``budget`` queries and ``sampled`` weights:
    ``COORDINATES`` (50), and ``WIDE_COORDINATES`` (100) from ``WIDE_FROM`` (40) queries per
    weight on; never more than ``sampled``.

    Where a weight is measured many times, fewer steps that each measure more weights do
    better. Measured in ``docs/peers-study.md`` ("More coordinates a step at 79 queries per weight"),
    twelve seeds a point: at d of about 2k and 150,000 queries (79 queries per weight) 100 a
    step has 96.0% on digits and 66.4% on MNIST-1D, against 93.4% and 62.4% with 50, which
    puts it level with SNES on digits (95.3%) and ahead on MNIST-1D (61.7%, rank test
    p = 0.004); 200 and 400 do worse on MNIST-1D. At 16 queries per weight (d of about 2k,
    30,000 queries) and at 11-12 (d = 12-13k, 150,000 queries) 100 is level with 50 on
    validation, and behind on digits' test at 11-12 (91.4% against 93.6%); at 0.25-2.3 more
    a step is worse, and fewer (25, 12) is worse at 2.3. The line: at 31.6 queries per weight
    100 is level with 50 on validation, at 52.7 ahead on both data sets (d of about 2k).

    >>> default_coordinates(150_000, 121_258), default_coordinates(30_000, 1_898), default_coordinates(150_000, 1_898)
    (50, 50, 100)
    >>> default_coordinates(10_000, 60)  # a small model: every weight a step
    60
    """
    q = _count("budget", budget, 1) / _count("sampled", sampled, 1)
    return int(min(sampled, WIDE_COORDINATES if q >= WIDE_FROM else COORDINATES))


def _check_queries(oracle) -> int:
    """The queries ``train``'s check of a fast path adds at most to a run that passes it
    (docs/concepts.md): one where the oracle has ``batch`` or ``coordinate_losses``, and one a block
    of the oracle's own ``blocks`` (those its ``prefix`` / ``suffix`` split at, not the ``blocks``
    passed for ZO-GraSP's layout) where it has ``prefix`` / ``suffix``, when it does not check them
    itself (a data oracle's own methods: what its ``bind`` returns is not known before a batch is
    bound, and is not bound here)."""
    if oracle is None or getattr(oracle, "fast_paths_checked", False) is True:
        return 0
    caps = capabilities(oracle)
    return max(1, len(oracle.blocks)) if caps.split else int(caps.batch or caps.coordinate)


def short_budget(oracle: Any, params: Any, budget: int, *, batches: Any = None, steps_per_epoch: int | None = None,
                 lr: float | None = None, coordinates: int | None = None, b1: float = 0.0, mu: float = 5e-3,
                 weight_decay: float = 5e-4, grasp_directions: int = 192, blocks: Any = None,
                 layer_steps: float = 0.0, fill_small_blocks: bool | None = None, bounds: Any = None) -> dict[str, Any]:
    r"""DeepZero for short budgets (measured at 0.25-79 queries per weight): ``train`` keyword arguments.

    Sparse CGE on ``coordinates`` weights a step (biases included in the sparse set), spread
    over the layers by ZO-GraSP's keep ratios, with a fresh random mask every step
    (``mask_shuffle_interval="step"``) and Adam without momentum (``b1=0``: each measured
    partial derivative moves its weight at once, divided by the root of that weight's running
    mean square), on a cosine schedule with one epoch of warm-up. A weight measured for the
    first time at step ``t`` moves by ``lr * sqrt((1 - b2**t) / (1 - b2))`` before the
    schedule (``lr`` at the first step, about ``31 lr`` at step 3,000), since Adam's bias
    correction counts the steps of all weights. The run takes as many whole steps as fit in
    ``budget`` after ZO-GraSP (and after the queries of ``train``'s check of a fast path, one,
    or one in each of the oracle's own ``blocks`` for ``prefix`` / ``suffix``, for an oracle
    with ``batch``, ``coordinate_losses`` or ``prefix`` / ``suffix`` that does not
    set ``fast_paths_checked = True``, as ``TorchOracle`` does), and ``max_queries`` stops it
    there: it never spends more than ``budget``, unless that check warns (a plain call that
    answers twice differently costs one query more, a refused fast path its step's queries
    again) or a data oracle's ``bind`` returns oracles with fast paths that the data oracle
    itself lacks (their check's query is not reserved: pass ``budget - 1``). From
    ``FILL_FROM_STEPS`` (1,400) steps on (71,786 queries at 50 coordinates a step, when every
    block is sampled), every small block that ZO-GraSP's split
    leaves empty gets one coordinate a step (``fill_small_blocks``).

    Measured in ``docs/peers.md`` (30,000 queries): at d = 110-121k, over 6 seeds, it has the
    best mean on MNIST-1D (45.9% against 40.6% for the best evolution strategy, with
    overlapping ranges) and is level with the best on digits (83.8% against 84.2%), where
    the paper's recipe stays at chance; at d = 2k (16 queries per weight, 3 seeds) it is level
    with the best. At 150,000 queries and d = 110-121k (1.2-1.4 queries per weight), with SNES
    (6 seeds) and RGE with rank shaping (3 seeds) tuned at that budget, it is ahead of both
    on MNIST-1D by more than the seed spread (61.1% against SNES 45.5%) and behind SNES on
    digits (92.2% against 94.3%, overlapping ranges). Rerun on another machine under three CPU
    instruction sets (which change the rounding, and so the run, as a new seed does), it leads
    SNES on MNIST-1D by 10.8-15.0 points in the mean, but over twelve seeds one of its seeds
    is below every SNES seed, and is level on digits (91.7-94.1% against 93.3%). Those runs
    left the small blocks unfilled. Filled (the default at that budget since 2026-12-03),
    every MNIST-1D seed is above every SNES seed on both machines it ran on (63.0% and 63.7%
    against 46.0%), and digits stays level with SNES (91.5% and 90.8% against 93.3%). At the
    default learning rate since (:func:`default_lr`: 0.0764 and 0.0727 there, where those
    runs took 0.1), twelve seeds: 68.1% (64.1-71.8) on MNIST-1D and 92.1% (89.4-94.7) on
    digits, still level with SNES there.
    At 79 queries per weight (d of about 2k, 150,000 queries, twelve seeds) SNES led it on
    digits with 50 coordinates a step (95.3% against 93.4%) and was level on MNIST-1D; from 40
    queries per weight on it takes 100 a step (:func:`default_coordinates`): 96.0% and 66.4%
    there, level with SNES on digits and ahead on MNIST-1D. Adam's momentum (``b1=0.9``) is
    level with 50 a step there on validation (at lr 0.01 on digits, 0.03 on MNIST-1D), and
    at 11-12 queries per weight (d = 12-13k). The paper's recipe (``zoracle demo``) is made
    for far more queries per weight (the paper's budgets): at 79 it is level with 50 a step
    on digits and 19 points behind on MNIST-1D (three seeds).

    Parameters
    ----------
    oracle, params
        As for :func:`zoracle.train`; the oracle's ``param_info`` (or ``blocks``) gives the layers.
    budget : int
        Queries for the whole run, ZO-GraSP's included.
    batches, steps_per_epoch
        As for ``train``; they set the length of an epoch (the warm-up and ``epochs``).
    lr : float or None
        Peak learning rate. None (the default) is :func:`default_lr`: ``0.085 / sqrt(q)`` for
        ``q = budget / sampled weights``, within [0.03, 0.1]: 0.1 up to 0.72 queries per weight,
        0.06 at 2, 0.038 at 5 and 0.03 from 8.03 on. Measured in ``docs/peers-study.md`` ("The
        rate against the queries per weight").
    coordinates : int or None
        Weights estimated a step (the sparse set's size). None (the default) is
        :func:`default_coordinates`: 50, and 100 from 40 queries per sampled weight on.
    b1 : float
        Adam's momentum; 0.9 is Adam's usual setting: worse at about one query per weight,
        level on validation at 11-12 and at 79 (``docs/peers.md``).
    mu, weight_decay, grasp_directions
        CGE's step, AdamW's decoupled weight decay, ZO-GraSP's directions.
    blocks : optional
        As for ``train``; returned among the keyword arguments, so that the run splits as the
        plan did.
    layer_steps : float
        0 (the default) gives every weight the same step. A value ``p > 0`` multiplies each
        layer's step by ``(rms / rms_max) ** p`` (:func:`layer_scales`): ``rms`` is the RMS of
        the layer's weights in ``params``, ``rms_max`` the largest over the layers, so layers
        with small weights (wide layers, the classifier) take smaller steps. Measured in
        ``docs/peers.md``: at d = 110-121k and 150,000 queries (1.2-1.4 queries per weight, 6
        seeds) ``p = 0.5`` is ahead of the default on both data sets (digits 94.0% against
        92.2%, level with SNES's 94.3%; MNIST-1D 64.4% against 61.1%). At 30,000 queries
        (3 seeds) it is behind at d = 110-121k (83.4% against 85.6%, 44.0% against 50.3%)
        and d = 12-13k, and ahead only on digits at d = 2k. Needs ``param_info`` layer names.
    fill_small_blocks : bool or None
        True gives every block of at most ``coordinates`` weights that ZO-GraSP's split leaves
        empty one coordinate a step, taken from the block with the most
        (``train(fill_small_blocks=True)``); False keeps the split as ZO-GraSP ranks it. None
        (the default) fills when the run has at least ``FILL_FROM_STEPS`` (1,400) steps, and
        not below. Measured in ``docs/peers.md`` (12-18 seeds a point, the recipe with and
        without the fill on the same seeds): ZO-GraSP's noisy split can leave a small block
        that matters empty (the first convolution's biases in MNIST-1D seed 9, 36.8% at
        d = 110k and 150,000 queries). Filled there, MNIST-1D's worst seed is 58.4% and 57.2%
        on two machines instead of 36.8% and 39.8%, every seed above SNES's best, and digits
        is level (91.5% and 90.8% against 91.7% and 91.7%). At 1,463 steps (75,000 queries)
        and more it is level on digits at every size measured (-1.2 to +1.0 points) and level
        or ahead on MNIST-1D (+3.2 points at 110k, the worst seed 51.5% instead of 36.8%). At
        580 steps (30,000 queries) it costs digits 4.5 points at d = 13k (79.0% against 83.5%,
        18 seeds, rank test p = 0.00014) and 2.5-3.4 at 121k, and at 1,000 steps still 3.1
        and 1.6 (p = 0.012 and 0.04): hence the line. A filled run takes 4-33% more time
        through ``TorchOracle`` (d = 110-121k, 150,000 queries), mostly each filled block's
        fixed cost a step. With ``layer_steps=0.5`` as well (twelve seeds): 67.4% (61.6-72.0)
        on MNIST-1D at 150,000 queries, the best of the recipes measured there, and 91.5% on
        digits.
    bounds : optional
        A box every query must stay inside, as for ``train`` (returned among the keyword
        arguments, so pass it here, not to ``train`` as well); the plan is otherwise the one
        without it. ``train`` then runs ZO-GraSP inside the box: Rademacher directions (each
        query moves every coordinate by exactly mu), its points kept in the box shrunk by mu
        (:func:`zoracle.zo_grasp`, ``bounds``). Measured on the demo CNNs at 30,000 queries
        (twelve seeds, a box of (-10, 10) that never binds, paired with the recipe without it):
        digits d = 1,898 86.6% against 86.8% (-0.3 points, standard error 1.2), MNIST-1D
        d = 1,914 43.3% against 43.7% (-0.4, standard error 1.0); uniform ratios in its place
        (the same steps) reach 87.9% and 35.6%; ``benchmarks/recipe_bounds.py``, docs/training.md
        "Bounds".

    Returns
    -------
    dict
        ``epochs``, ``max_queries``, ``estimator``, ``optimizer``, ``sparsity``,
        ``score_kinds``, ``ratios``, ``grasp_directions`` and ``mask_shuffle_interval``
        (and ``steps_per_epoch`` when given, ``fill_small_blocks=True`` when it fills,
        ``bounds`` when given).

    Examples
    --------
    >>> import numpy as np, zoracle as zo
    >>> kw = zo.recipes.short_budget(None, np.zeros(1000), budget=5_000, steps_per_epoch=10)
    >>> kw["sparsity"], kw["epochs"], kw["mask_shuffle_interval"], kw["max_queries"]
    (0.95, 10, 'step', 4998)
    >>> kw["optimizer"].config  # 98 steps of 51 queries (50 weights and the base point); 5 queries a weight
    'adam(lr=cosine_schedule(init=0.03801, total_steps=98, warmup_steps=10, final=0.0), b1=0.0, b2=0.999, eps=1e-08, weight_decay=0.0005)'
    """
    params = validate_params(params)
    d = int(params.shape[0])
    _check_size(oracle, d)
    budget, coordinates, grasp_directions, mu, lr, weight_decay, layer_steps, steps_per_epoch = _checked_numbers(
        budget, coordinates, grasp_directions, mu, lr, b1, weight_decay, layer_steps, fill_small_blocks, steps_per_epoch)
    per_epoch = _epoch_length(batches, steps_per_epoch)

    resolved = _resolve_blocks(oracle, blocks, d)
    scored, dense = split_blocks(resolved, SHORT_BUDGET_KINDS)
    _check_layout(scored + dense, d)  # train's own check: a step's count assumes disjoint blocks within d
    n_scored = sum(s.stop - s.start for s in scored)
    if n_scored == 0:
        raise ArgumentError(f"no block has a kind in {SHORT_BUDGET_KINDS}: there are no weights to sample")
    if coordinates is None:
        coordinates = default_coordinates(budget, n_scored)
    if coordinates > n_scored:
        raise ArgumentError(f"`coordinates` is {coordinates}, but only {n_scored} weights can be sampled; "
                            f"pass coordinates <= {n_scored} (or train densely without a recipe)")
    # one block (uniform ratios) or every weight sampled (nothing to rank): no ZO-GraSP
    grasp = grasp_queries(grasp_directions) if len(scored) > 1 and coordinates < n_scored else 0
    if bounds is not None:
        as_box(bounds, d)  # (refused here, not after the plan: train reads it again)
    per_step = coordinates + (d - n_scored) + 1  # sampled weights, the dense rest, the base point
    check = _check_queries(oracle)
    if budget < grasp + check + 2 * per_step:
        raise ArgumentError(f"`budget` is {budget}, but ZO-GraSP takes {grasp} queries and a step {per_step}"
                            f"{f' (and train checks the fast path: up to {check} queries)' if check else ''}; "
                            f"pass budget >= {grasp + check + 2 * per_step} for two steps, or lower `coordinates`")
    steps = (budget - grasp - check) // per_step
    if lr is None:
        lr = default_lr(budget, n_scored)
    warm = min(per_epoch, steps - 1)
    if 10 * (steps - warm) < steps:  # an epoch longer than the run: it would end near the peak rate
        warn(f"short_budget: one epoch of warm-up is {warm} of the run's {steps} steps, so the cosine "
             "schedule hardly decays; pass a smaller steps_per_epoch, or edit kw['optimizer']",
             UserWarning, stacklevel=2)
    optimizer = adam(cosine_schedule(lr, total_steps=steps, warmup_steps=warm), b1=b1, weight_decay=weight_decay)
    if layer_steps:
        scale = layer_scales(resolved, params, power=layer_steps)
        optimizer = scaled(optimizer, scale, f"layer_steps({layer_steps}, {_describe(scale)})")
    kw = {
        "epochs": -(-steps // per_epoch),
        # (not + check: a run whose check is not made, a data oracle's plain bound ones, stops at its steps)
        "max_queries": grasp + steps * per_step,
        "estimator": CGE(mu=mu),
        "optimizer": optimizer,
        "sparsity": 1.0 - coordinates / n_scored,
        "score_kinds": SHORT_BUDGET_KINDS,
        "ratios": "zo_grasp",
        "grasp_directions": grasp_directions,
        "mask_shuffle_interval": "step",
    }
    if bounds is not None:
        kw["bounds"] = bounds
    if steps_per_epoch is not None:
        kw["steps_per_epoch"] = steps_per_epoch
    if blocks is not None:  # the run must split as the plan did (its queries a step, its budget)
        kw["blocks"] = resolved  # as resolved (a generator would be spent)
    if fill_small_blocks is None:  # (one block: no split to fill; train fills ZO-GraSP's split only)
        fill_small_blocks = steps >= FILL_FROM_STEPS and len(scored) > 1
    if fill_small_blocks:
        kw["fill_small_blocks"] = True
    return kw


def _checked_numbers(budget, coordinates, grasp_directions, mu, lr, b1, weight_decay, layer_steps, fill_small_blocks,
                     steps_per_epoch) -> tuple:
    """:func:`short_budget`'s numbers and flags refused as it documents them, in its order; the numbers
    as ``(budget, coordinates, grasp_directions, mu, lr, weight_decay, layer_steps, steps_per_epoch)``."""
    budget = _count("budget", budget, 1)
    if coordinates is not None:
        coordinates = _count("coordinates", coordinates, 1)
    grasp_directions = _count("grasp_directions", grasp_directions, 1)
    mu = _positive("mu", mu)
    if lr is not None:
        lr = _positive("lr", lr)
    if isinstance(b1, bool) or not isinstance(b1, numbers.Real) or not 0 <= b1 < 1:
        raise ArgumentError(f"`b1` must be in [0, 1), got {short_repr(b1)}"
                            f"{config_hint('b1', b1, 'number', lambda v: 0 <= v < 1)}")
    weight_decay = _positive("weight_decay", weight_decay, allow_zero=True)
    layer_steps = _positive("layer_steps", layer_steps, allow_zero=True)
    if fill_small_blocks is not None and not isinstance(fill_small_blocks, (bool, np.bool_)):
        raise ArgumentError(f"`fill_small_blocks` must be True, False or None (filled from {FILL_FROM_STEPS:,} steps "
                            f"on), got {fill_small_blocks!r}"
                            f"{config_hint('fill_small_blocks', fill_small_blocks, 'flag')}")
    if steps_per_epoch is not None:
        steps_per_epoch = _count("steps_per_epoch", steps_per_epoch, 1)
    return budget, coordinates, grasp_directions, mu, lr, weight_decay, layer_steps, steps_per_epoch


def _epoch_length(batches, steps_per_epoch) -> int:
    """The steps of an epoch of ``batches`` as ``train`` takes them, refusing what ``train`` would refuse
    (first) and a callable that gives fewer batches than ``steps_per_epoch``."""
    _check_batches(batches)  # what train refuses (an iterator, more steps an epoch than batches), refused here first
    _check_steps_per_epoch(batches, steps_per_epoch)
    per_epoch = _steps_per_epoch(batches, steps_per_epoch)
    if per_epoch is None:
        raise ArgumentError("`batches` has no len(): pass `steps_per_epoch` too, so the recipe knows an epoch's length")
    if per_epoch < 1:
        raise ArgumentError("`batches` is empty: an epoch needs at least one batch")
    if callable(batches) and steps_per_epoch is not None:  # train takes what the callable gives, at most this
        # at most steps_per_epoch of them, as train draws: an endless generator never ends
        got = batches(0)
        try:
            given = len(list(itertools.islice(iter(got), steps_per_epoch)))
        except TypeError:  # as train says it
            raise ArgumentError(f"`batches` is a callable epoch -> batches, but for epoch 0 it returned "
                                f"{type(got).__name__}, not a sequence of batches") from None
        if given < steps_per_epoch:
            raise ArgumentError(f"`batches(0)` gives {given} batches, fewer than `steps_per_epoch`={steps_per_epoch}: "
                                f"the run would take {given} steps an epoch and stop far short of the budget, its "
                                f"schedule undecayed; pass steps_per_epoch={given}")
    return per_epoch


def _layer(name: str) -> str:
    """``"6.weight"`` and ``"6.bias"`` -> ``"6"``: a layer's parameters share its step scale."""
    head, _, tail = name.rpartition(".")
    return head if tail in ("weight", "bias") else name


_CHOICES = {"ref": ("largest", "widest"), "layers": ("all", "last")}


def layer_scales(blocks, params, power: float = 0.5, ref: str = "largest", layers: str = "all"):
    r"""Step multipliers per coordinate, one per layer: ``(rms / rms_ref) ** power``.

    ``rms`` is the RMS of a layer's weights (blocks of kind ``conv`` or ``linear``) in
    ``params``; its bias shares it. ``rms_ref`` is the largest such RMS (``ref="largest"``:
    every multiplier is at most 1) or that of the layer with the most weights
    (``"widest"``). ``layers="last"`` scales only the last layer. Every other block keeps 1,
    and so does a layer whose record has ``read=False`` (a ``TorchOracle`` parameter the
    forward does not read).

    Parameters
    ----------
    blocks
        Records with ``name``, ``slice`` and ``kind``, such as ``TorchOracle.param_info``.
    params
        Flat parameters; the RMS is taken at these values (the start of training).
    power : float
        The exponent (default 0.5).
    ref : {"largest", "widest"}
        The reference layer of ``rms_ref``.
    layers : {"all", "last"}
        The layers scaled.

    Examples
    --------
    >>> import numpy as np
    >>> from collections import namedtuple
    >>> P = namedtuple("P", "name slice shape kind")
    >>> info = [P("0.weight", slice(0, 2), (2,), "linear"), P("0.bias", slice(2, 3), (1,), "bias"),
    ...         P("1.weight", slice(3, 5), (2,), "linear")]
    >>> layer_scales(info, np.array([2.0, -2.0, 0.1, 0.5, 0.5])).tolist()
    [1.0, 1.0, 1.0, 0.5, 0.5]
    """
    p = float64_values(params, np.asarray(to_numpy(params)), "params",
                       "pass the oracle's flat parameters (oracle.initial_params())").reshape(-1)
    if blocks is None or isinstance(blocks, (str, bytes)) or getattr(blocks, "__iter__", None) is None \
            or getattr(blocks, "shape", None) == ():  # (a 0-d array has `__iter__` but raises on iteration)
        raise ArgumentError(f"`blocks` must be records with name, slice and kind (TorchOracle.param_info), got "
                            f"{type(blocks).__name__}")
    blocks = list(blocks)
    if not all(hasattr(b, "name") and hasattr(b, "kind") and hasattr(b, "slice") for b in blocks):
        raise ArgumentError("layer step scales need named blocks (an oracle with `param_info`, such as TorchOracle); "
                            "pass `blocks=oracle.param_info` or leave `layer_steps` at 0")
    end = max((b.slice.stop for b in blocks), default=0)
    if p.shape[0] < end:  # longer is a layout too: parameters in no block keep 1, as train estimates them densely
        raise ArgumentError(f"`params` has {p.shape[0]} entries but the blocks lay out {end}: pass the flat parameters "
                            "of the oracle the blocks describe (oracle.initial_params())")
    if isinstance(power, bool) or not isinstance(power, numbers.Real) or not (math.isfinite(power) and power >= 0):
        raise ArgumentError(f"`power` must be a finite number >= 0 (0: every multiplier 1), got {power!r}")
    # a layer the forward does not read (``read=False``: an unpicked head, placed last) keeps 1
    weights = [b for b in blocks if b.kind in ("conv", "linear") and getattr(b, "read", True)]
    if not weights:
        raise ArgumentError(f"layer step scales need at least one conv or linear block in `blocks`, got "
                            f"{short_repr(blocks)}; pass blocks=oracle.param_info, or leave `layer_steps` at 0")
    rms = {_layer(b.name): float(np.sqrt(np.mean(p[b.slice] ** 2))) for b in weights}
    zero = [name for name, r in rms.items() if not r > 0]
    if zero:
        raise ArgumentError(f"layer {zero[0]!r} has all-zero weights in `params`, so its step would be 0; "
                            "initialize it, or leave `layer_steps` at 0")
    if not isinstance(ref, str) or not isinstance(layers, str):  # (an array's == is elementwise: ambiguous)
        name, value = ("ref", ref) if not isinstance(ref, str) else ("layers", layers)
        raise ArgumentError(f"`{name}` must be {' or '.join(map(repr, _CHOICES[name]))}, got {short_repr(value)}")
    if ref == "largest":
        r0 = max(rms.values())
    elif ref == "widest":
        r0 = rms[_layer(max(weights, key=lambda b: b.slice.stop - b.slice.start).name)]
    else:
        raise ArgumentError(f"`ref` must be 'largest' or 'widest', got {ref!r}")
    if layers not in ("all", "last"):
        raise ArgumentError(f"`layers` must be 'all' or 'last', got {layers!r}")
    chosen = set(rms) if layers == "all" else {_layer(weights[-1].name)}
    scale = np.ones(p.shape[0])
    for b in blocks:
        if _layer(b.name) in chosen:
            scale[b.slice] = (rms[_layer(b.name)] / r0) ** power
    return scale


def _describe(scale) -> str:
    """The multipliers in flat order, each run of equal values once (for ``config``)."""
    seen = []
    for v in np.round(scale, 4).tolist():
        if not seen or seen[-1] != v:
            seen.append(v)
    return "[" + ", ".join(f"{v:g}" for v in seen) + "]"
