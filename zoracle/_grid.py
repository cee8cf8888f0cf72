"""The precision losses carry, read from their values: a loss returned as a Python float may have
been computed in float16, bfloat16 or float32, or rounded to a few decimals, or be a count.

Its type says float64 and :func:`~zoracle._oracle.coarse_losses` (which reads types) passes it;
the values do not lie. A float16 model's loss, ``float(loss)``, has at most 11 significant bits;
``round(loss, 4)`` is a multiple of 1e-4. On a 283-parameter MLP at the default mu, 52% (float16),
98% (bfloat16) and 98% (``round(loss, 3)``) of CGE's differences were 0, the rest whole steps of
the grid, and the estimate correlated 0.48, 0.07 and 0.52 with the float64 gradient, silently.
"""

from __future__ import annotations

import math

import numpy as np

from ._errors import told

#: at most this many significant bits, losses are a narrower float's than float32 (float16 keeps 11,
#: bfloat16 8): 8 bits below float32's 24, which a float32 loss's values show by chance with odds of
#: 2**-8 each, and every one of an estimate's together far less
NARROW_BITS = 16
#: a loss rounded to at most this many decimals is recognised as rounded (``round(loss, 8)``)
MAX_DECIMALS = 8
#: a partial derivative resolved to coarser than this part of the typical one is coarse (as for types)
RESOLUTION = 1e-3
#: losses on a grid of 1/n for an n up to this are named as a mean of whole numbers over n items too (the
#: returns of n episodes of integer rewards, an error count over a batch of n): neither rounded nor narrow
MAX_MEAN_COUNT = 100


def _lowest_bit(v: np.ndarray) -> np.ndarray:
    """The value of the lowest set bit of each of the nonzero finite float64 ``v``: its grid."""
    m, e = np.frexp(np.abs(v))
    mant = (m * 2.0**53).astype(np.int64)  # exact: m in [0.5, 1)
    return np.ldexp((mant & -mant).astype(np.float64), e - 53)  # (ldexp: a subnormal's grid too)


def _bits(v: np.ndarray) -> np.ndarray:
    """Significant bits of each nonzero finite float64 ``v`` (1 for a power of 2, 53 at most)."""
    return np.frexp(np.abs(v))[1] - np.log2(_lowest_bit(v)).astype(np.int64)


def value_bits(values) -> int:
    """The significant bits that ``values`` (losses, as float64) carry: the most any one needs (53
    for a float64 computation's, at most 24 for a float32 one's returned as a Python float, 11 for
    float16's, 8 for bfloat16's); 0 where every one is a whole number below 2**24 (a count, as for
    integer losses); 53 where none is nonzero and finite (nothing to tell)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = np.abs(v[np.isfinite(v) & (v != 0)])
    if not v.size:
        return 53
    if float(v.max()) < 2.0**24 and bool(np.all(v == np.floor(v))):
        return 0
    return int(_bits(v).max())


def _decimals(v: np.ndarray, dtype, most: int = MAX_DECIMALS, rel: float = 0.0) -> int | None:
    """The fewest decimals (up to ``most``) every ``v`` is written in, up to the rounding of ``dtype``
    (a few units of its last place) or ``rel`` of each, or None."""
    v = np.asarray(v, dtype=np.float64)
    for k in range(most + 1):
        scaled = v * 10.0**k
        tol = np.maximum(8 * np.spacing(np.abs(v).astype(dtype)).astype(np.float64) * 10.0**k,
                         rel * np.maximum(1.0, np.abs(scaled)))
        if float(tol.max(initial=0.0)) > 0.01:  # finer than the floats resolve: not told
            return None
        if bool(np.all(np.abs(scaled - np.round(scaled)) <= tol)):
            return k
    return None


def exact_points(points, mu: float) -> bool:
    """Whether ``mu`` and every one of ``points`` (the coordinates CGE, or Rademacher RGE, moves by mu) are
    short numbers (at most 12 significant bits, or 6 decimals): a polynomial loss there is computed exactly, its values
    on a grid of their own (a test at ``np.ones`` with mu = 1e-3), which is no rounding of the oracle.
    Up to 1e-12 of each: steps of SGD from 0 on a quadratic (0.02, 0.0396) carry their round-off, which
    the losses there do not show (near-decimals squared are near-decimals)."""
    def short(v, dtype):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        nz = v[v != 0]
        return not nz.size or bool(np.all(_bits(nz) <= 12)) or _decimals(nz, dtype, 6, 1e-12) is not None

    x = np.asarray(points)
    return short([mu], np.float64) and short(x, x.dtype if x.dtype.kind == "f" else np.float64)


def _short_bits(loss: float) -> tuple[float, int]:
    """The lowest set bit of the nonzero finite ``loss`` and its significant bits, as :func:`_lowest_bit`
    and :func:`_bits` give for one value, in Python floats (NumPy's calls on one value cost microseconds
    each, on every estimate)."""
    m, e = math.frexp(abs(loss))
    mant = int(m * 2.0**53)  # exact: m in [0.5, 1)
    low = mant & -mant
    return math.ldexp(float(low), e - 53), 54 - low.bit_length()


def _loss_decimals(loss: float) -> int | None:
    """:func:`_decimals` of the one nonzero finite ``loss`` at float64's rounding, in Python floats."""
    ulp = 8 * math.ulp(loss)
    for k in range(MAX_DECIMALS + 1):
        scaled, tol = loss * 10.0**k, ulp * 10.0**k
        if tol > 0.01:
            return None
        if abs(scaled - round(scaled)) <= tol:
            return k
    return None


def may_be_gridded(loss: float) -> bool:
    """O(1), on every estimate: whether the base ``loss`` lies on a grid coarser than float32's (few
    significant bits, or few decimals); only then are the differences read."""
    if loss == 0 or not math.isfinite(loss):
        return False
    # in Python floats (NumPy's calls on one value took 80 us, half of a 10-parameter estimate)
    return _short_bits(loss)[1] <= NARROW_BITS or _loss_decimals(loss) is not None


#: losses within this many units of their last place of each other differ by rounding alone: a CPU's vector
#: width or summation order moves them that far (a bias a BatchNorm cancels: its float32 differences exactly 0
#: on one CPU, a unit or two on another). Half the 8 units loss_grid allows float64's rounding: a float32 loss
#: at mu = 1e-6 whose differences of 2 to 6 units carry its gradient (true values 0.4 to 7) is not read as 0
ROUNDING_ULPS = 4


def loss_bits(values, typed: int = 53) -> int:
    """The significant bits a loss's ``values`` (the base loss, then a few perturbed ones) were computed
    with: ``typed`` (their type's, :func:`~zoracle._oracle.precision_bits`: 0 for integers) where it is
    narrower; else 24 where every one is a float32 number (a float32 loss returned as a Python float, as
    TorchOracle's are: a float64 loss's values are so with odds of 2**-29 each), else 53. In Python floats,
    O(len(values))."""
    if typed < 24:
        return typed
    for v in values:
        v = float(v)
        if v != 0 and math.isfinite(v) and (_short_bits(v)[1] > 24 or not 2.0**-126 <= abs(v) < 2.0**128):
            return typed  # (a float32 number has at most 24 bits inside float32's normal range)
    return 24


def float32_numbers(values) -> bool:
    """Whether every one of ``values`` (float64 losses) is a float32 number: :func:`loss_bits`'s test,
    ``loss_bits(values) == 24``, in NumPy (O(n) without a Python loop: an RGE or SNES step's q losses)."""
    a = np.asarray(values, dtype=np.float64).ravel()
    a = a[np.isfinite(a) & (a != 0)]
    mag = np.abs(a)
    if not bool(((mag >= 2.0**-126) & (mag < 2.0**128)).all()):
        return False
    with np.errstate(over="ignore"):  # beyond float32's largest: inf, not equal
        return bool((a.astype(np.float32).astype(np.float64) == a).all())


def loss_rounding(loss: float, bits: int) -> float:
    """``ROUNDING_ULPS`` units of the last place of ``loss`` at ``bits`` significant bits: two losses near
    ``loss`` (the base loss) that differ by this or less differ by rounding alone, not by a change of the
    loss. 0 where nothing rounds (an integer loss, ``bits == 0``; a base loss of 0 or not finite)."""
    if bits <= 0 or loss == 0 or not math.isfinite(loss):
        return 0.0
    return ROUNDING_ULPS * math.ldexp(1.0, math.frexp(abs(loss))[1] - bits)


def loss_spread(values, base: float) -> float:
    """The farthest any of the finite ``values`` (losses) lies from ``base``, O(n) with no temporaries;
    inf where it overflows."""
    v = np.asarray(values)
    if not v.size:
        return 0.0
    return max(float(v.max()) - base, base - float(v.min()))


def loss_grid(loss: float, diffs, far: float = 0.0) -> tuple | None:
    """``(spacing, what, fix)`` of a grid coarser than float32's that the base ``loss`` and every
    one of ``diffs`` (the perturbed losses less the base one, or less each other) lie on, ``what``
    saying what it looks like and ``fix`` what to do; None where there is none, and where every
    difference is 0 (a flat loss looks alike) save at a base loss of 2 to 8 decimals and 3 significant
    digits or more (a loss printed to 6 decimals at a mu of 1e-8: a flat float64 loss is none; a floor
    such as ``max(loss, 0.01)`` is a round number).

    ``far``: where ``diffs`` are taken between perturbed losses (the central scheme's), how far the
    farthest of them lies from the base loss (:func:`loss_spread`): a step of the grid too, or no grid
    (at a minimum, f(x + mu) == f(x - mu) off the base loss's grid). None also where float64 resolves the
    losses differenced no finer than 1/800 of the grid (8 of its units within 0.01 of a step, as for the
    base loss): at a base loss of 0.00361 two losses near 1e69 are the same float, 0 apart, whatever the
    loss; subnormal losses are multiples of 5e-324, as few bits as float16's. A nonzero difference must
    be a step or more (a rounded loss's values are equal or a step apart): one of a few units of float64
    is a float64 loss's."""
    if not may_be_gridded(loss):
        return None
    d = np.asarray(diffs, dtype=np.float64).reshape(-1)
    nz = d[d != 0]
    if not math.isfinite(far) or not bool(np.all(np.isfinite(nz))):  # (overflowed: at float64's end)
        return None
    far = max(far, float(nz.max()), -float(nz.min())) if nz.size else far
    # 8 units of float64 at the losses differenced: a grid 100 times that is told from float64's own
    ulps = 8 * math.ulp(abs(loss) + far)
    low, base_bits = _short_bits(loss)  # (the base loss in Python floats: 25 us of NumPy calls a step before)
    if nz.size:
        q = min(low, float(_lowest_bit(nz).min()), _short_bits(far)[0])
        bits = math.frexp(abs(loss))[1] - int(math.log2(q))
        if bits <= NARROW_BITS and ulps <= 0.01 * q:
            if q >= 1:
                return q, "are whole numbers (a count, or a loss rounded to an integer)", _COUNT
            return q, (f"carry only {bits} significant bits (float16 keeps 11, bfloat16 8, float32 24: the loss is "
                       "computed in a narrower float than the Python float it comes back as)"), _NARROW
    elif base_bits <= NARROW_BITS:  # every difference 0 at a short binary (3.0, 0.25): a flat loss's too
        return None
    k = _loss_decimals(loss)
    if k is None:
        return None
    digits = round(abs(loss) * 10.0**k)
    # (flat at a decimal of 2 places or more and 3 digits or more, a loss printed with %.6f: no flat float64 loss
    # is one; a floor or a constant a person wrote, max(loss, 0.01), 1e-6, has one or two. None at all: a loss
    # within float64's rounding of 0, 1e-323, is written in no decimals, rounded to none)
    if not digits or (not nz.size and (k < 2 or digits < 100)):
        return None
    # (one grid, the base loss's own: a base loss 0.120 rounded to 3 decimals reads as 2 and is missed; trying
    # finer grids until the differences fit called a hinge or an L1 loss at a round base loss rounded, its
    # differences exact multiples of mu)
    q = 10.0**-k
    if q <= float(np.spacing(np.float32(abs(loss)))):  # finer than a float32 loss: not judged, as float32 is not
        return None
    if nz.size or far:  # (each a nonzero number of steps)
        tol = ulps / q
        r = np.append(nz, far) / q
        n = np.round(r)
        if not (tol <= 0.01 and bool(np.all(np.abs(r - n) <= tol)) and bool(np.all(n != 0))):
            return None
    return q, f"are multiples of {q:g} (a loss rounded to {k} decimals, or printed so)", _ROUNDED


# ({do}: "return", or "tell" where the losses were told to an AskTell)
_COUNT = ("a count (errors, events) moves in whole steps whatever its type: raise mu, or train on a smooth "
          "surrogate (a margin or cross-entropy loss); a loss rounded to an integer: {do} it unrounded")
_NARROW = ("compute the loss in float64 (a torch model in float16 or bfloat16, or under autocast: run it in float32 "
           "or float64), or raise mu")
_ROUNDED = ("{do} the loss unrounded (printed by a program: print it with repr or %.17g), or raise mu")


def coarse_grid(loss: float, diffs, mu: float, typical, points=None, far: float = 0.0) -> str:
    """Why the differences ``diffs`` over ``mu`` are coarse, read from the values, or empty: as
    :func:`~zoracle._oracle.coarse_losses` for a loss's type, with the grid :func:`loss_grid` finds
    (``points``: a function returning the perturbed coordinates, CGE's or every one for Rademacher RGE, whose
    queries step by exactly mu, read only where a grid is found,
    :func:`exact_points` then not judged; ``far``: as for :func:`loss_grid`)."""
    found = loss_grid(loss, diffs, far)
    if found is None:
        return ""
    step, what, fix = found
    if callable(typical):
        typical = typical()
    if step / mu <= RESOLUTION * typical or (points is not None and exact_points(points(), mu)):
        return ""
    d = np.asarray(diffs).reshape(-1)
    zeros = int(np.count_nonzero(d == 0))
    whose = told("the oracle's losses", "the losses told")  # (an AskTell's: told, not returned)
    n = None if fix is _COUNT else mean_count(loss, d, far)  # (whole numbers: a count, named as such)
    fix = fix.format(do=told("return", "tell"))
    if n is not None:  # (a mean of CartPole's returns over 5 episodes read as "rounded to 1 decimals")
        what += f", or are multiples of 1/{n} (a mean of whole numbers over {n} items or episodes)"
        fix += (f"; a mean of whole numbers (integer rewards over {n} episodes, an error count over a batch) moves "
                f"in steps of 1/{n} whatever its type: raise mu, or train on a smooth surrogate")
    return (f"{whose} {what}: near the base loss {loss:.6g} they are {step:.3g} apart, so a difference "
            f"over mu = {mu:g} resolves a partial derivative only to {step / mu:.3g} ({zeros} of the {d.size} "
            f"differences were exactly 0); {fix}")


def mean_count(loss: float, diffs, far: float = 0.0, most: int = MAX_MEAN_COUNT) -> int | None:
    """The smallest ``n`` from 2 to ``most`` for which the base ``loss`` and every one of ``diffs`` (and
    ``far``, as for :func:`loss_grid`) are whole multiples of ``1/n``, up to 8 units of float64 at the
    losses, or None: a mean of whole numbers over ``n`` (or a multiple of ``n``) items. Read only where
    a grid is warned of (a loop over ``n``: not on every estimate)."""
    v = np.append(np.asarray(diffs, dtype=np.float64).reshape(-1), [loss, far])
    v = np.unique(v[v != 0])
    if not v.size or not bool(np.all(np.isfinite(v))):
        return None
    # (at the largest loss differenced, as loss_grid's: a difference of 3.2 from a base loss of 0.2 rounds
    # at 3.4's spacing, and a tolerance at 0.2's read a mean over 5 as one over 25)
    ulps = 8 * math.ulp(abs(loss) + float(np.max(np.abs(v))))
    for n in range(1, most + 1):
        if ulps * n > 0.01:
            return None
        scaled = v * n
        if bool(np.all(np.abs(scaled - np.round(scaled)) <= ulps * n)):
            return n if n > 1 else None  # (whole numbers: a count, which the verdict names)
    return None
