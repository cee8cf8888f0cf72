"""``zoracle.train``: the DeepZero training loop (sparse CGE + dynamic masks + any optimizer).

Every random choice is a pure function of one root seed and a counter: RGE directions of
step ``t`` come from ``(root, t)``, the masks of epoch ``e`` from ``(root, e // interval)``
and :class:`Minibatches` orders epoch ``e`` from ``(seed, e)``. A checkpoint therefore
only needs params, optimizer state, the root seed and the position ``(epoch, batch)`` to
make a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import numbers
import os
import sys
import time
import warnings

import numpy as np

from ._backend import namespace, to_numpy
from ._cadence import least_step_queries, save_cadence, warn_rewrites
from ._checkpoint import CheckpointError, Records, as_path, check_writable, save_checkpoint, save_fix, writer_lock
from ._diagnose import WATCH_STEPS, BlockWatch, StillWatch, dead_blocks_text, named_blocks, noise_note, still_text
from ._errors import ArgumentError, OracleError, ZoracleError, check_flag, config_hint, short_repr, user_stacklevel
from ._executors_core import ShardFailed
from ._estimators import CGE, RGE, SNES, StepError, _check_sigma, as_generator, as_seen, check_step, estimate_gradient, finite_mean, validate_params
from ._fastcheck import checking
from ._malloc import reuse_freed_memory
from ._masks import DynamicMasks, check_interval, keep_counts
from ._optim import Optimizer, sgd
from ._oracle import compute_dtype_of, has_methods, reject_async
from ._pruning import RANKINGS, SCORED_KINDS, check_score_kinds, grasp_queries, layer_ratios, random_ratios, smart_ratio, split_blocks, uniform_ratios, zo_grasp
from ._resume import compare_history, read_resume
from ._schedules import _count, as_schedule, describe_schedule, fingerprint, schedule_value
from ._history import History, Minibatches, TrainResult, _SCIPY_RESULT_FIELDS, _rows, _same_records, _take
from ._epochs import DRAIN_LIMIT, _batches_print, _bound, _checksum, _drain, _epoch_batches, _layout_print, _leaves, _short_hash, _shown_ratios, _steps_per_epoch
from ._train_checks import CHECKED_STEPS, RATIO_METHODS, _check_arity, _check_batches, _check_every_step, _check_layout, _check_overwrite, _check_size, _check_steps_per_epoch, _resolve_blocks, _warn_huge_mu, _warn_sign_decay, _warn_tiny_mu, _warn_zero_blocks
from ._bar import _BarStream, _Beside, _IN_BLOCK, _LINE_SECONDS, _NoBar, _SWAP, _WALL_OFFSET, _bar_clock, _beside, _line_bar, _others_drawn, _rate_text, _redraws, _steady_bar, _steady_class, _tqdm_lock, _tqdm_unlock, _unwrapped, log
from ._train_records import EPOCH_FIELDS, _EPOCH_KEYS, _STEP_KEYS, _called, _count_of, _in_order, _json_number, _metric, _metrics, _restore_state, _state_arrays, _stops
_MOVED_OUT = (CHECKED_STEPS, DRAIN_LIMIT, EPOCH_FIELDS, _Beside, _IN_BLOCK, _SCIPY_RESULT_FIELDS, _SWAP, _WALL_OFFSET, _bar_clock, _checksum, _drain, _leaves, _metric, _others_drawn, _rows, _same_records, _steady_class, _take)  # moved out and read nowhere here: still importable from here

__all__ = ["train", "TrainResult", "History", "Minibatches", "RATIO_METHODS"]


def train(oracle, params, *, batches=None, epochs: int = 1, steps_per_epoch: int | None = None,
          estimator=None, optimizer: Optimizer | None = None, schedule=None, mu=None,
          sparsity: float | None = None, ratios="zo_grasp", blocks=None, score_kinds=SCORED_KINDS,
          ranking: str = "magnitude", fill_small_blocks: bool = False, grasp_directions: int = 192, grasp_batch=None,
          mask_shuffle_interval: int | str = 5, executor=None, eval_fn=None, eval_every: int = 1,
          callbacks=(), checkpoint=None, checkpoint_every="epoch", resume=None, rng=None,
          progress: bool = True, max_queries: int | None = None, plot=None) -> TrainResult:
    """Train ``params`` through a loss oracle with zeroth-order gradient estimates.

    Per step: bind the oracle to the step's batch (every query of the step sees it),
    estimate the gradient (sparse CGE over the epoch's mask when ``sparsity`` is set),
    apply ``optimizer``. This is DeepZero's loop when ``estimator=CGE()``,
    ``sparsity=0.9``, ``ratios="zo_grasp"``, ``optimizer=sgd(0.1, momentum=0.9,
    weight_decay=5e-4)`` with a cosine schedule.

    Parameters
    ----------
    oracle : callable or DataOracle
        A plain oracle (``batches=None``) or one with ``bind(batch)``.
    params : array
        Initial flat parameters (not modified).
    batches : list, callable or Minibatches, optional
        The batches of an epoch: a list (same order each epoch), or ``epoch -> batches``
        (:class:`Minibatches` shuffles by ``(seed, epoch)``). Must be replayable for resume.
        An epoch's batches are drawn before its first step: a generator must yield a new
        array for each batch (one refilling a buffer is refused), and an endless one needs
        ``steps_per_epoch`` (it is refused after 100,000 batches).
    epochs : int
    steps_per_epoch : int, optional
        Steps per epoch for a plain oracle (default 1); truncates ``batches`` otherwise (more
        steps than ``batches`` holds are refused).
    estimator : CGE, RGE or SNES
        Default ``CGE()``. SNES's adapted ``sigma`` is carried from step to step, saved in
        checkpoints and returned as ``TrainResult.estimator_state``; the history's ``mu``
        is then the mean ``sigma`` each step sampled with.
    optimizer : Optimizer
        Default ``sgd(0.1)``.
    schedule : schedule, optional
        Learning rate per step (overrides the optimizer's own ``lr``). Every value must be a
        finite number >= 0; the values at the steps the run will reach among
        ``FINGERPRINT_STEPS``, and every step's up to ``CHECKED_STEPS`` (100,000) in a run of
        known length, are checked before the first query.
    mu : float or schedule, optional
        Smoothing parameter per step, a finite number > 0 at every step (overrides the
        estimator's ``mu`` in the steps; ZO-GraSP, run before the first step, scores with the
        estimator's own ``mu``).
    sparsity : float, optional
        Gradient sparsity of sparse CGE (0.9 = estimate 10% of the scored weights).
    ratios : {"zo_grasp", "smart", "uniform", "random"} or array
        Layer-wise keep ratios over the scored blocks; ZO-GraSP is computed once on
        ``grasp_batch`` (default: the first batch) with ``grasp_directions`` directions. An
        array holds one keep ratio per scored block, and must keep ``1 - sparsity`` of the
        scored weights (to each block's rounding, or ratios written to 4 decimals).
    blocks : sequence of slice or records, optional
        Parameter blocks; default the oracle's ``param_info``, else its ``blocks``, else one
        block. Records whose ``kind`` is not in ``score_kinds`` (and parameters in no
        block) get dense CGE.
    score_kinds : sequence of str
        The record kinds that are scored and masked when ``sparsity`` is set (default
        ``("conv", "linear")``); other records stay dense.
    ranking : {"magnitude", "grasp"}
        ZO-GraSP ranking (see :func:`zoracle.layer_ratios`).
    fill_small_blocks : bool
        With ``ratios="zo_grasp"``: every scored block that ZO-GraSP leaves empty and that has
        at most as many weights as the mask keeps of the scored blocks gets one of them, taken from
        the block with the most (``layer_ratios(fill_small=True)``), so a first layer's biases
        are not frozen for the whole run at extreme sparsity. ``zo.recipes.short_budget`` sets it
        by default from 1,400 steps on (``zo.recipes.FILL_FROM_STEPS``); measured in docs/peers.md.
    grasp_directions : int
        Directions of each of ZO-GraSP's two RGEs (``ratios="zo_grasp"``; default 192).
    grasp_batch : optional
        The batch ZO-GraSP scores on (default: the first batch).
    mask_shuffle_interval : int or "step"
        Epochs between fresh random masks, or ``"step"`` for a fresh mask every step (the
        short-budget recipe: a few dozen coordinates a step with Adam, see docs/peers.md).
    executor : optional
        Passed to every estimate; never closed here.
    eval_fn : callable, optional
        ``params -> float or dict`` at the end of every ``eval_every`` epochs and of the last
        one (``params``: a copy, so that a write into it cannot change the run; a number is
        recorded as the metric ``eval``, a dict's entries under their names). A run that ``max_queries`` or a callback stops inside an epoch (as
        ``recipes.short_budget``'s usually does) has no record for that partial epoch and no
        evaluation at its stop: evaluate ``result.params`` yourself. A value that is neither a
        number nor a dict of numbers, found only when ``eval_fn`` first runs, stops the run with a
        warning and returns its result (``stopped=True``; the epoch's end runs again on resume).
    eval_every : int
        Epochs between ``eval_fn`` calls (default 1; the last epoch is always evaluated); without
        ``eval_fn``, a value other than 1 is warned about (it has no effect).
    callbacks : sequence of callable
        ``callback(event, record, params)`` with event ``"step"`` or ``"epoch"`` (``record``
        and ``params`` are copies: a callback may keep them, and writing into them cannot change the run
        or its history, so constraints are kept by projecting in the optimizer's update); returning True (or NumPy's True), or raising StopIteration as SciPy's callbacks do, stops training; a value other than None or False is warned about.
    checkpoint : path, optional
        Checkpoint file (``.npz``), saved every ``checkpoint_every`` steps (int), at the first
        step end after that much time (a duration) or at the end of each epoch (``"epoch"``,
        before ``eval_fn`` and the callbacks run, so a failing eval loses no steps) and at the
        end; a step callback that raises has its step saved
        first, and so has an error or interrupt inside a step the steps before it (an oracle's
        state that a step may change mid-way aside; docs/training.md, "Preemption"). A path
        that cannot be written, or that holds a
        file zoracle did not write, raises :class:`~zoracle.ArgumentError` before the first
        query; an earlier run's checkpoint that this run does not resume from is overwritten
        at the first save, with a warning.
        An oracle with ``state_arrays() -> dict`` and ``load_state_arrays(dict)`` (state
        outside the flat parameters, such as BatchNorm running statistics) has that state
        saved and restored too.
    checkpoint_every : int, "epoch", datetime.timedelta or str
        Steps between checkpoint saves, ``"epoch"`` (default) for one at each epoch's end, or a
        time: a ``datetime.timedelta`` or text ``"30s"``, ``"10min"``, ``"1.5h"`` (a number > 0
        and one unit: s, sec, second(s), min, minute(s), h, hour(s)) saves at the first step end
        that much monotonic time after the last save (or the run's start), so a kill loses about
        that much work (and the step in flight); saves stay at step boundaries, a resume is still
        the uninterrupted run. Not part of the checkpoint's settings: a run resumes with another.
        Anything but ``"epoch"`` needs ``checkpoint`` (without it, nothing would be saved: refused).
    resume : path, True or False, optional
        Continue from this checkpoint (``True``: from ``checkpoint`` if the file exists and is
        not empty; None or False: start fresh).
        A corrupt or mismatched checkpoint raises :class:`~zoracle.CheckpointError`: the
        settings, the learning-rate and ``mu`` schedules (their values at every step already
        run, against the history's, and at a fixed set of later steps, so a changed callable
        is caught too), every header field and every array's
        dtype, shape and values are checked against this run before anything is used.
    rng : Generator, int or None
        Root of every random choice (directions, masks, ZO-GraSP).
    progress : bool
        tqdm progress bar with loss, lr and queries/s (prints in ``eval_fn`` and callbacks start
        a line of their own). On a stderr that is no terminal (a log file, a pipe) the bar is a
        plain line every 10 seconds and one at the end. Either way ``logging`` (logger
        ``zoracle``) gets a record at INFO per epoch and per checkpoint save; off, also one at
        DEBUG per step. Each carries its numbers as ``record.zoracle`` (a dict: the history's
        record, or a save's ``path``, ``steps``, ``total_nfev`` and ``loss``) and
        ``record.zoracle_event`` (``"epoch"``, ``"checkpoint"`` or ``"step"``).
    max_queries : int, optional
        A query budget: training stops after the first step at which the run's queries
        (ZO-GraSP's included, and those before a resume) reach it, so the last step may pass it
        by less than one step's queries. Not part of the checkpoint's settings: a run stopped
        by its budget resumes with a larger one. A budget that ZO-GraSP alone would spend
        raises :class:`~zoracle.ArgumentError` before the first query.
    plot : path, optional
        Write :meth:`History.plot`'s figure of the whole run (a resumed run's earlier steps
        included) to this file at the end (``.png``, ``.pdf``, ``.svg``, ...). Needs matplotlib;
        a missing matplotlib, a format it cannot write or a path that cannot be written raises
        :class:`~zoracle.ArgumentError` before the first query. Should the write still fail at
        the end (a disk filled meanwhile), a warning says so and the result is returned.

    Returns
    -------
    TrainResult

    Examples
    --------
    >>> import numpy as np, zoracle as zo
    >>> res = zo.train(lambda x: float(((x - 3) ** 2).sum()), np.zeros(4), epochs=50,
    ...                optimizer=zo.sgd(0.1), progress=False)
    >>> np.allclose(res.params, 3, atol=1e-2), res.nfev
    (True, 250)
    """
    t_start = time.perf_counter()
    params = validate_params(params)
    xp = namespace(params)
    d = params.shape[0]
    params0, dtype0 = params, params.dtype  # what an own optimizer's update() must return params as
    reject_async(oracle)  # (an `async def bind`: its coroutine was read as a bind that returned no oracle)
    _check_size(oracle, d)
    epochs = _count("epochs", epochs, 0)
    if steps_per_epoch is not None:
        steps_per_epoch = _count("steps_per_epoch", steps_per_epoch, 1)
    eval_every = _count("eval_every", eval_every, 1)
    if eval_fn is None and eval_every != 1:  # (its default, 1, cannot be told from one passed)
        warnings.warn(f"train: `eval_every`={eval_every} has no effect without `eval_fn`: nothing is evaluated; pass "
                      "eval_fn=params -> metric to evaluate every that many epochs, or drop eval_every",
                      UserWarning, stacklevel=user_stacklevel())
    if max_queries is not None:
        max_queries = _count("max_queries", max_queries, 1)
    _check_batches(batches)
    _check_steps_per_epoch(batches, steps_per_epoch)
    as_generator(rng)  # checked on resume too, which takes its root from the checkpoint ("abc" passed there)
    # the sparse split's settings are checked with or without `sparsity` (a typo must not pass
    # unseen until sparsity is turned on)
    grasp_directions = _count("grasp_directions", grasp_directions, 1)
    score_kinds = check_score_kinds(score_kinds)
    if ratios is None and sparsity is not None:  # (a config's null: read as an array holding NaN before)
        raise ArgumentError(f"`ratios` is None; pass one of {', '.join(map(repr, RATIO_METHODS))} or an array of keep "
                            "ratios, or leave it out for the default 'zo_grasp'")
    if isinstance(ratios, str) and ratios not in RATIO_METHODS:
        raise ArgumentError(f"`ratios` must be one of {', '.join(map(repr, RATIO_METHODS))} or an array; got {ratios!r}")
    if ranking not in RANKINGS:  # before ZO-GraSP's queries
        raise ArgumentError(f"`ranking` must be one of {', '.join(map(repr, RANKINGS))}; got {ranking!r}")
    mask_shuffle_interval = check_interval(mask_shuffle_interval)
    if checkpoint is not None:
        checkpoint = as_path(checkpoint, "checkpoint")
    estimator = CGE() if estimator is None else estimator
    if not isinstance(estimator, (CGE, RGE, SNES)):
        raise ArgumentError(f"`estimator` must be zo.CGE(...), zo.RGE(...) or zo.SNES(...), got {type(estimator).__name__}")
    snes = isinstance(estimator, SNES)
    if snes and mu is not None:
        raise ArgumentError("`mu` schedules set CGE's and RGE's step; SNES adapts its own sigma (start: "
                            "SNES(mu=...)): drop `mu`")
    optimizer = sgd(0.1) if optimizer is None else optimizer
    if not isinstance(optimizer, Optimizer):
        raise ArgumentError(f"`optimizer` must be built by zo.sgd / zo.adam / zo.sign_sgd, or be your own pure pair "
                            f"wrapped as zo.Optimizer(init, update, lr, name, config), got {type(optimizer).__name__}")
    lr_sched = as_schedule(schedule, "schedule") if schedule is not None else None
    mu_sched = as_schedule(mu, "mu", positive=True) if mu is not None else None
    cadence = save_cadence(checkpoint_every, checkpoint)  # (a time cadence counts from here)
    if callable(callbacks):
        raise ArgumentError(f"`callbacks` must be a list of callables; got one, {getattr(callbacks, '__name__', callbacks)!r}: "
                            "pass callbacks=[fn]")
    if callbacks is None or (isinstance(callbacks, (bool, np.bool_)) and not callbacks):
        # (False, NumPy's too: `callbacks=verbose and [printer]`, taken as none before)
        callbacks = ()
    if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__") or getattr(callbacks, "ndim", 1) != 1:
        # a number, a 0-d array or tensor: a TypeError from iterating it otherwise
        raise ArgumentError(f"`callbacks` must be a list of callables (event, record, params), got "
                            f"{type(callbacks).__name__}: pass callbacks=[fn, ...] or leave it out")
    callbacks = list(callbacks)  # not `if callbacks`: an array of callables has no truth value
    for i, cb in enumerate(callbacks):
        if not callable(cb):
            raise ArgumentError(f"`callbacks[{i}]` must be callable (event, record, params), got {type(cb).__name__}")
        _check_arity(cb, 3, f"`callbacks[{i}]`", "(event, record, params)")
    if eval_fn is not None and not callable(eval_fn):
        raise ArgumentError(f"`eval_fn` must be callable params -> float or dict, got {type(eval_fn).__name__}")
    if eval_fn is not None:
        _check_arity(eval_fn, 1, "`eval_fn`", "(params)")
    sparse = sparsity is not None
    fill_small_blocks = check_flag("fill_small_blocks", fill_small_blocks)
    progress = check_flag("progress", progress)
    if fill_small_blocks and not sparse:
        raise ArgumentError("`fill_small_blocks` changes the sparse split of ZO-GraSP; it needs `sparsity` "
                            "(e.g. sparsity=0.9), or pass fill_small_blocks=False")
    if not sparse and not (isinstance(ratios, str) and ratios == "zo_grasp"):  # the default: nothing asked
        shown = _shown_ratios(ratios)
        raise ArgumentError(f"`ratios` ({shown}) sets the keep ratios of sparse CGE, which needs `sparsity` "
                            "(e.g. sparsity=0.9); without it every parameter is estimated and the ratios would be "
                            "ignored: pass `sparsity`, or leave `ratios` out")
    if not sparse:  # the sparse split's other settings, away from their defaults, would be ignored as silently
        unused = [f"`{n}`" for n, changed in (("blocks", blocks is not None),
                                              ("score_kinds", not (isinstance(score_kinds, (tuple, list))
                                                               and tuple(score_kinds) == tuple(SCORED_KINDS))),
                                              ("mask_shuffle_interval", mask_shuffle_interval != 5)) if changed]
        if unused:
            raise ArgumentError(f"{', '.join(unused)} set(s) the sparse split of CGE, which needs `sparsity` (e.g. "
                                "sparsity=0.9); without it every parameter is estimated every step and the setting "
                                "would be ignored: pass `sparsity`, or leave it out")
    if sparse:
        if not isinstance(estimator, CGE):
            raise ArgumentError(f"`sparsity` needs zo.CGE() (sparse CGE); {type(estimator).__name__} perturbs every parameter")
        if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0 <= sparsity < 1:
            raise ArgumentError(f"`sparsity` must be a fraction in [0, 1) (e.g. 0.9), got {short_repr(sparsity)}"
                                f"{config_hint('sparsity', sparsity, 'number', lambda v: 0 <= v < 1)}")
        _warn_sign_decay(optimizer)
    if not sparse or not (isinstance(ratios, str) and ratios == "zo_grasp"):  # ratios may be an array
        # ZO-GraSP's own settings, set away from their defaults, would be ignored silently (a
        # `grasp_batch` passes: scripts give it whatever the method, and it changes no result)
        unused = [f"{n}={v!r}" for n, v, changed in (
            ("fill_small_blocks", fill_small_blocks, fill_small_blocks), ("ranking", ranking, ranking != "magnitude"),
            ("grasp_directions", grasp_directions, grasp_directions != 192)) if changed]
        if unused:
            shown = _shown_ratios(ratios)
            why = "without `sparsity` no ratios are computed" if not sparse else f"`ratios`={shown} does not compute them"
            raise ArgumentError(f"{', '.join(f'`{u}`' for u in unused)} set how ZO-GraSP computes the keep ratios of "
                                f"sparse CGE, but {why}: leave them out, or pass sparsity=... with ratios=\"zo_grasp\"")
    if resume is True:
        if checkpoint is None:
            raise ArgumentError("`resume=True` resumes from `checkpoint`; pass `checkpoint=path` too")
        path = os.fspath(checkpoint)  # an empty file (tempfile.mkstemp's, a job's placeholder) holds no run
        resume = checkpoint if os.path.exists(path) and not (os.path.isfile(path) and os.path.getsize(path) == 0) \
            else None
        if resume is None:
            log.info("no checkpoint at %s yet: starting a fresh run", os.fspath(checkpoint))
    elif resume is False:  # "do not resume", as None
        resume = None
    elif resume is not None:
        if not isinstance(resume, (str, bytes, os.PathLike)):
            raise ArgumentError(f"`resume` must be a checkpoint path, True (resume from `checkpoint` if it exists) or "
                                f"None/False (start fresh), got {resume!r}")
        resume = as_path(resume, "resume")  # "~/run.npz" as the checkpoint's path reads it
    if checkpoint is not None:
        check_writable(checkpoint)  # before the first query, not after the first epoch
        # absolute: the file checked here is the one every save writes, whatever os.chdir an
        # eval_fn or a callback makes (a relative path then replaced a file zoracle did not write)
        checkpoint = os.path.abspath(checkpoint)
        _check_overwrite(checkpoint, resume)
        if callable(getattr(oracle, "state_arrays", None)):  # a state a checkpoint cannot hold fails now
            for k, v in oracle.state_arrays().items():
                a = np.asarray(to_numpy(v))
                if a.dtype.hasobject or a.dtype.kind not in "biuf":
                    raise ArgumentError(f"the oracle's state {k!r} has dtype {a.dtype}: a checkpoint holds numeric "
                                        "arrays only (bool, int, float); convert it, or train without `checkpoint`")
    if isinstance(plot, (bool, np.bool_)):  # plot=True as a switch (a notebook's inline figure): named, with the way
        raise ArgumentError(f"`plot` is the file the figure is written to (e.g. plot='run.png'), not a switch: got "
                            f"{plot!r}; leave it out for no file, and show the figure in a notebook by ending a cell "
                            "with result.plot()")
    if plot is not None:
        from ._plot import check_plot_path

        plot = os.path.abspath(check_plot_path(plot)[0])  # "~" expanded, and absolute, as the checkpoint's
        if epochs == 0 and resume is None:
            raise ArgumentError("`plot` was given with epochs=0: a run without steps has nothing to draw; train at "
                                "least one epoch, or drop `plot`")
        if checkpoint is not None and os.path.abspath(plot) == os.path.abspath(checkpoint):
            raise ArgumentError(f"`plot` and `checkpoint` are the same file {plot!r}: the figure would "
                                "replace the checkpoint; give the figure its own path (e.g. run.png)")
    per_epoch = _steps_per_epoch(batches, steps_per_epoch)
    total = None if per_epoch is None else epochs * per_epoch
    if checkpoint is not None and not callbacks:  # (a callback may stop the run: epochs=10**6 as a bound)
        warn_rewrites(cadence, checkpoint_every, total, per_epoch, max_queries, least_step_queries(estimator, d, sparse))
    lr_of = lr_sched if lr_sched is not None else as_schedule(optimizer.lr, "lr")
    lr_name = "schedule" if lr_sched is not None else "lr"  # the argument its values come from
    prints = {"lr": fingerprint(lr_of, lr_name, total),
              "mu": fingerprint(mu_sched, "mu", total, positive=True) if mu_sched is not None else None}
    extremes = _check_every_step(lr_of, lr_name, mu_sched, total,
                                 may_stop=max_queries is not None or bool(callbacks), prints=prints, resume=resume)
    # the steps as the oracle takes them: a float32 model given float64 params (compute_dtype) is
    # estimated at params rounded to float32, where a smaller mu rounds to no step at all
    if mu_sched is None:  # a step not representable at the initial params fails now
        check_step(as_seen(oracle, params), estimator.mu, estimator.scheme, type(estimator).__name__)
    else:  # the schedule's smallest and largest steps, of every step checked (or the first ones)
        extremes.update(zip(prints["mu"]["steps"], prints["mu"]["values"]))
        for t in sorted({min(extremes, key=extremes.get), max(extremes, key=extremes.get)} if extremes else ()):
            try:
                check_step(as_seen(oracle, params), extremes[t], estimator.scheme, type(estimator).__name__)
            except StepError as exc:
                raise StepError(f"{exc} (the `mu` schedule's value at step {t}: `mu` sets the steps' mu)") from None
    reuse_freed_memory()  # every step frees and re-allocates the same temporaries (glibc: keep them)
    scale0 = float(xp.max(xp.abs(params)))  # the initial scale: a run that leaves it far behind diverged
    tiny = None
    if isinstance(estimator, CGE):
        # (the first mu once: a schedule is called once here, where the run's length left no values checked)
        mu0 = (None if extremes else estimator.mu if mu_sched is None
               else schedule_value(mu_sched, 0, "mu", positive=True))
        declared = compute_dtype_of(oracle)
        _warn_huge_mu(max(extremes.values()) if extremes else mu0, scale0)
        tiny = (min(extremes.values()) if extremes else mu0, scale0,
                declared or np.dtype(params.dtype),  # (a plain callable: its params' float)
                declared is None and np.dtype(params.dtype) == np.float32)
        tiny = tiny if _warn_tiny_mu(*tiny) else None  # (one whose loss is judged at the first step's)

    all_blocks = _resolve_blocks(oracle, blocks, d) if sparse else []  # a dense run reads no layout
    scored, dense = split_blocks(all_blocks, score_kinds) if sparse else ([], [])
    if sparse:
        covered = _check_layout(scored + dense, d)
        gaps = np.flatnonzero(~covered)
        if gaps.size:  # parameters in no block are estimated densely
            splits = np.flatnonzero(np.diff(gaps) > 1) + 1
            dense += [slice(int(g[0]), int(g[-1]) + 1) for g in np.split(gaps, splits)]
        if not scored:
            raise ArgumentError(f"`sparsity` is set but no block has a kind in `score_kinds` {tuple(score_kinds)}")
        n_scored = sum(s.stop - s.start for s in scored)
        # every ratio method keeps round((1 - sparsity) * n) in all (ZO-GraSP would spend its queries first)
        if isinstance(ratios, str) and not dense and round((1 - sparsity) * n_scored) == 0:
            raise ArgumentError(
                f"`sparsity`={sparsity!r} keeps round((1 - sparsity) * {n_scored}) = 0 of the {n_scored} scored weights "
                "and no dense block is given: the mask would be empty; lower `sparsity` "
                f"below {1 - 0.5 / n_scored:.6g}")

    config = {
        "d": d,
        "dtype": str(params.dtype),
        "estimator": repr(estimator),
        "optimizer": optimizer.config,
        "schedule": describe_schedule(schedule) if schedule is not None else None,
        "mu": describe_schedule(mu) if mu is not None else None,
        "sparsity": None if not sparse else float(sparsity),
        "mask_shuffle_interval": mask_shuffle_interval if sparse else None,
        "blocks": [[s.start, s.stop] for s in scored] if sparse else None,
        "dense": sorted([s.start, s.stop] for s in dense) if sparse else None,
        "steps_per_epoch": steps_per_epoch,
        "batches": _batches_print(batches, steps_per_epoch),  # another batch size or seed continued silently
        "layout": _layout_print(oracle),  # the same vector in other tensors, silently
        # how the keep ratios were chosen (their values are in the checkpoint: ZO-GraSP's cannot be
        # recomputed without its queries); an array's values are compared after loading
        "ratios": None if not sparse else "array" if not isinstance(ratios, str) else (
            {"method": ratios, "fill_small_blocks": fill_small_blocks, "ranking": ranking,
             "grasp_directions": grasp_directions} if ratios == "zo_grasp" else {"method": ratios}),
    }
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        config["seed"] = int(rng)

    modes_of = getattr(oracle, "run_modes", None)  # a model's train/eval modes (TorchOracle): resumed otherwise, warned
    modes = _short_hash(modes_of()) if callable(modes_of) else None
    state = optimizer.init(params)
    count = getattr(state, "count", None)  # a tuple's own .count is a method: not a field
    if not hasattr(state, "_asdict") or _count_of(state) is None:
        raise ArgumentError(f"`optimizer` {optimizer.name!r}: init(params) must return a NamedTuple state with an int "
                            f"field `count` (its updates so far: 0 at init, one more after each update; train reads it "
                            f"for the learning rate and checkpoints it), got {type(state).__name__} with count "
                            f"{count!r}")
    if checkpoint is not None or resume is not None:  # saved as numeric arrays, read back in init's shapes
        for k, v in state._asdict().items():
            try:  # (a tuple of arrays of different lengths: NumPy's ValueError; NumPy < 1.24 made an
                # object array, refused below, with a VisibleDeprecationWarning of its own)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", getattr(np, "exceptions", np).VisibleDeprecationWarning)
                    a = np.asarray(to_numpy(v)) if k != "count" else np.zeros(())
            except (ValueError, TypeError):
                a = np.empty((), dtype=object)
            if a.dtype.hasobject or a.dtype.kind not in "biuf":
                raise ArgumentError(f"`optimizer` {optimizer.name!r}: its state's field {k!r} is {v!r} at init: a "
                                    f"checkpoint holds numeric arrays only, and a resume reads each field in the "
                                    f"shape and dtype init(params) gives it; start it as a number or an array "
                                    f"(np.nan, np.zeros(...))")
    # the shapes and dtypes a resume reads the state in (init's, and the oracle's own state now):
    # a field that drifts from them (0 at init, a float later) made a checkpoint no resume could read
    layout = None
    if checkpoint is not None:
        own = oracle.state_arrays() if callable(getattr(oracle, "state_arrays", None)) else {}
        layout = {k: (np.shape(v), np.asarray(v).dtype)
                  for k, v in {**_state_arrays(state), **{f"oracle/{k}": to_numpy(v) for k, v in own.items()}}.items()}
    est_state = estimator.init(params) if snes else None
    steps_hist, epoch_hist = [], []
    resumed_metrics = 0  # the records read back from a checkpoint, their metrics in name order (see below)
    step = epoch = pos = 0
    nfev = 0
    keep = None
    # the run's fast paths checked against the plain call (zoracle._fastcheck): once a run, whatever it
    # binds; ``checked`` as of the last step taken, which a checkpoint keeps (a resume checks none again)
    verdicts: dict = {}
    checked: dict = {}
    if resume is not None:
        got = read_resume(resume, config=config, fingerprints=prints, params=params, state=state, sparse=sparse,
                          n_scored=len(scored), oracle=oracle, steps_per_epoch=per_epoch, estimator_state=est_state,
                          legacy_batches=_batches_print(batches, steps_per_epoch, dict_rows=False))
        params = xp.asarray(got["params"])
        state = _restore_state(state, got["opt"], got["opt_count"], xp)
        root, step, epoch, pos, nfev = got["root"], got["step"], got["epoch"], got["pos"], got["nfev"]
        verdicts, checked = dict(got["fast_paths"]), dict(got["fast_paths"])
        if got["seed"] is not None and "seed" not in config:  # rng=None resumes the seeded run: it stays seeded
            config["seed"] = got["seed"]
        # a checkpoint stores each record with its keys sorted: put them back in the order a run
        # makes them, so the resumed history reads as the uninterrupted one's (pandas columns, prints)
        steps_hist = [_in_order(r, _STEP_KEYS) for r in got["steps"]]
        epoch_hist = [_in_order(r, _EPOCH_KEYS, last=("seconds",)) for r in got["epochs"]]
        resumed_metrics = len(epoch_hist)
        if got["modes"] is not None and modes is not None and got["modes"] != modes:
            warnings.warn("train: the oracle's model is in other train/eval modes (or update_stats) than in the run "
                          f"that wrote {os.fspath(resume)!r}: its losses from here on differ from that run's (BatchNorm "
                          "and dropout act otherwise); set the modes as they were to continue that run", UserWarning,
                          stacklevel=2)
        # every step already run, at its recorded lr and mu (SNES records its widths there)
        compare_history(resume, steps_hist, {"lr": (lr_of, lr_name),
                                             "mu": (None if snes else mu_sched, "mu")})
        keep = got["keep"]
        if sparse and not isinstance(ratios, str):
            given = np.asarray(ratios, dtype=np.float64).ravel()
            if given.shape != keep.shape or not np.array_equal(given, keep):
                raise CheckpointError(f"checkpoint {resume!r} was written with the keep ratios {keep.tolist()}, this run "
                                      f"has `ratios`={given.tolist()}; resume with the same settings, or delete the "
                                      "checkpoint to start over")
        if snes:
            try:
                est_state = _check_sigma(got["estimator"], d)
            except ArgumentError as exc:
                raise CheckpointError(f"checkpoint {resume!r}: array 'est/sigma' is not a valid SNES sigma ({exc}); "
                                      "delete it to start over, or resume from another checkpoint") from None
        extra = got["oracle"]
        if extra or callable(getattr(oracle, "load_state_arrays", None)):
            if not callable(getattr(oracle, "load_state_arrays", None)):
                raise CheckpointError(f"checkpoint {resume!r} holds oracle state but the oracle has no load_state_arrays()")
            oracle.load_state_arrays(extra)
        if epoch > epochs or (epoch == epochs and pos > 0):  # the loop would not run: the longer run would
            # come back as this one (``pos`` steps into epoch ``epoch``: that epoch has begun)
            ran = f"{epoch} epochs" + (f" and {pos} steps of the next" if pos else "")
            need = epoch + 1 if pos else epoch
            raise ArgumentError(f"`epochs`={epochs}, but checkpoint {resume!r} has already run {ran} "
                                f"({step} steps); pass epochs={need} (or more, to go on) to resume it, or "
                                "resume=False to start a run of this length")
        log.info("resumed from %s at epoch %d, step %d", resume, epoch, step)
    else:
        root = int(as_generator(rng).integers(2**63))
        params = params.copy()

    first = None
    returned: dict = {}  # the iterator a batches callable returned last (see _epoch_batches)
    if sparse and keep is None:
        if not isinstance(ratios, str):
            try:
                keep = np.array(ratios, dtype=np.float64).ravel()  # (a copy: result.ratios is not the caller's array)
            except (TypeError, ValueError):
                raise ArgumentError(f"`ratios` must be 'zo_grasp', 'smart', 'uniform', 'random' or one keep ratio "
                                    f"(a number in [0, 1]) per scored block, got {ratios!r}") from None
            if keep.shape != (len(scored),):
                raise ArgumentError(f"`ratios` must have one keep ratio per scored block ({len(scored)}), got shape {keep.shape}")
            kept, want = int(keep_counts(scored, keep).sum()), round((1 - sparsity) * n_scored)
            # the ratios' own count (before each block rounds it) against sparsity's: one block per
            # block's rounding let ratios keeping 6 of 20 pass for 4 (no block rounded anything)
            asked = float(keep @ np.array([s.stop - s.start for s in scored], dtype=np.float64))
            # (ratios written to 4 decimals, as apps/demo.py stores them, are off by up to 5e-5 of each block;
            # ratios written to more decimals by half of their last one: 1.5e-4 is no 4-decimal 1e-4, and at
            # a million weights 5e-5 of each block let it keep 150 where sparsity=0.9999 asks for 100)
            places = next((p for p in range(4, 8) if np.abs(np.round(keep, p) - keep).max() <= 1e-7), 8)
            if abs(asked - (1 - sparsity) * n_scored) > 0.5 + 0.5 * 10.0 ** -places * n_scored:  # `sparsity` ignored
                raise ArgumentError(
                    f"`ratios` keeps {kept} of the {n_scored} scored weights ({100 * kept / n_scored:.3g}%), but "
                    f"`sparsity`={sparsity!r} asks for {want} ({100 * (1 - sparsity):.3g}%): with an array the ratios "
                    f"decide; pass sparsity={1 - asked / n_scored:.12g} to match them, or ratios that keep "
                    f"{100 * (1 - sparsity):.3g}% of the scored weights")
        elif ratios == "zo_grasp" and round((1 - sparsity) * n_scored) >= n_scored:
            keep = np.ones(len(scored))  # every weight kept: ZO-GraSP's queries could change nothing
        elif round((1 - sparsity) * n_scored) == 0:  # (with dense blocks; without, refused above)
            keep = np.zeros(len(scored))  # nothing kept: ZO-GraSP's queries could change nothing either
            warnings.warn(f"train: `sparsity`={sparsity!r} keeps round((1 - sparsity) * {n_scored}) = 0 of the "
                          f"{n_scored} scored weights: only the dense blocks train; lower `sparsity` below "
                          f"{1 - 0.5 / n_scored:.6g} to train scored weights too", UserWarning, stacklevel=2)
        elif ratios == "uniform" or (ratios == "zo_grasp" and len(scored) == 1):
            keep = uniform_ratios(scored, sparsity)
        elif ratios == "smart":
            kinds = [getattr(b, "kind", None) or "conv" for b in all_blocks
                     if getattr(b, "kind", None) is None or b.kind in tuple(score_kinds)]
            keep = smart_ratio(scored, sparsity, kinds=kinds)
        elif ratios == "random":
            keep = random_ratios(scored, sparsity, rng=np.random.default_rng([root, 3]))
        elif epochs == 0 and checkpoint is None:
            pass  # no step to draw a mask for, and no checkpoint to keep the ratios for a resume: ZO-GraSP's queries would buy nothing
        else:
            gb = grasp_batch
            if gb is None and batches is not None:
                first = _epoch_batches(batches, 0, steps_per_epoch, returned)
                gb = first[0]
            if max_queries is not None and nfev + grasp_queries(grasp_directions) >= max_queries:
                raise ArgumentError(
                    f"`max_queries` is {max_queries}, but ZO-GraSP alone takes 2 * (grasp_directions + 1) = "
                    f"{grasp_queries(grasp_directions)} queries; raise `max_queries`, lower `grasp_directions`, "
                    f"or pass `ratios=\"uniform\"`")
            which = "`grasp_batch`" if grasp_batch is not None else "batches' epoch 0, batch 0"
            try:
                target = _bound(oracle, gb, "grasp_batch" if grasp_batch is not None else "batches", executor)
            except ZoracleError as exc:  # its type kept; the batch named (TorchOracle's says `batch`)
                if gb is not None and exc.args and isinstance(exc.args[0], str):
                    exc.args = (f"{exc.args[0]} (at bind(batch) of ZO-GraSP's batch, {which})", *exc.args[1:])
                raise
            except Exception as exc:  # as a training step's bind: TorchOracle's first bind runs the model
                raise OracleError(f"bind(batch) of ZO-GraSP's batch ({which})", cause=exc) from exc
            try:  # ZO-GraSP's own step: the estimator's mu (a `mu` schedule sets the steps' only)
                check_step(as_seen(oracle, params), estimator.mu, "forward", "ZO-GraSP's RGE")
            except StepError as exc:
                raise StepError(f"{exc}. ZO-GraSP scores with the estimator's mu, not `mu`: set it with "
                                f"estimator={type(estimator).__name__}(mu=...)") from None
            scores = zo_grasp(target, params, blocks=scored, mu=estimator.mu, directions=grasp_directions,
                              rng=np.random.default_rng([root, 2]), executor=executor)
            nfev += grasp_queries(grasp_directions)
            keep = layer_ratios(scores, scored, sparsity, ranking=ranking, fill_small=fill_small_blocks)
            log.info("ZO-GraSP keep ratios per block: %s", np.round(keep, 4).tolist())
            _warn_zero_blocks(params, scored, keep, all_blocks, filled=fill_small_blocks)
    masks = DynamicMasks(scored, keep, seed=root, interval=mask_shuffle_interval, dense=dense) if sparse and keep is not None else None

    steps_text, epochs_text = Records(steps_hist), Records(epoch_hist)  # each record encoded at its first save

    def last_mask():
        """The mask of the last step taken (of the next step, before any): what the checkpoint
        stores as the current mask and the result returns."""
        at = steps_hist[-1] if steps_hist else {"epoch": epoch, "step": step}
        return masks.coordinates(at["epoch"], step=at["step"])

    def save(last: bool = False):
        """Write the checkpoint; ``last``: the run's final save (a failure warns, the result is
        returned)."""
        if checkpoint is None or (last and warned_at[0] == step):  # its failure at this step was warned
            return
        arrays = {"params": to_numpy(params), **_state_arrays(state)}
        if snes:
            arrays["est/sigma"] = est_state
        if callable(getattr(oracle, "state_arrays", None)):  # e.g. BatchNorm running statistics
            arrays.update({f"oracle/{k}": to_numpy(v) for k, v in oracle.state_arrays().items()})
        if sparse:
            arrays["ratios"] = keep
            arrays["coordinates"] = last_mask()
        for k, (shape, dtype) in layout.items():
            a = arrays.get(k)
            if a is not None and np.shape(a) == shape and np.asarray(a).dtype == dtype:
                continue
            got = "missing" if a is None else f"{np.asarray(a).dtype} of shape {np.shape(a)}"
            whose = (f"`optimizer` {optimizer.name!r}: its state's field {k[4:]!r}" if k.startswith("opt/") else
                     f"the oracle's state_arrays() entry {k[7:]!r}")
            err = ArgumentError(
                f"{whose} is {got} at step {step}, where the run started it as {dtype} of shape {shape}: a resume "
                f"reads it in the shape and dtype it had at the start, so this checkpoint could not be resumed; "
                f"start it as it stays (0.0 rather than 0, np.zeros(...) of the final shape)")
            if not last:
                raise err
            warnings.warn(f"train: {err}; no checkpoint written at the end, the result is returned", UserWarning,
                          stacklevel=3)
            return
        meta = {"config": config, "root": str(root), "step": step, "epoch": epoch, "pos": pos, "nfev": nfev,
                "opt_count": int(state.count), "history": {"steps": steps_text, "epochs": epochs_text},
                "fingerprints": prints, "modes": modes}
        if checked:  # (absent where no fast path was checked: a reader before the field reads the file)
            meta["fast_paths"] = dict(checked)
        with writer_lock(checkpoint):  # the check, the save and its stamp: one step for other writers
            if _stamp() not in (None, written[0]):  # not the file this run wrote last (or found at its start)
                since = (f"this run saved (or resumed from) step {saved[0]}" if saved[0] is not None else
                         "this run started (before its first save)")
                err = CheckpointError(
                    f"the checkpoint {os.fspath(checkpoint)!r} was rewritten by another writer since {since}: two runs "
                    "given the same checkpoint path overwrite each other's saves, and a resume continues whichever saved "
                    "last; give each run its own checkpoint path")
                if not last:
                    raise err
                warnings.warn(f"train: {err}; the file is left as it is and the result is returned", UserWarning,
                              stacklevel=3)
                warned_at[0] = step  # not again at the end
                return
            try:
                save_checkpoint(checkpoint, arrays, meta)
            except OSError as exc:  # a full disk, a folder removed: which file, and what is still there
                if saved[0] is None:
                    held = "no checkpoint of this run was written before"
                elif _stamp() is None:  # deleted meanwhile (to free space): resume=True would start over
                    held = (f"the checkpoint of step {saved[0]} is no longer there (deleted since), so resume=True "
                            "would start the run over")
                else:
                    held = f"the checkpoint there still holds step {saved[0]} (resume=True continues from it)"
                err = CheckpointError(f"the checkpoint {os.fspath(checkpoint)!r} could not be written at step {step} "
                                      f"({type(exc).__name__}: {exc}); {held}; {save_fix(exc)}")
                if not last:
                    raise err from exc
                warnings.warn(f"train: {err}; the result is returned", UserWarning, stacklevel=3)
                warned_at[0] = step  # not again at the end
                return
            saved[0] = step
            written[0] = _stamp()
            cadence.saved()
        if log.isEnabledFor(logging.INFO):  # a log shipper's heartbeat: checkpoint_every="10min" gives one that often
            fields = {"path": os.fspath(checkpoint), "steps": int(step), "total_nfev": int(nfev),
                      "loss": steps_hist[-1]["loss"] if steps_hist else None}
            with _beside(bar, progress, clear_now=True):
                log.info("checkpoint %s saved after %d steps, %d queries", fields["path"], step, nfev,
                         extra={"zoracle_event": "checkpoint", "zoracle": fields})

    def _stamp():
        """What identifies the file at ``checkpoint`` as one save's (each save is a new file, renamed
        into place); None when there is none."""
        try:
            st = os.stat(checkpoint)
        except OSError:
            return None
        return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size

    # the step the file at `checkpoint` holds (resumed from that file: the step it held)
    same_file = resume is not None and checkpoint is not None and \
        os.path.realpath(os.fspath(resume)) == os.path.realpath(os.fspath(checkpoint))
    saved = [got["step"] if same_file else None]
    # the file this run wrote last (or resumed from, or found at its start: an earlier run's, overwritten
    # with a warning, or None): a file another run wrote before this run's first save is not overwritten
    written = [_stamp() if checkpoint is not None else None]
    warned_at = [None]  # the step whose final save failed (warned once)

    from tqdm.auto import tqdm

    batches_of = {}

    def epoch_batches(e):
        nonlocal first
        if e not in batches_of:
            batches_of.clear()  # (the caller drops its own reference first: one epoch's copy at a time)
            if e != 0:
                first = None  # epoch 0's batches, kept for ZO-GraSP and the first epoch: no longer needed
            batches_of[e] = first if (e == 0 and first is not None) else _epoch_batches(batches, e, steps_per_epoch, returned)
        return batches_of[e]

    total_steps = None if batches is not None and steps_per_epoch is None and not hasattr(batches, "__len__") else (
        epochs * (steps_per_epoch or (len(batches) if batches is not None else 1)))
    progress = progress and sys.stderr is not None  # no stderr (pythonw, `2>&-`): no bar to draw, not a crash
    lines = progress and not _redraws(sys.stderr)  # a log file: a line every _LINE_SECONDS, not ten redraws a second
    from tqdm.std import tqdm as text_tqdm
    text = getattr(tqdm, "display", None) is text_tqdm.display  # (not a notebook's widget bar)
    lines = lines and text
    tqdm_lock = _tqdm_lock() if progress else None
    try:
        bar = _NoBar() if not progress else _steady_bar(_line_bar(tqdm) if lines else tqdm)(
            total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
            **(dict(file=_BarStream(_unwrapped(sys.stderr, every=True))) if progress and text else {}),
            leave=False, **(dict(mininterval=_LINE_SECONDS, maxinterval=2 * _LINE_SECONDS) if lines else {}))
    except (OSError, ValueError) as exc:  # tqdm flushes sys.stdout and sys.stderr itself, unwrapped (its stream
        if not progress:  # equals sys.stderr): output pending to a pipe whose reader has gone (`2>&1 | head`)
            raise
        log.warning("train: the progress bar is off: its stream failed (%s: %s)", type(exc).__name__, exc)
        progress = False
        bar = _NoBar()
    stopped = max_queries is not None and nfev >= max_queries  # a resumed run already at its budget
    first_count, count_warned = _count_of(state), False  # (the optimizer's count at this run's first update)
    coords = None
    cb_warned = set()
    flat_warned = False  # an epoch whose every estimate was exactly 0 (a plateau): said once
    # a dense CGE run's blocks whose estimates stay 0 (dead ReLUs, an unused layer), and params that
    # stay where they start (updates below their float spacing): read over the run's first steps only
    named = named_blocks(oracle, d) if isinstance(estimator, CGE) and not sparse else []
    block_watch = BlockWatch(named) if named else None
    still_watch = StillWatch(max((float(r["lr"]) for r in steps_hist), default=0.0))
    t_rate, n_rate = time.perf_counter(), 0
    step_began, first_step = None, step  # the step in flight (None between steps); this run's first step
    # a mid-step error saves the steps before it only where the step cannot have changed the oracle's
    # saved state yet (a TorchOracle's plain call updates BatchNorm's running statistics in train mode)
    save_mid_step = checkpoint is not None and not (callable(getattr(oracle, "state_arrays", None))
                                                    and getattr(oracle, "plain_call_updates_state", True))
    try:
        while epoch < epochs:
            if stopped and pos == 0:  # stopped at an epoch's end: the next epoch's batches are not drawn
                break
            blist = None  # the last epoch's batches go before this one's are drawn
            blist = epoch_batches(epoch)
            if pos > len(blist):
                raise CheckpointError(f"checkpoint {resume!r}: header field 'pos' is {pos}, but epoch {epoch} has "
                                      f"only {len(blist)} batches; resume with the same batches or start over")
            if stopped and pos < len(blist):  # a resumed run at its budget mid-epoch: no step to take
                break
            # (a resumed run at its budget with pos at the epoch's end still finishes that epoch: its
            # end was saved before eval_fn and the callbacks ran, and one of them was interrupted)
            if sparse and not masks.per_step:
                coords = masks.coordinates(epoch)
            ran = flat = 0  # this epoch's steps, and those whose estimate was exactly 0
            while pos < len(blist):
                if sparse and masks.per_step:  # drawn once per step, where the step runs
                    coords = masks.coordinates(epoch, step=step)
                t0 = time.perf_counter()
                step_began = step
                est = estimator if mu_sched is None else dataclasses.replace(
                    estimator, mu=schedule_value(mu_sched, step, "mu", positive=True))
                try:
                    bound = _bound(oracle, blist[pos], executor=executor)
                except ZoracleError as exc:  # its type kept; which batch of `batches` added (steps were spent)
                    if blist[pos] is not None and exc.args and isinstance(exc.args[0], str):
                        exc.args = (f"{exc.args[0]} (at bind(batch) of training step {step}, epoch {epoch}, "
                                    f"batch {pos})", *exc.args[1:])
                    raise
                except Exception as exc:  # the oracle's bind(batch) (TorchOracle's first one runs the model)
                    raise OracleError(f"bind(batch) of training step {step} (epoch {epoch}, batch {pos})",
                                      cause=exc) from exc
                step_rng = np.random.default_rng([root, 1, step]) if isinstance(est, (RGE, SNES)) else None
                try:
                    with checking(bound, verdicts):
                        g = estimate_gradient(bound, params, est, coordinates=coords, rng=step_rng, executor=executor,
                                              state=est_state)
                except OracleError as exc:  # which training step, added to the query (its shard and worker kept)
                    raise exc.located(f"{exc.query} of training step {step} (epoch {epoch}, batch {pos})")
                except ShardFailed as exc:  # a shard that timed out or failed twice: which step, too
                    if exc.args and isinstance(exc.args[0], str):
                        exc.args = (f"{exc.args[0]} (at training step {step}, epoch {epoch}, batch {pos})", *exc.args[1:])
                    raise
                except StepError as exc:
                    scale = float(xp.max(xp.abs(params)))
                    if step == 0 or not scale > 100 * max(1.0, scale0):
                        raise  # a step this mu does not make at parameters of the run's own scale
                    # training moved the params where mu is no step: they grew by orders of magnitude
                    last = f" (lr was {steps_hist[-1]['lr']:g})" if steps_hist else ""
                    step_began = None  # (diverged params: no save over the last scheduled one, which holds sane ones)
                    raise ArgumentError(
                        f"training diverged at step {step} (epoch {epoch}): max|params| grew to "
                        f"{scale:.3g} (from {scale0:.3g}), where mu = {est.mu:g} is no longer a representable step; "
                        f"lower the learning rate{last}{noise_note(bound, params)}") from exc
                step_began = None
                if tiny:  # a float32 loss or a wider one: the base loss measured says which
                    tiny = _warn_tiny_mu(*tiny, loss=g.loss)
                lr = schedule_value(lr_of, step if lr_sched is not None else int(state.count),
                                    lr_name)
                prev = params  # (the step's base point: a diverged run's message probes the loss there)
                try:
                    before = int(state.count)
                    params, state = optimizer.update(g.grad, state, params, lr=lr)
                except ArgumentError as exc:  # the optimizer's own check: train names the step, not update()
                    if bool(xp.isfinite(g.grad).all()):
                        raise
                    fix = (f"lower the learning rate (lr was {steps_hist[-1]['lr']:g}) or scale the loss down"
                           if steps_hist else "scale the loss down" + (  # (no step taken yet)
                               ", or pass float64 params" if g.grad.dtype != np.float64 else ""))
                    raise ArgumentError(
                        f"training diverged at step {step} (epoch {epoch}): the gradient estimate is non-finite "
                        f"(the losses' differences over mu = {est.mu:g} overflow {g.grad.dtype}); {fix}"
                        f"{noise_note(bound, prev)}") from exc
                if not (getattr(params, "shape", None) == (d,) and getattr(params, "dtype", None) == dtype0
                        and namespace(params) is xp):
                    # an own optimizer's params in another dtype (np.clip against float64 bounds turned a float32
                    # run into float64, its checkpoint then refused) or shape ((d, 1): an error naming `params`)
                    got = (f"{type(params).__name__} of dtype {params.dtype} and shape {tuple(params.shape)}"
                           if hasattr(params, "dtype") and hasattr(params, "shape") else type(params).__name__)
                    raise ArgumentError(
                        f"`optimizer` {optimizer.name!r}: update() returned params as a {got} at step {step}, "
                        f"where it was given a {type(params0).__name__} of dtype {dtype0} and shape ({d},): train "
                        f"keeps the params as given (a checkpoint of others cannot be resumed); return them so, "
                        f"e.g. new.astype(params.dtype).reshape(params.shape)")
                count = getattr(state, "count", None)
                if _count_of(state) != before + 1 and not count_warned:
                    text = (f"`optimizer` {optimizer.name!r}: update() must return a state whose `count` is one more "
                            f"than the state it was given ({before} + 1), got {count!r}: train reads it for the "
                            f"learning rate (a schedule would stay at one step) and checkpoints it")
                    if before == first_count:  # its first update: refused, nothing much spent
                        raise ArgumentError(text)
                    # later (an update that skipped a step, say): the run's work is kept, the user told once
                    warnings.warn(f"train: {text}; from step {step} on, the optimizer's own schedule lags the steps"
                                  + (" and this run's checkpoint cannot be resumed" if checkpoint is not None else ""),
                                  UserWarning, stacklevel=2)
                    count_warned = True
                if not bool(xp.isfinite(params).all()):
                    raise ArgumentError(
                        f"training diverged at step {step} (epoch {epoch}): params became non-finite; "
                        f"lower the learning rate (lr was {lr:g}){noise_note(bound, prev)}"
                    )
                nfev += g.nfev
                ran += 1
                if block_watch is not None:
                    block_watch.see(g.grad)
                    block_watch = None if block_watch.done else block_watch
                if still_watch is not None:
                    still_watch.see(g.grad, lr, epoch, prev, params)
                prev = None  # (not kept into the next step: one d-sized array more at its peak)
                if flat == ran - 1 and not flat_warned:  # (read until an estimate moves: an O(d) pass, a GPU sync)
                    flat += not bool(xp.any(g.grad))
                width = float(est.mu)
                if snes:  # the widths this step sampled with, before its update
                    width = float(np.mean(est_state))
                    est_state = g.state
                rec = {"step": step, "epoch": epoch, "loss": _json_number(g.loss), "lr": lr, "mu": width,
                       "nfev": int(g.nfev), "total_nfev": int(nfev), "seconds": time.perf_counter() - t0}
                steps_hist.append(rec)
                checked = dict(verdicts)
                step += 1
                pos += 1
                n_rate += g.nfev
                now = time.perf_counter()
                if progress:
                    bar.set_postfix(loss=f"{g.loss:.4g}", lr=f"{lr:.3g}", qps=_rate_text(n_rate / max(now - t_rate, 1e-9)),
                                    refresh=False)
                    bar.update(1)
                elif log.isEnabledFor(logging.DEBUG):  # (a copy: the history's own record stays as it is)
                    log.debug("step %d epoch %d loss %.6g lr %.4g nfev %d", step, epoch, g.loss, lr, g.nfev,
                              extra={"zoracle_event": "step", "zoracle": dict(rec)})
                try:
                    with _beside(bar, progress and bool(callbacks)):
                        for cb in callbacks:  # (copies: a callback rounding or popping a field changed the history)
                            if _stops(_called(cb, "step", dict(rec), params.copy()), cb, cb_warned):
                                stopped = True
                except BaseException:
                    # a step callback that raises (or Ctrl-C in one) loses no step: this one is saved
                    # first (on an epoch's last step or a checkpoint_every step the save came after)
                    if saved[0] != step:
                        try:
                            save()
                        except Exception:  # the callback's error is the one to see
                            pass
                    raise
                if max_queries is not None and nfev >= max_queries:
                    stopped = True
                if pos < len(blist) and not stopped and cadence.due(step):
                    save()
                if stopped:
                    break
            if pos >= len(blist) and ran and flat == ran and not flat_warned:
                flat_warned = True
                warnings.warn(f"train: every gradient estimate of epoch {epoch} ({ran} step{'s' * (ran > 1)}) was exactly 0, "
                              "so the estimates moved no parameter (weight decay and momentum aside): each step's "
                              f"queries at +-mu = {est.mu:g} returned the same loss. Where the loss is flat there, "
                              "piecewise constant (an error rate or count, a simulator rounding to a grid) or on a "
                              "plateau, raise mu past its steps, or train on a smooth surrogate (a margin or "
                              "cross-entropy loss)", UserWarning, stacklevel=2)
            if pos >= len(blist) and block_watch is not None and block_watch.steps >= WATCH_STEPS:
                dead = block_watch.dead()
                if dead:
                    warnings.warn(dead_blocks_text(dead, block_watch.steps, est.mu), UserWarning, stacklevel=2)
                block_watch = None
            if pos >= len(blist) and still_watch is not None and (still := still_watch.verdict(params)) is not None:
                if still:
                    warnings.warn(still_text(still_watch.epoch, epoch, still_watch.lr, params), UserWarning,
                                  stacklevel=2)
                still_watch = None
            if pos >= len(blist):
                # the epoch's steps are safe before eval_fn or a callback can fail; the run's last
                # save when it is the last epoch, or a budget or callback stopped it here. An int or
                # time checkpoint_every saves here only when due (one-step epochs saved every step)
                if cadence.due(step, epoch_end=True) or stopped or epoch + 1 == epochs:
                    save(last=stopped or epoch + 1 == epochs)
                t0 = time.perf_counter()
                k = len(steps_hist)  # the epoch's records are the history's tail: not a scan of the whole run
                while k and steps_hist[k - 1]["epoch"] == epoch:
                    k -= 1
                mine = steps_hist[k:]
                losses = [float(r["loss"]) for r in mine]
                erec = {"epoch": epoch, "loss": _json_number(finite_mean(losses)) if losses else None,
                        "lr": mine[-1]["lr"] if mine else None, "nfev": int(sum(r["nfev"] for r in mine)),
                        "total_nfev": int(nfev)}
                if eval_fn is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
                    with _beside(bar, progress):  # a print in eval_fn starts its own line
                        try:
                            value = eval_fn(params.copy())
                        except StopIteration as exc:  # escaping train bare, it would end a caller's loop silently
                            raise ArgumentError(
                                f"`eval_fn` raised StopIteration at epoch {epoch} (a next() on a used-up iterator?): "
                                "it must return a number or a dict of numbers; to stop the run early, return True "
                                "or raise StopIteration from a callback in `callbacks`") from exc
                    try:
                        erec.update(_metrics(value, epoch))
                    except ArgumentError as exc:  # found only now: the run's work is returned, not lost
                        then = ("fix `eval_fn` and resume from the checkpoint to evaluate it and go on"
                                if checkpoint is not None else "fix `eval_fn` (pass checkpoint= to resume a run "
                                "after such a failure)")
                        warnings.warn(f"train: {exc}. The run stops here and returns its result, without this "
                                      f"epoch's record; {then}", UserWarning, stacklevel=2)
                        stopped = True
                        break
                erec["seconds"] = float(sum(r["seconds"] for r in mine) + time.perf_counter() - t0)
                epoch_hist.append(erec)
                if resumed_metrics and set(erec) - set(_EPOCH_KEYS) - {"seconds"}:
                    # the checkpoint kept eval_fn's metrics in name order: the records read back from it
                    # take this run's order (eval_fn's), as the uninterrupted run has them
                    order = [k for k in erec if k not in _EPOCH_KEYS and k != "seconds"]
                    epoch_hist[:resumed_metrics] = [_in_order(r, (*_EPOCH_KEYS, *order), last=("seconds",))
                                                    for r in epoch_hist[:resumed_metrics]]
                    resumed_metrics = 0
                shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in erec.items())
                with _beside(bar, progress and log.isEnabledFor(logging.INFO), clear_now=True):
                    log.info("epoch %d/%d: %s", epoch + 1, epochs, shown,
                             extra={"zoracle_event": "epoch", "zoracle": dict(erec)})
                if progress:
                    bar.set_description(f"epoch {epoch + 1}/{epochs}", refresh=False)
                with _beside(bar, progress and bool(callbacks)):
                    for cb in callbacks:
                        if _stops(_called(cb, "epoch", dict(erec), params.copy()), cb, cb_warned):
                            stopped = True
                epoch += 1
                pos = 0
    except BaseException:
        # an error (or SIGTERM turned into SystemExit, or Ctrl-C) inside a step's bind or estimate: the
        # params and optimizer state are still those of the steps before it, which are saved first (with
        # checkpoint_every="epoch", a slow oracle's kill lost up to an epoch); the step in flight is lost
        if save_mid_step and step_began == step and saved[0] != step and step > first_step:
            try:
                save()
            except Exception:  # the error that stopped the run is the one to see
                pass
            else:  # (SystemExit, a SIGTERM handler's, shows no traceback: this line says what is kept)
                with contextlib.suppress(Exception):  # the line starts its own line, not the bar's
                    bar.clear()
                log.warning("train: stopped inside step %d (%s); the checkpoint %r holds the %d steps before it: "
                            "resume=True continues there", step, type(sys.exc_info()[1]).__name__,
                            os.fspath(checkpoint), step)
        raise
    finally:
        bar_pos = abs(getattr(bar, "pos", 0) or 0)  # (0 but for a run beside others, in threads)
        bar.close()
        if bar_pos and getattr(type(bar), "display", None) is text_tqdm.display:
            with type(bar).get_lock():  # tqdm clears a bar below the first and leaves the cursor at the end of
                bar.fp.write("\r")  # its blank line: the next print began 100 columns in
        _tqdm_unlock(tqdm_lock)
    if checkpoint is not None:
        save(last=True)  # the run is done: a failure must not lose its result
    if sparse and coords is None and steps_hist:
        coords = last_mask()  # a resume with no step left ran none: the mask the run that made it returned
    if has_methods(oracle, "load", "initial_params") and getattr(oracle, "param_info", None) is not None:
        # an oracle over a model it holds (TorchOracle): its queries left the model at the last
        # perturbed point; it holds the trained parameters now (torch.save(model.state_dict()) saves them)
        try:
            oracle.load(params)
        except Exception as exc:  # a late failure must not lose the result
            warnings.warn(f"train: the oracle could not load the trained parameters into its model ({type(exc).__name__}: "
                          f"{exc}); the result is returned: load them with oracle.load(result.params)", UserWarning,
                          stacklevel=2)
    history = History(tuple(steps_hist), tuple(epoch_hist))
    if plot is not None:
        try:
            history.plot(plot)
        except Exception as exc:  # checked before the first query; a late failure must not lose the result
            warnings.warn(f"train: the plot {os.fspath(plot)!r} could not be written ({type(exc).__name__}: {exc}); "
                          "the result is returned: draw it again with result.plot(path)", UserWarning, stacklevel=2)
    return TrainResult(
        params=params,
        history=history,
        nfev=int(nfev),
        steps=int(step),
        epochs=int(epoch),
        seconds=time.perf_counter() - t_start,
        ratios=keep,
        coordinates=coords,
        optimizer_state=state,
        stopped=stopped and epoch < epochs,  # early: a budget or callback that ends the last step ends nothing
        estimator_state=est_state,
    )
