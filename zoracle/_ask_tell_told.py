"""What :meth:`zoracle.AskTell.tell` takes besides a list of losses: losses by row (``{row: loss}``),
the points back first (``tell(X, losses)``, checked against the asked points, a differing row named),
and the record of a ``tell(X, losses)`` that tells a retry of it (the same points and losses sent
again) from other losses for its points.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Mapping

import numpy as np

from ._backend import real_numpy, to_numpy
from ._errors import ArgumentError, OracleError, short_repr

__all__ = ["_TELL_FORMS", "_TellRecord", "_by_row", "_points_array", "_told_points"]


def _by_row(losses: Mapping, n: int, what: str) -> list:
    """``{row: loss}`` as the list of the ``n`` rows' losses, in their order."""
    rows = {int(k) if isinstance(k, numbers.Integral) and not isinstance(k, bool) else k: v
            for k, v in losses.items()}
    unknown = [k for k in rows if type(k) is not int or not 0 <= k < n]  # (True and 1.0 equal 1: no rows)
    missing = sorted(set(range(n)) - set(rows).difference(unknown))
    if missing or unknown:
        detail = (f"expected one loss for each row 0 to {n - 1} of the points"
                  + (f"; row(s) {short_repr(missing, 80)} missing" if missing else "")
                  + (f"; {short_repr(unknown, 80)} no row of them" if unknown else "")
                  + (" (a row is an int)" if any(type(k) is not int for k in unknown) else "") + ": tell them all")
        raise OracleError(what, dict(losses), detail=detail)
    return [rows[j] for j in range(n)]


_TELL_FORMS = "tell(losses), or tell(X, losses) with X the points ask() returned"


def _points_array(points):
    """The points of a tell(X, losses) as a float64 host array, or None (ragged rows, no numbers)."""
    try:
        arr = (np.stack([real_numpy(p, np.float64) for p in points]) if isinstance(points, (list, tuple)) and points
               else real_numpy(points, np.float64))
    except Exception:  # (ragged rows, objects that are no numbers)
        return None
    return arr if arr.dtype.kind in "fiu" else None


class _TellRecord:
    """A tell(X, losses) handed over: its points' shape and a digest of some of their rows, and its
    losses (a retry sends them again). Only the points asked now are taken as a tell's, compared whole;
    any other points a caller holds are those of an ask told already, so this one tell's rows and
    losses, exactly, tell a retry of it from another (the points are not kept: an ask's worth of memory,
    and no pass over them all)."""

    ROWS = 64  # rows digested: first, last and evenly between

    def __init__(self, arr, values):
        self.shape, self.digest, self.values = arr.shape, self.digest_of(arr), values

    @classmethod
    def digest_of(cls, arr) -> bytes:
        rows = np.unique(np.linspace(0, arr.shape[0] - 1, min(arr.shape[0], cls.ROWS)).astype(np.intp))
        sample = np.ascontiguousarray(arr[rows], dtype=np.float64) + 0.0  # (-0.0 as 0.0: JavaScript writes -0 as 0)
        return hashlib.sha256(repr(arr.shape).encode() + sample.tobytes()).digest()

    def same(self, other) -> bool:
        return (isinstance(other, _TellRecord) and other.shape == self.shape and other.digest == self.digest
                and np.array_equal(other.values, self.values))


def _told_points(points, asked, losses):
    """``tell(X, losses)`` (pycma's and scikit-optimize's order: the points, then their losses): ``X``
    must be the points the last ask() returned, ``asked``, exactly; refused naming the first row that
    differs (a point repaired or rounded after ask() is another point, whose loss would train a wrong
    gradient). Returns ``X`` as a float64 host array."""
    n, d = asked.shape
    arr = _points_array(points)
    if arr is not None and arr.shape == (d,) and n == 1:  # (one point asked: nevergrad's tell(x, loss))
        arr = arr[None]
    if arr is None or arr.shape != (n, d):
        shape = "no array of numbers" if arr is None else f"shape {arr.shape}"
        try:
            swapped = arr is not None and arr.shape in ((n,), (n, 1)) and np.shape(losses) == (n, d)
        except Exception:  # (ragged losses: refused as losses below)
            swapped = False
        if swapped:
            fix = "the points come first, then their losses: tell(X, losses) (or tell(losses) alone)"
        elif arr is not None and arr.shape == (d,):
            fix = (f"one point and its loss (nevergrad's and scikit-optimize's tell(x, loss)) is no tell here: an "
                   f"ask() returns the {n} points of a step at once, told together, tell(X, [f(x) for x in X]), or "
                   "by row as they complete, tell({row: loss, ...})")
        else:
            fix = f"tell the losses alone, tell(losses), or the {n} asked points first: tell(X, losses)"
        raise ArgumentError(f"tell(X, losses) got {short_repr(points, 120)} as X ({shape}), where the points of "
                            f"the last ask() are ({n}, {d}): {fix}")
    host = to_numpy(asked)
    differ = np.flatnonzero(~(arr == host).all(axis=1))
    if differ.size:
        j = int(differ[0])
        c = int(np.flatnonzero(arr[j] != host[j])[0])
        raise ArgumentError(
            f"tell(X, losses): row {j} of X is not row {j} of the points the last ask() returned (coordinate {c} "
            f"is {arr[j, c].item()!r}, asked {host[j, c].item()!r}; {differ.size} of the {n} rows differ): the losses "
            "must be those of the asked points, unchanged, in their rows' order (a point clipped, repaired or "
            "rounded after ask() is another point: AskTell(..., bounds=(lo, hi)) asks only points inside a box); "
            "tell the asked points' losses, or tell(losses) alone")
    return arr
