"""``check_oracle``: verify an oracle's declared capabilities against plain calls."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .._backend import namespace, real_numpy
from .._diagnose import DRIFT_FIX, NOISE_FIX
from .._errors import ArgumentError, OracleError, ZoracleError, finite_real
from .._estimators import as_generator, validate_params
from .._oracle import (Oracle, capabilities, check_features, check_scalar, compute_dtype_of, loss_type, precision_bits,
                       readonly, reject_async, shared_features, _tensor_versions)
from .._plan import _WROTE_PAST, _WROTE_PAST_FIX, check_blocks, queries_per_call, seal

__all__ = ["OracleCheckError", "check_oracle"]


class OracleCheckError(ZoracleError, AssertionError):
    """An oracle's capability disagrees with its plain calls; the message lists every failure."""


# the finite differences a fast path gives may differ from the plain calls' by this fraction of
# the largest loss change checked (rounding of a float32 model's outputs, a solver's tolerance)
DIFF_RTOL = 1e-3


def _close(a, b, rtol, atol, base=None, group=True):
    """``a`` (the fast path's losses) within ``atol + rtol * |b|`` of ``b`` (the plain calls'), or
    within ``DIFF_RTOL`` of its loss change ``|b - base|`` (``group``: of the group's largest),
    whichever is larger: the
    estimators use the changes, which a tolerance relative to the loss alone would miss under
    a large loss."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not a.size:
        return True, 0.0
    dev = np.abs(a - b)
    allowed = atol + rtol * np.abs(b)
    if base is not None:
        change = np.abs(b - base)
        # in float64, each query's own change: the group's largest let a small one be anything (a
        # bias beside weights of 1e4 curvature, left unperturbed); float32 rounding needs the group's
        allowed = np.maximum(allowed, DIFF_RTOL * (float(np.max(change)) if group else change))
    ok = bool(np.all(dev <= allowed))
    if base is not None:
        if ok and group:
            # float32's atol of 1e-7 is wider than the changes under a small loss (a loss of 3.6e-5):
            # where the group's changes stand well above the loss's own rounding, the fast path's
            # must follow them (a wrong sign is twice their size off, zeros once and more)
            size = float(np.linalg.norm(b - base))
            floor = 100 * float(np.spacing(np.float32(abs(base)))) * np.sqrt(a.size)
            ok = size <= floor or float(np.linalg.norm((a - base) - (b - base))) <= 1.5 * size
    return ok, float(np.max(dev))


def _worst(got, want, coords, method: str = "", kinds=(), plain: str = "float", unit: str = "coordinate") -> str:
    """Where a capability's losses deviate most from the calls', with both values there and, given
    ``method`` (the capability), why they differ where the losses show it, and the fix."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape or not got.size:
        return ""
    j = int(np.argmax(np.abs(got - want)))
    where = f" (most at {unit} {int(coords[j])})"
    if not method:
        return where
    return f"{where}: `{method}` gave {got[j]:.10g}, the plain call {want[j]:.10g}; {_why(got, want, method, kinds, plain)}"


def _why(got, want, method: str, kinds, plain: str) -> str:
    """Why a capability's losses ``got`` differ from the plain calls' ``want``, as the losses show it,
    and the fix: a narrower type, another order, a factor (another reduction), an offset."""
    narrow = min(kinds, key=precision_bits, default=None)
    bits = precision_bits(narrow) if narrow is not None else 53
    # the narrower type where its rounding (or a computation in it) can explain the gap: a mean in float32
    # where the call sums in float64 was blamed on float32 alone, and stayed wrong once made float64
    if bits < precision_bits(plain) and np.max(np.abs(got - want)) <= (
            1.0 if bits == 0 else 2.0 ** (4 - bits) * float(np.max(np.abs(want)))):
        return (f"`{method}` returns {narrow} losses, the plain call {'a Python float' if plain == 'float' else plain}: "
                "compute them as the plain call does and return them unrounded (a float64 array)")
    generic = (f"`{method}` must compute the plain call's loss: not another minibatch or reduction, nor with dropout "
               "or noise on")
    if got.size < 2:  # (one loss fits a factor and an offset alike)
        return generic
    if np.max(np.abs(np.sort(got) - np.sort(want))) <= 1e-9 * max(1.0, float(np.max(np.abs(want)))):
        return (f"`{method}` returns the plain calls' losses in another order: return the loss of query i at "
                "position i")
    diff = got - want
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = got / want
        # each spread against the size of the disagreement it would explain: 0 for the right one
        by_factor = float(np.ptp(ratio) / abs(np.median(ratio) - 1.0))
        by_offset = float(np.ptp(diff) / abs(np.median(diff)))
    if by_factor <= 1e-6 and not by_offset < by_factor:
        return (f"`{method}`'s losses are the plain calls' times {float(np.median(ratio)):.6g} (another reduction: "
                "a mean where the call sums, or a sum where it averages): compute the same loss both ways")
    if by_offset <= 1e-6:
        return (f"`{method}`'s losses are the plain calls' {float(np.median(diff)):+.6g} (a term one of them leaves "
                "out: a regularizer, a constant): compute the same loss both ways")
    return generic


def _result_type(value) -> str:
    """The loss type of a capability's result: its dtype's name, or its first item's type (a list)."""
    if getattr(value, "dtype", None) is None and isinstance(value, (list, tuple)) and value:
        return loss_type(value[0])
    return loss_type(value)


def _losses(value, k: int, kinds=None) -> np.ndarray:
    """A capability's losses as float64; the shapes estimate_gradient takes, (k,) or (k, 1), as
    (k,), any other shape kept (and failed by the caller). ``kinds``: a list the result's
    :func:`_result_type` is added to."""
    if kinds is not None:
        kinds.append(_result_type(value))
    # (a torch tensor that requires grad, a bfloat16 one, as estimate_gradient takes them)
    got = np.asarray(real_numpy(value, np.float64), dtype=np.float64)
    return got.reshape(-1) if got.shape in ((k,), (k, 1)) else got


def _unsorted(coords: np.ndarray) -> np.ndarray:
    """``coords`` in an unsorted order: a random order of two coordinates is sorted half the time,
    and an oracle answering in sorted order then passed (reversed, it cannot)."""
    return coords[::-1].copy() if len(coords) > 1 and bool(np.all(np.diff(coords) > 0)) else coords


def _chunked(ask, coords, cap: int, first_alone: bool = False, kinds=None) -> tuple:
    """``ask(c)``'s losses for ``coords`` in calls of at most ``cap`` coordinates, each given as a
    read-only copy (as the planner sends them), and a note: empty, or, for a call of the wrong
    shape (returned as it is), its size and shape. ``first_alone``: the first coordinate in a
    call of its own (the planner sends one wherever a chunk or a mask's block leaves one: a
    result squeezed to a scalar fails there)."""
    parts = []
    alone = first_alone and len(coords) > 1
    starts = [0] * alone + list(range(int(alone), len(coords), cap))
    for lo, hi in zip(starts, starts[1:] + [len(coords)]):
        c = readonly(np.array(coords[lo:hi]))
        got = _losses(ask(c), len(c), kinds)
        if got.shape != (len(c),):
            return got, (f"a call of {len(c)} coordinate(s) returned shape {got.shape} (estimate_gradient takes "
                         f"({len(c)},) or ({len(c)}, 1)), ")
        parts.append(got)
    return np.concatenate(parts), ""


def _ask(what: str, fn, *args):
    """``fn(*args)``; an exception there is the oracle's failure, reported as the check's."""
    try:
        return fn(*args)
    except Exception as exc:
        raise OracleCheckError(f"check_oracle: {what} raised {type(exc).__name__}: {exc}") from exc


def check_oracle(oracle: Any, params: Any, *, n_coords: int = 8, n_rows: int = 8, step: float = 1e-2,
                 rtol: float | None = None, atol: float | None = None, rng: Any = 0) -> dict[str, Any]:
    """Check ``oracle``'s declared capabilities against plain calls at ``params``.

    Checks: the oracle returns a finite scalar and is deterministic (two calls at ``params``
    give the same bits: ``rtol`` and ``atol`` do not apply); it equals
    ``oracle.reference_loss(params)`` where the oracle offers one (TorchOracle: the plain,
    unpatched ``model(x)``), which then replaces plain calls as the reference below;
    ``batch`` equals a loop of calls and returns one loss per row; ``coordinate_losses`` equals
    calls at ``params + step * e_i`` and at ``params - step * e_i``, for ``n_coords`` sampled
    coordinates and the first and last, in an unsorted order (central CGE sends both signs, and
    a caller's coordinates keep their order); for a SplitOracle, ``blocks`` are contiguous,
    ordered, disjoint and cover ``[0, d)``, and ``prefix`` + ``suffix`` equal full evaluations
    for coordinates sampled in every block and the block's first and last (where slice bugs
    sit), in an unsorted order and with both signs, each call given what ``estimate_gradient`` gives it
    (a read-only view of the parameters, the block's features shared; a write into either past
    its read-only flag fails the check as it fails the estimate); for a bound data oracle with ``unbind()``,
    ``parent.bind(batch)`` of what it returns answers as the oracle does (process and cluster
    workers rebuild it so). A failure names the coordinate (or ``batch`` row) that deviates most, the
    fast path's and the plain call's losses there, and what they show with the fix: a narrower loss
    type than the plain call's, the losses in another order, a constant factor (another reduction)
    or offset (a term one of them leaves out).

    A fast path's loss passes when it is within ``atol + rtol * |loss|`` of the plain call's
    (rounding), or within 0.1% of its own loss change (the estimators use the changes: under a
    large loss, a tolerance relative to the loss alone would pass a fast path whose changes are
    wrong); in float32, within 0.1% of the largest loss change of its group, which float32
    rounding of a correct fast path needs. ``rtol`` and ``atol`` default by
    ``params``' dtype: 1e-10 and 1e-12 in float64; 1e-5 and 1e-7 in float32 (where a group's loss
    changes stand well above the float32 rounding of the loss, they must also agree with the
    calls' to within 1.5 times their size: under a small loss, 1e-7 passed a fast path whose
    changes had the wrong sign), where a correct
    fast path and a plain call may differ by a few units of the float32 rounding of the
    model's outputs (the float32 tolerances also apply to an oracle whose ``compute_dtype`` is
    float32, whatever ``params``' dtype). Check at the step you train with (``step=mu``): a fast path that adds
    ``step`` where ``params`` cannot represent it shows only at steps near that resolution (with
    float32 ``params``, only where its error exceeds the float32 tolerance: at a large loss it may not). In
    float32, check at the default step too: a fast path whose loss changes are wrong passes
    where the changes its steps make are within the rounding tolerance (at ``mu = 5e-3`` on a
    small float32 classifier at its initial loss of 2.3, about 80 float32 units).

    Every capability is checked at ``params`` and again at a second point (``params`` moved by
    ``step / 2`` up or down in every entry), with ``batch`` rows that move one coordinate,
    ``n_rows`` rows that move every coordinate by ``step`` (RGE's) and one such row alone (a
    ``batch`` that squeezes a one-row result to a scalar), each group against its own tolerance
    and sent in calls of at most the oracle's ``max_queries_per_call`` rows; ``coordinate_losses``
    and ``suffix`` get one coordinate in a call of its own too (at ``-step``); a plain call after
    the capability calls must equal the first (nothing left behind). ``rng`` (a Generator, an
    int or None; default 0, so a check repeats) draws the sampled coordinates, rows and signs.

    Returns
    -------
    dict
        Largest absolute deviation per check (for reporting).

    Raises
    ------
    OracleCheckError
        Listing every failed check with the deviation found.
    ArgumentError
        An argument out of range (``step`` 0, a negative tolerance, ``n_coords`` < 1), before any call.
    """
    params = validate_params(params)
    step = _checked_arguments(oracle, step, rtol, atol, n_coords, n_rows)
    check = _Checker(oracle, params, step, rtol, atol, rng)
    check.first_calls()
    gen, d, caps = check.gen, check.d, check.caps
    coords = gen.choice(d, size=min(n_coords, d), replace=False)  # unsorted: a caller's order is kept
    coords = np.concatenate([coords, [i for i in (d - 1, 0) if i not in coords]]).astype(np.int64)  # the ends too
    # the capabilities at params and again at a second point (every entry moved by about `step`):
    # a fast path that caches what it computed at the first point (a base loss, prefix features)
    # and serves it at the next shows only there
    # bounded moves (half a step at the second point, a step in the dense rows): an oracle defined
    # near a boundary (p > 0) is asked only where the one-coordinate checks already go
    second = params + check.xp.asarray((0.5 * step * gen.choice([-1.0, 1.0], d)).astype(params.dtype))
    # batch rows go as estimate_gradient sends them: at most max_queries_per_call a call
    cap = queries_per_call(oracle)  # (and coordinate_losses / suffix calls, as the planner chunks them)
    for at, where in ((params, ""), (second, " at a second point (params moved by step/2 in every entry)")):
        # changes are measured from here
        ref0 = check.call(at) if check.reference is not None or at is not params else check.base
        if caps.batch:
            check.batch(at, where, ref0, coords, n_rows, cap)
        if caps.coordinate:
            check.coordinate_losses(at, where, ref0, coords, cap)
        if caps.split:
            check.prefix_suffix(at, where, ref0, n_coords, cap)
    check.unbind(coords)
    check.state()
    check.raise_failures()
    return check.report


def _checked_arguments(oracle, step, rtol, atol, n_coords, n_rows) -> float:
    """:func:`check_oracle`'s arguments refused as it documents them, before any call; ``step`` as a float."""
    if not callable(oracle):
        raise ArgumentError(f"`oracle` must be callable (params -> loss), got {type(oracle).__name__}")
    reject_async(oracle)
    if not finite_real(step) or step == 0:  # (np.isfinite raised TypeError on an int beyond int64)
        raise ArgumentError(f"`step` must be a finite nonzero number (the perturbation checked; use the mu you "
                            f"train with), got {step!r}")
    step = float(step)  # a NumPy scalar (np.float32(mu)) made `step < 0` a np.bool_, which `[0] * alone` refused
    for name, v in (("rtol", rtol), ("atol", atol)):
        if v is not None and (not finite_real(v) or not v >= 0):
            raise ArgumentError(f"`{name}` must be a finite number >= 0 (or None for the dtype's default), got {v!r}")
    for name, v in (("n_coords", n_coords), ("n_rows", n_rows)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ArgumentError(f"`{name}` must be an integer >= 1, got {v!r}")
    return step


class _Checker:
    """One :func:`check_oracle` run: the oracle, its tolerances, and the failures and deviations found,
    each capability's check a method, called in the order the docstring gives."""

    def __init__(self, oracle, params, step, rtol, atol, rng):
        self.oracle, self.params, self.step = oracle, params, step
        # an oracle that computes in float32 (``compute_dtype``: a float32 model given float64 params)
        # differs from its reference by float32 rounding, whatever params' dtype
        computes = compute_dtype_of(oracle) or params.dtype
        self.single = params.dtype == np.float32 or computes == np.float32
        self.rtol = (1e-5 if self.single else 1e-10) if rtol is None else rtol
        self.atol = (1e-7 if self.single else 1e-12) if atol is None else atol
        self.xp = namespace(params)
        self.gen = as_generator(rng)
        self.d = params.shape[0]
        self.caps = capabilities(oracle)
        self.failures, self.report = [], {}
        self.dt = params.dtype.type
        # an oracle that runs a model through its own machinery (TorchOracle) offers the plain,
        # unpatched evaluation as ``reference_loss``: every fast path is compared against it
        self.reference = getattr(oracle, "reference_loss", None)
        self.plain = None  # the plain call's loss type, against which the fast paths' are compared
        self.base = None  # the plain call's loss at params

    # the oracle gets what estimate_gradient gives it: a read-only array per call, a private copy
    # per capability call (one that writes into its input must not change the reference's)
    @staticmethod
    def frozen(x):
        x = x.copy()
        if isinstance(x, np.ndarray):
            x.flags.writeable = False
        return x

    def call(self, x):
        reference, oracle = self.reference, self.oracle
        what = "reference_loss(x)" if reference is not None else "oracle(x)"
        x = self.frozen(x)
        return _ask(what, lambda: check_scalar(reference(x) if reference is not None else oracle(x), what))

    def perturbed(self, at, i, s):
        x = at.copy()
        x[i] = x[i] + self.dt(s)
        return x

    def close(self, got, want, ref0):
        """A capability's losses ``got`` against the calls' ``want``, measured from ``ref0``: (ok, deviation)."""
        if got.shape != (len(want),):
            return False, np.inf
        return _close(got, want, self.rtol, self.atol, ref0, self.single)

    def first_calls(self) -> None:
        """The plain call at params: a finite scalar, equal to ``reference_loss``, and the same bits twice."""
        oracle, params, plain = self.oracle, self.params, []

        def first():
            value = oracle(self.frozen(params))
            plain.append(loss_type(value))
            return check_scalar(value, "oracle(params)")

        self.base = base = _ask("oracle(params)", first)
        self.plain = plain[0]
        if self.reference is not None:
            ok, dev = _close(base, self.call(params), self.rtol, self.atol)
            self.report["reference"] = dev
            if not ok:
                self.failures.append(f"reference: oracle(params) deviates from reference_loss(params) by {dev:.3g}")
        again = _ask("oracle(params)", lambda: check_scalar(oracle(self.frozen(params)), "oracle(params), a second time"))
        ok, dev = _close(base, again, 0, 0)
        self.report["determinism"] = dev
        if not ok:
            self.failures.append(f"determinism: two calls at the same params differ by {dev:.3g} (compared bit for bit: "
                                 f"rtol and atol do not apply; check an oracle that draws noise with its noise fixed, "
                                 f"e.g. bound to a seed). A reading that cannot be seeded (hardware) fails this check "
                                 f"whatever you do; to train on it (docs/training.md, 'Noisy black boxes'), "
                                 f"{NOISE_FIX}; if the reading drifts with time, {DRIFT_FIX}")

    def batch(self, at, where, ref0, coords, n_rows, cap) -> None:
        """``batch`` at ``at``: rows that each move one coordinate, rows that move every coordinate (RGE's)
        and one row alone, each group against a loop of calls."""
        oracle, xp, step, d = self.oracle, self.xp, self.step, self.d
        rows = min(n_rows, d)
        # steps within +-step, where the one-coordinate checks go (an oracle with a bounded domain)
        one = [self.perturbed(at, int(i), step * (r + 1) / rows) for r, i in enumerate(coords[:rows])]
        dense = [at + xp.asarray((step * self.gen.choice([-1.0, 1.0], d)).astype(self.params.dtype))
                 for _ in range(n_rows)]
        for kind, group in (("rows that move one coordinate", one), ("rows that move every coordinate", dense),
                            ("one row alone", dense[:1])):
            X = xp.stack(group)
            want = [self.call(X[r]) for r in range(X.shape[0])]
            parts, kinds = [], []
            for lo in range(0, X.shape[0], cap):
                part = X[lo:lo + cap]
                parts.append(_ask(f"oracle.batch(X){where}",
                                  lambda: _losses(oracle.batch(part.copy()), part.shape[0], kinds)))
            bad = [g for g in parts if g.ndim != 1]
            got = bad[0] if bad else np.concatenate(parts)
            # each group its own tolerance: the dense rows' larger changes must not widen the other's
            ok, dev = self.close(got, want, ref0)
            self.report["batch"] = max(self.report.get("batch", 0.0), dev)
            if not ok:
                self.failures.append(f"batch{where}: {got.shape} result ({kind}) deviates from a loop of calls by "
                                     f"{dev:.3g}{_worst(got, want, range(len(want)), 'batch', kinds, self.plain, 'row')}")

    def coordinate_losses(self, at, where, ref0, coords, cap) -> None:
        """``coordinate_losses`` at ``at``, both signs, against calls at ``at +- step * e_i``."""
        oracle, step = self.oracle, self.step
        shuffled = _unsorted(self.gen.permutation(coords))
        worst = self.report.get("coordinate_losses", 0.0)
        for s in (step, -step):
            kinds = []
            got, note = _ask(f"oracle.coordinate_losses(params, {shuffled.tolist()}, {s:g}){where}", lambda: _chunked(
                lambda c: oracle.coordinate_losses(at.copy(), c, s), shuffled, cap, first_alone=s < 0, kinds=kinds))
            want = [self.call(self.perturbed(at, int(i), s)) for i in shuffled]
            ok, dev = self.close(got, want, ref0)
            worst = max(worst, dev)
            if not ok:
                self.failures.append(f"coordinate_losses{where}: {note}deviates from calls at "
                                     f"params {'+' if s > 0 else '-'} step*e_i (coordinates {shuffled.tolist()}) by "
                                     f"{dev:.3g}{_worst(got, want, shuffled, 'coordinate_losses', kinds, self.plain)}")
        self.report["coordinate_losses"] = worst

    def prefix_suffix(self, at, where, ref0, n_coords, cap) -> None:
        """A SplitOracle's ``blocks`` (at params), and ``prefix`` + ``suffix`` at ``at`` for coordinates of every
        block, both signs, against full evaluations."""
        oracle = self.oracle
        blocks = list(oracle.blocks)
        if at is self.params:
            try:
                check_blocks(blocks, self.d)  # the planner's own check
            except ArgumentError as exc:
                self.failures.append(f"blocks: {exc}")
        if any(f.startswith("blocks") for f in self.failures):
            return
        worst = self.report.get("prefix_suffix", 0.0)
        split = Oracle(oracle)
        for b, blk in enumerate(blocks):
            n = min(max(1, n_coords // 2), blk.stop - blk.start)
            cb = self.gen.choice(np.arange(blk.start, blk.stop), size=n, replace=False)  # unsorted
            cb = _unsorted(np.concatenate([cb, [i for i in (blk.stop - 1, blk.start) if i not in cb]]).astype(np.int64))
            # as estimate_gradient calls them: a read-only view of the parameters (a copy for one that
            # writes into it), shared features, a tensor among them or the parameters written past the
            # read-only flag refused (a check that gave copies passed oracles the estimate refuses)
            mine = at.copy()
            feats = _ask(f"oracle.prefix(params, {b}){where}", lambda: split._split_call(
                lambda p: oracle.prefix(p, b), mine))
            for s in (self.step, -self.step):
                what = f"oracle.suffix(features, params, {b}, {cb.tolist()}, {s:g})"

                def ask(c, s=s):
                    seen = _tensor_versions(feats)
                    got = split._split_call(lambda p: oracle.suffix(shared_features(feats), p, b, c, s), mine)
                    check_features(seen, b, f"block {b}")
                    if seal(mine) != seal(at):
                        raise OracleError(f"block {b}", cause=RuntimeError(_WROTE_PAST), detail=_WROTE_PAST_FIX)
                    return got

                kinds = []
                got, note = _ask(what, lambda: _chunked(ask, cb, cap, first_alone=s < 0, kinds=kinds))
                want = [self.call(self.perturbed(at, int(i), s)) for i in cb]
                ok, dev = self.close(got, want, ref0)
                worst = max(worst, dev)
                if not ok:
                    self.failures.append(f"prefix+suffix{where}: block {b}, step {s:+g}, coordinates "
                                         f"{cb.tolist()}: {note}deviates from calls by {dev:.3g}"
                                         f"{_worst(got, want, cb, 'suffix', kinds, self.plain)}")
        self.report["prefix_suffix"] = worst

    def unbind(self, coords) -> None:
        """A bound data oracle's unbind() -> (parent, batch): process and cluster workers rebuild it as
        parent.bind(batch), which must answer as it does (an unbind off by a sample trained the
        workers on another loss, and nothing said so)."""
        oracle, params = self.oracle, self.params
        unbind = getattr(oracle, "unbind", None)
        got = _ask("oracle.unbind()", unbind) if callable(unbind) else None
        if got is None:
            return
        if not (isinstance(got, tuple) and len(got) == 2):
            self.failures.append(f"unbind: returned {type(got).__name__}, not (parent, batch) or None")
            return
        rebound = _ask("parent.bind(batch) of oracle.unbind()", got[0].bind, got[1])
        worst, bad = 0.0, False
        for x in (params, self.perturbed(params, int(coords[0]), self.step)):
            mine = _ask("oracle(x)", lambda: check_scalar(oracle(self.frozen(x)), "oracle(x)"))
            theirs = _ask("parent.bind(batch)(x)",
                          lambda: check_scalar(rebound(self.frozen(x)), "parent.bind(batch)(x)"))
            ok, dev = _close(theirs, mine, self.rtol, self.atol)
            worst, bad = max(worst, dev), bad or not ok
        self.report["unbind"] = worst
        if bad:
            self.failures.append(f"unbind: parent.bind(batch) of oracle.unbind() deviates from the oracle by "
                                 f"{worst:.3g} "
                                 "(process and cluster workers rebuild the oracle so: unbind must return the parent "
                                 "and the very batch it was bound to)")

    def state(self) -> None:
        """The capability calls must leave the oracle as they found it (a mode switched and not put back
        changes every later call)."""
        caps = self.caps
        if not (caps.batch or caps.coordinate or caps.split):
            return
        after = _ask("oracle(params)",
                     lambda: check_scalar(self.oracle(self.frozen(self.params)), "oracle(params), after the checks"))
        ok, self.report["state"] = _close(self.base, after, 0, 0)
        if not ok and self.report["determinism"] == 0:  # (a nondeterministic oracle differs anyway: said above)
            self.failures.append(f"state: oracle(params) after the capability calls differs from before them by "
                                 f"{self.report['state']:.3g} (a fast path left state behind: a mode, a cache, a "
                                 f"buffer; or the oracle's calls differ by themselves, as sums in another order each "
                                 f"call do)")

    def raise_failures(self) -> None:
        """One :class:`OracleCheckError` listing every failure, with the tolerances where they applied."""
        failures, single = self.failures, self.single
        if not failures:
            return
        exact = all(f.startswith(("determinism:", "state:")) for f in failures)  # bit for bit: no tolerance
        raise OracleCheckError(
            f"check_oracle found {len(failures)} problem(s) with {type(self.oracle).__name__}:\n  - "
            + "\n  - ".join(failures)
            + ("" if exact else f"\n(allowed: atol + rtol * |loss| with rtol={self.rtol:g}, atol={self.atol:g}, or "
               f"{DIFF_RTOL:g} of "
               + ("the largest loss change of the query's group (float32)" if single else "the query's own loss change")
               + ("" if single else "; an oracle that computes in float32 while its params are float64 differs by "
                  "float32 rounding: give it compute_dtype = np.float32, or pass rtol=1e-5, atol=1e-7") + ")")
        )
