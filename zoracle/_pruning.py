"""Pruning from loss values only: ZO-GraSP scores and layer-wise keep ratios.

DeepZero fixes *layer-wise pruning ratios* (LPRs) once at initialization and then trains
with sparse CGE over random masks honoring them. The ratios come from

* :func:`zo_grasp` + :func:`layer_ratios`: GraSP scores ``-theta * (H g)`` estimated with
  two RGE gradients (loss values only), pruned globally, read back per layer;
* :func:`smart_ratio`: the data-free Smart Ratio rule;
* :func:`uniform_ratios` / :func:`random_ratios`: the baselines.

Ratios are *keep* ratios (``1 - sparsity`` per layer), one per scored block, always
``k_l / n_l`` with integer ``k_l`` summing exactly to ``round((1 - sparsity) * N)``.

Blocks are slices of the flat parameter vector, or records with ``.slice`` (and
``.kind`` in {"conv", "linear", "norm", "bias", "other"}, as the torch adapter's
``param_info`` provides). By default only conv and linear weights are scored; the rest
(biases, norm layers) always get dense CGE (:func:`split_blocks`).
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np

from ._backend import namespace, real_numpy, to_numpy
from ._bounds import Box, as_box
from ._errors import (ArgumentError, OracleError, check_flag, config_hint, percent_hint, short_repr, told,
                      user_stacklevel, warn)
from ._estimators import RGE, as_generator, as_seen, estimate_gradient, float64_values, validate_params
from ._fastcheck import unchecked
from ._masks import _block_list, _slices, check_disjoint
from ._oracle import has_methods

__all__ = [
    "SCORED_KINDS",
    "split_blocks",
    "zo_grasp",
    "layer_ratios",
    "smart_ratio",
    "uniform_ratios",
    "random_ratios",
    "RANKINGS",
]


#: parameter kinds scored by default (everything else gets dense CGE)
SCORED_KINDS = ("conv", "linear")
#: "magnitude": keep the largest |S| (the DeepZero reference code, default);
#: "grasp": GraSP's own rule, remove the highest signed S (keep the lowest)
RANKINGS = ("magnitude", "grasp")


def split_blocks(blocks: Any, score_kinds: Sequence[str] = SCORED_KINDS) -> tuple[list[slice], list[slice]]:
    """``(scored, dense)`` lists of slices from ``blocks``, a sequence of records or slices.

    Records with a ``.kind`` are scored when their kind is in ``score_kinds``; plain slices
    (no kind) are all scored.

    Examples
    --------
    >>> from collections import namedtuple
    >>> P = namedtuple("P", "name slice shape kind")
    >>> split_blocks([P("w", slice(0, 6), (2, 3), "linear"), P("b", slice(6, 8), (2,), "bias")])
    ([slice(0, 6, None)], [slice(6, 8, None)])
    """
    scored, dense = [], []
    kinds = check_score_kinds(score_kinds)
    blocks = _block_list(blocks)  # read twice: a generator would be spent by the first
    for b, s in zip(blocks, _slices(blocks)):
        kind = getattr(b, "kind", None)
        (scored if kind is None or kind in kinds else dense).append(s)
    return scored, dense


def check_score_kinds(score_kinds) -> tuple:
    """``score_kinds`` as a tuple of kind names; a string ("conv", read as its characters, would
    leave every block dense) or anything else raises an ArgumentError naming it."""
    try:
        kinds = None if isinstance(score_kinds, (str, bytes)) else tuple(score_kinds)
    except TypeError:
        kinds = None
    if kinds is None or not all(isinstance(k, str) for k in kinds):
        raise ArgumentError(f"`score_kinds` must be a collection of kind names such as ('conv', 'linear'), got "
                            f"{score_kinds!r}")
    return kinds


def _check_sparsity(sparsity) -> float:
    """``sparsity`` as a float, or the refusal that names it (train's and the ratio functions' alike)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0 <= sparsity < 1:
        raise ArgumentError(f"`sparsity` must be a fraction in [0, 1) (e.g. 0.9 = keep 10%), got {short_repr(sparsity)}"
                            f"{config_hint('sparsity', sparsity, 'number', lambda v: 0 <= v < 1)}"
                            f"{percent_hint('sparsity', sparsity)}")
    return float(sparsity)


def _block_slices(blocks) -> list:
    """``blocks`` as slices, at least one (an empty list has no budget to split)."""
    sl = _slices(blocks)
    if not sl:
        raise ArgumentError("`blocks` is empty: pass the parameter blocks (slices or records) to split the budget over")
    return sl


def _exact_counts(target: np.ndarray, sizes: np.ndarray, total: int) -> np.ndarray:
    """Integer counts ``<= sizes`` near ``target`` summing exactly to ``total`` (largest remainder)."""
    target = np.clip(target, 0, sizes)
    k = np.floor(target).astype(np.int64)
    rest = int(total - k.sum())
    if rest > 0:
        frac = np.where(k < sizes, target - k, -1.0)
        for i in np.argsort(-frac, kind="stable"):
            if rest == 0:
                break
            if k[i] < sizes[i]:
                k[i] += 1
                rest -= 1
    elif rest < 0:
        frac = np.where(k > 0, target - k, 2.0)
        for i in np.argsort(frac, kind="stable"):
            if rest == 0:
                break
            if k[i] > 0:
                k[i] -= 1
                rest += 1
    return k


def _ratios(counts, sizes) -> np.ndarray:
    return np.asarray(counts, dtype=np.float64) / np.asarray(sizes, dtype=np.float64)


def _sizes(sl) -> np.ndarray:
    return np.array([s.stop - s.start for s in sl], dtype=np.int64)


def grasp_queries(directions: int) -> int:
    """Queries :func:`zo_grasp` spends: two forward RGEs sharing ``directions``, each with its base point."""
    return 2 * (int(directions) + 1)


def zo_grasp(oracle, params, *, blocks=None, mu: float = 5e-3, directions: int = 192, rng=None,
             batch=None, common_random_numbers: bool = True, executor=None, bounds=None) -> np.ndarray:
    r"""ZO-GraSP scores: GraSP's ``-theta * (H g)`` from loss values only.

    .. math::
        S = -\theta \odot \frac{\hat g(\theta + \mu \hat g(\theta)) - \hat g(\theta)}{\mu}

    with ``ghat`` a forward RGE over ``directions`` Gaussian directions. With
    ``common_random_numbers=True`` (default) both estimates use the *same* directions:
    their difference is then ``P (grad(theta + mu ghat) - grad(theta))`` with
    ``P = U U^T / q``, so the large, direction-dependent noise of each estimate cancels
    (mean Pearson correlation with -theta * (H g) on six random 30-d quadratics, q = 16d:
    0.95 with common directions, 0.05 with independent ones; docs/training.md, checked by
    ``tests/test_pruning.py::test_zo_grasp_correlations_in_the_docs``).

    Parameters
    ----------
    oracle : callable or DataOracle
        A loss oracle; a DataOracle is bound to ``batch`` first (required then).
    params : array
        Flat parameters (never modified).
    blocks : sequence of slice or records, optional
        Scored blocks; scores outside them are set to 0. Default: every parameter.
    mu : float
        Smoothing of both RGEs and the finite-difference step of the Hessian-gradient product
        (the second point is ``params + mu * g``, in the loss's units: a warning where it lies
        more than half of ``max(|params|, 1)`` away, as for a loss summed over samples).
    directions : int
        q per RGE estimate; queries = ``2 (q + 1)``.
    rng : Generator, int or None
    batch : optional
        The data batch (for a DataOracle): DeepZero uses about 25 samples per class.
    common_random_numbers : bool
        Both RGEs use the same directions (default True; see above).
        The DeepZero reference code draws them independently, per weight tensor
        (unit norm in each, only the scored weights perturbed), and steps to
        ``theta + mu**2 ghat``: its keep ratios differ (docs/training.md, "Pruning building blocks").
    executor : optional
        Passed to :func:`zoracle.estimate_gradient` (with ``bounds`` too).
    bounds : (lo, hi), optional
        A box every query stays inside, in ``train(bounds=...)``'s forms: each side a number, None
        (no bound) or ``d`` values; SciPy's ``d`` pairs or a ``scipy.optimize.Bounds`` (``train``
        passes its own). The estimates are then ``RGE(mu, directions, distribution="rademacher")``
        (each entry +-1, the second moment of Gaussian ones: each query moves every coordinate by
        exactly ``mu``), the base point is ``params`` clipped into the box shrunk by ``mu`` on both
        sides, ``[lo + mu, hi - mu]`` (rounded inwards in the queries' dtype, so that every query,
        rounded, lies in ``[lo, hi]``), and the second point ``base + mu * ghat(base)`` is clipped
        into it too. The scores then estimate
        GraSP with the step projected onto the box: ``-params * P (grad(x2) - grad(x1)) / mu`` with
        ``x1``, ``x2`` the two clipped points; equal to the unbounded estimate's target where nothing
        clips. A box narrower than ``2 * mu`` on a coordinate (its rounded queries would leave it) is
        refused before any query. On the demo CNNs the keep ratios train as well as the Gaussian
        ones (docs/training.md, "Bounds").

    Returns
    -------
    ndarray (d,), float64
        Scores (higher |S| = more important under the default "magnitude" ranking).

    Examples
    --------
    >>> import numpy as np, zoracle as zo
    >>> from zoracle.testing import QuadraticOracle
    >>> oracle = QuadraticOracle(np.diag([1.0, 2.0, 3.0]), b=np.ones(3))
    >>> s = zo.zo_grasp(oracle, np.ones(3), directions=300, rng=0)
    >>> s.shape, np.argsort(s).tolist()  # -theta * H g = -(2, 6, 12): the same order
    ((3,), [2, 1, 0])
    """
    if batch is not None:
        if not has_methods(oracle, "bind"):
            raise ArgumentError("`batch` was given but the oracle has no `bind(batch)`; drop `batch`")
        oracle = oracle.bind(batch)
    elif has_methods(oracle, "bind") and not callable(oracle):
        raise ArgumentError("the oracle is a DataOracle without a plain call: pass `batch=` (e.g. 25 samples per class)")
    params = validate_params(params)
    common_random_numbers = check_flag("common_random_numbers", common_random_numbers)
    if blocks is not None:  # checked before the queries (and read once: a generator is spent)
        blocks = _block_slices(blocks)
        for s in blocks:
            if s.stop > params.shape[0]:
                raise ArgumentError(f"block {s} lies outside params of length {params.shape[0]}")
    est = RGE(mu=mu, directions=directions)
    gen = as_generator(rng)
    seed1 = int(gen.integers(2**63))
    seed2 = seed1 if common_random_numbers else int(gen.integers(2**63))
    if bounds is not None:
        return _boxed_grasp(oracle, params, blocks, mu, directions, seed1, seed2, bounds, executor)
    g1, g2 = _two_estimates(oracle, params, est, seed1, seed2, executor, lambda x: x,
                            ("params", "params + mu * g", "params"))
    return _scores(params, g1, g2, mu, blocks)


def _two_estimates(oracle, x1, est, seed1: int, seed2: int, executor, project, where) -> tuple:
    """ZO-GraSP's two estimates: at ``x1``, then at ``project(x1 + mu * g1)``; ``where``: how a failed
    query's message names the first point, the second and the one its step is measured from."""
    mu = est.mu
    try:
        g1 = unchecked(estimate_gradient)(oracle, x1, est, rng=seed1, executor=executor).grad
    except OracleError as exc:  # ZO-GraSP's directions, not the caller's estimator's queries
        raise exc.located(f"{exc.query} of ZO-GraSP's first estimate, at {where[0]}",
                          "; ratios='uniform' skips ZO-GraSP")
    _check_second_point(x1, g1, mu)
    x2 = project(x1 + x1.dtype.type(mu) * g1)
    try:
        g2 = unchecked(estimate_gradient)(oracle, x2, est, rng=seed2, executor=executor).grad
    except OracleError as exc:  # not at the caller's params: at ZO-GraSP's own second point
        step = float(np.linalg.norm(to_numpy(x2 - x1).astype(np.float64)))
        raise exc.located(f"{exc.query} of ZO-GraSP's second estimate, at {where[1]} (a step of norm {step:.3g} "
                          f"from {where[2]})", "; a smaller `mu` (train passes its estimator's) shortens that step, "
                          "or ratios='uniform' skips ZO-GraSP")
    return g1, g2


def _scores(params, g1, g2, mu: float, blocks) -> np.ndarray:
    """``-params * (g2 - g1) / mu`` as float64 NumPy, 0 outside ``blocks`` (None: every parameter)."""
    # the same operations in place (float64 copies of g1 and params and each result beside them
    # took up to 8x float32 parameters more at d = 1e7)
    hg = to_numpy(g2).astype(np.float64)
    del g2
    hg -= to_numpy(g1)
    hg /= mu
    scores = to_numpy(params).astype(np.float64)
    np.negative(scores, out=scores)
    scores *= hg
    del hg
    if blocks is not None:
        keep = np.zeros(scores.shape[0], dtype=bool)
        for s in blocks:
            keep[s] = True
        scores[~keep] = 0.0
    return scores


def _boxed_grasp(oracle, params, blocks, mu: float, q: int, seed1: int, seed2: int, bounds, executor) -> np.ndarray:
    """ZO-GraSP inside ``bounds = (lo, hi)``: two forward RGEs with Rademacher directions (each query moves
    every coordinate by exactly mu) through :func:`estimate_gradient` (its executors and batching), the base
    point clipped into the box shrunk by mu on both sides, the second point ``base + mu * ghat(base)`` clipped
    into it too. The shrunk box is ``train(bounds=...)``'s for sphere RGE (:meth:`Box.sides`), in the dtype
    the queries are formed in: ``x + dtype(mu) * (+-1)`` rounds to no farther out than ``(hi - mu) + mu``,
    which that box keeps at or below ``hi`` (and at ``lo`` alike), so no query needs clipping."""
    xp = namespace(params)
    d = params.shape[0]
    lo64, hi64 = as_box(bounds, d)  # train's forms (None: no bound; SciPy's pairs) and refusals (NaN, lo > hi)
    # the queries' dtype: the params', or an oracle's narrower compute_dtype (estimate_gradient estimates at
    # the params rounded to it, which the sides, values of it, keep inside: rounding is monotone)
    box = Box(lo64, hi64, as_seen(oracle, params).dtype, np, central=True, rge="rademacher")
    lower, upper = box.sides(mu)
    # train(bounds=...)'s own test, the sides its queries need: a float64 width ``hi - lo < 2 * mu`` also
    # refused a box a rounding short of 2 * mu whose rounded queries fit, which train had taken
    narrow = np.flatnonzero(~(lower <= upper))
    if narrow.size:
        i = int(narrow[0])
        raise ArgumentError(f"`bounds` is narrower than 2 * mu = {2 * mu:g} at coordinate {i} ([{lo64[i]:g}, "
                            f"{hi64[i]:g}]): ZO-GraSP's Rademacher queries move each coordinate by mu either way; "
                            "pass a smaller mu or ratios='uniform'")
    lower, upper = (xp.asarray(side.astype(params.dtype)) for side in (lower, upper))
    est = RGE(mu=mu, directions=q, distribution="rademacher")
    def clip(x):
        return xp.minimum(xp.maximum(x, lower), upper)

    g1, g2 = _two_estimates(oracle, clip(params), est, seed1, seed2, executor, clip,
                            ("params clipped into the box shrunk by mu", "x1 + mu * g clipped into the box",
                             "x1, params clipped into it"))
    return _scores(params, g1, g2, mu, blocks)


def _check_second_point(params, g1, mu: float) -> None:
    """Warn where ZO-GraSP's second point ``theta + mu ghat`` lies far from ``theta``: the step is in
    the loss's units (the paper's formula), so a loss summed over samples or in large units reads
    the Hessian far away and the scores turn to noise (warned over half of max(||theta||, 1); on a tanh MLP, loss x1000: a step of 0.9
    ||theta||, scores correlating 0.68 with the exact ones, 0.87 unscaled, 0.88 at x100 and a step of 0.09 ||theta||;
    tests/test_pruning.py::test_zo_grasp_warns_of_a_long_second_step)."""
    step = float(mu) * float(np.linalg.norm(to_numpy(g1).astype(np.float64)))
    norm = float(np.linalg.norm(to_numpy(params).astype(np.float64)))
    # (half of |params|, but at least half a unit: a loss of order 1 at params near 0, a model started
    # small, steps a few thousandths and reads the Hessian where it is: no drift to warn of)
    if norm > 0 and step > 0.5 * max(norm, 1.0):
        warn(
            f"ZO-GraSP's second point params + mu * g lies {step:.3g} from params ({step / norm:.2g} of |params| = "
            f"{norm:.3g}; the step is mu = {mu:g} times the estimated gradient, whose norm {step / mu:.3g} is in the "
            "loss's units): the Hessian is read that far away and the scores drift from GraSP's; "
            f"{told('return', 'tell')} a mean rather than a sum over samples (a loss of order 1), or pass a smaller mu",
            RuntimeWarning,
            stacklevel=user_stacklevel())


def layer_ratios(scores, blocks, sparsity: float = 0.9, *, ranking: str = "magnitude",
                 fill_small: bool = False) -> np.ndarray:
    """Layer-wise keep ratios from a global pruning of ``scores`` at ``sparsity``.

    All scored coordinates are ranked together; the top ``round((1 - sparsity) N)``
    survive; each block's ratio is its survivors over its size. ``ranking="magnitude"``
    (default, as the DeepZero reference code) keeps the largest ``|S|``;
    ``ranking="grasp"`` follows GraSP and removes the highest signed scores (keeps the
    lowest). Ties break by the order of ``blocks`` as given, then by position within a block (stable), so
    the result is deterministic.

    ``fill_small=True`` guards against layer collapse at extreme sparsity: every block of at
    most ``round((1 - sparsity) N)`` weights that the ranking leaves empty gets one survivor,
    taken from the block holding the most (at each fill). At a few dozen
    survivors a noisy score can leave a first layer's 8 biases untrained for the whole run.

    Examples
    --------
    >>> import numpy as np
    >>> layer_ratios(np.array([5.0, 4.0, 0.1, 0.2, 0.3, 3.0]), [slice(0, 2), slice(2, 6)], 0.5).tolist()
    [1.0, 0.25]
    >>> s = np.array([5.0, 4.0, 3.5, 0.2, 0.3, 0.1])  # the top 3 all in the first block
    >>> layer_ratios(s, [slice(0, 4), slice(4, 6)], 0.5).tolist()
    [0.75, 0.0]
    >>> layer_ratios(s, [slice(0, 4), slice(4, 6)], 0.5, fill_small=True).tolist()
    [0.5, 0.5]
    """
    sparsity = _check_sparsity(sparsity)
    if not isinstance(ranking, str) or ranking not in RANKINGS:  # (an array's `in` is ambiguous, not False)
        raise ArgumentError(f"`ranking` must be one of {', '.join(map(repr, RANKINGS))}; got {ranking!r}")
    fill_small = check_flag("fill_small", fill_small)
    sl = _block_slices(blocks)
    check_disjoint(sl)
    s = real_numpy(scores, np.float64)  # (torch's bfloat16 scores: exact in float64)
    if np.iscomplexobj(s):  # the cast would drop the imaginary part
        raise ArgumentError(f"`scores` must be real, got dtype {s.dtype}")
    s = float64_values(scores, s, "scores", "pass one score per parameter (zo.zo_grasp(...))").ravel()
    if any(b.stop > s.shape[0] for b in sl):
        raise ArgumentError(f"`blocks` reach past the {s.shape[0]} scores; pass scores for the whole parameter vector")
    if not np.all(np.isfinite(s)):
        bad = np.flatnonzero(~np.isfinite(s))
        raise ArgumentError(f"`scores` must be finite, got {bad.size} non-finite of {s.size} (scores[{bad[0]}] = "
                            f"{float(s[bad[0]])!r}); score a loss that stays finite around params (zo.zo_grasp), "
                            "or give those entries a value first (np.nan_to_num(scores))")
    # blocks that follow each other from 0 rank the scores' own array; the owner of each kept
    # position found from the blocks' edges, and -|s| formed in place (a concatenated copy, an
    # owner per score and an |s| beside -|s| took 2x float32 parameters each at d = 1e7)
    contiguous = all(b.start == (sl[i - 1].stop if i else 0) for i, b in enumerate(sl))
    vals = s[:sl[-1].stop] if contiguous else np.concatenate([s[b] for b in sl])
    sizes = _sizes(sl)
    if ranking == "magnitude":
        key = np.abs(vals)
        np.negative(key, out=key)
    else:
        key = vals
    total = int(round((1 - sparsity) * vals.size))
    kept = np.argsort(key, kind="stable")[:total]
    del key
    owner = np.searchsorted(np.cumsum(sizes), kept, side="right")
    counts = np.bincount(owner, minlength=len(sl))
    if fill_small:
        counts = fill_small_blocks(counts, sizes)
    return _ratios(counts, sizes)


def fill_small_blocks(counts, sizes) -> np.ndarray:
    """``counts`` (survivors per block) with one survivor moved into every empty block of at most
    ``sum(counts)`` weights, each taken from the block holding the most at that point (the first
    such block on ties). The total is unchanged; blocks are filled in order.

    Examples
    --------
    >>> fill_small_blocks([3, 0, 12, 1, 34, 0, 0, 0], [40, 8, 384, 16, 96000, 1200, 12000, 10]).tolist()
    [3, 1, 12, 1, 32, 0, 0, 1]
    """
    counts = np.array(counts, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if counts.shape != sizes.shape or counts.ndim != 1:
        raise ArgumentError(f"`counts` and `sizes` must be 1-D of one length, got shapes {counts.shape} and {sizes.shape}")
    total = int(counts.sum())
    for b in np.flatnonzero((counts == 0) & (sizes <= total)):
        donor = int(np.argmax(counts))
        if counts[donor] <= 1:  # fewer survivors than small blocks: the rest stay empty
            break
        counts[donor] -= 1
        counts[b] = 1
    return counts


def uniform_ratios(blocks, sparsity: float = 0.9) -> np.ndarray:
    """The same keep ratio ``1 - sparsity`` in every one of ``blocks`` (slices or records; total
    kept count exact).

    Examples
    --------
    >>> uniform_ratios([slice(0, 10), slice(10, 30)], 0.5).tolist()
    [0.5, 0.5]
    """
    sparsity = _check_sparsity(sparsity)
    sl = _block_slices(blocks)
    check_disjoint(sl)  # as the other ratio functions: one budget split over disjoint blocks
    sizes = _sizes(sl)
    total = int(round((1 - sparsity) * sizes.sum()))
    return _ratios(_exact_counts((1 - sparsity) * sizes, sizes, total), sizes)


def random_ratios(blocks, sparsity: float = 0.9, rng=None) -> np.ndarray:
    """Ratios of a random global pruning (random scores through :func:`layer_ratios`) of
    ``blocks`` (slices or records) at ``sparsity``, the scores drawn from ``rng`` (a Generator,
    an int seed or None)."""
    sl = _block_slices(blocks)
    n = int(max(s.stop for s in sl))
    return layer_ratios(as_generator(rng).random(n), sl, sparsity)


def smart_ratio(blocks, sparsity: float = 0.9, *, kinds=None, linear_keep: float = 0.3) -> np.ndarray:
    r"""Smart Ratio (Su et al. 2020): data-free layer-wise keep ratios.

    For the ``L`` scored layers in forward order (``l`` 1-based), conv layers keep

    .. math:: p_l = c \, [(L - l + 1)^2 + (L - l + 1)]

    and every linear layer keeps ``linear_keep`` (0.3); the single scale ``c`` makes the
    total kept count equal ``round((1 - sparsity) N)``. Ratios above 1 clip to 1 and the
    excess passes to the other conv layers (``c`` is re-solved). Counts are rounded by
    largest remainder so the total is exact. If the linear layers alone would exceed the
    budget, their keep ratio is lowered to fit it (with a warning) and conv layers keep 0; if
    the conv layers kept whole (or no conv layer) leave budget over, the linear layers' keep
    ratio is raised to take it (with a warning).

    Parameters
    ----------
    blocks : sequence of slice or records
        The scored layers in forward order.
    sparsity : float
    kinds : sequence of str, optional
        Kind per block ("conv" or "linear"); read from the records' ``.kind`` by default
        (a plain slice counts as "conv").
    linear_keep : float
        Fixed keep ratio of linear layers.

    Examples
    --------
    >>> r = smart_ratio([slice(0, 100), slice(100, 300), slice(300, 400)], 0.8, kinds=["conv", "conv", "linear"])
    >>> r.round(3).tolist(), int(round(r @ [100, 200, 100]))
    ([0.25, 0.125, 0.3], 80)
    """
    sparsity = _check_sparsity(sparsity)
    if isinstance(linear_keep, bool) or not isinstance(linear_keep, numbers.Real) or not 0 <= linear_keep <= 1:
        raise ArgumentError(f"`linear_keep` must be in [0, 1], got {linear_keep!r}")
    blocks = _block_list(blocks)  # read twice: a generator would be spent by the first
    sl = _block_slices(blocks)
    check_disjoint(sl)
    if kinds is not None and (isinstance(kinds, (str, bytes)) or getattr(kinds, "__iter__", None) is None
                              or getattr(kinds, "shape", None) == ()):  # (0-d: `__iter__`, raising)
        raise ArgumentError(f"`kinds` must name one kind per block, such as ['conv', 'linear'], got {kinds!r}; or "
                            "leave it out to read each block's `.kind`")
    kinds = [getattr(b, "kind", None) or "conv" for b in blocks] if kinds is None else list(kinds)
    bad = [(i, k) for i, k in enumerate(kinds) if k not in ("conv", "linear")]
    if bad:  # a typo ("lineer"), or a bias / norm block, counted as a conv (and shifting the others' shares)
        raise ArgumentError(f"`kinds`: Smart Ratio weights conv and linear layers only, got {bad[0][1]!r} for "
                            f"block {bad[0][0]}; pass the conv and linear blocks only ([b for b in blocks if b.kind in "
                            "('conv', 'linear')]; train does so with its default `score_kinds`), or use other ratios")
    if len(kinds) != len(sl):
        raise ArgumentError(f"`kinds` must name one kind per block ({len(sl)}), got {len(kinds)}")
    sizes = _sizes(sl)
    total = int(round((1 - sparsity) * sizes.sum()))
    L = len(sl)
    is_lin = np.array([k == "linear" for k in kinds])
    target = np.zeros(L)
    lin_budget = float(linear_keep * sizes[is_lin].sum())
    if lin_budget > total:
        keep = total / max(1, sizes[is_lin].sum())
        warn(
            f"smart_ratio: linear layers at keep ratio {linear_keep} need {lin_budget:.0f} of the {total} kept "
            f"weights; lowering their keep ratio to {keep:.4f} (conv layers keep 0): pass linear_keep below "
            f"{keep:.4g} (`linear_keep`={linear_keep!r} now), or a lower `sparsity` than {sparsity!r}, for the conv "
            "layers to keep weights", stacklevel=user_stacklevel(),
        )
        target[is_lin] = keep * sizes[is_lin]
    else:
        target[is_lin] = linear_keep * sizes[is_lin]
        idx = np.flatnonzero(~is_lin)
        w = np.array([(L - l + 1) ** 2 + (L - l + 1) for l in range(1, L + 1)], dtype=np.float64)
        remaining = total - lin_budget
        free = list(idx)
        p = np.zeros(L)
        while free:
            c = remaining / float(sum(w[i] * sizes[i] for i in free))
            over = [i for i in free if c * w[i] > 1]
            if not over:
                for i in free:
                    p[i] = c * w[i]
                remaining = 0.0
                break
            for i in over:  # clip, pass the excess on
                p[i] = 1.0
                remaining -= sizes[i]
                free.remove(i)
        target[idx] = p[idx] * sizes[idx]
        if remaining > 0.5:  # every conv layer whole (or none): the linear layers take the rest of the budget
            keep = (lin_budget + remaining) / sizes[is_lin].sum()
            warn(
                f"smart_ratio: the conv layers kept whole leave {remaining:.0f} of the {total} kept weights; "
                f"raising the linear layers' keep ratio from {linear_keep} to {keep:.4f}; pass linear_keep="
                f"{keep:.4g} (`linear_keep`={linear_keep!r} now) to set it so yourself, or a higher `sparsity` "
                f"than {sparsity!r} to keep fewer weights",
                stacklevel=user_stacklevel(),
            )
            target[is_lin] = keep * sizes[is_lin]
    return _ratios(_exact_counts(target, sizes, total), sizes)
