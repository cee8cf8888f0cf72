"""``zoracle.train``: the DeepZero training loop (sparse CGE + dynamic masks + any optimizer).

Every random choice is a pure function of one root seed and a counter: RGE directions of
step ``t`` come from ``(root, t)``, the masks of epoch ``e`` from ``(root, e // interval)``
and :class:`Minibatches` orders epoch ``e`` from ``(seed, e)``. A checkpoint therefore
only needs params, optimizer state, the root seed and the position ``(epoch, batch)`` to
make a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Callable, Literal, NoReturn, Sequence

from ._bounds import check_bounds
from ._cadence import least_step_queries, warn_rewrites
from ._diagnose import BlockWatch, StillWatch, named_blocks
from ._estimators import CGE, RUN_WARNED, as_generator
from ._foreign_args import TRAIN_HINTS, refuse_foreign, seal_signature
from ._masks import DynamicMasks
from ._optim import Optimizer
from ._pruning import SCORED_KINDS
from ._resume import read_resume
from ._run_end import close_bar, ended_above_once, finish_run, open_bar
from ._run_loop import RUNNING, Run, run_epochs, save, save_before_error
from ._run_save import Saver, last_mask
from ._run_setup import (check_callables, check_checkpoint, check_counts, check_plot, check_resume,
                         check_sparse_split, check_split_names, check_steps, check_tools, choose_keep,
                         init_state, resumed, run_config, split_layout)
from ._history import TrainResult
from ._epochs import _batches_print, _epoch_batches, _short_hash, _steps_per_epoch
from ._train_records import _count_of, callback_key

if TYPE_CHECKING:
    import datetime

    from ._schedules import FloatOrSchedule
    from .executors import Executor

__all__ = ["train"]


def train(oracle: Any, params: Any, *extra: NoReturn, batches: Any = None, epochs: int = 1,
          steps_per_epoch: int | None = None, estimator: Any = None,
          optimizer: Optimizer | None = None, schedule: FloatOrSchedule | None = None, mu: FloatOrSchedule | None = None,
          sparsity: float | None = None, ratios: Any = "zo_grasp", blocks: Any = None,
          score_kinds: Sequence[str] = SCORED_KINDS, ranking: str = "magnitude", fill_small_blocks: bool = False,
          grasp_directions: int = 192, grasp_batch: Any = None, mask_shuffle_interval: int | str = 5,
          executor: Executor | None = None, eval_fn: Callable[[Any], object] | None = None, eval_every: int = 1,
          callbacks: Sequence[Callable[[str, dict[str, Any], Any], object]] | Literal[False] | None = (),
          checkpoint: str | os.PathLike[str] | None = None,
          checkpoint_every: int | str | datetime.timedelta = "epoch",
          resume: str | os.PathLike[str] | bool | None = None, rng: Any = None,
          progress: bool = True, max_queries: int | None = None, plot: str | os.PathLike[str] | None = None,
          bounds: Any = None, **unknown: NoReturn) -> TrainResult:
    """Train ``params`` through a loss oracle with zeroth-order gradient estimates.

    Per step: bind the oracle to the step's batch (every query of the step sees it),
    estimate the gradient (sparse CGE over the epoch's mask when ``sparsity`` is set),
    apply ``optimizer``. This is DeepZero's loop when ``estimator=CGE()``,
    ``sparsity=0.9``, ``ratios="zo_grasp"``, ``optimizer=sgd(0.1, momentum=0.9,
    weight_decay=5e-4)`` with a cosine schedule. An argument it does not take (SciPy ``minimize``'s
    ``args``, ``callback``, ``constraints``, ``options``, ...) is refused naming its counterpart here
    (``*extra`` and ``**unknown`` only gather such arguments; docs/training.md, "Coming from SciPy").

    Parameters
    ----------
    oracle : callable or DataOracle
        A plain oracle (``batches=None``) or one with ``bind(batch)``.
    params : array
        Initial flat parameters (not modified).
    batches : list, callable or Minibatches, optional
        The batches of an epoch: a list (same order each epoch), or ``epoch -> batches``
        (:class:`Minibatches` shuffles by ``(seed, epoch)``). Must be replayable for resume
        (a shuffling DataLoader: one made for each epoch, its generator seeded by the epoch).
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
    callbacks : sequence of callable, None or False
        ``callback(event, record, params)`` with event ``"step"`` or ``"epoch"`` (``record``
        and ``params`` are copies: a callback may keep them, and writing into them cannot change the run
        or its history, so a box is kept by ``bounds``, other constraints by projecting in the optimizer's update); returning True (or NumPy's True), or raising StopIteration as SciPy's callbacks do, stops training; a value other than None or False is warned about.
        None or False (``callbacks=verbose and [printer]``) means none.
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
        saved and restored too. The checkpoint also keeps the one-off warnings the run gave (the
        run-end warning, estimates all 0, params that do not move, a coarse loss, ...): a resumed run
        does not give them again.
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
        run, against the history's, and at a fixed set of later steps as the last save found them,
        so a changed callable is caught too; one a callback lowers as the run goes resumes when
        rebuilt as it stood), every header field and every array's
        dtype, shape and values are checked against this run before anything is used.
    rng : Generator, int or None
        Root of every random choice (directions, masks, ZO-GraSP).
    progress : bool
        tqdm progress bar with loss, lr and queries/s (prints in ``eval_fn``, callbacks and a loss
        run in this process, and warnings, start a line of their own). On a stderr that is no terminal (a log file, a pipe) or a
        ``TERM=dumb`` one, the bar is a plain line every 10 seconds and one at the end; so it is in a pool's worker
        process (a sweep's task: ``multiprocessing``, ``concurrent.futures``, joblib, Dask), each line starting with
        ``[worker-name pid N]``. On a narrow terminal its
        graphic goes first, then the numbers, least needed first (from 40 columns the step and loss stay). Either way ``logging`` (logger
        ``zoracle``) gets a record at INFO per epoch and per checkpoint save; off, also one at
        DEBUG per step. Each carries its numbers as ``record.zoracle`` (a dict: the history's
        record, or a save's ``path``, ``steps``, ``total_nfev`` and ``loss``) and
        ``record.zoracle_event`` (``"epoch"``, ``"checkpoint"`` or ``"step"``). As a warning's,
        a record's ``pathname``, ``funcName`` and ``lineno`` name the line that called ``train``.
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
    bounds : tuple (lo, hi), list of (lo, hi) pairs or scipy.optimize.Bounds, optional
        A box every query of the run stays inside (hardware or a simulator that refuses settings
        out of range): ``(lo, hi)``, each a number, None (no bound) or an array of ``params``' shape,
        or SciPy's list of ``d`` pairs with None for no bound (for ``d = 2``, a list of tuples; a pair of
        lists that reads as two boxes is refused). The params are kept in the box shrunk by the estimator's step on the sides its
        queries step towards, ``[lo, hi - mu]`` for forward CGE and ``[lo + mu, hi - mu]`` for central
        (each update is clipped into it, as a projected optimizer's is; the shrunk box is rounded
        inwards in the dtype of the queries, the params' or an oracle's narrower ``compute_dtype``,
        so ``params + mu`` itself stays at or below ``hi``), so the run
        equals the plain estimate at projected params. A start outside ``[lo, hi]`` is refused naming
        ``params``; one inside but within ``mu`` of a side is moved in to the shrunk box before the
        first query. Needs ``estimator=CGE(...)``, ``RGE(..., distribution="sphere")`` (whose unit
        directions step by at most ``mu`` on each coordinate, either way: its params are kept in
        ``[lo + mu, hi - mu]``, forward or central) or ``RGE(..., distribution="rademacher")`` (+-1
        directions, exactly ``mu`` either way: the same box); Gaussian RGE's and SNES's directions leave
        any box. With ``sparsity`` and ``ratios="zo_grasp"``, ZO-GraSP estimates with Rademacher RGE from
        params clipped into ``[lo + mu, hi - mu]``, its second point clipped there too
        (:func:`zoracle.zo_grasp`, ``bounds``: GraSP with the step projected onto the box). A box narrower than ``mu`` (forward CGE)
        or ``2 * mu`` (central CGE, sphere or Rademacher RGE) on a coordinate is refused naming ``mu`` (a ``mu`` schedule's later
        values: before the first query in a run of known length, else at the step that takes one),
        and so is ``lo == hi`` (leave a fixed parameter out of ``params``). Part of the checkpoint's
        settings: a resume needs the same bounds.

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
    refuse_foreign(train, oracle, params, extra, unknown, TRAIN_HINTS)  # scipy's args=, callback=, constraints=, ...
    params, xp, d, params0, dtype0, epochs, steps_per_epoch, eval_every, max_queries = check_counts(
        oracle, params, batches, epochs, steps_per_epoch, eval_fn, eval_every, max_queries, rng)
    grasp_directions, score_kinds, mask_shuffle_interval = check_split_names(
        sparsity, ratios, score_kinds, ranking, grasp_directions, mask_shuffle_interval)
    checkpoint, estimator, snes, optimizer, lr_sched, mu_sched, cadence = check_tools(
        checkpoint, checkpoint_every, estimator, optimizer, schedule, mu)
    box = check_bounds(bounds, params, xp, estimator, mu_sched, oracle)
    callbacks = check_callables(callbacks, eval_fn)
    sparse, fill_small_blocks, progress = check_sparse_split(
        sparsity, ratios, blocks, score_kinds, ranking, fill_small_blocks, grasp_directions, mask_shuffle_interval,
        estimator, optimizer, progress)
    resume = check_resume(resume, checkpoint)
    checkpoint = check_checkpoint(oracle, checkpoint, resume)
    plot = check_plot(plot, epochs, resume, checkpoint)
    per_epoch = _steps_per_epoch(batches, steps_per_epoch)
    total = None if per_epoch is None else epochs * per_epoch
    lr_of, lr_name, prints, scale0, tiny = check_steps(oracle, params, xp, estimator, optimizer, lr_sched, mu_sched,
                                                       total, max_queries, callbacks, resume=resume, box=box)

    all_blocks, scored, dense, n_scored = split_layout(oracle, d, sparse, blocks, score_kinds, ratios, sparsity)

    config = run_config(oracle, params, d, batches, steps_per_epoch, estimator, optimizer, schedule, mu, sparse,
                        sparsity, ratios, fill_small_blocks, ranking, grasp_directions, mask_shuffle_interval,
                        scored, dense, rng)
    if box is not None:  # (only then: a run without bounds writes the checkpoints it wrote before bounds=)
        config["bounds"] = box.config()

    modes_of = getattr(oracle, "run_modes", None)  # a model's train/eval modes (TorchOracle): resumed otherwise, warned
    modes = _short_hash(modes_of()) if callable(modes_of) else None
    state, layout = init_state(oracle, params, optimizer, checkpoint, resume)
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
    # the one-off warnings the run gave (zoracle._run_loop.warned_keys): a checkpoint keeps them, so a resumed
    # run gives none of them again (a run resumed 20 times on preemptible machines said each 20 times)
    warned: set = set()
    if resume is not None:
        got = read_resume(resume, config=config, fingerprints=prints, params=params, state=state, sparse=sparse,
                          n_scored=len(scored), oracle=oracle, steps_per_epoch=per_epoch, estimator_state=est_state,
                          legacy_batches=_batches_print(batches, steps_per_epoch, dict_rows=False))
        (params, state, est_state, root, step, epoch, pos, nfev, verdicts, checked, steps_hist, epoch_hist,
         resumed_metrics, keep) = resumed(
            got, resume, oracle=oracle, d=d, xp=xp, state=state, est_state=est_state, config=config, modes=modes,
            lr_of=lr_of, lr_name=lr_name, mu_sched=mu_sched, snes=snes, sparse=sparse, ratios=ratios, epochs=epochs)
        warned = set(got["warned"])
    else:
        root = int(as_generator(rng).integers(2**63))
        params = params.copy()
    if checkpoint is not None and not callbacks:  # (a callback may stop the run: epochs=10**6 as a bound)
        warn_rewrites(cadence, checkpoint_every, total, per_epoch, max_queries,  # (a resumed run's saves from its step)
                      least_step_queries(estimator, d, sparse), start=step)

    first = None
    # the iterator a batches callable returned last, and whether a resume replays this run (see _epoch_batches)
    returned: dict = {"replayed": checkpoint is not None or resume is not None}
    if sparse and keep is None:
        keep, first, nfev = choose_keep(
            oracle, params, estimator, executor, ratios=ratios, sparsity=sparsity, scored=scored,
            all_blocks=all_blocks, n_scored=n_scored, score_kinds=score_kinds, ranking=ranking,
            fill_small_blocks=fill_small_blocks, grasp_directions=grasp_directions, grasp_batch=grasp_batch,
            batches=batches, steps_per_epoch=steps_per_epoch, returned=returned, root=root, epochs=epochs,
            checkpoint=checkpoint, max_queries=max_queries, nfev=nfev, box=box)
    masks = DynamicMasks(scored, keep, seed=root, interval=mask_shuffle_interval, dense=dense) if sparse and keep is not None else None

    # the step the file at `checkpoint` holds (resumed from that file: the step it held)
    same_file = resume is not None and checkpoint is not None and \
        os.path.realpath(os.fspath(resume)) == os.path.realpath(os.fspath(checkpoint))
    saver = Saver(checkpoint, oracle=oracle, optimizer=optimizer, snes=snes, sparse=sparse, masks=masks, keep=keep,
                  layout=layout, config=config, root=root, prints=prints, modes=modes, cadence=cadence,
                  steps_hist=steps_hist, epoch_hist=epoch_hist, saved=got["step"] if same_file else None)

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
    bar, progress, tqdm_lock = open_bar(progress, total_steps, step)
    stopped = max_queries is not None and nfev >= max_queries  # a resumed run already at its budget
    first_count, count_warned = _count_of(state), False  # (the optimizer's count at this run's first update)
    coords = None
    cb_warned: set = {id(cb) for i, cb in enumerate(callbacks or ()) if callback_key(i, cb) in warned}
    flat_warned = "flat" in warned  # an epoch whose every estimate was 0 (to its loss's rounding): said once
    # a dense CGE run's blocks whose estimates stay 0 (dead ReLUs, an unused layer), and params that
    # stay where they start (updates below their float spacing): read over the run's first steps only
    named = named_blocks(oracle, d) if isinstance(estimator, CGE) and not sparse else []
    block_watch = BlockWatch(named) if named else None
    still_watch = None if "still" in warned else StillWatch(max((float(r["lr"]) for r in steps_hist), default=0.0))
    t_rate, n_rate = time.perf_counter(), 0
    step_began, first_step = None, step  # the step in flight (None between steps); this run's first step
    # a mid-step error saves the steps before it only where the step cannot have changed the oracle's
    # saved state yet (a TorchOracle's plain call updates BatchNorm's running statistics in train mode)
    save_mid_step = checkpoint is not None and not (callable(getattr(oracle, "state_arrays", None))
                                                    and getattr(oracle, "plain_call_updates_state", True))
    # what the loop reads and changes (zoracle._run_loop): fixed over the run, then what its steps change
    run = Run(
        oracle=oracle, executor=executor, estimator=estimator, optimizer=optimizer, snes=snes, mu_sched=mu_sched,
        lr_sched=lr_sched, lr_of=lr_of, lr_name=lr_name, d=d, xp=xp, dtype0=dtype0, params0=params0, scale0=scale0,
        sparse=sparse, masks=masks, root=root, epochs=epochs, total=total, callbacks=callbacks, eval_fn=eval_fn,
        eval_every=eval_every, checkpoint=checkpoint, resume=resume, max_queries=max_queries, cadence=cadence,
        saver=saver, save_mid_step=save_mid_step, epoch_batches=epoch_batches, first_count=first_count,
        first_step=first_step, bar_steps=total_steps, box=box,
        bar=bar, block_watch=block_watch, cb_warned=cb_warned, checked=checked, coords=coords,
        count_warned=count_warned, epoch=epoch, epoch_hist=epoch_hist, est_state=est_state, flat_warned=flat_warned,
        n_rate=n_rate, nfev=nfev, params=params, pos=pos, progress=progress, resumed_metrics=resumed_metrics,
        state=state, step=step, step_began=step_began, steps_hist=steps_hist, still_watch=still_watch,
        stopped=stopped, t_rate=t_rate, tiny=tiny, verdicts=verdicts, warned=warned,
        est=None, ran=0, flat=0, held=None, prev=None, unclipped=None, between=False)
    # the run's own from here (run.params, ...): the first step's params and optimizer state replace these, as
    # the loop's locals were (kept here, the start's params and an adam's moments stayed alive through the run)
    params = state = est_state = None
    token = RUNNING.set(run)  # (zoracle.AskTell reads the run's params and records between its steps)
    given = RUN_WARNED.set(warned)  # (the coarse-loss warning of estimate_gradient records itself there)
    try:
        run_epochs(run)
    except BaseException:
        save_before_error(run)
        raise
    finally:
        RUN_WARNED.reset(given)
        RUNNING.reset(token)
        close_bar(run.bar, tqdm_lock)
    ended = ended_above_once(run.steps_hist, run.first_step, warned)  # (given below, kept by the last save)
    if checkpoint is not None:
        save(run, last=True)  # the run is done: a failure must not lose its result
    if sparse and run.coords is None and run.steps_hist:
        # a resume with no step left ran none: the mask the run that made it returned
        run.coords = last_mask(masks, run.steps_hist, run.epoch, run.step)
    return finish_run(oracle, run.params, run.state, run.est_state, run.steps_hist, run.epoch_hist, plot, keep,
                      run.coords, nfev=run.nfev, step=run.step, epoch=run.epoch, epochs=epochs, stopped=run.stopped,
                      t_start=t_start, ended=ended)


seal_signature(train)  # (its signature for help(); SciPy's fun=, x0= reach its refusal)
