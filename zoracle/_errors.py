"""The small error hierarchy: every error zoracle raises on purpose is a ZoracleError."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import logging
import math
import numbers
import os
import sys
import traceback
import warnings

from ._forked import ForkSafeLock

__all__ = ["ZoracleError", "OracleError", "ArgumentError", "MissingExtra"]


def user_stacklevel(through: tuple = ()) -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` in the function calling this one point
    at the first frame outside zoracle (its adapters and apps included): the user's line, however
    deep inside the library the warning is found (a fixed stacklevel is right from one call path only).
    A log record takes it too (``log.info(..., stacklevel=user_stacklevel())``: ``logging`` counts
    the frames as ``warnings`` does, for a Logger's own methods from Python 3.10 on).
    ``through``: top-level packages whose frames are passed as zoracle's (``("tqdm",)``: the bar's
    redraw, which calls zoracle's bar stream back)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (_own(frame) or (frame.f_globals.get("__name__") or "").partition(".")[0] in through):
        frame, level = frame.f_back, level + 1
    rest = frame
    while rest is not None and rest.f_globals.get("__name__") in _THREAD_START:
        rest = rest.f_back
    # a worker thread's stack has no user frame: its thread machinery (threading.py) is no better
    # a place than zoracle's own line, which keeps the warning matching filters on module "zoracle"
    return 1 if rest is None and frame is not None else level


_THREAD_START = frozenset({"threading", "concurrent.futures.thread", "multiprocessing.pool"})

#: zoracle's subpackages that a clone's root also imports by their own names (``import adapters``,
#: ``from adapters.torch import TorchOracle``): the same files as ``zoracle.adapters`` / ``zoracle.apps``
_ALSO_TOP = ("adapters", "apps")


def _own(frame) -> bool:
    """Whether ``frame`` runs zoracle's code: a module of ``zoracle``, or one of its adapters or apps
    imported by the top-level name (a user's own package of that name, elsewhere, is not)."""
    top = (frame.f_globals.get("__name__") or "").partition(".")[0]
    if top == "zoracle":
        return True
    if top not in _ALSO_TOP:
        return False
    folder = _own_folder(top)
    here = os.path.realpath(os.path.dirname(frame.f_code.co_filename))
    return folder is not None and (here == folder or here.startswith(folder + os.sep))


@functools.lru_cache(maxsize=None)
def _own_folder(top: str) -> str | None:
    """The folder of ``zoracle.<top>`` (its files), or None where it is not installed."""
    try:
        spec = importlib.util.find_spec(f"zoracle.{top}")
    except (ImportError, ValueError):
        return None
    where = list(spec.submodule_search_locations or []) if spec is not None else []
    return os.path.realpath(where[0]) if where else None


#: id of a stream's buffer -> [blocks of :func:`escaping` using it, the stream]: the first block in makes
#: it escape, the last one out puts it back strict (runs in threads warning at once: the first one done
#: put it back while another's warning was still to be written)
_ESCAPING: dict = {}
_ESCAPING_LOCK = ForkSafeLock()


@contextlib.contextmanager
def escaping(*streams):
    """``streams`` writing a character their encoding lacks as an escape (``\\u2211``), not failing
    on it, and put back after: a stream opened strict (a terminal's stdout under
    PYTHONIOENCODING=ascii or in latin-1, ``sys.stderr = open("run.log", "w")`` in cp1252 or ASCII)
    raised UnicodeEncodeError on a path or a metric named in another script. A stream that cannot
    change it (no ``reconfigure``) is left as it is."""
    mine = []
    with _ESCAPING_LOCK:
        for stream in streams:
            key = id(getattr(stream, "buffer", stream))  # (the stream train wraps beside its bar: its own)
            held = _ESCAPING.get(key)
            if held is None:
                if getattr(stream, "errors", None) != "strict" or not hasattr(stream, "reconfigure"):
                    continue
                try:
                    stream.reconfigure(errors="backslashreplace")
                except (AttributeError, ValueError, OSError):  # a wrapper that cannot change it: as it is
                    continue
                held = _ESCAPING[key] = [0, stream]
            held[0] += 1
            mine.append(key)
    try:
        yield
    finally:
        with _ESCAPING_LOCK:
            for key in mine:
                held = _ESCAPING[key]
                held[0] -= 1
                if not held[0]:
                    del _ESCAPING[key]
                    try:
                        held[1].reconfigure(errors="strict")
                    except (AttributeError, ValueError, OSError):  # closed meanwhile
                        pass


#: where :func:`warn` hands zoracle's warnings in this context instead of issuing them: a function of
#: ``(message, category)`` that returns True when it took the warning. ``zoracle.AskTell``'s run thread
#: sets it, and the caller's ``tell()`` (or the constructor) issues them at the caller's line (issued in
#: that thread they showed zoracle's own line, and a filter's "error" raised there, not at the caller)
HANDED_OVER: contextvars.ContextVar = contextvars.ContextVar("zoracle_warnings_handed_over", default=None)


#: whether the losses zoracle checks in this context are values a caller told (``zoracle.AskTell``'s
#: ``tell()`` and its run's thread set it), not values a function zoracle called returned: the messages
#: that name the oracle, ``return`` or ``zo.train(oracle, ...)`` read it through :func:`told`
TOLD: contextvars.ContextVar = contextvars.ContextVar("zoracle_losses_told", default=False)


def told(returned, asktell):
    """A message's words (a text, or a tuple of texts) for an oracle's returned values, ``returned``,
    or, where :data:`TOLD` is set, for values an AskTell's caller told, ``asktell``."""
    return asktell if TOLD.get() else returned


def warn(message: str, category: type = UserWarning, stacklevel: int = 1) -> None:
    """``warnings.warn`` whose text (and the user's line it shows) is written with :func:`escaping`:
    on a ``sys.stderr`` that cannot encode a character of a path or a name in it, Python's warnings
    let the UnicodeEncodeError through, which failed the run (a result lost to a warning that said
    it was returned). ``stacklevel`` counts from the caller, as ``warnings.warn``'s. Handed over
    instead where :data:`HANDED_OVER` takes it."""
    hand = HANDED_OVER.get()
    if hand is not None and hand(message, category):
        return
    with escaping(sys.stderr):
        warnings.warn(message, category, stacklevel=stacklevel + 1)


@contextlib.contextmanager
def logging_kept_out():
    """A log call of zoracle's whose handler raises (a log shipper's ``emit`` that lets a
    ConnectionError through, a filter with a bug) or whose last-resort handler writes to a closed
    ``sys.stderr``: the run goes on, as ``logging``'s own handlers do (their ``handleError``). A log
    line failed the run it reported on, after hours of steps. The traceback goes to ``sys.stderr``
    where ``logging.raiseExceptions`` says so and there is one to write to; nothing is raised."""
    try:
        yield
    except Exception:  # (not Ctrl-C nor SystemExit)
        if logging.raiseExceptions:
            with contextlib.suppress(Exception):  # no stderr (None, closed): nowhere to say it
                sys.stderr.write("--- Logging error in a record of logger 'zoracle'; the run goes on ---\n")
                traceback.print_exc(file=sys.stderr)


def to_stderr(text: str, flush: bool = False) -> None:
    """``print(text, file=sys.stderr)``, or nothing where there is no stderr (pythonw, ``2>&-``, a
    daemon's ``sys.stderr = None``): ``print(file=None)`` writes to stdout, which put a note or a
    progress line into the JSON a ``--json`` command prints there (a parser read "Extra data")."""
    if sys.stderr is not None:
        print(text, file=sys.stderr, flush=flush)


def log_path(path):
    """``path`` as a log line shows it (``%s``): as it is, unless it holds a control character or a line
    separator, then as its repr. A newline in a checkpoint's path split one record into two lines (a
    parser reading a line a record took the rest for another), a carriage return or an escape rewrote
    the terminal's line; a path without one prints as before, for the parsers reading it."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
    if isinstance(text, str) and any(ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029" for c in text):
        return repr(text)
    return text


class ZoracleError(Exception):
    """Base class of every error the library raises on purpose."""


class ArgumentError(ZoracleError, ValueError):
    """An argument was rejected: before any oracle query was made wherever it can be checked
    up front; what only a run can show (a ``batches`` callable's later epochs, an optimizer's
    ``update`` that does not count its step) is raised when found, after queries.

    The message names the argument, shows the value received and says the fix.
    """


class Shown(str):
    """A description of what an oracle returned (its repr, or "array of shape ..."), shown as it
    is where an :class:`OracleError` shows ``value!r``: the repr of a repr read ``oracle returned
    'None'`` for a None, as for the text 'None'."""

    def __repr__(self) -> str:
        return str(self)


class OracleError(ZoracleError, RuntimeError):
    """An oracle returned a non-scalar or non-finite value, or raised.

    Attributes
    ----------
    query : str
        Which query failed, e.g. ``"coordinate 17 (step +0.005)"`` or ``"direction 3 (+mu)"``.
    value : object
        The value the oracle returned (``None`` when it raised); where it is not a number, its
        ``repr`` (cut to 200 characters), as text. The message shows it on one line, cut to 200
        characters, whatever was passed here.
    cause : BaseException or None
        The exception the oracle raised, if any (also chained as ``__cause__``).
    params : array or None
        A copy of the parameters of the failing query, where it was a plain call (``None`` for
        a batched, coordinate or split call, which answers many queries); the message shows
        their first 20 values after the query.
    """

    params = None

    def __init__(self, query: str, value=None, cause: BaseException | None = None, detail: str = ""):
        self.query = query
        self.value = value
        self.cause = cause
        self.detail = detail
        if cause is not None:
            text, out = exc_text(cause), program_output(cause)
            text = f"{text.rstrip('.')}; {out}" if out else text
            msg = f"oracle raised at {query}: {type(cause).__name__}: {text}{'; ' + detail if detail else ''}"
        else:
            said = told("oracle returned", "tell() got")  # (AskTell: a value its caller told)
            msg = f"{said} {short_repr(value)} at {query}{': ' + detail if detail else ''}"
        super().__init__(msg)

    def at_params(self, params) -> "OracleError":
        """Keep a copy of the failing query's ``params`` and show them after the query in the
        message (a solver that fails at some parameter values says which); the error itself."""
        self.params = params.copy()
        flat = params.reshape(-1)
        shown = short_repr(flat[:20].tolist()) + (f" (the first 20 of {flat.size})" if flat.size > 20 else "")
        if self.args and isinstance(self.args[0], str) and self.query in self.args[0]:
            self.args = (self.args[0].replace(self.query, f"{self.query}, params {shown}", 1), *self.args[1:])
        return self

    def located(self, where: str, fix: str = "") -> "OracleError":
        """Name the query by where the caller made it (``where`` replaces ``query`` in the
        message too) and append ``fix``; the error itself, for ``raise``."""
        if self.args and isinstance(self.args[0], str) and self.query in self.args[0]:
            self.args = (self.args[0].replace(self.query, where, 1) + fix, *self.args[1:])
        self.query = where
        return self

    def __reduce__(self):  # keep the fields when crossing process boundaries
        # a cause or value that does not survive the trip (it fails to pickle, or to unpickle:
        # an exception whose __init__ takes other arguments than its args, a class only the
        # sender can import) travels as text, so the report keeps its type, query and cause
        cause = (self.cause if _round_trips(self.cause)
                 else RuntimeError(f"{type(self.cause).__name__}: {exc_text(self.cause)}"))
        value = self.value if _round_trips(self.value) else repr(self.value)
        return (_rebuilt, (self.__class__, (self.query, value, cause, self.detail)), travelling_state(self))


def travelling_state(exc: BaseException, fields=("query", "value", "cause", "detail")) -> dict:
    """What an exception rebuilt from its fields would lose: its text as edited after ``__init__``
    (``located``'s fix, an executor's shard note), attributes set later (``shard``), ``add_note``'s
    notes; each entry only where it round-trips through pickle (a copy's state is set last)."""
    state = {k: v for k, v in vars(exc).items() if k not in fields and _round_trips(v)}
    if _round_trips(exc.args):
        state["args"] = exc.args
    return state


def short_repr(value, limit: int = 200) -> str:
    """``repr(value)`` on one line (NumPy's rows of a 2-D array joined), cut to ``limit`` characters.
    A repr that fails does not replace the report it is for: an int beyond Python's limit on the
    digits it writes (4300) is named by its size, anything else by its type."""
    try:
        r = repr(value)
    except Exception:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            r = f"<int of about {int(int(value).bit_length() * math.log10(2)) + 1} digits>"
        else:
            r = f"<{type(value).__name__}>"
    if "\n" in r:  # (a str's repr escapes its newlines: these are a repr's own line breaks)
        r = " ".join(line.strip() for line in r.splitlines())
    return r if len(r) <= limit else r[:limit - 3] + "..."


def shown_address(address):
    """A cluster address as repr, error messages and logs may show it: the credentials of a URL
    (``scheme://user:password@host``, or a token in place of the user) replaced by ``***``;
    anything else (None, 'local', a Client) as it is."""
    return hide_credentials(address, address) if isinstance(address, str) else address


def hide_credentials(text: str, address) -> str:
    """``text`` (an error's message: one a cluster library raised may repeat the address, its
    scheme dropped) with the credentials of ``address`` replaced by ``***``."""
    if not isinstance(address, str):
        return text
    rest = address.partition("://")[2] or address
    authority = rest.partition("/")[0]
    credentials = authority.rpartition("@")[0]
    if not credentials:
        return text
    text = text.replace(credentials + "@", "***@")
    # the password alone before its "@": distributed parses "user:password@host" without a port as host
    # "user", port "password@host", and its error repeats that ("invalid literal ...: 's3cret@host'")
    password = credentials.partition(":")[2]
    return text.replace(password + "@", "***@") if password else text


def check_flag(name: str, v) -> bool:
    """``v`` as a bool; a string ("False", "no") would be read as its truth value."""
    import numpy as np

    if not isinstance(v, (bool, np.bool_)):
        raise ArgumentError(f"`{name}` must be True or False, got {short_repr(v)}{config_hint(name, v, 'flag')}")
    return bool(v)


_FLAG_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def config_hint(name: str, value, want: str, ok=None) -> str:
    """The fix for a value as a config file or a command line gives it, to end a refusal with: text
    for a number or a flag (``"1e-3"``, ``"3"``, ``"true"``) or a whole float for a count (``3.0``)
    is never converted silently, so the message says what to pass. ``want``: ``"int"``,
    ``"number"`` or ``"flag"``; ``ok(number)``: whether the number is one the check takes (where
    not, passing it is no fix, and the hint says so). Empty for any other value."""
    if isinstance(value, str):
        text = value.strip()
        if want == "flag":
            word = _FLAG_WORDS.get(text.lower())
            return "" if word is None else f"; that is text, not a bool: pass {name}={word}"
        try:
            number = float(text)
        except ValueError:
            return ""
        if not math.isfinite(number) or (want == "int" and not _whole(number)):
            return ""
        shown = int(number) if want == "int" else number
        if ok is not None and not ok(shown):  # ("-1e-3" for lr: -0.001 is refused as well)
            return f"; that is text (as a config file or a command line gives it), and as a number, {shown!r}, " \
                   "it would be refused too"
        return f"; that is text (as a config file or a command line gives it), not a number: pass {name}={shown!r}"
    if want == "int" and isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        try:
            whole = _whole(float(value))
        except (TypeError, ValueError, OverflowError):
            return ""
        if whole and (ok is None or ok(int(value))):  # never truncated silently: 3.5 epochs would be 3
            return f"; a float is not taken as a count: pass {name}={int(value)}"
    return _zero_d_hint(name, value, want, ok)


def _zero_d_hint(name: str, value, want: str, ok=None) -> str:
    """The fix for a 0-d array (JAX's ``jnp.float32(1e-3)``, NumPy's, a torch tensor's): one number
    to the eye, refused by its type with "must be a finite number > 0, got Array(0.001)"."""
    import numpy as np

    if isinstance(value, (str, bytes, numbers.Number, np.generic)) or getattr(value, "shape", None) != () \
            or not hasattr(value, "item"):  # (a NumPy scalar is taken as the number it is: refused by value)
        return ""
    try:
        number = value.item()
    except Exception:  # noqa: BLE001 - not one number after all: no hint
        return ""
    conv = {"flag": "bool", "int": "int"}.get(want, "float")
    if isinstance(number, bool) != (want == "flag") or not isinstance(number, (bool, int, float)) or (
            want == "int" and not (isinstance(number, int) or _whole(number))):
        return ""
    shown = {"bool": bool, "int": int, "float": float}[conv](number)
    kind = f"a 0-d {type(value).__module__.split('.')[0]}.{type(value).__name__}"
    if ok is not None and not ok(shown) or not math.isfinite(shown):
        return f"; that is {kind}, not a Python number, and as a number, {shown!r}, it would be refused too"
    return f"; that is {kind}, not a Python number: pass {name}={conv}({name}) ({shown!r})"


def _whole(number: float) -> bool:
    """A count a float stands for exactly (3.0; not 3.5, -1.0 or 1e300)."""
    return math.isfinite(number) and number.is_integer() and 0 <= number <= sys.maxsize


def program_output(exc, limit: int = 2000) -> str:
    """What the program behind a ``subprocess.CalledProcessError`` or ``TimeoutExpired`` wrote, as
    a clause for a message: the end (``limit`` characters) of its captured stderr, else of its
    stdout; empty when neither was captured or ``exc`` is another error. Their ``str()`` shows only
    the command and its exit status or time limit, and a simulator that fails says why on stderr."""
    sub = sys.modules.get("subprocess")  # not imported: no such error can exist
    if sub is None or not isinstance(exc, (sub.CalledProcessError, sub.TimeoutExpired)):
        return ""
    for name in ("stderr", "stdout"):
        text = getattr(exc, name, None)
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode(errors="replace")
        if isinstance(text, str) and text.strip():
            text = text.strip()
            text = ("..." if len(text) > limit else "") + text[-limit:]
            return f"the program's {name} ends with:\n    " + text.replace("\n", "\n    ")
    return ""


def exc_text(exc) -> str:
    """``str(exc)``, or a note that it failed: an exception whose ``__str__`` raises must not
    replace the report of the query that raised it."""
    try:
        return str(exc)
    except Exception as err:
        return f"<str() failed: {type(err).__name__}>"


def _rebuilt(cls, args):
    """An :class:`OracleError` unpickled (a process worker's report), its cause chained as
    ``__cause__`` as where it was raised. (Not set in ``__init__``: a library that pickles
    ``__cause__`` itself, as tblib's reducers installed by Dask do, would then meet the cause
    ``__reduce__`` replaced because it does not pickle.)"""
    err = cls(*args)
    if err.cause is not None:
        err.__cause__ = err.cause
    return err


def _round_trips(obj) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(obj))
        return True
    except Exception:
        return False


def traceback_text(exc: BaseException) -> str:
    """Where ``exc`` was raised, as text: the oracle's own exception (an OracleError's cause) with
    its chain, else ``exc``'s; the innermost frames, where the user's line is (a model's forward is
    a dozen frames below the worker's loop, and the outermost ones cut it off)."""
    root = exc.cause if isinstance(exc, OracleError) and isinstance(exc.cause, BaseException) else exc
    try:
        return "".join(traceback.format_exception(type(root), root, root.__traceback__, limit=-_TB_FRAMES))
    except Exception:  # (no text rather than no report: the exception itself still travels)
        return ""


#: the innermost frames of each exception a worker's traceback text keeps
_TB_FRAMES = 12


class WorkerTraceback(Exception):
    """The traceback of an exception raised in a worker process, as text: chained as the
    ``__cause__`` of the exception that came back (pickling drops its traceback), so that
    the traceback shows the line of the oracle that raised."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0]).rstrip("\n") if self.args else ""


def with_worker_traceback(exc: BaseException, text) -> BaseException:
    """``exc``, that came back from a worker, with the worker's traceback ``text`` chained under
    the oracle's own exception (an OracleError's cause, else ``exc``) where it has none of its own.
    Not under an OracleError with no cause (a value the oracle returned, refused): the oracle raised
    nothing, and the text was zoracle's frames only, ending with the message once more."""
    if isinstance(exc, OracleError) and not isinstance(exc.cause, BaseException):
        return exc
    inner = exc.cause if isinstance(exc, OracleError) else exc
    if isinstance(text, str) and text and inner.__traceback__ is None and inner.__cause__ is None:
        inner.__cause__ = WorkerTraceback(text)
    return exc


class MissingExtra(ZoracleError, ImportError):
    """A package an optional feature needs is not installed; the message names the extra that
    installs it (``pip install -e '.[dask]'``)."""


def finite_real(value) -> bool:
    """Whether ``value`` is a real number (not a bool) of finite value. A Fraction, a NumPy scalar
    or a Python int beyond int64 counts (``np.isfinite`` raises TypeError on the last two); one
    beyond float (``10**400``) is not finite (``float()`` raises OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def masked_entries(value) -> str:
    """`` with N masked entries (the first at index i)`` for a NumPy masked array that has masked
    entries, else ``""``: what a refusal of it names, because ``np.asarray`` of it passes on the
    data hidden behind its mask (0.0, or a stale number) as if it were a value."""
    import numpy as np  # (this module stays importable without NumPy's import cost)

    mask = np.ma.getmaskarray(value)
    if not mask.any():
        return ""
    n = int(mask.sum())
    at = tuple(int(i) for i in np.argwhere(mask)[0])
    return f" with {n} masked entr{'y' if n == 1 else 'ies'} (the first at index {at[0] if len(at) == 1 else at})"


_ESTIMATOR_NAMES = {"cge": "zo.CGE()", "rge": "zo.RGE()", "snes": "zo.SNES()"}
_OPTIMIZER_NAMES = {"sgd": "zo.sgd(0.1)", "adam": "zo.adam(1e-3)", "sign_sgd": "zo.sign_sgd(0.01)"}


def estimator_hint(value) -> str:
    """What an ``estimator`` that is not an estimator object most likely meant, as `` (...)``, or ``""``: the
    class itself (``zo.CGE``, not ``zo.CGE()``), its name as text, or a number (scipy approx_fprime's
    epsilon)."""
    if isinstance(value, type) and value.__name__ in ("CGE", "RGE", "SNES") and value.__module__.startswith("zoracle"):
        return f" (the class zo.{value.__name__} itself: pass an instance, estimator=zo.{value.__name__}())"
    name = value.strip().lower().replace("-", "_") if isinstance(value, str) else None
    if name in _ESTIMATOR_NAMES:
        return f" ({value!r} is text: pass estimator={_ESTIMATOR_NAMES[name]})"
    if finite_real(value):
        return f" (a number here is scipy approx_fprime's epsilon: pass estimator=zo.CGE(mu={value!r}))"
    return ""


def optimizer_hint(value) -> str:
    """What an ``optimizer`` that is not an ``Optimizer`` most likely meant, as `` (...)``, or ``""``: zoracle's
    factory itself (``zo.adam``, not ``zo.adam(1e-3)``), its name as text, or a torch optimizer class."""
    name = getattr(value, "__name__", None)
    if callable(value) and name in _OPTIMIZER_NAMES and getattr(value, "__module__", "").startswith("zoracle"):
        return f" (the function zo.{name} itself: call it with a learning rate, optimizer={_OPTIMIZER_NAMES[name]})"
    text = value.strip().lower().replace("-", "_") if isinstance(value, str) else None
    if text in _OPTIMIZER_NAMES:
        return f" ({value!r} is text: pass optimizer={_OPTIMIZER_NAMES[text]})"
    if isinstance(value, type) and value.__module__.startswith("torch.optim"):
        return (f" (torch's {value.__name__} updates a module's tensors from their .grad; zoracle updates the flat "
                "params itself: pass zoracle's own, e.g. optimizer=zo.adam(1e-3) or zo.sgd(0.1, momentum=0.9))")
    return ""


def percent_hint(name: str, value) -> str:
    """``; a percentage? ...`` for a fraction given as a whole percentage (``sparsity=90`` for 0.9; a command
    line's ``--sparsity 90``, where ``name`` is the flag, for ``--sparsity 0.9``), else ``""`` (1.5 is no
    percentage anyone writes for a sparsity, and 1 or 100 not one it takes)."""
    if finite_real(value) and float(value).is_integer() and 1 < float(value) < 100:
        if name.startswith("--"):
            return f"; a percentage? give {name} {float(value) / 100:g}"
        return f"; a percentage? {value!r}% is {name}={float(value) / 100!r}"
    return ""


#: a kind of executor named as a string -> the executor that runs it (``executor="dask"`` was answered
#: with ``DaskExecutor('dask')``, an address no scheduler has, and ``"threads"`` with a cluster's)
_EXECUTOR_NAMES = {
    "serial": "None (serial)",
    "threads": "zoracle.executors.JoblibExecutor(2, backend='threading')",
    "processes": "zoracle.executors.JoblibExecutor(2) (worker processes)",
    "dask": "zoracle.executors.DaskExecutor('local') or DaskExecutor('tcp://host:8786') "
            "(the 'dask' extra: pip install -e '.[dask]')",
    "ray": "zoracle.executors.RayExecutor('auto') for a running cluster, or RayExecutor('local', "
           "allow_network=True) (the 'ray' extra: pip install -e '.[ray]')",
}
_EXECUTOR_NAMES.update(thread=_EXECUTOR_NAMES["threads"], threading=_EXECUTOR_NAMES["threads"],
                       process=_EXECUTOR_NAMES["processes"], loky=_EXECUTOR_NAMES["processes"],
                       multiprocessing=_EXECUTOR_NAMES["processes"], distributed=_EXECUTOR_NAMES["dask"])


def executor_hint(value) -> str:
    """What an ``executor`` that is not one most likely meant, to end its refusal with, or ``""``: a kind
    named as text, a cluster's address, a worker count, zoracle's executor class not built, or a
    ``concurrent.futures`` pool."""
    named = _EXECUTOR_NAMES.get(value.strip().lower()) if isinstance(value, str) else None
    if named is not None:
        return f" {value!r}; for that, pass executor={named}"
    if isinstance(value, str):
        return (f"; a cluster address such as {value!r} goes to zoracle.executors.DaskExecutor({value!r}) "
                f"or RayExecutor({value!r})")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return f"; for {value} worker processes, pass executor=zoracle.executors.JoblibExecutor({value})"
    if isinstance(value, type):
        if value.__module__.startswith("zoracle"):
            return f" (the class {value.__name__} itself: build it, executor={value.__name__}(...))"
        return f" (the class {value.__name__} itself)"
    if type(value).__module__.startswith("concurrent.futures"):
        return ("; zoracle runs its queries on its own executors, which split them into shards: for threads "
                f"pass executor={_EXECUTOR_NAMES['threads']}, for processes zoracle.executors.JoblibExecutor(2)")
    return ""
