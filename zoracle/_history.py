"""Minibatches and what ``train`` returns: History (its records) and TrainResult."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # names only the annotations use (matplotlib is optional: the apps extra)
    import os

    from matplotlib.figure import Figure

from ._errors import ArgumentError, check_flag, config_hint, warn
from ._resume import read_history
from ._train_records import _EPOCH_KEYS, _STEP_KEYS, _in_order


def _rows(a) -> int:
    """Samples in ``a`` along its first axis (a SciPy sparse matrix's ``len`` raises)."""
    shape = getattr(a, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) else len(a)


@dataclass(frozen=True, eq=False)  # (compared by identity: field-wise == on arrays raised NumPy's ValueError)
class Minibatches:
    """Deterministic minibatches: epoch ``e`` is shuffled by ``default_rng((seed, e))``.

    Calling it, ``mb(epoch)``, returns the list of batches of that epoch, each a tuple of the
    arrays indexed by the same rows (NumPy arrays, torch tensors, or pandas objects by
    position, whatever their index; a list becomes a NumPy array). ``arrays`` itself is a
    tuple (or list) of such arrays, or one array; a list of Python lists or tuples (rows, or
    (x, y) samples) is refused as ambiguous. Because the order is a function of
    ``(seed, epoch)``, a resumed run sees the same batches. ``shuffle=False`` keeps the rows
    in order; ``drop_last=True`` leaves out a last batch smaller than ``batch_size``.

    Examples
    --------
    >>> import numpy as np
    >>> mb = Minibatches((np.arange(10), np.arange(10) * 2), batch_size=4, seed=0)
    >>> len(mb), [len(b[0]) for b in mb(0)], bool((mb(3)[0][0] == mb(3)[0][0]).all())
    (3, [4, 4, 2], True)
    """

    arrays: Any  # a tuple or list of arrays, or one array (stored as a tuple)
    batch_size: int
    shuffle: bool = True
    drop_last: bool = False
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.arrays, dict):
            raise ArgumentError("`arrays` must be a tuple of arrays indexed by the same rows, such as (X, y); got a "
                                f"dict: pass tuple(d.values()) ({', '.join(map(repr, self.arrays))})")
        arrays = self.arrays
        if isinstance(arrays, list) and arrays and not any(getattr(a, "ndim", 0) >= 1 for a in arrays):
            # not a list of arrays such as [X, y]: a list of numbers is one array; a list of Python
            # lists or tuples is ambiguous (rows of one array, or (x, y) samples, or [X, y] fields)
            # and was read as fields: six rows of two became two "samples"
            if all(isinstance(a, numbers.Number) for a in arrays):
                arrays = (np.asarray(arrays),)
            else:
                raise ArgumentError("`arrays` is a list of Python lists, tuples or strings, with no array among them: "
                                    "pass a tuple of arrays, one per "
                                    "field, indexed by the same rows, such as (X, y): np.asarray(rows) for a list of "
                                    "rows, (np.stack([s[0] for s in samples]), np.array([s[1] for s in samples])) for "
                                    "a list of (x, y) samples")
        shapes = {(tuple(getattr(a, "shape", ())), str(getattr(a, "dtype", ""))) for a in arrays} \
            if isinstance(arrays, list) else set()
        if len(shapes) == 1 and getattr(arrays[0], "ndim", 0) >= 1 and (
                len(arrays) > 8 or len(arrays) > _rows(arrays[0])):
            # list(X) of a 2-D array, or [ds[i] for i in ...]: rows, which would be read as fields (of
            # fewer samples than fields, or more fields than any data set has)
            raise ArgumentError(f"`arrays` is a list of {len(arrays)} arrays of one shape "
                                f"{tuple(arrays[0].shape)}: rows of one array, not fields; pass np.stack(rows) "
                                "(or torch.stack), or a tuple (X, y, ...) of one array per field")
        arrays = tuple(arrays) if isinstance(arrays, (tuple, list)) else (arrays,)
        # a Python list cannot be indexed by a row array: as a NumPy array, as a user would pass it
        arrays = tuple(np.asarray(a) if isinstance(a, list) else a for a in arrays)
        for i, a in enumerate(arrays):
            if not hasattr(a, "__len__") or getattr(a, "ndim", 1) == 0 or isinstance(a, (str, bytes, dict)):
                raise ArgumentError(f"`arrays` entry {i} must be an array with one row per sample, got "
                                    f"{type(a).__name__}")
        object.__setattr__(self, "arrays", arrays)
        n = {_rows(a) for a in arrays}
        if len(n) != 1:
            raise ArgumentError(f"`arrays` must share their first dimension, got lengths {sorted(n)}")
        if n == {0}:  # every epoch would be empty (train failed later: "gave no batch for epoch 0")
            raise ArgumentError("`arrays` hold no samples (their first dimension is 0)")
        # rows taken by index now, not at the first epoch (after ZO-GraSP's queries), in the order a
        # shuffle takes them (an h5py dataset takes increasing indices only)
        shuffles = isinstance(self.shuffle, (bool, np.bool_)) and bool(self.shuffle)  # checked as a flag below
        probe = np.array([1, 0]) if shuffles and n != {1} else np.arange(1)
        for i, a in enumerate(arrays):
            try:
                got = _take(a, probe)
            except (TypeError, IndexError, KeyError, AttributeError, NotImplementedError, ValueError) as exc:
                raise ArgumentError(f"`arrays` entry {i} ({type(a).__name__}) cannot be indexed by rows"
                                    f"{' in any order' if probe.size > 1 else ''} ({exc}); convert it (a SciPy sparse "
                                    "matrix: .tocsr(); an h5py dataset: load it, or pass shuffle=False)") from None
            if isinstance(got, (tuple, list, dict)):
                # a data set (torch's TensorDataset, a HuggingFace Dataset): its rows are a tuple or a
                # dict of fields, and every batch would be one field holding them, (fields,)
                raise ArgumentError(f"`arrays` entry {i} ({type(a).__name__}) is a data set whose rows are a "
                                    f"{type(got).__name__} of fields, not an array: pass its fields, one array each, "
                                    "such as zo.Minibatches(ds.tensors, batch_size, seed=0) for a TensorDataset, or "
                                    "(ds['x'], ds['y']) for named columns")
        bs = self.batch_size
        if isinstance(bs, bool) or not isinstance(bs, numbers.Integral) or bs < 1:
            raise ArgumentError(f"`batch_size` must be an integer >= 1, got {bs!r}"
                                f"{config_hint('batch_size', bs, 'int', lambda v: v >= 1)}")
        for flag in ("shuffle", "drop_last"):  # a string from a config ("False") would count as true
            check_flag(flag, getattr(self, flag))
        if self.drop_last and bs > _rows(arrays[0]):
            raise ArgumentError(f"`batch_size` {bs} is more than the {_rows(arrays[0])} samples, and drop_last=True "
                                "drops that one short batch: every epoch would be empty; use a smaller batch_size "
                                "or drop_last=False")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ArgumentError(f"`seed` must be an integer >= 0 (the shuffle of epoch e is drawn from (seed, e)), "
                                f"got {self.seed!r}")

    @property
    def n(self) -> int:
        """The number of samples (rows of the first array)."""
        return _rows(self.arrays[0])

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __call__(self, epoch: int) -> list:
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ArgumentError(f"`epoch` must be an integer >= 0, got {epoch!r}")
        idx = np.arange(self.n)
        if self.shuffle:
            idx = np.random.default_rng([int(self.seed), int(epoch)]).permutation(self.n)
        out = []
        for k in range(len(self)):
            rows = idx[k * self.batch_size:(k + 1) * self.batch_size]
            out.append(tuple(_take(a, rows) for a in self.arrays))
        return out


def _take(a, rows):
    module = type(a).__module__
    if module.startswith("torch"):
        import torch  # only reached when the caller already holds torch tensors

        return a[torch.as_tensor(rows)]
    if module.startswith("pandas") and hasattr(a, "iloc"):  # rows by position: ``a[rows]`` reads labels
        return a.iloc[rows]  # (a DataFrame's: columns); a Categorical or an Index has no iloc, and takes positions
    return a[rows]


def _same_records(a, b) -> bool:
    def same(x, y):
        return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))

    return len(a) == len(b) and all(ra.keys() == rb.keys() and all(same(ra[k], rb[k]) for k in ra)
                                    for ra, rb in zip(a, b))


@dataclass(frozen=True)
class History:
    """Per-step and per-epoch records (dicts of plain numbers): ``steps`` and ``epochs``, tuples
    of them.

    Step records: ``step, epoch, loss, lr, mu, nfev`` (the step's queries), ``total_nfev``
    (the run's queries after the step, ZO-GraSP's included), ``seconds`` (the step's own wall
    time: its estimate and update). Epoch records: ``epoch, loss`` (mean over the epoch's
    steps), ``lr`` (last), ``nfev`` (the sum of its steps'), ``total_nfev``, ``seconds`` (its
    steps' and its evaluation's) and every metric ``eval_fn`` returned (one named like a field
    of the record, such as a validation ``loss``, as ``eval_loss``, with a warning), only in the
    records of the epochs it evaluated (``eval_every``; :meth:`recorded` says which). Checkpoint saves and callbacks are in no
    record's ``seconds``. ``pandas.DataFrame(history.steps)`` is a table of the records.

    The queries ZO-GraSP spends before the first step (``ratios="zo_grasp"``: ``2 *
    (grasp_directions + 1)``) belong to no step: they are in every ``total_nfev`` and in
    :attr:`TrainResult.nfev`, in no record's ``nfev``. So the sum of the epochs' ``nfev`` is
    ``result.nfev`` less them, and ``steps[0]["total_nfev"] - steps[0]["nfev"]`` is their number.
    """

    steps: tuple[dict[str, Any], ...] = ()
    epochs: tuple[dict[str, Any], ...] = ()

    def __eq__(self, other):
        """Record by record, a NaN equal to a NaN: a run's history equals its checkpoint's when a
        metric was NaN (an evaluation that diverged)."""
        if not isinstance(other, History):
            return NotImplemented
        return _same_records(self.steps, other.steps) and _same_records(self.epochs, other.epochs)

    def __repr__(self) -> str:
        """A summary with the last record: the full repr held one dict per step, so echoing a
        run's result in a REPL printed every step (about 150 kB for 1,000 steps)."""
        last = self.epochs[-1] if self.epochs else self.steps[-1] if self.steps else None
        tail = "" if last is None else f", last {'epoch' if self.epochs else 'step'}={last!r}"
        return f"History({len(self.steps)} steps, {len(self.epochs)} epochs{tail})"

    def column(self, name: str, level: str = "step") -> np.ndarray:
        """The field ``name`` over all step (or ``level="epoch"``) records, NaN where missing. A name that
        no record has (a typo: ``"test_accuracy"`` for ``"test_acc"``; or a metric a short run
        never evaluated) gives a warning naming the fields there are.

        A NaN is also what a record holds where its value was NaN (an evaluation that diverged):
        :meth:`recorded` tells the two apart."""
        recs = self._records(level)
        if recs and not any(name in r for r in recs):  # a typo, or a metric no record got (eval_every)
            have = sorted({k for r in recs for k in r})
            warn(f"History.column: no {level} record has the field {name!r}, so the column is all NaN; "
                 f"the {level} records have {have}" + ("" if level == "epoch" else " (eval_fn's metrics "
                 "are in the epoch records: level='epoch')"), UserWarning, stacklevel=2)
        return np.array([r.get(name, np.nan) for r in recs], dtype=np.float64)

    def recorded(self, name: str, level: str = "step") -> np.ndarray:
        """Where :meth:`column` holds a record's value: a bool array, True for each step (or
        ``level="epoch"``) record that has the field ``name``, False where the column's NaN only
        fills a gap (an epoch ``eval_every`` did not evaluate). A NaN where it is True is the value
        the run recorded. A name no record has gives all False, without the warning of
        :meth:`column`.

        Examples
        --------
        >>> import numpy as np
        >>> h = History(epochs=({"epoch": 0, "acc": 0.5}, {"epoch": 1}, {"epoch": 2, "acc": float("nan")}))
        >>> h.column("acc", "epoch"), h.recorded("acc", "epoch")
        (array([0.5, nan, nan]), array([ True, False,  True]))
        >>> h.column("acc", "epoch")[h.recorded("acc", "epoch")]   # the evaluated epochs' values
        array([0.5, nan])
        """
        return np.array([name in r for r in self._records(level)], dtype=bool)

    def _records(self, level: str) -> tuple[dict[str, Any], ...]:
        if level not in ("step", "epoch"):
            raise ArgumentError(f"`level` must be 'step' or 'epoch', got {level!r}")
        return self.steps if level == "step" else self.epochs

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str]) -> History:
        """The history saved in a :func:`train` checkpoint, checked as a resume checks it.

        Checkpoints are written atomically, so this reads a run that is still going (``zoracle
        plot run.npz run.png`` draws it). A missing, corrupt or foreign file raises
        :class:`~zoracle.CheckpointError` naming the field. ``path`` is the checkpoint file.
        """
        steps, epochs = read_history(path)
        # a checkpoint stores each record's keys sorted: put back in the order the run makes them (its
        # metrics in name order), as the run's own history and a resumed run's hold them (a CSV's or a
        # DataFrame's columns read ``a, epoch, loss, ...`` here, where the run's read ``epoch, loss, ...``)
        return cls(tuple(_in_order(r, _STEP_KEYS) for r in steps),
                   tuple(_in_order(r, _EPOCH_KEYS, last=("seconds",)) for r in epochs))

    def plot(self, path=None, *, x: str = "queries", title: str | None = None) -> Figure:
        """A figure of the run: every step's loss and each epoch's mean, and one panel per metric
        ``eval_fn`` returned, against the run's queries (``x="queries"``, ZO-GraSP's included), its
        steps (``x="step"``) or its recorded time (``x="seconds"``: the records' ``seconds``
        summed, evaluations included, saves and callbacks not). The loss is the first panel, the
        metrics follow in the order of their names (as a checkpoint stores them, so ``zoracle
        plot`` draws the same figure). :meth:`plot_runs` draws several runs over each other.

        Needs matplotlib (``pip install matplotlib``; in the ``apps`` extra). The loss axis is
        logarithmic when every loss is positive and they span more than a factor of 10. Returns
        the :class:`matplotlib.figure.Figure` (no pyplot state: add to its ``axes``, then
        ``savefig``); with ``path`` it is also written there, in the format of the suffix
        (PNG without one), through a temporary file so a reader never sees half a figure.
        ``title``, where given, is the figure's title.
        """
        from ._plot import plot_history

        return plot_history(self, path, x=x, title=title)

    @staticmethod
    def plot_runs(runs, path=None, *, x: str = "queries", title: str | None = None) -> Figure:
        """Several runs in one figure, to compare them: each run's loss in the loss panel (its
        epochs' means, its steps faded), and its metrics in the panel of each metric any run has,
        one colour a run, against the queries, steps or seconds (``x``, as for :meth:`plot`).

        ``runs`` is a dict ``{label: history}`` (its labels in the legend, beside the panels for more
        than 8 runs, cut to 40 characters: their ends, or from where they differ where the ends are
        alike) or a list of histories
        (labelled ``run 0``, ``run 1``, ...); a :class:`TrainResult` stands for its history, and
        :meth:`from_checkpoint` reads one from a checkpoint. ``path`` and ``title`` are as for
        :meth:`plot`; returns the :class:`matplotlib.figure.Figure` (docs/training.md, "Reading
        and comparing runs").
        """
        from ._plot import plot_runs

        return plot_runs(runs, path, x=x, title=title)


@dataclass(frozen=True, eq=False)  # compared by identity: field-wise == on arrays raised NumPy's ValueError
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    params : array
        Final parameters (the input's backend and dtype).
    history : History
    nfev : int
        Every loss value queried, pruning scores included: ZO-GraSP's, which no ``nfev`` of the
        history counts (its ``total_nfev`` do; see :class:`History`).
    steps, epochs : int
        Optimizer steps and completed epochs.
    seconds : float
        Wall time of this call (a resumed run counts only its own part).
    ratios : ndarray or None
        Keep ratio per scored block (sparse training only).
    coordinates : ndarray or None
        The last mask used (sparse training only).
    optimizer_state : NamedTuple
    stopped : bool
        True when a callback or ``max_queries`` stopped training early, or ``eval_fn`` returned a
        value that is no metric (the run stopped there with a warning).
    estimator_state : ndarray or None
        SNES's search widths ``sigma`` at the end (None for CGE and RGE).
    loss : float
        The last step's loss, before that step's update (a property; not the loss at
        ``params``).
    """

    params: Any
    history: History
    nfev: int
    steps: int
    epochs: int
    seconds: float
    ratios: Any = None
    coordinates: Any = None
    optimizer_state: Any = None
    stopped: bool = False
    estimator_state: Any = None

    def __getattr__(self, name: str):
        # only for names no field or method has: SciPy's OptimizeResult fields say where to look
        hint = _SCIPY_RESULT_FIELDS.get(name)
        extra = f" (a field of SciPy's OptimizeResult): {hint}" if hint else ""
        raise AttributeError(f"'TrainResult' object has no attribute {name!r}{extra}")

    if not TYPE_CHECKING:  # (at run time only: a type checker still refuses result["x"])
        def __getitem__(self, key):
            # SciPy's OptimizeResult is a dict too, read as res["x"]: say where a TrainResult keeps it
            raise TypeError(_no_items(key))

        __iter__ = None  # (a class with __getitem__ would be iterable: it stays not, as before)

    @property
    def loss(self) -> float:
        """The last step's loss: the oracle at that step's base point (on its minibatch), before
        that step's update, as the history records it; NaN when no step ran. It is not the loss
        at :attr:`params`: evaluate your loss there for that."""
        return float(self.history.steps[-1]["loss"]) if self.history.steps else float("nan")

    def plot(self, path=None, **kwargs: Any) -> Figure:
        """``self.history.plot(path, **kwargs)``: see :meth:`History.plot`."""
        return self.history.plot(path, **kwargs)


#: SciPy's ``OptimizeResult`` fields a migrating script reads, and where a TrainResult keeps them
_SCIPY_RESULT_FIELDS = {
    "x": "the parameters are result.params",
    "fun": "evaluate your loss at result.params (result.loss is the last step's loss at its base point, "
           "before that step's update: not the loss at result.params)",
    "nit": "the optimizer steps are result.steps",
    "jac": "train keeps no gradient: zo.estimate_gradient(oracle, result.params) estimates one",
} | dict.fromkeys(("success", "status", "message"),
                  "result.stopped says whether a callback, max_queries or a bad eval_fn value ended the run early")
_SCIPY_RESULT_FIELDS |= dict.fromkeys(("hess", "hess_inv"), "train keeps no Hessian: it estimates gradients only")
_SCIPY_RESULT_FIELDS |= dict.fromkeys(("njev", "nhev"), "train evaluates no gradient or Hessian: every query is a loss "
                                                        "value, counted in result.nfev")
_SCIPY_RESULT_FIELDS["maxcv"] = ("train takes no constraints (docs/training.md, 'Bounds, and what else "
                                 "scipy.optimize.minimize takes')")


def _no_items(key) -> str:
    """Why ``result[key]`` fails: where a TrainResult keeps SciPy's field ``key``, or its own attribute's name."""
    text = "'TrainResult' object is not subscriptable"
    if not isinstance(key, str):
        return text
    if key in _SCIPY_RESULT_FIELDS:
        return f"{text}; result[{key!r}] is SciPy's OptimizeResult's: {_SCIPY_RESULT_FIELDS[key]}"
    if key in {f.name for f in fields(TrainResult)} | {"loss"}:
        return f"{text}: read the attribute, result.{key}"
    return text
