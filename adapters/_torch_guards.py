"""TorchOracle's guards around a query: aliased parameters refused, the model's state that keys
its caches, one query at a time, autocast and parametrize caches kept out, TF32 noted."""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, TypeVar, cast

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from zoracle._errors import ArgumentError, user_stacklevel, warn

from ._torch_chain import _model_lock as model_lock
from ._torch_graph import is_autocast_enabled
from ._torch_hooks import name_list
from ._torch_watch import module_key, user_global_hooks


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
    glob = user_global_hooks() if flags is None else ()  # (once for the walk, not per module)
    for m in model.modules():  # one walk for both
        if flags is None:
            keys.append(module_key(m, glob))
        if m._buffers and not (read_only and m.training and isinstance(m, _RUNNING_STATS)):
            buffers += [(id(b), b._version) for b in m._buffers.values() if b is not None]
        if m._parameters:  # frozen weights (requires_grad=False) are not in the flat vector: read like buffers
            buffers += [(id(p), p._version) for p in m._parameters.values() if p is not None and not p.requires_grad]
    return (tuple(keys) if flags is None else flags), tuple(buffers)

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _one_query_at_a_time(method: _Method) -> _Method:
    """Threads that share the model (a threading executor) take turns through a whole query: its
    parameter load and every forward after it. Between a load and its forward another thread's
    query could load its own parameters (a batch's last row), and a step with no closed form
    perturbs a parameter in place (``nudged``) that another thread would read or undo."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        core = self._core
        _refuse_parametrize_cache(core.model)
        if core.params[0].dtype is not core.__dict__.get("built_dtype", core.params[0].dtype):
            check_dtype(core)  # the model converted (model.half()); one layer alone: at the next bind or load
        with model_lock(self._core.model), _autocast_off(self):
            if getattr(self, "_aligned_from", None) is not None:
                self._batch_key()  # an aligned copy of a batch written in place since: made again first
            return method(self, *args, **kwargs)
    return cast(_Method, run)

def check_dtype(core) -> None:
    """The trainable parameters still have the dtype the oracle was built with: ``model.half()``,
    ``model.float()`` or ``model.double()`` on a built oracle's model converts them in place, where
    its flat vector, bound batch and caches keep the dtype it was built with (the next query named
    a ``dtype`` argument nobody passed, or failed in torch with "mat1 and mat2 must have the same
    dtype")."""
    built = core.__dict__.get("built_dtype")  # (a core unpickled from an older version has none)
    if built is None:
        return
    changed = [(info.name, p.dtype) for info, p in zip(core.info, core.params) if p.dtype is not built]
    if not changed:
        return
    now = changed[0][1]
    back = "model.double()" if built == torch.float64 else "model.float()"
    new = ("" if now in (torch.float32, torch.float64) else
           f" (a {now} model is refused: a finite difference in half precision is mostly rounding)")
    raise ArgumentError(
        f"`model`'s parameters {name_list([n for n, _ in changed])} are {now} now, but the TorchOracle was built on "
        f"{built} ones (model.half(), .float(), .double() or .to(dtype) converted them in place since): its flat "
        f"vector and bound batch are {built}; convert the model back ({back}), or build a new TorchOracle for the "
        f"converted model{new}")


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
        warn(f"TorchOracle: queried inside torch.autocast({dev!r}): the oracle turns it off for its own "
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
