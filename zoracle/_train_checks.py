"""``train``'s checks of its arguments (``_check_*``) and its warnings (``_warn_*``)."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Iterator, Sequence

import numpy as np

from ._backend import to_numpy
from ._checkpoint import existing_checkpoint, new_run
from ._errors import ArgumentError, told, warn
from ._masks import _slices
from ._schedules import schedule_value


RATIO_METHODS = ("zo_grasp", "smart", "uniform", "random")


def _check_steps_per_epoch(batches, steps_per_epoch) -> None:
    """More steps an epoch than sized ``batches`` holds: the epoch would run the batches there are."""
    if steps_per_epoch is not None and batches is not None and hasattr(batches, "__len__") \
            and steps_per_epoch > len(batches):
        raise ArgumentError(f"`steps_per_epoch`={steps_per_epoch} but `batches` holds {len(batches)} batches an epoch: "
                            "it truncates an epoch, it does not extend one; pass at most that, or more epochs")


def _check_size(oracle, d: int) -> None:
    """``params`` shorter than the oracle's named parameters (``param_info``) fail now, named as
    that ("block slice(64, 67) reaches past params of length 65" said less). Longer ones may be
    meant: parameters in no block are estimated densely."""
    info = getattr(oracle, "param_info", None)
    try:
        end = max(int(i.slice.stop) for i in info) if info else None
    except (AttributeError, TypeError, ValueError):  # records of another shape: no size to compare
        end = None
    if end is not None and end > d:
        raise ArgumentError(f"`params` has {d} entries but the oracle's parameters number {end} (its param_info): "
                            "pass oracle.initial_params(), or a vector of that length")


def _check_arity(fn, n: int, name: str, args: str, hint: str = "") -> None:
    """A function train calls with ``n`` positional arguments that cannot take them fails now,
    not after an epoch's queries (a signature that cannot be read is taken as it is). An ``async def``
    one is refused too: train would get a coroutine, never run its body (an async callback's True never
    stopped the run, its logging never happened) and warn about the wrong thing."""
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(type(fn), "__call__", None)):
        raise ArgumentError(f"{name} ({getattr(fn, '__qualname__', type(fn).__name__)}) is an `async def` function: "
                            f"{told('train', 'the run')} calls it synchronously and would get a coroutine, whose "
                            "body never runs; give a plain function, e.g. "
                            f"`def fn{args}: return asyncio.run(afn{args})`" + told(
                                "; inside a running event loop (Jupyter, an async app), where asyncio.run fails, run "
                                "train in a thread there: `await asyncio.to_thread(zo.train, ...)`",
                                " (AskTell's run calls it in a thread of its own, where no event loop runs: "
                                "asyncio.run works there)"))
    try:
        sig = inspect.signature(fn, follow_wrapped=False)  # a decorator's wrapper is what train calls
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*range(n))
    except TypeError as exc:
        raise ArgumentError(f"{name} is called as fn{args}, which its signature {sig} cannot take ({exc}); "
                            f"give it the parameters {args}{hint}") from None


def _check_batches(batches) -> None:
    if isinstance(batches, type):  # zo.Minibatches itself: callable, but not an epoch -> batches
        raise ArgumentError(f"`batches` is the class {batches.__name__}, not an instance; pass "
                            f"{batches.__name__}((X, y), batch_size, seed=0)")
    if isinstance(batches, tuple) and len(batches) >= 2 and all(len(getattr(a, "shape", ())) >= 1 for a in batches) \
            and len({a.shape[0] for a in batches}) == 1 and (
                len(batches) == 2 or len({tuple(a.shape) for a in batches}) > 1):
        # (X, y) or (X, y, w): fields of one batch (batches of one array each would share their shape)
        k = len(batches)
        fields = "(X, y)" if k == 2 else "(X, y, ...)"
        raise ArgumentError(
            f"`batches` is a tuple of {'two' if k == 2 else k} arrays of {batches[0].shape[0]} rows each: one batch "
            f"{fields}, which {told('train would read', 'would be read')} as {k} batches, one array each; pass "
            f"[{fields}] for a full batch every step, or "
            f"zo.Minibatches({fields}, batch_size, seed=0) (batches of one array each: pass them as a list)")
    if isinstance(batches, (str, bytes)):  # a Sequence, of characters: each bound as a batch, failing in the oracle
        raise ArgumentError(f"`batches` is a {type(batches).__name__} ({batches[:60]!r}), which "
                            f"{told('train would read', 'would be read')} as batches of one character each; load the "
                            "data and pass zo.Minibatches((X, y), batch_size, seed=0), or a list of batches")
    if isinstance(batches, Sequence) and not callable(batches) and len(batches) == 0:
        raise ArgumentError(f"`batches` is empty: an epoch needs at least one batch, and this {type(batches).__name__} "
                            "holds none; pass one or more, or leave `batches` out for "
                            + told("the oracle's own data", "points that need no data"))
    if callable(batches) and not isinstance(batches, Sequence):  # called as batches(epoch): fail now, not mid-run
        _check_arity(batches, 1, "`batches`", "(epoch)")
    if batches is None or callable(batches) or isinstance(batches, Sequence):
        return
    if hasattr(batches, "dataset") and hasattr(batches, "batch_size"):  # a torch DataLoader (re-iterable, reshuffled)
        why = "a DataLoader: train draws an epoch's batches in an order a resume can replay; pass " + (
            "zo.Minibatches(loader.dataset.tensors, loader.batch_size, seed=0) for a TensorDataset (shuffled by "
            "(seed, epoch)), or " if hasattr(batches.dataset, "tensors") else "") + (
            "a function that makes the epoch's loader, seeded by epoch: lambda epoch: DataLoader(dataset, batch_size, "
            "shuffle=True, generator=torch.Generator().manual_seed(epoch)) (`lambda epoch: loader` shuffles by "
            "torch's generator, which a resume does not replay); an endless IterableDataset's: lambda epoch: loader, "
            "with steps_per_epoch")
    elif isinstance(batches, Iterator):  # (not iter(batches): a DataLoader's would start its workers)
        why = ("an iterator cannot be replayed on resume); it is read once, so every epoch after the first would "
               "have no batch: pass list(it) for the same batches every epoch, or a function epoch -> batches that "
               "returns a new iterator each call (a generator function `def batches(epoch): yield ...`, or "
               "`lambda epoch: itertools.cycle(data)` with steps_per_epoch for an endless one")
    elif isinstance(batches, dict):
        why = ("a dict, such as one batch of named fields: pass [d] for that batch every step, or "
               "zo.Minibatches(tuple(d.values()), batch_size, seed=0) for minibatches of its rows")
    elif hasattr(batches, "columns") and hasattr(batches, "iloc"):  # a pandas DataFrame (iterated: its column names)
        why = ("a DataFrame, whose iteration gives its column names: pass zo.Minibatches((df[features], df[target]), "
               "batch_size, seed=0), or [(df[features], df[target])] for the full batch every step")
    elif hasattr(batches, "tensors") and hasattr(batches, "__getitem__"):  # a torch TensorDataset: samples, not batches
        why = ("a TensorDataset, whose items are samples, not batches: pass zo.Minibatches(dataset.tensors, "
               "batch_size, seed=0)")
    elif getattr(batches, "ndim", 0) >= 1 and hasattr(batches, "shape"):  # an array: a sequence to NumPy, not to train
        why = (f"an array of shape {tuple(batches.shape)}: pass list(arr) for one batch per entry of its first axis, "
               "or zo.Minibatches((X, y), batch_size, seed=0) for minibatches of a data set's rows")
    else:
        why = "not a list of batches; pass [batch, ...] or zo.Minibatches((X, y), batch_size, seed=0)"
    raise ArgumentError(
        f"`batches` must be re-iterable in a fixed order: a list of batches, a callable epoch -> batches, "
        f"or zo.Minibatches(...); got {type(batches).__name__} ({why})"
    )


def _resolve_blocks(oracle, blocks, d):
    if blocks is not None:
        # a string (a config's text) was iterated into characters, a dict into its keys, and a
        # number raised a bare TypeError (a 0-d array has `__iter__` but raises on iteration)
        if isinstance(blocks, (str, bytes, dict)) or getattr(blocks, "__iter__", None) is None \
                or getattr(blocks, "shape", None) == ():
            raise ArgumentError(f"`blocks` must be a sequence of parameter blocks (slices, or records with `.slice`), "
                                f"got {type(blocks).__name__} {blocks!r}: pass blocks=[slice(start, stop), ...]"
                                f"{' (a dict: list(d.values()))' if isinstance(blocks, dict) else ''}, or leave it "
                                "out for the oracle's own layout")
        blocks = list(blocks)
        if not blocks:  # (read before as "no block has a kind in `score_kinds`", naming other arguments)
            raise ArgumentError("`blocks` is empty: pass blocks=[slice(start, stop), ...] (or records with `.slice`), "
                                "or leave it out for the oracle's own layout")
        return blocks
    for name in ("param_info", "blocks"):  # the oracle's own layout, if it declares one
        found = getattr(oracle, name, None)
        if found is None or isinstance(found, (str, bytes)):
            continue
        try:
            found = list(found)  # (an array's truth value is ambiguous: its length decides)
        except TypeError:  # an attribute of that name that is no layout (a simulator's block count)
            raise ArgumentError(f"the oracle's `{name}` is {type(found).__name__} {found!r}, not a sequence of "
                                "parameter blocks (slices, or records with `.slice`); pass blocks=[slice(start, "
                                "stop), ...] to train") from None
        if found:
            return found
    return [slice(0, d)]


def _check_layout(blocks, d: int) -> np.ndarray:
    """Which of the ``d`` parameters ``blocks`` (slices) cover; refuses a block past ``d`` and
    two blocks sharing a parameter (caught here, not when a mask first draws a shared index)."""
    covered = np.zeros(d, dtype=bool)
    for s in blocks:
        if s.stop > d:
            raise ArgumentError(f"block {s} reaches past params of length {d}")
        if covered[s].any():
            raise ArgumentError(f"`blocks` overlap: block {s} shares parameter {int(np.flatnonzero(covered[s])[0]) + s.start} "
                                "with an earlier block; every parameter may belong to one block only")
        covered[s] = True
    return covered


#: the most steps whose schedule values are all checked before the first query (a longer run
#: checks its first ones and the ``FINGERPRINT_STEPS``; the rest are checked as they are reached)
CHECKED_STEPS = 100_000


def _check_every_step(lr_of, lr_name: str, mu_sched, total, may_stop: bool = False, prints=None,
                      stacklevel: int = 3, resume=None) -> dict:
    """Every step's learning rate and ``mu`` of a run of known length, checked before the first
    query (by :func:`schedule_value`): a schedule that turns negative or raises at step 11
    must not fail after 11 steps' work. Returns ``{step: mu}`` at the steps of the smallest and
    the largest ``mu`` checked (empty without a ``mu`` schedule or a known length), whose
    steps must be representable too. A learning rate that is 0 over the run's last steps is
    warned about, unless a query budget or a callback may end the run before them
    (``may_stop``: ``short_budget``'s schedule ends where its budget does). ``prints``: the
    schedules' :func:`fingerprint` values (``{"lr": ..., "mu": ...}``), taken as they are: a
    schedule is called once a step here (one that counts its calls, or is slow, sees no second).
    ``resume``: the checkpoint a resumed run continues, whose schedule it keeps (the warning's fix
    is then a new run from its parameters, not a longer schedule, which the resume would refuse)."""
    if total is None:
        return {}
    extremes = {}
    for sched, name, positive in ((lr_of, lr_name, False), (mu_sched, "mu", True)):
        if sched is None:
            continue
        fp = (prints or {}).get("mu" if sched is mu_sched else "lr") or {"steps": (), "values": ()}
        known = dict(zip(fp["steps"], fp["values"]))
        values = []
        for t in range(min(total, CHECKED_STEPS)):
            if t in known:  # (checked by fingerprint's schedule_value already)
                values.append(known[t])
                continue
            try:  # the plain value first: schedule_value's message is built only for a bad one
                v = sched(t)
                good = type(v) is float and (v > 0 if positive else v >= 0) and v != math.inf
            except Exception:
                good = False
            values.append(v if good else schedule_value(sched, t, name, positive=positive))
        if sched is mu_sched and values:
            lo, hi = int(np.argmin(values)), int(np.argmax(values))
            extremes = {lo: values[lo], hi: values[hi]}
        elif sched is lr_of and not may_stop and total <= CHECKED_STEPS:
            zero = len(values)  # the first step of the run's last stretch at lr 0
            while zero and values[zero - 1] == 0:
                zero -= 1
            if 0 < zero <= total - 2:  # a schedule that ends before the run does
                fix = (f"give the schedule the run's length (total_steps={total}: epochs x steps per epoch)"
                       if resume is None else
                       f"a resume keeps the schedule of the run it continues (another is refused); {new_run(resume)}")
                warn(f"train: the {lr_name} is 0 from step {zero} on: the last {total - zero} of the run's "
                     f"{total} steps spend their queries without moving the parameters; {fix}",
                     UserWarning, stacklevel=stacklevel)
    return extremes


def _warn_huge_mu(mu: float, scale: float, stacklevel: int = 3) -> None:
    """Warn when CGE's ``mu`` is over 100 times both 1 and ``max|params|`` (``5e3`` typed for
    ``5e-3``): its differences sample the loss far from the params, not its slope, and training goes
    uphill or nowhere without an error."""
    if not mu > 100 * max(1.0, scale):
        return
    mant, exp = f"{mu:e}".split("e")
    flipped = float(f"{mant}e{-int(exp)}")  # the exponent's sign typed wrong: 5e3 for 5e-3
    warn(f"train: CGE's mu = {mu:g} is over 100 times the parameters' scale (max|params| = {scale:.3g}, "
         f"or 1): a difference over a step that large measures the loss far from the params, not its "
         f"slope (exact on a quadratic only), and training may go uphill or nowhere; a finite-difference "
         f"step is small (the default is 5e-3; {mu:g} for {flipped:g}?)", UserWarning, stacklevel=stacklevel)


def _warn_tiny_mu(mu: float, scale: float, dtype, loss_only: bool = False, loss: float | None = None,
                  stacklevel: int = 3) -> bool:
    """Warn when CGE's ``mu`` is under 100 float spacings of the parameters' scale (or 1, a loss's
    usual one) in the dtype the oracle declares it computes in (``compute_dtype``; float64 for one
    that declares none): a loss of that scale moves over such a step by a few roundings, so each
    partial is resolved only to about ``spacing / mu`` (``CGE(mu=1e-15)`` at params of 1 gave -0.8
    for -1, at 9 exactly 0, without a word). Returns whether the verdict waits for ``loss``."""
    # loss_only: float32 params of an oracle that declares nothing: its loss (float32, as NumPy computes
    # on them) rounds at 1; the steps themselves are taken exactly whatever the params' scale
    unit = float(np.spacing(np.dtype(dtype).type(1.0 if loss_only else max(1.0, scale))))
    if not mu < 100 * unit:
        return False
    if loss_only:  # whether the loss is float32's is measured: the first step's base loss (``loss``)
        if loss is None:
            return True
        if float(np.float32(loss)) != loss:  # not a float32 number: computed wider (a callable's own float64)
            return False
    at = "1 (a loss's usual scale)" if loss_only else f"the parameters' scale (max|params| = {scale:.3g}, or 1)"
    warn(f"train: CGE's mu = {mu:g} is {mu / unit:.3g} float spacings of {np.dtype(dtype)} at "
         f"{at}: a loss of that scale changes over such a "
         f"step by a few roundings, so each partial derivative is resolved only to about {unit / mu:.2g} "
         f"(for a loss of that scale); use mu >= {1000 * unit:.2g} (1000 spacings; the default is 5e-3)",
         UserWarning, stacklevel=stacklevel)
    return False


def _warn_sign_decay(optimizer, stacklevel: int = 3) -> None:
    """sign_sgd's weight decay is inside the sign: with sparse CGE it moves every unmeasured weight."""
    if optimizer.name == "sign_sgd" and optimizer.weight_decay:
        warn(
            f"train: sign_sgd(weight_decay={optimizer.weight_decay}) with sparse CGE moves every weight by the full lr each "
            "step, toward zero, since sign(0 + weight_decay * params) = sign(params) for the weights the mask "
            "skips; pass weight_decay=0.0, or use zo.adam(..., weight_decay=...) (decoupled, scaled by lr)",
            UserWarning, stacklevel=stacklevel)


def _check_overwrite(checkpoint, resume, stacklevel: int = 3) -> None:
    """Refuse to overwrite a file zoracle did not write; warn before overwriting an earlier run
    that this one does not resume from (its first save replaces it)."""
    path = os.fspath(checkpoint)
    same = (resume is not None and os.path.exists(resume) and os.path.exists(path)
            and os.path.samefile(resume, path))
    if same:  # resumed from: its reading says what is wrong (a CheckpointError), and its header, the whole
        return  # history, is not read here a second time (0.6 s of a resume at 100,000 steps)
    kind = existing_checkpoint(path)
    if kind == "foreign":
        raise ArgumentError(f"`checkpoint` {path!r} is a file zoracle did not write, and training would overwrite "
                            "it; pass a new path, or move that file away first")
    if kind == "unreadable":
        readable = os.access(path, os.R_OK)
        why = ("a corrupt or truncated zip file; zoracle writes its checkpoints whole, so it is likely not one of "
               "them" if readable else "this process may not read it: check its permissions, it may be a run's "
               "checkpoint")
        raise ArgumentError(f"`checkpoint` {path!r} cannot be read as a checkpoint ({why}), and training would "
                            "overwrite it; pass a new path, or move that file away first")
    if kind == "run":
        warn(f"`checkpoint` {path!r} holds an earlier run, which this run does not resume from: its first "
             "save overwrites it. Pass resume=True to continue that run, or another path to keep it",
             UserWarning, stacklevel=stacklevel)


def _warn_zero_blocks(params, scored, keep, blocks, filled: bool = False, stacklevel: int = 3) -> None:
    """Warn of scored blocks (slices) whose weights are all zero and that ZO-GraSP left empty:
    GraSP's score ``-theta * Hg`` is zero there, whatever the block's importance (a
    zero-initialized head), and sparse CGE would never train them. ``blocks``: the records
    that name them. ``filled``: ``fill_small_blocks`` was on (it left these: larger than it fills)."""
    p = to_numpy(params)
    zero = [s for s, k in zip(scored, keep) if k == 0 and not np.any(p[s])]
    if zero:
        names = {(s.start, s.stop): getattr(b, "name", None) for b, s in zip(blocks, _slices(blocks))}
        shown = [names.get((s.start, s.stop)) or f"params[{s.start}:{s.stop}]" for s in zero]
        warn(f"train: ZO-GraSP keeps no coordinates of {', '.join(shown)}: its values are all zero, where "
             "GraSP's score -theta * Hg is zero, so sparse CGE never trains it; initialize it nonzero, "
             "estimate it densely (leave its kind out of `score_kinds`), or pass "
             + ("ratios=\"uniform\" (fill_small_blocks fills only empty blocks up to the kept count)" if filled
                else "fill_small_blocks=True (it fills empty blocks up to the kept count) or "
                     "ratios=\"uniform\""), RuntimeWarning, stacklevel=stacklevel)
