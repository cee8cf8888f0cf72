"""Asking a query again after a transient failure: :func:`retrying`.

An oracle served over a network (a model behind an HTTP API) fails now and then for reasons
that have nothing to do with the query: a 503 while the service restarts, a 429 from its
rate limit, a connection reset. Without a retry one such failure ends the run (serially) or
costs a whole shard's queries (on an executor, which runs a failed shard again once).
:func:`retrying` asks the failed call again, with the same arguments, and keeps every fast
path of the oracle it wraps.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import logging
import math
import numbers
import random
import time
from typing import Any, Callable, Sequence

from ._errors import ArgumentError, ZoracleError, exc_text, logging_kept_out, user_stacklevel
from ._oracle import write_refused

__all__ = ["retrying", "Retrying", "RetriesExhausted"]

log = logging.getLogger("zoracle")

#: the longest wait between tries unless ``max_delay`` says otherwise (seconds)
MAX_DELAY = 60.0
#: methods that answer queries: each call is retried as a whole, with the same arguments
_QUERIES = ("batch", "coordinate_losses", "prefix", "suffix")
#: methods that return an oracle to query: what they return is wrapped with the same settings
_MAKERS = ("bind", "to_device")


class RetriesExhausted(ZoracleError):
    """Every one of ``tries`` calls failed with a transient error (the last one is chained).

    Attributes
    ----------
    errors : list of str
        Each try's error, ``"Type: message"``, in order.
    """

    def __init__(self, message: str, errors: Sequence[BaseException] = ()):
        super().__init__(message)
        self.errors = list(errors)

    def __reduce__(self):  # a process worker's report travels pickled: the message and the errors' texts
        return type(self), (self.args[0], self.errors)


def retrying(oracle: Any, *, tries: int = 3,
             on: type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], object]
             = (ConnectionError, TimeoutError), backoff: float = 0.5,
             max_delay: float | None = None, jitter: float = 0.0) -> "Retrying":
    """Wrap ``oracle`` so that a call failing with a transient error is asked again.

    Each call the estimators make (a plain call, and each ``batch``, ``coordinate_losses``,
    ``prefix`` and ``suffix`` call of an oracle that has them) is tried up to ``tries``
    times, with the same arguments: a retry asks the same query again and cannot change the
    result. An error that ``on`` does not match (a 400, a wrong input, a bug), or a write into
    the read-only parameters (the estimate then calls with a copy), is raised at its first
    occurrence, never retried; after ``tries`` matching failures the call raises
    :class:`RetriesExhausted`, which lists each try's error (``estimate_gradient`` and
    ``train`` report it as the :class:`~zoracle.OracleError` of the query).

    Parameters
    ----------
    oracle : callable
        Any oracle (or a DataOracle: an object with ``bind(batch)``). Its capabilities
        (``batch``, ``coordinate_losses``, a SplitOracle's ``prefix``, ``suffix`` and
        ``blocks``, ``bind`` / ``unbind``) and other attributes
        (``max_queries_per_call``, ``executor_key``, ...) are the wrapper's too: an oracle
        without ``batch`` gives a wrapper without ``batch``. ``bind(batch)`` and
        ``to_device(device)`` return the oracle they return wrapped the same way.
    tries : int
        Calls made at most for one call of the estimators (>= 1; 1 retries nothing).
    on : exception class, tuple of exception classes, or callable
        The transient errors: a call raising one of these classes is tried again; a callable
        ``exc -> bool`` decides for each exception (e.g. also urllib's ``HTTPError`` with
        ``exc.code`` 429 or 503, which is no ``ConnectionError``).
    backoff : float
        Seconds to wait after the first failure (>= 0), doubled after each further one:
        0.5, 1, 2, ... A rate-limited service needs time to let the next request through.
        An error that says how long to wait takes its own wait instead: a ``Retry-After``
        (see Notes).
    max_delay : float, optional
        The longest wait in seconds (>= 0; ``math.inf``: none): the doubled ``backoff`` stops
        growing there, and a longer ``Retry-After`` is cut to it (with ``jitter``, spread below
        it). Default: 60, or ``backoff`` where that is longer (a ``backoff`` the call names is waited, as before ``max_delay`` was).
    jitter : float
        Spread of the ``backoff`` waits, from 0 (the default: every wait as above, the same in
        each run) to 1: each wait is drawn uniformly from ``[(1 - jitter) * w, w]`` (Python's
        ``random``), so that workers failing together (a 503 for all) do not come back together.
        A ``Retry-After`` wait, the earliest time the service asked for, is spread upwards only,
        from ``[w, min((1 + jitter) * w, max_delay)]``: workers a rate limit turned away
        together, each told the same instant, do not all come back at it. One that reaches
        ``max_delay`` cannot be kept, and is spread below the cap as a backoff wait is, from
        ``[(1 - jitter) * max_delay, max_delay]``.

    Returns
    -------
    Retrying
        The wrapped oracle (picklable where ``oracle`` is: it runs on every executor).

    Notes
    -----
    A transient error that carries a ``Retry-After`` waits what it says (cut to ``max_delay``)
    in place of the ``backoff`` wait: an attribute ``exc.retry_after`` (seconds, or a
    ``datetime.timedelta``), else a ``Retry-After`` header in ``exc.headers`` (urllib's
    ``HTTPError``) or ``exc.response.headers`` (requests' and httpx's errors), in seconds
    (``"120"``) or as an HTTP date. A value that is neither (or negative) is ignored.

    ``nfev`` counts the losses the oracle returned, not the failed tries: a paid service
    bills those too. A retried failure is logged at INFO on logger ``"zoracle"`` (in this
    process; a process worker's records stay in the worker). A call whose ``tries`` all fail
    stops the run on an executor as serially: its shard is not run again on another worker,
    which would pay for its other queries again (see docs/executors.md, "Faults").

    Examples
    --------
    >>> import numpy as np, zoracle as zo
    >>> calls = []
    >>> def flaky(x):
    ...     calls.append(1)
    ...     if len(calls) == 2:
    ...         raise ConnectionResetError("connection reset by peer")
    ...     return float(np.sum(x ** 2))
    >>> est = zo.estimate_gradient(zo.retrying(flaky, backoff=0), np.ones(3), zo.CGE())
    >>> est.nfev, len(calls)
    (4, 5)
    """
    if not (callable(oracle) or callable(getattr(oracle, "bind", None))):
        raise ArgumentError(f"`oracle` must be callable (params -> float) or have bind(batch), got "
                            f"{type(oracle).__name__}; pass the oracle itself, not its result")
    if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
        raise ArgumentError(f"`tries` must be an int >= 1 (calls made at most), got {tries!r}")
    if isinstance(on, type) and issubclass(on, BaseException):
        on = (on,)
    classes = isinstance(on, tuple) and bool(on) and all(isinstance(c, type) and issubclass(c, Exception) for c in on)
    if not (classes or (not isinstance(on, tuple) and callable(on))):
        raise ArgumentError(f"`on` must be exception classes or a callable exc -> bool, got {on!r}; e.g. "
                            "on=(ConnectionError, TimeoutError)")
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 0 <= backoff < math.inf:
        raise ArgumentError(f"`backoff` must be a number of seconds >= 0 (finite: the first wait), got {backoff!r}")
    if max_delay is None:  # (retrying(f, backoff=120) waited 120 s before max_delay existed, not 60)
        max_delay = max(MAX_DELAY, float(backoff))
    if isinstance(max_delay, bool) or not isinstance(max_delay, (int, float)) or not max_delay >= 0:
        raise ArgumentError(f"`max_delay` must be a number of seconds >= 0 (math.inf: no limit), got {max_delay!r}")
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
        raise ArgumentError(f"`jitter` must be a number from 0 (waits as they are) to 1 (each drawn from 0 to its "
                            f"length), got {jitter!r}")
    return Retrying(oracle, tries, on, float(backoff), max_delay=float(max_delay), jitter=float(jitter))


def retry_after(exc) -> float | None:
    """The seconds ``exc`` says to wait before asking again (its ``retry_after``, or a ``Retry-After``
    header of its own or of its ``response``), None where it says nothing usable."""
    value = getattr(exc, "retry_after", None)
    for holder in (exc, getattr(exc, "response", None)) if value is None else ():
        get = getattr(getattr(holder, "headers", None), "get", None)
        value = (get("Retry-After") or get("retry-after")) if callable(get) else None
        if value is not None:
            break
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    elif isinstance(value, (str, bytes)):
        value = _header_seconds(value.decode("latin-1") if isinstance(value, bytes) else value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # (NumPy's numbers too)
        return None
    seconds = float(value)
    return seconds if 0 <= seconds < math.inf else None


def _header_seconds(text: str) -> float | None:
    """A ``Retry-After`` header's seconds: a number, or the time from now to an HTTP date (0 once past)."""
    try:
        return float(text.strip())
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # (HTTP dates are GMT)
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


class Retrying:
    """An oracle whose calls are tried again after a transient error: see :func:`retrying`."""

    def __init__(self, oracle, tries, on, backoff, parent=None, max_delay=MAX_DELAY, jitter=0.0):
        self.oracle = oracle
        self.tries = tries
        self.on = on
        self.backoff = backoff
        self.max_delay = max_delay
        self.jitter = jitter
        self._parent = parent  # the Retrying whose bind() made this one: unbind() names it, the same object each step
        # the oracle's module and name, which process executors check was not reloaded since their workers imported it
        self.__module__ = getattr(oracle, "__module__", None) or type(oracle).__module__
        self.__qualname__ = getattr(oracle, "__qualname__", None) or type(oracle).__qualname__

    def _transient(self, exc) -> bool:
        return isinstance(exc, self.on) if isinstance(self.on, tuple) else bool(self.on(exc))

    def _ask(self, what, fn, *args):
        errors, knobs = [], {"`tries`"}
        for attempt in range(self.tries):
            try:
                return fn(*args)
            except Exception as exc:
                # a write into a read-only view of the parameters is no transient error: raised at once, the
                # estimate calls again with a copy (retried under on=Exception, the tries all failed and the
                # RetriesExhausted stopped an oracle a copy made work)
                if write_refused(exc) or not self._transient(exc):
                    raise
                errors.append(exc)
                if attempt + 1 < self.tries:
                    wait, why, knob = self._wait(exc, attempt)
                    knobs.add(knob)  # (what would have made this wait longer)
                    with logging_kept_out():
                        log.info("%s failed (%s: %s), try %d of %d; asking again in %g s%s", what, type(exc).__name__,
                                 exc_text(exc), attempt + 1, self.tries, wait, why, stacklevel=user_stacklevel())
                    if wait:
                        time.sleep(wait)
        texts = [f"{type(e).__name__}: {exc_text(e)}" for e in errors]
        causes = "; ".join(f"try {i + 1}: {t}" for i, t in enumerate(texts))
        # (a Retry-After wait ignores `backoff`, and a wait cut to `max_delay` grows no longer with it)
        *most, last = [k for k in ("`tries`", "`backoff`", "`max_delay`") if k in knobs]
        raise RetriesExhausted(f"{what} failed all {self.tries} tries ({causes}); raise "
                               f"{', '.join(most) + ' or ' if most else ''}{last} if the service recovers more slowly",
                               texts) from errors[-1]

    def _wait(self, exc, attempt):
        """Seconds to wait after failed try ``attempt`` (from 0), what the log line adds, and the argument
        that would lengthen it (for the advice once every try has failed)."""
        hint = retry_after(exc)
        if hint is not None:
            if not self.jitter:
                wait = min(hint, self.max_delay)
            elif hint < self.max_delay:  # spread upwards only, never sooner than the service asked, over
                # what fits under max_delay (not cut to it: most draws at max_delay brought workers back together)
                wait = hint + (min(hint * (1 + self.jitter), self.max_delay) - hint) * random.random()
            else:  # the service's time is past max_delay and cannot be kept: spread below the cap, as a backoff
                # wait is (cut to max_delay every worker turned away together came back at one instant)
                wait = self.max_delay * (1 - self.jitter * random.random())
            return (wait, f" (its Retry-After: {hint:g} s{', cut to max_delay' if wait < hint else ''})",
                    "`max_delay`" if wait < hint else "`tries`")
        full = self.backoff * 2.0 ** min(attempt, 1000)  # (2.0 ** 1024 overflows: tries=5000)
        wait = min(full, self.max_delay)
        return ((wait * (1 - self.jitter * random.random()) if self.jitter else wait), "",
                "`max_delay`" if wait < full else "`backoff`")

    def __call__(self, params: Any) -> Any:
        return self._ask("the call", self.oracle, params)

    def _wrap(self, made):
        return Retrying(made, self.tries, self.on, self.backoff, parent=self, max_delay=self.max_delay,
                        jitter=self.jitter)

    def __getattr__(self, name):
        # only what is not set on the instance: the oracle's capabilities and attributes, and none
        # during unpickling (no fields yet) or for dunders, which Python looks up on the class
        if name.startswith("__") or name in ("oracle", "tries", "on", "backoff", "max_delay", "jitter", "_parent"):
            raise AttributeError(name)
        value = getattr(self.oracle, name)
        if not callable(value):
            return value
        if name in _QUERIES:
            return functools.wraps(value)(functools.partial(self._ask, f"`{name}`", value))
        if name in _MAKERS:
            return functools.wraps(value)(lambda *a, **k: self._wrap(value(*a, **k)))
        if name == "unbind":
            return functools.wraps(value)(lambda: self._unbound(value()))
        return value

    def _unbound(self, pair):
        if pair is None:
            return None
        parent, batch = pair
        if self._parent is not None and parent is self._parent.oracle:
            return self._parent, batch
        return Retrying(parent, self.tries, self.on, self.backoff, max_delay=self.max_delay, jitter=self.jitter), batch

    def __repr__(self) -> str:
        more = (f", max_delay={self.max_delay:g}" if self.max_delay != MAX_DELAY else "") + (
            f", jitter={self.jitter:g}" if self.jitter else "")
        return f"retrying({self.oracle!r}, tries={self.tries}, on={self.on!r}, backoff={self.backoff:g}{more})"
