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
import functools
import threading
import types
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
        #: ``(module, name, buffer)`` of the buffers in ``saved``: a forward that assigns one out of place
        #: (``self.count = self.count + 1``, a running statistic kept by hand) registers another tensor,
        #: which ``reset`` and the context's exit replace by the saved one (a value assigned inside a
        #: vectorized forward would otherwise escape it and be read by the next forward)
        self.slots = []
        #: the context patched no forward, switched no flag and saved no buffer: entering another
        #: one on the same model would do the same (nothing)
        self.inert = False

    def reset(self) -> None:
        """Put back every saved buffer a forward wrote: each perturbation's forward then starts
        from the state the query found (spectral norm's next power iteration reads its vector)."""
        if self.saved:
            _put_back_slots(self.slots)
            with torch.no_grad():
                for b, v, version in self.saved:
                    if b._version != version or not _same_values(b, v):
                        b.copy_(v)


def _put_back_slots(slots) -> None:
    for m, name, b in slots:
        if m._buffers.get(name) is not b:
            m._buffers[name] = b


def _save_buffers(ctx, m: nn.Module) -> None:
    """Save ``m``'s own buffers (the tensors, their values and versions) for ``ctx`` to put back."""
    for name, b in m._buffers.items():
        if b is not None:
            ctx.saved.append((b, b.clone(), b._version))
            ctx.slots.append((m, name, b))


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
    a fused statistics pass and a fused affine pass per group, no concatenation copy; on the
    CPU's maps of at most ``_FEW_POSITIONS_BN`` positions, one kernel over the groups side by side
    (:func:`_regrouped_bn`, which names the shapes left to a kernel per group).
    """
    n = x.shape[0]
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    if x.dim() < 2 or n % g or not (x.is_contiguous() or nhwc) or x.dtype not in (torch.float32, torch.float64):
        return torch.cat([F.batch_norm(part, None, None, weight, bias, True, 0.0, eps) for part in x.chunk(g)])
    c = x.shape[1]
    hw = x.shape[2] * x.shape[3] if x.dim() == 4 else 0
    if (x.device.type == "cpu" and 0 < hw <= _FEW_POSITIONS_BN and (hw == 1 or c > 1)
            and n // g * hw > torch.get_num_threads()):
        # a kernel per group, as F.batch_norm, where torch's kernel reduces the same values
        # otherwise as one of g channels (1-2 ulps apart): one channel of 2-4 positions (contiguous
        # both ways), and no more values a channel than threads (another branch of its kernel)
        return _regrouped_bn(x, g, weight, bias, eps, nhwc)
    out = torch.empty_like(x, memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    save_mean = torch.empty(c, dtype=x.dtype, device=x.device)
    save_invstd = torch.empty(c, dtype=x.dtype, device=x.device)
    r = n // g
    for i in range(g):
        torch.ops.aten.native_batch_norm.out(x[i * r:(i + 1) * r], weight, bias, None, None, True, 0.0, eps,
                                             out=out[i * r:(i + 1) * r], save_mean=save_mean,
                                             save_invstd=save_invstd)
    return out


#: map positions up to which ``_grouped_bn`` runs one kernel over the groups side by side: on the
#: last stages' 1x1 and 2x2 maps a kernel per group was mostly call overhead (2-6x slower on 40
#: groups of 32 rows); on larger maps the two copies cost more than the calls they save
_FEW_POSITIONS_BN = 4


def _regrouped_bn(x, g, weight, bias, eps, nhwc):
    """``_grouped_bn`` as one native kernel: the ``g`` row groups of ``(g * r, C, H, W)`` side by side
    as ``(r, g * C, H, W)`` (a copy in the same memory format), each (group, channel) a channel of its
    own, with the weight and bias repeated. Each channel's statistics and outputs are computed
    from the same values in the same order as by a kernel per group (the same bits on the AVX2
    CPU it was measured on: 1x1 to 8x8 maps on one thread, up to 4 positions on 2, 8 and 16,
    float32 and float64) where :func:`_grouped_bn` calls it: not for one channel of 2-4
    positions, nor for groups of no more values a channel (rows times positions) than torch has
    threads (its kernel reduces them another way there, 1-2 ulps from a kernel per group)."""
    n, c, h, w = x.shape
    r = n // g
    if nhwc:
        rows = x.permute(0, 2, 3, 1).reshape(g, r, h * w, c).permute(1, 2, 0, 3).contiguous()  # (r, HW, g, C)
        side = rows.view(r, h, w, g * c).permute(0, 3, 1, 2)  # (r, g*C, H, W), channels-last
    else:
        side = x.reshape(g, r, c, h * w).transpose(0, 1).reshape(r, g * c, h, w)
    y = torch.native_batch_norm(side, None if weight is None else weight.repeat(g),
                                None if bias is None else bias.repeat(g), None, None, True, 0.0, eps)[0]
    del side  # (freed before the output is made: three tensors of x's size at once, as the chunk budget counts)
    if nhwc:
        del rows
    out = torch.empty_like(x, memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    if nhwc:
        out.permute(0, 2, 3, 1).view(g, r, h * w, c).copy_(
            y.permute(0, 2, 3, 1).reshape(r, h * w, g, c).permute(2, 0, 1, 3))
    else:
        out.view(g, r, c, h * w).copy_(y.reshape(r, g, c, h * w).transpose(0, 1))
    return out


def bn_normalized(mod, x):
    """BatchNorm's normalized input ``xhat`` (no affine), with the same statistics as forward."""
    if mod.training or mod.running_mean is None:
        return F.batch_norm(x, None, None, None, None, True, 0.0, mod.eps)
    return F.batch_norm(x, mod.running_mean, mod.running_var, None, None, False, 0.0, mod.eps)


def _own_forward_grouped(mod, ctx: _NormState, x, *args, own=None, **kwargs):
    """A BatchNorm subclass's own forward (``own``: the function set on the instance, when the user set
    one), run once per row group (its statistics per group)."""
    fwd = functools.partial(type(mod).forward, mod) if own is None else own
    g = ctx.groups
    if g == 1:
        return fwd(x, *args, **kwargs)
    return torch.cat([fwd(part, *args, **kwargs) for part in x.chunk(g)])


_DROPOUT_FUNCS = None


def _dropout_funcs():
    global _DROPOUT_FUNCS
    if _DROPOUT_FUNCS is None:
        ident = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
                 torch.dropout, torch.feature_dropout, torch.alpha_dropout, torch.feature_alpha_dropout}
        _DROPOUT_FUNCS = (ident, {F.scaled_dot_product_attention, F.multi_head_attention_forward})
    return _DROPOUT_FUNCS


def _off(func, args, kwargs):
    """A functional dropout, off: its input's values; a new tensor where torch's gives one (training,
    ``p > 0``, not inplace), as for a dropout module (``norm_context``). The signatures are
    ``(input, p, training/train, inplace)``; ``F.alpha_dropout``'s and ``F.feature_alpha_dropout``'s
    ``training`` defaults to False, ``F.dropout``'s and ``F.dropout1d/2d/3d``'s to True."""
    x = args[0] if args else kwargs["input"]
    p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
    train = args[2] if len(args) > 2 else kwargs.get("training", kwargs.get(
        "train", func not in (F.alpha_dropout, F.feature_alpha_dropout)))
    inplace = args[3] if len(args) > 3 else kwargs.get("inplace", False)
    return x.clone() if train and p and not inplace else x


class _NoDropout(torch.overrides.TorchFunctionMode):
    """Functional dropout is the identity and attention runs with ``dropout_p = 0``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ident, attn = _dropout_funcs()
        if func in ident:
            return _off(func, args, kwargs)
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
    ``_NO_FUNCTIONAL_DROPOUT``, or a Sequential subclass keeping Sequential's forward, or one of
    zoracle's own models whose class sets ``_no_functional_dropout``), none has a function of
    its own in its ``__dict__`` (a replaced ``forward``) and no forward hook is registered: nothing
    can then reach a functional dropout. The type check is part of the per-model cache of
    ``_model_info``; hooks come and go, so they are checked on every call."""
    return _dropout_mode_and_special(model)[0]


def _dropout_mode_and_special(model: nn.Module) -> tuple:
    """``(_needs_dropout_mode(model), _special_modules(model))`` from one walk over the modules."""
    mods = list(model.modules())
    info = _model_info(model, _layout(mods))
    if not info.stock:
        return True, info.special_of(model)
    return bool(nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
                or any(m._forward_hooks or m._forward_pre_hooks for m in mods)), info.special_of(model)


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
            # a forward the user set on the instance (``bn.forward = ...``) runs, and is there again
            # afterwards; a patch of an enclosing context (the same model's) comes back at the exit
            was = m.__dict__.get("forward")
            own = None if was is None or getattr(was, "_norm_patch", False) else was
            if type(m) in _BN and own is None:
                m.forward = _patch(lambda x, m=m: _bn_forward(m, ctx, x))
                patched.append((m, was))
            elif isinstance(m, _BATCHNORM) and (m.training or m.running_mean is None):
                if not update:
                    _save_buffers(ctx, m)
                m.forward = _patch(lambda x, *a, m=m, own=own, **kw: _own_forward_grouped(m, ctx, x, *a, own=own, **kw))
                patched.append((m, was))
            elif isinstance(m, _DROPOUT) and own is None:
                # off: its input's values. A new tensor where torch's dropout gives one (train mode, p > 0, not
                # inplace): ``out = self.drop(x); out += x`` writes into the dropout's output there, not into x
                m.forward = _fresh if m.training and m.p and not writes_input(m) else _identity
                patched.append((m, was))
            if getattr(m, "inplace", False) is True:
                m.inplace = False
                flags.append((m, "inplace", True))
                SWITCHED_OFF[m] = True
            if m.training and not isinstance(m, _BATCHNORM) and m._buffers and (
                    not update or not (keep_written or isinstance(m, _INSTANCENORM))):
                # buffers a module writes in train mode: a query leaves them as it found them. A plain
                # call (``update``) keeps InstanceNorm's running statistics, which its train-mode output
                # does not read, and others' when its forward is known not to read them either; not
                # those a forward reads after writing them (spectral norm's power-iteration vectors, a
                # quantization observer): with them moved by the base point's call, the estimate's
                # queries would see two states (and on an executor's workers, whichever copy ran the
                # base point another one)
                _save_buffers(ctx, m)
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
        for m, was in reversed(patched):
            if was is None:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = was
        for m, attr, v in flags:
            setattr(m, attr, v)
            if attr == "inplace":
                SWITCHED_OFF.pop(m, None)
        try:
            _put_back_slots(ctx.slots)
            with torch.no_grad():
                for b, v, version in saved:
                    # written: put back (one left untouched keeps its version and bits). Compared
                    # by value too: torch's batch-norm kernel writes the running statistics of a
                    # BatchNorm subclass in place without counting a version
                    if b._version != version or not _same_values(b, v):
                        b.copy_(v)
        finally:
            guard.__exit__(None, None, None)


#: the modules whose ``inplace=True`` ``norm_context`` has set to False while it runs: the user's
#: value is True there (the split's key reads it, so that a user's own flip is seen, not the oracle's)
SWITCHED_OFF: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
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
    count: tuple  # ``_layout`` of the submodules when cached: a changed one refreshes the entry
    special: list  # the ones ``norm_context`` patches (BatchNorm, dropout, in-place, attention, recurrent
    # layers) or whose buffers it restores, the model itself left out (see ``root``)
    stock: bool  # every forward is a stock one (see ``_needs_dropout_mode``)
    mods: tuple = ()  # the submodules ``count`` holds the ids of: kept, so that no other module takes an id
    root: bool = False  # the model itself is one of ``special`` (a buffer of its own, a root BatchNorm).
    # The entry, a weak key's value, holds no reference to the model: it would keep it alive for good

    def special_of(self, model: nn.Module) -> list:
        return [model, *self.special] if self.root else self.special


_INFO = weakref.WeakKeyDictionary()


def _patch(forward):
    """``forward``, marked as ``norm_context``'s own patch of a module's (not the user's function)."""
    forward._norm_patch = True
    return forward


def _own(v) -> bool:
    """Whether ``v``, in a module's instance dict, is a function of the user's that may reach a functional
    dropout: not ``norm_context``'s patch, nor a torch function other than a dropout or an attention (an
    activation kept as ``self.act = F.relu``, or a ``functools.partial`` of one)."""
    if not callable(v) or getattr(v, "_norm_patch", False):
        return False
    f = v.func if isinstance(v, functools.partial) else v
    name, where = getattr(f, "__name__", ""), getattr(f, "__module__", None) or ""
    return not (isinstance(f, (types.FunctionType, types.BuiltinFunctionType))
                and where in ("torch", "torch.nn.functional", "torch._C._nn", "torch.special")
                and "dropout" not in name and "attention" not in name)


def _layout(mods: list) -> tuple:
    """The modules ``mods`` (their ids) and the number of the attributes in their instance dicts
    (``norm_context``'s patches not counted, so a nested one reads the outer one's entry): an attribute
    set after a model was first run (``m.forward = ...``) changes it, and so does a module replaced by
    another of its type (``model[1] = nn.Dropout(0.3)``, which no count sees: the new dropout was not
    among the modules ``norm_context`` switches off), and with it ``_model_info``'s entry."""
    dicts = [m.__dict__ for m in mods]
    return (tuple(map(id, mods)),
            sum(map(len, dicts)) - sum(1 for d in dicts if getattr(d.get("forward"), "_norm_patch", False)))


def _model_info(model: nn.Module, n: Optional[tuple] = None) -> _ModelInfo:
    """What ``norm_context`` needs of ``model``, from one walk over its submodules, cached per
    model (weakly: the entry holds no reference to the model itself) and refreshed when its
    ``_layout`` changes (``n``, when the caller has taken it)."""
    n = _layout(list(model.modules())) if n is None else n
    hit = _INFO.get(model)
    if hit is None or hit.count != n:
        mods = list(model.modules())
        special = [m for m in mods if isinstance(m, (_BATCHNORM, nn.MultiheadAttention, nn.RNNBase) + _DROPOUT)
                   or hasattr(m, "inplace") or m._buffers]
        # zoracle's own models that call no functional dropout (ResNet20) set ``_no_functional_dropout``
        # on their class; a subclass, which may call some, does not inherit it. A module given a function
        # of its own (``m.forward = ...``, a block's ``join`` replaced) runs code no type vouches for
        stock = all((_stock_forward(m) or type(m).__dict__.get("_no_functional_dropout", False))
                    and not any(_own(v) for k, v in vars(m).items() if k != "_compiled_call_impl") for m in mods)
        # (``_compiled_call_impl``: ``m.compile()``'s, which runs the same stock forward)
        hit = _INFO[model] = _ModelInfo(n, [m for m in special if m is not model], stock,
                                        tuple(m for m in mods if m is not model), special[:1] == [model])
    return hit


def _special_modules(model: nn.Module) -> list:
    """The submodules ``norm_context`` patches (BatchNorm, dropout, in-place, attention)."""
    return _model_info(model).special_of(model)


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


@_patch
def _identity(x, *args, **kwargs):
    return x


@_patch
def _fresh(x, *args, **kwargs):
    return x.clone()


#: the dropouts whose forward passes no ``inplace`` to torch's function: a new tensor whatever the flag says
_NOT_INPLACE = frozenset({nn.AlphaDropout.forward, nn.FeatureAlphaDropout.forward})


def writes_input(m: nn.Module) -> bool:
    """``m``'s ``inplace=True`` is honoured: its forward writes into its input (``nn.AlphaDropout`` and
    ``nn.FeatureAlphaDropout`` keep the flag and ignore it)."""
    return getattr(m, "inplace", False) is True and type(m).forward not in _NOT_INPLACE


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


def conv_patches(module, cache, ci, p, q, out, dev, rows=None):
    """``(B, k, Ho, Wo)``: input channel ``ci`` shifted by ``(p, q)`` for each perturbation
    (``rows``: their rows in the unfolded patches, ``patch_rows(module, ci, p, q, dev)``, when
    the caller has them)."""
    Ho, Wo = out.shape[-2], out.shape[-1]
    if cache.dim() == 3:  # unfolded patches
        rows = patch_rows(module, ci, p, q, dev) if rows is None else rows
        return cache.index_select(1, rows).view(cache.shape[0], -1, Ho, Wo)
    sh, sw = module.stride
    dh, dw = module.dilation
    rows = _t(p[:, None] * dh + sh * np.arange(Ho)[None, :], dev)
    cols = _t(q[:, None] * dw + sw * np.arange(Wo)[None, :], dev)
    return cache[:, _t(ci, dev)[:, None, None], rows[:, :, None], cols[:, None, :]]


def patch_rows(module, ci, p, q, dev):
    """The rows of input channel ``ci`` shifted by ``(p, q)`` in :func:`unfold`'s patches (torch)."""
    kh, kw = module.kernel_size
    return _t(ci * (kh * kw) + p * kw + q, dev)


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
# channel deltas (the rest in _torch_channels): a conv weight position's indices
# ---------------------------------------------------------------------------------------
def _conv_index(module, idx):
    """``(o, input channel, p, q)`` NumPy indices of flat Conv2d weight positions ``idx``."""
    O, Cg, kh, kw = module.weight.shape
    o, rem = np.divmod(idx, Cg * kh * kw)
    c, rem = np.divmod(rem, kh * kw)
    p, q = np.divmod(rem, kw)
    return o, (o // (O // module.groups)) * Cg + c, p, q
