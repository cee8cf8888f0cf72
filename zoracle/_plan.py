"""Evaluation planner: turns an estimate into picklable tasks, grouped by capability.

A task is a shard of queries that one worker evaluates in one go. ``task.run(oracle,
params)`` returns a float64 array of shape ``(len(task.steps), task.size)``: row ``s``
holds the losses for the ``s``-th signed step. Executors only ever see tasks; they ship the
oracle once and call ``run`` on their workers.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ._backend import namespace
from ._errors import ArgumentError, OracleError, ZoracleError
from ._forked import ForkSafeLock
from ._oracle import Oracle, readonly

__all__ = ["CoordTask", "DirectionTask", "BaseTask", "PointTask", "plan_cge", "plan_rge", "direction_block", "call_groups",
           "merge_calls", "reshard", "shard_tasks", "assemble"]

#: queries per oracle call when the oracle does not declare ``max_queries_per_call``
DEFAULT_CHUNK = 2048


def queries_per_call(fn) -> int:
    """The oracle's ``max_queries_per_call``: an integer >= 1, ``math.inf`` for no limit, or
    None / absent for :data:`DEFAULT_CHUNK` (None and inf failed inside ``int()``)."""
    try:
        v = getattr(fn, "max_queries_per_call", None)
    except ZoracleError:
        raise
    except Exception as exc:  # a property that runs the model (TorchOracle's): an oracle failure, named as one
        raise OracleError("the oracle's max_queries_per_call (sizing its batched calls: TorchOracle runs the model on "
                          "the bound batch for it)", cause=exc) from exc
    if v is None:
        return DEFAULT_CHUNK
    if isinstance(v, numbers.Real) and not isinstance(v, bool) and v == math.inf:
        return 2**62
    if isinstance(v, numbers.Real) and not isinstance(v, (bool, numbers.Integral)) and float(v).is_integer():
        v = int(v)  # 64.0, from a memory budget's arithmetic
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ArgumentError(f"the oracle's `max_queries_per_call` must be an integer >= 1 (queries per call), "
                            f"math.inf for no limit, or None for the default ({DEFAULT_CHUNK}), got {v!r}")
    return int(v)


def _chunks(n: int, size: int):
    size = max(1, int(size))
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


def call_groups(n: int, chunk: int, groups: int) -> list:
    """Split ``n`` queries, called ``chunk`` at a time, into at most ``groups`` spans of whole calls.

    Spans start at multiples of ``chunk``, so running each span with the same ``chunk``
    makes exactly the oracle calls a single run over all ``n`` would make: a batched
    oracle whose per-row results depend on the batch (BLAS blocking) returns bitwise the
    same losses whatever the number of workers.
    """
    chunk = max(1, int(chunk))
    calls = -(-n // chunk)
    pieces = max(1, min(int(groups), calls))
    edges = np.linspace(0, calls, pieces + 1).round().astype(int)
    return [(int(a) * chunk, min(n, int(b) * chunk)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _fmt_step(s: float) -> str:
    return f"{s:+.3g}"


@dataclass(frozen=True)
class BaseTask:
    """The loss at the unperturbed parameters (one query)."""

    steps: tuple = (0.0,)
    size: int = 1
    cost: float = 1.0

    def run(self, oracle: Oracle, params) -> np.ndarray:
        return np.array([[oracle(params, "the base point (unperturbed params)", fresh=True)]])


@dataclass(frozen=True)
class PointTask:
    """The plain call at one point a fast-path task queried: coordinate ``coord`` moved by ``step``
    (CGE), or ``step`` along direction ``direction`` of ``root`` (RGE), built as that task built it
    (the same bits). The first estimate through a fast path compares the two (zoracle._fastcheck)."""

    step: float
    coord: int = -1
    root: int = 0
    direction: int = -1
    distribution: str = "gaussian"
    steps: tuple = (0.0,)
    size: int = 1
    cost: float = 1.0

    def run(self, oracle: Oracle, params) -> np.ndarray:
        if self.direction < 0:
            x = params.copy()
            x[self.coord] = params[self.coord] + params.dtype.type(self.step)
            query = f"coordinate {self.coord} (step {_fmt_step(self.step)}), a plain call checking the fast path"
        else:
            U = direction_block(self.root, self.direction, self.direction + 1, params.shape[0], self.distribution,
                                namespace(params), params.dtype)
            x = params.dtype.type(self.step) * U
            x += params[None, :]
            x = x[0]
            query = f"direction {self.direction} ({'+mu' if self.step > 0 else '-mu'}), a plain call checking the fast path"
        return np.array([[oracle(readonly(x) if isinstance(x, np.ndarray) else x, query)]])


def _query_array(params) -> tuple:
    """``(x, view)``: a copy of ``params`` that the queries of a plain-call CGE edit in place,
    and the read-only view each query gets (the oracle cannot write)."""
    x = params.copy()
    return x, (readonly(x) if isinstance(x, np.ndarray) else x)


def _bits(a):
    """``a`` (C-contiguous) as unsigned integers of its item size: equal bits, not equal values
    (-0.0 differs from 0.0)."""
    n = a.dtype.itemsize
    return a.view(np.dtype(f"u{n}") if n in (1, 2, 4, 8) else np.uint8)


def _plain_calls(oracle: Oracle, params, coords, step, query_of) -> np.ndarray:
    """Plain-call losses at ``params + step * e_i`` for ``i`` in ``coords``.

    One array is edited in place for every query, unless the oracle keeps what it was given: a
    count of references to the array or to its view above the one taken here, in this frame,
    means the oracle holds the view or a view of it (a log, a memo of its last point); that one
    stays as it was queried, and the queries go on with a new array. An oracle can still write
    into it past the read-only flag (``torch.from_numpy(x)`` warns and shares the memory): the
    array is compared with ``params`` before it is left, at the end and when a query fails, and
    the queries that may have seen such a write run again, each on its own copy (the estimate's
    ``nfev`` counts its queries, not these reruns). Successive queries may get the same array
    object, edited in place: an oracle must not cache by identity (a weak reference to the last
    array, say).
    """
    out = np.empty(len(coords))

    def own_copy(r):
        y = params.copy()
        y[coords[r]] = y[coords[r]] + step
        return oracle(readonly(y), query_of(r))

    ref = _bits(namespace(params).ascontiguousarray(params))

    def written(x, i, perturbed):
        differ = _bits(x) != ref  # bits, not values: -0.0 written over 0.0 is a write
        if perturbed:
            differ[i] = False  # (kept perturbed by the oracle)
        return bool(differ.any())

    x, xv = _query_array(params)
    xb = _bits(x)
    held = (sys.getrefcount(x), sys.getrefcount(xv))
    since = 0  # the first query that ran on the current array
    fresh = False  # a write was found: every query from here on gets its own copy
    for j, i in enumerate(coords.tolist()):
        if fresh:
            out[j] = own_copy(j)
            continue
        dirty = bool(xb[i] != ref[i])  # an earlier query wrote this coordinate
        x[i] = params[i] + step
        try:
            out[j] = oracle(xv, query_of(j))
        except OracleError:
            if not (dirty or written(x, i, True)):
                raise
            out[j] = np.nan  # its turn comes in the rerun below
            kept = True  # leave this array as it is
        else:
            kept = (sys.getrefcount(x), sys.getrefcount(xv)) != held
        if not kept:
            x[i] = params[i]  # restore the exact value, no drift
        if kept or dirty or j == len(coords) - 1:
            if dirty or written(x, i, kept):  # the queries since `since` may have read a write: each on its own copy
                fresh = True
                for r in range(since, j + 1):
                    out[r] = own_copy(r)
            if kept:
                x, xv = _query_array(params)
                xb = _bits(x)
                held = (sys.getrefcount(x), sys.getrefcount(xv))
                since = j + 1
    return out


def seal(params):
    """A checksum of ``params``' bits (NumPy; None for other arrays, which the oracle gets copies
    of): one read per split task (and two of its block), where a copy per prefix / suffix call cost
    a read, a write and an allocation each."""
    if not isinstance(params, np.ndarray):
        return None
    params = np.ascontiguousarray(params)  # (the same seal whatever the layout: a copy only where strided)
    if params.dtype.itemsize >= 8:
        return int(np.add.reduce(_bits(params), dtype=np.uint64))
    # narrower items summed as the 64-bit words they fill (any write still moves the sum): each
    # float32 widened to uint64 for the sum took 3x a copy of the parameters at d = 1e7
    raw = params.reshape(-1).view(np.uint8)
    cut = raw.size - raw.size % 8
    return (int(np.add.reduce(raw[:cut].view(np.uint64))), raw[cut:].tobytes())


def _block_part(blocks, block: int, d: int):
    """The slice of the parameters that ``blocks[block]`` covers where it is under half of them, else
    None (a whole seal)."""
    blk = blocks[block]
    return slice(int(blk.start), int(blk.stop)) if 2 * (blk.stop - blk.start) < d else None


# (as a cause: with none, the OracleError read "oracle returned None at block ...", a value never returned)
_WROTE_PAST = ("the oracle's {} wrote into the parameters it was given, past their read-only flag "
               "(torch.from_numpy(params) ignores it, with a warning)")
_WROTE_PAST_FIX = ("the parameters the later queries of this estimate read would have changed; work on a copy "
                   "(params.copy(), torch.tensor(params))")


@dataclass(frozen=True)
class CoordTask:
    """Losses at ``params + s * e_i`` for each ``i`` in ``coords`` and each ``s`` in ``steps``.

    ``mode`` is the capability used: ``"split"`` (feature reuse inside ``block``),
    ``"coordinate"``, ``"batch"`` (dense ``(k, d)`` chunks of ``rows`` rows) or ``"call"``.
    ``seal``: the :func:`seal` of the estimate's parameters, checked after a split or coordinate
    task (its prefix, suffix and coordinate_losses calls get read-only views of the parameters, not
    copies) and, where more calls follow, after the first call (a split task's: its block's).
    """

    coords: np.ndarray
    steps: tuple
    mode: str
    block: int = -1
    chunk: int = DEFAULT_CHUNK
    cost: float = field(default=0.0, compare=False)
    seal: Any = field(default=None, compare=False)

    @property
    def size(self) -> int:
        return len(self.coords)

    def run(self, oracle: Oracle, params) -> np.ndarray:
        coords = self.coords
        out = np.empty((len(self.steps), len(coords)))
        if self.seal is not None and getattr(oracle, "threads_share_params", False):
            # tasks running at once in threads of this process read one array: an oracle writing into its view
            # past the flag (torch.from_numpy(params)) and putting the bits back, which no seal sees, moved the
            # losses another thread's calls took meanwhile. One copy per task (its calls still get views of it)
            params = params.copy()
        xp = namespace(params)
        # split and coordinate calls get read-only views of the parameters. More calls after the first: the
        # first's writes past the flag are checked before the next (a write undone by a later call read as none
        # at the end), a split task's over its block alone where it is under half the parameters (a whole read
        # per task was most of a sparse estimate's time at d = 1e7, few coordinates a block)
        more = self.seal is not None and (len(self.steps) > 1 or len(coords) > max(1, int(self.chunk)))
        part = _block_part(oracle.blocks, self.block, params.size) if more and self.mode == "split" else None
        first = seal(params[part]) if part is not None else self.seal
        if self.mode == "split":
            feats = oracle.prefix(params, self.block)
        for si, step in enumerate(self.steps):
            tag = _fmt_step(step)
            for lo, hi in _chunks(len(coords), self.chunk):
                c = readonly(coords[lo:hi])  # an oracle writing into it (coords -= start) moved the gradient

                def query_of(j, c=c, tag=tag):
                    return f"coordinate {int(c[j])} (step {tag})"

                what = f"coordinates {int(c[0])}..{int(c[-1])} ({len(c)} queries, step {tag})"
                if self.mode == "split":
                    out[si, lo:hi] = oracle.suffix(feats, params, self.block, c, step, query_of, what)
                    if si == lo == 0 and more:
                        self._check_seal(params, part, first)
                elif self.mode == "coordinate":
                    out[si, lo:hi] = oracle.coordinate_losses(params, c, step, query_of, what)
                    if si == lo == 0 and more:
                        self._check_seal(params, None, first)
                elif self.mode == "batch":
                    X = xp.empty((len(c), params.shape[0]), dtype=params.dtype)
                    X[...] = params  # a broadcast copy: several times faster than tile
                    X[xp.arange(len(c)), xp.asarray(c)] += params.dtype.type(step)
                    out[si, lo:hi] = oracle.batch(X, query_of, what)
                    del X  # freed before the next chunk's: two chunks held at once took twice the budget
                else:
                    out[si, lo:hi] = _plain_calls(oracle, params, c, params.dtype.type(step), query_of)
        if self.mode in ("split", "coordinate"):
            self._check_seal(params, None, self.seal)
        return out

    def _check_seal(self, params, part, want) -> None:
        """Refuse parameters written past their read-only flag (``part``: the slice of them checked, all
        where None, against its seal ``want``): checked after the task's first suffix call (its block)
        and at its end. At the end alone, a central scheme's oracle that left its +step write in
        place and took its -step snapshot from it put the bits back, and the gradient was silently
        wrong (every -step loss of the block but the last read the stray write)."""
        if want is not None and seal(params if part is None else params[part]) != want:
            split = self.mode == "split"
            raise OracleError(f"block {self.block} (prefix and suffix calls)" if split else
                              f"coordinates {int(self.coords[0])}..{int(self.coords[-1])} (coordinate_losses calls)",
                              cause=RuntimeError(_WROTE_PAST.format("prefix or suffix" if split else
                                                                    "coordinate_losses")),
                              detail=_WROTE_PAST_FIX)


class _RowCache:
    """The rows of the most recent direction root drawn in this process (read-only float64, at
    most ``limit`` bytes): an estimate draws each direction twice, once to query the oracle
    and once to sum the estimate, and drawing costs about as much as a small model's forward
    at large d. A new root evicts the old one; a thread lock guards the dict. An estimate that
    needs all its rows again (SNES: two sums over its population) may :meth:`reserve` up to
    ``cap`` bytes for its root."""

    def __init__(self, limit: int = 64 * 2**20, cap: int = 256 * 2**20):
        self.default, self.cap, self.reserved = limit, cap, (None, 0)
        self.key, self.rows, self.lock = None, {}, ForkSafeLock()

    def reserve(self, root: int, nbytes: int) -> None:
        """Let the rows of ``root`` use up to ``min(nbytes, cap)`` bytes (never below the default)."""
        with self.lock:
            self.reserved = (int(root), min(int(nbytes), self.cap))

    def release(self, root: int) -> None:
        """Drop the rows and the reservation of ``root``: its estimate has summed them, and every
        estimate draws a new root (they were held by this module until the next estimate)."""
        with self.lock:
            if self.key is not None and self.key[0] == int(root):
                self.key, self.rows = None, {}
            if self.reserved[0] == int(root):
                self.reserved = (None, 0)

    def limit(self) -> int:
        """Bytes the current root's rows may use: its reservation, or the default."""
        root, nbytes = self.reserved
        return max(self.default, nbytes) if self.key is not None and self.key[0] == root else self.default

    def get(self, key, i):
        with self.lock:
            return self.rows.get(i) if key == self.key else None

    def fits(self, key, nbytes: int) -> bool:
        """Whether :meth:`put` would keep one more row of ``nbytes`` for ``key``."""
        with self.lock:
            held = len(self.rows) if key == self.key else 0
            root, reserved = self.reserved
            limit = max(self.default, reserved) if key[0] == root else self.default
            return (held + 1) * nbytes <= limit

    def put(self, key, i, row) -> None:
        with self.lock:
            if key != self.key:
                self.key, self.rows = key, {}
            if (len(self.rows) + 1) * row.nbytes <= self.limit():
                row.flags.writeable = False
                self.rows[i] = row


_ROWS = _RowCache()


def reserve_rows(root: int, nbytes: int) -> None:
    """Keep up to ``nbytes`` (at most 256 MiB) of root ``root``'s drawn rows in this process."""
    _ROWS.reserve(root, nbytes)


def release_rows(root: int) -> None:
    """Drop the rows of ``root`` drawn in this process (its estimate is done)."""
    _ROWS.release(root)


def direction_block(root: int, lo: int, hi: int, d: int, distribution: str, xp=np, dtype=np.float64):
    """Directions ``lo..hi-1`` as rows of a ``(hi - lo, d)`` array.

    Direction ``i`` is drawn from its own counter-based generator keyed by ``(root, i)``
    (Philox: no seed hashing, about 2x cheaper than ``default_rng([root, i])``): the same
    directions whatever the chunking or the number of workers. Rows drawn in this process
    for the current root are reused (``_RowCache``), so the sum over directions does not
    draw them a second time.
    """
    key = (int(root), int(d), distribution)
    U = np.empty((hi - lo, d))
    for r, i in enumerate(range(lo, hi)):
        row = _ROWS.get(key, i)
        if row is not None:
            U[r] = row
            continue
        # drawn straight into the block (a row drawn beside it, then copied, took 2x float32 params
        # more at d = 1e7); a copy is cached only where the cache would keep it
        row = U[r]
        gen = np.random.Generator(np.random.Philox(key=[root, i]))
        if distribution == "rademacher":
            # +-1 each with probability 1/2, in place: uniforms k / 2**53 below 1/2 (2**52 of them) give -1,
            # the other 2**52 (1/2 itself included, whose difference is +0.0) +1
            gen.random(out=row)
            row -= 0.5
            np.copysign(1.0, row, out=row)
        else:
            gen.standard_normal(out=row)
            if distribution == "sphere":
                row /= np.linalg.norm(row[None, :], axis=1)[0]  # the reduction the (n, d) block used
        if _ROWS.fits(key, row.nbytes):
            _ROWS.put(key, i, row.copy())
    return xp.asarray(U, dtype=dtype)


@dataclass(frozen=True)
class DirectionTask:
    """Losses at ``params + s * u_i`` for directions ``lo..hi-1`` (RGE: ``s = +-mu``).

    With ``scale`` (a float64 array of length d) the directions are ``scale * u_i``: SNES's
    samples ``params + sigma * z_i``.
    """

    root: int
    lo: int
    hi: int
    steps: tuple
    distribution: str
    use_batch: bool
    chunk: int
    cost: float = field(default=0.0, compare=False)
    scale: Any = field(default=None, compare=False)

    @property
    def size(self) -> int:
        return self.hi - self.lo

    def run(self, oracle: Oracle, params) -> np.ndarray:
        xp = namespace(params)
        d = params.shape[0]
        out = np.empty((len(self.steps), self.size))
        for clo, chi in _chunks(self.size, self.chunk):
            if self.scale is None:
                U = direction_block(self.root, self.lo + clo, self.lo + chi, d, self.distribution, xp, params.dtype)
            else:  # sigma * z in float64 (in place: a fresh block, not the cached rows), then params' dtype
                U = direction_block(self.root, self.lo + clo, self.lo + chi, d, self.distribution)
                U *= self.scale[None, :]
                U = xp.asarray(U, dtype=params.dtype)
            for si, step in enumerate(self.steps):
                # SNES's samples params + sigma * z_i: no +-mu step
                tag, unit = ("+mu" if step > 0 else "-mu", "direction") if self.scale is None else ("+sigma z", "sample")

                def query_of(j, base=self.lo + clo, tag=tag, unit=unit):
                    return f"{unit} {base + j} ({tag})"

                what = f"{unit}s {self.lo + clo}..{self.lo + chi - 1} ({tag})"
                # step * u + params, the sum built in place (the same bits as params + step * u): a
                # temporary of the block's size beside it took the budget past its bound
                X = params.dtype.type(step) * U
                X += params[None, :]
                if self.use_batch:
                    out[si, clo:chi] = oracle.batch(X, query_of, what)
                else:
                    Xv = readonly(X) if isinstance(X, np.ndarray) else X
                    for j in range(chi - clo):
                        out[si, clo + j] = oracle(Xv[j], query_of(j))
                    del Xv
                del X  # freed before the next step's or chunk's: two blocks held at once took twice the budget
            del U
        return out


def check_blocks(blocks, d: int) -> None:
    """A SplitOracle's ``blocks``: contiguous slices in ascending order covering ``[0, d)``."""
    pos = 0
    for b, blk in enumerate(blocks):
        if (not isinstance(blk, slice) or not isinstance(blk.start, numbers.Integral) or blk.start != pos
                or not isinstance(blk.stop, numbers.Integral) or blk.stop <= blk.start or blk.step not in (None, 1)):
            raise ArgumentError(f"block {b} is {blk!r}, expected slice({pos}, stop) with stop > {pos}: the "
                                f"oracle's `blocks` must be contiguous slices in ascending order covering [0, {d})")
        pos = blk.stop
    if pos != d:
        raise ArgumentError(f"the oracle's `blocks` cover [0, {pos}), but params have {d} entries")


def _block_of(coords: np.ndarray, blocks) -> np.ndarray:
    starts = np.array([b.start for b in blocks])
    stops = np.array([b.stop for b in blocks])
    idx = np.searchsorted(starts, coords, side="right") - 1
    ok = (idx >= 0) & (coords < stops[np.clip(idx, 0, None)])
    if not ok.all():
        bad = int(coords[~ok][0])
        raise ValueError(f"coordinate {bad} lies in no block of the SplitOracle")
    return idx


def _block_costs(fn, n_blocks: int):
    """A split oracle's optional ``block_costs`` hint (relative cost of one suffix query per
    block, for sizing tasks) as ``n_blocks`` floats, or None; one that is there but unusable is
    the oracle's bug, named before any of its queries run."""
    try:
        costs = getattr(fn, "block_costs", None)
        if costs is None:
            return None
        values = [float(c) for c in costs]
    except Exception as exc:
        raise ArgumentError(f"the oracle's `block_costs` hint could not be read as numbers ({type(exc).__name__}: "
                            f"{exc}); make it a property giving one relative cost per block, or remove it") from None
    if len(values) != n_blocks or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ArgumentError(f"the oracle's `block_costs` hint is {values!r}: it must give one finite cost >= 0 for each "
                            f"of its {n_blocks} blocks (relative suffix cost per block), or be removed")
    return values


def plan_cge(oracle: Oracle, coords: np.ndarray, steps: tuple, d: int, itemsize: int,
             budget_bytes: int, n_workers: int = 1, seal_of=None) -> list:
    """Tasks for (sparse) CGE over ``coords`` with the best capability the oracle has
    (``seal_of()``: the :func:`seal` of the estimate's parameters, which each split or coordinate
    task checks at its end and after its first call; called only for a plan of such tasks).

    A serial plan (``n_workers`` 1) for a split oracle that sets ``fused_coordinate_losses =
    True`` (``TorchOracle``) is one ``coordinate_losses`` task: the oracle declares that call
    to be its prefix and suffix calls, block by block, in one.
    """
    mode = oracle.caps.best
    n_workers = max(1, int(n_workers))
    if mode == "split" and n_workers == 1 and oracle.caps.coordinate \
            and getattr(oracle.fn, "fused_coordinate_losses", False) is True:
        # one call for every block: an oracle that declares it runs, block by block, the
        # prefixes and suffix calls a split plan would make, without each call's own costs
        return [CoordTask(coords, steps, "coordinate", -1, max(1, len(coords)), cost=float(len(coords) * len(steps)),
                          seal=seal_of() if seal_of is not None else None)]
    chunk = queries_per_call(oracle.fn)
    tasks = []
    if mode == "split":
        blocks = list(oracle.blocks)
        check_blocks(blocks, d)
        costs = _block_costs(oracle.fn, len(blocks))
        owner = _block_of(coords, blocks)
        sealed = seal_of() if seal_of is not None else None  # (one read of them for every split task)
        for b in np.unique(owner):
            cb = coords[owner == b]
            # one prefix per task: only split a block when workers would otherwise idle, and
            # only between suffix calls, so every call sees the queries a serial run gives it
            w = float(costs[b]) if costs is not None else 1.0
            for lo, hi in call_groups(len(cb), chunk, n_workers):
                part = cb[lo:hi]
                tasks.append(CoordTask(part, steps, "split", int(b), chunk, cost=w * len(part) * len(steps),
                                       seal=sealed))
        return tasks
    if mode == "batch" and budget_bytes // max(1, d * itemsize) < 2:
        # fewer than two perturbed rows fit the budget: a batch call would allocate and fill a dense
        # (1, d) row (past it, where not one fits) for every query, O(d) each with nothing batched
        # (7 ms a query at d = 1e7 float32); plain calls edit one array in place
        mode = "call"
    if mode == "batch":
        chunk = max(1, min(chunk, budget_bytes // max(1, d * itemsize)))
    elif mode == "call":
        chunk = max(1, -(-len(coords) // (4 * n_workers))) if n_workers > 1 else max(1, len(coords))
    per_task = chunk if n_workers > 1 or mode == "call" else max(chunk, len(coords))
    # (coordinate_losses calls get read-only views of the parameters, as split ones: each task checks them)
    sealed = seal_of() if mode == "coordinate" and seal_of is not None else None
    for lo, hi in _chunks(len(coords), per_task):
        tasks.append(CoordTask(coords[lo:hi], steps, mode, -1, chunk, cost=float((hi - lo) * len(steps)), seal=sealed))
    return tasks


def plan_rge(oracle: Oracle, root: int, q: int, steps: tuple, distribution: str, d: int,
             itemsize: int, budget_bytes: int, n_workers: int = 1, scale=None) -> list:
    use_batch = oracle.caps.batch
    # direction blocks are built on the host in float64 as well: budget for both
    chunk = max(1, min(q, budget_bytes // max(1, d * (itemsize + 8))))
    if use_batch:  # a batch call takes at most the oracle's max_queries_per_call rows (as in CGE)
        chunk = max(1, min(chunk, queries_per_call(oracle.fn)))
    n_workers = max(1, int(n_workers))
    # a batch call's rows are split between tasks only at call boundaries (same calls as serial)
    spans = call_groups(q, chunk, n_workers) if use_batch else list(_chunks(q, -(-q // n_workers)))
    return [
        DirectionTask(root, lo, hi, steps, distribution, use_batch, chunk, cost=float((hi - lo) * len(steps)),
                      scale=scale)
        for lo, hi in spans
    ]


# ----------------------------------------------------------------------------- sharding (executors)
def batched(task) -> bool:
    """Whether one oracle call of ``task`` covers several queries (``task.chunk`` of them)."""
    if isinstance(task, CoordTask):
        return task.mode != "call"
    return isinstance(task, DirectionTask) and task.use_batch


def _pieces(task, p: int) -> list:
    """``task`` cut into at most ``p`` pieces, between oracle calls when calls are batched.

    Each piece keeps ``task.chunk`` and starts on a call boundary, so the pieces make the
    very oracle calls ``task`` would make: the losses are bitwise those of the whole task.
    """
    if p <= 1 or not isinstance(task, (CoordTask, DirectionTask)):
        return [task]
    spans = call_groups(task.size, task.chunk if batched(task) else 1, p)
    if isinstance(task, CoordTask):
        return [replace(task, coords=task.coords[a:b], cost=task.cost * (b - a) / task.size) for a, b in spans]
    return [replace(task, lo=task.lo + a, hi=task.lo + b, cost=task.cost * (b - a) / task.size) for a, b in spans]


def merge_calls(tasks) -> tuple:
    """Runs of plain-call :class:`CoordTask` s (same steps) merged into one task each, for
    :func:`reshard` to cut again by cost: a plain-call plan holds one task per coordinate
    when there are few coordinates (``d / (4 * n_workers)`` rounded up), one shard each, whose
    fixed cost a cheap oracle's queries do not repay. A plain call's loss depends on its query
    alone, so the merged tasks return the same bits. Returns ``(merged, back)``: task ``i`` is
    columns ``back[i][1]:back[i][2]`` of merged task ``back[i][0]``'s result."""
    merged, back, run = [], [], []

    def flush():
        if run:
            coords = np.concatenate([t.coords for t in run])
            merged.append(replace(run[0], coords=coords, chunk=max(1, len(coords)),
                                  cost=float(len(coords) * len(run[0].steps))))
            run.clear()

    for t in tasks:
        if not (isinstance(t, CoordTask) and t.mode == "call" and (not run or t.steps == run[0].steps)):
            flush()
        if isinstance(t, CoordTask) and t.mode == "call":
            lo = sum(r.size for r in run)
            back.append((len(merged), lo, lo + t.size))
            run.append(t)
        else:
            back.append((len(merged), None, None))
            merged.append(t)
    flush()
    return merged, back


def reshard(tasks, n_workers: int, unit_cost, per_worker: int = 3, min_size: int = 1, min_cost: float = 0.0):
    """Split tasks so that shards have balanced estimated cost.

    ``unit_cost(task)`` is the estimated seconds (or any consistent unit) per column of
    ``task`` (a coordinate or a direction, all its steps included). Tasks costlier than
    ``total / (per_worker * n_workers)`` are cut into that many equal pieces (never below
    ``min_size`` columns, nor below ``min_cost`` each: a shard's fixed cost, its round trip to a
    worker, is then not paid for a few microseconds of queries). Returns ``(shards, costs,
    groups)``: ``groups[i]`` lists the shard indices whose results, concatenated along columns,
    give task ``i``'s result.
    """
    est = [float(unit_cost(t)) * t.size for t in tasks]
    total = sum(est)
    target = total / max(1, per_worker * n_workers) if n_workers > 1 else math.inf
    shards, costs, groups = [], [], []
    for t, c in zip(tasks, est):
        p = 1
        if isinstance(t, (CoordTask, DirectionTask)) and c > target > 0:
            p = min(math.ceil(c / target), max(1, t.size // max(1, min_size)))
            if min_cost > 0:
                p = max(1, min(p, int(c // min_cost)))
        pieces = _pieces(t, p)
        groups.append(list(range(len(shards), len(shards) + len(pieces))))
        for piece in pieces:
            shards.append(piece)
            costs.append(c * piece.size / t.size)
    return shards, costs, groups


def shard_tasks(tasks, n_workers: int, unit_cost, per_worker: int = 3, min_cost: float = 0.0) -> tuple:
    """:func:`reshard` of ``tasks``, whose plain-call runs are merged first (:func:`merge_calls`)
    where ``min_cost`` > 0 (the oracle's queries were timed: ``unit_cost`` gives seconds).
    Returns ``(shards, costs, groups, back)``; :func:`assemble` gives each task's result."""
    merged, back = merge_calls(tasks) if min_cost > 0 else (tasks, None)
    return reshard(merged, n_workers, unit_cost, per_worker=per_worker, min_cost=min_cost) + (back,)


def assemble(results, groups, back=None) -> list:
    """Each task's result from its shards' ``results`` (see :func:`shard_tasks`)."""
    out = [results[g[0]] if len(g) == 1 else np.concatenate([results[j] for j in g], axis=1) for g in groups]
    return out if back is None else [out[m] if lo is None else out[m][:, lo:hi].copy() for m, lo, hi in back]
