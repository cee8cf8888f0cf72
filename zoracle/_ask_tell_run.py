"""The run's side of :class:`zoracle.AskTell`: :func:`zoracle.train` in a thread of its own, on an oracle
whose every loss is one the caller told, and an executor that turns each estimate's tasks into asks.

:class:`_Channel` is where the run's thread and the caller's meet and take turns. The executor
(:class:`_AskExecutor`) runs an estimate's tasks once against a recorder (:class:`_Recorder`) that
collects their query points (the serial run's, in its order) and posts them on the channel, in one ask
or in pieces of ``max_points`` rows, each told before the next is built; then runs them again answered
from the told losses (:class:`_Told`), so the run is ``train``'s own.
"""

from __future__ import annotations

import threading

import numpy as np

from ._backend import namespace
from ._errors import HANDED_OVER, TOLD, ZoracleError, warn
from ._oracle import Oracle
from ._run_loop import RUNNING
from ._train import train

__all__ = ["ASK_WARN_BYTES", "AskTellClosed", "_Channel", "_drive"]

#: bytes over which one ask of all an estimate's points is warned of (without ``max_points``)
ASK_WARN_BYTES = 2**30


class AskTellClosed(BaseException):
    """Raised in the run's thread at its next query once its AskTell is closed, dropped or interrupted
    (its name is what train's "stopped inside step N (...)" line shows): no ``Exception``, so that no
    ``except Exception`` on the way up (the oracle's wrapper) turns it into an OracleError, and train
    saves the steps before it as for Ctrl-C."""


class _Channel:
    """Where the run's thread and the caller's meet (neither holds the AskTell: it can be collected)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.queries = None  # the points the run waits on, until their losses are told
        self.asked = False  # ``queries`` handed out by ask()
        self.losses = None  # told, until the run takes them
        self.closed = False
        self.done = False
        self.result = None
        self.error = None
        self.run = None  # the Run of the step asking (zoracle._run_loop); None before the first step
        self.batch = None  # the batch ``queries`` are to be evaluated on (None: the unbound loss)
        self.ticket = 0  # counts the queries posted: a tell answers the ones its ask() was handed
        self.warnings = []  # (message, category) of zoracle's warnings in the run, for the caller to issue
        self.told = None  # the last tell handed over: a _TellRecord of tell(X, losses), or False for tell(losses)

    def hand(self, message, category) -> bool:
        """The run's thread: keep a warning of zoracle's for the waiting caller to issue at its line
        (:data:`zoracle._errors.HANDED_OVER`); a closed run's caller waits no more: issued in the thread."""
        with self.cond:
            if self.closed:
                return False
            self.warnings.append((message, category))
            return True

    def query(self, points, batch=None) -> np.ndarray:
        """The run's thread: post ``points`` (to be evaluated on ``batch``), wait for their losses."""
        with self.cond:
            if self.closed:
                raise AskTellClosed
            self.run = RUNNING.get()
            self.queries, self.asked, self.losses, self.batch = points, False, None, batch
            self.ticket += 1
            self.cond.notify_all()
            while self.losses is None and not self.closed:
                self.cond.wait()
            if self.closed:
                raise AskTellClosed
            losses, self.queries, self.losses = self.losses, None, None
            return losses

    def end(self, result=None, error=None, done: bool = True) -> None:
        """The run's thread at its end (``done=False``: closed before it). ``run`` stays: the params and
        records as an error or a close left them."""
        with self.cond:
            self.result, self.error, self.done, self.queries = result, error, done, None
            self.cond.notify_all()

    def turn(self, losses=None, ticket=None, told=None) -> None:
        """The caller's thread: hand the run ``losses`` (if any) for the queries ``ticket`` numbers, wait
        until it posts its next queries or ends. ``told`` records a tell(X, losses) (``_TellRecord``):
        one that another thread handed over first with the same points and losses is its retry, which
        waits as it does. An interrupt (Ctrl-C) on the way closes the run: the caller does not go on
        with it."""
        stale = False
        try:
            with self.cond:  # (the check and the hand-over under one hold: another tell cannot come between)
                if losses is not None:
                    stale = not (ticket == self.ticket and self.asked and self.losses is None)
                    if not stale:
                        self.losses, self.asked, self.told = losses, False, told or False
                        self.cond.notify_all()
                    elif told is not None and told.same(self.told):  # (a retry racing its first send)
                        stale = False
                while not stale and not (self.done or self.closed) and (self.queries is None or
                                                                      self.losses is not None):
                    self.cond.wait()
        except BaseException:
            self.close()
            raise
        if stale:
            raise ZoracleError("tell(): the points of the ask() these losses answer were told already (by "
                               "another thread's tell()?): ask() and tell() from one thread, or under one lock")

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class _Recorder:
    """The oracle of an estimate's first pass: writes each query point into the next row of an ask of
    ``rows`` rows, answers 0; a full ask is posted (:meth:`post`) before the next point, its losses
    kept in ``losses``. ``rows``: the estimate's points (one ask), or ``max_points`` (asks of at most
    that many, never all of the estimate's held)."""

    def __init__(self, channel: _Channel, batch, xp, rows: int):
        self.channel, self.batch, self.xp, self.rows = channel, batch, xp, max(1, int(rows))
        self.points = None  # (rows, d), allocated at the first point, refilled ask after ask
        self.n = 0  # rows of ``points`` filled
        self.losses: list = []

    def __call__(self, x) -> float:
        if self.points is None:
            self.points = self.xp.empty((self.rows, *x.shape), dtype=x.dtype)
        self.points[self.n] = x
        self.n += 1
        if self.n == self.rows:
            self.post()
        return 0.0

    def post(self) -> None:
        """Ask the points filled so far (none: nothing), their losses added to ``losses``."""
        if self.n:
            n, self.n = self.n, 0
            self.losses.extend(self.channel.query(self.points[:n], self.batch).tolist())


class _Told:
    """The oracle ``train`` runs on: each loss one the caller told (the executor's second pass); a
    query outside an estimate's executor, should one come, is an ask of its own. ``batch``: the batch
    its points are asked with (that of the ``bind(batch)`` that made it; None unbound)."""

    def __init__(self, channel: _Channel, batch=None):
        self.channel, self.batch = channel, batch
        self.losses = None  # an iterator over the told losses while the executor replays

    def __call__(self, x) -> float:
        if self.losses is not None:
            return next(self.losses)
        return float(self.channel.query(x.copy()[None], self.batch)[0])


class _ToldData(_Told):
    """``train``'s oracle where ``batches`` (or ``grasp_batch``) is given: ``bind(batch)`` gives one
    asking its points with that batch, which :attr:`AskTell.batch` hands the caller."""

    def bind(self, batch) -> _Told:
        return _Told(self.channel, batch)


class _AskExecutor:
    """Runs an estimate's tasks as asks: once against a recorder, then answered by the told losses
    (the tasks are deterministic: the second pass queries the points of the first, in order). The
    estimate's points are one ask, or asks of at most ``max_points`` rows, posted as the first pass
    reaches them."""

    n_workers = 1  # the serial run's plan

    def __init__(self, channel: _Channel, told: _Told, max_points=None, boxed: bool = False):
        # boxed: the run has bounds=, which refuses Gaussian RGE (the warning below names a direction kind it takes)
        self.channel, self.told, self.max_points, self.boxed = channel, told, max_points, boxed
        self.warned = False

    def run(self, oracle, params, tasks) -> list:
        told = getattr(oracle, "fn", None)  # (the oracle bound to the step's batch, in train's Oracle wrapper)
        told = told if isinstance(told, _Told) else self.told
        n = sum(len(t.steps) * t.size for t in tasks)  # (the estimate's points, as the results count them)
        if self.max_points is None and not self.warned:
            self.warned = _warn_large(n, params, self.boxed)
        rows = min(n, self.max_points) if self.max_points is not None else n
        recorder = _Recorder(self.channel, told.batch, namespace(params), rows)
        record = Oracle(recorder)
        for t in tasks:
            t.run(record, params)
        recorder.post()
        told.losses = iter(recorder.losses)
        try:
            return [t.run(oracle, params) for t in tasks]
        finally:
            told.losses = None


def _warn_large(n: int, params, boxed: bool = False) -> bool:
    """Warn (once a run) where one ask of an estimate's ``n`` points would take more than
    :data:`ASK_WARN_BYTES`, before they are built: True where it warned. ``boxed``: the run has
    ``bounds=``, where RGE must step by at most ``mu`` a coordinate (sphere or Rademacher directions)."""
    rge = 'zo.RGE(directions=q, distribution="rademacher")' if boxed else "zo.RGE(directions=q)"
    d, itemsize = params.shape[0], params.dtype.itemsize
    nbytes = n * d * itemsize
    if nbytes <= ASK_WARN_BYTES:
        return False
    rows = max(1, ASK_WARN_BYTES // 4 // (d * itemsize))
    warn(f"AskTell: this estimate asks its {n} points of d = {d} at once, ({n}, {d}) {params.dtype}: "
         f"{nbytes / 2**30:.1f} GiB for the ask, and as much again for the copy ask() returns "
         f"(zo.train evaluates them a few at a time); pass max_points= to ask at most that many rows at a time "
         f"(max_points={rows}: {rows * d * itemsize / 2**20:.0f} MiB an ask, the same run, told ask by ask), "
         f"or fewer points a step: sparsity= (CGE over the unpruned coordinates) or estimator={rge}")
    return True


def _drive(channel: _Channel, params, options: dict, max_points=None) -> None:
    """The run's thread: ``train`` to its end, its result or error left on ``channel``."""
    data = options["batches"] is not None or options["grasp_batch"] is not None
    told = _ToldData(channel) if data else _Told(channel)
    HANDED_OVER.set(channel.hand)  # (this thread's context alone)
    TOLD.set(True)  # (train's messages speak of losses told, of AskTell's resume, not of an oracle's)
    try:
        executor = _AskExecutor(channel, told, max_points, boxed=options.get("bounds") is not None)
        result = train(told, params, executor=executor, **options)
    except AskTellClosed:
        channel.end(done=False)
    except BaseException as exc:  # the caller's next ask or tell raises it
        channel.end(error=exc)
    else:
        channel.end(result=result)
