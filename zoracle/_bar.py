"""``train``'s progress bar: tqdm on a steady clock, a line a while where no terminal redraws, and
log lines and warnings written beside it."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
import time

from ._errors import logging_kept_out, user_stacklevel
from ._forked import ForkSafeLock

log = logging.getLogger("zoracle")


class _Beside:
    """``sys.stdout`` or ``sys.stderr`` while user code runs under the progress bar: its first
    write clears the bar (see :func:`_beside`). Where other runs' bars are drawn beside it (runs in
    threads), it writes whole lines, each with every bar cleared and drawn again, as ``tqdm.write``:
    clearing this bar alone, a print overwrote another bar's line and moved them all down a line,
    which left the old lines behind, and a bar redrawn between a print's text and its newline
    overwrote the text. Only the run's own thread writes through it: other threads' writes, and
    every write once the block is over (``bar`` None), go on to the stream it wraps; a thread in no run's
    block (one the user code started) writes as the run's own."""

    def __init__(self, stream, clear, bar=None):
        self._stream, self._clear, self.bar, self._held = stream, clear, bar, ""
        self._thread = threading.get_ident()

    def write(self, s):
        me = threading.get_ident()
        if not s or self.bar is None or (me != self._thread and me in _IN_BLOCK):
            return self._stream.write(s)
        if self._held or _others_drawn(self.bar):
            self._held, n = self._held + s, len(s)
            done, newline, self._held = self._held.rpartition("\n")
            if newline:
                self.release(done + newline)
            return n
        self._clear()
        return self._stream.write(s)

    def release(self, text=None):
        """``text`` (what is held: the end of the block) written with every bar cleared."""
        text, self._held = (self._held, "") if text is None else (text, self._held)
        if text:
            with type(self.bar).external_write_mode(file=self.bar.fp):
                self._stream.write(text)
                self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _unwrapped(stream, every: bool = False):
    """``stream`` less the :class:`_Beside` of blocks that are over (another run's block, entered
    after this one in another thread, may have kept it), or ``every`` one: the stream of a bar, which
    another run's block (a run in another thread, in its ``eval_fn``) must not stand between."""
    while isinstance(stream, _Beside) and (every or stream.bar is None):
        stream = stream._stream
    return stream


def _pruned(stream):
    """``stream`` less the :class:`_Beside` of every block that is over, also those under a block still
    open: one that ended under another run's, entered after it, stayed in the chain, and runs in
    threads (each step a block) added one a step: a print went through them all (RecursionError
    after some 500 steps of two runs). Called with ``_SWAP`` held."""
    top = stream = _unwrapped(stream)
    while isinstance(stream, _Beside):
        stream._stream = _unwrapped(stream._stream)  # (what it passes on to: the same stream, sooner)
        stream = stream._stream
    return top


#: taken to put a block's streams in ``sys`` and take them back (runs in threads: one at a time)
_SWAP = ForkSafeLock()
_IN_BLOCK: dict = {}  # thread id -> how many blocks of :func:`_beside` it is in


class _BarStream:
    """The stream the progress bar writes to: a write or flush that fails (a pipe whose reader has
    gone, ``python run.py 2>&1 | head``; a closed or full stream) switches the bar off instead of
    aborting the run, which loses no work to a progress line."""

    def __init__(self, stream):
        self._stream, self.broken = stream, False

    def _call(self, name, *args):
        if self.broken:
            return None
        try:
            return getattr(self._stream, name)(*args)
        except (OSError, ValueError) as exc:
            self.broken = True
            with logging_kept_out():
                log.warning("train: the progress bar is off: its stream failed (%s: %s)", type(exc).__name__, exc,
                            stacklevel=user_stacklevel(through=("tqdm",)))  # (inside tqdm's redraw)
            return None

    def write(self, s):
        return self._call("write", s)

    def flush(self):
        return self._call("flush")

    def __eq__(self, other):  # the stream it wraps: tqdm.write(file=sys.stderr) and logging_redirect_tqdm clear
        return other is self or self._stream == getattr(other, "_stream", other)  # the bar on it, as before

    def __hash__(self):
        return hash(self._stream)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _rate_text(qps: float) -> str:
    """Queries a second for the bar: whole numbers from 10 up, two digits below (a simulator of
    seconds a query showed ``qps=0``)."""
    return f"{qps:.0f}" if qps >= 10 else f"{qps:.2g}"


#: seconds between the progress lines written to a stream that is no terminal (a log file, a pipe, CI)
_LINE_SECONDS = 10.0


def _redraws(stream) -> bool:
    """Whether ``stream`` shows a ``\\r`` as a redraw in place: a terminal, or a notebook's output
    (no TTY, but it does). A log file, a pipe or a CI log keeps every redraw; a terminal that TERM=dumb
    says moves no cursor (Emacs' shell, an editor's console) showed the ``ESC [A`` of bars drawn beside
    each other (runs in threads) as text: it gets lines too."""
    try:
        return (bool(stream.isatty()) and not _dumb(stream)) or type(stream).__module__.startswith("ipykernel")
    except Exception:  # (a closed or odd stream)
        return False


def _pool_worker() -> str:
    """``"[name pid N] "`` in a worker process of a pool (``multiprocessing.Pool``, a ``concurrent.futures``
    process pool, joblib's loky, Dask's worker processes: multiprocessing's children), else ``""``.
    Tasks of a sweep run there side by side, all on the terminal of the parent: each redrew its bar
    with ``\\r`` on the one line they share, which showed one bar flickering between the runs (the loss
    and lr of one, the step of another). There ``train`` writes lines, each named by its process."""
    mp = sys.modules.get("multiprocessing")  # (not imported: no child of it)
    try:
        if mp is None or mp.parent_process() is None:
            return ""
        return f"[{mp.current_process().name} pid {os.getpid()}] "
    except Exception:  # (an odd multiprocessing state: as a process of its own)
        return ""


def _dumb(stream) -> bool:
    """Whether ``stream`` is the terminal TERM=dumb describes: a TTY by its file descriptor (a stream
    that only says it is one, with no descriptor, is no device TERM names)."""
    if os.environ.get("TERM") != "dumb":
        return False
    try:
        return os.isatty(stream.fileno())
    except Exception:  # (no descriptor: io.UnsupportedOperation; a closed stream)
        return False


def _colourless(lines: bool) -> bool:
    """Whether the bar is drawn without colour. zoracle adds none, but tqdm colours its bar as
    TQDM_COLOUR says (read as tqdm is imported): NO_COLOR set (no-color.org) takes
    it off, and so do lines to a log file, a pipe or a dumb terminal, where its escape codes were
    noise, unless FORCE_COLOR asks for them (a CI log that shows colours)."""
    return bool(os.environ.get("NO_COLOR")) or (lines and not os.environ.get("FORCE_COLOR"))


#: what a terminal too narrow for tqdm's own line keeps first (after ``n/total``): a key of the
#: postfix, ``desc`` (the epoch), then the times (elapsed<left), the percentage, the rate in steps
_KEPT_FIRST = ("loss", "lr", "desc", "postfix", "times", "percentage", "rate")


def _fitted_line(meter, kw) -> str:
    """The bar's line on a terminal of ``kw["ncols"]`` columns, by tqdm's ``format_meter`` (``meter``).
    Where tqdm's own line fits with the bar it draws where no width is known (10 cells), it is drawn as
    tqdm does (its bar as wide as the terminal lets it). Narrower, tqdm cut the line at the width: at
    80 columns the queries/s went, at 40 the loss and the learning rate, while a cell of bar stayed.
    There the bar goes, and the line holds ``n/total``, then the first of :data:`_KEPT_FIRST` that fit,
    each whole, in tqdm's order: ``epoch 2/5: 37% 37/100, loss=0.42, lr=0.01, qps=310 [00:03<00:06, 9.80step/s]``."""
    from tqdm.utils import disp_len, disp_trim

    ncols = kw["ncols"]
    if disp_len(meter(**{**kw, "ncols": None})) <= ncols:
        return meter(**kw)
    fields = meter(**{**kw, "ncols": None, "bar_format": "\x1f".join(
        ("{n_fmt}/{total_fmt}", "{percentage:3.0f}%", "{elapsed}<{remaining}", "{rate_fmt}"))}).split("\x1f")
    postfix = kw.get("postfix")
    items = postfix.split(", ") if isinstance(postfix, str) and postfix else [str(postfix)] if postfix else []
    shown = {"n": fields[0], "percentage": fields[1].strip(), "times": fields[2], "rate": fields[3]}
    desc = kw.get("prefix")
    if desc:  # (as tqdm: "epoch 2/5: ", set_description's, or a colon added)
        shown["desc"] = desc.rstrip() if desc.endswith(": ") else f"{desc}:"
    shown.update((i, item) for i, item in enumerate(items))

    def rank(key):  # a postfix item by its name (loss=...), any other after the named ones
        name = items[key].partition("=")[0] if isinstance(key, int) else key
        return _KEPT_FIRST.index(name) if name in _KEPT_FIRST else _KEPT_FIRST.index("postfix")

    def line(keys):
        head = " ".join(shown[k] for k in ("desc", "percentage", "n") if k in keys)
        post = [shown[i] for i in range(len(items)) if i in keys]
        tail = [shown[k] for k in ("times", "rate") if k in keys]
        return head + "".join(f", {p}" for p in post) + (f" [{', '.join(tail)}]" if tail else "")

    keys = {"n"}
    for key in sorted(set(shown) - keys, key=lambda k: (rank(k), k if isinstance(k, int) else -1)):
        if disp_len(line(keys | {key})) > ncols:
            break  # (none less important in its place: a field shown, every more important one is)
        keys.add(key)
    return disp_trim(line(keys), ncols)


#: the wall clock's reading at import less the monotonic clock's: :func:`_bar_clock` reads as wall
#: time (tqdm's monitor thread compares a bar's times with its own ``time.time``) but never jumps
_WALL_OFFSET = time.time() - time.monotonic()


def _bar_clock() -> float:
    """The progress bar's clock: monotonic, so a wall-clock step (NTP, DST on a clock kept in local
    time, a VM resumed) cannot freeze the bar or show a negative elapsed time and ETA."""
    return time.monotonic() + _WALL_OFFSET


def _steady_bar(tqdm):
    """``tqdm`` timed by :func:`_bar_clock`: tqdm's own clock is ``time.time``, and a wall clock set an
    hour back froze the bar (no redraw, no log line) for an hour, then showed ``[-58:20<-8:45:00]``.
    A ``tqdm.auto.tqdm`` that is no class (``functools.partial(tqdm, ...)``, set by the program) is
    called as it is: a class cannot derive from it."""
    return _steady_class(tqdm) if isinstance(tqdm, type) else tqdm


@functools.lru_cache(maxsize=None)  # one class per tqdm class, as _line_bar
def _fitted_bar(tqdm):
    """``tqdm`` (a text bar's class) whose line keeps its numbers on a narrow terminal (:func:`_fitted_line`)."""
    meter = tqdm.format_meter

    class FittedBar(tqdm):
        @staticmethod
        def format_meter(*args, **kw):  # (tqdm's own and a width's line: as tqdm draws it)
            if args or kw.get("bar_format") or not kw.get("ncols") or not kw.get("total"):
                return meter(*args, **kw)
            return _fitted_line(meter, kw)

    return FittedBar


@functools.lru_cache(maxsize=None)  # one class per tqdm class, as _line_bar: tqdm's monitor thread is per class
def _steady_class(tqdm):
    class SteadyBar(tqdm):
        #: (steps, clock) at the end of the run's first step, then at its last step (see :func:`_run_rate`)
        _first_done = _last_done = None
        #: the postfix a step set without a redraw, and the one made tqdm's (see :meth:`set_postfix`)
        _postfix_set = _postfix_made = None

        @property
        def _time(self):  # what tqdm reads for start, elapsed, rate and ETA
            return _bar_clock

        @_time.setter
        def _time(self, clock):  # tqdm.__init__ sets time.time: not taken
            pass

        def update(self, n=1):
            if not self.disable:  # (before tqdm's redraw, which shows the rate)
                self._last_done = (self.n + n, _bar_clock())
                if self._first_done is None:
                    self._first_done = self._last_done
            return super().update(n)

        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            """A step's postfix (``refresh=False``) is kept as given and made tqdm's text when a redraw
            reads it (:attr:`format_dict`): tqdm's making of it each step was three quarters of the bar's
            work a step (a cheap oracle's run takes 10,000 steps a second), for a line drawn ten times a second."""
            if ordered_dict is not None or refresh:
                self._postfix_set = self._postfix_made = None
                return super().set_postfix(ordered_dict, refresh, **kwargs)
            self._postfix_set = kwargs
            return None

        @property
        def format_dict(self):
            kwargs = self._postfix_set  # (read once: a step may set the next as tqdm's monitor thread redraws)
            if kwargs is not None and kwargs is not self._postfix_made:
                super().set_postfix(refresh=False, **kwargs)
                self._postfix_made = kwargs
            shown = super().format_dict
            if not self.disable:
                shown["rate"] = _run_rate(self._first_done, self._last_done)
            return shown

    return SteadyBar


def _run_rate(first, last):
    """The rate the bar shows and its time left comes from: the steps since the run's first step over
    the time they took, epoch ends (``eval_fn``, saves, masks redrawn) and all. tqdm's own, an average of
    the last second or so of redraws (smoothing 0.3 a redraw), showed an ETA of half or twice the time
    left right before or after each ``eval_fn`` (evaluations as long as 10 steps, an epoch of 20), and
    kept a slow first step (torch's warm-up, the fast paths' checks: 60 seconds, then 0.2 a step) for
    over a minute of a log file's lines: ``[01:45<02:09]`` with 25 seconds left. None (tqdm's average over
    its elapsed time: the first step's rate, the only one known) until a second step is done."""
    if first is None or last[0] <= first[0] or last[1] <= first[1]:
        return None
    return (last[0] - first[0]) / (last[1] - first[1])


def _set_total(bar, total) -> None:
    """``bar.total = total``, and a notebook's widget bar with it, whose length tqdm set once, at its
    start: under ``max_queries`` (:func:`zoracle._run_loop._bar_total`) the widget filled to 6/20 at a
    run's end while its text read 6/6."""
    bar.total = total
    try:
        bar.container.children[1].max = total
    except (AttributeError, IndexError):  # (a text bar: no widget)
        pass


class _NoBar:
    """The bar of a run without one (``progress=False``, or its stream failed): no tqdm is made,
    whose first bar starts a monitor thread that outlives the run and fixes multiprocessing's
    start method (a later ``set_start_method`` raised RuntimeError)."""

    def _nothing(self, *args, **kwargs):
        return None

    update = set_postfix = set_description = clear = refresh = close = _nothing


def _tqdm_lock():
    """tqdm's write lock made before its first bar, in multiprocessing's default start method named
    outright: tqdm makes it in the default context, which fixes the program's start method (a later
    ``multiprocessing.set_start_method`` raised RuntimeError: context has already been set). The
    lock made here (``None`` where none was), for :func:`_tqdm_unlock` after the run's bar."""
    import multiprocessing

    try:
        from tqdm.std import TqdmDefaultWriteLock
    except ImportError:  # (another tqdm: its own way)
        return None
    if hasattr(TqdmDefaultWriteLock, "mp_lock") or multiprocessing.get_start_method(allow_none=True) is not None:
        return None  # made already, or the start method chosen: nothing left to fix
    try:  # (the first of get_all_start_methods is the default)
        lock = multiprocessing.get_context(multiprocessing.get_all_start_methods()[0]).RLock()
    except (ImportError, OSError):  # no semaphores (as tqdm: a lock for this process's threads only)
        TqdmDefaultWriteLock.mp_lock = None
        return None
    TqdmDefaultWriteLock.mp_lock = lock
    return lock


def _tqdm_unlock(lock) -> None:
    """Take back the lock :func:`_tqdm_lock` made for a run's bar (the run's bar class keeps it): left
    to tqdm, a program that chose another start method after the run ("spawn") had it sent to the
    processes tqdm's ``process_map`` starts, which raised RuntimeError (a SemLock created in a fork
    context is being shared with a process in a spawn context). tqdm's next bar makes its own."""
    if lock is None:
        return
    from tqdm.std import TqdmDefaultWriteLock

    if getattr(TqdmDefaultWriteLock, "mp_lock", None) is lock:
        del TqdmDefaultWriteLock.mp_lock


@functools.lru_cache(maxsize=None)  # one class per tqdm: tqdm starts a monitor thread per class, never
def _line_bar(tqdm):  # stopped (a class made per run left a thread and an atexit handler per run)
    """``tqdm`` for a stream that is no terminal: each redraw is a line of its own (no ``\\r``), at most
    one every ``mininterval`` seconds, and one at the end; nothing is cleared, so what user code
    prints starts a line of its own already (:func:`_beside` leaves it alone)."""

    class LineBar(tqdm):
        lines = True

        def display(self, msg=None, pos=None):
            if msg is None:  # (a message is the bar cleared: nothing to clear)
                tag = _pool_worker()
                self.fp.write(f"{tag}{self._narrowed(len(tag)) if tag else self}\n")
                self.fp.flush()
                self.desc_shown = self.desc
            return msg is None

        def clear(self, nolock=False):
            pass

        def _narrowed(self, by):  # the line ``by`` columns narrower, beside a tag of that width
            kw = self.format_dict
            if kw.get("ncols"):
                kw["ncols"] = max(10, kw["ncols"] - by)
            return self.format_meter(**kw)

        def close(self):
            # the run's last state, also where only the description changed since the last line (the
            # last epoch's "epoch 4/4", set after its last step's line: the log ended at "epoch 3/4")
            if not self.disable and (self.n != self.last_print_n or self.desc != getattr(self, "desc_shown", None)):
                self.display()
            super().close()

    return LineBar


def _others_drawn(bar) -> bool:
    """Whether text bars of other runs (in other threads) are drawn on the stream of ``bar``."""
    from tqdm.std import tqdm as text_tqdm

    cls = type(bar)
    if getattr(cls, "display", None) is not text_tqdm.display:  # (a notebook's widgets: apart)
        return False
    with cls.get_lock():  # (tqdm adds and removes its bars under it)
        return any(b is not bar and not b.disable and b.fp == bar.fp for b in getattr(cls, "_instances", ()))


#: what :func:`_beside` enters where there is no bar to clear (reusable: it holds no state)
_NOTHING = contextlib.nullcontext()


def _beside(bar, on: bool, clear_now: bool = False):
    """Run user code (``eval_fn``, a callback) or a log line beside the progress bar: the bar is
    cleared before the first thing written to stdout or stderr (``clear_now``: at once, for a
    logging handler's stream) and drawn again after, so a ``print`` starts a line of its own
    instead of continuing the bar's. Code that writes nothing costs no redraw. Without a bar to
    clear (``progress=False``, a bar of lines) nothing is done: a run of many cheap steps paid a
    generator's context manager twice a step for it."""
    if not on or getattr(bar, "lines", False):
        return _NOTHING
    return _beside_bar(bar, clear_now)


@contextlib.contextmanager
def _beside_bar(bar, clear_now: bool):
    """:func:`_beside` where a bar is drawn in place."""
    cleared = []

    def clear():
        if not cleared:
            cleared.append(True)
            bar.clear()

    if clear_now and _others_drawn(bar):  # (a log line: short, written with every bar cleared)
        cls = type(bar)  # (its handlers run outside tqdm's lock: one calling tqdm.write under its own lock,
        with cls.get_lock():  # for another run's eval_fn, waited for tqdm's, held here waiting for its own)
            drawn = [b for b in list(getattr(cls, "_instances", ())) if hasattr(b, "start_t") and b.fp == bar.fp]
            for b in drawn:
                b.clear(nolock=True)
        try:
            yield
        finally:
            with cls.get_lock():
                for b in drawn:
                    b.refresh(nolock=True)  # (a bar closed meanwhile is disabled: not drawn)
        return
    if clear_now:
        clear()
    with _SWAP:
        out, err = sys.stdout, sys.stderr
        mine = _Beside(out, clear, bar), _Beside(err, clear, bar)
        sys.stdout, sys.stderr = mine
        _IN_BLOCK[mine[0]._thread] = _IN_BLOCK.get(mine[0]._thread, 0) + 1
    try:
        yield
    finally:
        try:  # (a held line whose write fails, a closed pipe, must not leave these streams in sys)
            try:
                mine[0].release()
            finally:  # (nor drop what stderr holds: written, then stdout's error raised)
                mine[1].release()
        finally:
            for w in mine:
                w.bar = None  # (kept by another run's block, entered after this one: writes straight on)
            with _SWAP:  # (the streams of another run's block, entered after this one, stay until it ends)
                left = _IN_BLOCK.pop(mine[0]._thread) - 1
                if left:
                    _IN_BLOCK[mine[0]._thread] = left
                sys.stdout = _pruned(out if sys.stdout is mine[0] else sys.stdout)
                sys.stderr = _pruned(err if sys.stderr is mine[1] else sys.stderr)
        if cleared:
            for stream in (out, err):
                try:
                    stream.flush()
                except Exception:
                    pass
            bar.refresh()
