"""Exact or refuse, on a module's plain attributes: the values a forward reads (keyed into the
caches) and the ones it writes (watched, then unwatched when they change)."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import numbers
import types
import weakref

import numpy as np
import torch
from torch import nn

from ._torch_chain import SWITCHED_OFF
from ._torch_graph import BAKED_BUFFERS
from ._torch_reference import plain_context


def module_key(m: nn.Module, glob: "tuple | None" = None) -> tuple:
    """What the split of a model depends on, per module, besides parameters and buffers: the
    module itself (one swapped in after the capture runs in ``model(x)``, not in the chain), its
    train/eval mode (``torch.fx`` keeps the branch on ``self.training`` it traced) and which
    forward hooks are registered on it, or global ones (:func:`user_global_hooks`) that run on every
    module (the closed forms do not run hooks), by their handles' ids; its parameters and
    which of them train (one unfrozen after the oracle was built is not in its flat vector, nor
    is a ``Parameter`` assigned over one, ``layer.weight = nn.Parameter(...)``); and its plain
    attributes (numbers, flags, strings a forward may read); last its class and whether a forward is set
    on the instance (a parametrization registered makes an ``nn.Linear`` a ``ParametrizedLinear``,
    ``layer.forward = ...`` replaces its forward: the closed forms were chosen for the layer as it was).
    ``glob``: :func:`user_global_hooks` where the caller read it once for a whole model's walk."""
    ps = m._parameters
    # its hooks' handle ids (torch's keys for them, never drawn twice), not whether it has one: an
    # observing hook removed and one that changes the output registered in its place is another split
    hooked = (*m._forward_pre_hooks, *m._forward_hooks) if m._forward_hooks or m._forward_pre_hooks else ()
    if glob is None:  # run on every module: a module's hook key holds them
        glob = user_global_hooks()
    return (id(m), m.training, (hooked, glob) if hooked or glob else False,
            tuple([(id(p), p.requires_grad) for p in ps.values() if p is not None]) if ps else (),
            _plain_values(m), (type(m).__qualname__, "forward" in m.__dict__))


def _torch_own(hook) -> bool:
    """A global hook of torch's own observing tools (``FlopCounterMode``'s ``ModuleTracker``,
    ``CommDebugMode``), which return None: a check of the split under them would run, and be
    counted, inside the tool."""
    return str(getattr(hook, "__module__", None) or "").startswith("torch.")


def user_global_hooks() -> tuple:
    """The handle ids of the global forward hooks and pre-hooks (``register_module_forward_hook``,
    ``register_module_forward_pre_hook``) other than torch's own tools': they run on every
    module's call, and the split's closed forms do not run them. Their handles' ids (torch's keys
    for them, drawn from one counter), not ``id()`` of the hook functions: a hook removed is freed,
    and one registered next (a function of the same size) is often at its address, which read as
    the hook the split was checked with."""
    pre, post = nn.modules.module._global_forward_pre_hooks, nn.modules.module._global_forward_hooks
    if not (pre or post):
        return ()
    return tuple([k for k, h in (*pre.items(), *post.items()) if not _torch_own(h)])


_PLAIN_NAMES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _plain_values(m: nn.Module) -> tuple:
    """The values of ``m``'s plain attributes (tensors as identity and version), and of its
    buffers where the capture read them as values (``BAKED_BUFFERS``). Their names are read once
    per module: an attribute a forward reads exists when the forward is first run (the capture),
    so new names do not matter."""
    baked = m in BAKED_BUFFERS
    got = _PLAIN_NAMES.get(m)
    if got is None or got[0] != baked:
        d = m.__dict__
        names = tuple(k for k, v in d.items() if k not in _TOGGLED and k not in _MODULE_OWN and _watched(v))
        if baked:
            names += tuple((_BUFFER, k) for k in m._buffers)
        got = _PLAIN_NAMES[m] = (baked, names)
    names = got[1]
    values = tuple([_value_key(_read(m, k)) for k in names]) if names else ()
    inplace = m.__dict__.get("inplace")
    if inplace is None:
        return values
    # the user's flag (``relu.inplace = True`` set after the capture): True while ``norm_context``
    # runs the module out of place. Last, so ``_unwatch_changed``'s zip with the names stops before it
    return values + (("inplace", inplace is True or (bool(SWITCHED_OFF) and m in SWITCHED_OFF)),)


_BUFFER = "buffer"


def _read(m: nn.Module, name):
    if type(name) is not tuple:
        return m.__dict__.get(name)
    b = m._buffers.get(name[1])
    # by value when small: the oracle puts buffers back after its queries (a copy, a new version)
    return ("values", b.dtype, tuple(b.reshape(-1).tolist())) if torch.is_tensor(b) and b.numel() <= 256 else b


#: the types of plain attributes a forward may read (``self.temperature``, ``negative_slope``,
#: ``self.use_residual``, a NumPy scalar from a schedule, ``self.scales = (1.0, 2.0)``, an
#: optional value set later, ``self.task = Task.A`` picking a head): torch.fx bakes them into the captured graph, and cached
#: activations hold them
_PLAIN = (numbers.Number, np.generic, str, type(None), enum.Enum)
#: attributes the oracle itself switches while it runs (``norm_context``), or that are the key already
#: (``inplace`` is keyed apart, as the user's value: ``_plain_values``)
_TOGGLED = frozenset({"training", "inplace", "dropout"})
#: ``nn.Module``'s own bookkeeping (its parameter, buffer, submodule and hook dicts): keyed otherwise
_MODULE_OWN = frozenset(nn.Module().__dict__)


def _scalar(v) -> bool:
    if not isinstance(v, _PLAIN):
        return False
    try:  # the key is hashed (a structured NumPy scalar is not hashable)
        hash(v)
    except TypeError:
        return False
    return True


#: the most entries of a container attribute watched, and how deep containers are followed
_MAX_ENTRIES, _MAX_DEPTH = 64, 3


def _config_object(v) -> bool:
    """A settings object a forward may read fields of (``self.cfg.temperature``): a dataclass
    instance, ``types.SimpleNamespace`` or ``argparse.Namespace``."""
    return isinstance(v, (types.SimpleNamespace, argparse.Namespace)) or (
        dataclasses.is_dataclass(v) and not isinstance(v, type))


def _entries(v):
    """The (name, value) entries of a dict or settings object, or None when ``v`` is neither or
    has too many to watch."""
    if isinstance(v, dict):
        d = v
    elif _config_object(v):
        try:
            d = vars(v)
        except TypeError:  # a dataclass with ``__slots__`` (the pytree specs of a torch.export module)
            d = {f.name: getattr(v, f.name, None) for f in dataclasses.fields(v)}
    else:
        return None
    return d.items() if len(d) <= _MAX_ENTRIES else None


def _watched(v, depth: int = 0) -> bool:
    """A plain attribute whose value the split depends on: a scalar, string or None, a tensor
    that is not a registered buffer (``self.mask = torch.ones(n)``: a forward reading it reads it
    live, but cached activations hold it, and an expression of it alone is baked into the
    graph), a tuple or list of those (``self.masks[0]``), or a dict or settings object with such
    entries (``self.opts["scale"]``, ``self.cfg.temperature``: ``torch.fx`` bakes what it reads
    of them into the graph)."""
    if isinstance(v, nn.Parameter):  # a module's own parameters (an RNN's ``_flat_weights``): keyed otherwise
        return False
    if _scalar(v) or torch.is_tensor(v):
        return True
    if depth >= _MAX_DEPTH:
        return False
    if isinstance(v, (tuple, list, set, frozenset)):  # a set: ``self.tasks = {"a"}``, ``if "a" in self.tasks``
        return len(v) <= _MAX_ENTRIES and all(_watched(e, depth + 1) for e in v)
    entries = _entries(v)
    return entries is not None and any(_watched(e, depth + 1) for _, e in entries)


def _unwatch_what_a_forward_writes(model: nn.Module, x) -> None:
    """Stop watching the plain attributes and buffers that a plain forward of ``model`` on ``x``
    changes (a counter, an attention map kept for display, the weight an old-style
    ``weight_norm`` hook recomputes): they are outputs, not settings, and would change the key
    at every call. Buffers are put back afterwards, and ``x`` is left as it was (the forward
    runs on a copy: an in-place activation swapped in first wrote into the check's probe, which
    the split and ``model(x)`` then both read written, and agreed)."""
    before = _modes(model)
    with plain_context(model):
        try:
            model(x.clone())
        except Exception:  # the check that follows reports it
            return
        _unwatch_changed(model, before)  # compared before plain_context puts buffers back


def _unwatch_changed(model: nn.Module, before: tuple, tensors: bool = True) -> None:
    """Stop watching the plain attributes whose values differ from those in ``before`` (the
    model's key taken before some forwards of the oracle's own ran): what those forwards wrote
    are outputs (a value logged every third call shows only over several forwards).
    ``tensors=False``: keep watching buffers and tensors whose only change is their version
    (the self-check puts buffers back by ``copy_``, a new version, not a forward's write)."""
    for m, key in zip(model.modules(), before):
        got = _PLAIN_NAMES.get(m)
        if not got or not got[1] or key[0] != id(m):
            continue
        baked, names = got

        def kept(k, was):
            now = _value_key(_read(m, k))
            if _same_value(was, now):
                return True
            if not tensors and (type(k) is tuple or (type(was) is tuple and was[:1] == ("tensor",)
                                                     and type(now) is tuple and now[:2] == was[:2])):
                return True  # a buffer, or the same tensor at another version: put back, not written
            return False

        keep = tuple(k for k, was in zip(names, key[4]) if kept(k, was))
        if keep != names:
            _PLAIN_NAMES[m] = (baked, keep)


def _same_value(a, b) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:  # an attribute whose == is not a truth value
        return False


_AS_IS = frozenset({int, float, bool, str, type(None)})


def _value_key(v, depth: int = 0):
    t = type(v)
    if t in _AS_IS:  # the common case first: this runs for every module at every query
        return v
    if torch.is_tensor(v):  # an inference-mode tensor has no version (nor can it be written outside that mode)
        return ("tensor", id(v), None if v.is_inference() else v._version)
    if isinstance(v, (set, frozenset)):  # its entries are hashable: the set of their keys
        return ("set", frozenset([_value_key(e, depth + 1) for e in v]))
    if t is tuple or t is list or isinstance(v, (tuple, list)):
        for e in v:
            if type(e) not in _AS_IS:
                return tuple([_value_key(e, depth + 1) for e in v])
        return v if t is tuple else tuple(v)
    entries = None if depth >= _MAX_DEPTH else _entries(v)
    if entries is not None:  # the watched entries, by name (a settings object also by identity)
        return (type(v).__name__, id(v) if not isinstance(v, dict) else None,
                tuple([(k, _value_key(e, depth + 1)) for k, e in entries if _watched(e, depth + 1)]))
    try:  # the key is hashed (checked_modes is a set): a value set later may not be (an array)
        hash(v)
    except TypeError:
        return ("unhashable", type(v).__name__, id(v))
    return v


def _modes(model) -> tuple:
    """The split key of ``model`` now (the first part of ``_model_state``). Global forward hooks
    (``register_module_forward_hook``) are in each module's key, but for torch's own tools'
    (``FlopCounterMode``'s): a check of the split under them would run, and be counted, inside
    the tool (:func:`user_global_hooks`)."""
    glob = user_global_hooks()  # (once for the walk, not per module)
    return tuple(module_key(m, glob) for m in model.modules())


def _global_part(key: tuple) -> tuple:
    """The global hooks in a module's key (:func:`module_key`)."""
    return key[2][1] if key[2] else ()


def _what_changed(old: tuple, new: tuple) -> str:
    """In words, how the split key ``new`` differs from ``old``."""
    parts = []
    if [k[0] for k in old] != [k[0] for k in new]:
        parts.append("a module was replaced, added or removed")
    if [k[2] for k in old] != [k[2] for k in new]:
        glob = [_global_part(k) for k in old[:1]] != [_global_part(k) for k in new[:1]]  # as every module's key
        parts.append(("a global forward hook (register_module_forward_hook or _pre_hook) was registered or "
                      "removed") if glob else "a forward hook was registered or removed")
    if [k[1] for k in old] != [k[1] for k in new]:
        parts.append("train/eval modes changed")
    if [k[3] for k in old] != [k[3] for k in new]:
        parts.append("a parameter was frozen, unfrozen or assigned")
    if [k[4] for k in old] != [k[4] for k in new]:
        parts.append("a module's attribute changed (a number or flag its forward may read)")
    if [k[5:] for k in old] != [k[5:] for k in new]:
        parts.append("a module's class or forward changed (a parametrization registered, a forward set on it)")
    return " and ".join(parts) or "the model changed"
