"""Ready-made :func:`zoracle.train` settings.

A recipe is a function that returns ``train``'s keyword arguments, so every choice it makes
stays visible and can be overridden::

    kw = zo.recipes.short_budget(oracle, params, budget=30_000, batches=batches)
    result = zo.train(oracle, params, batches=batches, **kw)

The paper's recipe (DeepZero, ICLR 2024: 90% sparsity, masks redrawn every few epochs, SGD
with momentum) is the one for budgets of many queries per weight; ``zoracle demo`` runs it.
"""

from __future__ import annotations

import numbers

from ._errors import ArgumentError
from ._estimators import CGE, validate_params
from ._optim import adam
from ._pruning import grasp_queries, split_blocks
from ._schedules import _count, _positive, cosine_schedule
from ._train import _resolve_blocks, _steps_per_epoch

__all__ = ["SHORT_BUDGET_KINDS", "short_budget"]

SHORT_BUDGET_KINDS = ("conv", "linear", "bias")  # biases join the sparse set: dense, they alone can outspend a step


def short_budget(oracle, params, budget: int, *, batches=None, steps_per_epoch: int | None = None,
                 lr: float = 0.1, coordinates: int = 50, b1: float = 0.0, mu: float = 5e-3,
                 weight_decay: float = 5e-4, grasp_directions: int = 192, blocks=None) -> dict:
    r"""DeepZero for short budgets (up to about 15 queries per weight): ``train`` keyword arguments.

    Sparse CGE on ``coordinates`` weights a step (biases included in the sparse set), spread
    over the layers by ZO-GraSP's keep ratios, with a fresh random mask every step
    (``mask_shuffle_interval="step"``) and Adam without momentum (``b1=0``: each measured
    partial derivative moves its weight at once, scaled by that weight's own RMS), on a cosine
    schedule with one epoch of warm-up. The run takes as many whole steps as fit in ``budget``
after ZO-GraSP, and ``max_queries`` stops it there: it never spends more than ``budget``.

    Measured in ``docs/peers.md`` (30,000 queries): at d = 110-121k, over 6 seeds, it has the
    best mean on MNIST-1D (45.9% against 40.6% for the best evolution strategy, with
    overlapping ranges) and is level with the best on digits (83.8% against 84.2%), where
    the paper's recipe stays at chance; at d = 2k (16 queries per weight, 3 seeds) it is level
    with the best. At 150,000 queries and d = 110-121k (1.2-1.4 queries per weight), with SNES
    (6 seeds) and RGE with rank shaping (3 seeds) tuned at that budget, it is ahead of both
    on MNIST-1D by more than the seed spread (61.2% against SNES 45.5%) and behind SNES on
    digits (92.2% against 94.3%, overlapping ranges).
    With 80 queries per weight and more, Adam's momentum (``b1=0.9``) and then the paper's
    recipe (``zoracle demo``) do better.

    Parameters
    ----------
    oracle, params
        As for :func:`zoracle.train`; the oracle's ``param_info`` (or ``blocks``) gives the layers.
    budget : int
        Queries for the whole run, ZO-GraSP's included.
    batches, steps_per_epoch
        As for ``train``; they set the length of an epoch (the warm-up and ``epochs``).
    lr : float
        Peak learning rate. 0.03-0.3 is the useful range; ``docs/peers.md`` picked 0.03 at
        d = 2k-13k and 0.1 at d = 110-121k on validation data.
    coordinates : int
        Weights estimated a step (the sparse set's size).
    b1 : float
        Adam's momentum; 0.9 is Adam's usual setting, measured a little worse here.
    mu, weight_decay, grasp_directions
        CGE's step, AdamW's decoupled weight decay, ZO-GraSP's directions.
    blocks : optional
        As for ``train``.

    Returns
    -------
    dict
        ``epochs``, ``max_queries``, ``estimator``, ``optimizer``, ``sparsity``,
        ``score_kinds``, ``ratios``, ``grasp_directions`` and ``mask_shuffle_interval``
        (and ``steps_per_epoch`` when given).

    Examples
    --------
    >>> import numpy as np, zoracle as zo
    >>> kw = zo.recipes.short_budget(None, np.zeros(1000), budget=5_000, steps_per_epoch=10)
    >>> kw["sparsity"], kw["epochs"], kw["mask_shuffle_interval"], kw["max_queries"]
    (0.95, 10, 'step', 4998)
    >>> kw["optimizer"].config  # 98 steps of 51 queries: 50 weights and the base point
    'adam(lr=cosine_schedule(init=0.1, total_steps=98, warmup_steps=10, final=0.0), b1=0.0, b2=0.999, eps=1e-08, weight_decay=0.0005)'
    """
    params = validate_params(params)
    d = int(params.shape[0])
    budget = _count("budget", budget, 1)
    coordinates = _count("coordinates", coordinates, 1)
    grasp_directions = _count("grasp_directions", grasp_directions, 1)
    lr, mu = _positive("lr", lr), _positive("mu", mu)
    if isinstance(b1, bool) or not isinstance(b1, numbers.Real) or not 0 <= b1 < 1:
        raise ArgumentError(f"`b1` must be in [0, 1), got {b1!r}")
    weight_decay = _positive("weight_decay", weight_decay, allow_zero=True)
    per_epoch = _steps_per_epoch(batches, steps_per_epoch)
    if per_epoch is None:
        raise ArgumentError("`batches` has no len(): pass `steps_per_epoch` too, so the recipe knows an epoch's length")
    if per_epoch < 1:
        raise ArgumentError("`batches` is empty: an epoch needs at least one batch")

    scored, _ = split_blocks(_resolve_blocks(oracle, blocks, d), SHORT_BUDGET_KINDS)
    n_scored = sum(s.stop - s.start for s in scored)
    if n_scored == 0:
        raise ArgumentError(f"no block has a kind in {SHORT_BUDGET_KINDS}: there are no weights to sample")
    if coordinates > n_scored:
        raise ArgumentError(f"`coordinates` is {coordinates}, but only {n_scored} weights can be sampled; "
                            f"pass coordinates <= {n_scored} (or train densely without a recipe)")
    grasp = grasp_queries(grasp_directions) if len(scored) > 1 else 0  # one block: uniform ratios, no ZO-GraSP
    per_step = coordinates + (d - n_scored) + 1  # sampled weights, the dense rest, the base point
    if budget < grasp + 2 * per_step:
        raise ArgumentError(f"`budget` is {budget}, but ZO-GraSP takes {grasp} queries and a step {per_step}; "
                            f"pass budget >= {grasp + 2 * per_step} for two steps, or lower `coordinates`")
    steps = (budget - grasp) // per_step
    kw = {
        "epochs": -(-steps // per_epoch),
        "max_queries": grasp + steps * per_step,
        "estimator": CGE(mu=mu),
        "optimizer": adam(cosine_schedule(lr, total_steps=steps, warmup_steps=min(per_epoch, steps - 1)), b1=b1,
                          weight_decay=weight_decay),
        "sparsity": 1.0 - coordinates / n_scored,
        "score_kinds": SHORT_BUDGET_KINDS,
        "ratios": "zo_grasp",
        "grasp_directions": grasp_directions,
        "mask_shuffle_interval": "step",
    }
    if steps_per_epoch is not None:
        kw["steps_per_epoch"] = steps_per_epoch
    return kw
