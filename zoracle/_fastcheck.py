"""The first estimate through a user oracle's fast path checks it against the plain call.

An estimate takes the base loss from the oracle's plain call and the perturbed losses from a fast
path (``batch``, ``coordinate_losses``, ``prefix`` / ``suffix``): one that computes another loss
(the rows in another order, a constant offset, a sum where the call takes a mean) moves every
difference, and the run trains to a wrong point without an error. So the first estimate of a
``train`` run that uses a fast path (one per run and fast path, whatever oracles the run binds)
asks the plain call once more, at the point of one of the fast path's queries (``prefix`` / ``suffix``:
one in each block), and compares. One
that disagrees past the losses' rounding is refused with a warning naming why: the estimate is
made again with plain calls, and so is every later one of the run. ``estimate_gradient`` called
alone makes no check (its ``nfev`` stays a function of its arguments). An oracle that checks its
own fast paths (``TorchOracle``) sets ``fast_paths_checked = True`` and is not asked.
"""
from __future__ import annotations

import collections
import contextvars
import dataclasses
import threading
import weakref

import numpy as np

from ._backend import to_numpy
from ._diagnose import DRIFT_FIX, NOISE_FIX
from ._errors import user_stacklevel, warn
from ._forked import ForkSafeLock
from ._grid import NARROW_BITS, exact_points, value_bits
from ._oracle import compute_dtype_of, loss_type, precision_bits
from ._plan import CoordTask, DirectionTask, PointTask

#: units of the narrowest loss type's last place a fast path may differ from the plain call by
ROUNDING_ULPS = 64
#: the part of the largest difference an estimate takes that a disagreement may move it by
EFFECT = 1e-3
#: the fewest significant bits of a float that losses are rounded to (bfloat16's): losses that show fewer
#: are short numbers computed exactly (a count's mean over 4 rows, a quadratic at integer params and
#: mu = 0.25), no narrower float's rounding, and a fast path off by 0.5 passed a tolerance of 4x the loss
FEWEST_BITS = 8

#: a gap below this part of the loss may be a reduced precision's rounding (bfloat16 keeps 8 bits):
#: the refusal's warning then names the opt-out for a fast path that is sound
REDUCED_ROUNDING = 2.0 ** -7

#: set while ZO-GraSP scores layers: its estimates are no training step, and its queries a fixed count
_OFF = contextvars.ContextVar("zoracle_fast_path_check_off", default=False)

#: ``(oracle, verdicts)`` of the ``train`` step estimating in this thread: a run's own, which another run
#: on the same oracle object in another thread (a sweep on a thread pool) neither reads nor writes
_RUN = contextvars.ContextVar("zoracle_fast_path_run", default=None)

_METHOD = {"batch": "batch", "coordinate": "coordinate_losses", "split": "prefix and suffix"}


class _Verdicts:
    """Each oracle object's verdicts (``{capability: passed}``), held weakly: a ``train`` run gives
    every oracle it binds one dict of its own (:func:`share_verdicts`)."""

    def __init__(self):
        # reentrant: a garbage collection inside the lock (making a weak reference allocates) may run a
        # dead oracle's callback, _drop, in this thread, which takes the lock again (a Lock hung there)
        self.lock = ForkSafeLock(threading.RLock)
        self.held = {}  # id -> (weak reference, verdicts)
        self.kept = collections.OrderedDict()  # objects without weak references: id -> (type, verdicts)

    def get(self, obj):
        """``obj``'s verdicts, or None where no ``train`` run gave it any."""
        with self.lock:
            found = self.held.get(id(obj))
            if found is not None and found[0]() is obj:
                return found[1]
            got = self.kept.get(id(obj))
            return got[1] if found is None and got is not None and got[0] is type(obj) else None

    def of(self, obj, verdicts=None) -> dict:
        key = id(obj)
        with self.lock:
            found = self.held.get(key)
            if found is not None and found[0]() is obj and (verdicts is None or found[1] is verdicts):
                return found[1]  # (a run's dict given again, each step: kept as it is, no new weak reference)
            got = self.kept.get(key)
            if found is None and got is not None and got[0] is type(obj) and verdicts is None:
                return got[1]
            verdicts = {} if verdicts is None else verdicts
            try:
                ref = weakref.ref(obj, lambda r, key=key: self._drop(key, r))
            except TypeError:  # (no weak references: __slots__) at most 64 kept; a reused id skips a check
                self.kept[key] = (type(obj), verdicts)
                while len(self.kept) > 64:
                    self.kept.popitem(last=False)
                return verdicts
            self.held[key] = (ref, verdicts)
            return verdicts

    def _drop(self, key, ref) -> None:
        with self.lock:
            if self.held.get(key, (None,))[0] is ref:
                del self.held[key]


_VERDICTS = _Verdicts()


def share_verdicts(oracle, verdicts: dict) -> None:
    """Give ``oracle`` (a ``train`` run's bound oracle) the run's ``verdicts``: checked once a run."""
    _VERDICTS.of(oracle, verdicts)


class checking:
    """A ``train`` step's estimate through ``oracle`` (the run's bound oracle), checked with the run's
    ``verdicts``: those of this thread's run, whatever other runs share the oracle object. (A class: a
    generator's context manager took twice its time, each step of a cheap oracle's run.)"""

    __slots__ = ("_run", "_token")

    def __init__(self, oracle, verdicts: dict):
        self._run, self._token = (oracle, verdicts), None

    def __enter__(self):
        share_verdicts(*self._run)
        self._token = _RUN.set(self._run)

    def __exit__(self, *exc):
        _RUN.reset(self._token)
        return False


def _verdicts_of(fn):
    """``fn``'s verdicts: this thread's run's while one estimates through it, else the registry's."""
    run = _RUN.get()
    return run[1] if run is not None and run[0] is fn else _VERDICTS.get(fn)


def unchecked(estimate):
    """``estimate`` (``estimate_gradient``) making no fast-path check (ZO-GraSP's scoring estimates)."""
    def run(*args, **kwargs):
        token = _OFF.set(True)
        try:
            return estimate(*args, **kwargs)
        finally:
            _OFF.reset(token)
    return run


def usable_caps(fn, caps):
    """``caps`` less the fast paths of ``fn`` refused before."""
    if not (caps.batch or caps.coordinate or caps.split):
        return caps
    verdicts = _verdicts_of(fn)
    refused = [k for k, ok in verdicts.items() if not ok] if verdicts else []
    return dataclasses.replace(caps, **{k: False for k in refused}) if refused else caps


def _fast_task(tasks):
    """``(index, capability)`` of the first task of ``tasks`` that uses a fast path, or None."""
    for i, t in enumerate(tasks):
        if isinstance(t, CoordTask) and t.mode != "call":
            return i, t.mode
        if isinstance(t, DirectionTask) and t.use_batch and t.scale is None:
            return i, "batch"
    return None


def _split_firsts(tasks, i: int) -> list:
    """Indices of ``tasks`` to probe for a split fast path found at ``i``: the first task of each block. Each
    block's losses come from its own ``prefix`` (the features entering it) and ``suffix``: the first block's
    prefix is mostly the input itself, so a pair that composes wrong in a later block alone (a hidden layer's
    features computed otherwise than the plain call) passed a check of the first block, and trained wrong."""
    out, seen = [i], {tasks[i].block}
    for k in range(i + 1, len(tasks)):
        t = tasks[k]
        if isinstance(t, CoordTask) and t.mode == "split" and t.block not in seen:
            seen.add(t.block)
            out.append(k)
    return out


def _probe(task, row, f0) -> tuple:
    """``(j, PointTask)``: the query of ``task``'s first call, in the first half of its rows (a
    reversed batch leaves its middle row in place), whose fast loss lies farthest from ``f0``."""
    m = min(task.size, max(1, int(task.chunk)))
    cand = np.abs(row[:max(1, m // 2)] - f0)
    j = int(np.argmax(cand))
    if isinstance(task, CoordTask):
        return j, PointTask(float(task.steps[0]), coord=int(task.coords[j]))
    return j, PointTask(float(task.steps[0]), root=task.root, direction=task.lo + j, distribution=task.distribution)


def _exact_at(params, step: float) -> bool:
    """:func:`~zoracle._grid.exact_points` of ``params`` and ``step``, its first 1024 entries first (a
    model's random params tell at once: no O(d) temporaries)."""
    x = to_numpy(params).reshape(-1)
    return exact_points(x[:1024], step) and exact_points(x, step)


def _tolerance(wrapped, params, plain: float, fast: float, spread: float, seen=(), exact=lambda: False) -> float:
    """Round-off of the narrowest of the losses' types, the params' and the declared compute dtype,
    and the precision the losses ``seen`` carry (a float16 or bfloat16 model's losses returned as
    Python floats: a float64 type, 11 or 8 bits; see :func:`~zoracle._grid.value_bits`; not where
    ``exact()``, the probe's point short numbers a polynomial is computed at exactly, nor losses of fewer
    than ``FEWEST_BITS``: short numbers, whole numbers save), or a
    ``EFFECT`` part of the largest difference the estimate takes (what would move no partial
    derivative by more than that part of the largest)."""
    names = ["float64" if wrapped.base_value is None else loss_type(wrapped.base_value), str(params.dtype)]
    try:
        cd = compute_dtype_of(wrapped.fn)
    except Exception:  # (refused where the estimate plans: not this check's to name)
        cd = None
    if cd is not None:
        names.append(str(cd))
    bits = min(precision_bits(n) for n in names)
    carried = value_bits(np.concatenate([np.ravel(v) for v in (plain, fast, *seen)]))
    # (a float32 loss's values show fewer than its 24 bits by chance: not judged so)
    if carried == 0 or (FEWEST_BITS <= carried <= NARROW_BITS and not exact()):
        bits = min(bits, carried)
    rounding = ROUNDING_ULPS * 2.0 ** (1 - bits) * max(abs(plain), abs(fast)) if bits else 0.5  # integers: equal
    return max(rounding, EFFECT * spread)


def check_fast_paths(wrapped, params, tasks, results, run, replan) -> tuple:
    """``(tasks, results)`` of an estimate, its first through a fast path of ``wrapped.fn`` checked
    (``run(tasks)``: their results through the estimate's executor, ``nfev`` set to theirs;
    ``replan()``: the estimate's tasks after the base point, planned on ``wrapped.caps``). One that
    disagrees is refused, and the estimate's tasks are planned and run again without it."""
    fn = wrapped.fn
    if _OFF.get() or getattr(fn, "fast_paths_checked", False) is True:
        return tasks, results
    found = _fast_task(tasks)
    if found is None:
        return tasks, results
    verdicts = _verdicts_of(fn)
    i, cap = found
    if verdicts is None or cap in verdicts:  # (an estimate outside a train run: not checked)
        return tasks, results
    spent = wrapped.nfev
    f0 = float(results[0][0, 0])
    spread = max(float(np.max(np.abs(r - f0))) for r in results[1:])
    asked = 0
    # one query a fast path; prefix and suffix: one a block, block by block until one disagrees
    for k in _split_firsts(tasks, i) if cap == "split" else [i]:
        row = results[k][0]
        j, probe = _probe(tasks[k], row, f0)
        plain = float(run([probe])[0][0, 0])
        asked += 1
        fast = float(row[j])
        # a coordinate's query (or a Rademacher direction's, every coordinate moved by exactly mu) at short params
        # and mu: a polynomial loss there has few bits, exactly
        exact = (lambda at=probe: _exact_at(params, at.step)) if probe.direction < 0 or \
            probe.distribution == "rademacher" else (lambda: False)
        tol = _tolerance(wrapped, params, plain, fast, spread, (f0, row), exact)
        if abs(plain - fast) > tol:
            break
    else:
        verdicts[cap] = True
        wrapped.nfev = spent + asked
        return tasks, results
    again = float(run([probe])[0][0, 0])  # a plain call that answers differently: noise, not judged here
    asked += 1
    # noise the estimate feels (a jitter below the tolerance, a thread pool's round-off, kept a fast
    # path off by a constant silently: the two plain calls are alike as far as the estimate goes)
    if abs(again - plain) > _tolerance(wrapped, params, plain, again, spread, (f0, row), exact):
        verdicts[cap] = True
        wrapped.nfev = spent + asked
        warn(_noisy_text(fn, probe, plain, again, spread, fast), RuntimeWarning, stacklevel=user_stacklevel())
        return tasks, results
    verdicts[cap] = False
    warn(_refused_text(fn, cap, probe, plain, fast, tasks[k].block if cap == "split" else None), RuntimeWarning,
         stacklevel=user_stacklevel())
    wrapped.caps = usable_caps(fn, wrapped.caps)
    again_tasks = replan()
    again_results = run(again_tasks)
    spent += asked + wrapped.nfev
    tasks, results = [tasks[0]] + again_tasks, [results[0]] + again_results
    wrapped.nfev = spent
    return check_fast_paths(wrapped, params, tasks, results, run, replan)  # (a next fast path: unchecked)


def _refused_text(fn, cap, probe, plain: float, fast: float, block=None) -> str:
    method = _METHOD[cap]
    where = (f"params with coordinate {probe.coord} moved by {probe.step:g}" if probe.direction < 0 else
             f"params moved {probe.step:g} along direction {probe.direction}")
    return (f"{type(fn).__name__}: its `{method}` disagrees with its plain call at {where}: `{method}` gave "
            f"{fast:.10g}, the plain call {plain:.10g} (asked twice, alike)."
            + (f" The gap is in block {block}: its `prefix` (the features entering it) or its `suffix` computes "
               "otherwise than the plain call." if block is not None else "")
            + f" An estimate takes the base loss from the "
            f"plain call and the perturbed ones from `{method}`, so each difference would carry the gap over mu and "
            f"training would go to a wrong point: `{method}` is not used in the rest of this run (its queries go to "
            f"plain calls, or to another fast path of the oracle, checked in turn: slower, and the estimate the "
            f"plain call's). Make `{method}` compute the plain call's "
            "loss (the same reduction, minibatch and order of rows, unrounded; noise drawn at each call fixed "
            "per step: docs/training.md, 'Noisy black boxes'), and check it with zoracle.testing.check_oracle"
            + (_rounding_hint(method) if abs(plain - fast) <= REDUCED_ROUNDING * max(abs(plain), abs(fast)) else ""))


def _noisy_text(fn, probe, plain: float, again: float, spread: float, fast: float | None = None) -> str:
    """A plain call that answered twice differently at one point: the noise each difference carries
    over mu, against the largest difference the estimate took, and what fixes it. ``fast``: the fast
    path's reading there, made earlier, during the estimate: with the two plain calls after it moving the
    same way, and far more than they move between them, the readings may drift with time (a trend that
    averaging does not remove), which the text then says."""
    gap, mu = abs(again - plain), abs(probe.step)
    trend = ""
    if fast is not None and (plain - fast) * (again - plain) > 0 and abs(plain - fast) > 10 * gap:
        trend = (f" The estimate's own reading there, made earlier, was {fast:.10g}: the three move one way, the "
                 "earlier gap the larger. If the reading drifts with time (a sensor warming up, a gain drifting), "
                 f"{DRIFT_FIX}.")
    share = (f", {gap / spread:.1%} of the largest loss difference that estimate took ({spread:.3g})"
             if spread > 0 else ", and that estimate's losses all equal its base loss")
    return (f"{type(fn).__name__}: its plain call is not deterministic: asked twice at the same params (a query "
            f"of this run's first estimate through a fast path, checked against it), it gave {plain:.10g} and "
            f"{again:.10g}, {gap:.3g} apart{share}. Each difference of the estimate carries the noise over mu "
            f"(mu = {mu:g}: about {gap / mu:.3g} in a partial derivative, the largest measured {spread / mu:.3g}), "
            "whatever the learning rate. Fix the noise per step where you can: a `bind(seed)` whose loss draws "
            "its noise (or minibatch) from the seed, the seeds passed as `batches` (common random numbers: every "
            "query of a step sees the same noise; docs/training.md, 'Noisy black boxes'); where you cannot (a "
            f"hardware reading), {NOISE_FIX}.{trend} The fast path is kept unjudged; this check asked the plain "
            "call twice (2 queries, counted in nfev)")


def _rounding_hint(method: str) -> str:
    """What a gap of a reduced precision's size may be: a float16 or bfloat16 model (autocast), or a GPU's
    TF32, rounds a batched run otherwise than a single one, by more than the loss's type tells."""
    return (f". The gap is below {REDUCED_ROUNDING:.2%} of the loss: if the oracle computes in a reduced precision "
            f"(a float16 or bfloat16 model, autocast, a GPU's TF32) and `{method}` runs the plain call's computation "
            "batched, the gap is that precision's rounding and the fast path is sound: set "
            "`fast_paths_checked = True` on the oracle to keep it (this check is then not made)")
