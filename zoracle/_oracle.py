"""The oracle protocol: a plain callable ``params -> float`` plus optional capabilities.

Each capability is its own runtime-checkable Protocol, discovered once per estimate by
:func:`capabilities`. :class:`Oracle` wraps a user oracle once: it checks every loss value
(a finite real scalar), counts ``nfev`` and names the failing query in an
:class:`~zoracle.OracleError`.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import re
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from ._backend import real_numpy
from ._errors import TOLD, ArgumentError, OracleError, Shown, exc_text, short_repr, told

__all__ = [
    "LossOracle",
    "BatchOracle",
    "CoordinateOracle",
    "SplitOracle",
    "DataOracle",
    "Capabilities",
    "capabilities",
    "Oracle",
]


@runtime_checkable
class LossOracle(Protocol):
    """Any callable ``params -> float``: the only thing the core needs from a model."""

    def __call__(self, params) -> float: ...


@runtime_checkable
class BatchOracle(Protocol):
    """Evaluates many parameter vectors in one call: ``batch(params_batch)``, the ``(k, d)``
    rows -> ``(k,)`` losses."""

    def batch(self, params_batch) -> Any:
        """The losses of the ``(k, d)`` rows of ``params_batch``, shape ``(k,)``."""


@runtime_checkable
class CoordinateOracle(Protocol):
    """CGE fast path: ``coordinate_losses(params, coords, step)``, the loss at
    ``params + step * e_i`` for each ``i`` in ``coords``.

    The point is ``params`` with ``params[i]`` replaced by ``params[i] + step`` computed in
    ``params``' dtype: the step taken is the representable ``(params[i] + step) - params[i]``,
    which CGE divides by (it differs from ``step`` where the floats' spacing is not small
    against it: float32 parameters of a few hundred).
    """

    def coordinate_losses(self, params, coords, step) -> Any:
        """The losses at ``params + step * e_i`` for each ``i`` in ``coords``, shape ``(len(coords),)``."""


@runtime_checkable
class SplitOracle(Protocol):
    """Feature reuse: the model is ``f_L o ... o f_1`` over contiguous parameter blocks.

    ``prefix(params, block)`` returns the activations entering ``block`` (they do not depend
    on the block's own parameters); ``suffix(features, params, block, coords, step)`` returns
    the losses for perturbing each coordinate in ``coords`` (all inside ``block``) by ``step``
    (the representable step, as for :class:`CoordinateOracle`). One block's features go to
    every suffix call of the block: they arrive read-only where they are NumPy arrays (alone,
    or in a tuple, list or dict), and a torch tensor among them written in place raises
    :class:`OracleError`; compute out of place.
    """

    blocks: Sequence[slice]

    def prefix(self, params, block: int) -> Any:
        """The features entering ``block`` at ``params`` (an array, or a tuple, list or dict of them)."""

    def suffix(self, features, params, block: int, coords, step) -> Any:
        """The losses for perturbing each of ``coords`` (inside ``block``) by ``step``, from the
        ``features`` that ``prefix(params, block)`` returned; shape ``(len(coords),)``."""


@runtime_checkable
class DataOracle(Protocol):
    """Minibatch training: ``bind(batch)`` returns an oracle every query of a step shares."""

    def bind(self, batch) -> LossOracle:
        """The oracle of one minibatch ``batch``: ``params -> loss`` on it."""


@dataclass(frozen=True)
class Capabilities:
    """Which optional protocols an oracle implements (checked once): ``batch``
    (:class:`BatchOracle`), ``coordinate`` (:class:`CoordinateOracle`), ``split``
    (:class:`SplitOracle`) and ``data`` (:class:`DataOracle`), each False where it does not."""

    batch: bool = False
    coordinate: bool = False
    split: bool = False
    data: bool = False

    @property
    def best(self) -> str:
        """The planner's choice for CGE: split > coordinate > batch > call (a serial plan for an
        oracle with ``fused_coordinate_losses = True`` takes coordinate; see ``plan_cge``)."""
        for name in ("split", "coordinate", "batch"):
            if getattr(self, name):
                return name
        return "call"


# a loss undefined in part of the space (a simulation that fails there) needs the steps kept out
_UNDEFINED = ("; where the loss is undefined in part of the space (a simulation that fails there), keep the "
              "steps inside it: docs/training.md, \"Bounds\"")


def capabilities(oracle) -> Capabilities:
    """Discover the optional capabilities of ``oracle`` (or of the oracle it wraps)."""
    if isinstance(oracle, Oracle):
        return oracle.caps
    return Capabilities(
        batch=has_methods(oracle, "batch"),
        coordinate=has_methods(oracle, "coordinate_losses"),
        split=has_methods(oracle, "prefix", "suffix") and len(getattr(oracle, "blocks", ())) > 0,
        data=has_methods(oracle, "bind"),
    )


def has_methods(oracle, *names) -> bool:
    """Whether ``oracle`` has every one of ``names`` as a callable: a protocol's ``isinstance``
    asks only for the attribute, so data kept as ``self.batch = (X, y)`` made an oracle a
    :class:`BatchOracle`, whose ``batch`` was then called."""
    return all(callable(getattr(oracle, name, None)) for name in names)


def loss_type(value) -> str:
    """The name of the type of a loss ``value``: its dtype's (``float32``, ``bfloat16``), else its
    Python type's (``float``, ``int``)."""
    return str(getattr(value, "dtype", type(value).__name__)).replace("torch.", "")


@functools.lru_cache(maxsize=64)  # (asked twice per batch / coordinate_losses / suffix call: its regex was
def precision_bits(name: str) -> int:  # 4 us of the 80 a batch estimate at d = 10 took)
    """Significant bits of losses of type ``name`` (a :func:`loss_type`): 0 for integers, 53 for
    float64, a Python float and types not judged."""
    if name.startswith(("int", "uint")):
        return 0
    if bits := re.fullmatch(r"float\d+_e\d+m(\d+)\w*", name):
        return int(bits.group(1)) + 1
    return {"float16": 11, "bfloat16": 8, "float32": 24}.get(name, 53)


def coarse_losses(value, loss: float, mu: float, params_dtype, typical, source=None) -> str:
    """Why differences of losses like ``value`` over ``mu`` are coarse, or empty: an integer loss
    (differences of 0 or at least 1 / mu), or a float32 / float16 one where params are float64
    (differences in steps of the loss's float spacing over mu). Checked on the base point's value,
    or on a fast path's narrower one (``source``: ``(method, the plain call's loss type)``, named in
    the message); coarse means a resolution above 1e-3 of the ``typical`` partial derivative
    estimated (their median magnitude: one large partial must not hide the rest). An integer 0 may
    be a sum that met every margin (``sum([])``): not judged."""
    name = loss_type(value)
    if name.startswith(("int", "uint")):
        if loss == 0:
            return ""
        step = 1.0
    elif name == "float16":
        step = float(np.spacing(np.float16(abs(loss))))
    elif name == "bfloat16":  # 8 significant bits
        step = abs(loss) * 2.0 ** -7
    elif bits := re.fullmatch(r"float\d+_e\d+m(\d+)\w*", name):  # float8_e4m3fn, float8_e5m2: m mantissa bits
        step = abs(loss) * 2.0 ** -int(bits.group(1))
    elif name == "float32" and np.dtype(params_dtype).itemsize == 8:
        step = float(np.spacing(np.float32(abs(loss))))
    else:
        return ""
    if callable(typical):  # (computed only here: the cases above need no gradient)
        typical = typical()
    if step / mu <= 1e-3 * typical:
        return ""
    fix = ("return the loss as a float64 (a Python float of a float64 computation), or raise mu"
           + (_JAX_X64 if name == "float32" and type(value).__module__.startswith(("jax.", "jaxlib.")) else "")
           if not name.startswith(("int", "uint")) else
           "return the loss unrounded as a float64 where it is a rounded one; a count (errors, events) moves in "
           "whole units whatever its type, so float(count) changes nothing: raise mu, or train on a smooth "
           "surrogate (a margin or cross-entropy loss)")
    who = ""
    if source is not None:  # a fast path narrower than the plain call: the estimate differences the two
        method, plain = source
        who = (f" (from its `{method}`, where its plain call returns {plain}: the estimate takes the base loss "
               "from the plain call and the perturbed ones from it)")
        fix = (f"make `{method}` compute the losses as the plain call does and return them unrounded "
               "(a float64 array), or raise mu" + (
                   "; where the plain call's loss is a count too (errors, events), it moves in whole units whatever "
                   "its type, so float(count) changes nothing: raise mu, or train on a smooth surrogate (a margin or "
                   "cross-entropy loss)" if name.startswith(("int", "uint")) else ""))
    return (f"the oracle returns {name} losses{who}: near the base loss {loss:.6g} they are {step:.3g} apart, so "
            f"a difference over mu = {mu:g} resolves a partial derivative only to {step / mu:.3g}; {fix}")


# a JAX loss is float32 because JAX computes in float32 by default: float(loss) keeps its roundings
_JAX_X64 = ("; JAX computes in float32 unless its x64 mode is on: jax.config.update(\"jax_enable_x64\", True) "
            "at the start of the script (or JAX_ENABLE_X64=1 in the environment), with float64 params")


_ASYNC_HINT = ("zoracle calls the oracle synchronously, and an `async def` oracle returns a coroutine, not a loss: "
               "wrap it in a plain function, `def loss(x): return asyncio.run(aloss(x))`; inside a running event "
               "loop (Jupyter, an async app), run zoracle in a thread there: "
               "`await asyncio.to_thread(zo.train, loss, ...)`")


def _awaitable(value, what: str) -> ArgumentError | None:
    """The error for ``value``, an awaitable (a coroutine) where a loss or an oracle was expected, or None.
    A coroutine is closed, so that no 'coroutine was never awaited' warning follows the error."""
    if not inspect.isawaitable(value):
        return None
    if inspect.iscoroutine(value):
        value.close()
    if TOLD.get():  # (an AskTell's caller told it: the hint's code above is an oracle's)
        return ArgumentError("a coroutine is no loss; await it (`await aloss(x)`, or `asyncio.run(aloss(x))` "
                             "outside an event loop) and tell the number it gives")
    return ArgumentError(f"{what} returned {type(value).__name__} {getattr(value, '__qualname__', '')!s}".rstrip()
                         + f"; {_ASYNC_HINT}")


def reject_async(fn) -> None:
    """Refuse, before any query, an oracle (or a capability method of one) defined with ``async def``."""
    for name in ("__call__", "batch", "coordinate_losses", "prefix", "suffix", "bind"):
        f = fn if name == "__call__" else getattr(fn, name, None)
        if f is None:
            continue
        if name == "__call__" and not inspect.iscoroutinefunction(f):
            f = getattr(type(fn), "__call__", None)  # a class with `async def __call__`
        if inspect.iscoroutinefunction(f):
            what = "the oracle" if name == "__call__" else f"the oracle's `{name}`"
            hint = _ASYNC_HINT if name == "__call__" else (
                f"zoracle calls `{name}` synchronously, and an `async def` method returns a coroutine: rename it "
                f"`a{name}` and add a plain one, `def {name}(self, *args): return asyncio.run(self.a{name}(*args))`; "
                "inside a running event loop (Jupyter, an async app), run zoracle in a thread there: "
                "`await asyncio.to_thread(zo.train, oracle, ...)`")
            raise ArgumentError(f"{what} ({getattr(f, '__qualname__', type(fn).__name__)}) is an `async def` "
                                f"function; {hint}")


def _describe(value) -> str:
    return Shown(short_repr(value))  # (a repr that fails must not hide the real report)


# one number per query is all zoracle reads: a (loss, metrics) pair or a dict of them is refused, pointing here
def _metrics() -> str:
    return (f"; metrics beside the loss (an accuracy) go in {told('`train`', 'AskTell')}'s `eval_fn`, which the "
            "history records per epoch, or in a step callback: docs/training.md, \"Metrics beside the loss\"")


def _do() -> str:
    """What a fix asks for the loss: ``return`` it (an oracle), or ``tell`` it (an AskTell's caller)."""
    return told("return", "tell")


def _fix_for(value) -> str:
    """The fix for a loss ``value`` refused for its type (``: ...``), or empty: a (loss, metrics) tuple,
    a dict, None, a boolean, text, a complex number, a tensor on the meta device."""
    dtype = str(getattr(value, "dtype", ""))
    if isinstance(value, dict):
        key = next((k for k in value if k in ("loss", "objective", "value")), None)
        return (f": {_do()} the loss alone, a float ({f'`out[{key!r}]`' if key is not None else 'not a dict'})"
                + _metrics())
    if isinstance(value, (tuple, list)):
        return (f": {_do()} the number itself, a float (`out[0]`)" if len(value) == 1 else
                f": {_do()} the loss alone, a float (`loss`, not `(loss, ...)`), one number per "
                + told("query", "point") + _metrics())
    if value is None:
        return told(": the oracle returned nothing; does every path of it end in `return loss`?",
                    ": no loss was told for it (JSON's null: JavaScript's JSON.stringify writes NaN and Infinity as "
                    "null); tell a number for every point (measure a failed point again; or, "
                    "with a checkpoint, close() now and resume=True later, which asks this step's points again)")
    if isinstance(value, (bool, np.bool_)) or "bool" in dtype:
        return (f": a boolean (a comparison, a success flag) is no loss, nor 0 or 1 of one; {_do()} the number it "
                "compares (a float)")
    if isinstance(value, (str, bytes, np.str_, np.bytes_)):
        return ": text is not read as a number; parse it " + told("where the oracle reads it", "before telling it") \
            + " (`float(text)`)"
    if isinstance(value, (complex, np.complexfloating)) or "complex" in dtype:
        return f": {_do()} its real part (`loss.real`) where the imaginary part is zero by construction"
    if getattr(getattr(value, "device", None), "type", None) == "meta":
        return (": a tensor on the meta device holds no values (a model built under torch.device('meta') or with "
                "empty weights); materialize it first (model.to_empty(device='cpu'), then initialize or load its "
                "weights)")
    return ""


def check_scalar(value, query: str) -> float:
    """``value`` as a Python float, or :class:`OracleError` naming ``query``."""
    if type(value) is float and math.isfinite(value):  # the common case, on every query
        return value
    if isinstance(value, np.ma.MaskedArray) and np.ma.is_masked(value):  # .item() reads the hidden data
        raise OracleError(query, _describe(value), detail="expected a finite real scalar, got a masked value")
    dtype = getattr(value, "dtype", None)
    kind, name = getattr(dtype, "kind", ""), str(dtype)  # NumPy dtypes have a kind; torch's a name
    if (isinstance(value, (bool, np.bool_, str, bytes, complex, np.complexfloating)) or (kind and kind in "bcUS")
            or "bool" in name or "complex" in name):  # text parses as a number, a boolean as 0 or 1: not losses
        raise OracleError(query, _describe(value), detail="expected a finite real scalar" + _fix_for(value))
    shape = getattr(value, "shape", ())
    if shape not in ((), (1,)):
        shape = tuple(shape)
        size = math.prod(shape)
        fix = (f"{_do()} `loss.item()`, a float (a 1-element array of more dimensions, which SciPy takes, is refused: "
               "it is often a loss not yet reduced)" if size == 1 else
               "reduce it to one number (`.mean()`)" if size else
               f"an empty array holds no loss (a mask or a batch that selected nothing?): {_do()} one number, a float")
        raise OracleError(query, _describe(value), detail=f"expected a scalar, got shape {shape}: {fix}")
    try:
        out = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, OverflowError, RuntimeError, NotImplementedError) as exc:  # (torch: a meta tensor)
        if (why := _awaitable(value, "the oracle")) is not None:  # an async oracle wrapped so as to hide it
            raise OracleError(query, _describe(value), detail=str(why)) from None
        raise OracleError(query, _describe(value),
                          detail=f"expected a finite real scalar ({exc_text(exc)}){_fix_for(value)}") from None
    if not np.isfinite(out):
        raise OracleError(query, out, detail=f"expected a finite loss{_UNDEFINED}")
    return out


def _vector_fix(values, n: int, arr=None) -> str:
    """The fix for losses ``values`` of a call answering ``n`` queries, refused for their type or shape
    (``arr``: them as an array, where they converted), or empty."""
    if isinstance(values, (tuple, list)) and any(  # (losses, metrics), [(loss, acc), ...], [{"loss": ...}, ...]
            isinstance(v, (tuple, list, dict)) or tuple(getattr(v, "shape", ())) not in ((), (1,)) for v in values):
        return f": {_do()} the {n} losses alone, a list or a ({n},) array, {_in_order('one number')}{_metrics()}"
    if hasattr(values, "__next__"):  # a generator, a map: read once, not an array
        return f": {_do()} a list or an array of the {n} losses (`list(...)`), not an iterator"
    if isinstance(values, dict):
        return f": {_do()} the {n} losses alone, a list or a ({n},) array, {_in_order('one number')}{_metrics()}"
    if arr is None or values is None or getattr(values, "is_meta", False):
        return _fix_for(values)
    if np.iscomplexobj(arr) or arr.dtype == bool:
        return _fix_for(arr.flat[0] if arr.size else arr)
    if arr.ndim == 0 and n == 1:  # (no reduction: a one-row result squeezed, `.squeeze()` or `.item()`)
        return f": a one-row call's loss squeezed to a scalar; {_do()} a (1,) array (`np.atleast_1d(losses)`)"
    if arr.ndim == 0:
        return (f": one number for all {n} queries (a loss reduced over them, `.mean()`?); {_do()} one loss per "
                + told("query, in their order", "point, in its rows' order"))
    if arr.size == n and arr.ndim > 1:
        return f": {_do()} them as a ({n},) array, {_in_order('one loss')} (`losses.reshape(-1)`)"
    return f": {_do()} {n} losses, " + told("one per query in their order", "one per point of the last ask(), in its "
                                           "rows' order")


def _in_order(each: str) -> str:
    """``each`` (one number, one loss) per query in their order, or per told point in its rows' order."""
    return told(f"{each} per query in their order", f"{each} per point, in its rows' order")


_BOOLS = frozenset((bool, np.bool_))  # (a type lookup at C speed, not an isinstance per loss: bool has no subclasses)


def check_vector(values, n: int, query_of: Callable[[int], str], what: str) -> np.ndarray:
    """``values`` as a finite float64 host array of shape ``(n,)``.

    ``query_of(j)`` names query ``j``; ``what`` names the whole call for shape errors.
    """
    if isinstance(values, np.ma.MaskedArray) and np.ma.is_masked(values):  # np.asarray drops the mask
        j = int(np.flatnonzero(np.ma.getmaskarray(values).reshape(-1))[0])
        raise OracleError(query_of(j) if np.shape(values) in ((n,), (n, 1)) else what, _describe(values),
                          detail="expected finite losses, got masked values")
    try:
        arr = real_numpy(values, np.float64)  # (bfloat16 and float8 losses: real numbers)
    except Exception as exc:
        raise OracleError(what, _describe(values),
                          detail=f"could not convert to an array ({exc}){_vector_fix(values, n)}") from None
    listed = isinstance(values, (list, tuple)) and len(values) == n
    if arr.shape in ((n,), (n, 1)) and (arr.dtype.kind == "O" or (arr.dtype.kind in "US" and listed) or (
            listed and arr.dtype.kind == "f" and not _BOOLS.isdisjoint(map(type, values)))):
        # a None (a NaN that JSON sent as null), a string or a boolean among the losses: named by its row,
        # as a NaN is, each row checked as a plain call's loss (np.asarray turns numbers beside text into
        # text, and a boolean beside numbers into 0 or 1)
        items = values if arr.dtype.kind != "O" else arr.reshape(-1)
        return np.array([check_scalar(v, query_of(j)) for j, v in enumerate(items)], dtype=np.float64)
    if np.iscomplexobj(arr) or arr.dtype == bool or arr.dtype.kind not in "fiu":
        if (why := _awaitable(values, "the oracle")) is not None:  # an `async def batch` (or a wrapper hiding one)
            raise OracleError(what, _describe(values), detail=str(why))
        raise OracleError(what, _describe(values), detail="expected real losses" + _vector_fix(
            values, n, arr if np.iscomplexobj(arr) or arr.dtype == bool else None))
    arr = arr.astype(np.float64, copy=False).reshape(-1) if arr.shape in ((n,), (n, 1)) else arr
    if arr.shape != (n,):
        raise OracleError(what, _describe(values),
                          detail=f"expected {n} losses, got shape {arr.shape}{_vector_fix(values, n, arr)}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        j = int(bad[0])
        raise OracleError(query_of(j), float(arr[j]),
                          detail=f"expected a finite loss ({bad.size} non-finite in this call){_UNDEFINED}")
    return arr


def readonly(params):
    """``params`` as the oracle may see it: a read-only NumPy view, or a private copy.

    A view costs nothing and makes ``x += 1`` inside an oracle raise instead of silently
    corrupting every later query of the estimate. Arrays without a read-only flag (CuPy)
    are copied.
    """
    if isinstance(params, np.ndarray):
        if not params.flags.writeable:  # already protected (e.g. a row of a read-only batch view)
            return params
        view = params.view()
        view.flags.writeable = False
        return view
    return params.copy()


def compute_dtype_of(oracle):
    """The oracle's declared ``compute_dtype`` as a NumPy dtype, or None when it declares none.
    A torch dtype (``torch.float32``) is read by its name; anything else that is not a dtype
    is refused naming the attribute (a torch dtype was ignored: a zero gradient at a mu below
    float32's spacing, silently)."""
    cd = getattr(oracle, "compute_dtype", None)
    if cd is None:
        return None
    name = str(cd).rsplit(".", 1)[-1] if type(cd).__module__ == "torch" else cd
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is not None and dtype.kind == "f":
        return dtype
    if dtype is not None or getattr(cd, "is_floating_point", False):
        # bfloat16 (NumPy has it only through ml_dtypes, as a kind-"V" type) and other non-IEEE floats
        raise ArgumentError(f"the oracle's `compute_dtype` is {dtype if dtype is not None else name}, which zoracle "
                            "does not estimate in (its "
                            "params are float32 or float64); evaluate in float32 and set compute_dtype = np.float32")
    raise ArgumentError(f"the oracle's `compute_dtype` must be a float dtype (np.float32, torch.float32 or "
                        f"'float32'), got {cd!r}")


#: the oracles (held weakly) whose prefix, suffix or coordinate_losses wrote into a read-only view: the wrapper
#: of a later estimate gives them copies from its first call. Each estimate wraps its oracle afresh, and such an
#: oracle was called twice at its first call of every estimate (a train step each time): the call's work, and
#: what it did before its write, twice
_WRITERS: "weakref.WeakSet" = weakref.WeakSet()


def _writer(fn, wrote=None) -> bool:
    """Whether ``fn`` wrote into its read-only view in an earlier call; with ``wrote``, noted so first."""
    try:
        if wrote:
            _WRITERS.add(fn)
        elif wrote is not None:
            _WRITERS.discard(fn)
        return fn in _WRITERS
    except TypeError:  # no weak reference to it, or unhashable: each estimate finds out anew
        return bool(wrote)


def private(params):
    """A fresh copy of ``params`` (for capability calls, made once per call of many queries)."""
    return params.copy()


def _feature_items(features):
    """The arrays a ``prefix`` returned: the value itself, or the items of a tuple, list or dict
    (their subclasses too: a namedtuple, an OrderedDict)."""
    if isinstance(features, (tuple, list)):
        return features
    return features.values() if isinstance(features, dict) else (features,)


def shared_features(features):
    """``features`` as a ``suffix`` call sees them: NumPy arrays (the value, or the items of a
    tuple, list or dict, a namedtuple's or an OrderedDict's too) as read-only views, free; anything
    else as it is. One block's features go to every suffix call of the block (each chunk of
    coordinates, both steps of a central scheme): a suffix that wrote into them (``feats += ...``,
    an in-place ReLU) moved the later calls' losses, a central gradient off by orders of magnitude
    (a namedtuple's arrays, passed on as they were, by 31,000)."""
    def view(a):
        return readonly(a) if isinstance(a, np.ndarray) else a

    if not isinstance(features, (tuple, list, dict)):
        return view(features)
    if type(features) in (tuple, list):
        return type(features)(view(a) for a in features)
    if type(features) is dict:
        return {k: view(a) for k, a in features.items()}
    try:  # a subclass: rebuilt as its own type (a namedtuple by its fields, a dict's keeps its default)
        if isinstance(features, tuple):
            items = [view(a) for a in features]
            return features._make(items) if hasattr(features, "_make") else type(features)(items)
        out = copy.copy(features)
        for k in list(out.keys()) if isinstance(out, dict) else range(len(out)):
            out[k] = view(out[k])
        return out
    except Exception:  # noqa: BLE001 - a container that cannot be rebuilt so: as it is
        return features


def _tensor_versions(features) -> list:
    """``(tensor, version)`` of each torch tensor among the features: a write in place moves its
    version counter (tensors have no read-only flag)."""
    out = []
    for a in _feature_items(features):
        if type(a).__module__.startswith("torch"):
            try:
                out.append((a, a._version))
            except (AttributeError, RuntimeError):  # an inference-mode tensor keeps no version (nor takes writes)
                pass
    return out


def check_features(seen, block, what) -> None:
    """Raise :class:`OracleError` where a tensor of ``seen`` (:func:`_tensor_versions` of a block's
    features, taken before a suffix call) was written in place by the call."""
    if any(t._version != v for t, v in seen):
        raise OracleError(what, cause=RuntimeError(f"suffix wrote into the features prefix(params, {block}) "
                                                   "returned, a tensor written in place"),
                          detail="every suffix call of the block gets these features (each chunk of coordinates, "
                                 "both steps of a central scheme): compute out of place inside the oracle "
                                 "(h = features + ..., not features.add_(...))")


_READONLY_HINT = (
    "the oracle tried to modify an array it was given (the parameters, the coordinates of "
    "coordinate_losses / suffix, or suffix's features, which every suffix call of a block shares), which are "
    "read-only so that no query can corrupt another; work on a copy (x = x.copy(), local = coords - start, "
    "h = features + ...) inside the oracle"
)


# how a write into a read-only array is refused: NumPy and Cython ("read-only"), a memoryview or ctypes'
# from_buffer ("read-only memory", "not writable"), np.ctypeslib.as_ctypes ("readonly"), pybind11 ("not
# writeable"), torch.from_numpy's warning turned into an error (-W error, pytest's filterwarnings)
_WRITE_REFUSED = re.compile(r"read-?only|not writ(e)?able", re.IGNORECASE)


def write_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is a refusal to write into (or to take as writable) a read-only array."""
    return (isinstance(exc, (ValueError, TypeError, BufferError, Warning))
            and bool(_WRITE_REFUSED.search(exc_text(exc))))


def _is_torch_module(fn) -> bool:
    """Whether ``fn`` is a ``torch.nn.Module`` (read from its classes: the core does not import torch)."""
    return any(c.__name__ == "Module" and c.__module__ == "torch.nn.modules.module" for c in type(fn).__mro__)


def _raised(query: str, exc: Exception, fn=None) -> OracleError:
    if write_refused(exc):
        detail = _READONLY_HINT
    elif isinstance(exc, (TypeError, AttributeError)) and fn is not None and _is_torch_module(fn) and next(
            fn.parameters(), None) is not None:  # (a module written to take the params works, and is not refused)
        detail = (f"the oracle is a torch module ({type(fn).__name__}), called with the flat NumPy params as its "
                  "input: a model maps inputs to outputs, an oracle params to a loss; wrap the model and its "
                  "loss, oracle = TorchOracle(model, loss_fn) from zoracle.adapters.torch, start from "
                  "oracle.initial_params(), and give it the data as zo.train's `batches` or by "
                  "oracle.bind((x, y)) (docs/pytorch.md)")
    else:
        detail = ""
    return OracleError(query, cause=exc, detail=detail)


class Oracle:
    """One picklable wrapper around a user oracle: validates, casts, counts.

    Parameters
    ----------
    fn : callable
        The user's oracle, ``params -> float``, optionally with the capability methods.

    Notes
    -----
    ``nfev`` counts loss values the oracle produced through this wrapper (a batch of ``k``
    rows counts ``k``). Parameters are passed in the caller's dtype; losses come back as
    float64 on the host.

    No oracle can corrupt a later query through the array it is given: a single query gets
    a read-only view (free; ``fresh=True`` gives a private copy instead, used once per
    estimate for the base point; plain-call CGE edits one array between its queries, so
    successive queries may get the same view object with other contents: an oracle must not
    cache by identity; one that writes past the read-only flag has the queries that may have
    read its write run again, which ``nfev`` does not count). ``coordinate_losses``, ``prefix``
    and ``suffix`` get a read-only view (a split estimate makes one or two such calls per block,
    a coordinate one a call per 2048 queries, and a copy of all d parameters for each was most
    of its time at large d); one that writes into it (NumPy, ctypes or a C extension refuses; or
    takes it as writable: ``torch.from_numpy``'s warning as an error) is called again with its own
    copy, as is every later call (later estimates' too), and one that writes past the read-only flag
    (``torch.from_numpy``) fails its task with an :class:`OracleError`.
    A batch is built fresh for each call and never reused.
    """

    def __init__(self, fn):
        if isinstance(fn, Oracle):
            fn = fn.fn
        if (exc := _awaitable(fn, "`bind(batch)` or the code that made the oracle")) is not None:
            raise exc
        reject_async(fn)
        if not callable(fn):
            from ._errors import ArgumentError

            raise ArgumentError(
                f"`oracle` must be callable (params -> float), got {type(fn).__name__}; "
                "wrap your model in a function or use an adapter from zoracle.adapters"
            )
        self.fn = fn
        self.caps = capabilities(fn)
        self.nfev = 0
        # prefix / suffix / coordinate_losses wrote into a read-only view (here or in an earlier estimate): a
        # copy per call from then on
        self.own_copies = _writer(fn)
        # tasks run at once in threads of this process (a threading executor's): a split or coordinate task
        # copies the parameters for its calls' views (see CoordTask.run)
        self.threads_share_params = False
        self.base_value = None  # what the oracle returned at the base point, as it returned it
        self.base_source = None  # (method, the plain call's loss type) where a fast path's narrower losses replaced it

    # plain calls -----------------------------------------------------------------------
    def __call__(self, params, query: str = "the query point", fresh: bool = False) -> float:
        try:
            value = self.fn(private(params) if fresh else readonly(params))
        except OracleError:
            raise
        except Exception as exc:
            raise _raised(query, exc, self.fn).at_params(params) from exc
        self.nfev += 1
        if fresh:  # the base point: its type tells the losses' precision (see coarse_losses)
            self.base_value = value
        try:
            return check_scalar(value, query)
        except OracleError as exc:  # a NaN from a solver that fails there: at which params
            exc.at_params(params)
            raise

    def _vector(self, thunk, n, query_of, what, method) -> np.ndarray:
        try:
            values = thunk()
        except OracleError:
            raise
        except Exception as exc:
            raise _raised(what, exc) from exc
        self.nfev += n
        dtype = getattr(values, "dtype", None)
        if dtype is None and isinstance(values, (list, tuple)) and values and not isinstance(values[0], float):
            # a list of losses (list(arr32), [net(x) for x in X]): its items tell the precision
            dtype = getattr(values[0], "dtype", type(values[0]).__name__)
        if dtype is not None and n and getattr(values, "ndim", 1):  # (a 0-d value, one loss for all: refused below)
            seen = self.base_value
            if precision_bits(str(dtype).replace("torch.", "")) < precision_bits(
                    "float64" if seen is None else loss_type(seen)):
                # losses narrower than the base point's (a batch returning float32 beside a float64 plain
                # call; bfloat16 beside a np.float32 one, which was not compared) quantize the differences:
                # one of them tells the precision (see coarse_losses)
                self.base_value = values[0]
                if seen is not None and self.base_source is None:
                    self.base_source = (method, "a Python float" if isinstance(seen, float) else loss_type(seen))
        try:
            return check_vector(values, n, query_of, what)
        except OracleError as exc:  # which method returned it: an oracle may have several (batch, coordinate_losses)
            if exc.args and isinstance(exc.args[0], str) and exc.args[0].startswith("oracle returned "):
                exc.args = (f"oracle's `{method}` returned {exc.args[0][len('oracle returned '):]}", *exc.args[1:])
            raise

    # capabilities ---------------------------------------------------------------------
    def batch(self, params_batch, query_of, what) -> np.ndarray:
        """The wrapped oracle's ``batch(params_batch)``, checked as ``(k,)`` finite float64 losses;
        ``query_of(j)`` names row ``j`` and ``what`` the whole call in an :class:`OracleError`."""
        try:
            return self._vector(lambda: self.fn.batch(params_batch), params_batch.shape[0], query_of, what, "batch")
        except OracleError as exc:
            if isinstance(exc.__cause__, TypeError):  # a `batch` method with another meaning (a data loader's)
                exc.args = (f"{exc.args[0]} (zoracle calls {type(self.fn).__name__}.batch(params_batch) as the "
                            "BatchOracle method, (k, d) parameter rows -> k losses; if your `batch` means something "
                            "else, rename it)", *exc.args[1:])
            raise

    def coordinate_losses(self, params, coords, step, query_of, what) -> np.ndarray:
        """The wrapped oracle's ``coordinate_losses(params, coords, step)`` on a read-only view of
        ``params`` (as :meth:`prefix`; a copy per call of 2048 queries was 85% of a sparse estimate's
        time over 100,000 coordinates at d = 1e7), checked as :meth:`batch` checks (``query_of``,
        ``what``)."""
        return self._vector(lambda: self._split_call(lambda p: self.fn.coordinate_losses(p, coords, step), params),
                            len(coords), query_of, what, "coordinate_losses")

    @property
    def blocks(self) -> Sequence[slice]:
        """The wrapped oracle's ``blocks`` (a :class:`SplitOracle`'s contiguous parameter blocks)."""
        return self.fn.blocks

    def _split_call(self, call, params):
        """``call(p)``, ``p`` a read-only view of ``params``: a copy per prefix / suffix call cost O(d)
        each, most of a sparse estimate's time at d = 1e7 with few coordinates per block. An oracle
        that writes into it (NumPy, ctypes or a C extension refuses it: :func:`write_refused`) is
        called again with its own copy, as it always got one, and so is every later call (a write
        past the read-only flag is caught by the task)."""
        if self.own_copies or not isinstance(params, np.ndarray):
            return call(private(params))
        try:
            return call(readonly(params))
        except (ValueError, TypeError, BufferError, Warning) as exc:  # (a C extension's refusal, a warning as error)
            if not write_refused(exc):
                raise
        self.own_copies = _writer(self.fn, True)
        try:
            return call(private(params))
        except (ValueError, TypeError, BufferError, Warning) as exc:  # read-only again: the coordinates it was
            if write_refused(exc):  # given, not the parameters
                self.own_copies = _writer(self.fn, False)
            raise

    def prefix(self, params, block: int):
        """The wrapped oracle's ``prefix(params, block)`` on a read-only view of ``params``."""
        try:
            return self._split_call(lambda p: self.fn.prefix(p, block), params)
        except OracleError:
            raise
        except Exception as exc:
            raise _raised(f"prefix of block {block}", exc) from exc

    def suffix(self, features, params, block, coords, step, query_of, what) -> np.ndarray:
        """The wrapped oracle's ``suffix(features, params, block, coords, step)`` (the features
        read-only, a torch tensor among them written in place an :class:`OracleError`), checked as
        :meth:`batch` checks (``query_of``, ``what``)."""
        seen = _tensor_versions(features)
        values = self._vector(lambda: self._split_call(
            lambda p: self.fn.suffix(shared_features(features), p, block, coords, step), params), len(coords), query_of,
            what, "suffix")
        check_features(seen, block, what)
        return values

    def __repr__(self) -> str:
        return f"Oracle({self.fn!r}, caps={self.caps})"
