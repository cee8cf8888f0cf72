"""How far a step's losses may differ by rounding alone, and whether a whole estimate is rounding: the
private ``_rounding`` each :class:`~zoracle.GradientEstimate` carries (the largest |grad| entry the losses'
rounding alone can make), which train's checks for estimates that stay 0 read (:mod:`zoracle._diagnose`)."""

from __future__ import annotations

import numpy as np

from ._grid import float32_numbers, loss_bits, loss_rounding, loss_spread
from ._oracle import Oracle, loss_type, precision_bits


def typed_bits(wrapped: Oracle) -> int:
    """The significant bits of the losses' own type (the base point's value, or a fast path's narrower one);
    53 where they come as Python floats."""
    value = wrapped.base_value
    return 53 if value is None or isinstance(value, float) else precision_bits(loss_type(value))


def diff_rounding(wrapped: Oracle, f0: float, vals) -> float:
    """How far two losses near the base loss ``f0`` may differ by rounding alone (see
    :func:`~zoracle._grid.loss_rounding`), at the precision the losses carry: their type's (the base point's
    value, or a fast path's narrower one), else what ``f0`` and up to 8 of the perturbed ``vals`` (the
    ``(1 or 2, n)`` losses) show (float32 numbers, TorchOracle's float32 losses as Python floats). O(1)."""
    row = vals[0]
    return losses_rounding(wrapped, f0, row[::max(1, row.shape[0] // 8)][:8])


def rge_rounding(wrapped: Oracle, f0: float, vals, scheme: str) -> float:
    """An RGE estimate's ``_rounding`` from its raw losses (``(1 or 2, q)``, before any ranks): inf where
    every difference it is built from (each direction's loss less the base loss, forward; its two losses,
    central) lies within the losses' rounding near ``f0`` (:func:`losses_rounding`), else 0.0. Rank shaping
    is judged by the same differences, so a ranked and a plain RGE that query the same points are judged
    alike; the directions' order (and a central pair's) changes nothing. O(q)."""
    if not vals.size:
        return 0.0
    # (forward: max |v - f0| is the losses' spread about f0, with no temporary; rounding is monotone)
    far = loss_spread(vals, f0) if scheme == "forward" else float(np.max(np.abs(vals[0] - vals[1])))
    return 0.0 if far > losses_rounding(wrapped, f0, vals) else np.inf


def losses_rounding(wrapped: Oracle, ref: float, vals) -> float:
    """How far losses near ``ref`` may differ by rounding alone (:func:`~zoracle._grid.loss_rounding`), at the
    precision they carry: their type's (the base point's value, or a fast path's narrower one), else float32
    where ``ref`` and every one of ``vals`` is a float32 number, else float64. Every value is read, so the
    order the queries came back in changes nothing (:func:`diff_rounding` reads 8 of CGE's d losses); for
    RGE's and SNES's q losses, O(q) in NumPy (:func:`~zoracle._grid.float32_numbers`)."""
    typed = typed_bits(wrapped)
    bits = loss_bits((ref,), typed)
    if bits == 24 and not float32_numbers(vals):  # (bits 24: typed is 24 or more)
        bits = typed
    return loss_rounding(ref, bits)


def snes_rounding(wrapped: Oracle, losses) -> float:
    """A SNES estimate's ``_rounding``: inf where its samples' losses all lie within the losses' rounding of
    each other (:func:`losses_rounding`, at the largest one's last place), else 0.0. O(population)."""
    if not losses.size:
        return 0.0
    lo, hi = float(np.min(losses)), float(np.max(losses))
    return np.inf if hi - lo <= losses_rounding(wrapped, hi if abs(hi) >= abs(lo) else lo, losses) else 0.0
