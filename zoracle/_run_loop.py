"""``zoracle.train``'s loop over epochs and steps: a step estimates the gradient at the step's batch,
updates the params and records the step; an epoch's end saves, evaluates and records the epoch.

``run`` (:class:`Run`) carries what the loop reads and changes, under the names ``train`` gives them.
A warning's fixed ``stacklevel`` counts the frames from here up to ``train``'s caller."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
import os
import sys
import time
import types

import numpy as np

from ._backend import namespace
from ._bar import _beside, _rate_text, _set_total, log
from ._checkpoint import CheckpointError
from ._diagnose import WATCH_STEPS, beyond_rounding, cause_first, dead_blocks_text, noise_note, still_text
from ._epochs import _bound
from ._errors import ArgumentError, OracleError, ZoracleError, logging_kept_out, told, user_stacklevel, warn
from ._estimators import RGE, SNES, StepError, estimate_gradient, finite_mean
from ._executors_core import ShardFailed
from ._fastcheck import checking
from ._schedules import fingerprints, schedule_value
from ._train_checks import _warn_tiny_mu
from ._train_records import _EPOCH_KEYS, _called, _count_of, _in_order, _json_number, _metrics, _stops, callback_key

__all__ = ["RUNNING", "Run", "run_epochs", "save", "save_before_error"]

#: the run whose epochs this thread runs (zoracle.AskTell reads its params and records between its steps)
RUNNING: contextvars.ContextVar = contextvars.ContextVar("zoracle_running", default=None)


class Run(types.SimpleNamespace):
    """A run's state over its loop: what stays fixed (the oracle, estimator, optimizer, schedules,
    callbacks, checkpoint, ...) and what the steps change (``params``, ``state``, ``est_state``,
    ``step``, ``epoch``, ``pos``, ``nfev``, the records, ``stopped``, ...)."""


def save(run, last: bool = False, stacklevel: int = 4) -> None:
    """Write the run's checkpoint as it stands (zoracle._run_save.Saver); ``stacklevel`` of a failed
    last save's warning (4: ``train``'s caller, from ``train``)."""
    # the schedules' values as they stand: a schedule that a callback changes as the run goes (a
    # learning rate lowered on a plateau) gave its steps since the start other values than it did
    # there, which a checkpoint holding the start's fingerprints contradicted (its own history did),
    # so a resume with the schedule rebuilt as it stood was refused
    if run.checkpoint is not None:
        try:
            prints = fingerprints(run.lr_of, run.lr_name, run.mu_sched, run.total)
        except ArgumentError:  # a value no step may take, at a step to come: that step raises it, not this
            prints = run.saver.prints  # save (the run's last one keeps its result); the earlier ones stand
        run.saver.prints = prints
    run.saver.save(last, params=run.params, state=run.state, est_state=run.est_state, step=run.step, epoch=run.epoch,
                   pos=run.pos, nfev=run.nfev, checked=run.checked, steps_hist=run.steps_hist, bar=run.bar,
                   progress=run.progress, stacklevel=stacklevel, warned=warned_keys(run))


def warned_keys(run) -> set:
    """The one-off warnings the run gave (before a resume too), which its checkpoint keeps so a resumed run
    gives none again: ``run.warned`` (``"flat"``, ``"still"``, ``"ended_above"``, ``"dead_block <name>"``,
    estimate_gradient's ``"coarse ..."``) and the callbacks warned of (:func:`callback_key`)."""
    return run.warned | {callback_key(i, cb) for i, cb in enumerate(run.callbacks) if id(cb) in run.cb_warned}


def run_epochs(run) -> None:
    """The run's epochs from ``run.epoch`` (step ``run.pos`` of it) on, until the last or a stop."""
    while run.epoch < run.epochs:
        if run.stopped and run.pos == 0:  # stopped at an epoch's end: the next epoch's batches are not drawn
            break
        blist = None  # the last epoch's batches go before this one's are drawn
        blist = run.epoch_batches(run.epoch)
        if run.pos > len(blist):
            raise CheckpointError(f"checkpoint {run.resume!r}: header field 'pos' is {run.pos}, but epoch {run.epoch} "
                                  f"has only {len(blist)} batches; resume with the same batches or start over")
        if run.stopped and run.pos < len(blist):  # a resumed run at its budget mid-epoch: no step to take
            break
        # (a resumed run at its budget with pos at the epoch's end still finishes that epoch: its
        # end was saved before eval_fn and the callbacks ran, and one of them was interrupted)
        if run.sparse and not run.masks.per_step:
            run.coords = run.masks.coordinates(run.epoch)
        if run.progress:  # the epoch running, as its lines show it (Keras' "Epoch 5/5"), to the run's end
            run.bar.set_description(f"epoch {run.epoch + 1}/{run.epochs}", refresh=False)
        run.ran = run.flat = 0  # this epoch's steps, and those whose estimate was 0 (to within the loss's rounding)
        while run.pos < len(blist):
            # what the step writes (the loss's print or warning, run in this process; a warning of
            # zoracle's) starts a line of its own, as eval_fn's does: it continued the bar's line
            with _beside(run.bar, run.progress):
                stop = take_step(run, blist)
            if stop:
                break
        with _beside(run.bar, run.progress):
            epoch_warnings(run, blist)
        if run.pos >= len(blist) and end_epoch(run):
            break


def take_step(run, blist) -> bool:
    """One training step on batch ``blist[run.pos]``: estimate, update, record; whether the run stops."""
    run.between = False  # (until the step is recorded: its update changes the params before the step count)
    t0, bound, g = _estimate(run, blist)
    run.held = bound, g  # until the next step's replace them (as train's locals were: the next bind is a new id)
    lr = _update(run, g, bound)
    return _record(run, t0, g, lr, blist)


def _estimate(run, blist):
    """The step's gradient estimate at the batch (the oracle bound to it); the step's start time."""
    if run.sparse and run.masks.per_step:  # drawn once per step, where the step runs
        run.coords = run.masks.coordinates(run.epoch, step=run.step)
    t0 = time.perf_counter()
    run.step_began = run.step
    run.est = run.estimator if run.mu_sched is None else dataclasses.replace(
        run.estimator, mu=schedule_value(run.mu_sched, run.step, "mu", positive=True))
    try:
        bound = _bound(run.oracle, blist[run.pos], executor=run.executor)
    except ZoracleError as exc:  # its type kept; which batch of `batches` added (steps were spent)
        if blist[run.pos] is not None and exc.args and isinstance(exc.args[0], str):
            exc.args = (f"{exc.args[0]} (at bind(batch) of training step {run.step}, epoch {run.epoch}, "
                        f"batch {run.pos})", *exc.args[1:])
        raise
    except Exception as exc:  # the oracle's bind(batch) (TorchOracle's first one runs the model)
        raise OracleError(f"bind(batch) of training step {run.step} (epoch {run.epoch}, batch {run.pos})",
                          cause=exc) from exc
    if run.box is not None and (run.step == run.first_step or run.mu_sched is not None):
        # the box this step's mu needs (each update clips into its own step's): the start, or a resumed
        # run's params, where a start within mu of a side moves in; a mu schedule's larger value moves them in
        run.params = run.box.project(run.params, run.est.mu)
        if run.step == 0:  # the first params queried: a diverged run's message reads the loss there again,
            run.params0 = run.params  # beside the first step's reading (at the start given, a move read as drift)
    step_rng = np.random.default_rng([run.root, 1, run.step]) if isinstance(run.est, (RGE, SNES)) else None
    try:
        with checking(bound, run.verdicts):
            g = estimate_gradient(bound, run.params, run.est, coordinates=run.coords, rng=step_rng,
                                  executor=run.executor, state=run.est_state)
    except OracleError as exc:  # which training step, added to the query (its shard and worker kept)
        raise exc.located(f"{exc.query} of training step {run.step} (epoch {run.epoch}, batch {run.pos})")
    except ShardFailed as exc:  # a shard that timed out or failed twice: which step, too
        if exc.args and isinstance(exc.args[0], str):
            exc.args = (f"{exc.args[0]} (at training step {run.step}, epoch {run.epoch}, batch {run.pos})",
                        *exc.args[1:])
        raise
    except StepError as exc:
        scale = float(run.xp.max(run.xp.abs(run.params)))
        if run.step == 0 or not scale > 100 * max(1.0, run.scale0):
            raise  # a step this mu does not make at parameters of the run's own scale
        # training moved the params where mu is no step: they grew by orders of magnitude
        last = f" (lr was {run.steps_hist[-1]['lr']:g})" if run.steps_hist else ""
        run.step_began = None  # (diverged params: no save over the last scheduled one, which holds sane ones)
        note = noise_note(bound, run.params, run.params0, _left(run), _first_loss(run, bound))
        raise ArgumentError(
            f"training diverged at step {run.step} (epoch {run.epoch}): max|params| grew to "
            f"{scale:.3g} (from {run.scale0:.3g}), where mu = {run.est.mu:g} is no longer a representable step; "
            f"{cause_first(note, 'lower the learning rate' + last)}{note}") from exc
    if run.tiny:  # a float32 loss or a wider one: the base loss measured says which
        run.tiny = _warn_tiny_mu(*run.tiny, loss=g.loss, stacklevel=6)
    run.step_began = None  # (after its warning: under -W error, an error inside the step, the steps before it saved)
    return t0, bound, g


def _left(run, g=None):
    """The queries ``max_queries`` leaves a run that diverged (None: no budget), the step's own
    estimate ``g`` spent (not yet in ``run.nfev``): a diverged run's message asks the loss no more."""
    return None if run.max_queries is None else run.max_queries - run.nfev - (g.nfev if g is not None else 0)


def _first_loss(run, bound):
    """The loss this run's first step read at its first params, where ``bound`` is the loss it read it
    with (a plain oracle: a step bound to another batch reads another loss); else None (a resumed run:
    its first step was another process's, at the params the first run was given)."""
    if bound is not run.oracle or isinstance(run.est, SNES) or run.first_step != 0 or not run.steps_hist:
        return None
    return run.steps_hist[0]["loss"]


def _update(run, g, bound):
    """The optimizer's update of ``run.params`` by the estimate, checked; the step's lr. ``run.prev``: the
    step's base point, until the step's watches have read it (not a local of the step's callers, which
    kept one d-sized array more alive through its callbacks and saves)."""
    lr = schedule_value(run.lr_of, run.step if run.lr_sched is not None else int(run.state.count),
                        run.lr_name)
    prev = run.prev = run.params  # (the step's base point: a diverged run's message probes the loss there)
    try:
        before, prev_state = int(run.state.count), run.state
        out = run.optimizer.update(g.grad, run.state, run.params, lr=lr)
    except ArgumentError as exc:  # the optimizer's own check: train names the step, not update()
        if bool(run.xp.isfinite(g.grad).all()):
            raise
        fix = (f"lower the learning rate (lr was {run.steps_hist[-1]['lr']:g}) or scale the loss down"
               if run.steps_hist else "scale the loss down" + (  # (no step taken yet)
                   ", or pass float64 params" if g.grad.dtype != np.float64 else ""))
        note = noise_note(bound, prev, run.params0, _left(run, g), _first_loss(run, bound))
        raise ArgumentError(
            f"training diverged at step {run.step} (epoch {run.epoch}): the gradient estimate is non-finite "
            f"(the losses' differences over mu = {run.est.mu:g} overflow {g.grad.dtype}); {cause_first(note, fix)}"
            f"{note}") from exc
    if not isinstance(out, (tuple, list)) or len(out) != 2:  # (the new params alone: a bare "too many values to unpack")
        got = (f"a {type(out).__name__} of {len(out)} entries" if isinstance(out, (tuple, list)) else
               f"a {type(out).__name__}" + (f" of shape {tuple(out.shape)}" if hasattr(out, "shape") else ""))
        raise ArgumentError(f"`optimizer` {run.optimizer.name!r}: update() returned {got} at step {run.step}; it "
                            f"must return the pair (params, state): `return new_params, new_state`")
    run.params, run.state = out
    if not (getattr(run.params, "shape", None) == (run.d,) and getattr(run.params, "dtype", None) == run.dtype0
            and namespace(run.params) is run.xp):
        # an own optimizer's params in another dtype (np.clip against float64 bounds turned a float32
        # run into float64, its checkpoint then refused) or shape ((d, 1): an error naming `params`)
        got = (f"{type(run.params).__name__} of dtype {run.params.dtype} and shape {tuple(run.params.shape)}"
               if hasattr(run.params, "dtype") and hasattr(run.params, "shape") else type(run.params).__name__)
        raise ArgumentError(
            f"`optimizer` {run.optimizer.name!r}: update() returned params as a {got} at step {run.step}, "
            f"where it was given a {type(run.params0).__name__} of dtype {run.dtype0} and shape ({run.d},): train "
            f"keeps the params as given (a checkpoint of others cannot be resumed); return them so, "
            f"e.g. new.astype(params.dtype).reshape(params.shape)")
    count = getattr(run.state, "count", None)
    if _count_of(run.state) != before + 1 and not run.count_warned:
        # (a plain tuple's `count` is its method: named as the state's type, not a bound method's repr)
        plain = isinstance(run.state, tuple) and not hasattr(run.state, "_fields")
        got = (f"a plain {type(run.state).__name__}, no NamedTuple (return the state as init builds it: "
               f"{type(prev_state).__name__}(count=state.count + 1, ...))" if plain else repr(count))
        text = (f"`optimizer` {run.optimizer.name!r}: update() must return a state whose `count` is one more "
                f"than the state it was given ({before} + 1), got {got}: train reads it for the "
                f"learning rate (a schedule would stay at one step) and checkpoints it")
        if before == run.first_count:  # its first update: refused, nothing much spent
            raise ArgumentError(text)
        # later (an update that skipped a step, say): the run's work is kept, the user told once
        warn(f"train: {text}; from step {run.step} on, the optimizer's own schedule lags the steps"
             + (" and this run's checkpoint cannot be resumed" if run.checkpoint is not None else ""),
             UserWarning, stacklevel=5)
        run.count_warned = True
    if not bool(run.xp.isfinite(run.params).all()):
        note = noise_note(bound, prev, run.params0, _left(run, g), _first_loss(run, bound))
        raise ArgumentError(
            f"training diverged at step {run.step} (epoch {run.epoch}): params became non-finite; "
            f"{cause_first(note, f'lower the learning rate (lr was {lr:g})')}{note}"
        )
    if run.box is not None:  # the projected step: every query of the next step (at this mu) inside `bounds`
        # (after the check above: an update to inf, clipped to a wall, would hide a diverged run; the update
        # as the optimizer made it, for the still-params watch: params the box holds at a wall were moved
        # by their update, no learning rate too small)
        run.unclipped = run.params
        run.params = run.box.project(run.params, run.est.mu)
    return lr


def _record(run, t0, g, lr, blist) -> bool:
    """The step's record, its progress and callbacks, and a save when one is due; whether the run stops."""
    run.nfev += g.nfev
    run.ran += 1
    if run.block_watch is not None:
        run.block_watch.see(g.grad, g._rounding)
        run.block_watch = None if run.block_watch.done else run.block_watch
    if run.still_watch is not None:
        run.still_watch.see(g.grad, lr, run.epoch, run.prev, run.params if run.unclipped is None else run.unclipped,
                            g._rounding)
    run.unclipped = None
    run.prev = None  # (not kept into the callbacks, saves and next step: one d-sized array more at its peak)
    if run.flat == run.ran - 1 and not run.flat_warned:  # (read until an estimate moves: an O(d) pass, a GPU sync)
        run.flat += not bool(run.xp.any(beyond_rounding(g.grad, g._rounding)))
    width = float(run.est.mu)
    if run.snes:  # the widths this step sampled with, before its update
        width = float(np.mean(run.est_state))
        run.est_state = g.state
    rec = {"step": run.step, "epoch": run.epoch, "loss": _json_number(g.loss), "lr": lr, "mu": width,
           "nfev": int(g.nfev), "total_nfev": int(run.nfev), "seconds": time.perf_counter() - t0}
    run.steps_hist.append(rec)
    run.checked = dict(run.verdicts)
    run.step += 1
    run.pos += 1
    run.between = True  # the step is the run's: an error from here to the next step's start saves it first
    run.n_rate += g.nfev
    now = time.perf_counter()
    if run.progress:
        if run.max_queries is not None and run.bar_steps is not None:  # (batches of no length: no total, as before)
            _set_total(run.bar, _bar_total(run))
        run.bar.set_postfix(loss=f"{g.loss:.4g}", lr=f"{lr:.3g}",
                            qps=_rate_text(run.n_rate / max(now - run.t_rate, 1e-9)), refresh=False)
        run.bar.update(1)
    elif log.isEnabledFor(logging.DEBUG):  # (a copy: the history's own record stays as it is)
        with logging_kept_out():
            log.debug("step %d epoch %d loss %.6g lr %.4g nfev %d", rec["step"], rec["epoch"], g.loss, lr, g.nfev,
                      extra={"zoracle_event": "step", "zoracle": dict(rec)}, stacklevel=user_stacklevel())
    try:
        with _beside(run.bar, run.progress and bool(run.callbacks)):
            for cb in run.callbacks:  # (copies: a callback rounding or popping a field changed the history)
                if _stops(_called(cb, "step", dict(rec), run.params.copy()), cb, run.cb_warned, stacklevel=6):
                    run.stopped = True
    except BaseException:
        # a step callback that raises (or Ctrl-C in one) loses no step: this one is saved
        # first (on an epoch's last step or a checkpoint_every step the save came after)
        if run.saver.saved != run.step:
            try:
                save(run)
            except Exception:  # the callback's error is the one to see
                pass
        raise
    if run.max_queries is not None and run.nfev >= run.max_queries:
        run.stopped = True
    if run.pos < len(blist) and not run.stopped and run.cadence.due(run.step):
        save(run)
    return run.stopped


def _bar_total(run):
    """The steps the bar counts to in a run bounded by ``max_queries``: those its epochs hold, or fewer
    where the queries left run out first, at this run's queries a step so far (the run stops there).
    The epochs' steps alone, a budget of 30% of them ended the run at 30% of the bar, whose time left
    was the epochs' (3.6 times the real one)."""
    per_step = run.n_rate / (run.step - run.first_step)
    if not per_step > 0:
        return run.bar_steps
    return min(run.bar_steps, run.step + math.ceil(max(run.max_queries - run.nfev, 0) / per_step))


def epoch_warnings(run, blist) -> None:
    """At an epoch's end: an epoch of estimates all 0, blocks whose estimates stay 0, params that stay."""
    if run.pos >= len(blist) and run.ran and run.flat == run.ran and not run.flat_warned:
        run.flat_warned = True
        run.warned.add("flat")
        # (SNES and rank-shaped RGE rank losses a few units of their last place apart as any others, SNES
        # tied ones by sample: their steps there are of full size in a random direction, not of rounding's)
        ranked = run.snes or getattr(run.est, "shaping", "none") == "ranks"
        moved = ("the steps followed rounding noise alone (the losses' ranks, which order losses a few units of "
                 "their last place apart as any others: a random step of full size)" if ranked else
                 "the estimates moved no parameter beyond rounding noise (weight decay and momentum aside)")
        where = (f"samples (widths sigma, from mu = {run.est.mu:g})" if run.snes else
                 f"queries at +-mu = {run.est.mu:g}")
        warn(f"train: every gradient estimate of epoch {run.epoch} ({run.ran} step{'s' * (run.ran > 1)}) was 0 to "
             f"within the loss's rounding, so {moved}: each step's {where} "
             f"{told('returned', 'were told')} the same loss, or losses a few units of its last place apart (a "
             "CPU's rounding). Where the loss is "
             "flat there, piecewise constant (an error rate or count, a simulator rounding to a grid) or on a "
             "plateau, raise mu past its steps, or train on a smooth surrogate (a margin or "
             "cross-entropy loss)", UserWarning, stacklevel=4)
    if run.pos >= len(blist) and run.block_watch is not None and run.block_watch.steps >= WATCH_STEPS:
        # (a block named before a resume is not named again; another block found dead now is)
        dead = [n for n in run.block_watch.dead() if f"dead_block {n}" not in run.warned]
        if dead:
            run.warned.update(f"dead_block {n}" for n in dead)
            warn(dead_blocks_text(dead, run.block_watch.steps, run.est.mu), UserWarning, stacklevel=4)
        run.block_watch = None
    if (run.pos >= len(blist) and run.still_watch is not None
            and (still := run.still_watch.verdict(run.params)) is not None):
        if still:
            run.warned.add("still")
            warn(still_text(run.still_watch.epoch, run.epoch, run.still_watch.lr, run.params), UserWarning,
                 stacklevel=4)
        run.still_watch = None


def end_epoch(run) -> bool:
    """An epoch's end: its save, evaluation, record, log line and callbacks; whether the run stops
    here without them (``eval_fn`` returned no metric)."""
    # the epoch's steps are safe before eval_fn or a callback can fail; the run's last
    # save when it is the last epoch, or a budget or callback stopped it here. An int or
    # time checkpoint_every saves here only when due (one-step epochs saved every step)
    if run.cadence.due(run.step, epoch_end=True) or run.stopped or run.epoch + 1 == run.epochs:
        with _beside(run.bar, run.progress):  # (a failed last save warns)
            save(run, last=run.stopped or run.epoch + 1 == run.epochs, stacklevel=6)
    t0 = time.perf_counter()
    k = len(run.steps_hist)  # the epoch's records are the history's tail: not a scan of the whole run
    while k and run.steps_hist[k - 1]["epoch"] == run.epoch:
        k -= 1
    mine = run.steps_hist[k:]
    losses = [float(r["loss"]) for r in mine]
    erec = {"epoch": run.epoch, "loss": _json_number(finite_mean(losses)) if losses else None,
            "lr": mine[-1]["lr"] if mine else None, "nfev": int(sum(r["nfev"] for r in mine)),
            "total_nfev": int(run.nfev)}
    if run.eval_fn is not None and ((run.epoch + 1) % run.eval_every == 0 or run.epoch + 1 == run.epochs):
        with _beside(run.bar, run.progress):  # a print in eval_fn starts its own line
            try:
                value = run.eval_fn(run.params.copy())
            except StopIteration as exc:  # escaping train bare, it would end a caller's loop silently
                raise ArgumentError(
                    f"`eval_fn` raised StopIteration at epoch {run.epoch} (a next() on a used-up iterator?): "
                    "it must return a number or a dict of numbers; to stop the run early, return True "
                    "or raise StopIteration from a callback in `callbacks`") from exc
        with _beside(run.bar, run.progress):  # (its warnings)
            try:
                erec.update(_metrics(value, run.epoch, stacklevel=5))
            except ArgumentError as exc:  # found only now: the run's work is returned, not lost
                then = ("fix `eval_fn` and resume from the checkpoint to evaluate it and go on"
                        if run.checkpoint is not None else "fix `eval_fn` (pass checkpoint= to resume a run "
                        "after such a failure)")
                warn(f"train: {exc}. The run stops here and returns its result, without this "
                     f"epoch's record; {then}", UserWarning, stacklevel=4)
                run.stopped = True
                return True
    erec["seconds"] = float(sum(r["seconds"] for r in mine) + time.perf_counter() - t0)
    run.between = False  # (the epoch's record is the history's before the epoch count moves on)
    run.epoch_hist.append(erec)
    if run.resumed_metrics and set(erec) - set(_EPOCH_KEYS) - {"seconds"}:
        # the checkpoint kept eval_fn's metrics in name order: the records read back from it
        # take this run's order (eval_fn's), as the uninterrupted run has them
        order = [k for k in erec if k not in _EPOCH_KEYS and k != "seconds"]
        run.epoch_hist[:run.resumed_metrics] = [_in_order(r, (*_EPOCH_KEYS, *order), last=("seconds",))
                                                for r in run.epoch_hist[:run.resumed_metrics]]
        run.resumed_metrics = 0
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in erec.items())
    try:
        with _beside(run.bar, run.progress and log.isEnabledFor(logging.INFO), clear_now=True):
            with logging_kept_out():
                log.info("epoch %d/%d: %s", run.epoch + 1, run.epochs, shown,
                         extra={"zoracle_event": "epoch", "zoracle": dict(erec)}, stacklevel=user_stacklevel())
        with _beside(run.bar, run.progress and bool(run.callbacks)):
            for cb in run.callbacks:
                if _stops(_called(cb, "epoch", dict(erec), run.params.copy()), cb, run.cb_warned, stacklevel=5):
                    run.stopped = True
    except BaseException:
        # an epoch callback that raises (or Ctrl-C in one, or a handler's KeyboardInterrupt): the epoch, its
        # record in the history, is the run's, saved first as its next epoch's start (as a raising step
        # callback's step is); saved with the epoch count before it, a resume recorded the epoch twice
        run.epoch, run.pos, run.between = run.epoch + 1, 0, True
        raise
    run.epoch += 1
    run.pos = 0
    run.between = True
    return False


def save_before_error(run) -> None:
    """An error (or SIGTERM turned into SystemExit, or Ctrl-C) inside a step's bind or estimate: the
    params and optimizer state are still those of the steps before it, which are saved first (with
    checkpoint_every="epoch", a slow oracle's kill lost up to an epoch); the step in flight is lost.
    So is one between steps (``run.between``: an epoch's end before its record, ``eval_fn``, the next
    epoch's batches), where the steps are all the run has: a warning of zoracle's made an error
    (``python -W error``, ``warnings.simplefilter("error")``) at an epoch's end lost the epoch."""
    exc = sys.exc_info()[1]
    inside = run.step_began == run.step
    if (run.save_mid_step and (inside or run.between) and run.saver.saved != run.step and run.step > run.first_step
            and not isinstance(exc, CheckpointError)):  # (a save that failed: not tried again)
        try:
            save(run)
        except Exception:  # the error that stopped the run is the one to see
            pass
        else:  # (SystemExit, a SIGTERM handler's, shows no traceback: this line says what is kept)
            with contextlib.suppress(Exception):  # the line starts its own line, not the bar's
                run.bar.clear()
            with logging_kept_out():
                if inside:
                    log.warning("train: stopped inside step %d (%s); the checkpoint %r holds the %d steps before it: "
                                "resume=True continues there", run.step, type(exc).__name__,
                                os.fspath(run.checkpoint), run.step, stacklevel=user_stacklevel())
                else:
                    log.warning("train: stopped after %d steps (%s); the checkpoint %r holds them: resume=True "
                                "continues there", run.step, type(exc).__name__, os.fspath(run.checkpoint),
                                stacklevel=user_stacklevel())
