"""``checkpoint_every``: when :func:`zoracle.train` saves its checkpoint.

Every N steps (an int), at each epoch's end (``"epoch"``), or by wall time: a
``datetime.timedelta`` or text as a config file gives it (``"30s"``, ``"10min"``, ``"2h"``),
saved at the first step end after that much monotonic time since the last save (or the run's
start), so a SIGKILL loses about that much work at most, plus the step in flight. Saves stay at
step boundaries, so a resume is the uninterrupted run whichever save it starts from. The
cadence is not among a checkpoint's settings: a run resumes with another one.
"""

from __future__ import annotations

import datetime
import math
import numbers
import re
from time import monotonic  # (looked up here at each call: a test fakes the clock through it)

import numpy as np

from ._errors import ArgumentError, config_hint, short_repr, user_stacklevel, warn
from ._schedules import _count

# a duration's units, one explicit table: "m" is not one (minutes, or months?), nor are days
UNITS = {"s": 1, "sec": 1, "second": 1, "seconds": 1, "min": 60, "minute": 60, "minutes": 60,
         "h": 3600, "hour": 3600, "hours": 3600}
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]+)\s*")
FORMS = ('an integer >= 1 (steps between saves), "epoch" (at each epoch\'s end), or a time between saves: a '
         'datetime.timedelta, or text such as "30s", "10min", "1.5h" (a number > 0 and one unit of '
         f"{', '.join(UNITS)})")


class SaveCadence:
    """When to save: ``due(step)`` at a step's end inside an epoch, ``due(step, epoch_end=True)``
    at an epoch's end; ``saved()`` after each save (a time cadence counts from there)."""

    def __init__(self, steps: int | None = None, seconds: float | None = None):
        self.steps, self.seconds = steps, seconds
        self.last = monotonic()  # the run's start: nothing is saved before its first step

    def due(self, step: int, epoch_end: bool = False) -> bool:
        if self.seconds is not None:
            return monotonic() - self.last >= self.seconds
        return step % self.steps == 0 if self.steps is not None else epoch_end

    def saved(self) -> None:
        self.last = monotonic()


def save_cadence(value, checkpoint) -> SaveCadence:
    """``checkpoint_every`` checked (before the first query) and read as a :class:`SaveCadence`.

    Examples
    --------
    >>> save_cadence("10min", "run.npz").seconds, save_cadence(100, "run.npz").steps
    (600.0, 100)
    """
    name = "checkpoint_every"
    if isinstance(value, str) and value == "epoch":
        return SaveCadence()
    seconds = steps = None
    if isinstance(value, (datetime.timedelta, np.timedelta64)):  # (pandas' Timedelta too)
        if isinstance(value, np.timedelta64) and np.datetime_data(value.dtype)[0] == "generic" and not np.isnat(value):
            # (NumPy reads a unitless one as any unit: np.timedelta64(10) was taken as 10 seconds)
            raise ArgumentError(f"`{name}` is {short_repr(value)}, a time with no unit (seconds, minutes?); pass "
                                f"np.timedelta64({int(value.astype(np.int64))}, \"s\") for seconds, or {FORMS}")
        try:  # (NumPy's is an integer type: int() of one in "s" raised a bare TypeError before)
            seconds = value.total_seconds() if isinstance(value, datetime.timedelta) else value / np.timedelta64(1, "s")
        except TypeError:  # months or years: no fixed number of seconds
            seconds = float("nan")
        except OverflowError:  # attoseconds: NumPy finds no common unit with seconds (a bare OverflowError)
            unit, count = np.datetime_data(value.dtype)
            seconds = float(value.astype(np.int64)) * count * {"fs": 1e-15, "as": 1e-18}.get(unit, math.nan)
        if not seconds > 0:
            raise ArgumentError(f"`{name}` is {short_repr(value)}: the time between saves must be > 0 (and fixed: "
                                f"no months or years); pass {FORMS}")
    elif isinstance(value, str) and _DURATION.fullmatch(value):
        number, unit = _DURATION.fullmatch(value).groups()
        if unit.lower() == "m":
            raise ArgumentError(f"`{name}` is {value!r}: \"m\" is no unit here (minutes, or months?); pass "
                                f"{name}=\"{number}min\" for minutes. Accepted: {FORMS}")
        if unit.lower() not in UNITS:
            raise ArgumentError(f"`{name}` is {value!r}, whose unit {unit!r} is none of the accepted; pass {FORMS}")
        seconds = float(number) * UNITS[unit.lower()]
        if not 0 < seconds < math.inf:  # (400 digits: an endless time, never due)
            raise ArgumentError(f"`{name}` is {value!r}: the time between saves must be > 0 and finite; pass {FORMS}")
    elif (isinstance(value, numbers.Integral) and not isinstance(value, bool)) or config_hint(name, value, "int"):
        steps = _count(name, value, 1)  # (text or a float naming a count: refused with the int to pass)
    else:
        raise ArgumentError(f"`{name}` must be {FORMS}; got {short_repr(value)}")
    if checkpoint is None:  # ignored silently: a run that failed later had saved nothing
        shown = steps if steps is not None else short_repr(value)
        raise ArgumentError(f"`{name}`={shown} sets how often `checkpoint` is saved, but no "
                            "`checkpoint` path was given, so nothing would be saved; pass checkpoint='run.npz' "
                            f"too, or leave {name} out")
    return SaveCadence(steps, seconds)


#: the bytes a run's saves may write in all before :func:`warn_rewrites` warns: each save rewrites
#: the whole history so far, so a run saving every step writes bytes quadratic in its steps
REWRITE_WARN_BYTES = 100e9
#: a step record's bytes in a checkpoint (its JSON), and an epoch record's (measured: 146 and 150)
RECORD_BYTES = 150


def rewrite_bytes(cadence: SaveCadence, total: int | None, per_epoch: int | None, start: int = 0) -> float | None:
    """About the bytes the saves of a run of ``total`` steps (``per_epoch`` an epoch) write, each
    rewriting the history so far: ``RECORD_BYTES`` a step and an epoch, times the history's steps
    summed over the saves, those after step ``start`` (a resumed run's: its saves still rewrite the
    steps before it). None where the saves cannot be counted before the run (a time cadence, or a
    run of unknown length)."""
    if cadence.seconds is not None or not total or not per_epoch:
        return None
    every = cadence.steps if cadence.steps is not None else per_epoch
    saves, before = total // every, min(start, total) // every
    # (floats: no int too large) the saves numbered before+1 .. saves, the j-th writing j * every steps
    return RECORD_BYTES * (1 + 1 / per_epoch) * every * (float(saves) * (saves + 1) - float(before) * (before + 1)) / 2


def least_step_queries(estimator, d: int, sparse: bool) -> int:
    """The queries a step of ``estimator`` takes at least on ``d`` params: ``d`` for each point a
    dense CGE steps to (``2d`` central), ``directions`` for each an RGE steps to, else 1 (a sparse
    CGE's mask or SNES's population are not counted here)."""
    from ._estimators import CGE, RGE

    if isinstance(estimator, CGE) and not sparse:
        return max(1, d * len(estimator.steps))
    if isinstance(estimator, RGE):
        return max(1, estimator.directions * len(estimator.steps))
    return 1


def warn_rewrites(cadence: SaveCadence, value, total: int | None, per_epoch: int | None,
                  max_queries: int | None = None, step_queries: int = 1, start: int = 0) -> None:
    """Warn, before the first query, when the saves of a run will write more than
    ``REWRITE_WARN_BYTES`` in all (``value``: ``checkpoint_every`` as given; ``max_queries`` bounds
    the steps, each taking ``step_queries`` queries at least, e.g. ``d`` for dense forward CGE:
    ``epochs=10**6`` is a bound there, and 200,000 queries bound a 100-parameter CGE run at 2,000
    steps, not 200,000; ``start``: the step a resumed run starts at, whose saves before it are
    written already). A cheap oracle then
    spends most of its run saving: at 100,000 one-step epochs (a plain callable's default with
    ``checkpoint_every="epoch"``) the saves write about 1.5 TB, a step taking 0.09 ms and the last
    saves some 40 ms each; resumed at step 25,000 of 26,000, about 8 GB are left to write."""
    if total is not None and max_queries is not None:
        total = min(total, max_queries // max(1, step_queries))
    written = rewrite_bytes(cadence, total, per_epoch, start)
    if written is None or written < REWRITE_WARN_BYTES:
        return
    every = cadence.steps if cadence.steps is not None else per_epoch
    steps = f"{total:,} steps" if not start else f"{total - start:,} steps left of its {total:,}"
    saves = total // every - min(start, total) // every
    warn(
        f"train: checkpoint_every={value!r} saves the checkpoint {saves:,} times over the run's {steps}, and each "
        f"save rewrites the whole history so far (about {RECORD_BYTES * (1 + 1 / per_epoch):.0f} "
        f"bytes a step): about {written / 1e9:,.0f} GB written in all, most of a cheap oracle's run spent saving; "
        f"pass checkpoint_every=\"10min\" (a time between saves) or a step count such as {max(1, total // 100)}",
        UserWarning, stacklevel=user_stacklevel())
