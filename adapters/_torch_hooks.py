"""Exact or refuse, on hooks and messages: a model that fails on the split's input, forward
hooks checked, and the errors for an integer batch, a loss of the wrong shape and a
reparametrized module's hook."""

from __future__ import annotations

import contextlib
import math
import re

import torch
from torch import nn

from zoracle._errors import ArgumentError

from ._torch_reference import _close, reference_loss
from ._torch_watch import user_global_hooks


#: relative step of the self-check's perturbations: large, so a wrong path cannot hide in round-off
_CHECK_STEP = 0.5


def _model_fails(oracle, theta) -> bool:
    """Whether the plain ``model(x)`` and its loss raise too, at ``theta`` on the whole bound batch
    (not the check's two samples: a loss of weights for the whole batch fails on those alone)."""
    try:
        oracle._load(theta)
        reference_loss(oracle, oracle._x, oracle._y)
    except Exception:  # noqa: BLE001 - the check's own error is the one raised
        return True
    return False


def _hooked(model: nn.Module) -> str:
    """What to add to a loss mismatch when modules have forward hooks: the split's closed forms
    do not run them (a hook registered after the capture is named by the key; one there at the
    capture only shows as a different loss)."""
    names = [name or type(model).__name__ for name, m in model.named_modules()
             if m._forward_hooks or m._forward_pre_hooks]
    glob = _global_hook_names()
    if not names and not glob:
        return ""
    who = [f"{name_list(names)} run(s) forward hooks"] if names else []
    if glob:
        who.append(f"global forward hooks {name_list(glob)} (register_module_forward_hook or _pre_hook) run on "
                   "every module")
    return (f"; {' and '.join(who)}, which the split's closed forms do not run: remove a hook "
            "that changes what its module computes, or do that in the forward of a module of your own wrapping "
            "the layer, to keep feature reuse (a hook that only observes, returning None, keeps it)")


def _global_hooks() -> list:
    """The global forward hooks and pre-hooks that are not torch's own tools' (``user_global_hooks``)."""
    mod, ids = nn.modules.module, set(user_global_hooks())
    return [h for k, h in (*mod._global_forward_pre_hooks.items(), *mod._global_forward_hooks.items()) if k in ids]


def _global_hook_names() -> list:
    return [getattr(h, "__qualname__", None) or type(h).__name__ for h in _global_hooks()]


@contextlib.contextmanager
def _without_global_hooks():
    """The user's global forward hooks taken out of torch's tables, and put back as they were."""
    mod = nn.modules.module
    tables = (mod._global_forward_pre_hooks, mod._global_forward_hooks)
    saved = [dict(t) for t in tables]
    ids = set(user_global_hooks())
    try:
        for t in tables:
            for k in [k for k in t if k in ids]:
                del t[k]
        yield
    finally:
        for t, kept in zip(tables, saved):
            t.clear()
            t.update(kept)


def _hook_check(oracle, theta) -> str:
    """The closed forms do not run forward hooks: a hook that changes what its module computes
    must retire the split even where the self-check passes (it moves a block's first and last
    coordinate on two samples: a pre-hook scaling a Linear's input changes none of those losses
    where that input channel is 0 there). ``model(x)``'s loss on the whole bound batch, with the
    hooks and without them, at the parameters and with all of them moved, must be the same (an
    observing hook, which returns None and writes nothing, keeps the split)."""
    core = oracle._core
    mods = [m for m in core.model.modules() if m._forward_hooks or m._forward_pre_hooks]
    glob = bool(user_global_hooks())  # (register_module_forward_hook): on every module's call
    if not mods and not glob:
        return ""
    # a pre-hook that recomputes a weight into a plain attribute (torch.nn.utils.prune, the old
    # weight_norm): the check below, without hooks, reads the weight the hooked call just wrote,
    # and the self-check's first and last coordinates may be ones the mask keeps
    reparametrized = _hook_reparametrized(core.model)
    if reparametrized:
        return reparametrized
    x, y = oracle._x, oracle._y

    def without_hooks(off, glob_off=glob) -> float:
        saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in off]
        try:
            for m in off:
                m._forward_hooks, m._forward_pre_hooks = type(m._forward_hooks)(), type(m._forward_pre_hooks)()
            with _without_global_hooks() if glob_off else contextlib.nullcontext():
                return reference_loss(oracle, x, y)
        finally:
            for m, f, pre in saved:
                m._forward_hooks, m._forward_pre_hooks = f, pre

    def plains() -> list:
        try:
            return [without_hooks(mods)]
        except Exception:  # a hook model(x) cannot run without (an LSTM's hook picking its output in a
            # Sequential): the split, which passed its check, runs it; the other modules' hooks one at a time
            out = []
            for off in ([[m] for m in mods] + ([[]] if glob and mods else [])):
                try:
                    out.append(without_hooks(off, glob_off=glob and not off))
                except Exception:
                    pass
            return out

    try:
        for moved in (False, True):
            with _holding(core.params, _check_moves(core.params) if moved else [p.detach() for p in core.params]):
                # without the hooks first: a pre-hook that writes a weight into a plain attribute
                # left it for the forward after it, which then read the hooked weight moved too
                others = plains()
                got = reference_loss(oracle, x, y)
            for plain in others:
                if not (got == plain or (math.isnan(got) and math.isnan(plain))
                        or _close(got, plain, plain, oracle.dtype)):
                    return (f"model(x) gives loss {got:.10g} with its forward hooks but {plain:.10g} without them"
                            + (" (all parameters moved)" if moved else ""))
    finally:
        oracle._load(theta)
    return ""


def name_list(names) -> str:
    """Module names for a message: the first three quoted, then how many more."""
    names = list(names)
    return ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _sequence_first(model: nn.Module) -> str:
    """What to add to a failed split's reason when the model holds layers that take the batch
    along dim 1 (``nn.MultiheadAttention``, also inside transformer layers, and RNNs without
    ``batch_first=True``): the split slices rows along dim 0, so a forward that transposes the
    batch to dim 1 for them cannot be split (the error it raises names shapes, not the cause)."""
    names = [name or type(model).__name__ for name, m in model.named_modules()
             if isinstance(m, (nn.MultiheadAttention, nn.RNNBase)) and not m.batch_first]
    if not names:
        return ""
    return (f"; {name_list(names)} take(s) the batch along dim 1 (batch_first=False), where the split takes samples along "
            f"dim 0: build them with batch_first=True, and pass (batch, sequence, ...) inputs, to keep feature reuse")


def _integer_batch_error(exc: RuntimeError, name: str, t, call: str, out_dtype=None, label=None) -> None:
    """Raise an ArgumentError naming the fix when torch refused the bound batch's integer ``x``
    (features as uint8 pixels or int64 counts: the oracle casts floating-point x to the model's
    dtype and keeps integer x, token ids, as they are) or an integer ``y`` other than int64 (int32
    labels, a pandas categorical's int8 codes: torch's class-index losses take int64)."""
    msg = str(exc)  # torch names a dtype clash in many words: "dtype", "Input type (unsigned char) and bias
    # type (float)" (a convolution), "expected scalar type Byte" (one without bias), "not implemented for 'Byte'"
    # (an embedding's "'indices' to have one of the following scalar types" is torch's own clear word)
    # a loss that takes targets in the outputs' floating dtype (BCELoss): "Found dtype Double but expected Float"
    # or one that casts its result to the targets' dtype (BCEWithLogitsLoss): "result type Float can't be cast to
    # the desired output type Int"
    dtypes = {"Float": "float32", "Double": "float64"}
    want = None
    if name == "y" and "dtype" in msg:
        want = dtypes.get(msg.split("expected ")[-1].strip(" ."))
    elif name == "y" and "can't be cast to the desired output type" in msg:
        want = dtypes.get(msg.split("result type ")[-1].split(" ")[0])
    elif name == "y" and t is not None and t.dtype == torch.bool and "two bool tensors" in msg:
        # bool labels (y > 0) in BCEWithLogitsLoss: "Subtraction, the `-` operator, with two bool tensors is not
        # supported. Use the `^` or `logical_xor()` operator instead", which is no fix: it takes the outputs' dtype
        want = {torch.float32: "float32", torch.float64: "float64"}.get(out_dtype)
    if t is None or (t.is_floating_point() and want is None) or t.is_complex() or "indices" in msg or (
            "type" not in msg and "not implemented for" not in msg and want is None):
        return
    dt = str(t.dtype).replace("torch.", "")
    words = {"uint8": "Byte|unsigned char", "int8": "Char|signed char", "int16": "Short|short int", "int32": "Int|int",
             "int64": "Long|long int", "bool": "Bool|bool"}.get(dt)
    if name == "x" and words and not re.search(rf"\b({words})\b", msg):
        return  # torch names another dtype than x's (a float64 buffer meeting float32 weights): not x's to fix
    if name == "x":
        fix = ("TorchOracle casts floating-point x to the model's dtype and keeps integer x as it is (token ids for "
               "an embedding); pass float features, e.g. x.astype(np.float32) (a torch tensor: x.float())")
    elif want is not None:  # (y is not cast: a float64 y keeps its precision for a loss that promotes)
        fix = (f"this loss takes targets in the outputs' dtype, {want}; pass y.astype(np.{want}) (a torch tensor: "
               f"y.to(torch.{want}))")
    elif t.dtype != torch.int64:
        fix = ("torch's class-index losses take int64 targets; pass y.astype(np.int64) (a torch tensor: y.long(); a "
               "pandas categorical's codes: y.cat.codes.astype('int64'))")
    else:
        return
    who = label if label is not None else f"`batch`'s {name}"
    raise ArgumentError(f"{who} is {dt} and {call} failed on it ({exc}); {fix}") from None


def _loss_shape_fix(out, y, v, B: int) -> str:
    """The fix to name for per-sample losses of another shape than ``(B,)``."""
    ys = tuple(getattr(y, "shape", ()))
    if tuple(v.shape) == (B, B) and {tuple(out.shape), ys} == {(B, 1), (B,)}:
        # (B, 1) against (B,) broadcasts to every pair: a mean over a row is no sample's loss
        fix = ("y.reshape(-1, 1) for the targets, or out.squeeze(-1) in the loss (lambda out, y: "
               "nn.functional.mse_loss(out.squeeze(-1), y, reduction='none'))") if ys == (B,) else (
               "y.reshape(-1) for the targets, or out.unsqueeze(-1) in the loss (lambda out, y: "
               "nn.functional.mse_loss(out.unsqueeze(-1), y, reduction='none'))")
        return (f"the model's {tuple(out.shape)} outputs met {ys} targets and broadcast to every (output, target) "
                f"pair; make the shapes agree: {fix}")
    if v.dim() > 2:
        return ("reduce each sample's entries to one value, e.g. lambda out, y: nn.functional.cross_entropy(out, y, "
                "reduction='none').flatten(1).mean(1)")
    return ("reduce each sample's row, e.g. lambda out, y: nn.functional.mse_loss(out, y, reduction='none').mean(1), "
            "or use nn.CrossEntropyLoss(reduction='none') for classes")


def _hook_reparametrized(model: nn.Module) -> str:
    """The reason to give when a module recomputes its weight in a forward pre-hook (the old
    ``torch.nn.utils.weight_norm`` / ``spectral_norm``): the split perturbs the stored
    parameters the hook reads, which it cannot follow (the error it raises names no cause)."""
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    for name, m in model.named_modules():
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, BasePruningMethod):
                return (f"module {name or type(model).__name__!r} recomputes {hook._tensor_name!r} in a forward "
                        f"pre-hook (torch.nn.utils.prune: {hook._tensor_name}_orig * {hook._tensor_name}_mask), "
                        "which the split cannot follow; prune.remove(module, name) makes the pruning permanent "
                        "and keeps feature reuse (the pruned weights then train too: zoracle's sparsity= keeps a mask "
                        "of its own)")
            if isinstance(hook, (WeightNorm, SpectralNorm)):
                kind = "weight_norm" if isinstance(hook, WeightNorm) else "spectral_norm"
                return (f"module {name or type(model).__name__!r} recomputes {hook.name!r} in a forward pre-hook "
                        f"(torch.nn.utils.{kind}, deprecated), which the split cannot follow; "
                        f"torch.nn.utils.parametrizations.{kind} keeps feature reuse")
    return ""


def _check_moves(params) -> list:
    """``params`` each moved by ``_CHECK_STEP`` times a fixed normal draw (one generator for all:
    different amounts, so that no shift a softmax cancels hides a read)."""
    gen = torch.Generator().manual_seed(0)
    return [p.detach() + _CHECK_STEP * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) for p in params]


@contextlib.contextmanager
def _holding(params, values):
    """``params`` hold ``values`` inside the block and exactly their own values after it."""
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, v in zip(params, values):
                p.copy_(v)
        yield
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)
