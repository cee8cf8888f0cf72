"""Dynamic gradient masks: the coordinate sets of sparse CGE (DeepZero's protocol).

Layer-wise keep ratios are fixed once (from ZO-GraSP, Smart Ratio or uniform). Every
``interval`` epochs (or every step, ``interval="step"``) a fresh random mask is drawn per
scored block with *exactly* that block's kept count; unscored blocks (biases, norm layers)
are always dense. The mask of a period is a pure function of ``(seed, period)``, so a
resumed run redraws exactly the masks an uninterrupted run would have used.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._backend import fields_hash
from ._errors import ArgumentError

__all__ = ["keep_counts", "random_masks", "DynamicMasks"]


def check_interval(iv):
    """``mask_shuffle_interval``: an integer >= 1 (epochs between fresh masks) or ``"step"``."""
    if isinstance(iv, str) and iv == "step":
        return "step"
    if isinstance(iv, bool) or not isinstance(iv, numbers.Integral) or iv < 1:
        raise ArgumentError(f"`mask_shuffle_interval` must be an integer >= 1 (epochs between fresh masks) or "
                            f"\"step\" (a fresh mask every step), got {iv!r}")
    return int(iv)


def _block_list(blocks, name: str = "blocks") -> list:
    """``blocks`` as a list; None, a number or a 0-d array (not iterable) raises an ArgumentError
    naming ``name`` rather than "'NoneType' object is not iterable"."""
    try:
        return list(blocks)
    except TypeError:
        raise ArgumentError(f"`{name}` must be a sequence of slice(start, stop) (or of records with `.slice`, such "
                            f"as oracle.param_info), got {blocks!r}") from None


def _slices(blocks, name: str = "blocks") -> list:
    out = []
    for i, b in enumerate(_block_list(blocks, name)):
        s = getattr(b, "slice", b)
        if (not isinstance(s, slice) or not isinstance(s.start, numbers.Integral) or s.start < 0
                or not isinstance(s.stop, numbers.Integral) or s.stop <= s.start or s.step not in (None, 1)):
            raise ArgumentError(
                f"`{name}[{i}]` must be a slice(start, stop) with 0 <= start < stop and no step (or a record "
                f"with `.slice`), got {b!r}"
            )
        out.append(slice(int(s.start), int(s.stop)))
    return out


def check_disjoint(slices, name: str = "blocks", **more) -> None:
    """Every parameter in one block at most (the keep ratios split one budget over them): the
    slices of ``name`` and of every further group ``more`` (e.g. ``dense=...``) together."""
    groups = {name: slices, **more}
    spans = sorted((s.start, s.stop, n, i) for n, group in groups.items() for i, s in enumerate(group))
    for (a0, a1, an, ai), (b0, b1, bn, bi) in zip(spans, spans[1:]):
        if b0 < a1:
            raise ArgumentError(f"`{an}[{ai}]` = slice({a0}, {a1}) and `{bn}[{bi}]` = slice({b0}, {b1}) overlap; "
                                "every parameter may belong to one block only")


def keep_counts(blocks, ratios) -> np.ndarray:
    """Kept coordinates per block: ``round(ratio * size)``, at least 1 where the ratio is > 0,
    for ``blocks`` (slices or records with ``.slice``) and one keep ratio in [0, 1] per block in
    ``ratios``."""
    sl = _slices(blocks)
    try:
        r = np.asarray(ratios, dtype=np.float64)
    except (TypeError, ValueError):
        raise ArgumentError(f"`ratios` must be keep ratios in [0, 1], one per block, got {ratios!r}") from None
    if r.shape != (len(sl),):
        raise ArgumentError(f"`ratios` must have one keep ratio per block ({len(sl)}), got shape {r.shape}")
    if not np.all(np.isfinite(r)) or (r < 0).any() or (r > 1).any():
        raise ArgumentError(f"`ratios` are keep ratios and must lie in [0, 1], got {r.tolist()}")
    sizes = np.array([s.stop - s.start for s in sl])
    k = np.rint(r * sizes).astype(np.int64)
    k[(r > 0) & (k == 0)] = 1
    return np.minimum(k, sizes)


def random_masks(blocks: Any, ratios: Any, rng: Any, *, dense: Sequence[slice] = ()) -> np.ndarray:
    """One random coordinate set: exactly ``keep_counts(blocks, ratios)[l]`` per block.

    Parameters
    ----------
    blocks : sequence of slice (or records with ``.slice``)
        The scored blocks, positions in the flat parameter vector.
    ratios : array
        Keep ratio per block.
    rng : numpy Generator, int seed or None
    dense : sequence of slice
        Blocks always kept whole (biases, norm layers).

    Returns
    -------
    ndarray of int64
        Sorted flat indices (the ``coordinates`` of sparse CGE).
    """
    from ._estimators import as_generator  # (that module imports this one's users)

    rng = as_generator(rng)
    sl = _slices(blocks)
    check_disjoint(sl, dense=_slices(dense, "dense"))  # an overlap refused whatever the draw (a draw could miss it)
    counts = keep_counts(sl, ratios)
    parts = []
    for s, k in zip(sl, counts):
        n = s.stop - s.start
        if k:
            parts.append(s.start + np.sort(rng.choice(n, size=int(k), replace=False)))
    for s in _slices(dense, "dense"):
        parts.append(np.arange(s.start, s.stop))
    if not parts:
        raise ArgumentError("every keep ratio is 0 and no dense block is given: the mask is empty")
    return np.sort(np.concatenate(parts)).astype(np.int64)


def _count(name: str, value) -> int:
    """An epoch or step number (NumPy's integers too); 1.5, "2" and -1 drew some mask silently or
    failed inside NumPy."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ArgumentError(f"`{name}` must be an integer >= 0, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class DynamicMasks:
    """Masks redrawn every ``interval`` epochs from ``(seed, epoch // interval)``, or every
    step from ``(seed, step)`` when ``interval="step"``.

    Each draw is :func:`random_masks` of ``blocks`` (slices or records with ``.slice``) with
    one keep ratio per block in ``ratios``; the ``dense`` blocks are always kept whole.

    Examples
    --------
    >>> m = DynamicMasks([slice(0, 10), slice(10, 30)], [0.5, 0.1], seed=0, interval=2)
    >>> len(m.coordinates(0)), bool((m.coordinates(0) == m.coordinates(1)).all())
    (7, True)
    >>> s = DynamicMasks([slice(0, 10), slice(10, 30)], [0.5, 0.1], seed=0, interval="step")
    >>> bool((s.coordinates(0, step=3) == s.coordinates(5, step=3)).all())
    True
    """

    # what the constructor takes (stored as tuples, ``interval`` as given): lists, arrays, "step"
    blocks: Sequence
    ratios: Any
    seed: int
    interval: int | str = 5
    dense: Sequence = field(default=())

    __hash__ = fields_hash  # (the generated hash raised TypeError on the blocks' slices before Python 3.12)

    def __post_init__(self):
        object.__setattr__(self, "blocks", tuple(_slices(self.blocks)))
        object.__setattr__(self, "dense", tuple(_slices(self.dense, "dense")))
        try:
            ratios = np.asarray(self.ratios, dtype=float).ravel()
        except (TypeError, ValueError):
            raise ArgumentError(f"`ratios` must be keep ratios in [0, 1], one per block, got {self.ratios!r}") from None
        object.__setattr__(self, "ratios", tuple(float(r) for r in ratios))
        counts = keep_counts(self.blocks, self.ratios)  # validates
        if not counts.sum() and not self.dense:  # every mask would be empty: found here, not at coordinates()
            raise ArgumentError("`ratios` keep no coordinate of any block and there is no `dense` block: every mask "
                                "would be empty; keep at least one ratio above 0")
        object.__setattr__(self, "interval", check_interval(self.interval))
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ArgumentError(f"`seed` must be an integer >= 0 (masks are drawn from it), got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))  # (NumPy's int64 read `seed=np.int64(0)` in the repr)
        # every parameter in one block at most: an overlap is found here, not when a draw first repeats an index
        check_disjoint(self.blocks, dense=self.dense)

    @property
    def per_step(self) -> bool:
        """Whether a fresh mask is drawn every step (``interval="step"``)."""
        return self.interval == "step"

    def period(self, epoch: int) -> int:
        """The mask period of ``epoch`` (masks of the same period are equal); per-step masks have none."""
        if self.per_step:
            raise ArgumentError("per-step masks (`interval=\"step\"`) have no period: each step draws its own; "
                                "use coordinates(epoch, step=step)")
        return _count("epoch", epoch) // self.interval

    def coordinates(self, epoch: int, step: int | None = None) -> np.ndarray:
        """The sorted coordinate set used during ``epoch`` (at ``step``, for per-step masks)."""
        _count("epoch", epoch)
        if step is not None:
            _count("step", step)
        if self.per_step:
            if step is None:
                raise ArgumentError("per-step masks (`interval=\"step\"`) draw one mask per step: pass it, "
                                    "coordinates(epoch, step=step)")
            key = [int(self.seed), 0x6D61736B, 0x73746570, int(step)]
        else:
            key = [int(self.seed), 0x6D61736B, self.period(epoch)]
        return random_masks(self.blocks, self.ratios, np.random.default_rng(key), dense=self.dense)

    @property
    def counts(self) -> np.ndarray:
        """Kept coordinates per block (:func:`keep_counts` of ``blocks`` and ``ratios``)."""
        return keep_counts(self.blocks, self.ratios)
