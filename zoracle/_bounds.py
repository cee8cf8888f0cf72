"""``train(bounds=...)``: a box that every query of the run stays inside.

CGE's queries step from the params by ``mu`` along one coordinate: ``x + mu e_i`` (forward), and
``x - mu e_i`` as well (central). Keeping the params in the box shrunk by ``mu`` on the sides the
queries step towards (``[lo, hi - mu]`` forward, ``[lo + mu, hi - mu]`` central) keeps every query
in ``[lo, hi]`` with the estimators, oracles and executors unchanged: the run is a projected
optimizer's step (a clip after each update) and the plain estimate at the clipped params.

RGE with ``distribution="sphere"`` queries ``x + mu u`` (and ``x - mu u``, central) with ``u`` a unit
vector: each coordinate steps by ``mu |u_i| <= mu``, either way whatever the scheme, so its params are kept
in ``[lo + mu, hi - mu]``. With ``distribution="rademacher"`` each ``u_i`` is +-1: every coordinate steps by
exactly ``mu`` either way (``dtype(mu) * u_i`` is ``+-dtype(mu)`` exactly), and the same box keeps it. The bound holds in floating point too: ``|g_i| <= ||g||`` as NumPy computes the
norm (a sum of the rounded squares, each at most the sum, whose square root rounds to at least ``|g_i|``;
an underflow would need every entry of the standard normal ``g`` below 1e-154), so ``g_i / ||g||``, its rounding to the params' dtype and ``dtype(mu) * u_i`` are at most 1 and ``dtype(mu)``
in size, and a query rounds to no farther out than ``(hi - mu) + mu``. Gaussian directions (of any
length) and SNES's samples have no such bound; ZO-GraSP inside a box (``zo_grasp(bounds=...)``) estimates
with Rademacher RGE from points kept in ``[lo + mu, hi - mu]`` (``grasp_box`` gives it the sides rounded
inwards in the queries' dtype, ``Box.sides`` the shrunk box).

The shrunk box is computed in the params' dtype, the way the estimators form a query
(``x + dtype(mu)``): ``hi - mu`` rounded up could put ``(hi - mu) + mu`` one unit in the last place past
``hi``, so each side is moved in by a unit in the last place until the query it allows rounds inside.
An oracle declaring a narrower ``compute_dtype`` (a float32 model given float64 params) is queried at
the params rounded to it, with steps of its ``mu``: the box is then computed in that dtype, whose sides,
values of it, keep the rounded params (rounding is monotone) and their steps inside.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._backend import to_numpy
from ._errors import ArgumentError, short_repr

__all__ = ["Box", "check_bounds", "grasp_box"]

#: RGE's distributions whose queries a box keeps: each coordinate steps by at most ``mu`` either way
BOXED = ("sphere", "rademacher")


def _side(value, d: int, name: str, fill: float) -> np.ndarray:
    """One side of the box as ``d`` float64 values (None: no bound on that side)."""
    if value is None:
        return np.full(d, fill)
    try:
        a = np.asarray(to_numpy(value) if hasattr(value, "shape") else value, dtype=object)
    except Exception as exc:  # (a ragged list)
        raise ArgumentError(f"`bounds`: {name} must be a number, None or an array of the params' shape ({d},), got "
                            f"{short_repr(value)}") from exc
    if a.ndim == 0:
        a = np.full(d, a.item(), dtype=object)
    if a.shape != (d,):
        raise ArgumentError(f"`bounds`: {name} must be a number, None or an array of the params' shape ({d},), got "
                            f"shape {a.shape}")
    out = np.empty(d)
    for i, v in enumerate(a):
        if v is None:
            out[i] = fill
        elif isinstance(v, numbers.Real) and not isinstance(v, bool):
            out[i] = float(v)
        else:
            raise ArgumentError(f"`bounds`: {name}[{i}] must be a number or None, got {short_repr(v)}")
    if np.isnan(out).any():
        raise ArgumentError(f"`bounds`: {name}[{int(np.flatnonzero(np.isnan(out))[0])}] is NaN; use None (or "
                            f"{'-' if fill < 0 else ''}np.inf) for no bound")
    return out


def _pair(x) -> bool:
    return isinstance(x, (tuple, list)) and len(x) == 2


def as_box(bounds, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``bounds`` as float64 ``(lo, hi)`` of ``d`` values each: a tuple ``(lo, hi)`` (each a number, None
    or an array of ``d``), SciPy's list of ``d`` pairs ``[(lo_0, hi_0), ...]`` or a ``scipy.optimize.Bounds``."""
    pairs = isinstance(bounds, (tuple, list)) and len(bounds) == d and all(_pair(b) for b in bounds)
    if pairs and d == 2 and not (isinstance(bounds, list) and all(isinstance(b, tuple) for b in bounds)):
        # [[0, 1], [2, 3]] at d = 2: SciPy's pairs (lo = [0, 2]) or (lo, hi) (lo = [0, 1]), two other boxes
        try:
            scipys = as_box(list(map(tuple, bounds)), d)
        except ArgumentError:  # ([1, 0], [2, 3]): lo[0] = 1 above hi[0] = 0 as SciPy's pairs, a box as (lo, hi)
            scipys = None
        lo_t, hi_t = _side(bounds[0], d, "lo", -np.inf), _side(bounds[1], d, "hi", np.inf)
        if (scipys is not None or (lo_t <= hi_t).all()) and not (
                scipys is not None and np.array_equal(scipys[0], lo_t) and np.array_equal(scipys[1], hi_t)):
            # (neither reading a box: the (lo, hi) reading's refusal below says why)
            other = ("two other boxes" if scipys is not None
                     else "no box as SciPy's pairs (a lower bound above its upper)")
            raise ArgumentError(f"`bounds` {short_repr(bounds)} reads as SciPy's (lo, hi) pairs and as (lo, hi) "
                                f"alike for 2 parameters, {other}: pass a list of tuples for SciPy's pairs, "
                                "[(lo_0, hi_0), (lo_1, hi_1)], or arrays for (lo, hi), (np.array(lo), np.array(hi))")
    if hasattr(bounds, "lb") and hasattr(bounds, "ub"):  # scipy.optimize.Bounds
        lo_in, hi_in = bounds.lb, bounds.ub
    elif pairs and (d != 2 or isinstance(bounds, list)):  # SciPy's pairs (d = 2: a list of tuples, as above)
        lo_in = [b[0] for b in bounds]
        hi_in = [b[1] for b in bounds]
    elif isinstance(bounds, (tuple, list)) and len(bounds) == 2:
        lo_in, hi_in = bounds
    else:
        raise ArgumentError(f"`bounds` must be a tuple (lo, hi) (each a number, None or an array of the params' "
                            f"shape ({d},)), a list of {d} (lo, hi) pairs as scipy.optimize.minimize takes, or a "
                            f"scipy.optimize.Bounds; got {short_repr(bounds)}")
    lo, hi = _side(lo_in, d, "lo", -np.inf), _side(hi_in, d, "hi", np.inf)
    bad = np.flatnonzero(~(lo <= hi))
    if bad.size:
        i = int(bad[0])
        raise ArgumentError(f"`bounds`: lo[{i}] = {float(lo[i])!r} is above hi[{i}] = {float(hi[i])!r}; give each "
                            f"lower bound first, (lo, hi)")
    return lo, hi


def inward(bound, dtype, d: int, up: bool) -> np.ndarray:
    """``bound`` (a scalar or d values) in ``dtype``, rounded to the nearest value inside the box where the
    cast rounds it out (``up``: a lower bound, moved up)."""
    b64 = np.broadcast_to(np.asarray(bound, dtype=np.float64), (d,))
    with np.errstate(over="ignore"):
        b = b64.astype(dtype)
    out = b.astype(np.float64) < b64 if up else b.astype(np.float64) > b64
    b[out] = np.nextafter(b[out], dtype.type(np.inf if up else -np.inf))
    return b


class Box:
    """A run's bounds and the box each ``mu`` shrinks them to, in the params' dtype and backend."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, dtype, xp, central: bool, store=None, rge: str = ""):
        # dtype: the float the queries are formed in (the params', or an oracle's narrower compute_dtype);
        # store: the params' own, which project() returns; central: the queries step by up to mu either way
        # (central CGE, or RGE, whose directions step either way: rge, its distribution, names it in the messages)
        self.lo, self.hi, self.dtype, self.xp, self.central = lo, hi, np.dtype(dtype), xp, central or bool(rge)
        self.rge = rge
        self.store = np.dtype(dtype if store is None else store)
        self._shrunk: dict = {}  # mu -> (lower, upper) as xp arrays of the params' dtype

    def sides(self, mu: float) -> tuple[np.ndarray, np.ndarray]:
        """The params' box for queries at ``mu`` as NumPy arrays of the queries' dtype (lower may be above
        upper where the box is narrower than the queries need)."""
        t = self.dtype.type
        m = t(mu)
        # the params' dtype rounds a bound to the nearest value, perhaps outside it: the one inside instead
        # (1e300 in float32 params: inf, then the largest float32 below)
        d = self.lo.shape[0]
        lo, hi = inward(self.lo, self.dtype, d, up=True), inward(self.hi, self.dtype, d, up=False)
        upper = hi - m
        for _ in range(4):  # (one unit in the last place moves it in: a loop for safety only)
            out = upper + m > hi
            if not out.any():
                break
            upper[out] = np.nextafter(upper[out], t(-np.inf))
        lower = lo
        if self.central:
            lower = lo + m
            for _ in range(4):
                out = lower - m < lo
                if not out.any():
                    break
                lower[out] = np.nextafter(lower[out], t(np.inf))
        return lower, upper

    def check_width(self, mu: float, where: str = "") -> None:
        """Refuse a box narrower than the queries at ``mu`` need, naming ``mu`` (``where``: the ``mu``
        schedule's step it comes from, "" for the estimator's own)."""
        lower, upper = self.sides(mu)
        narrow = np.flatnonzero(~(lower <= upper))
        if not narrow.size:
            return
        i = int(narrow[0])
        need = "2 * mu" if self.central else "mu"
        queries = ("RGE's directions on the unit sphere step by up to mu either way on each coordinate"
                   if self.rge == "sphere" else "RGE's Rademacher directions step by mu either way on each coordinate"
                   if self.rge else f"{'central' if self.central else 'forward'} CGE queries params "
                   f"{'+-' if self.central else '+'} mu on each coordinate")
        head = (f"`bounds`: the box at index {i}, [{float(self.lo[i])!r}, {float(self.hi[i])!r}], is narrower than "
                f"{need} = {(2 if self.central else 1) * float(mu):g}{where} ({len(narrow)} such coordinate"
                f"{'s' * (len(narrow) > 1)}): {queries}, which must stay inside it; ")
        pinned = np.flatnonzero(self.lo[narrow] == self.hi[narrow])
        if pinned.size:  # (no mu fits a side of width 0: a fixed value is no parameter to train)
            j = int(narrow[pinned[0]])
            raise ArgumentError(
                f"{head}lo[{j}] == hi[{j}] = {float(self.lo[j])!r} pins that parameter, which no step may move: "
                "leave pinned parameters out of `params` (a constant inside the loss), or give them a range")
        fix = ("lower the `mu` schedule's values" if where else
               f"lower `mu` (estimator=zo.{'RGE' if self.rge else 'CGE'}(mu=...))")
        raise ArgumentError(f"{head}{fix} or widen the box")

    def project(self, params, mu: float):
        """``params`` clipped into the box the queries at ``mu`` need (the same array where already inside)."""
        key = float(mu)
        if key not in self._shrunk:
            self.check_width(mu, where=" (the `mu` schedule's value at this step)")
            if len(self._shrunk) > 8:  # (a mu schedule: one per value; the last few kept)
                self._shrunk.clear()
            lower, upper = self.sides(mu)
            self._shrunk[key] = tuple(self.xp.asarray(side.astype(self.store)) for side in (lower, upper))
        lower, upper = self._shrunk[key]
        if bool(((params >= lower) & (params <= upper)).all()):
            return params
        return self.xp.minimum(self.xp.maximum(params, lower), upper)

    def config(self):
        """What a checkpoint records of the bounds (a resume must have the same): the two sides'
        values where they are one number each, else a digest of them."""
        def plain(v):
            return None if np.isinf(v) else float(v)
        if (self.lo == self.lo[0]).all() and (self.hi == self.hi[0]).all():
            return [plain(self.lo[0]), plain(self.hi[0])]
        import hashlib
        return "sha256:" + hashlib.sha256(self.lo.tobytes() + self.hi.tobytes()).hexdigest()[:16]


def check_bounds(bounds, params, xp, estimator, mu_sched, oracle=None) -> Box | None:
    """``bounds`` read and checked before the first query: the estimators whose queries a box cannot keep
    refused, a start outside the box refused, a box narrower than the first step's queries
    refused (a ``mu`` schedule's later values: by ``check_steps`` where the run's length is known, else as
    their steps come). An ``oracle`` that declares a narrower ``compute_dtype`` than the params' (a float32
    model given float64 params) is estimated at the params rounded to it, with its steps: the box is then
    kept in that dtype, each side a value of it inside ``[lo, hi]``."""
    if bounds is None:
        return None
    from ._estimators import CGE, RGE
    from ._oracle import compute_dtype_of
    from ._schedules import schedule_value

    d = int(params.shape[0])
    lo, hi = as_box(bounds, d)
    if (lo == -np.inf).all() and (hi == np.inf).all():  # (SciPy's [(None, None)] * d): no box to keep
        return None
    rge = estimator.distribution if isinstance(estimator, RGE) and estimator.distribution in BOXED else ""
    if not isinstance(estimator, CGE) and not rge:
        raise ArgumentError(
            f"`bounds` with estimator={type(estimator).__name__}(...): its queries step from the params along random "
            "directions of any length (Gaussian ones, or SNES's samples), so no box keeps them inside; use "
            "estimator=zo.CGE(...) (forward or central), whose queries step by mu along one coordinate, "
            "zo.RGE(..., distribution=\"sphere\"), whose unit directions step by at most mu on each coordinate, or "
            "zo.RGE(..., distribution=\"rademacher\"), whose +-1 directions step by exactly mu on each coordinate")
    x = np.asarray(to_numpy(params), dtype=np.float64)
    out = np.flatnonzero(~((x >= lo) & (x <= hi)))
    if out.size:
        i = int(out[0])
        raise ArgumentError(
            f"`params` lies outside `bounds` at index {i}: {float(x[i])!r} is not in [{float(lo[i])!r}, "
            f"{float(hi[i])!r}] ({out.size} "
            f"coordinate{'s' * (out.size > 1)} outside); start inside the box, e.g. np.clip(params, lo, hi)")
    cd = compute_dtype_of(oracle)
    queries = cd if cd is not None and cd.kind == "f" and cd.itemsize < params.dtype.itemsize else params.dtype
    box = Box(lo, hi, queries, xp, central=estimator.scheme != "forward", store=params.dtype, rge=rge)
    mu0 = estimator.mu if mu_sched is None else schedule_value(mu_sched, 0, "mu", positive=True)
    box.check_width(mu0, where="" if mu_sched is None else " (the `mu` schedule's value at step 0)")
    return box


def grasp_box(box: Box, d: int) -> tuple[np.ndarray, np.ndarray]:
    """The box for ZO-GraSP's queries (``zo_grasp(bounds=...)``): ``box``'s sides rounded inwards in the dtype
    the queries are formed in (an oracle's narrower ``compute_dtype`` too), as float64, so a query clipped into
    them stays in the box once cast to that dtype."""
    return (inward(box.lo, box.dtype, d, up=True).astype(np.float64),
            inward(box.hi, box.dtype, d, up=False).astype(np.float64))