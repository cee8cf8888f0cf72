"""PyTorch adapter: ``TorchOracle`` (a model + per-sample loss as a zoracle oracle) and
``blackbox`` (a black-box function as a differentiable torch op with a ZO backward).

Importing this module imports torch: that is how a user opts in (``pip install -e '.[torch]'``).

``TorchOracle`` implements every capability the core planner knows: plain calls,
``batch`` (many parameter vectors), ``coordinate_losses`` (CGE), ``prefix``/``suffix``
(feature reuse) and ``bind`` (a fixed minibatch). Its fast path evaluates ``k``
coordinate perturbations of one block as one batch of ``k * B`` samples through the part of
the captured graph downstream of the block, building the perturbed layer outputs in closed
form (rank-one updates of the cached unperturbed output) instead of copying weights.

Modules: ``_torch_graph`` (torch.fx capture into a step chain), ``_torch_chain`` (steps,
closed forms, oracle semantics of BatchNorm / dropout / in-place ops), ``_torch_layout``
(flat layout, blocks), ``_torch_exact`` (reference ``model(x)``, self-check, full-forward
fallback), ``_torch_blackbox`` (``blackbox``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import numbers
import time
import warnings

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("zoracle.adapters.torch needs torch: pip install torch==2.13.0 && pip install -e '.[torch]' "
                      "(for the CPU wheel, add --index-url https://download.pytorch.org/whl/cpu to the first)") from exc
from torch import nn
from torch.nn.utils import parametrize

from zoracle._backend import is_cupy, namespace
from zoracle._errors import ArgumentError, check_flag, user_stacklevel

from ._torch_blackbox import blackbox
from ._torch_graph import downstream, is_autocast_enabled
from ._torch_exact import (_modes, _reaches, _self_check, _vmap_off, check_batch_first, check_batch_kind, check_held,
                           check_rows_later, ensure_split, first_bind, full_coordinate_losses, module_key, name_list, parameter_names, reference_loss,
                           shared_suffix, _one_tensor, _integer_batch_error)
from ._torch_chain import (
    Step,
    absorb,
    absorb_flatten_linear,
    absorb_rows,
    absorbs,
    chain_is_forward,
    channel_local,
    is_fork,
    channel_ok,
    channel_step,
    flatten_linear,
    fork,
    generic_outputs,
    _model_lock as model_lock,
    materialize,
    norm_context,
    perturbed_channels,
    perturbed_outputs,
    prepare_cache,
    sample_coupling,
    LAYOUT,
    layout_free,
    nhwc_on,
    tile,
    vmap_safe,
)
from ._torch_layout import (UNREAD, ParamInfo, _as_torch_dtype, _param_views, build_core, check_params_array, class_major,
                            class_major_loss, cross_entropy, repeat_rows, run_owned, to_torch)

__all__ = ["TorchOracle", "ParamInfo", "Step", "fork", "blackbox", "cross_entropy", "to_torch"]

_CPU_BUDGET = 16 * 2**20
_GPU_BUDGET = 1024 * 2**20


def _copy(params):
    if torch.is_tensor(params):
        return params.clone()
    # a list or tuple (a plain call takes one) as an array: a tuple has no copy(), and a list key
    # had no shape for _same to compare
    return params.copy() if hasattr(params, "shape") else np.array(params)


_RUNNING_STATS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def _addresses(p) -> np.ndarray:
    """The byte address of each of ``p``'s elements (a strided view's own, not its span's)."""
    off = torch.zeros((), dtype=torch.int64)
    for n, st in zip(p.shape, p.stride()):
        off = off.unsqueeze(-1) + torch.arange(n, dtype=torch.int64) * st
    return (off.reshape(-1).numpy() + p.storage_offset()) * p.element_size() + p.untyped_storage().data_ptr()


def _share_an_element(pa, pb) -> bool:
    """Whether ``pa`` and ``pb`` (one element size) have an element at one address: marked in a
    table of their common address range, linear in their sizes (np.intersect1d sorted both, some
    minutes before refusing a tied 50,000 x 768 embedding)."""
    es = pa.element_size()
    xa, xb = _addresses(pa), _addresses(pb)
    lo, hi = max(xa.min(), xb.min()), min(xa.max(), xb.max())
    if lo > hi:
        return False
    xa, xb = xa[(xa >= lo) & (xa <= hi)], xb[(xb >= lo) & (xb <= hi)]
    seen = np.zeros((hi - lo) // es + 1, dtype=bool)
    seen[(xa - lo) // es] = True
    return bool(seen[(xb - lo) // es].any())


def _refuse_aliased(core) -> None:
    """Two trainable parameters of the flat vector that are distinct ``Parameter`` objects over the
    same memory (``head.weight = nn.Parameter(emb.weight)``, a parametrization registered on a tied
    weight): the vector would hold those elements twice, a load writes the later copy over the
    earlier one (the earlier one's entries do not move the loss) while the estimates perturb each
    by name, so the gradient is not the one of the oracle's loss. A weight tied as one ``Parameter``
    is held once; parameters carved from one flat buffer without overlap are fine."""
    spans = []
    for info, p in zip(core.info, core.params):
        if not p.numel():
            continue
        es = p.element_size()
        start = p.untyped_storage().data_ptr() + p.storage_offset() * es
        stop = start + (sum((n - 1) * abs(st) for n, st in zip(p.shape, p.stride())) + 1) * es
        spans.append((start, stop, info.name, p))
    spans.sort(key=lambda s: s[:2])
    pairs = []  # overlapping spans (sorted by start: the ones after the first that starts past a's stop do not)
    for i, sa in enumerate(spans):
        for sb in spans[i + 1:]:
            if sb[0] >= sa[1]:
                break
            pairs.append((sa, sb))
    for (a0, a1, a, pa), (b0, b1, b, pb) in pairs:
        # whether an element is shared (columns of one matrix interleave without one)
        if pa.element_size() != pb.element_size() or _share_an_element(pa, pb):
            raise ArgumentError(
                f"`model`'s parameters {a!r} and {b!r} are two Parameters sharing memory (written "
                "nn.Parameter(other.weight), or a parametrization such as weight_norm registered on a tied weight): "
                "the flat vector would hold that memory twice and a load writes one copy over the other. Tie "
                "them as one Parameter (module.weight = other.weight), or give each its own copy (.clone())")


def _model_state(model: nn.Module, read_only: bool = False, flags=None) -> tuple:
    """What a cached activation or base loss depends on besides the parameters and the batch:
    every module's train/eval mode and every buffer's identity and version (running statistics
    written in place, or ``load_state_arrays``). ``read_only``: not the running statistics of a
    BatchNorm or InstanceNorm in train mode, which its forward does not read (a plain call
    updates them every step); every other buffer, a forward may read."""
    keys, buffers = [], []
    for m in model.modules():  # one walk for both
        if flags is None:
            keys.append(module_key(m))
        if m._buffers and not (read_only and m.training and isinstance(m, _RUNNING_STATS)):
            buffers += [(id(b), b._version) for b in m._buffers.values() if b is not None]
        if m._parameters:  # frozen weights (requires_grad=False) are not in the flat vector: read like buffers
            buffers += [(id(p), p._version) for p in m._parameters.values() if p is not None and not p.requires_grad]
    return (tuple(keys) if flags is None else flags), tuple(buffers)


def _one_query_at_a_time(method):
    """Threads that share the model (a threading executor) take turns through a whole query: its
    parameter load and every forward after it. Between a load and its forward another thread's
    query could load its own parameters (a batch's last row), and a step with no closed form
    perturbs a parameter in place (``nudged``) that another thread would read or undo."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        _refuse_parametrize_cache(self._core.model)
        with model_lock(self._core.model), _autocast_off(self):
            if getattr(self, "_aligned_from", None) is not None:
                self._batch_key()  # an aligned copy of a batch written in place since: made again first
            return method(self, *args, **kwargs)
    return run


def _refuse_parametrize_cache(model) -> None:
    """Queries inside ``torch.nn.utils.parametrize.cached()`` of a parametrized model: the cache keeps
    each parametrized weight as computed at its first use, so an original perturbed or loaded later
    reached no forward (its partial derivatives all 0, plain calls at moved originals the stale loss)."""
    if getattr(parametrize, "_cache_enabled", 0) and any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ArgumentError("TorchOracle: queried inside torch.nn.utils.parametrize.cached(), which keeps each "
                            "parametrized weight as first computed: the perturbed and loaded originals would reach no "
                            "forward (their gradient 0); build and query the oracle (zo.estimate_gradient, zo.train) "
                            "outside cached() (a forward may still use cached() inside itself)")


def _autocast_off(oracle):
    """A context that runs a query with an ambient ``torch.autocast`` (the caller's, on the model's
    device) turned off, warning once: under it the forwards ran in bfloat16 (a finite difference
    mostly rounding, as for a half model), and autocast's cache of the cast weights hid parameters
    perturbed in place, so full forwards returned the base loss (every coordinate 0)."""
    dev = oracle.device.type
    if dev not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    if not is_autocast_enabled(dev):
        # still a context without autocast's cache: inside any autocast block, a disabled one
        # (`enabled=use_amp`) included, a forward's own autocast block kept the weights it cast
        # on leaving, and read them stale after an in-place perturbation (the gradient 0)
        return torch.autocast(dev, enabled=False, cache_enabled=False)
    if oracle.dtype != torch.float64 and not oracle._core.__dict__.get("warned_autocast"):
        # (a float64 model: autocast casts no float64 op, and caches no cast weight; it is turned off all the same)
        oracle._core.warned_autocast = True
        warnings.warn(f"TorchOracle: queried inside torch.autocast({dev!r}): the oracle turns it off for its own "
                      "forwards and runs the model in its dtype (finite differences in half precision are mostly "
                      "rounding, and autocast's cache of the cast weights hides parameters perturbed in place); "
                      "build and query the oracle (zo.estimate_gradient, zo.train) outside torch.autocast",
                      RuntimeWarning, stacklevel=user_stacklevel())
    return torch.autocast(dev, enabled=False, cache_enabled=False)


def _tf32_note(device: torch.device) -> str:
    """Why a float32 model on ``device`` would estimate coarsely: torch runs float32 convolutions
    (and matmuls where set so) on CUDA in TF32, which rounds inputs and weights to 10 bits, about
    1% of a step mu = 5e-3 on a weight of 0.1; on the CPU, oneDNN where set to bfloat16. Empty
    where it does not."""
    if device.type == "cpu":
        # torch.set_float32_matmul_precision("medium") on a CPU with bfloat16 units (AVX512-BF16,
        # AMX) runs oneDNN's float32 matmuls in bfloat16: the batched forwards' large ones, not
        # the small base forward, so a finite difference at mu = 5e-3 was off by 30% of the gradient
        low = []
        for name, fix in (("matmul", 'torch.set_float32_matmul_precision("highest")'),
                          ("conv", 'torch.backends.mkldnn.conv.fp32_precision = "ieee"')):
            try:
                if getattr(getattr(torch.backends.mkldnn, name, None), "fp32_precision", None) == "bf16":
                    low.append((name, fix))
            except RuntimeError:
                pass
        if not low:
            return ""
        return (f"TorchOracle: float32 on cpu runs {' and '.join(n + 's' for n, _ in low)} "
                "in bfloat16 where the CPU has bfloat16 units (AVX512-BF16, AMX; torch.backends.mkldnn's "
                "fp32_precision is \"bf16\"), so a finite difference at mu = 5e-3 is mostly rounding; use "
                f"{' and '.join(f for _, f in low)} before building the oracle, or dtype=torch.float64")
    if device.type != "cuda":
        return ""
    tf32 = []
    # (the setting from torch 2.9 on, the legacy one before it), for convolutions and matmuls
    for name, knob, old_name, old in (
            ("torch.backends.cudnn.conv", getattr(torch.backends.cudnn, "conv", None),
             "torch.backends.cudnn", torch.backends.cudnn),
            ("torch.backends.cuda.matmul", torch.backends.cuda.matmul, "torch.backends.cuda.matmul",
             torch.backends.cuda.matmul)):
        try:  # torch's settings raise where legacy and new ones were mixed: no verdict then
            if hasattr(knob, "fp32_precision"):
                if knob.fp32_precision == "tf32":
                    tf32.append(f'{name}.fp32_precision = "ieee"')
            elif getattr(old, "allow_tf32", False):
                tf32.append(f"{old_name}.allow_tf32 = False")
        except RuntimeError:
            pass
    if not tf32:
        return ""
    return (f"TorchOracle: float32 on {device} runs in TF32: it rounds inputs and weights to 10 bits, so a finite "
            f"difference at mu = 5e-3 is off by about 1%; set {' and '.join(tf32)} before building the oracle, or "
            "use dtype=torch.float64")


def _version(t: torch.Tensor):
    """``t``'s version counter; None for an inference-mode tensor, which has none (nor can it be
    written outside that mode)."""
    try:  # an attribute read, not a torch call: this runs at every query
        return t._version
    except RuntimeError:  # "Inference tensors do not track version counter"
        return None


def _retired(core) -> str:
    """Why the split went, for the errors of a sharded estimate planned on it (empty if it never had one)."""
    return (f": {core.reason}; an estimate planned on the split stops here, run it again (it runs full "
            "forwards now)") if core.reason else ""


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


class TorchOracle:
    """A PyTorch model and a loss as a zoracle oracle over the flat parameters.

    Parameters
    ----------
    model : nn.Module
        Evaluated in the mode it is in (``train()`` or ``eval()``, see BatchNorm below).
        Its trainable parameters (``requires_grad``) form the flat vector; frozen ones stay
        fixed. The oracle shares the module: every query loads the flat vector into it, so
        after queries the module holds the last queried parameters (``load(params)`` sets
        them explicitly).
    loss_fn : callable
        ``loss_fn(outputs, targets)`` returning either **per-sample** losses of shape
        ``(N,)`` or ``(N, 1)`` (e.g. ``nn.CrossEntropyLoss(reduction="none")``; the oracle's
        loss is their mean) or **one scalar** (PyTorch's default ``reduction="mean"``, e.g.
        ``F.cross_entropy``, ``nn.MSELoss()``; the oracle's loss is that scalar). The
        convention is read from the first bound minibatch. Per-sample losses are faster:
        batched evaluation calls ``loss_fn`` **once** on ``k * B`` samples (outputs of ``k``
        perturbations stacked perturbation-major, targets repeated ``k`` times), and samples
        a perturbation leaves unchanged keep their base loss; a scalar ``loss_fn`` is called
        once per perturbation on its ``B`` samples. ``loss_fn`` may be a black box (convert
        to NumPy, call onnxruntime, return a tensor without grad). A stock
        ``nn.CrossEntropyLoss(reduction="none")`` on 2-15 classes (CPU float logits, int64
        targets) is called on the logits laid out ``(1, classes, rows)``: the same loss,
        4-8x faster for the narrow rows of a batched step (``class_major_loss``).
    batch : (x, y), optional
        The minibatch every query sees (NumPy or torch). Without it, use ``bind(batch)``.
    dtype : torch/numpy dtype or str, optional
        Converts the model's floating parameters and buffers (as ``model.double()`` or
        ``model.float()``: complex and integer ones keep theirs). Default: the model's dtype.
    device : torch.device or str, optional
        Moves the model. Default: the model's device.
    budget_bytes : int, optional
        Memory for the activations of one batched suffix chunk (k perturbations x B
        samples). Default 16 MiB on CPU (cache friendly), 1 GiB on CUDA.
    blocks : None, "none" or list, optional
        None: the split is captured from the model's graph (``torch.fx``; any module,
        ``nn.Sequential`` included, see ``_torch_graph``), or taken from the model's own
        ``zoracle_steps()``. ``"none"``: no feature reuse; every perturbation is a full
        forward. A list of modules / ``Step`` objects: this split (running them in order on
        ``(x,)`` must equal ``model(x)``).
    update_stats : bool
        Plain calls (``oracle(params)``, the base point of every estimate, once per step)
        update BatchNorm (and InstanceNorm) running statistics in train mode, like one
        first-order training forward. Perturbation queries never do. Other buffers a train-mode
        forward writes are updated too where the forward does not read them (the loss from the
        updated buffers is the same: a second forward finds out); where it does (spectral norm's
        vectors, a running scale), every query, plain calls included, leaves them as it found
        them, with a warning, so that the loss is a function of the parameters on any executor.

    Notes
    -----
    **BatchNorm.** In ``train()`` mode every perturbed forward is normalized with its *own*
    minibatch statistics, exactly as a plain call on that minibatch is; ``k`` perturbations
    batched together are normalized as ``k`` separate groups of ``B`` samples. In ``eval()``
    mode the running statistics are used. Perturbation queries (``batch``,
    ``coordinate_losses``, ``prefix``, ``suffix``) never change running statistics.
    **Dropout**, module and functional (``F.dropout``, attention's ``dropout_p`` in
    ``nn.MultiheadAttention`` and ``F.scaled_dot_product_attention``), is the identity
    inside the oracle (finite differences need a deterministic loss). A BatchNorm subclass
    with its own ``forward`` (timm's ``BatchNormAct2d``) runs that forward, once per
    perturbation group. Other layers must treat samples independently.

    **Split.** The model's graph is captured once (``torch.fx``: residual adds, shared
    modules, tied weights, in-place activations made out of place; stock ``torch.nn``
    modules and their subclasses are leaves). Each step that first uses a parameter is one
    block; ``prefix`` returns the activations entering it (cached for the bound
    minibatch), ``suffix`` builds the ``k`` perturbed outputs of the block (closed form for
    exact ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``, ``nn.Embedding`` and affine
    ``nn.BatchNorm*`` / ``GroupNorm`` / ``LayerNorm``; a perturb-run-restore
    loop for other layers and subclasses) and runs only the steps downstream on ``k * B``
    rows at once. A parameter used by several steps is perturbed in place and the rest run
    per perturbation. **Exact or refuse:** at the first bound minibatch the split is checked
    against the plain ``model(x)`` (its loss, and every block's suffix loss for a
    perturbed coordinate); a model that cannot be traced or fails the check runs full
    forwards, and one warning names the reason and the block. Full forwards perturb one
    parameter tensor at a time (in place, or overridden through
    ``torch.func.functional_call`` and vectorized), never copying the whole vector.

    Examples
    --------
    >>> import numpy as np, torch, zoracle as zo
    >>> from zoracle.adapters.torch import TorchOracle
    >>> torch.manual_seed(0) and None
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    >>> x, y = np.random.default_rng(0).standard_normal((5, 3)), np.array([0, 1, 1, 0, 1])
    >>> oracle = TorchOracle(net, torch.nn.CrossEntropyLoss(reduction="none"), (x, y))
    >>> theta = oracle.initial_params()
    >>> est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-5, scheme="central"))
    >>> est.grad.shape, est.nfev
    ((26,), 53)
    """

    def __init__(self, model, loss_fn, batch=None, *, dtype=None, device=None, budget_bytes=None,
                 blocks=None, update_stats: bool = True):
        if not isinstance(model, nn.Module):
            raise ArgumentError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise ArgumentError(f"`loss_fn` must be callable (outputs, targets) -> per-sample losses, got {loss_fn!r}")
        if isinstance(loss_fn, type) and issubclass(loss_fn, nn.Module):  # nn.CrossEntropyLoss, not an instance
            raise ArgumentError(f"`loss_fn` is the class {loss_fn.__name__}, not an instance; pass "
                                f"{loss_fn.__name__}(reduction=\"none\")")
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if isinstance(t, nn.parameter.UninitializedTensorMixin):
                raise ArgumentError(f"`model` has lazy modules not yet initialized ({name!r}): run one forward on a "
                                    "sample batch (model(x)) before building the TorchOracle")
            if t.is_meta:
                raise ArgumentError(f"`model`'s {name!r} is on the meta device (no values): materialize it first, "
                                    "e.g. model.to_empty(device='cpu') and then initialize or load its weights")
        cplx = [n for n, p in model.named_parameters() if p.requires_grad and p.is_complex()]
        if cplx:  # before dtype= converts the model: torch's cast to a real dtype drops the imaginary part
            raise ArgumentError(f"`model`'s parameters {name_list(cplx)} are complex "
                                f"({model.get_parameter(cplx[0]).dtype}): TorchOracle's flat vector is real; hold the "
                                "real and imaginary parts as two real Parameters and build the complex tensor in "
                                "forward (torch.complex(re, im), or torch.view_as_complex of a (..., 2) Parameter)")
        tdtype = _as_torch_dtype(dtype)
        if budget_bytes is not None and (isinstance(budget_bytes, bool) or not isinstance(budget_bytes, numbers.Integral)
                                         or budget_bytes < 1):
            raise ArgumentError(f"`budget_bytes` must be a positive integer (bytes), got {budget_bytes!r}")
        if not any(p.requires_grad for p in model.parameters()):  # before the model is converted
            raise ArgumentError(f"`model` ({type(model).__name__}) has no trainable parameters (requires_grad=True): "
                                "nothing to estimate")
        if tdtype is not None or device is not None:
            try:
                model.to(device=device)
                if tdtype is not None:  # floating tensors only, as model.double() converts: a complex buffer
                    model.double() if tdtype == torch.float64 else model.float()  # cast to real lost its imaginary part
            except (RuntimeError, AssertionError, TypeError, ValueError) as exc:  # device="xyz", CUDA without a GPU
                raise ArgumentError(f"`device` {device!r}: {exc}") from None
        self.loss_fn = loss_fn
        self.update_stats = check_flag("update_stats", update_stats)
        self._budget = budget_bytes
        self._core = build_core(model, blocks)
        _refuse_aliased(self._core)
        if self.dtype not in (torch.float32, torch.float64):
            raise ArgumentError(f"`model`'s parameters are {self.dtype}: TorchOracle runs float32 or float64 models (a "
                                "finite difference in half precision is mostly rounding); pass dtype=torch.float32")
        half = [n for n, p in model.named_parameters() if p.requires_grad and p.dtype not in (torch.float32, torch.float64)]
        if half:  # the first one's dtype is the model's: a half head behind a float32 body ran, its differences rounding
            raise ArgumentError(f"`model`'s parameters {name_list(half)} are {model.get_parameter(half[0]).dtype}: "
                                "TorchOracle runs float32 or float64 models (a finite difference in half precision is "
                                "mostly rounding); pass dtype=torch.float32, and drop the forward's casts to half "
                                "precision (.half(), .bfloat16()) if it has any")
        mixed = [i.name for i, p in zip(self._core.info, self._core.params) if p.dtype != self.dtype]
        if mixed:  # the flat vector, and the steps estimates take, have the first parameter's dtype
            other = self._core.params[[i.name for i in self._core.info].index(mixed[0])].dtype
            raise ArgumentError(f"`model`'s trainable parameters mix {self.dtype} ({self._core.info[0].name!r}, the "
                                f"first in the flat vector) and {other} ({name_list(mixed)}): the flat vector and its "
                                f"steps take the first one's dtype (a float32 tensor's steps rounded under float64 "
                                f"ones, a float64 tensor's values rounded to float32); pass dtype=torch.float64 or "
                                f"dtype=torch.float32 to convert the whole model")
        if self.dtype == torch.float32:
            note = _tf32_note(self.device)
            if note:
                warnings.warn(note, RuntimeWarning, stacklevel=user_stacklevel())
        self._x = self._y = None
        if batch is not None:
            self._set_batch(batch)

    # ---------------------------------------------------------------- construction
    def _set_batch(self, batch):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            what = f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list)) else \
                type(batch).__name__
            if isinstance(batch, dict):  # a HuggingFace-style batch, or a collated dict of fields
                keys = list(batch)
                hint = (f" with keys {keys}: pass the pair (batch[{keys[0]!r}], batch[{keys[-1]!r}]) of inputs and "
                        "targets" if keys else "")
            elif isinstance(batch, (tuple, list)) and len(batch) > 2 and all(
                    isinstance(s, (tuple, list, dict)) for s in batch):  # samples, as [ds[i] for i in rows] gives
                hint = (": a list of samples, not of fields; stack them into the pair (np.stack([s[0] for s in "
                        "samples]), np.array([s[1] for s in samples])) (a DataLoader's default collate does)")
            elif isinstance(batch, (tuple, list)) and len(batch) > 2:
                hint = " (TorchOracle takes no third field such as sample weights: fold them into the loss's targets)"
            else:
                hint = ""
            raise ArgumentError(f"`batch` must be a pair (x, y) of arrays or tensors, got {what}{hint}")
        x, y = batch
        for name, v in (("x", x), ("y", y)):
            if type(v).__module__.startswith("scipy.sparse"):  # len() raises; np.asarray gives an object array
                raise ArgumentError(f"`batch`'s {name} is a SciPy sparse {type(v).__name__}: TorchOracle runs dense "
                                    f"tensors; pass {name}.toarray() (a minibatch at a time: zo.Minibatches takes the "
                                    "sparse matrix and yields sparse rows, so convert in a callable epoch -> batches)")
        rows = y is not None and not isinstance(x, dict) and len(x) == len(y)  # a list of samples (stacked)
        if isinstance(x, dict) or (isinstance(x, (tuple, list)) and not rows and any(
                torch.is_tensor(v) or isinstance(v, np.ndarray) for v in x)):
            raise ArgumentError(
                f"`batch`'s x is a {type(x).__name__}: TorchOracle feeds the model one input, an array or tensor "
                "of samples; for a model taking several inputs, wrap it in a module whose forward takes one "
                "(e.g. the inputs concatenated along dimension 1, split again in forward)")
        self._base_rows = None  # base losses belong to one minibatch
        self._state_cache = None  # and so do the cached activations
        dev, dt = self.device, self.dtype
        self._x = _private(_batch_tensor("x", x, dev, dt), x)
        self._y = None if y is None else _private(_batch_tensor("y", y, dev), y)
        # a batch deserialized by a cluster can sit at any address, in the standard strides;
        # vectorized kernels pick their reduction order by alignment (a convolution its kernel
        # by the strides too), so own aligned copies in the standard strides (same bits anywhere).
        # A copy of the caller's own tensor (a slice X[1:]) is made again when that tensor is
        # written in place (see _batch_key): queries see the write, as with an aligned batch
        src = [None, None]
        if _odd_layout(self._x):
            src[0] = self._x if self._x is x else None
            self._x = self._x.clone(memory_format=torch.contiguous_format)
        if self._y is not None and _odd_layout(self._y):
            src[1] = self._y if self._y is y else None
            self._y = self._y.clone(memory_format=torch.contiguous_format)
        self._aligned_from = None if src == [None, None] else (src, [_version(t) if t is not None else None
                                                                       for t in src])
        if self._y is not None and self._y.shape[0] != self._x.shape[0]:
            raise ArgumentError(f"`batch`: x has {self._x.shape[0]} samples but y has {self._y.shape[0]}")
        if self._x.shape[0] == 0:
            raise ArgumentError("`batch` is empty; pass at least one sample")
        if self._core.scalar_loss is None or not self._core.checked:
            _refuse_parametrize_cache(self._core.model)
            with _autocast_off(self):
                first_bind(self)
        else:  # a batch of another dtype or label shape than those bound before: the first bind's advice
            with _autocast_off(self):
                check_batch_kind(self)
                if self._core.__dict__.get("rows_unchecked") and self._x.shape[0] > 1:
                    check_rows_later(self)  # a first bound batch of one sample could not check the rows

    def bind(self, batch) -> "TorchOracle":
        """A copy that evaluates on ``batch = (x, y)`` (NumPy or torch), sharing the model."""
        new = copy.copy(self)
        new._set_batch(batch)
        new._parent = getattr(self, "_parent", None) or self
        new._raw_batch = batch
        return new

    def unbind(self):
        """``(parent, batch)`` for an oracle made by ``bind``, else None.

        Parallel executors use it to ship the (large) model once per worker and only the
        minibatch with every step (a tensor that is a view of a larger one, a slice of a data
        set, goes as a copy of its own elements: pickled as it is, it sent the whole storage).
        """
        parent = getattr(self, "_parent", None)
        return None if parent is None else (parent, _compact(self._raw_batch))

    def to_device(self, device) -> "TorchOracle":
        """Move the model (and a bound batch) to ``device``; ``DeviceExecutor`` calls it once per worker."""
        try:  # by keyword: model.to(torch.float16), to(0.5) or to(a tensor) would change the model's dtype
            self._core.model.to(device=device)
        except (RuntimeError, AssertionError, TypeError, ValueError) as exc:  # device="gpu", CUDA without a GPU
            raise ArgumentError(f"`device` {device!r}: {exc}") from None
        if self._x is not None:
            # from the caller's tensors an aligned batch copies: on the same device the link stays
            src = (getattr(self, "_aligned_from", None) or ((None, None), None))[0]
            self._set_batch((self._x if src[0] is None else src[0], self._y if src[1] is None else src[1]))
        return self

    def state_arrays(self) -> dict:
        """The module's buffers (BatchNorm running statistics) as NumPy arrays, by name: those
        ``state_dict`` holds (non-persistent buffers are derived, and left out).

        ``zoracle.train`` saves them in checkpoints, since they live outside the flat
        parameters and change in train mode.
        """
        # bfloat16 has no NumPy dtype: saved as float32 (exact), loaded back as the buffer's dtype
        return {name: (b.detach().cpu().float() if b.dtype == torch.bfloat16 else b.detach().cpu()).numpy().copy()
                for name, b in _persistent_buffers(self._core.model).items()}

    @property
    def plain_call_updates_state(self) -> bool:
        """Whether a plain call writes the model's own state: ``update_stats`` and a BatchNorm or
        InstanceNorm with running statistics in train mode (an executor whose workers hold copies warns)."""
        return self.update_stats and any(isinstance(m, _RUNNING_STATS) and m.training and m.track_running_stats
                                         for m in self._core.model.modules())

    def run_modes(self) -> list:
        """Every module's train/eval mode and ``update_stats``, as ``zo.train`` records them in a
        checkpoint (a resume in other modes runs other losses: it warns)."""
        return [[name, bool(m.training)] for name, m in self._core.model.named_modules()] + [self.update_stats]

    def executor_key(self) -> tuple:
        """What an executor's copies of this oracle must agree on with it, besides the parameters
        (sent with every estimate): every module's train/eval mode, and the buffers a forward may
        read (all but a train-mode BatchNorm's or InstanceNorm's running statistics). An executor
        sends the oracle again when this changes; the running statistics a train-mode plain call
        updates every step are left out, so a training run sends the model once."""
        return _model_state(self._core.model, read_only=True)

    def load_state_arrays(self, arrays: dict) -> None:
        """Restore buffers saved by :meth:`state_arrays` (names and shapes must match)."""
        model = self._core.model
        buffers = _persistent_buffers(model)
        derived = set(dict(model.named_buffers())) - set(buffers)  # saved by older versions: recomputed, not restored
        missing = sorted(set(buffers) - set(arrays))
        extra = sorted(set(arrays) - set(buffers) - derived)
        if missing or extra:
            raise ArgumentError(
                f"buffer names differ from this model's: missing {missing[:5]}, unexpected {extra[:5]}; "
                "the state was saved from another model"
            )
        given = {}
        for name, b in buffers.items():  # every shape checked before any buffer is written
            a = torch.as_tensor(np.asarray(arrays[name]))
            if tuple(a.shape) != tuple(b.shape):
                raise ArgumentError(f"buffer {name!r} has shape {tuple(a.shape)}, expected {tuple(b.shape)}")
            given[name] = a
        self._state_cache = None  # eval-mode activations depend on the running statistics
        with torch.no_grad():
            for name, b in buffers.items():
                b.copy_(given[name].to(device=b.device, dtype=b.dtype))

    # ---------------------------------------------------------------- public layout
    @property
    def model(self) -> nn.Module:
        return self._core.model

    @property
    def device(self) -> torch.device:
        return self._core.params[0].device

    @property
    def compute_dtype(self) -> np.dtype:
        """The NumPy float the model evaluates params in (params of a wider float are rounded to
        it; ``zo.estimate_gradient`` then estimates at the rounded params, with the steps the
        model takes)."""
        return np.dtype("float64" if self.dtype == torch.float64 else "float32")

    @property
    def dtype(self) -> torch.dtype:
        return self._core.params[0].dtype

    @property
    def size(self) -> int:
        """Number of trainable parameters (length of the flat vector)."""
        return self._core.d

    @property
    def blocks(self) -> list:
        """Contiguous parameter ranges in forward order, one per step owning parameters (none
        once the split is retired: a bound oracle first checks it in the model's modes of now,
        so a plan made from these blocks finds them in ``prefix`` and ``suffix``)."""
        if self._x is not None:
            ensure_split(self)
        return list(self._core.blocks)

    @property
    def block_names(self) -> list:
        return list(self._core.block_names)

    @property
    def parameter_names(self) -> list:
        return [i.name for i in self._core.info]

    @property
    def _unread_moved(self) -> tuple:
        """Parameters no step reads that the flat vector puts after the others where the model's
        own order (and this oracle's before 2026-12-05) has them elsewhere: a resume refuses a
        checkpoint that did not record its layout then."""
        return self._core.unread_moved

    @property
    def param_info(self) -> list:
        """``ParamInfo(name, slice, shape, kind)`` for every trainable parameter, in flat order."""
        return list(self._core.info)

    @property
    def max_queries_per_call(self) -> int:
        """Coordinates per ``suffix`` call the planner should send (the largest block chunk)."""
        if self._x is None or not self._core.blocks:
            return 4096
        return int(max(self._chunk(b) for b in range(len(self._core.blocks))))

    @property
    def block_costs(self):
        """Measured relative cost of one perturbation's suffix, per block (None until bound)."""
        if self._x is None or not self._core.blocks:
            return None
        key = self._key()
        if key not in self._core.costs:
            self._core.costs[key] = self._measure_costs()
        return list(self._core.costs[key])

    def suffix_flops(self) -> list:
        """Multiply-add FLOPs per sample of each block's suffix (Linear and Conv layers after it).

        Counted on one sample of the bound batch with forward hooks; elementwise work
        (activations, normalization, the loss) is not counted. The speed benchmark's FLOP
        limit is ``sum_b coords_b * suffix_flops[b] * B / matmul throughput``.
        """
        self._require_batch()
        flops, hooks = {}, []

        def hook(mod, inp, out):
            if isinstance(mod, nn.Linear):
                n = 2 * mod.in_features * mod.out_features * (out.numel() // out.shape[-1])
            else:
                n = 2 * (mod.weight[0].numel()) * out.numel()
            flops[id(mod)] = flops.get(id(mod), 0) + n

        for m in self.model.modules():
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                hooks.append(m.register_forward_hook(hook))
        steps = self._core.chain.steps
        per_step = []
        try:
            with torch.no_grad(), norm_context(self.model, loss_fn=self.loss_fn):
                state = (self._x,)
                for st in steps:
                    flops.clear()
                    state = st(state)
                    per_step.append(sum(flops.values()) // self._x.shape[0])
        finally:
            for h in hooks:
                h.remove()
        tail = np.concatenate([np.cumsum(per_step[::-1])[::-1][1:], [0]])
        return [int(tail[si]) for si in self._core.block_steps]

    def initial_params(self) -> np.ndarray:
        """The module's current trainable parameters as one flat NumPy array (model dtype)."""
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in self._core.params])
        return flat.cpu().numpy().copy()

    def load(self, params) -> None:
        """Write the flat vector ``params`` into the module's parameters."""
        check_held(self._core)  # not into a tensor a Parameter was assigned over since
        self._load(params)

    def _load(self, params) -> torch.Tensor:
        d = self._core.d
        t = _params_tensor("params", params, self.device, self.dtype)
        if t.dim() != 1 or t.shape[0] != d:
            raise ArgumentError(f"`params` must be a flat vector of length {d}, got shape {tuple(t.shape)}")
        core = self._core
        with torch.no_grad(), model_lock(core.model):  # not while another thread's query has a parameter nudged
            # one fused copy into every parameter (the per-parameter loop's dispatches cost more
            # than the copies on small models, and a step loads the parameters several times)
            dst = [p.data for p in core.params]
            torch._foreach_copy_(dst, _param_views(core, t, dst))
        return t

    # ---------------------------------------------------------------- evaluation helpers
    def _require_batch(self):
        if self._x is None:
            raise ArgumentError(
                "TorchOracle has no minibatch: pass batches= to zo.train (batch= to zo.zo_grasp), batch=(x, y) "
                "to TorchOracle(...), or call oracle.bind((x, y)) and query the returned oracle"
            )

    def _warn_fallback(self):
        core = self._core
        if not core.warned and core.reason and not core.blocks:
            core.warned = True
            warnings.warn(f"TorchOracle: {core.reason}", RuntimeWarning, stacklevel=user_stacklevel())

    def _key(self):
        return tuple(self._x.shape[1:])

    def _batch_id(self) -> tuple:
        """The bound batch's identity and versions (copies of one bound oracle share it)."""
        return id(self._x), self._batch_key()

    def batch_key(self):
        """What a process or cluster executor compares before every run to see whether the bound
        batch changed in place since it sent it (then it sends the batch again): the bound
        tensors' version counters. None when nothing is bound."""
        return None if self._x is None else self._batch_key()

    def _batch_key(self) -> tuple:
        """The bound batch's version counters: bind keeps the caller's tensors when they need no
        conversion, so an in-place write into them (an augmentation, a reused input buffer) must
        retire the activations and base losses cached for the old values. An aligned copy of the
        caller's tensor is made again here when that tensor was written since (its versions are
        the key then)."""
        aligned = getattr(self, "_aligned_from", None)
        if aligned is None:
            return _version(self._x), None if self._y is None else _version(self._y)
        src, seen = aligned
        now = [_version(t) if t is not None else None for t in src]
        if now != seen:
            if src[0] is not None:
                self._x = src[0].clone(memory_format=torch.contiguous_format)
            if src[1] is not None:
                self._y = src[1].clone(memory_format=torch.contiguous_format)
            self._aligned_from = (src, now)
        return (now[0] if src[0] is not None else _version(self._x),
                now[1] if src[1] is not None else (None if self._y is None else _version(self._y)))

    def _targets(self, k: int):
        y = self._y
        if y is None or k == 1:
            return y
        cached = getattr(self, "_ycache", None)
        if cached is None or cached[0] is not y or cached[1] != _version(y) or cached[2].shape[0] < k * y.shape[0]:
            self._ycache = cached = (y, _version(y), y.repeat((k,) + (1,) * (y.dim() - 1)))
        return cached[2][: k * y.shape[0]]

    def _loss(self, outputs, k: int) -> torch.Tensor:
        """Mean loss of each of ``k`` perturbation groups of ``B`` rows, shape ``(k,)``."""
        _one_tensor(outputs)
        B = self._x.shape[0]
        if self._core.scalar_loss:
            # a mean-reduced loss_fn: one call per perturbation group
            y = self._y
            parts = outputs.reshape((k, B) + tuple(outputs.shape[1:]))
            return torch.stack([self._scalar(parts[r], y) for r in range(k)])
        vals = _rows(to_torch(self._call_loss(outputs, self._targets(k)), outputs.device))
        if vals.dim() != 1 or vals.shape[0] != k * B:
            raise ArgumentError(f"`loss_fn` must return per-sample losses of shape ({k * B},) or one mean "
                                f"loss (a scalar) for {k * B} rows, got shape {tuple(vals.shape)}")
        return vals.reshape(k, B).mean(dim=1)

    def _call_loss(self, outputs, targets):
        """``loss_fn(outputs, targets)``. A stock ``nn.CrossEntropyLoss(reduction="none")`` on
        2-15 classes runs on the logits laid out class-major (``class_major_loss``: the same
        loss, 4-8x faster on the CPU for the many narrow rows of a step; every loss the oracle
        computes, plain calls included, takes the same layout, so base and perturbed rows agree)."""
        if class_major(self.loss_fn):
            v = class_major_loss(self.loss_fn, outputs, targets)
            if v is not None:
                return v
        return self.loss_fn(outputs, targets)

    def _scalar(self, outputs, targets) -> torch.Tensor:
        _one_tensor(outputs)
        v = to_torch(self.loss_fn(outputs, targets), outputs.device)
        if v.numel() != 1 and getattr(self._core, "group_rows", False):
            return _rows(v).mean()  # one group's coupled per-sample losses: their mean
        if v.numel() != 1:
            raise ArgumentError(f"`loss_fn` returned a scalar for the first minibatch but shape {tuple(v.shape)} "
                                "now; it must keep one convention")
        return v.reshape(())

    def _loss_rows(self, outputs, targets) -> torch.Tensor:
        """Per-sample losses of ``outputs`` (one loss_fn call), checked to have one per row."""
        _one_tensor(outputs)
        n = outputs.shape[0]
        vals = _rows(to_torch(self._call_loss(outputs, targets), outputs.device))
        if n == 1 and vals.dim() == 0:  # one sample's loss, squeezed by the loss (a last minibatch of one)
            vals = vals.reshape(1)
        if vals.dim() != 1 or vals.shape[0] != n:
            raise ArgumentError(f"`loss_fn` must return per-sample losses of shape ({n},) or one mean loss "
                                f"(a scalar), got {tuple(vals.shape)}")
        return vals

    def _sparse_rows(self, feats, col, ch, k, skip=None, D=None):
        """Losses when most (perturbation, sample) pairs leave the activations unchanged.

        Only the changed pairs run through the rest of the network; the others keep the
        base per-sample loss. Returns None when too many pairs changed to be worth it.
        ``D``: the change of the perturbed channel, ``col`` minus its base (computed if None).
        """
        steps = self._core.chain.steps
        stop, absorbed, base_in, base_out, base_losses, (base_rest, _, _) = feats.walk
        B = base_in.shape[0]
        if D is None:
            D = col - base_in.index_select(1, ch).transpose(0, 1)  # (k, B, ...) change of the perturbed channel
        changed = _nonzero_rows(D, k * B)
        if skip is not None:  # the walk forked: the skip branch changed in the same channel
            changed |= _nonzero_rows(skip - base_rest[0].index_select(1, ch).transpose(0, 1), k * B)
        flat = changed.nonzero().squeeze(1)
        n = flat.shape[0]
        if n > 0.7 * k * B:
            return None
        L = base_losses.unsqueeze(0).expand(k, B).clone()
        if n:
            r, b = torch.floor_divide(flat, B), torch.remainder(flat, B)  # flat // B, flat % B (no operator wrapper)
            tail = tuple(col.shape[2:])
            delta = D.reshape((k * B,) + tail).index_select(0, flat)
            chs = ch.index_select(0, r)
            m = steps[stop].module if absorbed == "layer" else None
            if absorbed == "layer" and type(m) is nn.Linear and 2 * n > k * B:
                # many changed rows: the broadcast rank-one update of all k*B rows and one
                # gather beat two gathers of the changed rows
                Y = absorb(steps[stop], col, ch, base_in, base_out, D).reshape(k * B, -1).index_select(0, flat)
                start = stop + 1
            elif absorbed:
                m = steps[stop + 1].module if absorbed == "flatten" else m
                Y = absorb_rows(absorbed, m, delta, chs, base_out.index_select(0, b))
                start = stop + (2 if absorbed == "flatten" else 1)
            else:
                Y = base_in.index_select(0, b)
                Y[torch.arange(n, device=Y.device), chs] = col.reshape((k * B,) + tail).index_select(0, flat)
                start = stop
            rest = tuple(s.index_select(0, b) for s in base_rest)
            if skip is not None:
                rest[0][torch.arange(n, device=b.device), chs] = skip.reshape((k * B,) + tail).index_select(0, flat)
            if n == 1 and B > 1:
                # one changed sample: run it twice, as a batch of two, since a forward written for
                # batches (``fc(pool(x).squeeze())``) loses the batch dimension of a batch of one
                Y, rest, b = torch.cat([Y, Y]), tuple(torch.cat([s, s]) for s in rest), b.repeat(2)
            out = run_owned(steps, (Y,) + rest, start, *_keep(feats, rows=b))[0]
            vals = self._loss_rows(out, None if self._y is None else self._y.index_select(0, b))[:n]
            L.view(-1).index_copy_(0, flat, vals.to(L.dtype))
        return L.mean(dim=1)

    def _probe(self):
        """Bytes per sample of the state after each step (measured once per input shape)."""
        key = self._key()
        if key not in self._core.probe:
            sizes = []
            with torch.no_grad(), norm_context(self.model, loss_fn=self.loss_fn):
                state = (self._x,)
                B = self._x.shape[0]
                for st in self._core.chain.steps:
                    state = st(state)
                    # a step may keep a tuple (an LSTMCell's (h, c), read whole by the next call)
                    tensors = torch.utils._pytree.tree_leaves(state)
                    sizes.append(sum(s.numel() * s.element_size() for s in tensors if isinstance(s, torch.Tensor)) // B)
            self._core.probe[key] = sizes
        return self._core.probe[key]

    def _budget_bytes(self) -> int:
        """The memory budget of batched work and kept activations: ``budget_bytes`` or the device's default."""
        return self._budget or (_GPU_BUDGET if self.device.type == "cuda" else _CPU_BUDGET)

    def _chunk(self, block: int, feats=None) -> int:
        """Perturbations per batched suffix call within the memory budget.

        Dense path: ``3 * B *`` the largest per-sample state of the suffix. Channel-delta
        path: one channel up to the absorbing layer, dense states after it.
        """
        sizes = self._probe()
        si = self._core.block_steps[block]
        B = self._x.shape[0]
        if feats is not None and feats.walk is not None:
            stop, absorbed, base_in = feats.walk[:3]
            start = stop + {"layer": 1, "flatten": 2}.get(absorbed, 0)
            one = base_in[:, :1].numel() * base_in.element_size()  # one channel, all samples
            dense = max(sizes[start - 1:], default=0) * B
            per = 3 * (one + dense)
        else:
            per = 3 * max(sizes[si:]) * B
        budget = self._budget_bytes()
        return max(1, budget // max(1, per))

    def _measure_costs(self) -> list:
        """Time each step on the bound batch; a block's cost is the time of its suffix."""
        steps = self._core.chain.steps
        times = np.zeros(len(steps))
        with torch.no_grad(), norm_context(self.model, loss_fn=self.loss_fn):
            for _ in range(2):
                state = (self._x,)
                for i, st in enumerate(steps):
                    t0 = time.perf_counter()
                    state = st(state)
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    times[i] += time.perf_counter() - t0
        tail = np.cumsum(times[::-1])[::-1]
        costs = np.array([tail[si] for si in self._core.block_steps])
        return (costs / costs.max()).tolist()

    # ---------------------------------------------------------------- the oracle protocol
    @_one_query_at_a_time
    def __call__(self, params) -> float:
        """Mean loss of the bound minibatch at ``params``: ``model(x)`` itself, dropout off (a plain
        ``nn.Sequential`` runs its modules one by one, the same calls, keeping the activations)."""
        self._require_batch()
        flags = _modes(self.model)  # what the model is (modules, modes, hooks): a plain call leaves it so
        ensure_split(self, flags)  # the chain below must still be the model's (and its parameters the oracle's)
        self._load(params)
        if not self.update_stats:
            return self._plain(params, flags, False)
        holders = self._core.__dict__.setdefault("holders", {})  # per model key: train-mode modules with buffers
        found = holders.get(flags)
        if found is None:  # not BatchNorm's or InstanceNorm's running statistics, which their train-mode output does not read
            found = holders[flags] = [(name, m) for name, m in self.model.named_modules()
                                      if m.training and m._buffers and not isinstance(m, _RUNNING_STATS)]
        if not found:
            return self._plain(params, flags, True)
        # does the forward read what it writes there? Asked at every plain call (once a step): the answer
        # may change (a power iteration that has converged reads its vectors only to round-off)
        saved = [(name, b, b.clone(), b._version) for name, m in found for b in m._buffers.values() if b is not None]
        value = self._plain(params, flags, True, keep_written=True)  # from the buffers found, leaving the update
        moved = sorted({name for name, b, _, version in saved if b._version != version})
        if not moved or self._plain(params, flags, False) == value:  # the updated buffers (put back after): not read
            return value
        with torch.no_grad():  # read: back to the buffers the call found, which every query of the estimate sees
            for _, b, before, _ in saved:
                b.copy_(before)
        if not self._core.__dict__.get("warned_written"):
            self._core.warned_written = True
            warnings.warn(f"TorchOracle: {name_list([n or type(self.model).__name__ for n in moved])} write "
                          "buffers in their train-mode forward and then read them (spectral norm's vectors, a "
                          "quantization observer, a running scale): every query, the plain call included, leaves them "
                          "as it found them, so the loss is a function of the parameters, the same on any executor; "
                          "they do not follow training (move them yourself, with model(x) calls in train mode)",
                          RuntimeWarning, stacklevel=user_stacklevel())
        return value

    def _plain(self, params, flags, update: bool, keep_written: bool = False) -> float:
        """``__call__``'s forward and loss at the loaded ``params``: running statistics updated
        (``update``), and with them other buffers the forward writes (``keep_written``)."""
        with torch.no_grad(), norm_context(self.model, 1, update=update, loss_fn=self.loss_fn,
                                           keep_written=keep_written):
            key = _copy(params)
            try:
                if self._core.chain is not None and chain_is_forward(self.model, self._core.chain.steps):
                    # the same module calls as model(x), one by one: keep every state for the prefixes,
                    # unless they outgrow the memory budget (a large bound batch only evaluated)
                    limit = self._budget_bytes()
                    out, states = self._run_chain(limit)
                else:
                    out, states = self.model(self._x), None
            except ValueError as exc:  # torch's, at a last minibatch of one: name the fix
                if "more than 1 value per channel" not in str(exc):
                    raise
                raise ArgumentError(
                    f"a batch of {self._x.shape[0]} sample(s) met BatchNorm in train mode, which cannot normalize "
                    "one value per channel; drop the last batch (zo.Minibatches(..., drop_last=True)) or choose a "
                    f"batch_size that leaves none of one (torch: {exc})") from exc
            check_batch_first(out, self._x.shape[0])
            scalar = self._core.scalar_loss
            loss = self._scalar(out, self._y) if scalar else None
            rows = None if scalar else self._loss_rows(out, self._y)
        # the caches hold the model's state after the run (a plain call may update buffers): the
        # chain's states when it just ran here (the fresh ones), else the output for the base-point
        # comparison; and the per-sample losses at the base point, which the fast suffix path reuses
        # for the samples a perturbation leaves unchanged (a black-box loss_fn is not asked again)
        state = _model_state(self.model, flags=flags)
        if states is not None:
            self._state_cache = (key, states, state, self._batch_key())
        elif self._core.blocks:
            self._core.base_out = (key, out, state, self._batch_id())
        if scalar:
            self._base_rows = None
            return float(loss)
        self._base_rows = (key, rows, state, self._batch_key())
        return float(rows.reshape(1, -1).mean(dim=1)[0])

    def _chain_is_model(self, params, now, states):
        """Whether the captured graph still computes ``model(x)``: its output at ``params`` (the
        chain's last state, which the perturbations build on) against the plain call's at the same
        params, model state and batch, where one was made (the base point of every estimate). A
        setting the forward reads that the split does not watch (a function attribute swapped, a
        plain object's field, a dict entry added after the capture) changes ``model(x)`` and not
        the graph. The states to use are returned: computed again when the cached ones were stale
        (the batch written where no version counter sees it: through ``.data`` or a NumPy view);
        if they still differ beyond round-off the split is checked again, and retired if the
        check fails: None then."""
        core = self._core  # shared by the bound copies a thread executor's shards run on
        cached = getattr(core, "base_out", None)
        if cached is None or cached[2] is None or not _same(cached[0], params) or cached[2] != now \
                or cached[3] != self._batch_id():
            return states
        core.base_out = None  # compared once per base point
        want = cached[1]
        rel = 1e-9 if want.dtype == torch.float64 else 2000 * torch.finfo(want.dtype).eps

        def diff(states):
            got = states[-1][0] if states and isinstance(states[-1], tuple) else None
            if not torch.is_tensor(want) or not torch.is_tensor(got) or got.shape != want.shape or not want.numel():
                return 0.0
            with torch.no_grad():  # equal entries (masked -inf logits, NaN in both) differ by 0
                same = (got == want) | (got.isnan() & want.isnan())
                d = float((got - want).abs().masked_fill(same, 0.0).max())
                finite = want.masked_fill(~torch.isfinite(want), 0.0)
                d = 0.0 if d <= rel * (float(finite.abs().max()) + 1.0) else d
                if d:  # the loss is what the estimate needs: an output change it ignores is no change
                    y = self._y
                    lw, lg = ((self._scalar(want, y), self._scalar(got, y)) if self._core.scalar_loss
                              else (self._loss_rows(want, y), self._loss_rows(got, y)))
                    lw, lg = torch.as_tensor(lw).double(), torch.as_tensor(lg).double()
                    if torch.allclose(lg, lw, rtol=rel, atol=rel):
                        d = 0.0
            return d

        off = diff(states)
        if not off:
            return states
        self._state_cache = self._ycache = None  # cached from a batch no version counter saw change
        states = self._states(params, now)
        off = diff(states)
        if not off:
            return states
        core.checked_modes.clear()  # the model is not what the check saw, whatever its key says
        _self_check(self, why=f"the captured graph's output at the queried parameters differs from model(x)'s by "
                              f"{off:.3g}: ")
        return states if core.blocks else None

    @_one_query_at_a_time
    def reference_loss(self, params) -> float:
        """The loss of a plain, unpatched ``model(x)`` at ``params`` (dropout off, buffers kept).

        ``zoracle.testing.check_oracle`` and the self-check at the first bind compare every
        fast path against it.
        """
        self._require_batch()
        self._load(params)
        return reference_loss(self, self._x, self._y)

    @_one_query_at_a_time
    def batch(self, params_batch) -> np.ndarray:
        """Losses for each row of ``params_batch`` (k, d); vectorized full forwards."""
        self._require_batch()
        P = _params_tensor("params_batch", params_batch, self.device, self.dtype)
        if P.dim() != 2 or P.shape[1] != self._core.d:
            raise ArgumentError(f"`params_batch` must have shape (k, {self._core.d}), got {tuple(P.shape)}")
        return self._full_batched(P).cpu().double().numpy()

    def _full_batched(self, P: torch.Tensor) -> torch.Tensor:
        k = P.shape[0]
        out = torch.empty(k, dtype=P.dtype, device=P.device)
        B = self._x.shape[0]
        sizes = self._probe()
        budget = self._budget_bytes()
        chunk = max(1, budget // max(1, 3 * max(sizes) * B + P.shape[1] * P.element_size()))
        for lo in range(0, k, chunk):
            out[lo:lo + chunk] = self._full_chunk(P[lo:lo + chunk])
        return out

    def _full_chunk(self, P: torch.Tensor) -> torch.Tensor:
        core = self._core
        if core.vmap_ok and vmap_safe(self.model):
            try:
                out = self._vmapped(P)
                if -1 not in core.vmap_reached:  # once: every parameter put in by name reaches every read of it
                    names = parameter_names(self.model)
                    with torch.no_grad(), norm_context(self.model) as ctx:
                        ok = _reaches(self, ctx, [names[id(p)] for p in core.params], core.params)
                    if not ok:
                        _vmap_off(self, "a parameter")
                        return self._full_loop(P)
                    core.vmap_reached.add(-1)
                return out
            except Exception as exc:  # an op vmap cannot batch, or the forward's own error: the loop tells
                out = self._full_loop(P)  # raises the forward's own error (vmap stays on)
                core.vmap_ok = False  # the loop ran where vmap failed: say so once
                warnings.warn(f"TorchOracle: torch.func.vmap failed ({type(exc).__name__}: {exc}); "
                              "batched queries run one full forward each", RuntimeWarning, stacklevel=user_stacklevel())
                return out
        return self._full_loop(P)

    def _full_loop(self, P: torch.Tensor) -> torch.Tensor:
        """Losses of the rows of ``P``, one full forward each."""
        k = P.shape[0]
        core = self._core
        outs = []
        ensure_split(self)  # the loop runs the captured chain
        with torch.no_grad(), norm_context(self.model, loss_fn=self.loss_fn) as ctx:
            for r in range(k):
                self._load(P[r])
                ctx.reset()
                outs.append(core.chain.run((self._x,))[0])
        with torch.no_grad():
            return self._loss(torch.cat(outs), k)

    def _vmapped(self, P: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call, vmap

        core, k = self._core, P.shape[0]
        model = self.model
        names = parameter_names(model)  # a tied weight under each of its names
        keys = [names[id(p)] for p in core.params]
        x = self._x

        def run(flat):
            d = {key: flat[i.slice].view(i.shape) for ks, i in zip(keys, core.info) for key in ks}
            return functional_call(model, d, (x,), strict=False, tie_weights=False)

        with torch.no_grad(), norm_context(model):
            outs = vmap(run, randomness="error")(P)  # (k, B, ...)
            return self._loss(outs.reshape((k * x.shape[0],) + tuple(outs.shape[2:])), k)

    @property
    def fast_paths_checked(self) -> bool:
        """Its fast paths check themselves against ``model(x)`` at the first bind (the captured split
        retired with a warning where they differ): zoracle's own check of a fast path against the plain
        call, one query more, is not made. False for a subclass that overrides ``batch``,
        ``coordinate_losses``, ``prefix`` or ``suffix``."""
        t = type(self)
        return all(getattr(t, m) is getattr(TorchOracle, m) for m in ("batch", "coordinate_losses", "prefix", "suffix"))

    @property
    def fused_coordinate_losses(self) -> bool:
        """``coordinate_losses`` covers every block in one call, with the same prefix and suffix
        work as one ``prefix`` and ``suffix`` call per block (the same chunks, bit for bit): the
        planner sends a serial CGE there rather than a prefix and a suffix per block, saving each
        call's own costs (parameter loads, checks, copies), about a tenth of the demo model's
        step. False for a subclass that overrides ``prefix``, ``suffix`` or ``coordinate_losses``
        (its own methods then run as it wrote them)."""
        t = type(self)
        return (t.prefix is TorchOracle.prefix and t.suffix is TorchOracle.suffix
                and t.coordinate_losses is TorchOracle.coordinate_losses)

    @_one_query_at_a_time
    def coordinate_losses(self, params, coords, step) -> np.ndarray:
        """Losses at ``params + step * e_i`` for each ``i`` in ``coords``.

        Block by block, in ascending order, each block's coordinates in ``max_queries_per_call``
        chunks: the prefix and suffix calls a split plan makes, in one call.
        """
        self._require_batch()
        c = _indices(coords)
        core = self._core
        d = core.d
        if c.size and (c.min() < 0 or c.max() >= d):
            raise ArgumentError(f"`coords` must lie in [0, {d}), got {int(c[(c < 0) | (c >= d)][0])}")
        out = np.empty(len(c))
        now = _model_state(self.model)  # once for the call: its queries leave modes and buffers as they are
        if ensure_split(self, now[0]):
            now = _model_state(self.model)  # the check ran queries of its own: the state after them
        if not core.blocks:
            self._warn_fallback()
            return full_coordinate_losses(self, params, c, step)
        starts = np.array([b.start for b in core.blocks])
        owner = np.searchsorted(starts, c, side="right") - 1
        call = self.max_queries_per_call
        theta = self._load(params)
        states = self._chain_is_model(params, now, self._states(params, now))
        if states is None:
            return full_coordinate_losses(self, params, c, step)
        with torch.no_grad():
            base = theta[torch.as_tensor(c, device=self.device)]
            h = (base + step) - base  # as suffix computes them, coordinate by coordinate
        blocks = np.unique(owner).tolist()

        def work(ctx):
            for b in blocks:
                sel = np.flatnonzero(owner == b)
                feats = self._features(params, b, states, now, ctx)
                local, hb = c[sel] - core.blocks[b].start, h[torch.as_tensor(sel, device=self.device)]
                for lo in range(0, len(sel), call):
                    out[sel[lo:lo + call]] = self._block_losses(feats, b, local[lo:lo + call], hb[lo:lo + call], ctx)
            return out

        # a norm_context that patches, switches and saves nothing (stock layers, no dropout, BatchNorm
        # or in-place activation to handle) is the same for every prefix and suffix: entered once for
        # all of them; any other, each prefix and suffix enters its own, as split calls do
        # (``inert_context``: what the last one was, so that a model needing its own is not tried again)
        if blocks and getattr(core, "inert_context", True):  # (a core unpickled from an older version has none)
            with torch.no_grad(), norm_context(self.model, loss_fn=self.loss_fn) as ctx:
                core.inert_context = ctx.inert
                if ctx.inert:
                    return work(ctx)
        return work(None)

    @_one_query_at_a_time
    def prefix(self, params, block: int) -> _Features:
        """Activations entering ``block`` (and the fast path's caches) at ``params``."""
        self._require_batch()
        core = self._core
        ensure_split(self)
        if not core.blocks:
            raise ArgumentError(f"this TorchOracle has no blocks (no feature reuse){_retired(core)}; use "
                                "coordinate_losses")
        block = self._check_block(block)
        theta = self._load(params)
        now = _model_state(self.model)
        states = self._chain_is_model(params, now, self._states(params, now))
        if states is None:  # a sharded estimate cannot switch to full forwards halfway: it fails, loudly
            raise ArgumentError(f"TorchOracle: {core.reason}; this estimate was planned on the split, so it stops "
                                "here: run it again (it runs full forwards now)")
        feats = self._features(params, block, states, now)
        feats.at, feats.x = theta.clone(), self._x
        return feats

    def _features(self, params, block: int, states, now=None, ctx=None) -> _Features:
        """``prefix``'s work, the parameters loaded and ``states`` theirs (``now``: the model's
        :func:`_model_state`, when the caller has it; ``ctx``: the inert ``norm_context`` it
        runs in, when the caller has entered one)."""
        core = self._core
        si = core.block_steps[block]
        st = core.chain.steps[si]
        kind = core.kinds[block]
        state = states[si]
        with torch.no_grad(), (norm_context(self.model, loss_fn=self.loss_fn) if ctx is None
                               else contextlib.nullcontext()):
            out = cache = walk = None
            if kind:
                x = state[0]
                # a module step's output is in the states already (the same call on the same input)
                out = states[si + 1][0] if st.fn is None else st.module(x)
                cache = prepare_cache(kind, st.module, x, out)
                if channel_ok(kind, out):
                    walk = self._walk(si, out, state[1:], params, states if st.fn is None else None, now)
        mask = core.downstream.get(si, False)
        if mask is False:
            mask = core.downstream[si] = downstream(core.chain.steps, si)
        keep = None if mask is None or all(mask[si + 1:]) else (mask, states)
        return _Features(block, state, out, cache, self._x.shape[0], walk, keep)

    def _states(self, params, now=None) -> list:
        """The state entering every step at ``params`` (one chain run, cached per params):
        every node's value for the bound minibatch, read by prefixes and by suffixes for the
        steps a perturbation does not reach."""
        now = _model_state(self.model) if now is None else now
        cached = self._state_cache
        if cached is not None and _same(cached[0], params) and cached[2] == now and cached[3] == self._batch_key():
            return cached[1]
        self._load(params)
        with torch.no_grad(), norm_context(self.model, loss_fn=self.loss_fn):
            states = self._run_chain()[1]
        self._state_cache = (_copy(params), states, now, self._batch_key())
        return states

    def _run_chain(self, limit=None) -> tuple:
        """``(output, states)`` of one chain run on the bound batch (inside the caller's contexts):
        ``states`` holds the state entering every step and the last, or is None once their bytes
        pass ``limit``."""
        state, states, held = (self._x,), [(self._x,)], 0
        for st in self._core.chain.steps:
            state = st(state)
            if states is not None:
                if limit is not None:
                    held += sum(t.numel() * t.element_size() for t in state if torch.is_tensor(t))
                if limit is None or held <= limit:
                    states.append(state)
                else:
                    states = None
        return state[0], states

    def __copy__(self):
        """A shallow copy keeping its link to the caller's tensor an aligned batch copies (a copy
        through ``__getstate__`` lost it and answered from the batch before a write); caches empty."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._state_cache = None
        return new

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_state_cache"] = None  # activations stay with the process that computed them
        # the caller's tensor an aligned batch copies (a slice would pickle its whole storage): a
        # copy elsewhere holds the batch as sent, and gets it again when it changes (batch_key)
        state["_aligned_from"] = None
        if state.get("_raw_batch") is not None:  # (as unbind sends it)
            state["_raw_batch"] = _compact(state["_raw_batch"])
        return state

    def _cached_base_rows(self, params, now):
        """Per-sample base losses from the last plain call, if it was at these params and the
        model's state ``now``."""
        cached = getattr(self, "_base_rows", None)
        if cached is None:
            return None
        return cached[1] if _same(cached[0], params) and cached[2] == now and cached[3] == self._batch_key() else None

    def _walk(self, si: int, out, state_rest, params=None, states=None, now=None):
        """Follow a one-channel change through channel-local steps to the next Linear/Conv1d/Conv2d.

        ``states`` (the chain's states at ``params``, ``out`` being ``states[si + 1][0]``): module
        steps walked before any join or fork read their output there instead of running again.
        """
        steps = self._core.chain.steps
        j, h, rest = si + 1, out, tuple(state_rest)
        joins, fork_at = {}, None
        ran = states is not None  # h is states[j][0]: a module step's output is states[j + 1][0]

        def step_out(j, h):
            return states[j + 1][0] if ran and steps[j].fn is None else steps[j]((h,))[0]

        while j < len(steps):
            st = steps[j]
            if channel_local(st, h):
                h = step_out(j, h)
                ran = ran and st.fn is None
            elif st.channel_fn is not None and fork_at is None and h.dim() == 4:
                # a declared join (``relu(main + shortcut(skip))``): still one channel changed
                joins[j] = (h,) + rest
                new = st(joins[j])
                h, rest, ran = new[0], tuple(new[1:]), False
            elif is_fork(st) and fork_at is None:
                fork_at, rest, ran = j, (h,) + rest, False  # the skip branch carries the changed channel
            else:
                break
            j += 1
        if j < len(steps) and absorbs(steps[j], h):
            kind, base_out, start = "layer", step_out(j, h), j + 1
        elif flatten_linear(steps, j, h):
            flat = step_out(j, h)
            ran = ran and steps[j].fn is None
            kind, base_out, start = "flatten", step_out(j + 1, flat), j + 2
        else:
            kind, base_out, start = "", None, j
        # samples whose activations a perturbation leaves unchanged keep their base loss,
        # unless a later layer mixes samples (train-mode BatchNorm)
        base_losses = None
        if not self._core.scalar_loss and not sample_coupling(steps[start:]):
            now = _model_state(self.model) if now is None else now
            base_losses = None if params is None else self._cached_base_rows(params, now)
            if base_losses is None:
                # the same full forward a plain call makes, so the rows are bitwise those of
                # oracle(params) whichever process computed them (sharded = serial)
                with norm_context(self.model, 1, update=False, loss_fn=self.loss_fn):
                    out_ = self.model(self._x)
                base_losses = self._loss_rows(out_, self._y)
                if params is not None:
                    self._base_rows = (_copy(params), base_losses, now, self._batch_key())
        # base state after the walk (its first entry changed too when the walk forked), the
        # base states entering the joins walked, the fork's step
        # the dense suffix runs channels-last (``_nhwc``): keep the bases it copies in that layout
        LAYOUT.nhwc = not getattr(LAYOUT, "off", False) and all(layout_free(st) for st in steps[si + 1:])
        try:
            rest = _nhwc(rest)
            if kind == "layer" and base_out is not None:
                base_out = _nhwc((base_out,))[0]
        finally:
            LAYOUT.nhwc = False
        return (j, kind, h, base_out, base_losses, (rest, joins, fork_at))

    def _check_block(self, block) -> int:
        n = len(self._core.blocks)
        if isinstance(block, bool) or not isinstance(block, numbers.Integral) or not 0 <= block < n:
            raise ArgumentError(f"`block` must be an integer in [0, {n}), got {block!r}")
        return int(block)

    @_one_query_at_a_time
    def suffix(self, features, params, block: int, coords, step) -> np.ndarray:
        """Losses for perturbing each coordinate in ``coords`` (all inside ``block``) by ``step``."""
        self._require_batch()
        ensure_split(self)
        block = self._check_block(block)
        if not isinstance(features, _Features) or features.block != block:
            raise ArgumentError(f"`features` must come from prefix(params, {block}) of this oracle")
        core = self._core
        blk = core.blocks[block]
        c = _indices(coords)
        if not c.size:
            return np.empty(0)
        if c.min() < blk.start or c.max() >= blk.stop:
            raise ArgumentError(f"`coords` must lie in block {block} = [{blk.start}, {blk.stop}), got "
                                f"{int(c[(c < blk.start) | (c >= blk.stop)][0])}")
        theta = self._load(params)
        if features.x is not None and features.x is not self._x:
            raise ArgumentError("`features` were computed on another bound batch (another oracle's prefix, or this one's "
                                "before its batch changed): call prefix(params, block) on this oracle again")
        if features.at is not None and not torch.equal(features.at, theta):
            raise ArgumentError("`features` come from prefix at other `params`: the activations entering the block "
                                "depend on them; call prefix(params, block) with the params given to suffix")
        idx = torch.as_tensor(c, device=self.device)
        with torch.no_grad():
            base = theta[idx]
            h = (base + step) - base  # the representable step, as a perturbed copy would see it
        return self._block_losses(features, block, c - blk.start, h)

    def _block_losses(self, features, block: int, local, h, ctx=None) -> np.ndarray:
        """``suffix``'s work, the parameters loaded: ``local`` indices inside ``block``, ``h``
        their representable steps (torch); ``ctx``: the inert ``norm_context`` it runs in, when
        the caller has entered one."""
        core = self._core
        chunk = self._chunk(block, features)
        # on the CPU each chunk's losses leave torch at once: small tensors kept across chunks sat between
        # the chunks' freed temporaries, and the heap grew by a chunk's work per chunk (1.1 GiB for 40 MiB
        # forwards); on a GPU they stay there until the end (one copy to the host, no sync per chunk)
        out = np.empty(len(local)) if torch.device(self.device).type == "cpu" else []
        steps = core.chain.steps
        LAYOUT.nhwc = not getattr(LAYOUT, "off", False) and all(
            layout_free(st) for st in steps[core.block_steps[block] + 1:])
        try:
            with torch.no_grad(), (norm_context(self.model, loss_fn=self.loss_fn) if ctx is None
                                   else contextlib.nullcontext(ctx)) as ctx:
                for lo in range(0, len(local), chunk):
                    ctx.groups = 1
                    part = self._suffix_chunk(features, block, local[lo:lo + chunk], h[lo:lo + chunk], ctx)
                    if isinstance(out, list):
                        out.append(part)
                    else:
                        out[lo:lo + chunk] = part.double().numpy()
        finally:
            LAYOUT.nhwc = False
        return torch.cat(out).double().cpu().numpy() if isinstance(out, list) else out

    def _suffix_chunk(self, feats: _Features, block: int, local, h, ctx) -> torch.Tensor:
        core = self._core
        ctx.reset()  # a chunk's forward starts from the buffers the query found, as the first one did
        si = core.block_steps[block]
        st = core.chain.steps[si]
        kind = core.kinds[block]
        k = len(local)
        if core.shared[block]:
            return shared_suffix(self, feats, block, local, h, ctx)
        if core.block_names[block] == UNREAD:  # no step reads these (the split's check saw model(x) agree)
            return self._loss(feats.state[0], 1).expand(k)
        if True:
            if feats.walk is not None:
                ch, col = perturbed_channels(kind, st.module, feats.state[0], feats.out, feats.cache,
                                             core.block_params[block], local, h)
                stop, absorbed, base_in, base_out, base_losses, (base_rest, joins, fork_at) = feats.walk
                skip = None
                for j in range(si + 1, stop):
                    if j in joins:
                        col = core.chain.steps[j].channel_fn(col, ch, joins[j])
                    elif j == fork_at:
                        skip = col
                    else:
                        col = channel_step(core.chain.steps[j], col, ch, True)
                # the change of the perturbed channel, (k, B, ...): the sparse rows and the
                # absorbing layer both start from it
                D = None
                if base_losses is not None or absorbed:
                    D = col - base_in.index_select(1, ch).transpose(0, 1)
                if base_losses is not None:
                    sparse = self._sparse_rows(feats, col, ch, k, skip, D)
                    if sparse is not None:
                        return sparse
                rest = tuple(tile(s, k) for s in base_rest[1 if skip is not None else 0:])
                if skip is not None:
                    sk = materialize(base_rest[0], skip, ch)
                    rest = (sk.reshape((-1,) + tuple(sk.shape[2:])),) + rest
                if absorbed == "layer":
                    Y, start = absorb(core.chain.steps[stop], col, ch, base_in, base_out, D), stop + 1
                elif absorbed == "flatten":
                    lin = core.chain.steps[stop + 1].module
                    Y, start = absorb_flatten_linear(lin, col, ch, base_in, base_out, D), stop + 2
                else:
                    Y, start = materialize(base_in, col, ch), stop
                ctx.groups = k
                state = run_owned(core.chain.steps, _nhwc((Y.reshape((-1,) + tuple(Y.shape[2:])),) + rest), start,
                                  *_keep(feats, k))
                return self._loss(state[0], k)
            rest = tuple(repeat_rows(s, k) for s in feats.state[1:])
            if kind:
                Y = perturbed_outputs(kind, st.module, feats.state[0], feats.out, feats.cache,
                                      core.block_params[block], local, h)
                state = (Y.reshape((-1,) + tuple(Y.shape[2:])),) + rest
            else:
                outs = generic_outputs(st, feats.state, core.block_params[block], local, h, ctx.reset)
                state = tuple(torch.cat([o[i] for o in outs]) for i in range(len(outs[0])))
            ctx.groups = k
            state = run_owned(core.chain.steps, _nhwc(state), si + 1, *_keep(feats, k))
            return self._loss(state[0], k)

    # ---------------------------------------------------------------- evaluation
    def predict(self, params, x, *, batch_size: int = 1024, train: bool = False) -> np.ndarray:
        """Model outputs for ``x`` at ``params`` (no grad, in chunks of ``batch_size``).

        ``train=False`` evaluates in eval mode (BatchNorm running statistics, no dropout) and
        restores the model's mode afterwards; ``train=True`` uses each chunk's statistics (a
        last chunk of one sample joins the chunk before it).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ArgumentError(f"`batch_size` must be an integer >= 1, got {batch_size!r}")
        train = check_flag("train", train)
        _refuse_parametrize_cache(self._core.model)
        check_held(self._core)
        self._load(params)
        xt = _batch_tensor("x", x, self.device, self.dtype, label="`x`")  # as bind(batch) converts its x
        if xt.dim() == 0 or xt.shape[0] == 0:
            raise ArgumentError(f"`x` must hold at least one sample (its first dimension), got shape {tuple(xt.shape)}")
        n = xt.shape[0]
        starts = list(range(0, n, batch_size))
        if train and len(starts) > 1 and n - starts[-1] == 1:
            starts.pop()  # the last sample joins the chunk before: batch statistics of one sample are undefined
        model = self.model
        # every module's own mode comes back (a BatchNorm frozen in eval mode inside a model in
        # train mode stays frozen; model.train(was) would set them all alike)
        was = [(m, m.training) for m in model.modules()]
        outs = []
        try:
            model.train(train)
            with torch.no_grad(), norm_context(model):
                for lo, hi in zip(starts, starts[1:] + [n]):
                    try:
                        outs.append(model(xt[lo:hi]))
                    except RuntimeError as exc:  # uint8 pixels: name x and the cast, as bind does
                        _integer_batch_error(exc, "x", xt, "model(x)", label="`x`")
                        raise
        finally:
            for m, t in was:
                m.training = t
        return torch.cat(outs).cpu().numpy()

    def __repr__(self) -> str:
        b = "unbound" if self._x is None else f"batch={tuple(self._x.shape)}"
        return (f"TorchOracle({type(self.model).__name__}, d={self._core.d}, blocks={len(self._core.blocks)}, "
                f"{b}, dtype={self.dtype}, device={self.device})")
