"""``zoracle.train``'s arguments, checked and normalised before its first query, in the order
``train`` checks them (a refusal comes before any query; each warning points at the caller's line)."""

from __future__ import annotations

import inspect
import numbers
import os
import warnings

import numpy as np

from ._backend import namespace, to_numpy
from ._bar import log
from ._bounds import grasp_box
from ._cadence import save_cadence
from ._checkpoint import CheckpointError, as_path, check_writable
from ._epochs import _batches_print, _bound, _epoch_batches, _layout_print, _shown_ratios
from ._errors import (ArgumentError, OracleError, ZoracleError, check_flag, log_path, logging_kept_out, optimizer_hint,
                      user_stacklevel, warn)
from ._estimators import (CGE, SNES, StepError, _check_sigma, as_generator, as_seen, check_estimator, check_step,
                          validate_params)
from ._malloc import reuse_freed_memory
from ._masks import check_interval, keep_counts
from ._optim import Optimizer, sgd
from ._oracle import compute_dtype_of, reject_async
from ._pruning import (RANKINGS, SCORED_KINDS, _check_sparsity, check_score_kinds, grasp_queries, layer_ratios,
                       random_ratios, smart_ratio, split_blocks, uniform_ratios, zo_grasp)
from ._resume import compare_history
from ._schedules import _count, as_schedule, describe_schedule, fingerprints, schedule_value
from ._train_checks import (RATIO_METHODS, _check_arity, _check_batches, _check_every_step, _check_layout,
                            _check_overwrite, _check_size, _check_steps_per_epoch, _resolve_blocks, _warn_huge_mu,
                            _warn_sign_decay, _warn_tiny_mu, _warn_zero_blocks)
from ._train_records import _EPOCH_KEYS, _STEP_KEYS, _count_of, _in_order, _restore_state, _state_arrays

__all__ = ["check_counts", "check_split_names", "check_tools", "check_callables", "check_sparse_split",
           "check_resume", "check_checkpoint", "check_plot", "split_layout", "run_config", "init_state", "array_keep",
           "choose_keep", "grasp_scores", "resumed",
           "check_steps"]


def check_counts(oracle, params, batches, epochs, steps_per_epoch, eval_fn, eval_every, max_queries, rng):
    """The params, the counts and the batches, checked and normalised in ``train``'s order."""
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
        warn(f"train: `eval_every`={eval_every} has no effect without `eval_fn`: nothing is evaluated; pass "
             "eval_fn=params -> metric to evaluate every that many epochs, or drop eval_every",
             UserWarning, stacklevel=user_stacklevel())
    if max_queries is not None:
        max_queries = _count("max_queries", max_queries, 1)
    _check_batches(batches)
    _check_steps_per_epoch(batches, steps_per_epoch)
    as_generator(rng)  # checked on resume too, which takes its root from the checkpoint ("abc" passed there)
    return params, xp, d, params0, dtype0, epochs, steps_per_epoch, eval_every, max_queries


def check_split_names(sparsity, ratios, score_kinds, ranking, grasp_directions, mask_shuffle_interval):
    """The sparse split's settings, checked with or without ``sparsity``."""
    # the sparse split's settings are checked with or without `sparsity` (a typo must not pass
    # unseen until sparsity is turned on)
    grasp_directions = _count("grasp_directions", grasp_directions, 1)
    score_kinds = check_score_kinds(score_kinds)
    if ratios is None and sparsity is not None:  # (a config's null: read as an array holding NaN before)
        raise ArgumentError(f"`ratios` is None; pass one of {', '.join(map(repr, RATIO_METHODS))} or an array of keep "
                            "ratios, or leave it out for the default 'zo_grasp'")
    if isinstance(ratios, str) and ratios not in RATIO_METHODS:
        raise ArgumentError(f"`ratios` must be one of {', '.join(map(repr, RATIO_METHODS))} or an array; got {ratios!r}")
    if not isinstance(ranking, str) or ranking not in RANKINGS:  # before ZO-GraSP's queries (an array: ambiguous)
        raise ArgumentError(f"`ranking` must be one of {', '.join(map(repr, RANKINGS))}; got {ranking!r}")
    mask_shuffle_interval = check_interval(mask_shuffle_interval)
    return grasp_directions, score_kinds, mask_shuffle_interval


def check_tools(checkpoint, checkpoint_every, estimator, optimizer, schedule, mu):
    """The checkpoint path, estimator, optimizer, schedules and save cadence."""
    if checkpoint is not None:
        checkpoint = as_path(checkpoint, "checkpoint")
    estimator = check_estimator(estimator)
    snes = isinstance(estimator, SNES)
    if snes and mu is not None:
        raise ArgumentError("`mu` schedules set CGE's and RGE's step; SNES adapts its own sigma (start: "
                            "SNES(mu=...)): drop `mu`")
    optimizer = sgd(0.1) if optimizer is None else optimizer
    if not isinstance(optimizer, Optimizer):
        raise ArgumentError(f"`optimizer` must be built by zo.sgd / zo.adam / zo.sign_sgd, or be your own pure pair "
                            f"wrapped as zo.Optimizer(init, update, lr, name, config), got {type(optimizer).__name__}"
                            f"{optimizer_hint(optimizer)}")
    _check_optimizer_calls(optimizer)
    lr_sched = as_schedule(schedule, "schedule") if schedule is not None else None
    mu_sched = as_schedule(mu, "mu", positive=True) if mu is not None else None
    cadence = save_cadence(checkpoint_every, checkpoint)  # (a time cadence counts from here)
    return checkpoint, estimator, snes, optimizer, lr_sched, mu_sched, cadence


def _check_optimizer_calls(optimizer) -> None:
    """An own optimizer's ``init`` and ``update`` that cannot take the arguments train passes fail now, not
    with a bare TypeError after the first step's queries (``update`` gets the step's lr by keyword). A
    decorated function's own signature is read, not the one ``functools.wraps`` copies from the function it
    wraps (a wrapper that takes ``lr`` and calls an update without it was refused, and trains)."""
    for fn, args, kwargs, shown in ((optimizer.init, (0,), {}, "init(params)"),
                                    (optimizer.update, (0, 1, 2), {"lr": None}, "update(grad, state, params, lr=lr)")):
        try:
            sig = inspect.signature(fn, follow_wrapped=False)
        except (TypeError, ValueError):  # (a signature that cannot be read is taken as it is)
            continue
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise ArgumentError(f"`optimizer` {optimizer.name!r}: train calls {shown}, which its signature {sig} "
                                f"cannot take ({exc}); define it as "
                                + ("def init(params)" if shown.startswith("init") else
                                   "def update(grad, state, params, lr=None) (train passes each step's learning "
                                   "rate as `lr`, from the optimizer's own `lr` or train's `schedule`)")) from None


#: a callback written for scipy.optimize.minimize, callback(xk) or callback(intermediate_result)
_SCIPY_CALLBACK = ("; one written for scipy's minimize, fn(xk) or fn(intermediate_result), reads `params` as xk "
                   "and record['loss'] as fun (the step's loss, before its update), and returns at once when "
                   "event == 'epoch' (called once a step, as scipy's is)")


def _takes_one(fn) -> bool:
    try:
        inspect.signature(fn).bind(None)
    except (TypeError, ValueError):
        return False
    return True


def check_callables(callbacks, eval_fn):
    """``callbacks`` as a list of callables of (event, record, params); ``eval_fn`` of (params)."""
    if callable(callbacks):
        raise ArgumentError(f"`callbacks` must be a list of callables; got one, {getattr(callbacks, '__name__', callbacks)!r}: "
                            "pass callbacks=[fn]")
    if callbacks is None or (isinstance(callbacks, (bool, np.bool_)) and not callbacks):
        # (False, NumPy's too: `callbacks=verbose and [printer]`, taken as none before)
        callbacks = ()
    if (isinstance(callbacks, (str, bytes)) or getattr(callbacks, "__iter__", None) is None
            or getattr(callbacks, "ndim", 1) != 1):
        # a number, a 0-d array or tensor: a TypeError from iterating it otherwise
        raise ArgumentError(f"`callbacks` must be a list of callables (event, record, params), got "
                            f"{type(callbacks).__name__}: pass callbacks=[fn, ...] or leave it out")
    callbacks = list(callbacks)  # not `if callbacks`: an array of callables has no truth value
    for i, cb in enumerate(callbacks):
        if not callable(cb):
            raise ArgumentError(f"`callbacks[{i}]` must be callable (event, record, params), got {type(cb).__name__}")
        _check_arity(cb, 3, f"`callbacks[{i}]`", "(event, record, params)", _SCIPY_CALLBACK if _takes_one(cb) else "")
    if eval_fn is not None and not callable(eval_fn):
        raise ArgumentError(f"`eval_fn` must be callable params -> float or dict, got {type(eval_fn).__name__}")
    if eval_fn is not None:
        _check_arity(eval_fn, 1, "`eval_fn`", "(params)")
    return callbacks


def check_sparse_split(sparsity, ratios, blocks, score_kinds, ranking, fill_small_blocks, grasp_directions,
                       mask_shuffle_interval, estimator, optimizer, progress):
    """Settings that only a sparse run (or only ZO-GraSP) reads, refused where they would be ignored."""
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
        _check_sparsity(sparsity)
        _warn_sign_decay(optimizer, stacklevel=4)
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
    return sparse, fill_small_blocks, progress


def check_resume(resume, checkpoint):
    """``resume`` as a path or None (``True``: `checkpoint` where it holds a run)."""
    if resume is True:
        if checkpoint is None:
            raise ArgumentError("`resume=True` resumes from `checkpoint`; pass `checkpoint=path` too")
        path = os.fspath(checkpoint)  # an empty file (tempfile.mkstemp's, a job's placeholder) holds no run
        resume = checkpoint if os.path.exists(path) and not (os.path.isfile(path) and os.path.getsize(path) == 0) \
            else None
        if resume is None:
            with logging_kept_out():
                log.info("no checkpoint at %s yet: starting a fresh run", log_path(checkpoint),
                         stacklevel=user_stacklevel())
    elif resume is False:  # "do not resume", as None
        resume = None
    elif resume is not None:
        if not isinstance(resume, (str, bytes, os.PathLike)):
            raise ArgumentError(f"`resume` must be a checkpoint path, True (resume from `checkpoint` if it exists) or "
                                f"None/False (start fresh), got {resume!r}")
        resume = as_path(resume, "resume")  # "~/run.npz" as the checkpoint's path reads it
    return resume


def check_checkpoint(oracle, checkpoint, resume):
    """The checkpoint's file, writable, absolute, not another program's; the oracle's state savable."""
    if checkpoint is not None:
        check_writable(checkpoint)  # before the first query, not after the first epoch
        # absolute: the file checked here is the one every save writes, whatever os.chdir an
        # eval_fn or a callback makes (a relative path then replaced a file zoracle did not write)
        checkpoint = os.path.abspath(checkpoint)
        _check_overwrite(checkpoint, resume, stacklevel=4)
        if callable(getattr(oracle, "state_arrays", None)):  # a state a checkpoint cannot hold fails now
            for k, v in oracle.state_arrays().items():
                a = np.asarray(to_numpy(v))
                if a.dtype.hasobject or a.dtype.kind not in "biuf":
                    raise ArgumentError(f"the oracle's state {k!r} has dtype {a.dtype}: a checkpoint holds numeric "
                                        "arrays only (bool, int, float); convert it, or train without `checkpoint`")
    return checkpoint


def check_plot(plot, epochs, resume, checkpoint):
    """``plot`` as an absolute path of a figure file, or None."""
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
    return plot


def split_layout(oracle, d, sparse, blocks, score_kinds, ratios, sparsity):
    """The scored and dense blocks of a sparse run (none for a dense one), and the scored weights' count."""
    n_scored = None
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
    return all_blocks, scored, dense, n_scored


def run_config(oracle, params, d, batches, steps_per_epoch, estimator, optimizer, schedule, mu, sparse, sparsity,
               ratios, fill_small_blocks, ranking, grasp_directions, mask_shuffle_interval, scored, dense, rng):
    """The settings a checkpoint records and a resume compares (see zoracle._resume)."""
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
    return config


def init_state(oracle, params, optimizer, checkpoint, resume):
    """The optimizer's state at init, checked as a checkpoint can hold it, and the shapes and dtypes a
    resume reads it (and the oracle's own state) in."""
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
    return state, layout


def array_keep(ratios, scored, sparsity, n_scored):
    """Keep ratios passed as an array, checked against the scored blocks and `sparsity`."""
    try:
        keep = np.array(to_numpy(ratios), dtype=np.float64).ravel()  # (a copy: result.ratios is not the caller's array)
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
    return keep


def grasp_scores(ratios, sparsity, scored, n_scored, epochs, checkpoint) -> bool:
    """Whether :func:`choose_keep` queries ZO-GraSP for a sparse run's keep ratios: ``ratios="zo_grasp"``
    with more than one scored block, a split that keeps some but not all of their weights, and a step to
    draw a mask for or a checkpoint to keep the ratios in."""
    if not (isinstance(ratios, str) and ratios == "zo_grasp") or len(scored) < 2:
        return False
    return 0 < round((1 - sparsity) * n_scored) < n_scored and not (epochs == 0 and checkpoint is None)


def choose_keep(oracle, params, estimator, executor, *, ratios, sparsity, scored, all_blocks, n_scored, score_kinds,
                ranking, fill_small_blocks, grasp_directions, grasp_batch, batches, steps_per_epoch, returned, root,
                epochs, checkpoint, max_queries, nfev, box=None):
    """The keep ratios of a sparse run's scored blocks, by `ratios` (ZO-GraSP spends its queries here),
    epoch 0's batches where ZO-GraSP drew them, and the queries spent so far."""
    first = keep = None
    if not isinstance(ratios, str):
        keep = array_keep(ratios, scored, sparsity, n_scored)
    elif ratios == "zo_grasp" and round((1 - sparsity) * n_scored) >= n_scored:
        keep = np.ones(len(scored))  # every weight kept: ZO-GraSP's queries could change nothing
    elif round((1 - sparsity) * n_scored) == 0:  # (with dense blocks; without, refused above)
        keep = np.zeros(len(scored))  # nothing kept: ZO-GraSP's queries could change nothing either
        warn(f"train: `sparsity`={sparsity!r} keeps round((1 - sparsity) * {n_scored}) = 0 of the "
             f"{n_scored} scored weights: only the dense blocks train; lower `sparsity` below "
             f"{1 - 0.5 / n_scored:.6g} to train scored weights too", UserWarning, stacklevel=3)
    elif ratios == "uniform" or (ratios == "zo_grasp" and len(scored) == 1):
        keep = uniform_ratios(scored, sparsity)
    elif ratios == "smart":
        kinds = [getattr(b, "kind", None) or "conv" for b in all_blocks
                 if getattr(b, "kind", None) is None or b.kind in tuple(score_kinds)]
        keep = smart_ratio(scored, sparsity, kinds=kinds)
    elif ratios == "random":
        keep = random_ratios(scored, sparsity, rng=np.random.default_rng([root, 3]))
    elif not grasp_scores(ratios, sparsity, scored, n_scored, epochs, checkpoint):
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
                          rng=np.random.default_rng([root, 2]), executor=executor,
                          bounds=None if box is None else grasp_box(box, params.shape[0]))
        nfev += grasp_queries(grasp_directions)
        keep = layer_ratios(scores, scored, sparsity, ranking=ranking, fill_small=fill_small_blocks)
        with logging_kept_out():
            log.info("ZO-GraSP keep ratios per block: %s", np.round(keep, 4).tolist(), stacklevel=user_stacklevel())
        _warn_zero_blocks(params, scored, keep, all_blocks, filled=fill_small_blocks, stacklevel=4)
    return keep, first, nfev


def resumed(got, resume, *, oracle, d, xp, state, est_state, config, modes, lr_of, lr_name, mu_sched, snes, sparse, ratios,
            epochs):
    """The run as read back from checkpoint ``resume`` (``got``, read by zoracle._resume.read_resume),
    checked against this run's settings; the oracle's own state loaded."""
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
        warn("train: the oracle's model is in other train/eval modes (or update_stats) than in the run "
             f"that wrote {os.fspath(resume)!r}: its losses from here on differ from that run's (BatchNorm "
             "and dropout act otherwise); set the modes as they were to continue that run", UserWarning,
             stacklevel=3)
    # every step already run, at its recorded lr and mu (SNES records its widths there)
    compare_history(resume, steps_hist, {"lr": (lr_of, lr_name),
                                         "mu": (None if snes else mu_sched, "mu")})
    keep = got["keep"]
    if sparse and not isinstance(ratios, str):
        given = np.asarray(to_numpy(ratios), dtype=np.float64).ravel()
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
    with logging_kept_out():
        log.info("resumed from %s at epoch %d, step %d", log_path(resume), epoch, step, stacklevel=user_stacklevel())
    return (params, state, est_state, root, step, epoch, pos, nfev, verdicts, checked, steps_hist, epoch_hist,
            resumed_metrics, keep)


def check_steps(oracle, params, xp, estimator, optimizer, lr_sched, mu_sched, total, max_queries, callbacks,
                resume=None, box=None):
    """Every step's lr and mu checked before the first query (where the run's length is known), and
    the first step's mu at the params as the oracle sees them (and, with ``bounds``, the box ``box`` at
    the largest mu of a schedule); the lr schedule and its argument's name,
    the schedules' fingerprints, the params' initial scale and the tiny-mu verdict left for the first loss."""
    lr_of = lr_sched if lr_sched is not None else as_schedule(optimizer.lr, "lr")
    lr_name = "schedule" if lr_sched is not None else "lr"  # the argument its values come from
    prints = fingerprints(lr_of, lr_name, mu_sched, total)
    extremes = _check_every_step(lr_of, lr_name, mu_sched, total,
                                 may_stop=max_queries is not None or bool(callbacks), prints=prints,
                                 stacklevel=4, resume=resume)
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
        if box is not None and extremes:  # a later step's wider mu: refused now, not after the steps before it
            t = max(extremes, key=extremes.get)
            box.check_width(extremes[t], where=f" (the `mu` schedule's value at step {t})")
    reuse_freed_memory()  # every step frees and re-allocates the same temporaries (glibc: keep them)
    scale0 = float(xp.max(xp.abs(params)))  # the initial scale: a run that leaves it far behind diverged
    tiny = None
    if isinstance(estimator, CGE):
        # (the first mu once: a schedule is called once here, where the run's length left no values checked)
        mu0 = (None if extremes else estimator.mu if mu_sched is None
               else schedule_value(mu_sched, 0, "mu", positive=True))
        declared = compute_dtype_of(oracle)
        _warn_huge_mu(max(extremes.values()) if extremes else mu0, scale0, stacklevel=4)
        tiny = (min(extremes.values()) if extremes else mu0, scale0,
                declared or np.dtype(params.dtype),  # (a plain callable: its params' float)
                declared is None and np.dtype(params.dtype) == np.float32)
        tiny = tiny if _warn_tiny_mu(*tiny, stacklevel=4) else None  # (one whose loss is judged at the first step's)
    return lr_of, lr_name, prints, scale0, tiny
