"""The one place that chooses the array backend.

The backend follows the data: CuPy parameters keep the whole estimate on the GPU, NumPy
parameters never import CuPy. CuPy is detected through ``sys.modules`` (if the caller holds
a CuPy array, CuPy is already imported), never imported here.
"""

from __future__ import annotations

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
    """A NumPy view or copy of ``x`` (device-to-host copy for CuPy arrays)."""
    if is_cupy(x):
        return x.get()
    return np.asarray(x)


def asarray_like(values, like):
    """``values`` as an array on the same backend as ``like``."""
    return namespace(like).asarray(values)
