"""``zoracle.train``'s progress bar, opened and closed around the run's steps, and its result."""

from __future__ import annotations

import os
import sys
import time

from ._bar import (_BarStream, _LINE_SECONDS, _NoBar, _colourless, _fitted_bar, _line_bar, _pool_worker, _redraws,
                   _steady_bar, _tqdm_lock, _tqdm_unlock, _unwrapped, log)
from ._diagnose import ended_above, ended_above_text
from ._errors import logging_kept_out, user_stacklevel, warn
from ._history import History, TrainResult
from ._oracle import has_methods

__all__ = ["open_bar", "close_bar", "ended_above_once", "finish_run"]


def open_bar(progress, total_steps, step):
    """The run's progress bar (a no-op one without `progress`), whether it shows, and the lock on tqdm's
    bars it holds."""
    from tqdm.auto import tqdm

    progress = progress and sys.stderr is not None  # no stderr (pythonw, `2>&-`): no bar to draw, not a crash
    lines = progress and not _redraws(sys.stderr)  # a log file: a line every _LINE_SECONDS, not ten redraws a second
    lines = lines or (progress and bool(_pool_worker()))  # a sweep's task: lines, not bars redrawn over each other
    from tqdm.std import tqdm as text_tqdm
    text = getattr(tqdm, "display", None) is text_tqdm.display  # (not a notebook's widget bar)
    lines = lines and text
    tqdm_lock = _tqdm_lock() if progress else None
    kind = _fitted_bar(_line_bar(tqdm) if lines else tqdm) if text else tqdm  # (fitted to a narrow terminal)
    try:
        bar = _NoBar() if not progress else _steady_bar(kind)(
            total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
            **(dict(file=_BarStream(_unwrapped(sys.stderr, every=True))) if progress and text else {}),
            **(dict(colour=None) if progress and text and _colourless(lines) else {}),  # (over TQDM_COLOUR)
            leave=False, **(dict(mininterval=_LINE_SECONDS, maxinterval=2 * _LINE_SECONDS) if lines else {}))
    except (OSError, ValueError) as exc:  # tqdm flushes sys.stdout and sys.stderr itself, unwrapped (its stream
        if not progress:  # equals sys.stderr): output pending to a pipe whose reader has gone (`2>&1 | head`)
            raise
        with logging_kept_out():
            log.warning("train: the progress bar is off: its stream failed (%s: %s)", type(exc).__name__, exc,
                        stacklevel=user_stacklevel())
        progress = False
        bar = _NoBar()
    if progress and getattr(bar, "disable", False) is True:  # hidden by tqdm (TQDM_DISABLE=1): a run without a bar,
        bar.close()  # which logs each step at DEBUG
        progress, bar = False, _NoBar()
    return bar, progress, tqdm_lock


def close_bar(bar, tqdm_lock):
    """Close the run's progress bar (and give back the lock on tqdm's bars)."""
    from tqdm.std import tqdm as text_tqdm

    bar_pos = abs(getattr(bar, "pos", 0) or 0)  # (0 but for a run beside others, in threads)
    bar.close()
    if bar_pos and getattr(type(bar), "display", None) is text_tqdm.display:
        with type(bar).get_lock():  # tqdm clears a bar below the first and leaves the cursor at the end of
            bar.fp.write("\r")  # its blank line: the next print began 100 columns in
    _tqdm_unlock(tqdm_lock)


def ended_above_once(steps_hist, first_step: int, warned: set):
    """:func:`~zoracle._diagnose.ended_above`'s verdict for the run's end, None where the run's record of its
    warnings (``warned``, a checkpoint's: before a resume too) holds it given; recorded there where it is to be
    given (before the run's last save, which keeps it: a run stopped by max_queries and resumed warned at each
    end)."""
    if "ended_above" in warned:
        return None
    found = ended_above(steps_hist, first_step)
    if found is not None:
        warned.add("ended_above")
    return found


def _warn_ended_above(steps_hist, found):
    """Warn where the run's last steps' losses lie far above its first steps' (``found``: ended_above_once's):
    a learning rate too large, or readings that spike or drift, can throw the params where the
    loss is orders of magnitude above the start without a divergence error (they stay finite, mu
    still a step there), and the run returned as if it had trained."""
    if found is not None:
        warn(ended_above_text(*found, len(steps_hist), [float(r["lr"]) for r in steps_hist]), UserWarning,
             stacklevel=4)


def finish_run(oracle, params, state, est_state, steps_hist, epoch_hist, plot, keep, coords, *, nfev, step, epoch,
               epochs, stopped, t_start, ended=None):
    """The result of a run that ended: the trained params loaded into the oracle's model (where it holds
    one), the history drawn to ``plot``. A failure of either warns: the result is returned. A run that
    ended far above where it started warns (``ended``: ended_above_once's verdict)."""
    _warn_ended_above(steps_hist, ended)
    if has_methods(oracle, "load", "initial_params") and getattr(oracle, "param_info", None) is not None:
        # an oracle over a model it holds (TorchOracle): its queries left the model at the last
        # perturbed point; it holds the trained parameters now (torch.save(model.state_dict()) saves them)
        try:
            oracle.load(params)
        except Exception as exc:  # a late failure must not lose the result
            warn(f"train: the oracle could not load the trained parameters into its model ({type(exc).__name__}: "
                 f"{exc}); the result is returned: load them with oracle.load(result.params)", UserWarning,
                 stacklevel=3)
    history = History(tuple(steps_hist), tuple(epoch_hist))
    if plot is not None:
        try:
            history.plot(plot)
        except Exception as exc:  # checked before the first query; a late failure must not lose the result
            warn(f"train: the plot {os.fspath(plot)!r} could not be written ({type(exc).__name__}: {exc}); "
                 "the result is returned: draw it again with result.plot(path)", UserWarning, stacklevel=3)
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
