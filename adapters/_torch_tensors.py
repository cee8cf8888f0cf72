"""TorchOracle's tensors: parameters and batches read as torch tensors, their layout and
private copies, the features entering a block, and the rows of per-sample losses."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from zoracle._backend import is_cupy, namespace
from zoracle._errors import ArgumentError

from ._torch_channels import nhwc_on
from ._torch_layout import check_params_array, repeat_rows, to_torch


_CPU_BUDGET = 16 * 2**20
_GPU_BUDGET = 1024 * 2**20


def _compact(batch):
    """``batch`` with each torch tensor that views a larger storage replaced by a copy of its own
    elements (pickling a view sends its whole storage)."""
    def own(t):
        if torch.is_tensor(t) and t.untyped_storage().nbytes() > t.numel() * t.element_size():
            return t.clone()
        return t

    return type(batch)(own(t) for t in batch) if isinstance(batch, (tuple, list)) else batch

def _params_tensor(name: str, v, device, dtype) -> torch.Tensor:
    """``to_torch(v)`` for ``params`` / ``params_batch``; what torch cannot read as numbers (None,
    a dict, a string) is refused naming the argument (arrays and tensors skip the check)."""
    check_params_array(name, v)
    if torch.is_tensor(v) or isinstance(v, np.ndarray):
        t = to_torch(v, device, dtype)
    else:
        try:
            t = to_torch(v, device, dtype)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ArgumentError(f"`{name}` must be a NumPy array or torch tensor of numbers, got {type(v).__name__}: "
                                f"{str(exc)[:80]}") from None
    # to_torch keeps integers (class labels): integer or boolean params are the model's floats, as a
    # plain call's load takes them (a batch of int64 rows made int64 losses, 1.0 for 1.0986)
    return t if t.is_floating_point() or t.is_complex() else t.to(dtype=dtype)

def _batch_tensor(name: str, v, device, dtype=None, label=None) -> torch.Tensor:
    """``to_torch(v)`` for the bound batch's ``x`` or ``y``; an array torch cannot hold (strings,
    a pandas categorical of strings, a NumPy structured array) is refused naming the fix, not
    with torch's "too many dimensions 'str'" or "can't convert np.ndarray of type numpy.void".
    ``label`` names the argument in the messages (default: the batch's ``name``)."""
    label = label or f"`batch`'s {name}"
    try:
        return to_torch(v, device, dtype)
    except (TypeError, ValueError) as exc:
        a = v if isinstance(v, np.ndarray) else None
        if a is None and not torch.is_tensor(v) and not is_cupy(v):
            try:
                a = np.asarray(v)
            except Exception:  # noqa: BLE001 - nothing more to say than torch's error
                a = None
        if a is None:
            raise
        if a.dtype.names:
            raise ArgumentError(f"{label} is a NumPy structured array (fields {', '.join(a.dtype.names)}): "
                                f"TorchOracle runs tensors of numbers; pass numpy.lib.recfunctions."
                                f"structured_to_unstructured({name}), or np.column_stack([{name}[f] for f in "
                                f"{name}.dtype.names])") from None
        if a.dtype.kind in "USO" and a.size and isinstance(a.flat[0], (str, bytes)):
            raise ArgumentError(f"{label} holds strings ({str(a.flat[0])!r}, ...): TorchOracle runs tensors of "
                                f"numbers; map them to integer class indices, e.g. "
                                f"{name}_ids = np.unique({name}, return_inverse=True)[1] (a pandas categorical: "
                                f"{name}.cat.codes.to_numpy('int64'), the same codes for every batch)") from None
        raise ArgumentError(f"{label} ({type(v).__name__} of dtype {a.dtype}) cannot be made a tensor: "
                            f"{exc}") from None

def _private(t: torch.Tensor, source) -> torch.Tensor:
    """``t``, copied when it shares memory with the NumPy or CuPy array ``source``: a write into
    that array changes no torch version counter, and cached activations are keyed on them."""
    if torch.is_tensor(source):
        return t
    if isinstance(source, np.ndarray) and t.device.type == "cpu" and source.size and t.data_ptr() == source.ctypes.data:
        return t.clone(memory_format=torch.contiguous_format)
    if is_cupy(source) and source.size and t.data_ptr() == source.data.ptr:
        return t.clone(memory_format=torch.contiguous_format)
    return t

def _odd_layout(t: torch.Tensor) -> bool:
    """``t`` not 64-byte aligned, or not in the standard contiguous strides (a size-1 axis of
    ``images[:, None]`` fancy-indexed keeps stride 4, not the row length): vectorized kernels
    pick their reduction order, and a convolution its kernel, by both, and a worker's unpickled
    copy has neither oddity, so the driver's queries would differ from the workers' by an ulp."""
    if t.data_ptr() % 64:
        return True
    expect, acc = [], 1
    for n in reversed(t.shape):
        expect.append(acc)
        acc *= n
    return tuple(reversed(expect)) != t.stride()

def _same(old, params) -> bool:
    if type(old) is not type(params) or old.shape != params.shape:
        return False
    return torch.equal(old, params) if torch.is_tensor(params) else bool(namespace(params).array_equal(old, params))

def _keep(feats, k: int = 1, rows=None) -> tuple:
    """``(mask, fill)`` for run_owned: cached outputs of the steps a perturbation does not reach,
    repeated for ``k`` perturbations or gathered for the sample indices ``rows``."""
    if feats.keep is None:
        return ()
    mask, states = feats.keep
    if rows is not None:
        return mask, lambda j: states[j + 1][0].index_select(0, rows)
    return mask, lambda j: repeat_rows(states[j + 1][0], k)

def _nhwc(state: tuple) -> tuple:
    """4-D CPU float activations in channels-last layout: the CPU convolution, BatchNorm and
    elementwise kernels run markedly faster on it (mostly for the batched suffixes)."""
    return tuple(s.contiguous(memory_format=torch.channels_last) if nhwc_on(s) else s for s in state)

class _Features:
    """Activations entering a block (opaque to the planner), plus the fast path's caches."""

    __slots__ = ("block", "state", "out", "cache", "batch_size", "walk", "keep", "at", "x")

    def __init__(self, block, state, out, cache, batch_size, walk=None, keep=None):
        self.keep = keep  # (downstream mask, base states entering each step) or None
        self.at = self.x = None  # prefix's parameters and bound batch (suffix must get the same)
        self.block, self.state, self.out, self.cache, self.batch_size = block, state, out, cache, batch_size
        self.walk = walk  # channel-delta path: (stop step, absorbs?, base input at stop, base output)

    def __repr__(self):
        shapes = [tuple(s.shape) for s in self.state]
        return f"<features entering block {self.block}: {shapes}>"

def _persistent_buffers(model: nn.Module) -> dict:
    """``name -> buffer`` of the buffers ``state_dict`` holds: a non-persistent one (a RoPE table,
    a causal mask: ``register_buffer(..., persistent=False)``) is derived, not state."""
    out, seen = {}, set()
    for prefix, m in model.named_modules():
        skip = m._non_persistent_buffers_set
        for name, b in m._buffers.items():
            if b is not None and name not in skip and id(b) not in seen:
                seen.add(id(b))
                out[f"{prefix}.{name}" if prefix else name] = b
    return out

def _rows(vals: torch.Tensor) -> torch.Tensor:
    """Per-sample losses of shape ``(n, 1)`` (``MSELoss(reduction="none")`` on one output) as ``(n,)``."""
    return vals.reshape(-1) if vals.ndim == 2 and vals.shape[1] == 1 else vals

def _indices(coords) -> np.ndarray:
    """``coords`` as a flat int64 array of indices; a boolean mask is refused (read as 0s and 1s
    it would name the first two coordinates)."""
    a = np.asarray(coords)
    if a.dtype == bool:
        raise ArgumentError("`coords` must be integer indices, got a boolean array; pass np.flatnonzero(mask)")
    if a.ndim == 2 and a.shape[1] == 1:  # np.argwhere's column of indices
        a = a[:, 0]
    if a.size and (a.dtype.kind not in "iu" or a.ndim > 1):  # 0.9 and 2.5 were read as 0 and 2
        raise ArgumentError(f"`coords` must be a 1-D sequence of integer indices, got {a.ndim}-D {a.dtype}")
    out = np.asarray(a, dtype=np.int64).reshape(-1)
    return out if out.flags.writeable else out.copy()  # a read-only array (a Ray shard's) makes torch warn

def _nonzero_rows(D, n: int) -> torch.Tensor:
    """Which of the ``n`` rows of ``D`` hold a nonzero (NaN counts): ``(D != 0).any`` per row,
    as the largest absolute value, which is NaN for a NaN row and 0 only for an all-zero one
    (a few times faster than the comparison on short rows)."""
    D = D.reshape(n, -1)
    if D.shape[1] == 0:
        return torch.zeros(n, dtype=torch.bool, device=D.device)
    return D.abs().amax(dim=1) != 0
