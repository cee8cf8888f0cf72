"""A stand-in for CuPy on a machine without a GPU, for tests only: ``install(monkeypatch)`` puts a
module named ``cupy`` into ``sys.modules`` for one test, so zoracle's CuPy branches run on the CPU.

Its arrays wrap NumPy arrays in a type of their own (not an ``ndarray`` subclass), and refuse what
real CuPy refuses: an implicit conversion to NumPy (``np.asarray(x)``, ``np.array(x)``: TypeError,
use ``.get()`` or ``cupy.asnumpy``) and a NumPy array mixed into a CuPy operation (``x + host``).
NumPy functions and ufuncs called on them dispatch to the fake device and return its arrays, as
CuPy's ``__array_function__`` and ``__array_ufunc__`` do. ``.flags`` has no ``writeable`` (CuPy
arrays have no read-only flag). ``transfers`` counts device-to-host copies (``.get()``,
``asnumpy``), ``uploads`` host-to-device ones (``asarray`` of a NumPy array).
"""

from __future__ import annotations

import sys
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

_MESSAGE = ("Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly.")

counts = {"transfers": 0, "uploads": 0}


def _wrap(value):
    if isinstance(value, np.ndarray):
        return ndarray(value)
    if isinstance(value, np.generic) and not isinstance(value, (np.str_, np.bytes_, np.void)):
        return ndarray(np.asarray(value))  # CuPy reductions return 0-d device arrays, not scalars
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _unwrap(value, host_ok=False):
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, np.ndarray) and not host_ok:
        raise TypeError(f"Unsupported type {type(value)} (a NumPy array in a CuPy operation)")
    if isinstance(value, (tuple, list)):
        return type(value)(_unwrap(v, host_ok) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v, host_ok) for k, v in value.items()}
    return value


class _Flags:
    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = a.flags.owndata


class ndarray(NDArrayOperatorsMixin):  # noqa: N801 (CuPy's name)
    """A fake device array: a NumPy array the host cannot read without ``.get()``."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, a):
        object.__setattr__(self, "_a", a)

    def __array__(self, dtype=None, copy=None):
        raise TypeError(_MESSAGE)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if "out" in kwargs:
            kwargs["out"] = tuple(_unwrap(o) for o in kwargs["out"])
        return _wrap(getattr(ufunc, method)(*_unwrap(inputs), **kwargs))

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __getattr__(self, name):
        if name.startswith("__") or name in ("setflags", "ctypes", "tobytes", "tofile"):
            raise AttributeError(f"'cupy.ndarray' object has no attribute '{name}'")
        value = getattr(self._a, name)
        if callable(value):
            return lambda *a, **k: _wrap(value(*_unwrap(a, host_ok=True), **_unwrap(k, host_ok=True)))
        return _wrap(value)

    @property
    def data(self):  # CuPy's MemoryPointer: its address (torch's data_ptr() after DLPack)
        return types.SimpleNamespace(ptr=self._a.ctypes.data)

    @property
    def flags(self):
        return _Flags(self._a)

    def __dlpack__(self, *args, **kwargs):  # (torch.from_dlpack: a CPU tensor here, a CUDA one from CuPy)
        return self._a.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()

    def get(self, stream=None, order="C", out=None):
        counts["transfers"] += 1
        return np.array(self._a, order=order)

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key, host_ok=True)])

    def __setitem__(self, key, value):
        self._a[_unwrap(key, host_ok=True)] = _unwrap(value, host_ok=True)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(v) for v in self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return self._a.__index__()

    def __complex__(self):
        return complex(self._a)

    def __bool__(self):
        return bool(self._a)

    def __format__(self, spec):
        return format(self._a, spec)

    def __repr__(self):
        return repr(self._a).replace("array(", "fakecupy.array(", 1)

    __hash__ = None

    def __copy__(self):
        return ndarray(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray(self._a.copy())

    def __reduce__(self):  # pickles as a device array (as CuPy's do): the other side needs the module
        return (_rebuild, (self._a,))


def _rebuild(a):
    return ndarray(a)


# pickled by reference to the module ``cupy``: unpickling an array imports it, as CuPy's arrays do
ndarray.__module__ = _rebuild.__module__ = "cupy"


def asarray(a, dtype=None, order=None, **kwargs):
    if isinstance(a, ndarray):
        return ndarray(a._a.astype(dtype, copy=False) if dtype is not None else a._a)
    if isinstance(a, np.ndarray):
        counts["uploads"] += 1
    return ndarray(np.array(_unwrap(a, host_ok=True), dtype=dtype, order=order or "K", copy=True))


def array(a, dtype=None, copy=True, order="K", **kwargs):
    if isinstance(a, ndarray):
        return ndarray(np.array(a._a, dtype=dtype, copy=copy, order=order))
    return asarray(a, dtype=dtype)


def asnumpy(a, stream=None, order="C", out=None):
    if isinstance(a, ndarray):
        return a.get(order=order)
    return np.asarray(a, order=order)


def get_array_module(*args):
    return sys.modules.get("cupy") if any(isinstance(a, ndarray) for a in args) else np


class _Generator:
    """CuPy's ``random.Generator`` on the fake device (the draws are NumPy's)."""

    def __init__(self, seed=None):
        self._rng = np.random.default_rng(seed)

    def __getattr__(self, name):
        draw = getattr(self._rng, name)
        return lambda *a, **k: _wrap(np.asarray(draw(*a, **k)))


def _function(name, func):
    def call(*args, **kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))
    call.__name__ = name
    return call


def make_module():
    """A fresh module object named ``cupy`` (not in ``sys.modules`` until :func:`install`)."""
    mod = types.ModuleType("cupy", __doc__)
    mod.__version__ = "0.0.0+fake"
    mod.ndarray = ndarray
    mod._rebuild = _rebuild
    mod.asarray, mod.array, mod.asnumpy = asarray, array, asnumpy
    mod.get_array_module = get_array_module
    mod.counts = counts
    random = types.ModuleType("cupy.random")
    random.default_rng = _Generator
    random.Generator = _Generator
    mod.random = random
    device = types.SimpleNamespace(use=lambda: None, id=0)
    mod.cuda = types.SimpleNamespace(Device=lambda i=0: device,
                                     runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))

    def __getattr__(name):
        value = getattr(np, name)
        if isinstance(value, type) or not callable(value):
            return value  # dtypes (cupy.float32 is numpy.float32), constants
        return _function(name, value)

    mod.__getattr__ = __getattr__
    return mod


def install(monkeypatch):
    """Put a fresh fake ``cupy`` into ``sys.modules`` for this test (undone after it); the counts
    start at zero."""
    mod = make_module()
    counts.update(transfers=0, uploads=0)
    monkeypatch.setitem(sys.modules, "cupy", mod)
    return mod
