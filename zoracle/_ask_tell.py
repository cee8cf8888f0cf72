"""``zoracle.AskTell``: training through a black box that cannot be called as a function.

A lab's hardware, a human rater, a batch job on a cluster queue: the caller asks for the points
to evaluate, evaluates them where and when it can, and tells the losses back (nevergrad's, pycma's
and Optuna's ask/tell). The run is :func:`zoracle.train` itself, in a thread of its own, given an
oracle whose every loss is one the caller told and an executor that turns each estimate's tasks
into asks (:mod:`zoracle._ask_tell_run`): the tasks run once against a recorder that collects their
query points (the points the serial run would query, in its order; one ask, or pieces of
``max_points`` rows), the caller tells their losses, and the tasks run again answered from those
losses. What :meth:`AskTell.tell` takes besides a list (by row, ``tell(X, losses)``, a retry of it)
is checked in :mod:`zoracle._ask_tell_told`. So the masks, ZO-GraSP, the optimizers, schedules,
budgets, checkpoints and resumes are train's own, and an ask/tell loop answered by a function ``f``
is ``train(f, ...)`` bit for bit.

The two threads take turns: the run's thread runs while the caller waits in the constructor or in
:meth:`AskTell.tell` (until the next queries are posted or the run ends) and waits while the
caller holds the queries. An AskTell that is closed, dropped (garbage collected, or left at the
interpreter's exit) or interrupted (Ctrl-C while the caller waits) makes the run raise at its next
query, which ends the thread: it is a daemon thread, which the interpreter's exit never waits for.
"""

from __future__ import annotations

import numbers
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._ask_tell_run import _Channel, _drive
from ._ask_tell_told import _TELL_FORMS, _TellRecord, _by_row, _points_array, _told_points
from ._errors import TOLD, ArgumentError, OracleError, ZoracleError, short_repr, user_stacklevel, warn
from ._foreign_args import ForeignArgument, refuse_ask_tell_foreign, visible_signature
from ._history import History, TrainResult
from ._oracle import check_vector
from ._pruning import SCORED_KINDS

__all__ = ["AskTell"]

#: seconds :meth:`AskTell.close` (and a dropped AskTell's finalizer) waits for the run's thread to end
CLOSE_WAIT = 30.0


class _NotCopied(ZoracleError, TypeError):
    """pickle, copy and deepcopy of an AskTell (TypeError, as pickle's own refusals are)."""


#: other ask/tell libraries' names read on an AskTell, with what AskTell has instead
_OTHER_NAMES = dict.fromkeys(("stop", "should_stop"), "the run's end is .done: `while not opt.done:` (pycma's "
                                                      "es.stop())") | dict.fromkeys(
    ("recommend", "provide_recommendation", "best", "xbest", "get_result"),
    ".params is the run's current parameters, and once .done .result is train's TrainResult (its .params the "
    "run's last)") | dict.fromkeys(
    ("optimize", "minimize"), "with a function at hand, zo.train(f, params, ...) is the same run")


def _copies(records: list, copied: list) -> tuple:
    """Copies of a run's records (its history, which only grows), each copied once over the reads of
    ``AskTell.history``: ``copied`` holds the records copied so far, their copies, which later reads
    share, and the tuple of them last returned (returned again while no record is added). Copying them
    all at every read made a loop reading ``opt.history`` at each tell (``step = len(opt.history.steps)``)
    quadratic in its steps: 11 ms a tell at 20,000 steps. A history whose records were replaced (a
    resumed run's epoch records, put in the run's order of metrics at its first epoch's end) is copied
    afresh."""
    seen, out, made = copied
    n = len(seen)
    if n and (n > len(records) or records[0] is not seen[0] or records[n - 1] is not seen[n - 1]):
        seen.clear()
        out.clear()
        n, made = 0, None
    new = records[n:]  # (one slice: the run's thread may append meanwhile)
    if new or made is None:
        seen += new
        out += [dict(r) for r in new]
        made = copied[2] = tuple(out)
    return made


def _check_max_points(max_points) -> None:
    if max_points is not None and (isinstance(max_points, bool) or not isinstance(max_points, numbers.Integral)
                                   or max_points < 1):
        raise ArgumentError(f"`max_points` must be None (an estimate's points in one ask) or an integer >= 1 (at "
                            f"most that many rows an ask), got {short_repr(max_points, 60)}; e.g. max_points=1000")


def _shut(channel: _Channel, thread: threading.Thread) -> None:
    """Close the run and wait (a bounded time) for its thread: close(), and an AskTell dropped."""
    channel.close()
    if thread is not threading.current_thread() and thread.ident is not None:
        thread.join(CLOSE_WAIT)


class AskTell:
    """:func:`zoracle.train` driven by the caller: ``ask()`` the points, ``tell(losses)`` their losses.

    For a black box that cannot be called as ``params -> float`` (lab hardware, a human rater, a job
    on a cluster queue, a simulator in another system): each :meth:`ask` returns the query points of
    the run's next gradient estimate (a training step's, or one of ZO-GraSP's two before the first
    step), to evaluate in any order, in parallel, days later; :meth:`tell` takes their losses in the
    points' order, or as ``{row: loss}`` (collected as they complete). Answered by a function ``f``
    (``opt.tell([f(x) for x in opt.ask()])`` until ``opt.done``), the result is
    ``zo.train(f, params, ...)``'s with the same arguments, bit for bit (the records' ``seconds``
    aside). With ``batches``, each ask's points are to be evaluated on the batch :attr:`batch`
    names: answered by ``oracle.bind(opt.batch)``, the run is ``zo.train(oracle, params,
    batches=...)``'s, bit for bit.

    Parameters
    ----------
    params : array
        Initial flat parameters (not modified), whose backend the run follows: CuPy params (float32 or
        float64) give CuPy points of their dtype from :meth:`ask`, and CuPy ``.params`` and
        ``.result.params``; :meth:`tell` takes NumPy or CuPy losses (an array, a list of scalars).
    batches : list, callable or Minibatches, optional
        As :func:`zoracle.train`'s: a step's points are to be evaluated on its batch, which
        :attr:`batch` gives after :meth:`ask` (the object ``batches`` gave, as ``train`` hands it to
        ``bind``). Without it (and ``grasp_batch``) the points need no data.
    epochs, steps_per_epoch, estimator, optimizer, schedule, mu : optional
        As :func:`zoracle.train`'s. A step asks the estimate's points: ``d + 1`` of them for forward
        CGE (fewer with ``sparsity``), ``directions + 1`` for forward RGE, at once or, with
        ``max_points``, in pieces.
    sparsity, ratios, blocks, score_kinds, ranking, fill_small_blocks, grasp_directions, grasp_batch : optional
        As :func:`zoracle.train`'s (ZO-GraSP's scoring on the first asks when ``sparsity`` is set; their
        :attr:`batch` is ``grasp_batch``, by default the first batch of ``batches``).
    mask_shuffle_interval, eval_fn, eval_every, callbacks : optional
        As :func:`zoracle.train`'s; ``eval_fn`` and the callbacks run in the run's thread, while the
        caller waits in :meth:`tell`.
    checkpoint, checkpoint_every, resume, rng, progress, max_queries, plot : optional
        As :func:`zoracle.train`'s. A save that is due is written before :meth:`tell` returns (by
        default at each epoch's end: every step with one-step epochs), so the process may stop
        between a tell and the next ask, or between an ask and its tell (that step's points are
        asked again); ``AskTell(..., checkpoint=path, resume=True)`` goes on as the uninterrupted run.
    max_points : int, optional
        At most this many rows an :meth:`ask` (None: an estimate's points in one ask). An estimate of
        more points is asked in pieces of ``max_points`` rows, each told before the next is built, so an
        ask holds ``max_points * d`` numbers, not ``(d + 1) * d`` (dense forward CGE): the run, its
        queries and their order are the same (``zo.train(f, ...)``'s, bit for bit), in more asks. An
        estimate whose one ask would pass 1 GiB is warned of without it.
    bounds : optional
        As :func:`zoracle.train`'s: every point :meth:`ask` returns lies inside the box (for a lab's
        hardware that must not be driven out of range); refused before the first ask where it cannot be.

    Attributes
    ----------
    done : bool
        The run has ended (its epochs, ``max_queries`` or a callback): read :attr:`result`.
    result : TrainResult
        :func:`zoracle.train`'s result once ``done`` (refused before).
    batch : object
        With ``batches`` (or ``grasp_batch``): the batch the points of the last :meth:`ask` are to be
        evaluated on (before an ask, those it will return); ``None`` for points of the plain loss.

    Notes
    -----
    ``train`` runs in a daemon thread; the two threads take turns, so the caller's code and the run
    never run at once. :meth:`close` (or leaving a ``with`` block, or dropping the object, or Ctrl-C
    while :meth:`tell` waits) ends the run at its next query, saving its steps as a Ctrl-C in
    ``train`` does (``.params`` and ``.history`` stay where it stopped). Ask and tell one at a time:
    from one thread, from several in turn (``await asyncio.to_thread(opt.tell, losses)``) or under one
    lock (a tell that another thread's answered first is refused, and so is an ask while another
    thread's tell waits); it cannot be pickled. An error of the run (a diverged step, a callback's) is
    raised by the constructor, :meth:`ask` or :meth:`tell` that waits on it; zoracle's warnings are
    issued by the constructor or :meth:`tell` that waited on them, at the caller's line, where its
    warning filters act.

    Examples
    --------
    >>> import numpy as np, zoracle as zo
    >>> opt = zo.AskTell(np.zeros(4), epochs=50, optimizer=zo.sgd(0.1), progress=False)
    >>> while not opt.done:
    ...     X = opt.ask()
    ...     opt.tell([float(((x - 3) ** 2).sum()) for x in X])
    >>> np.allclose(opt.params, 3, atol=1e-2), opt.result.nfev
    (True, 250)
    """

    def __init__(self, params: Any, *extra, batches=None, epochs=1, steps_per_epoch=None, estimator=None,
                 optimizer=None, schedule=None, mu=None, sparsity=None, ratios="zo_grasp", blocks=None,
                 score_kinds=SCORED_KINDS, ranking="magnitude", fill_small_blocks=False, grasp_directions=192,
                 grasp_batch=None, mask_shuffle_interval=5, eval_fn=None, eval_every=1, callbacks=(), checkpoint=None,
                 checkpoint_every="epoch", resume=None, rng=None, progress=True, max_queries=None, plot=None,
                 max_points=None, bounds=None, **unknown) -> None:
        refuse_ask_tell_foreign(AskTell.__init__, params, extra, unknown)
        _check_max_points(max_points)
        options = dict(batches=batches, epochs=epochs, steps_per_epoch=steps_per_epoch, estimator=estimator,
                       optimizer=optimizer, schedule=schedule, mu=mu, sparsity=sparsity, ratios=ratios, blocks=blocks,
                       score_kinds=score_kinds, ranking=ranking, fill_small_blocks=fill_small_blocks,
                       grasp_directions=grasp_directions, grasp_batch=grasp_batch,
                       mask_shuffle_interval=mask_shuffle_interval,
                       eval_fn=eval_fn, eval_every=eval_every, callbacks=callbacks, checkpoint=checkpoint,
                       checkpoint_every=checkpoint_every, resume=resume, rng=rng, progress=progress,
                       max_queries=max_queries, plot=plot, bounds=bounds)
        self._params0 = params.copy() if hasattr(params, "copy") else params  # (.params before the first step)
        self._channel = channel = _Channel()
        self._reported = False  # the run's error raised once; later calls say so
        self._data = batches is not None or grasp_batch is not None  # (.batch names the points' batch)
        # the run's records copied so far, each once, for .history (originals, copies and their tuple last
        # returned, steps' and epochs')
        self._copied = [[], [], None], [[], [], None]
        self._copying = threading.Lock()  # (.history read from two threads at once: each record copied once)
        self._thread = threading.Thread(target=_drive, args=(channel, params, options, max_points), daemon=True,
                                        name="zoracle.AskTell")
        self._finalizer = weakref.finalize(self, _shut, channel, self._thread)
        self._thread.start()
        self._wait()

    def _wait(self, losses=None, ticket=None, told=None) -> None:
        """Hand the run ``losses``; wait until it posts its next queries or ends; its error raised here."""
        self._channel.turn(losses, ticket, told)
        self._hand_over()
        self._raise_error()

    def _hand_over(self) -> None:
        """Issue the run's warnings since the last turn at the caller's line (the constructor's or
        tell()'s), where the caller's filters act on them: "error" raises there, "default" shows one
        once for that line, not once a step."""
        ch = self._channel
        with ch.cond:
            pending, ch.warnings = ch.warnings, []
        for message, category in pending:
            warn(message, category, stacklevel=user_stacklevel())

    def _raise_error(self) -> None:
        error = self._channel.error
        if error is None:
            return
        if not self._reported:
            self._reported = True
            raise error
        raise ZoracleError(f"the run stopped with {type(error).__name__}: {error}; start a new AskTell "
                           "(resume=True continues from its checkpoint)") from error

    @property
    def done(self) -> bool:
        """Whether the run has ended (read :attr:`result`)."""
        return self._channel.done

    @property
    def result(self) -> TrainResult:
        """``train``'s :class:`~zoracle.TrainResult` once :attr:`done` (refused before)."""
        self._raise_error()
        if self._channel.result is None and self._channel.closed:
            raise ZoracleError(".result of a closed AskTell: its run ended before its last step (.params and "
                               ".history are where it stopped; resume=True continues from its checkpoint)")
        if self._channel.result is None:
            raise ZoracleError("the run has not ended: ask() and tell() until .done (.params and .history are "
                               "the run's as they stand)")
        return self._channel.result

    def ask(self) -> Any:
        """The points of the run's next estimate: an array of shape ``(n, d)`` in params' backend and
        dtype (yours to keep; ``n`` may change from one ask to the next, at most ``max_points``: an
        estimate of more points is asked in pieces). Tell their losses before asking again."""
        ch = self._channel
        self._raise_error()
        with ch.cond:  # (two threads asking at once: one gets the points, the other is refused)
            return self._take(ch)

    def _take(self, ch: _Channel) -> Any:  # (ask() under the channel's lock)
        if ch.closed:
            raise ZoracleError("ask() on a closed AskTell (close(), a `with` block's end or Ctrl-C ended its "
                               "run): start a new one (resume=True continues from its checkpoint)")
        if ch.done:
            raise ZoracleError("ask() after the run ended: read .result (or .params and .history)")
        if ch.queries is None or ch.losses is not None:  # (told, the run's next points not yet posted)
            raise ZoracleError("ask() while a tell() is still waiting for the run's next points (in another "
                               "thread: an `asyncio.to_thread(opt.tell, losses)` not awaited?): let that tell "
                               "return, then ask")
        if ch.asked:
            raise ZoracleError(f"ask() twice without tell(): tell the {ch.queries.shape[0]} losses of the points "
                               "the last ask() returned first (call ask() once per tell())")
        ch.asked = True
        return ch.queries.copy()

    @property
    def batch(self) -> Any:
        """The batch the points of the last :meth:`ask` are to be evaluated on (before an ask, those
        it will return): the object ``batches`` gave for the step (``train`` binds its oracle to it),
        ``grasp_batch`` (by default the first batch) for ZO-GraSP's scoring asks; ``None`` for points
        of the plain loss (steps without ``batches`` beside a ``grasp_batch``)."""
        ch = self._channel
        if not self._data:
            raise ZoracleError(".batch of an AskTell without `batches`: its points need no data (to evaluate "
                               "each ask on a minibatch, pass batches=..., as to zo.train)")
        self._raise_error()
        with ch.cond:
            if ch.queries is None:
                raise ZoracleError(".batch of a closed AskTell: it asks no more points (start a new one; "
                                   "resume=True continues from its checkpoint)" if ch.closed else
                                   ".batch after the run ended: no points are left to evaluate (read .result)")
            return ch.batch

    def tell(self, losses: Any, *more: Any, **unknown: Any) -> None:
        """The losses of the points the last :meth:`ask` returned, in their order (a sequence or array
        of ``n`` finite numbers), or by row, ``{row: loss}`` (losses collected as they complete). Returns
        when the run has posted its next points or ended (a save that is due written). A wrong count,
        a row missing or a non-finite loss is refused naming the query, and the points stay asked:
        tell again. ``tell(X, losses)`` (pycma's and scikit-optimize's order) takes the points back
        first: ``X`` must be the points asked, exactly (a row that differs is refused), and the losses
        come second, as ``more`` (``tell(X, losses)``; more arguments are refused). Keywords other
        libraries' ``tell`` takes (``unknown``: ``copy=``, ``function_values=``) are refused naming
        the two forms. Warnings of the run are issued here, at the caller's line.

        The last ``tell(X, losses)`` sent again (a network retry: its points, not those asked now) is
        taken as told: it waits for that tell if it is still under way and changes nothing; other losses
        for its points are refused naming the row. ``tell(losses)`` alone names no ask: sent again, it is
        refused ("tell() without ask()")."""
        if unknown or len(more) > 1:
            got = ", ".join([f"{len(more) + 1} arguments by position"] * (len(more) > 1) +
                            [f"`{k}`={short_repr(v, 60)}" for k, v in unknown.items()])
            raise ForeignArgument(f"tell() got {got}: it takes {_TELL_FORMS} (no other library's options: "
                                  "a step's points are all told at once, in their rows' order)")
        if more:
            points, losses = losses, more[0]
        ch = self._channel
        self._raise_error()
        with ch.cond:
            closed, done, last, ticket = ch.closed, ch.done, ch.told, ch.ticket
            asked = ch.queries if ch.asked and not (closed or done) else None
        if asked is None:
            if more and not closed and self._retried(points, losses, last, None):
                return
            raise ZoracleError(
                "tell() on a closed AskTell: start a new one (resume=True continues from its checkpoint)"
                if closed else "tell() after the run has ended: read .result" if done else
                "tell() without ask(): no points were asked; call ask() for the points, evaluate them, then "
                "tell() their losses" + ("" if last is None else
                                         " (a tell sent again, a network retry? The last ask()'s points were "
                                         "told already; tell(X, losses) with the asked points takes a retry "
                                         "of the same losses as told, and refuses other losses)"))
        n, record = asked.shape[0], None
        if more:
            try:
                arr = _told_points(points, asked, losses)
            except ArgumentError:
                if self._retried(points, losses, last, asked):
                    return
                raise
        values = self._values(losses, n)
        if more:
            record = _TellRecord(arr, values)
        self._wait(values, ticket, record)

    def _values(self, losses, n: int) -> np.ndarray:
        """The told ``losses`` of ``n`` points checked (refused naming the row): a float64 array."""
        if n == 1 and not isinstance(losses, (Mapping, str, bytes)) and np.ndim(losses) == 0:
            losses = [losses]  # (one point asked: its loss alone, a number or a 0-d array, is unambiguous)
        what = f"the losses told for the {n} points of the last ask()"
        mark = TOLD.set(True)  # worded for a told value, not for a function zoracle called
        try:
            return check_vector(_by_row(losses, n, what) if isinstance(losses, Mapping) else losses, n,
                                lambda j: f"query {j} of the last ask() (row {j} of its points)", what)
        finally:
            TOLD.reset(mark)

    def _retried(self, points, losses, last, asked) -> bool:
        """Whether ``tell(points, losses)`` sends the last tell(X, losses) again (a network retry: the
        points of the tell before, told already, and not those asked now): then it waits as that tell does
        (until the run has posted its next points or ended) and True; with other losses, refused."""
        if not isinstance(last, _TellRecord):
            return False
        arr = _points_array(points)
        if arr is not None and arr.ndim == 1 and last.shape == (1, arr.shape[0]):  # (nevergrad's tell(x, loss))
            arr = arr[None]
        if arr is None or arr.shape != last.shape or _TellRecord.digest_of(arr) != last.digest:
            return False
        try:
            values = self._values(losses, arr.shape[0])
        except OracleError:
            values = None
        if values is None or not np.array_equal(values, last.values):
            if values is None:  # (no losses to tell: a NaN, a row missing; compared whole)
                which = f"{short_repr(last.values.tolist(), 80)} were told, now {short_repr(losses, 80)}"
            else:
                j = int(np.flatnonzero(values != last.values)[0])
                which = f"row {j} was told {last.values[j].item()!r}, now {values[j].item()!r}"
            raise ArgumentError(
                f"tell(X, losses): X is the points of the last tell(), told already, with other losses ({which}): "
                "a tell is taken once (the same losses sent "
                "again, a retry, are taken as told); " + ("the run has ended: read .result" if self._channel.done else
                                                         "ask() for the next points and tell their losses")
                + ("" if asked is None else f" (the {asked.shape[0]} points asked now)"))
        self._wait()  # (the first send's turn, if it is still waiting: returns once it has returned)
        return True

    @property
    def params(self) -> Any:
        """The run's current parameters (a copy): the result's once :attr:`done`, before the first
        step the initial ones."""
        ch = self._channel
        if ch.result is not None:
            return ch.result.params.copy()
        run = ch.run
        return (run.params if run is not None else self._params0).copy()

    @property
    def history(self) -> History:
        """The run's :class:`~zoracle.History` so far (the result's once :attr:`done`): copies of the
        run's records, each copied once and shared by later reads (a read costs no copy of the whole
        history)."""
        ch = self._channel
        if ch.result is not None:
            return ch.result.history
        run = ch.run
        if run is None:
            return History()
        with self._copying:
            return History(_copies(run.steps_hist, self._copied[0]), _copies(run.epoch_hist, self._copied[1]))

    def close(self) -> None:
        """End the run at its next query (its steps saved as for Ctrl-C, where ``checkpoint`` is set); a
        closed AskTell asks nothing more. Waits for the run's thread a bounded time."""
        self._finalizer()

    def __getattr__(self, name: str) -> Any:  # (only names the class and instance lack)
        if name in _OTHER_NAMES:
            raise AttributeError(f"AskTell has no `{name}`: {_OTHER_NAMES[name]}", name=name, obj=self)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self)

    def __reduce_ex__(self, protocol):
        raise _NotCopied("an AskTell cannot be pickled or copied: its run is a thread of this process. Save "
                         "the run with checkpoint='run.npz' and start AskTell(..., checkpoint='run.npz', "
                         "resume=True) where it should go on (.params and .history are plain values to keep)")

    def __enter__(self) -> AskTell:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        ch = self._channel
        state = ("done" if ch.done else "closed" if ch.closed else
                 f"{ch.queries.shape[0]} points {'asked' if ch.asked else 'to ask'}" if ch.queries is not None else
                 "running")
        return f"AskTell({state})"


AskTell.__init__.__signature__ = visible_signature(AskTell.__init__)  # (help(): without *extra, **unknown)
