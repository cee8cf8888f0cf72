"""Graph capture: any ``nn.Module`` as the step chain that feature reuse runs on.

Why ``torch.fx.symbolic_trace`` and not ``torch.export``: the oracle must run the *user's*
modules (their parameters are the ones it perturbs in place, and a subclass with its own
``forward`` must run that forward), at any batch size (``k * B`` rows per suffix call), on
CPU and GPU, in train mode. fx records calls to submodules as ``call_module`` nodes that
point at the live modules, stops at leaf modules we choose, and replays with plain Python;
``torch.export`` lowers everything to ATen ops on copies of the parameters, specializes
shapes unless told otherwise, decomposes BatchNorm/attention (losing the closed forms), and
takes seconds per model. What fx cannot trace (data-dependent control flow) is refused:
the oracle then runs full forwards and says so once.

How the graph becomes a chain. The nodes are visited in topological order. A node whose
value depends on the input's *data* is an **activation**: it is computed by one step and
kept in the state (a tuple of batch-first tensors) while later nodes still need it, so a
suffix reads it from the cache instead of recomputing it. Everything else (parameters read
with ``get_attr``, shapes, constants, parameter-only arithmetic) is **inlined**: recomputed
inside each step that uses it. A ``call_module`` node applying a module to one activation
becomes a module step (the closed forms and the one-channel walk apply when the module is an
exact stock class); every other activation is a function step that evaluates its node
(plus inlined ancestors) from the state. In-place operations are made functional
(``x += y`` traces to ``add``; ``relu_`` runs as ``relu``; ``inplace=True`` keyword
arguments become False; in-place modules are switched out of place by ``norm_context``).
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
import operator
import os
import threading
import weakref

import torch
import torch.fx as fx
from torch import nn

from zoracle._forked import ForkSafeLock

from ._torch_chain import Step, writes_input

__all__ = ["trace_steps", "downstream"]

#: fx patches ``nn.Module.__call__`` and ``__getattr__`` process-wide while it traces, and puts back
#: what it found on exit: two traces at once (TorchOracles built in two threads) left them patched
#: for good, so every later ``model(x)`` in the process raised. One trace at a time
_TRACE_LOCK = ForkSafeLock(threading.RLock)

#: node targets that act on each sample (row) separately, whatever their arguments
_ROWWISE_FUNCS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.getitem,
                  torch.add, torch.sub, torch.mul, torch.relu, torch.sigmoid, torch.tanh, torch.flatten,
                  nn.functional.relu, nn.functional.gelu, nn.functional.silu, nn.functional.hardswish,
                  nn.functional.hardsigmoid, nn.functional.relu6, nn.functional.leaky_relu}
_ROWWISE_METHODS = {"add", "sub", "mul", "div", "relu", "sigmoid", "tanh", "view", "reshape", "transpose",
                    "permute", "contiguous", "to", "unsqueeze", "squeeze", "expand", "clamp"}
_META_METHODS = {"size", "dim", "numel", "type", "get_device"}
#: ``x.<attr>`` that reads metadata; any other attribute (``.values`` of a max, ``.T``) reads data
_META_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "layout", "requires_grad", "is_sparse"}


def _element(u: fx.Node) -> bool:
    """``u`` picks an element of a tuple-valued node: ``out[0]``, or ``torch.max(...).values``."""
    return u.op == "call_function" and (u.target is operator.getitem or (
        u.target is getattr and len(u.args) > 1 and u.args[1] not in _META_ATTRS))


def _pure(n: fx.Node) -> bool:
    """A function or method call with no effect but its result (not ``x.add_(1)``, not a setitem)."""
    if n.op not in ("call_function", "call_method"):
        return False
    name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
    if "out" in n.kwargs or n.kwargs.get("inplace") is True:  # torch.add(h, 1, out=h), F.relu(h, inplace=True)
        return False
    return n.target is not operator.setitem and not (name.endswith("_") and not name.endswith("__"))


#: classes whose subclasses are traced through: they hold modules and compute nothing themselves
_CONTAINERS = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict)


class _Tracer(fx.Tracer):
    """fx's default leaves (``torch.nn`` modules) plus any subclass of a stock ``torch.nn``
    class: its own ``forward`` runs as written, as one opaque step."""

    def __init__(self, all_leaves: bool = False, proxy_buffers: bool = True):
        super().__init__()
        self.all_leaves = all_leaves
        # buffers read in a forward become graph nodes, read when the step runs: left as tensors,
        # an expression of buffers alone (``self.temp.clamp(min=0.1)``) is computed once at the
        # capture and baked in, stale after the buffer changes. A forward that branches on a
        # buffer (``if self.initialized:``) or converts one (``float(self.scale)``) cannot be
        # traced so: it is traced with tensors, and its buffers join the split's key
        self.proxy_buffer_attributes = proxy_buffers
        self.thread = threading.get_ident()

    def call_module(self, m, forward, args, kwargs):
        # while fx traces, every thread's module calls reach this tracer: another thread's forward
        # (the user's own model, another run's queries) runs as it is, not traced (it raised NameError)
        if threading.get_ident() != self.thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != self.thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def trace(self, root, concrete_args=None):
        # fx traces with the caller's torch.autocast off: inside it, the forward's own autocast
        # block left the state as it found it (enabled), and the check below did not see it
        with _TRACE_LOCK, contextlib.ExitStack() as off:
            for d in ("cpu", "cuda"):
                if is_autocast_enabled(d):
                    off.enter_context(torch.autocast(d, enabled=False))
            self.autocast_at_start = _autocast_state()
            self.autocast = False
            return super().trace(root, concrete_args)

    def create_node(self, *args, **kwargs):
        # a `with torch.autocast(...)` block in the forward runs while fx traces, but the graph does
        # not record it: its steps would run in the model's dtype, where model(x) runs them in half
        if _autocast_state() != self.autocast_at_start:
            self.autocast = True
        return super().create_node(*args, **kwargs)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, torch.jit.ScriptModule):  # compiled: one opaque step, its own forward
            return True
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and type(m).forward in (
                nn.Sequential.forward, nn.Module.forward):
            return False
        if self.all_leaves or super().is_leaf_module(m, qualname):
            return True
        # a subclass of a stock layer runs its own forward whole; a container's (torchvision's
        # DenseNet block, an ``nn.ModuleDict`` with a forward of its own) only composes its
        # children, and is traced through as any module is (kept whole, a train-mode BatchNorm
        # inside it made the whole model run full forwards)
        return any(c.__module__.startswith("torch.nn") and c not in _CONTAINERS for c in type(m).__mro__[1:])


def is_autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``, which torch has from 2.4 on; before it,
    ``torch.is_autocast_enabled()`` took no argument and answered for CUDA only, and
    ``torch.is_autocast_cpu_enabled()`` for the CPU."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _autocast_state() -> tuple:
    return tuple(is_autocast_enabled(d) for d in ("cpu", "cuda"))


def _functional(node: fx.Node):
    """``(target, args, kwargs)`` of ``node`` with in-place variants replaced by out-of-place ones."""
    target, kwargs = node.target, dict(node.kwargs)
    if kwargs.get("inplace") is True:
        kwargs["inplace"] = False
    if node.op == "call_function":
        name = getattr(target, "__name__", "")
        if target in (operator.iadd, operator.isub, operator.imul, operator.itruediv):
            target = {operator.iadd: operator.add, operator.isub: operator.sub,
                      operator.imul: operator.mul, operator.itruediv: operator.truediv}[target]
        elif name.endswith("_") and not name.startswith("_") and hasattr(torch, name[:-1]):
            target = getattr(torch, name[:-1])
        elif name.endswith("_") and not name.startswith("_") and hasattr(nn.functional, name[:-1]):
            target = getattr(nn.functional, name[:-1])  # F.hardtanh_, F.elu_, F.leaky_relu_: no torch.* twin
    elif node.op == "call_method" and target.endswith("_") and not target.startswith("_") \
            and hasattr(torch.Tensor, target[:-1]):
        target = target[:-1]
    return target, node.args, kwargs


#: calls whose result shares the memory of their first argument (a view), so a write into one
#: is a write into the other
_VIEW_METHODS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze", "transpose", "t",
    "permute", "expand", "expand_as", "narrow", "select", "unfold", "as_strided", "diagonal", "movedim", "moveaxis",
    "swapaxes", "swapdims", "split", "chunk", "unbind", "tensor_split", "detach", "contiguous", "__getitem__",
    "view_as_real", "view_as_complex", "real", "imag", "hsplit", "vsplit", "dsplit", "split_with_sizes", "ravel",
    # the tensor itself when nothing changes (the dtype or device it has already)
    "to", "type", "type_as", "float", "double", "half", "bfloat16", "cpu", "cuda"})
_VIEW_FUNCTIONS = frozenset({
    operator.getitem, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.transpose, torch.t,
    torch.permute, torch.narrow, torch.select, torch.chunk, torch.split, torch.unbind, torch.tensor_split,
    torch.detach, torch.movedim, torch.moveaxis, torch.swapaxes, torch.swapdims, torch.diagonal, torch.as_strided,
    torch.hsplit, torch.vsplit, torch.dsplit, torch.split_with_sizes, torch.ravel, torch.view_as_real,
    torch.view_as_complex, torch.atleast_1d, torch.atleast_2d, torch.atleast_3d,
    # dropout returns its input itself when off (eval mode, p = 0), as the oracle runs it
    nn.functional.dropout, nn.functional.dropout1d, nn.functional.dropout2d, nn.functional.dropout3d,
    nn.functional.alpha_dropout, nn.functional.feature_alpha_dropout, torch.dropout})
#: modules whose output is their input or a view of it (dropout: when off, as the oracle runs it)
_VIEW_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                 nn.AlphaDropout, nn.FeatureAlphaDropout)
_VIEW_ATTRS = frozenset({"data", "T", "mT", "H", "mH", "real", "imag"})


def _in_place(n: fx.Node) -> bool:
    """Whether ``n`` writes into its first argument (what :func:`_functional` runs out of place)."""
    if n.op not in ("call_function", "call_method") or not n.args or not isinstance(n.args[0], fx.Node):
        return False
    target, _, kwargs = _functional(n)
    return not (target == n.target and kwargs == dict(n.kwargs))


def _aliases(n: fx.Node, model: nn.Module | None = None) -> bool:
    """Whether ``n``'s value shares the memory of its first argument: a view, an element of a
    split, ``.data``, a conversion to what it is already (``.to``, ``.double()``), a module that
    returns its input (``nn.Identity``, ``nn.Flatten``), or an in-place call's result (its
    argument itself). Where unsure, yes: a refusal costs feature reuse, a miss a wrong estimate."""
    if not n.args or not isinstance(n.args[0], fx.Node):
        return False
    if n.op == "call_module":
        return model is not None and isinstance(model.get_submodule(n.target), _VIEW_MODULES)
    if n.op == "call_method":
        return n.target in _VIEW_METHODS or _in_place(n)
    if n.op == "call_function":
        if n.target is getattr:
            return len(n.args) > 1 and n.args[1] in _VIEW_ATTRS
        return n.target in _VIEW_FUNCTIONS or _in_place(n)
    return False


def _node_where(n: fx.Node):
    """``(qualified name, class name)`` of the innermost module whose forward holds ``n`` (fx
    records the modules a trace entered), or None for the model's own forward."""
    return next(((k, v[1].__name__) for k, v in reversed(n.meta.get("nn_module_stack", {}).items())
                 if isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], type)), None)


def _stale_after_in_place(nodes: list, order: dict, model: nn.Module | None = None) -> str:
    """Why the steps, which run in-place calls out of place (:func:`_functional`), would
    compute another function than ``forward``: a call writing into a tensor in place
    (``h.clamp_(max=c)``, ``F.relu_(h)``, ``h[:, :2].mul_(0.5)`` as a statement) whose memory
    is read after it, through the tensor the write went into, the tensor it is a view of, or
    any view of that made before the write. Out of place the write is lost on those reads. A
    size or a new tensor computed before the write does not share its memory and is not
    such a read. "" where no such call is."""
    for n in nodes:
        module = None
        if n.op == "call_module" and model is not None and n.args and isinstance(n.args[0], fx.Node):
            module = model.get_submodule(n.target)
            if not writes_input(module):
                continue
        elif not _in_place(n):
            continue
        at = order[n]
        root = n.args[0]
        while _aliases(root, model):  # up to the tensor that owns the memory
            root = root.args[0]
        shared = {root}  # it, and its views made before the write
        for m in nodes[order[root] + 1:at]:
            if _aliases(m, model) and m.args[0] in shared:
                shared.add(m)
        for m in nodes[at + 1:]:
            if (m.op == "call_function" and m.target is getattr and m.args[1] in _META_ATTRS) or (
                    m.op == "call_method" and m.target in _META_METHODS and not (m.target == "type" and
                                                                                 len(m.args) + len(m.kwargs) > 1)):
                continue  # a size or a dtype: no read of the memory
            if any(i in shared for i in m.all_input_nodes) and module is not None:
                # the oracle runs such a module out of place everywhere, full forwards included
                return (f"runs module {n.target!r} ({type(module).__name__}, inplace=True) on a tensor that is read "
                        f"again after it (at {m.name}): the oracle runs it out of place, in every path, which is "
                        f"another function than model(x) as written; set inplace=False on that module (in-place "
                        "activation overwrote the tensor the later read expects)")
            if any(i in shared for i in m.all_input_nodes):
                what = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
                what = {"iadd": "+=", "isub": "-=", "imul": "*=", "itruediv": "/="}.get(what, what)
                fix = (f"h = h.{what[:-1]}(...) rather than h.{what}(...) alone" if what.endswith("_")
                       else "h = h + ... rather than +=, or inplace=False")
                where = _node_where(n)
                what += f", in the forward of {where[0]!r}, {where[1]}" if where else ""
                if root.op == "get_attr" and model is not None and root.target in dict(model.named_buffers()):
                    # a running statistic or counter: h = h.mul(...) is an activation's fix, not a buffer's
                    return (f"writes into a tensor in place ({what}), the buffer {root.target!r}, and reads it after "
                            f"the write (at {m.name}), which the captured steps, running the write out of place, would "
                            "not see; query the model in eval mode (model.eval(), with the update under `if "
                            "self.training:`), or update the buffer after the forward's last read of it, to keep "
                            "feature reuse")
                return (f"writes into a tensor in place ({what}) and reads that memory after the write (at {m.name}), "
                        f"which the captured steps, running it out of place, would not see; assign the result and "
                        f"read that instead ({fix}; on a view, h = torch.cat of the parts)")
    return ""


class _Program:
    """Evaluate a list of fx nodes; ``inputs`` name the nodes read from the state, in order."""

    def __init__(self, root: nn.Module, nodes: list, inputs: list, out_names: list):
        self.root = root
        self.nodes = [(n.name, n.op) + _functional(n) for n in nodes]
        self.where = _node_where(nodes[-1])  # for messages
        self.inputs = inputs
        self.out_names = out_names
        used = {i.name for n in nodes for i in n.all_input_nodes}
        #: positions of the state entries the nodes read, and of those passed through unchanged
        self.reads = [i for i, name in enumerate(inputs) if name in used]
        self.passthrough = [inputs.index(name) for name in out_names[1:]]

    def __call__(self, state: tuple) -> tuple:
        env = dict(zip(self.inputs, state))
        load = lambda a: env[a.name]  # noqa: E731
        root = self.root
        for name, op, target, args, kwargs in self.nodes:
            a = fx.node.map_arg(args, load)
            kw = fx.node.map_arg(kwargs, load)
            if op == "get_attr":
                v = root
                for part in target.split("."):
                    v = getattr(v, part)
            elif op == "call_module":
                v = root.get_submodule(target)(*a, **kw)
            elif op == "call_method":
                v = getattr(a[0], target)(*a[1:], **kw)
            else:
                v = target(*a, **kw)
            env[name] = v
        return tuple(env[n] for n in self.out_names)


class _arrange:
    """Reorder / drop state entries (picklable, so an oracle ships to worker processes)."""

    arrange = True  # moves cached tensors: run_owned must not write into its result

    def __init__(self, idx: tuple):
        self.idx = idx

    def __call__(self, state):
        return tuple(state[i] for i in self.idx)


def trace_steps(model: nn.Module):
    """``(steps, "")`` from the traced graph of ``model``, or ``(None, reason)``.

    Tracing stops at stock ``torch.nn`` modules and their subclasses; when the full trace
    fails, it is retried with every non-container submodule as a leaf (an ``nn.Sequential``
    of untraceable modules still splits between them).
    """
    graph, err, where = None, None, None
    held = _held_copies(model)  # before the trace: what it computes from them is not the model's own
    UNTRACED.pop(model, None)
    for proxy in (True, False):
        for leaves in (False, True):
            saved = _attributes(model)
            tracer = _Tracer(leaves, proxy)
            try:
                with torch.enable_grad():  # a value computed from a trainable parameter while tracing keeps grad_fn
                    graph = _without_defaults(tracer.trace(model, concrete_args=_defaults(model) or None))
                break
            except Exception as exc:  # data-dependent control flow, unsupported Python
                if err is None:
                    err, where = exc, _failed_at(model, exc)
            finally:  # what the traced forward assigned (``self.calls += 1`` on a buffer stores a Proxy)
                _restore_attributes(saved)
        if graph is not None:
            break
    if graph is None:
        if type(model).__module__.startswith("torch._dynamo") and isinstance(getattr(model, "_orig_mod", None),
                                                                           nn.Module):
            return None, (f"torch.fx cannot trace a torch.compile'd module ({type(model).__name__}): pass the "
                          "uncompiled module (model._orig_mod, which holds the same parameters) to keep feature "
                          "reuse")
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) and isinstance(
                getattr(model, "module", None), nn.Module):
            return None, (f"torch.fx cannot trace {type(model).__name__}: pass the wrapped module (model.module, "
                          "which holds the same parameters) to keep feature reuse and vectorized full forwards")
        if isinstance(model, torch.jit.ScriptModule):
            return None, (f"torch.fx cannot trace a TorchScript module ({type(model).__name__}): pass the module "
                          "before torch.jit.script / torch.jit.trace to keep feature reuse and vectorized full forwards")
        converted = isinstance(err, TypeError) and any(f"{f}() argument" in str(err) for f in ("float", "int", "bool"))
        if converted:
            hint = ("; float(), int() or bool() of a traced value is a proxy while fx traces: keep a parameter or "
                    "buffer a tensor (x / self.temperature, not x / float(self.temperature)); a size read from the "
                    "input (int(x.size(1))) is used as it is, or build what depends on it once as a buffer of the "
                    "largest size and slice it (self.mask[:T, :T])")
        elif isinstance(err, TypeError) and "does not support item assignment" in str(err):
            hint = ("; an assignment into a tensor (h[mask] = 0, out[:, 0] = v) cannot be traced: write it out of "
                    "place (h = h.masked_fill(mask[:, None], 0), torch.where(mask[:, None], v, h), index_put, scatter)")
        elif isinstance(err, TypeError):
            hint = ("; a size read from the input is a proxy while fx traces, so a factory call on it "
                    "(torch.ones(x.size(1), n)), a loop over range(x.size(1)) or pack_padded_sequence cannot be "
                    "traced: build such a tensor once as a buffer of the largest size and slice it "
                    "(self.mask[:T, :T]); docs/pytorch.md")
        else:
            hint = _control_flow_hint(err)
        return None, (f"torch.fx cannot trace {type(model).__name__} ({type(err).__name__}: {str(err)[:200]})"
                      f"{_where_text(where)}{hint}")
    if tracer.all_leaves and err is not None:  # the retry kept every submodule whole: say why where it costs
        UNTRACED[model] = (f"{type(err).__name__}: {str(err)[:200]}", where, _control_flow_hint(err))
    baked = [n.target for n in graph.nodes if n.op == "get_attr" and _from_parameters(model, n.target)
             and _leaves(_value(model, n.target), held)]
    if baked:
        ids = {id(p): n for n, p in model.named_parameters()}
        names = [ids[id(p)] for t in baked for p in _leaves(_value(model, t), held)
                 if id(p) in ids]
        named = ", ".join(repr(n) for n in dict.fromkeys(names)) or "a parameter"
        return None, (f"{type(model).__name__}'s forward computes a tensor from {named} outside what torch.fx "
                      f"records (it iterates self.parameters() or named_parameters(), as a penalty summed over them "
                      f"does, or holds a parameter in a plain list): the captured graph would keep the value it had "
                      f"at the capture; read each parameter as a module attribute (self.lstm.weight_hh_l0) to keep "
                      f"feature reuse")
    if tracer.autocast and not all(t.dtype == torch.float64 for t in [*model.parameters(), *model.buffers()]
                                   if t.is_floating_point()):  # (autocast casts no float64 op: nothing to miss)
        return None, (f"{type(model).__name__}'s forward enters torch.autocast, which torch.fx does not capture (the "
                      "captured steps would run in the model's dtype, model(x) in half precision)")
    for name, m in model.named_modules():
        if not proxy and m._buffers and (m is model or not tracer.is_leaf_module(m, name)):
            BAKED_BUFFERS.add(m)  # read as values at the capture: a change must check the split again
        else:
            BAKED_BUFFERS.discard(m)
    return _graph_steps(model, list(graph.nodes))


def _value(model: nn.Module, target: str):
    v = model
    for part in target.split("."):
        v = getattr(v, part, None)
    return v


def _from_parameters(model: nn.Module, target: str) -> bool:
    """Whether ``get_attr`` ``target`` is a tensor fx stowed as a constant (``_tensor_constant0``) that was
    computed from trainable parameters while tracing (it has a grad_fn): a value the forward took from
    real parameters rather than from fx's proxies, which would stay as it was at the capture."""
    if not target.rsplit(".", 1)[-1].startswith("_tensor_constant"):
        return False  # the model's own attribute (model(x) reads it as it is too)
    v = _value(model, target)
    return torch.is_tensor(v) and not isinstance(v, nn.Parameter) and v.grad_fn is not None


def _held_copies(model: nn.Module) -> set:
    """The grad_fn of each tensor the model holds before the trace (a buffer or plain attribute,
    alone or in a list, tuple or dict) that was computed from parameters into memory of its own
    (an anchor ``self.w0 = self.fc.weight.clone()`` taken in ``__init__``): perturbing the parameters
    changes it no more in ``model(x)`` than in the captured graph. A view of a parameter does change."""
    found = [t for m in model.modules() for v in [*vars(m).values(), *m._buffers.values()]
             for t in (v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else (v,))
             if torch.is_tensor(t) and t.grad_fn is not None]
    if not found:  # (the usual model: nothing computed from its parameters is held)
        return set()
    own = {p.untyped_storage().data_ptr() for p in model.parameters() if p.layout == torch.strided}
    return {t.grad_fn for t in found if t.layout != torch.strided or t.untyped_storage().data_ptr() not in own}


def _leaves(t, held=frozenset()) -> list:
    """The tensors autograd accumulates into behind ``t`` (the parameters it was computed from),
    not counting those reached only through ``held`` (:func:`_held_copies`)."""
    out, seen, todo = [], set(), [t.grad_fn]
    while todo:
        f = todo.pop()
        if f is None or f in seen or f in held:
            continue
        seen.add(f)
        if hasattr(f, "variable"):
            out.append(f.variable)
        todo += [g for g, _ in f.next_functions]
    return out


def _defaults(model: nn.Module) -> dict:
    """The forward's parameters after the input that have plain defaults (``mask=None``,
    ``return_features=False``): the oracle calls ``model(x)``, so fx traces them as those
    values. Traced as inputs, they made a one-input model look like a two-input one (no split)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())[1:]
    except Exception:  # noqa: BLE001 (a compiled or wrapped forward without a signature: traced as it is)
        return {}
    plain = (type(None), bool, int, float, str)
    return {p.name: p.default for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and type(p.default) in plain}


def _without_defaults(graph: fx.Graph) -> fx.Graph:
    """``graph`` without the placeholders fx makes for ``concrete_args`` and the asserts that
    check them (nothing else reads them: the values were used while tracing)."""
    holders = [n for n in graph.nodes if n.op == "placeholder"][1:]
    if not holders:
        return graph
    fixed = set(holders)
    for n in graph.nodes:  # the asserts (and their comparisons) of the fixed values
        if n.op == "call_function" and n.all_input_nodes and all(i in fixed for i in n.all_input_nodes):
            fixed.add(n)
    if any(u not in fixed for n in fixed for u in n.users):
        return graph  # a fixed value the forward reads as a graph input: left as is (refused as two inputs)
    for n in reversed(list(graph.nodes)):
        if n in fixed:
            graph.erase_node(n)
    return graph


#: models captured by the retry with every submodule a leaf: the full trace's error, where it
#: was raised (:func:`_failed_at`) and a hint, for messages about a step kept whole (:func:`whole_note`)
UNTRACED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _failed_at(model: nn.Module, exc: BaseException):
    """``(qualname, "file:line", source)`` of the innermost forward of ``model``'s modules (and the
    innermost line of code outside torch) that ``exc`` passed through while fx traced, or None.
    Strings only: the traceback's frames (proxies, the model) are not kept."""
    names = {id(m): n for n, m in model.named_modules()}
    torch_dir = os.path.dirname(torch.__file__)
    qual, line, tb = None, None, exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        code = frame.f_code  # the first argument: a forward's ``self``, whatever it is called
        me = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
        if id(me) in names and isinstance(me, nn.Module):
            qual = names[id(me)]
        file = frame.f_code.co_filename
        if not file.startswith(torch_dir) and os.path.dirname(file) != os.path.dirname(__file__):
            line = (f"{os.path.basename(file)}:{tb.tb_lineno}", linecache.getline(file, tb.tb_lineno).strip())
        tb = tb.tb_next
    if qual is None:
        return None
    return (qual, *line) if line else (qual, "", "")


def _where_text(where) -> str:
    if not where:
        return ""
    qual, line, src = where
    at = f" at {line}" + (f" ({src})" if src else "") if line else ""
    return f" in the forward of {repr(qual) if qual else 'the model'}{at}"


def _control_flow_hint(err) -> str:
    if type(err).__name__ == "TraceError" and "control flow" in str(err):
        return ("; a Python if, while, and/or, any() or bool() on a tensor (if h.sum() > 0, any(t.requires_grad "
                "for t in inputs)) cannot be traced: write the branch with torch.where, decide it from a plain "
                "attribute set outside forward, or drop it (torchvision's DenseNet: memory_efficient=False; no "
                "backward runs here, so its checkpointing saves nothing)")
    return ""


def step_what(model: nn.Module, st) -> str:
    """Where step ``st`` is, for messages: its module's class, or the forward its function is in."""
    if st.module is not None:
        return f" ({type(st.module).__name__})"
    where = getattr(st.fn, "where", False)
    if where is False:  # a declared step's function, or one of the chain's own
        return ""
    return f" (in the forward of {where[0]!r}, {where[1]})" if where else f" (in {type(model).__name__}.forward)"


def whole_note(core, module, name: str) -> str:
    """What to add to a message about step ``name`` (``module``) of ``core``'s captured split when
    the capture kept it whole only because fx could not trace a forward inside it (see
    ``UNTRACED``), else '' (a declared split's steps are whole as declared)."""
    found = UNTRACED.get(core.model)
    if core.blocks_arg is not None or hasattr(core.model, "zoracle_steps"):
        return ""
    if found is None or module is None or not name or _Tracer().is_leaf_module(module, name):
        return ""
    text, where, hint = found
    if where and where[0] != name and not where[0].startswith(f"{name}."):  # (fx failed in another step)
        return ""
    return (f"; {name} runs as one step (its layers get no blocks of their own) because torch.fx could not "
            f"trace through it ({text}){_where_text(where)}{hint}")


#: modules whose forward was traced with their buffers as values (see ``_Tracer``)
BAKED_BUFFERS: "weakref.WeakSet" = weakref.WeakSet()


def _attributes(model: nn.Module) -> list:
    """Every module's buffers, parameters and plain attributes, by reference (a TorchScript
    module's are its compiled object's: a traced forward cannot assign them, and its dict
    wrappers cannot be cleared)."""
    return [(m, dict(m._buffers), dict(m._parameters), {k: v for k, v in m.__dict__.items() if not k.startswith("_")})
            for m in model.modules() if not isinstance(m, torch.jit.ScriptModule)]


def _restore_attributes(saved: list) -> None:
    for m, buffers, params, plain in saved:
        for store, was in ((m._buffers, buffers), (m._parameters, params)):
            if store.keys() != was.keys() or any(store[k] is not v for k, v in was.items()):
                store.clear()
                store.update(was)
        d = m.__dict__
        for k in [k for k in d if not k.startswith("_") and k not in plain]:
            del d[k]
        for k, v in plain.items():
            if d.get(k) is not v:
                d[k] = v


def _graph_steps(model, nodes):
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return None, f"{type(model).__name__}.forward takes {len(placeholders)} inputs; the oracle feeds one"
    if str(placeholders[0].target).startswith("*"):  # the steps would feed the batch as the tuple `args`
        return None, (f"{type(model).__name__}.forward takes {placeholders[0].target}, which the captured steps "
                      "cannot feed; name its input (def forward(self, x))")
    out_node = next(n for n in nodes if n.op == "output")
    if not isinstance(out_node.args[0], fx.Node):
        return None, f"{type(model).__name__}.forward returns a {type(out_node.args[0]).__name__}, not one tensor"
    for n in nodes:
        if n.op == "call_function" and n.target is operator.setitem:
            return None, f"{type(model).__name__}.forward assigns into a tensor in place ({n.name})"
    order = {n: i for i, n in enumerate(nodes)}
    why = _stale_after_in_place(nodes, order, model)
    if why:
        return None, f"{type(model).__name__}.forward {why}"
    # activations: nodes whose value depends on the input's data (not only on its shape)
    meta, act = set(), {placeholders[0]}
    for n in nodes:
        if n.op in ("placeholder", "output"):
            continue
        ins = n.all_input_nodes
        if (n.op == "call_function" and n.target is getattr and n.args[1] in _META_ATTRS) or (
                n.op == "call_method" and n.target in _META_METHODS):
            meta.add(n)
        elif ins and all(i in meta for i in ins) and n.op == "call_function" and n.target is operator.getitem:
            meta.add(n)
        elif any(i in act for i in ins):
            act.add(n)
    # activations that are tuples (chunk, split, attention's (out, weights)) are recomputed
    # by the steps that index them instead of being kept in the state
    multi = {n for n in act if n.op != "placeholder" and n.users and all(map(_element, n.users))}
    # an element no node reads (``out, _ = self.lstm(x)`` traces a getitem for ``_`` too) gets
    # no step: it would run its tuple's module again only to drop the result; nor does a pure
    # computation only such nodes read (``self.last = h.detach().abs().mean()``, kept for
    # display: a step of it would "mix samples" and cost the split its feature reuse). Module
    # calls and in-place methods stay: they may act on state.
    dead = set()
    for n in reversed(nodes):
        if n in act and n.op != "placeholder" and all(u in dead for u in n.users) and (_element(n) or _pure(n)):
            dead.add(n)
    state = act - multi - dead

    def inlined(n):
        """Ancestors of ``n`` recomputed in its step, in topological order."""
        seen, stack = set(), [i for i in n.all_input_nodes if i not in state]
        while stack:
            m = stack.pop()
            if m in seen:
                continue
            seen.add(m)
            stack += [i for i in m.all_input_nodes if i not in state]
        return sorted(seen, key=order.get)

    plan, last_use = [], {}
    for n in nodes:
        if n not in state or n.op == "placeholder":
            continue
        extra = inlined(n)
        ins = list(dict.fromkeys(i for m in extra + [n] for i in m.all_input_nodes if i in state))
        plan.append((n, extra, ins))
        for i in ins:
            last_use[i] = order[n]
    final = out_node.args[0]
    last_use[final] = len(nodes)
    steps, layout = [], [placeholders[0]]
    for n, extra, ins in plan:
        live_after = [v for v in layout if last_use.get(v, -1) > order[n]]
        mod = model.get_submodule(n.target) if n.op == "call_module" else None
        if mod is not None and not extra and len(n.args) == 1 and not n.kwargs and ins == [n.args[0]]:
            want = [n.args[0]] + live_after  # keeps the input after pos 0 when it is used later
            if layout != want:
                steps.append(Step(fn=_arrange(tuple(layout.index(v) for v in want)), name="arrange"))
            steps.append(Step(module=mod, name=n.target))
        else:
            prog = _Program(model, extra + [n], [v.name for v in layout], [n.name] + [v.name for v in live_after])
            steps.append(Step(fn=prog, name=_step_name(n, extra),
                              params=_reads_params(model, extra + [n]), rowwise=_rowwise(extra + [n])))
        layout = [n] + live_after
    if final not in state:
        return None, f"{type(model).__name__}.forward returns a value that does not depend on its input"
    if layout != [final]:
        steps.append(Step(fn=_arrange((layout.index(final),)), name="output"))
    return steps, ""


def _step_name(n: fx.Node, extra: list) -> str:
    """A function step's name: its module's, for a module call or an element of one module's
    tuple (``out, _ = self.lstm(x)``: ``lstm``, not ``getitem``); else its node's."""
    if n.op == "call_module":
        return n.target
    mods = [m.target for m in extra if m.op == "call_module"]
    if n.op == "call_function" and n.target is operator.getitem and len(mods) == 1:
        return mods[0]
    return n.name


def _reads_params(model: nn.Module, nodes: list) -> tuple:
    """Parameters a function step uses: those of its modules and those it reads by name."""
    out = []
    for n in nodes:
        if n.op == "call_module":
            out += list(model.get_submodule(n.target).parameters())
        elif n.op == "get_attr":
            v = model
            for part in n.target.split("."):
                v = getattr(v, part)
            # ``.shape`` reads no data; ``.T`` / ``.mT`` do (``h @ self.proj.T``)
            data_users = [u for u in n.users
                          if not (u.op == "call_function" and u.target is getattr and u.args[1] in _META_ATTRS)]
            if isinstance(v, nn.Parameter) and data_users:
                out.append(v)
    return tuple(out)


def _rowwise(nodes: list) -> bool:
    """Whether a function step treats samples independently (safe to evaluate only changed rows)."""
    for n in nodes:
        if n.op == "call_function":
            if n.target is getattr:
                continue
            if n.target not in _ROWWISE_FUNCS:
                return False
        elif n.op == "call_method":
            if n.target not in _ROWWISE_METHODS and n.target not in _META_METHODS:
                return False
        elif n.op == "call_module":
            return False
    return True


def _width(step, n: int):
    """Number of state entries after ``step`` given ``n`` before it (None: unknown)."""
    if step.fn is None:
        return n
    if isinstance(step.fn, _arrange):
        return len(step.fn.idx)
    if isinstance(step.fn, _Program):
        return 1 + len(step.fn.passthrough)
    return None


def downstream(steps: list, si: int):
    """Which steps read a value that a perturbation of step ``si`` changes.

    Returns a list of booleans (one per step; steps up to ``si`` are False), or None when a
    declared function step hides its dependencies (then every later step runs). Steps that
    are not downstream (the other branch of a fork, a shortcut's convolution) keep their
    cached outputs in the suffix.
    """
    n = 1
    for st in steps[:si + 1]:
        n = _width(st, n)
        if n is None:
            return None
    dirty = [True] + [False] * (n - 1)
    mask = [False] * len(steps)
    for j in range(si + 1, len(steps)):
        fn = steps[j].fn
        if fn is None:
            mask[j] = dirty[0]
        elif isinstance(fn, _arrange):
            dirty = [dirty[i] for i in fn.idx]
        elif isinstance(fn, _Program):
            mask[j] = any(dirty[i] for i in fn.reads)
            dirty = [mask[j]] + [dirty[i] for i in fn.passthrough]
        else:
            return None
    return mask
