"""The one place that chooses the array backend.

The backend follows the data: CuPy parameters keep the whole estimate on the GPU, NumPy
parameters never import CuPy. CuPy is detected through ``sys.modules`` (if the caller holds
a CuPy array, CuPy is already imported), never imported here.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

__all__ = ["namespace", "is_cupy", "to_numpy", "asarray_like"]


def is_cupy(x) -> bool:
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


def namespace(*arrays):
    """Return the array module (``numpy`` or ``cupy``) for ``arrays``.

    Mixing CuPy and NumPy arrays resolves to CuPy; plain Python values count as NumPy.
    """
    for a in arrays:
        if is_cupy(a):
            return sys.modules["cupy"]
    return np


def to_numpy(x) -> np.ndarray:
    """A NumPy view or copy of ``x`` (device-to-host copy for CuPy arrays, also those in a list or
    tuple: ``np.asarray`` refuses a CuPy array, so a batch oracle's ``[loss(p) for p in rows]`` of
    0-d CuPy losses was refused where its plain call's 0-d loss was taken)."""
    if is_cupy(x):
        return x.get()
    if isinstance(x, (list, tuple)) and "cupy" in sys.modules and any(is_cupy(v) or isinstance(v, (list, tuple))
                                                                      for v in x):
        return np.asarray([to_numpy(v) for v in x])
    return np.asarray(x)


def jax_x64(env: dict) -> None:
    """Set ``JAX_ENABLE_X64`` in ``env`` (a worker process's environment) to JAX's x64 switch as the
    driver has it now, where the driver imported JAX (read through ``sys.modules``, never imported).
    ``jax.config.update("jax_enable_x64", True)`` in the driver's script does not reach a fresh
    interpreter: its jitted oracle computed in float32 where the serial run computed in float64 (an
    estimate 0.1-4% off at mu = 5e-3, all 0 at 1e-6, with a warning to return float64 losses)."""
    x64 = getattr(getattr(sys.modules.get("jax"), "config", None), "jax_enable_x64", None)
    if isinstance(x64, bool):  # (the driver's value now, over an inherited JAX_ENABLE_X64 it changed since)
        env["JAX_ENABLE_X64"] = "1" if x64 else "0"


def jax_x64_runtime_env(kw: dict) -> None:
    """:func:`jax_x64` for the workers of a local Ray session: ``ray.init``'s ``kw`` gets it in its
    ``runtime_env``'s ``env_vars`` (a value the caller set there kept). Ray's workers import nothing of
    the driver's script (Dask's spawned ones re-import it, and with it a top-level config.update)."""
    env: dict = {}
    jax_x64(env)
    if env:
        runtime = dict(kw.get("runtime_env") or {})
        runtime["env_vars"] = {**env, **(runtime.get("env_vars") or {})}
        kw["runtime_env"] = runtime


def same_values(a, b) -> bool:
    """Whether two fields of a result hold the same values: arrays (NumPy or CuPy) by shape and
    value, a NaN equal to a NaN (a reloaded or copied result equals the original); None only None."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):  # a state of several arrays
        return type(a) is type(b) and len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_values(a[k], b[k]) for k in a)
    try:
        na, nb = to_numpy(a), to_numpy(b)
    except (TypeError, ValueError):  # (not an array: an object of an estimator's own)
        return bool(a == b)
    if na.dtype == object or nb.dtype == object:
        if na.ndim == 0 or nb.ndim == 0:  # an object NumPy wrapped, not an array: its one element is
            return a is b or bool(a == b)  # the object again (compared element-wise: RecursionError)
        return na.shape == nb.shape and all(same_values(x, y) for x, y in zip(na.ravel(), nb.ravel()))
    a, b = na, nb
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc" and b.dtype.kind in "fc"))


def fields_hash(obj) -> int:
    """``hash`` of a frozen dataclass by its fields, as the generated one, each slice by its
    ``(start, stop, step)``: slices are unhashable before Python 3.12, so the generated hash of a
    record holding one (a block, a parameter's place) raised TypeError in a set or as a dict key."""
    def key(v):
        if isinstance(v, slice):
            return ("slice", v.start, v.stop, v.step)
        return tuple(key(x) for x in v) if isinstance(v, tuple) else v

    return hash(tuple(key(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.compare))


def real_numpy(x, wide) -> np.ndarray:
    """``x`` (a torch tensor, a CuPy or NumPy array) as a NumPy array, a float type NumPy has no
    name for converted to ``wide`` (float32 or float64, which hold it exactly): torch's bfloat16
    and float8 tensors (autocast), ml_dtypes' kind-"V" arrays (JAX's)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        try:
            return np.asarray(x.numpy())
        except TypeError:
            if not x.is_floating_point():
                raise
            return x.double().numpy().astype(wide, copy=False)
    arr = np.asarray(to_numpy(x))
    if arr.dtype.kind == "V" and arr.dtype.names is None and arr.dtype.name.startswith(("bfloat16", "float")):
        arr = arr.astype(wide)
    return arr


def asarray_like(values, like):
    """``values`` as an array on the same backend as ``like``."""
    return namespace(like).asarray(values)
