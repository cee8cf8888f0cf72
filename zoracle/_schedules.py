"""Schedules: pure functions ``step -> value`` for learning rates and smoothing parameters.

A schedule is any callable taking the (0-based) optimizer step and returning a float.
Everywhere a learning rate ``lr`` or a smoothing parameter ``mu`` is accepted, a plain
float means a constant. The factories here return small frozen dataclasses, so a schedule
can be compared, printed and recorded in a checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
from dataclasses import dataclass
from typing import Callable, Union

from ._errors import ArgumentError, config_hint, finite_real, short_repr

__all__ = [
    "Schedule",
    "constant_schedule",
    "cosine_schedule",
    "step_schedule",
    "linear_warmup",
    "as_schedule",
    "describe_schedule",
    "schedule_value",
    "check_value",
    "fingerprint",
    "fingerprints",
    "FINGERPRINT_STEPS",
]

#: The steps at which a schedule's values are recorded in a checkpoint (those a run reaches).
FINGERPRINT_STEPS = (0, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000,
                     50_000, 100_000, 200_000, 500_000, 1_000_000)

Schedule = Callable[[int], float]
FloatOrSchedule = Union[float, Schedule]


def _positive(name: str, value, allow_zero: bool = False) -> float:
    if not finite_real(value):
        raise ArgumentError(f"`{name}` must be a finite number, got {short_repr(value)}"
                            f"{config_hint(name, value, 'number', lambda v: v > 0 or (allow_zero and v == 0))}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ArgumentError(f"`{name}` must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _store(obj, **values) -> None:
    """Set a frozen schedule's checked fields as plain Python numbers: ``cosine_schedule(1, ...)``
    and ``cosine_schedule(1.0, ...)`` (or ``np.float64(1.0)``) are then described alike, and a
    checkpoint written by one resumes with the other."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def _step(step) -> None:
    """A schedule's step is a count from 0 (a negative one divided by zero or ramped below 0)."""
    if step < 0:
        raise ArgumentError(f"a schedule's `step` must be >= 0 (steps count from 0), got {step!r}")


def _count(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum or value > sys.maxsize:
        # (beyond sys.maxsize: a budget of 10**400 overflowed a float division deep inside)
        raise ArgumentError(f"`{name}` must be an integer >= {minimum} and at most {sys.maxsize}, got "
                            f"{short_repr(value)}"
                            f"{config_hint(name, value, 'int', lambda v: v >= minimum)}")
    return int(value)


@dataclass(frozen=True)
class constant_schedule:
    """``step -> value`` for every step.

    Examples
    --------
    >>> constant_schedule(0.1)(1000)
    0.1
    """

    value: float

    def __post_init__(self):
        _store(self, value=_positive("value", self.value, allow_zero=True))

    def __call__(self, step: int) -> float:
        _step(step)
        return float(self.value)


@dataclass(frozen=True)
class cosine_schedule:
    r"""Cosine decay from ``init`` to ``final`` over ``total_steps``, after a linear warm-up.

    .. math::
        v(t) = \text{final} + \tfrac12(\text{init} - \text{final})
               \left(1 + \cos\frac{\pi (t - w)}{T - w}\right), \quad w \le t < T

    and ``v(t) = init * (t + 1) / w`` for ``t < w`` (``w = warmup_steps``); ``final``
    after ``total_steps``.

    Examples
    --------
    >>> s = cosine_schedule(0.1, total_steps=100, warmup_steps=10)
    >>> round(s(0), 4), round(s(9), 4), round(s(10), 4), round(s(100), 4)
    (0.01, 0.1, 0.1, 0.0)
    """

    init: float
    total_steps: int
    warmup_steps: int = 0
    final: float = 0.0

    def __post_init__(self):
        _store(self, init=_positive("init", self.init), final=_positive("final", self.final, allow_zero=True),
               total_steps=_count("total_steps", self.total_steps, 1),
               warmup_steps=_count("warmup_steps", self.warmup_steps, 0))
        if self.warmup_steps >= self.total_steps and self.total_steps > 1:
            raise ArgumentError(
                f"`warmup_steps` ({self.warmup_steps}) must be < `total_steps` ({self.total_steps})"
            )

    def __call__(self, step: int) -> float:
        _step(step)
        w, T = self.warmup_steps, self.total_steps
        if step >= T:  # final after total_steps, a warm-up longer than the run included
            return float(self.final)
        if step < w:
            return self.init * (step + 1) / w
        frac = (step - w) / max(1, T - w)
        return self.final + 0.5 * (self.init - self.final) * (1.0 + math.cos(math.pi * frac))


@dataclass(frozen=True)
class step_schedule:
    """Start at ``init`` and multiply by ``gamma`` every ``step_size`` steps (after a linear
    warm-up over the first ``warmup_steps`` steps, from whose end the steps are counted).

    Examples
    --------
    >>> s = step_schedule(1.0, step_size=10, gamma=0.5)
    >>> s(0), s(9), s(10), s(25)
    (1.0, 1.0, 0.5, 0.25)
    """

    init: float
    step_size: int
    gamma: float = 0.1
    warmup_steps: int = 0

    def __post_init__(self):
        _store(self, init=_positive("init", self.init), step_size=_count("step_size", self.step_size, 1),
               gamma=_positive("gamma", self.gamma), warmup_steps=_count("warmup_steps", self.warmup_steps, 0))

    def __call__(self, step: int) -> float:
        _step(step)
        if step < self.warmup_steps:
            return self.init * (step + 1) / self.warmup_steps
        return self.init * self.gamma ** ((step - self.warmup_steps) // self.step_size)


@dataclass(frozen=True)
class linear_warmup:
    """Ramp linearly to ``schedule(warmup_steps)`` over ``warmup_steps``, then follow ``schedule``.

    ``schedule`` may be a float (a constant after the warm-up) or any schedule.

    Examples
    --------
    >>> s = linear_warmup(0.2, warmup_steps=4)
    >>> [round(s(t), 3) for t in range(6)]
    [0.05, 0.1, 0.15, 0.2, 0.2, 0.2]
    """

    schedule: FloatOrSchedule
    warmup_steps: int

    def __post_init__(self):
        inner = as_schedule(self.schedule, "schedule")  # a number is checked there, as a float
        _store(self, warmup_steps=_count("warmup_steps", self.warmup_steps, 0),
               schedule=self.schedule if callable(self.schedule) else inner.value)

    def __call__(self, step: int) -> float:
        _step(step)
        inner = as_schedule(self.schedule, "schedule")
        if step < self.warmup_steps:
            return inner(self.warmup_steps) * (step + 1) / self.warmup_steps
        return inner(step)


def as_schedule(value: FloatOrSchedule, name: str = "lr", positive: bool = False) -> Schedule:
    """A float as :class:`constant_schedule`; a callable unchanged; anything else an error
    (a number below 0, or with ``positive`` (``mu``) not above 0)."""
    if callable(value):
        return value
    if not finite_real(value) or value < 0 or (positive and value <= 0):
        raise ArgumentError(
            f"`{name}` must be a {'finite number > 0 (e.g. 5e-3)' if positive else 'number >= 0'} or a schedule "
            f"(a callable step -> value), got {short_repr(value)}"
            f"{config_hint(name, value, 'number', lambda v: v > 0 if positive else v >= 0)}"
        )
    return constant_schedule(float(value))


def _label(schedule) -> str:
    if hasattr(type(schedule), "__dataclass_fields__"):
        return repr(schedule)
    return getattr(schedule, "__name__", None) or type(schedule).__name__


def check_value(raw, where: str, positive: bool = False) -> float:
    """``raw`` as a finite float ``>= 0`` (``> 0`` if ``positive``), else :class:`ArgumentError` naming ``where``."""
    bad = isinstance(raw, (bool, str, bytes)) or getattr(raw, "shape", ()) not in ((), (1,))
    try:
        value = float(raw.item() if hasattr(raw, "item") else raw)
    except (TypeError, ValueError, OverflowError):  # (OverflowError: an int such as 10**400)
        bad, value = True, math.nan
    if bad or not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ArgumentError(f"{where} is {short_repr(raw, 80)}; it must be a finite number "
                            f"{'> 0' if positive else '>= 0'}")
    return value


def schedule_value(schedule: Schedule, step: int, name: str = "lr", positive: bool = False) -> float:
    """``schedule(step)`` checked by :func:`check_value`: the one check every schedule value passes.

    A negative, NaN, infinite or non-numeric value (or an exception) names the schedule,
    the step and the value.
    """
    try:
        raw = schedule(int(step))
    except ArgumentError:
        raise
    except Exception as exc:
        raise ArgumentError(f"the `{name}` schedule {_label(schedule)} at step {step} raised "
                            f"{type(exc).__name__}: {exc}") from exc
    # a plain float that passes: returned as check_value returns it, with no message made (the
    # schedule's repr in it cost a step of a cheap oracle's run more than the value's check)
    if type(raw) is float and math.isfinite(raw) and (raw > 0 if positive else raw >= 0):
        return raw
    return check_value(raw, f"the value of the `{name}` schedule {_label(schedule)} at step {step}", positive)


def fingerprint(schedule: Schedule, name: str, total_steps: int | None, positive: bool = False) -> dict:
    """The schedule's values at the :data:`FINGERPRINT_STEPS` below ``total_steps``.

    Recorded in checkpoints: a resumed run compares the values at the steps both runs
    reach (and every step already run against the history's record of it), so a changed
    schedule is caught even when it is an opaque callable. Every value
    is checked with :func:`schedule_value` (so a bad schedule fails before the first query).
    """
    if total_steps is None:  # the run's length is unknown: only the first step is sure to be reached
        steps = [0]
    else:
        steps = [t for t in FINGERPRINT_STEPS if t < total_steps]
    return {"steps": steps, "values": [schedule_value(schedule, t, name, positive) for t in steps]}


def fingerprints(lr_of: Schedule, lr_name: str, mu_sched: Schedule | None, total_steps: int | None) -> dict:
    """A run's schedule fingerprints (:func:`fingerprint` of its ``lr`` and, where it has one, its
    ``mu`` schedule), as a checkpoint records them."""
    return {"lr": fingerprint(lr_of, lr_name, total_steps),
            "mu": fingerprint(mu_sched, "mu", total_steps, positive=True) if mu_sched is not None else None}


def describe_schedule(value) -> str:
    """A stable text description (recorded in checkpoints to detect mismatched settings).

    A number is its float's repr; a dataclass schedule its fields, each described alike (so a
    function inside one, such as ``linear_warmup(decay, 4)``'s ``decay``, is ``<function>``,
    not a repr holding its address, which no other process reproduces); any other callable
    ``<its type>`` (its values are compared instead: the checkpoint's fingerprints and history).
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return repr(float(value))
    return _describe(value)


def _describe(value) -> str:
    """:func:`describe_schedule` of a field: an integer stays one (a step count), as its repr was."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return repr(int(value))
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return repr(float(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ", ".join(f"{f.name}={_describe(getattr(value, f.name))}" for f in dataclasses.fields(value) if f.repr)
        return f"{type(value).__qualname__}({fields})"  # as the dataclass repr names it
    if value is None or isinstance(value, (bool, str)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_describe(v) for v in value) + "]"
    if isinstance(value, tuple):  # as its repr wrote it (older checkpoints hold that)
        return "(" + ", ".join(_describe(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return f"<{type(value).__name__}>"
