"""The step chain behind TorchOracle: how a model is split, run and perturbed in batches.

A model is run as a chain of *steps* over a *state*, a tuple of tensors whose first entry is
the main activation (every entry has the batch as its first dimension). A step either
applies a module to the main activation or maps the whole state (residual forks and joins).
Steps that own trainable parameters are the oracle's blocks.

Perturbed outputs of one step are built for ``k`` coordinates at once as a ``(k, B, ...)``
tensor, then flattened to ``k * B`` rows for the rest of the chain:

- ``Linear``: perturbing ``W[i, j]`` by ``h`` adds ``h * x[..., j]`` to output unit ``i``;
  the bias ``b[i]`` adds ``h``.
- ``Conv2d``: perturbing ``W[o, c, p, q]`` adds ``h`` times input channel ``c`` (of ``o``'s
  group), padded and shifted by ``(p, q)`` with the layer's stride and dilation, to output
  channel ``o``. ``Conv1d`` is the same layer seen as a Conv2d of height 1
  (:class:`Conv2dView`), so the two share every closed form.
- ``BatchNorm``: perturbing ``weight[c]`` adds ``h * xhat[:, c]`` (the normalized input) to
  channel ``c``; ``bias[c]`` adds ``h``.
- anything else: a loop that perturbs the parameter in place, runs the step on the ``B``
  samples, and restores the exact old value.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoracle._forked import ForkSafeLock

__all__ = ["Step", "fork", "Chain", "norm_context"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
         nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


@dataclass(frozen=True, eq=False)
class Step:
    """One step of a model's forward chain, for models that declare their own split.

    A model opts into feature reuse by defining ``zoracle_steps(self) -> list`` whose items
    are modules (applied to the main activation) or ``Step`` objects; running the items in
    order on the state ``(x,)`` must equal ``model(x)``.

    Parameters
    ----------
    module : nn.Module, optional
        The module owning this step's parameters (None for a parameter-free step).
    fn : callable, optional
        ``state -> state`` (a tuple of tensors, batch first; a single tensor return means a
        one-entry state). When None, the step is ``state[0] <- module(state[0])``.
    name : str, optional
        Shown in ``TorchOracle.block_names``.
    params : tuple, optional
        Trainable parameters ``fn`` reads directly (set by graph capture for ``get_attr`` nodes
        and modules inside a function step).
    rowwise : bool, optional
        ``fn`` treats samples independently, so it may run on any subset of rows (default True).
    channel_fn : callable, optional
        ``(col, ch, state) -> col``: when only channel ``ch[r]`` of ``state[0]`` changes (to
        ``col[r]``, shape ``(k, B, ...)``) and ``state[1:]`` does not, ``fn``'s main output
        changes in that channel only, to the returned values, and its other outputs not at all.

    Notes
    -----
    ``fn`` must treat every row of the state independently (the oracle runs many
    perturbations as one batch; see ``TorchOracle``). A train-mode BatchNorm couples rows: as
    a step of its own (``module``) the oracle runs it per perturbation; inside a function step
    it counts as mixing samples, and the model runs full forwards (exact, no feature reuse).
    """

    module: Optional[nn.Module] = None
    fn: Optional[Callable] = None
    name: str = ""
    #: trainable parameters ``fn`` reads directly (graph capture: ``get_attr`` and modules inside a function step)
    params: tuple = ()
    #: ``fn`` treats samples independently, so it may run on any subset of rows
    rowwise: bool = True
    #: optional ``(col, ch, state) -> col``: when only channel ``ch[r]`` of ``state[0]`` changes
    #: (to ``col[r]``, shape ``(k, B, ...)``) and ``state[1:]`` does not, ``fn``'s main output
    #: changes in that channel only, to the returned values, and its other outputs not at all
    channel_fn: Optional[Callable] = None

    def __call__(self, state: tuple) -> tuple:
        if self.fn is None:
            return (self.module(state[0]),) + tuple(state[1:])
        out = self.fn(state)
        return out if isinstance(out, tuple) else (out,)


def _fork(state):
    return (state[0],) + tuple(state)


fork = Step(fn=_fork, name="fork")
"""A parameter-free `Step` that duplicates the main activation: the start of a residual
branch in a step list (the branch runs on the first copy, a later join adds the second)."""


# ---------------------------------------------------------------------------------------
# BatchNorm and dropout semantics inside the oracle
# ---------------------------------------------------------------------------------------
class _NormState:
    """Shared run-time settings read by the patched BatchNorm forwards."""

    def __init__(self):
        self.groups = 1
        self.update = False
        #: ``(buffer, value, version)`` of the buffers train-mode modules write on every forward
        #: (spectral norm's power-iteration vectors, InstanceNorm's running statistics)
        self.saved = []
        #: the context patched no forward, switched no flag and saved no buffer: entering another
        #: one on the same model would do the same (nothing)
        self.inert = False

    def reset(self) -> None:
        """Put back every saved buffer a forward wrote: each perturbation's forward then starts
        from the state the query found (spectral norm's next power iteration reads its vector)."""
        if self.saved:
            with torch.no_grad():
                for b, v, version in self.saved:
                    if b._version != version or not _same_values(b, v):
                        b.copy_(v)


def _same_values(b: torch.Tensor, v: torch.Tensor) -> bool:
    """``b`` holds ``v``'s values, NaN where ``v`` has NaN (a copy would bump its version: the
    caches keyed on it would miss at every query)."""
    if torch.equal(b, v):
        return True
    return b.is_floating_point() and b.shape == v.shape and bool(((b == v) | (b.isnan() & v.isnan())).all())


def _bn_forward(mod, ctx: _NormState, x):
    batch_stats = mod.training or mod.running_mean is None
    if not batch_stats:
        return F.batch_norm(x, mod.running_mean, mod.running_var, mod.weight, mod.bias, False, 0.0, mod.eps)
    g = ctx.groups
    if g == 1:
        if ctx.update and mod.track_running_stats and mod.running_mean is not None:  # as torch's forward decides
            mod.num_batches_tracked.add_(1)
            m = mod.momentum if mod.momentum is not None else 1.0 / float(mod.num_batches_tracked)
            return F.batch_norm(x, mod.running_mean, mod.running_var, mod.weight, mod.bias, True, m, mod.eps)
        return F.batch_norm(x, None, None, mod.weight, mod.bias, True, 0.0, mod.eps)
    return _grouped_bn(x, g, mod.weight, mod.bias, mod.eps)


def _grouped_bn(x, g, weight, bias, eps):
    """Train-mode batch norm with separate statistics for each of ``g`` row groups.

    One native batch-norm kernel per group, each writing its slice of one output tensor:
    a fused statistics pass and a fused affine pass per group, no concatenation copy.
    """
    n = x.shape[0]
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    if x.dim() < 2 or n % g or not (x.is_contiguous() or nhwc) or x.dtype not in (torch.float32, torch.float64):
        return torch.cat([F.batch_norm(part, None, None, weight, bias, True, 0.0, eps) for part in x.chunk(g)])
    out = torch.empty_like(x, memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    c = x.shape[1]
    save_mean = torch.empty(c, dtype=x.dtype, device=x.device)
    save_invstd = torch.empty(c, dtype=x.dtype, device=x.device)
    r = n // g
    for i in range(g):
        torch.ops.aten.native_batch_norm.out(x[i * r:(i + 1) * r], weight, bias, None, None, True, 0.0, eps,
                                             out=out[i * r:(i + 1) * r], save_mean=save_mean,
                                             save_invstd=save_invstd)
    return out


def bn_normalized(mod, x):
    """BatchNorm's normalized input ``xhat`` (no affine), with the same statistics as forward."""
    if mod.training or mod.running_mean is None:
        return F.batch_norm(x, None, None, None, None, True, 0.0, mod.eps)
    return F.batch_norm(x, mod.running_mean, mod.running_var, None, None, False, 0.0, mod.eps)


def _own_forward_grouped(mod, ctx: _NormState, x, *args, **kwargs):
    """A BatchNorm subclass's own forward, run once per row group (its statistics per group)."""
    fwd = type(mod).forward
    g = ctx.groups
    if g == 1:
        return fwd(mod, x, *args, **kwargs)
    return torch.cat([fwd(mod, part, *args, **kwargs) for part in x.chunk(g)])


_DROPOUT_FUNCS = None


def _dropout_funcs():
    global _DROPOUT_FUNCS
    if _DROPOUT_FUNCS is None:
        ident = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
                 torch.dropout, torch.feature_dropout, torch.alpha_dropout, torch.feature_alpha_dropout}
        _DROPOUT_FUNCS = (ident, {F.scaled_dot_product_attention, F.multi_head_attention_forward})
    return _DROPOUT_FUNCS


class _NoDropout(torch.overrides.TorchFunctionMode):
    """Functional dropout is the identity and attention runs with ``dropout_p = 0``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ident, attn = _dropout_funcs()
        if func in ident:
            return args[0] if args else kwargs["input"]
        if func in attn:
            if func is F.scaled_dot_product_attention:
                if len(args) > 4:
                    args = args[:4] + (0.0,) + tuple(args[5:])
                kwargs["dropout_p"] = 0.0
            else:  # multi_head_attention_forward: dropout_p is its 11th positional argument
                if len(args) > 10:
                    args = args[:10] + (0.0,) + tuple(args[11:])
                else:
                    kwargs["dropout_p"] = 0.0
        return func(*args, **kwargs)


_BATCHNORM = nn.modules.batchnorm._BatchNorm
_INSTANCENORM = nn.modules.instancenorm._InstanceNorm

# stock layers whose forward calls no functional dropout or attention: a model made only of
# these (exact types, the root included) needs no ``_NoDropout`` mode, whose per-op dispatch
# costs about 15% of a small model's CGE step
_NO_FUNCTIONAL_DROPOUT = (
    nn.Sequential, nn.ModuleList, nn.Identity, nn.Flatten, nn.Unflatten, nn.Linear, nn.Bilinear,
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softmax, nn.LogSoftmax, nn.PReLU,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d) + _DROPOUT


_STOCK_LOSSES = (nn.CrossEntropyLoss, nn.MSELoss, nn.L1Loss, nn.NLLLoss, nn.BCELoss, nn.BCEWithLogitsLoss,
                 nn.SmoothL1Loss, nn.HuberLoss, nn.KLDivLoss)
_ANY_LOSS = object()  # norm_context's default: the loss run inside is unknown, so the mode stays on


def _needs_dropout_mode(model: nn.Module) -> bool:
    """False when every submodule (the root included) runs a stock forward (a type from
    ``_NO_FUNCTIONAL_DROPOUT``, or a Sequential subclass keeping Sequential's forward) and no
    forward hook is registered: nothing can then reach a functional dropout. The type check is
    part of the per-model cache of ``_model_info``; hooks come and go, so they are checked on
    every call."""
    return _dropout_mode_and_special(model)[0]


def _dropout_mode_and_special(model: nn.Module) -> tuple:
    """``(_needs_dropout_mode(model), _special_modules(model))`` from one walk over the modules."""
    mods = list(model.modules())
    info = _model_info(model, len(mods))
    if not info.stock:
        return True, info.special
    return bool(nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
                or any(m._forward_hooks or m._forward_pre_hooks for m in mods)), info.special


def _stock_forward(m: nn.Module) -> bool:
    """Exactly a stock type, or an ``nn.Sequential`` subclass that keeps Sequential's forward."""
    t = type(m)
    if t in _NO_FUNCTIONAL_DROPOUT:
        return True
    return (issubclass(t, nn.Sequential) and t.forward is nn.Sequential.forward
            and t.__iter__ is nn.Sequential.__iter__ and t.__call__ is nn.Module.__call__)


@contextlib.contextmanager
def norm_context(model: nn.Module, groups: int = 1, update: bool = False, loss_fn=_ANY_LOSS, keep_written=False):
    """Run ``model`` with oracle semantics.

    BatchNorm in train mode normalizes each of ``groups`` equal row groups with its own
    batch statistics (one group per perturbation) and updates running statistics only when
    ``update`` (plain calls); eval-mode BatchNorm uses the running statistics. A BatchNorm
    subclass keeps its own ``forward`` (run once per group; its buffers are restored unless
    ``update``). Dropout, module and functional (attention included), is the identity:
    finite differences need a deterministic loss. In-place activations run out of place, so
    cached activations are never overwritten. Functional dropout is removed by a torch
    function mode, skipped only when ``model`` is made of stock layers and ``loss_fn`` (the
    loss the caller runs inside, None for none) is a stock loss module: nothing can then
    reach a functional dropout. Buffers other train-mode modules write are put back unless
    ``update`` and ``keep_written`` (a plain call, once its forward is known not to read what it
    writes: ``TorchOracle.__call__``); InstanceNorm's running statistics go with ``update``.
    """
    ctx = _NormState()
    ctx.groups, ctx.update = int(groups), bool(update)
    patched, flags, saved = [], [], ctx.saved
    plain = loss_fn is None or type(loss_fn) in _STOCK_LOSSES
    needs_mode, special = _dropout_mode_and_special(model)
    mode = contextlib.nullcontext() if plain and not needs_mode else _NoDropout()
    # threads that share the model (a threading executor) take turns: the patches below are the
    # model's own attributes (one thread's exit would unpatch another's forward), and a step with
    # no closed form perturbs a parameter in place (``nudged``), which another thread's forward,
    # or its ``_load`` of the parameters (under the same lock), would otherwise read or undo
    guard = _model_lock(model)
    guard.__enter__()
    try:
        for m in special:
            if type(m) in _BN:
                m.forward = (lambda x, m=m: _bn_forward(m, ctx, x))
                patched.append(m)
            elif isinstance(m, _BATCHNORM) and (m.training or m.running_mean is None):
                if not update:
                    saved += [(b, b.clone(), b._version) for b in m.buffers(recurse=False)]
                m.forward = (lambda x, *a, m=m, **kw: _own_forward_grouped(m, ctx, x, *a, **kw))
                patched.append(m)
            elif isinstance(m, _DROPOUT):
                m.forward = _identity
                patched.append(m)
            if getattr(m, "inplace", False) is True:
                m.inplace = False
                flags.append((m, "inplace", True))
            if m.training and not isinstance(m, _BATCHNORM) and m._buffers and (
                    not update or not (keep_written or isinstance(m, _INSTANCENORM))):
                # buffers a module writes in train mode: a query leaves them as it found them. A plain
                # call (``update``) keeps InstanceNorm's running statistics, which its train-mode output
                # does not read, and others' when its forward is known not to read them either; not
                # those a forward reads after writing them (spectral norm's power-iteration vectors, a
                # quantization observer): with them moved by the base point's call, the estimate's
                # queries would see two states (and on an executor's workers, whichever copy ran the
                # base point another one)
                saved += [(b, b.clone(), b._version) for b in m.buffers(recurse=False)]
            if isinstance(m, (nn.MultiheadAttention, nn.RNNBase)) and m.dropout:
                # a recurrent layer's dropout between its layers runs inside its kernel
                flags.append((m, "dropout", m.dropout))
                m.dropout = 0.0
        ctx.inert = not (patched or flags or saved)
        mode.__enter__()
        try:
            yield ctx
        finally:
            mode.__exit__(None, None, None)
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
        for m, attr, v in flags:
            setattr(m, attr, v)
        try:
            with torch.no_grad():
                for b, v, version in saved:
                    # written: put back (one left untouched keeps its version and bits). Compared
                    # by value too: torch's batch-norm kernel writes the running statistics of a
                    # BatchNorm subclass in place without counting a version
                    if b._version != version or not _same_values(b, v):
                        b.copy_(v)
        finally:
            guard.__exit__(None, None, None)


_LOCKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = ForkSafeLock()


def _model_lock(model: nn.Module):
    """A re-entrant lock per model (contexts nest within one thread)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = ForkSafeLock(threading.RLock)
        return lock


@dataclass(frozen=True)
class _ModelInfo:
    count: int  # submodules when cached: a changed count refreshes the entry
    special: list  # the ones ``norm_context`` patches (BatchNorm, dropout, in-place, attention, recurrent
    # layers) or whose buffers it restores
    stock: bool  # every forward is a stock one (see ``_needs_dropout_mode``)


_INFO = weakref.WeakKeyDictionary()


def _model_info(model: nn.Module, n: Optional[int] = None) -> _ModelInfo:
    """What ``norm_context`` needs of ``model``, from one walk over its submodules, cached per
    model (weakly: the entry holds no reference to the model itself) and refreshed when its
    number of submodules changes (``n``, when the caller has counted them)."""
    n = sum(1 for _ in model.modules()) if n is None else n
    hit = _INFO.get(model)
    if hit is None or hit.count != n:
        mods = list(model.modules())
        special = [m for m in mods if isinstance(m, (_BATCHNORM, nn.MultiheadAttention, nn.RNNBase) + _DROPOUT)
                   or hasattr(m, "inplace") or m._buffers]
        hit = _INFO[model] = _ModelInfo(n, special, all(map(_stock_forward, mods)))
    return hit


def _special_modules(model: nn.Module) -> list:
    """The submodules ``norm_context`` patches (BatchNorm, dropout, in-place, attention)."""
    return _model_info(model).special


def chain_is_forward(model: nn.Module, steps) -> bool:
    """Whether ``model(x)`` is exactly running ``steps`` in order: ``model`` is an
    ``nn.Sequential`` (nested stock Sequentials expanded) whose leaves are the steps' modules,
    one module step each, no container has a forward hook, and none is a BatchNorm (whose
    running statistics a plain call may update). Checked at each call: modules can be swapped."""
    if not isinstance(model, nn.Sequential) or nn.modules.module._global_forward_hooks \
            or nn.modules.module._global_forward_pre_hooks:
        return False
    leaves, todo = [], [model]
    while todo:
        m = todo.pop()
        if isinstance(m, nn.Sequential):
            if not _stock_forward(m) or "forward" in m.__dict__ or m._forward_hooks or m._forward_pre_hooks:
                return False  # a forward of its own (on the class or set on the instance) or a hook
            todo.extend(reversed(list(m._modules.values())))
        elif isinstance(m, _BATCHNORM) or m is None:
            return False
        else:
            leaves.append(m)
    return len(leaves) == len(steps) and all(st.fn is None and st.module is m for st, m in zip(steps, leaves))


def vmap_safe(model: nn.Module) -> bool:
    """False when a BatchNorm subclass in train mode would update its buffers inside ``vmap``, or
    an ``nn.Embedding`` with ``max_norm`` would renormalize its weight rows in place there (on the
    batched copies, silently wrong)."""
    return not any(type(m) not in _BN and isinstance(m, _BATCHNORM) and m.training and m.running_mean is not None
                   for m in _special_modules(model)) \
        and not any(isinstance(m, nn.Embedding) and m.max_norm is not None for m in model.modules())


def _identity(x, *args, **kwargs):
    return x


# ---------------------------------------------------------------------------------------
# chain extraction
# ---------------------------------------------------------------------------------------
def _module_names(model: nn.Module) -> dict:
    return {id(m): n for n, m in model.named_modules()}


def steps_from_items(model: nn.Module, items, where: str = "`blocks`") -> list:
    """Normalize a declared split (modules and ``Step`` objects) into named ``Step`` objects
    (``where``: what declared them, for errors)."""
    names = _module_names(model)
    own = {id(p) for p in model.parameters()}
    steps = []
    for i, item in enumerate(items):
        mod = item.module if isinstance(item, Step) else item
        if isinstance(item, Step) and mod is not None and not isinstance(mod, nn.Module):
            from zoracle._errors import ArgumentError

            raise ArgumentError(f"{where} item {i}: Step's first field is `module` (an nn.Module), got "
                                f"{type(mod).__name__}; pass a function as Step(fn=..., ...)")
        if isinstance(mod, nn.Module) and id(mod) not in names and any(
                p.requires_grad and id(p) not in own for p in mod.parameters()):
            # trainable parameters the model does not hold (a wrapper of its own layers, or a
            # parameter-free module built inline, is fine)
            from zoracle._errors import ArgumentError

            raise ArgumentError(f"{where} item {i} ({type(mod).__name__}) holds trainable parameters that are not "
                                "`model`'s (a copy of its modules, or another model's); pass the model's own modules, "
                                "e.g. list(model.children())")
        if isinstance(item, Step):
            nm = item.name or (names.get(id(item.module), f"step{i}") if item.module is not None else f"step{i}")
            # every declared field travels (rowwise=False keeps sample-coupled steps off the sparse path)
            steps.append(dataclasses.replace(item, name=nm))
        elif isinstance(item, nn.Module):
            steps.append(Step(module=item, name=names.get(id(item), f"step{i}")))
        else:
            raise TypeError(f"item {i} is {type(item).__name__}; expected an nn.Module or Step")
    return steps


def extract_steps(model: nn.Module):
    """``(steps, "")`` for a model with a usable split, else ``(None, reason)``.

    A model declaring ``zoracle_steps()`` is split as declared; any other model (an
    ``nn.Sequential`` included) is split by graph capture (``_torch_graph``).
    """
    if hasattr(model, "zoracle_steps"):
        return steps_from_items(model, list(model.zoracle_steps()), f"{type(model).__name__}.zoracle_steps()"), ""
    from ._torch_graph import trace_steps

    steps, reason = trace_steps(model)
    if steps is None:
        return None, reason + "; every perturbation runs a full forward (no feature reuse)"
    return steps, ""


# ---------------------------------------------------------------------------------------
# perturbed outputs of one step
# ---------------------------------------------------------------------------------------
@dataclass
class BlockParams:
    """The trainable parameters of one block: tensors, their role in the module, offsets."""

    params: list      # list of nn.Parameter
    roles: list       # attribute names in the module ("weight", "bias", ...) or dotted names
    offsets: np.ndarray  # start of each parameter inside the block (plus the total at the end)


def fast_kind(module) -> str:
    """Which closed-form perturbation builder applies to ``module`` ('' for the generic loop)."""
    if "forward" in vars(module):  # a forward patched on the instance: not the layer the closed forms know
        return ""
    if type(module) is nn.Linear:
        return "linear"
    if type(module) is nn.Conv2d:
        return "conv2d"
    if type(module) is nn.Conv1d:
        return "conv1d"
    if (type(module) in _BN or type(module) is nn.GroupNorm) and module.affine:
        return "bn"  # per-channel affine of a normalized input (GroupNorm's xhat in the cache)
    if type(module) is nn.LayerNorm and module.elementwise_affine:
        return "ln"
    if type(module) is nn.Embedding and module.max_norm is None:
        return "emb"
    return ""


class Conv2dView:
    """A ``Conv1d`` seen as a ``Conv2d`` of height 1: kernel ``(1, k)``, weight ``(O, C, 1, k)``.

    Only the attributes the 2-D closed forms read; inputs are viewed as ``(B, C, 1, L)``.
    """

    __slots__ = ("weight", "kernel_size", "stride", "dilation", "padding", "padding_mode", "groups",
                 "_reversed_padding_repeated_twice")

    def __init__(self, m: nn.Conv1d):
        self.weight = m.weight.unsqueeze(2)
        self.kernel_size = (1,) + tuple(m.kernel_size)
        self.stride = (1,) + tuple(m.stride)
        self.dilation = (1,) + tuple(m.dilation)
        self.padding = m.padding if isinstance(m.padding, str) else (0,) + tuple(m.padding)
        self.padding_mode = m.padding_mode
        self.groups = m.groups
        self._reversed_padding_repeated_twice = list(m._reversed_padding_repeated_twice) + [0, 0]


def _as2d(kind: str, module, *tensors):
    """``("conv2d", Conv2dView, tensors with a height of 1)`` for a Conv1d block, else unchanged."""
    if kind != "conv1d":
        return (kind, module) + tensors
    return ("conv2d", Conv2dView(module)) + tuple(None if t is None else t.unsqueeze(2) for t in tensors)


#: largest unfolded conv input (patches) cached per prefix; beyond it, gather from the input
_UNFOLD_BYTES = 256 * 2**20


def conv_patches(module, cache, ci, p, q, out, dev):
    """``(B, k, Ho, Wo)``: input channel ``ci`` shifted by ``(p, q)`` for each perturbation."""
    Ho, Wo = out.shape[-2], out.shape[-1]
    kh, kw = module.kernel_size
    if cache.dim() == 3:  # unfolded patches
        rows = _t(ci * (kh * kw) + p * kw + q, dev)
        return cache.index_select(1, rows).view(cache.shape[0], -1, Ho, Wo)
    sh, sw = module.stride
    dh, dw = module.dilation
    rows = _t(p[:, None] * dh + sh * np.arange(Ho)[None, :], dev)
    cols = _t(q[:, None] * dw + sw * np.arange(Wo)[None, :], dev)
    return cache[:, _t(ci, dev)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _pair(v) -> tuple:
    """A conv size as ``(h, w)``: a tuple or list as is, a number twice (cheaper than torch's
    ``_pair``, whose ``Iterable`` check is slow on this path)."""
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


#: flat gather indices of :func:`unfold`, per (channels, padded size, geometry, order); emptied
#: when it would pass ``_UNFOLD_INDEX_BYTES`` (an index that large alone is not kept)
_UNFOLD_INDEX: dict = {}
_UNFOLD_INDEX_BYTES = 64 * 2**20
_UNFOLD_LOCK = ForkSafeLock()  # threads of one process share the cache


def _unfold_index(C, H, W, kh, kw, dh, dw, sh, sw, Ho, Wo, positions_first: bool):
    """Indices into a ``(C, H, W)`` sample (flattened) of every patch value, in ``F.unfold``'s
    order ``(C, kh, kw, Ho, Wo)`` or, with ``positions_first``, in ``(Ho, Wo, C, kh, kw)``."""
    key = (C, H, W, kh, kw, dh, dw, sh, sw, positions_first)
    idx = _UNFOLD_INDEX.get(key)
    if idx is None:
        c, p, q, oh, ow = np.ix_(np.arange(C), np.arange(kh), np.arange(kw), np.arange(Ho), np.arange(Wo))
        flat = c * (H * W) + (oh * sh + p * dh) * W + (ow * sw + q * dw)  # (C, kh, kw, Ho, Wo)
        if positions_first:
            flat = flat.transpose(3, 4, 0, 1, 2)
        idx = torch.from_numpy(np.ascontiguousarray(flat).reshape(-1))
        size = idx.numel() * idx.element_size()
        with _UNFOLD_LOCK:
            if size + sum(i.numel() * i.element_size() for i in _UNFOLD_INDEX.values()) > _UNFOLD_INDEX_BYTES:
                _UNFOLD_INDEX.clear()
            if size <= _UNFOLD_INDEX_BYTES:
                _UNFOLD_INDEX[key] = idx
    return idx


def unfold(x, kernel_size, dilation=(1, 1), padding=(0, 0), stride=(1, 1), positions_first: bool = False):
    """``F.unfold`` of a 4-D ``x``, the same values in the same layout (``(B, C*kh*kw, L)``,
    contiguous); with ``positions_first`` the transpose ``(B, L, C*kh*kw)``, contiguous.

    On CPU with numeric padding it is one copy of the zero-padded input, several times faster
    than ``F.unfold`` (``im2col``, which loops over the batch with an operator call per sample):
    a strided copy of a window view when each patch row is a long contiguous run (stride 1,
    at least 16 output columns), else one ``index_select`` of the patches' flat positions, which
    is 1.5-4x faster than the strided copy on small or strided windows (runs of a few values)."""
    kh, kw = _pair(kernel_size)
    dh, dw = _pair(dilation)
    sh, sw = _pair(stride)
    if x.device.type != "cpu" or isinstance(padding, str) or x.dim() != 4:
        U = F.unfold(x, (kh, kw), dilation=(dh, dw), padding=padding, stride=(sh, sw))
        return U.transpose(1, 2).contiguous() if positions_first else U
    ph, pw = _pair(padding)
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    B, C, H, W = x.shape
    Ho, Wo = (H - dh * (kh - 1) - 1) // sh + 1, (W - dw * (kw - 1) - 1) // sw + 1
    if sw == 1 and Wo >= 16 and not positions_first:
        s0, s1, s2, s3 = x.stride()
        win = x.as_strided((B, C, kh, kw, Ho, Wo), (s0, s1, s2 * dh, s3 * dw, s2 * sh, s3 * sw))
        return win.reshape(B, C * kh * kw, Ho * Wo).contiguous()  # reshape may return a view
    idx = _unfold_index(C, H, W, kh, kw, dh, dw, sh, sw, Ho, Wo, positions_first)
    U = x.reshape(B, C * H * W).index_select(1, idx)
    return U.view(B, Ho * Wo, C * kh * kw) if positions_first else U.view(B, C * kh * kw, Ho * Wo)


def prepare_cache(kind: str, module, x, out):
    """What a fast builder needs besides the step input and output (computed once per prefix)."""
    kind, module, x, out = _as2d(kind, module, x, out)
    if kind == "conv2d":
        pad = module._reversed_padding_repeated_twice
        if any(pad):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, pad, mode=mode)
        kh, kw = module.kernel_size
        if x.numel() * kh * kw * x.element_size() <= _UNFOLD_BYTES:
            # patches (B, C*kh*kw, Ho*Wo): one weight's shifted input is a row gather
            return unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)
        return x
    if kind == "bn":
        if type(module) is nn.GroupNorm:
            return F.group_norm(x, module.num_groups, None, None, module.eps)
        return bn_normalized(module, x)
    if kind == "ln":
        return F.layer_norm(x, module.normalized_shape, None, None, module.eps)
    return None


def _split_roles(bp: BlockParams, local, device):
    """Group local (within-block) indices by parameter.

    ``local`` is a NumPy array; yields ``(role, pos, idx)`` with ``pos`` the positions in
    ``local`` (None for all of them, a slice when they are consecutive, else an index tensor)
    and ``idx`` the NumPy indices inside the parameter.
    """
    which = np.searchsorted(bp.offsets[1:], local, side="right")
    if which[0] == which[-1] and (len(which) < 3 or (which == which[0]).all()):
        p_i = int(which[0])
        yield bp.roles[p_i], None, local - int(bp.offsets[p_i])
        return
    for p_i in np.unique(which).tolist():
        pos = np.flatnonzero(which == p_i)
        # sorted ``local`` (the planner's order) puts each parameter's positions in one run: a
        # slice then writes and reads them as views instead of scatters and gathers
        at = slice(int(pos[0]), int(pos[-1]) + 1) if pos[-1] - pos[0] + 1 == len(pos) else torch.from_numpy(pos).to(device)
        yield bp.roles[p_i], at, local[pos] - int(bp.offsets[p_i])


def _t(a, device):
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t if device.type == "cpu" else t.to(device)  # (on the CPU ``.to`` returns t: one call less)


def perturbed_outputs(kind: str, module, x, out, cache, bp: BlockParams, local, h):
    """``(k, B, ...)`` outputs of the step for each perturbation ``(local[r], h[r])``."""
    if kind == "conv1d":
        kind, module, x, out = _as2d(kind, module, x, out)
        return perturbed_outputs(kind, module, x, out, cache, bp, local, h).squeeze(3)
    k = len(local)
    Y = out.unsqueeze(0).repeat((k,) + (1,) * out.dim())
    ar_all = torch.arange(k, device=out.device)
    dev = out.device
    for role, pos, idx in _split_roles(bp, local, dev):
        ar, hr = (ar_all, h) if pos is None else (ar_all[pos], h[pos])
        if kind == "linear":
            if role == "weight":
                i, j = _t(idx // module.in_features, dev), _t(idx % module.in_features, dev)
                Y[ar, ..., i] += hr.view((-1,) + (1,) * (x.dim() - 1)) * x[..., j].movedim(-1, 0)
            else:
                Y[ar, ..., _t(idx, dev)] += hr.view((-1,) + (1,) * (x.dim() - 1))
        elif kind == "conv2d":
            if role == "weight":
                o_np, ci, p, q = _conv_index(module, idx)
                o = _t(o_np, dev)
                G = conv_patches(module, cache, ci, p, q, out, dev)  # (B, k, Ho, Wo)
                Y[ar, :, o] += hr.view(-1, 1, 1, 1) * G.transpose(0, 1)
            else:
                Y[ar, :, _t(idx, dev)] += hr.view((-1,) + (1,) * (out.dim() - 1))
        elif kind == "bn":
            idx = _t(idx, dev)
            if role == "weight":
                xh = cache.index_select(1, idx).transpose(0, 1)  # (k, B, *spatial)
                Y[ar, :, idx] += hr.view((-1,) + (1,) * (xh.dim() - 1)) * xh
            else:
                Y[ar, :, idx] += hr.view((-1,) + (1,) * (out.dim() - 1))
        elif kind == "ln":
            # weight / bias index the trailing normalized dimensions, flattened
            nd = len(module.normalized_shape)
            Yf = Y.view(tuple(Y.shape[:Y.dim() - nd]) + (-1,))
            t = _t(idx, dev)
            shape = (-1,) + (1,) * (Yf.dim() - 2)
            if role == "weight":
                xh = cache.reshape(tuple(cache.shape[:cache.dim() - nd]) + (-1,))
                Yf[ar, ..., t] += hr.view(shape) * xh[..., t].movedim(-1, 0)
            else:
                Yf[ar, ..., t] += hr.view(shape)
        elif kind == "emb":
            # W[v, j] feeds output unit j of every position holding token v
            v, j = np.divmod(idx, module.embedding_dim)
            shape = (-1,) + (1,) * x.dim()
            hit = (x.unsqueeze(0) == _t(v, dev).view(shape)).to(Y.dtype)
            Y[ar, ..., _t(j, dev)] += hr.view(shape) * hit
        else:  # pragma: no cover - guarded by fast_kind
            raise AssertionError(kind)
    return Y


def generic_outputs(step: Step, state: tuple, bp: BlockParams, local, h, reset=None) -> list:
    """Per-perturbation states of a step without a closed form: perturb in place, run, restore.
    ``reset()`` runs before each: it puts back the buffers the step's forward writes."""
    outs = []
    offs = bp.offsets
    for r, li in enumerate(np.asarray(local).tolist()):
        p_i = int(np.searchsorted(offs[1:], li, side="right"))
        with nudged(bp.params[p_i], li - int(offs[p_i]), h[r]):
            if reset is not None:
                reset()
            outs.append(step(state))
    return outs


@contextlib.contextmanager
def nudged(t: torch.Tensor, j: int, h):
    """``t``'s ``j``-th element (in the flat vector's row-major order) moved by ``h`` in place
    inside the block, put back after. Indexed whatever ``t``'s strides: a transposed or
    channels-last weight has no flat view."""
    data = t.data
    idx = tuple(int(k) for k in np.unravel_index(int(j), tuple(data.shape))) if data.dim() else ()
    old = data[idx].clone()
    data[idx] = old + h
    try:
        yield
    finally:
        data[idx] = old


class Chain:
    """Runs a list of steps; ``run(state, lo, hi)`` applies steps ``lo..hi-1``."""

    def __init__(self, steps: list):
        self.steps = list(steps)

    def run(self, state: tuple, lo: int = 0, hi: Optional[int] = None) -> tuple:
        for s in self.steps[lo:hi]:
            state = s(state)
        return state


# ---------------------------------------------------------------------------------------
# channel deltas: one perturbation changes one output unit / channel of its layer
# ---------------------------------------------------------------------------------------
_ACT = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Hardtanh,
        nn.Softplus, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Identity) + _DROPOUT


def channel_ok(kind: str, out) -> bool:
    """Whether the channel-delta path applies to this block's output layout."""
    return ((kind == "linear" and out.dim() == 2) or (kind == "conv2d" and out.dim() in (2, 4))
            or (kind == "bn" and out.dim() in (2, 3, 4)) or (kind == "conv1d" and out.dim() == 3))


_POOL = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOL1D = (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)


def is_fork(step: Step) -> bool:
    return step.fn is _fork


def channel_local(step: Step, base) -> bool:
    """A step acting on each unit / channel separately (the delta stays in one channel)."""
    if step.fn is not None:
        return False
    m = step.module
    return (type(m) in _ACT or type(m) in _BN or (type(m) in _POOL and base.dim() == 4)
            or (type(m) in _POOL1D and base.dim() == 3))


def flatten_linear(steps, j: int, base) -> bool:
    """``Flatten()`` then ``Linear`` on a 3-D / 4-D activation: a one-channel delta is a small matmul."""
    if j + 1 >= len(steps) or base.dim() not in (3, 4):
        return False
    f, lin = steps[j], steps[j + 1]
    return (f.fn is None and type(f.module) is nn.Flatten and f.module.start_dim == 1 and f.module.end_dim == -1
            and lin.fn is None and type(lin.module) is nn.Linear)


def absorbs(step: Step, base_in) -> bool:
    """A layer that turns a one-channel delta into a dense output cheaply."""
    m = step.module
    if step.fn is not None:
        return False
    if type(m) is nn.Linear:
        return base_in.dim() == 2
    return ((type(m) is nn.Conv2d and base_in.dim() == 4) or (type(m) is nn.Conv1d and base_in.dim() == 3)) \
        and m.groups == 1


def _conv_index(module, idx):
    """``(o, input channel, p, q)`` NumPy indices of flat Conv2d weight positions ``idx``."""
    O, Cg, kh, kw = module.weight.shape
    o, rem = np.divmod(idx, Cg * kh * kw)
    c, rem = np.divmod(rem, kh * kw)
    p, q = np.divmod(rem, kw)
    return o, (o // (O // module.groups)) * Cg + c, p, q


def perturbed_channels(kind: str, module, x, out, cache, bp: BlockParams, local, h):
    """``(ch, col)``: the channel each perturbation changes and its new values ``(k, B, ...)``.

    ``local`` holds NumPy indices inside the block, ``h`` the representable steps (torch).
    """
    if kind == "conv1d":
        kind, module, x, out = _as2d(kind, module, x, out)
        ch, col = perturbed_channels(kind, module, x, out, cache, bp, local, h)
        return ch, col.squeeze(2)
    k = len(local)
    dev = out.device
    ch = np.empty(k, dtype=np.int64)
    col = None  # allocated when the coordinates span several parameters (one parameter: its values are col)
    for role, pos, idx in _split_roles(bp, local, dev):
        hr = h if pos is None else h[pos]
        if pos is not None and col is None:
            col = torch.empty((k, out.shape[0]) + tuple(out.shape[2:]), dtype=out.dtype, device=dev)
        # a run of positions is a contiguous slab of col: the values are computed into it (the
        # same elementwise operation, no temporary and no copy), else written by index
        dst = col[pos] if isinstance(pos, slice) else None
        if kind == "linear":
            if role == "weight":
                i, j = np.divmod(idx, module.in_features)
                val = torch.addcmul(out.index_select(1, _t(i, dev)).T, hr[:, None], x.index_select(1, _t(j, dev)).T,
                                    out=dst)
            else:
                i = idx
                val = torch.add(out.index_select(1, _t(i, dev)).T, hr[:, None], out=dst)
        elif kind == "conv2d":
            if role == "weight":
                i, ci, p, q = _conv_index(module, idx)
                G = conv_patches(module, cache, ci, p, q, out, dev)  # (B, k, Ho, Wo)
                val = torch.addcmul(out.index_select(1, _t(i, dev)).transpose(0, 1), hr.view(-1, 1, 1, 1),
                                    G.transpose(0, 1), out=dst)
            else:
                i = idx
                val = torch.add(out.index_select(1, _t(i, dev)).transpose(0, 1), hr.view(-1, 1, 1, 1), out=dst)
        else:  # bn
            i = idx
            it = _t(i, dev)
            sl = out.index_select(1, it).transpose(0, 1)
            shape = (-1,) + (1,) * (sl.dim() - 1)
            if role == "weight":
                val = torch.addcmul(sl, hr.view(shape), cache.index_select(1, it).transpose(0, 1), out=dst)
            else:
                val = torch.add(sl, hr.view(shape), out=dst)
        if pos is None:
            col = val
            ch[:] = i
        else:
            if dst is None:
                col[pos] = val
            ch[pos if isinstance(pos, slice) else pos.cpu().numpy()] = i
    return _t(ch, dev), col


# the pools pooled_channels_last runs channels-last (run_owned checks the type before calling it)
CL_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AvgPool1d)


def pooled_channels_last(m, x):
    """``m(x)`` run channels-last for a stock ``MaxPool2d`` / ``AvgPool2d`` on a 4-D CPU input or
    ``AvgPool1d`` on a 3-D one, else None. On the CPU the channels-last kernels run many small
    planes 1.5-3x faster, with the same sum per output element (average pooling) or maximum,
    so the same values; not the adaptive average, whose channels-last kernel adds in another
    order. torch's average_pool1d is the 2-D one on ``(N, C, 1, L)``."""
    t = type(m)
    if x.device.type != "cpu" or t not in CL_POOLS:
        return None
    if t is not nn.AvgPool1d and x.dim() == 4 and not getattr(m, "return_indices", False):
        return m(x.contiguous(memory_format=torch.channels_last)).contiguous()
    if t is nn.AvgPool1d and x.dim() == 3:
        (kw,), (sw,), (pw,) = m.kernel_size, m.stride, m.padding
        y = F.avg_pool2d(x.unsqueeze(2).contiguous(memory_format=torch.channels_last), (1, kw), (1, sw), (0, pw),
                         m.ceil_mode, m.count_include_pad)
        return y.squeeze(2).contiguous()
    return None


def channel_step(step: Step, col, ch, groups_stats: bool):
    """Apply a channel-local step to the changed channels ``col`` (k, B, ...)."""
    m = step.module
    if type(m) in _POOL or type(m) is nn.AvgPool1d:  # pools each (perturbation, sample) plane
        y = pooled_channels_last(m, col)
        return m(col) if y is None else y
    if type(m) not in _BN:
        return _identity(col) if type(m) in _DROPOUT else m(col)
    shape = (col.shape[0],) + (1,) * (col.dim() - 1)
    if m.training or m.running_mean is None:
        # (k, B, ...) as one sample of k channels: the native kernel's per-channel statistics
        # over B * spatial values are each perturbation's batch statistics
        flat = col.reshape(1, col.shape[0], -1)
        w = None if m.weight is None else m.weight[ch]
        b = None if m.bias is None else m.bias[ch]
        return F.batch_norm(flat, None, None, w, b, True, 0.0, m.eps).view(col.shape)
    else:
        y = (col - m.running_mean[ch].view(shape)) * torch.rsqrt(m.running_var[ch].view(shape) + m.eps)
    if m.weight is not None:
        y = y * m.weight[ch].view(shape) + m.bias[ch].view(shape)
    return y


def absorb(step: Step, col, ch, base_in, base_out, delta=None):
    """Dense ``(k, B, ...)`` output of a Linear/Conv2d whose input changed in one channel
    (``delta``: ``col`` minus its base, when the caller has it)."""
    m = step.module
    if delta is None:
        delta = col - base_in.index_select(1, ch).transpose(0, 1)  # (k, B, ...)
    if type(m) is nn.Linear:
        w = m.weight.index_select(1, ch).T  # (k, out)
        Z = torch.empty((delta.shape[0],) + tuple(base_out.shape), dtype=base_out.dtype, device=base_out.device)
        return torch.addcmul(base_out.unsqueeze(0), delta.unsqueeze(-1), w.unsqueeze(1), out=Z)
    k = delta.shape[0]
    Z = rows_like(k, base_out)
    if type(m) is nn.Conv1d:  # as a Conv2d of height 1
        v = Conv2dView(m)
        d = one_channel_conv(v, delta.transpose(0, 1).unsqueeze(2), v.weight.index_select(1, ch).transpose(0, 1),
                             (1, base_out.shape[-1]))  # (B, k, O, 1, Lo)
        return torch.add(base_out.unsqueeze(0), d.squeeze(3).transpose(0, 1), out=Z)
    w = m.weight.index_select(1, ch).transpose(0, 1)  # (k, O, kh, kw)
    if _nhwc_absorb(m, base_out, Z):
        return _absorb_nhwc(m, delta, w, base_out, Z)
    d = one_channel_conv(m, delta.transpose(0, 1), w, tuple(base_out.shape[-2:])).transpose(0, 1)
    return torch.add(base_out.unsqueeze(0), d, out=Z)


def _nhwc_absorb(m, base_out, Z) -> bool:
    cl = torch.channels_last
    return (m.padding_mode == "zeros" and not isinstance(m.padding, str)
            and base_out.is_contiguous(memory_format=cl) and Z.flatten(0, 1).is_contiguous(memory_format=cl))


def _absorb_nhwc(m, delta, w, base_out, Z):
    """``base_out + conv(delta)`` written straight into the channels-last ``Z``: one batched
    ``baddbmm`` of each perturbation's patches (B*L, taps) by its channel's weights (taps, O)."""
    k, B = delta.shape[0], delta.shape[1]
    O = w.shape[1]
    taps = w.shape[2] * w.shape[3]
    U = unfold(delta.reshape((k * B, 1) + tuple(delta.shape[2:])), m.kernel_size, dilation=m.dilation,
               padding=m.padding, stride=m.stride, positions_first=True)  # (k*B, L, taps)
    L = U.shape[1]
    base = base_out.permute(0, 2, 3, 1).reshape(1, B * L, O)  # a view: channels-last
    Zp = Z.permute(0, 1, 3, 4, 2).view(k, B * L, O)  # a view of Z (channels-last rows)
    wt = w.reshape(k, O, taps).transpose(1, 2)  # (k, taps, O)
    torch.baddbmm(base.expand(k, B * L, O), U.view(k, B * L, taps), wt, out=Zp)
    return Z


_FEW_POSITIONS = 32  # output positions per sample up to which one_channel_conv makes a product per group


def one_channel_conv(m, inp, w, out_hw):
    """``(B, k, O, Ho, Wo)``: Conv2d ``m`` (no bias) applied to one input channel per group.

    ``inp`` is ``(B, k, H, W)``, ``w`` the ``(k, O, kh, kw)`` weights of each group's channel.
    On CPU, patches and one batched matrix product: several times faster than a grouped
    convolution with one input channel per group.
    """
    B, k = inp.shape[0], inp.shape[1]
    O = w.shape[1]
    if m.padding_mode != "zeros":
        inp = F.pad(inp, m._reversed_padding_repeated_twice, mode=m.padding_mode)
        pad = 0
    else:
        pad = m.padding
    if inp.device.type == "cpu" and not isinstance(pad, str):
        U = unfold(inp, m.kernel_size, dilation=m.dilation, padding=pad, stride=m.stride)  # (B, k*kh*kw, L)
        taps, L = w.shape[2] * w.shape[3], U.shape[-1]
        if B == 1 or L > _FEW_POSITIONS:
            d = torch.matmul(w.reshape(k, O, taps), U.view(B, k, taps, L))  # (B, k, O, L)
            return d.view((B, k, O) + tuple(out_hw))
        # few positions: one product per group over every sample's positions, (O, taps) x
        # (taps, B*L); the matmul broadcast over the samples makes B*k tiny products, each paying
        # a call's overhead (2-3.5x slower on the (32*k, 16, 3) x (3, 20) products of MNIST-1D's
        # first block; on long rows the broadcast wins, without the copy of the patches below)
        Uk = U.view(B, k, taps, L).permute(1, 2, 0, 3).reshape(k, taps, B * L)
        d = torch.bmm(w.reshape(k, O, taps), Uk)  # (k, O, B*L)
        return d.view((k, O, B) + tuple(out_hw)).permute(2, 0, 1, 3, 4)  # (B, k, O, Ho, Wo), a view
    d = F.conv2d(inp, w.reshape(k * O, 1, *w.shape[2:]), None, m.stride, pad, m.dilation, groups=k)
    return d.reshape((B, k, O) + tuple(d.shape[-2:]))


def absorb_flatten_linear(lin: nn.Linear, col, ch, base_in, base_out, delta=None):
    """Dense ``(k, B, out)`` output of ``Linear(Flatten(x))`` when ``x`` changed in one channel
    (``delta``: ``col`` minus its base, when the caller has it)."""
    k, B = col.shape[0], col.shape[1]
    if delta is None:
        delta = col - base_in.index_select(1, ch).transpose(0, 1)
    delta = delta.reshape(k, B, -1)  # (k, B, H*W)
    C = base_in.shape[1]
    w = lin.weight.view(lin.out_features, C, -1).index_select(1, ch).permute(1, 2, 0)  # (k, H*W, out)
    Z = torch.empty((k,) + tuple(base_out.shape), dtype=base_out.dtype, device=base_out.device)
    return torch.baddbmm(base_out.unsqueeze(0).expand(k, -1, -1), delta, w, out=Z)


#: ``nhwc``: the running suffix keeps its 4-D float32 CPU activations channels-last (set by
#: ``TorchOracle.suffix`` when every step after the block is known not to depend on the layout)
LAYOUT = threading.local()


def layout_free(step: Step) -> bool:
    """A step whose result does not depend on its inputs' memory layout (no ``.view``)."""
    if step.fn is None:
        return type(step.module).__module__.startswith("torch.nn")
    return step.fn is _fork or bool(getattr(step.fn, "layout_free", False))


def nhwc_on(t) -> bool:
    return (getattr(LAYOUT, "nhwc", False) and t.dim() == 4 and t.device.type == "cpu"
            and t.dtype == torch.float32)


def rows_like(k: int, base):
    """Uninitialized ``(k, B, ...)`` tensor for ``k`` copies of ``base``; flattened to ``k * B``
    rows it is channels-last for 4-D CPU float32 activations when ``LAYOUT.nhwc``."""
    if nhwc_on(base):
        Z = torch.empty((k * base.shape[0],) + tuple(base.shape[1:]), dtype=base.dtype,
                        memory_format=torch.channels_last)
        return Z.view((k,) + tuple(base.shape))
    return torch.empty((k,) + tuple(base.shape), dtype=base.dtype, device=base.device)


def tile(base, k: int):
    """``base`` repeated ``k`` times along the rows, in the layout of :func:`rows_like` (one copy)."""
    Z = rows_like(k, base)
    Z.copy_(base.unsqueeze(0).expand_as(Z))
    return Z.flatten(0, 1)


def materialize(base, col, ch):
    """Dense ``(k, B, ...)`` tensor: ``base`` repeated with channel ``ch[r]`` replaced by ``col[r]``."""
    k = col.shape[0]
    Y = rows_like(k, base)
    Y.copy_(base.unsqueeze(0).expand_as(Y))
    Y[torch.arange(k, device=base.device), :, ch] = col
    return Y


def absorb_rows(kind: str, m, delta, chs, base_out_rows):
    """Like :func:`absorb` for ``M`` (perturbation, sample) rows: ``delta`` is ``(M, ...)``."""
    M = delta.shape[0]
    if kind == "flatten":
        C = m.in_features // delta[0].numel()
        w = m.weight.view(m.out_features, C, -1).index_select(1, chs).permute(1, 2, 0)  # (M, H*W, out)
        return torch.baddbmm(base_out_rows.unsqueeze(1), delta.reshape(M, 1, -1), w).squeeze(1)
    if type(m) is nn.Linear:
        return torch.addcmul(base_out_rows, delta.unsqueeze(-1), m.weight.t().contiguous().index_select(0, chs))
    if type(m) is nn.Conv1d:  # as a Conv2d of height 1
        v = Conv2dView(m)
        w = v.weight.transpose(0, 1).contiguous().index_select(0, chs)  # (M, O, 1, k)
        d = one_channel_conv(v, delta.unsqueeze(0).unsqueeze(2), w, (1, base_out_rows.shape[-1]))[0]
        return base_out_rows + d.squeeze(2)  # (M, O, Lo)
    w = m.weight.transpose(0, 1).contiguous().index_select(0, chs)  # (M, O, kh, kw)
    d = one_channel_conv(m, delta.unsqueeze(0), w, tuple(base_out_rows.shape[-2:]))[0]  # (M, O, Ho, Wo)
    return base_out_rows + d


def sample_coupling(steps) -> bool:
    """Whether any of ``steps`` may mix samples (BatchNorm with batch statistics, or a
    captured function step not known to act row by row)."""
    for st in steps:
        if st.fn is not None and not st.rowwise:
            return True
        mods = st.module.modules() if st.module is not None else ()
        for m in mods:
            if isinstance(m, _BATCHNORM) and (m.training or m.running_mean is None):
                return True
    return False
