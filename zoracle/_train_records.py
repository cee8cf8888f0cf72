"""``train``'s records, callbacks and evaluation metrics, and its optimizer state's arrays."""

from __future__ import annotations

import numbers

import numpy as np

from ._backend import to_numpy
from ._errors import ArgumentError, short_repr, warn


def _json_number(v):
    v = float(v)
    return v if np.isfinite(v) else str(v)


def _called(cb, event, record, params):
    """``cb(event, record, params)``; a StopIteration it raises (SciPy's way to stop ``minimize``
    from a callback) reads as a returned True: the run stops and returns its result."""
    try:
        return cb(event, record, params)
    except StopIteration:
        return True


def callback_key(i: int, cb) -> str:
    """The key of :func:`_stops`'s warning about callback ``i`` (``cb``) in a run's record of the warnings it
    gave (which its checkpoint keeps: a resumed run's callbacks are other objects, of the same place and name)."""
    return f"callback {i} {getattr(cb, '__qualname__', type(cb).__qualname__)}"


def _stops(value, cb, warned: set, stacklevel: int = 3) -> bool:
    """Whether a callback's return value stops training: True (NumPy's too). Anything else but
    None and False is said once per callback: only True stops."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return bool(value)
    if id(cb) not in warned:
        warned.add(id(cb))
        warn(f"callback {getattr(cb, '__name__', cb)!r} returned {value!r} ({type(value).__name__}); only "
             "True stops training (return None or False to go on)", RuntimeWarning, stacklevel=stacklevel)
    return False


def _metric(v, where):
    try:
        if isinstance(v, (str, bytes)) or getattr(v, "shape", ()) not in ((), (1,)) or np.ma.is_masked(v):
            raise TypeError  # (a masked value's .item() is the data hidden behind its mask: 0.0, or a stale number)
        return float(v.item() if hasattr(v, "item") else v)
    except (TypeError, ValueError, OverflowError) as exc:  # (OverflowError: an int such as 10**400)
        big = " (too large for a float)" if isinstance(exc, OverflowError) else ""
        raise ArgumentError(f"{where} is {short_repr(v, 80)}{big}; `eval_fn` must return a number "
                            "or a dict of numbers") from None


#: an epoch record's own fields: a metric of the same name is stored as ``eval_<name>``
#: the fields of training's own records (step and epoch): a metric of one of these names is renamed
EPOCH_FIELDS = ("step", "epoch", "loss", "lr", "mu", "nfev", "total_nfev", "seconds")


def _metrics(value, epoch, stacklevel: int = 3) -> dict:
    if value is None:
        return {}
    where = f"the value `eval_fn` returned at epoch {epoch}"
    if not isinstance(value, dict):
        return {"eval": _metric(value, where)}
    out = {str(k): _metric(v, f"{where} for {k!r}") for k, v in value.items()}
    if len(out) != len(value):  # {1: ..., "1": ...}: one name for two metrics
        raise ArgumentError(f"{where} has two metrics whose names read the same as text ({list(value)!r}); "
                            "give each its own name")
    for k in [k for k in out if k in EPOCH_FIELDS]:
        new = "eval_" + k
        while new in out:
            new = "eval_" + new
        out[new] = out.pop(k)
        warn(f"`eval_fn` returned a metric named {k!r}, a field of the epoch record (training's own); "
             f"it is stored as {new!r}; give it another name in eval_fn's dict to choose the name yourself",
             RuntimeWarning, stacklevel=stacklevel)
    return out


def _state_arrays(state) -> dict:
    return {f"opt/{k}": to_numpy(v) for k, v in state._asdict().items() if k != "count"}


def _count_of(state):
    """A state's ``count`` as an int: an int (NumPy's too) or a 0-d integer array (optax's
    ``jnp.zeros([], jnp.int32)``, which ``int()`` reads); None when it is neither."""
    c = getattr(state, "count", None)
    if isinstance(c, (bool, np.bool_)):
        return None
    if isinstance(c, numbers.Integral) or (getattr(c, "shape", None) == ()
                                           and getattr(getattr(c, "dtype", None), "kind", None) in ("i", "u")):
        return int(c)
    return None


def _restore_state(template, saved: dict, count: int, xp):
    def back(init, a, inner=False):  # a tuple, list or Python number init gave comes back as one, not as an array
        if type(init) in (tuple, list):  # each element as init gave it (an array stays an array)
            return type(init)(back(e, x, True) for e, x in zip(init, np.asarray(a)))
        # a tuple was saved as one array of its elements' common type (an int and a float: float64):
        # each element gets init's own type back (an int stays an int, a float32 array float32)
        if type(init) in (bool, int, float):
            v = np.asarray(a).item()
            return type(init)(v) if inner else v
        if inner and isinstance(getattr(init, "dtype", None), np.dtype):
            return xp.asarray(np.asarray(a).astype(init.dtype, copy=False))
        return xp.asarray(a)

    fields = {k: (int(count) if k == "count" else back(v, saved[k])) for k, v in template._asdict().items()}
    return type(template)(**fields)


_STEP_KEYS = ("step", "epoch", "loss", "lr", "mu", "nfev", "total_nfev", "seconds")
_EPOCH_KEYS = ("epoch", "loss", "lr", "nfev", "total_nfev")


def _in_order(rec: dict, first, last=()) -> dict:
    """``rec`` with the keys ``first`` leading and ``last`` trailing, in those orders, the others
    (eval_fn's metrics) between them as they come."""
    head = {k: rec[k] for k in first if k in rec}
    tail = {k: rec[k] for k in last if k in rec}
    return {**head, **{k: v for k, v in rec.items() if k not in head and k not in tail}, **tail}
