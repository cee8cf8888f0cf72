"""TorchOracle's building blocks: flat layout, parameter records, conversions, helpers."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from zoracle._backend import fields_hash, is_cupy
from zoracle._errors import ArgumentError, masked_entries

from ._torch_chain import _NORM, BlockParams, Chain, Step, extract_steps, fast_kind, steps_from_items
from ._torch_channels import CL_POOLS, cropped_conv, pooled_channels_last
from ._torch_graph import _arrange

#: the name of the last step that holds the parameters no step of the split reads
UNREAD = "(parameters the forward does not read)"

__all__ = ["ParamInfo", "to_torch", "build_core", "cross_entropy", "class_major", "class_major_loss", "run_owned",
           "repeat_rows"]


@dataclass(frozen=True)
class ParamInfo:
    """One trainable parameter in the flat vector: its ``name`` (as ``named_parameters`` gives
    it), its ``slice`` of the vector and its ``shape`` in the model.

    ``kind`` is ``"conv"`` / ``"linear"`` (weights of Conv / Linear layers, the ones ZO-GraSP
    scores), ``"norm"`` (normalization weights), ``"bias"`` or ``"other"``. ``read`` is False
    for a parameter no step of the split reads (its partial derivatives are 0; it sits in the
    last block, after the layers the forward runs).
    """

    name: str
    slice: slice
    shape: tuple
    kind: str
    read: bool = True

    __hash__ = fields_hash  # (the generated hash raised TypeError on the slice before Python 3.12)


# a layer's weight under its reparametrizations: the deprecated hook-based weight_norm's direction
# and spectral_norm's unnormalized weight (the weight's shape: the entries a mask zeroes)
_WEIGHTS = ("weight", "weight_v", "weight_orig")


def _plain_shape(module, attr: str):
    """The shape of a Conv / Linear layer's ``weight`` or ``bias`` (``attr``) as the layer makes it,
    read from its settings (a parametrized tensor computed would run the parametrization: spectral
    norm's power iteration writes its vectors); None for other layers."""
    if isinstance(module, nn.modules.conv._ConvNd):
        if attr == "bias":
            return (module.out_channels,)
        cin, cout = ((module.out_channels, module.in_channels) if module.transposed
                     else (module.in_channels, module.out_channels))
        return (cout, cin // module.groups, *module.kernel_size)
    if isinstance(module, nn.Linear):
        return (module.out_features,) if attr == "bias" else (module.out_features, module.in_features)
    return None


def _owners(model: nn.Module) -> dict:
    """``id(parameter) -> (layer, "weight" or "bias")`` for the originals of a parametrized Conv /
    Linear tensor with that tensor's shape (``torch.nn.utils.parametrizations``' weight_norm
    direction ``original1``, spectral_norm's and orthogonal's ``original``): the layer's weights all
    the same, which ZO-GraSP scores. A parametrization's own parameters (a LoRA's factors) and
    weight_norm's magnitude ``original0`` keep their module."""
    owners = {}
    for m in model.modules():
        if not parametrize.is_parametrized(m):
            continue
        for tname, plist in m.parametrizations.items():
            if tname not in ("weight", "bias"):
                continue
            shape = _plain_shape(m, tname)
            # weight_norm's magnitude original0 has the weight's shape too where a row is one entry
            # (Linear(1, k), a 1x1 conv of one input channel per group): only its direction is the weight
            skip = ("original0",) if any(type(f).__name__ == "_WeightNorm" for f in plist) else ()
            for a, q in plist.named_parameters(recurse=False):  # original, or original0, original1, ...
                if shape is not None and tuple(q.shape) == tuple(shape) and a not in skip:
                    owners[id(q)] = (m, tname)
    return owners


def follow_names(core) -> None:
    """Rename the flat vector's parameters (``core.info``) that the model holds under another name
    now: a parametrization registered after the build keeps a layer's weight, the same tensor, as
    ``parametrizations.weight.original``, and ``weight`` is then the tensor it computes, no
    Parameter (a ``.grad`` set on it by the old name reached no optimizer). Read from the modules'
    own parameter dicts: reading ``weight`` would run the parametrization."""
    model, stale = core.model, []
    for i, (info, p) in enumerate(zip(core.info, core.params)):
        owner, _, attr = info.name.rpartition(".")
        try:
            if model.get_submodule(owner)._parameters.get(attr) is p:
                continue
        except AttributeError:  # the module was removed or renamed
            pass
        stale.append(i)
    if not stale:
        return
    now = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        now.setdefault(id(p), name)
    info = list(core.info)
    for i in stale:
        info[i] = replace(info[i], name=now.get(id(core.params[i]), info[i].name))
    core.info = info


def _param_kind(module, attr: str) -> str:
    if attr == "bias":
        return "bias"
    if isinstance(module, nn.modules.conv._ConvNd) and attr in _WEIGHTS:
        return "conv"
    if isinstance(module, nn.Linear) and attr in _WEIGHTS:
        return "linear"
    if isinstance(module, _NORM):
        return "norm"
    return "other"


def _as_torch_dtype(dtype):
    if dtype is None or dtype in (torch.float32, torch.float64):
        return dtype
    table = {"float32": torch.float32, "float64": torch.float64}
    try:
        name = np.dtype(dtype).name  # "double", "f8", np.float64 and "float64" alike
    except TypeError:  # a torch dtype NumPy does not know (bfloat16), or no dtype at all
        name = str(dtype)
    if name not in table:
        raise ArgumentError(f"`dtype` must be float32 or float64 (torch, numpy or a string), got {dtype!r}: a finite "
                            "difference in half precision is mostly rounding")
    return table[name]


def _param_views(core, t, dst) -> list:
    """``t[info.slice].view_as(p)`` for each parameter ``p`` of ``dst`` (``core.params``' data): one
    ``as_strided`` each where ``t`` is contiguous, from the spans and shapes worked out once
    (``core.load_geometry``, made again when the parameters' layout or shapes change)."""
    shapes = [p.shape for p in dst]
    geo = core.__dict__.get("load_geometry")
    if geo is None or geo[0] is not core.info or geo[1] != shapes:
        spans = []
        for p, info in zip(dst, core.info):
            sl = info.slice
            if sl.step not in (None, 1) or sl.stop - sl.start != p.numel():
                spans = None  # not one contiguous span of the parameter's size: the slices say how (or raise)
                break
            strides, n = [], 1
            for size in reversed(p.shape):
                strides.append(n)
                n *= size
            spans.append((tuple(p.shape), tuple(reversed(strides)), sl.start))
        geo = core.load_geometry = (core.info, shapes, spans)
    if geo[2] is None or not t.is_contiguous():
        return [t[info.slice].view_as(p) for p, info in zip(dst, core.info)]
    off = t.storage_offset()
    return [t.as_strided(shape, strides, off + start) for shape, strides, start in geo[2]]


def check_params_array(name: str, v) -> None:
    """Refuse, naming ``name``, the params arrays torch would load wrongly (a masked array's hidden
    data as values, a complex array's real part only, with a warning) or refuse naming no argument
    (a big-endian or long double array: torch has no tensor for them)."""
    if isinstance(v, np.ma.MaskedArray) and np.ma.is_masked(v):
        raise ArgumentError(f"`{name}` is a numpy.MaskedArray{masked_entries(v)}: the data hidden behind the mask "
                            f"would be loaded as values; fill the masked entries first, e.g. {name}.filled(0.0)")
    if (torch.is_tensor(v) and v.is_complex()) or (isinstance(v, np.ndarray) and v.dtype.kind == "c"):
        raise ArgumentError(f"`{name}` is complex ({v.dtype}); the model's parameters are real and would get the "
                            f"real part only: pass real values ({name}.real, when the imaginary part is 0)")
    if isinstance(v, np.ndarray) and v.dtype.kind == "f" and (not v.dtype.isnative or v.dtype.itemsize > 8):
        why = "in big-endian byte order" if not v.dtype.isnative else "a long double"
        raise ArgumentError(f"`{name}` has dtype {v.dtype} ({why}), which torch has no tensor for; use "
                            f"{name}.astype(np.float64)")


def to_torch(x, device=None, dtype=None) -> torch.Tensor:
    """``x`` (NumPy, CuPy or torch) as a tensor; CuPy crosses by DLPack, NumPy by ``from_numpy``.

    ``device`` moves it; ``dtype`` (float32 or float64: torch, NumPy or a string) converts a
    floating ``x`` only (integer class labels keep their dtype)."""
    dtype = _as_torch_dtype(dtype)
    if isinstance(x, torch.Tensor):
        t = x
    elif is_cupy(x):
        t = torch.from_dlpack(x)
    else:
        a = np.asarray(x)
        if a.dtype == object:
            # NumPy infers float64 from Python floats (a pandas frame of mixed or nullable dtypes,
            # pd.get_dummies' bool columns beside floats); torch.as_tensor would make them float32
            b = np.array(a.tolist())
            t = torch.from_numpy(b) if b.dtype.kind in "biufc" else torch.as_tensor(a.tolist())
        elif not a.flags.writeable:  # a read-only view (as estimate_gradient hands out): copied, not shared
            t = torch.from_numpy(np.array(a, order="C"))
        else:  # (np.ascontiguousarray would make a 0-d array, a loss_fn's NumPy scalar, 1-d)
            t = torch.from_numpy(a if a.flags.c_contiguous else np.ascontiguousarray(a))
    if device is not None or dtype is not None:
        t = t.to(device=device if device is not None else t.device,
                 dtype=dtype if (dtype is not None and t.is_floating_point()) else t.dtype)
    return t


class _Core:
    """What every bound copy of one TorchOracle shares: model, layout, split, measurements."""

    def __init__(self, model, steps, reason):
        self.model = model
        self.steps = steps
        self.reason = reason
        self.warned = False
        self.vmap_ok = True
        #: parameter tensors (by flat index; -1: all at once, ``batch``) whose vectorized full
        #: forward was checked once against one perturbed in place: it reaches every read of them
        self.vmap_reached = set()
        self.checked = False     # the split's self-check ran (once, at the first bound batch)
        self.checked_modes = set()  # the modules' train/eval modes the split passed the check in
        self.checking = False    # the self-check is running (its own queries must not start it again)
        self.scalar_loss = None  # loss_fn returns one mean loss (True) or per-sample losses (False)
        self.group_rows = False  # per-sample losses coupled across the batch: called per group, averaged
        self.shared = []
        self.downstream = {}     # block step -> which later steps a perturbation reaches
        self.probe = {}      # per-sample shape key -> per-step state bytes per sample
        self.costs = {}      # per-sample shape key -> block costs
        self.base_out = None  # the last plain call's output (params, output, model state, batch): see _chain_is_model
        self.inert_context = True  # the last norm_context of coordinate_losses was inert (a hint: which way to run)

    @contextlib.contextmanager
    def undone_unless_finished(self, names):
        """The attributes ``names`` and ``checked_modes`` put back as they were where the block
        raises (a KeyboardInterrupt in the model or loss_fn, an error of the model's own)."""
        before = {k: self.__dict__[k] for k in names if k in self.__dict__}
        modes = set(self.checked_modes)
        try:
            yield
        except BaseException:
            for k in names:
                if k in before:
                    self.__dict__[k] = before[k]
                else:
                    self.__dict__.pop(k, None)
            self.checked_modes.intersection_update(modes)
            raise

    # the keys of ``checked_modes`` name modules and parameters by id: a copy (a worker's) has
    # other ids, so they travel as positions in ``model.modules()`` (and in its parameters) and
    # come back as the copy's ids
    def __getstate__(self):
        from ._torch_watch import _PLAIN_NAMES

        state = dict(self.__dict__)
        state["base_out"] = None  # an output of this process's last plain call: not the copy's
        state.pop("load_geometry", None)  # worked out again from the copy's parameters
        state.pop("index_plans", None)  # index tensors on this process's device: made again where needed
        mods = list(self.model.modules())
        pos = {id(m): i for i, m in enumerate(mods)}
        ppos = {}
        for p in _module_params(mods):
            ppos.setdefault(id(p), len(ppos))
        state["checked_modes"] = [tuple((pos.get(k[0], -1),) + k[1:3] + (_ids_as(k[3], ppos, -1),) + k[4:]
                                        for k in key) for key in self.checked_modes]
        # which plain attributes are watched (those a forward writes are not): the copy's modules
        # are new objects, and would watch them again until their first check
        state["plain_names"] = [_PLAIN_NAMES.get(m) for m in mods]
        return state

    def __setstate__(self, state):
        from ._torch_watch import _PLAIN_NAMES

        plain = state.pop("plain_names", None)
        self.__dict__.update(state)
        mods = list(self.model.modules())
        ids = []
        for p in _module_params(mods):
            if id(p) not in ids:
                ids.append(id(p))
        back = dict(enumerate(ids))
        self.checked_modes = {tuple((id(mods[k[0]]) if 0 <= k[0] < len(mods) else None,) + k[1:3]
                                    + (_ids_as(k[3], back, None),) + k[4:] for k in key)
                              for key in state["checked_modes"]}
        for m, names in zip(mods, plain or ()):
            if names is not None:
                _PLAIN_NAMES[m] = names


def _module_params(mods) -> list:
    """Every module's own parameters in ``mods``' order (a tied one once per module holding it)."""
    return [p for m in mods for p in m._parameters.values() if p is not None]


def _ids_as(pairs: tuple, table: dict, missing) -> tuple:
    """A module key's ``(id, requires_grad)`` pairs of its parameters with each id looked up in
    ``table`` (ids to positions for a copy, positions back to the copy's ids)."""
    return tuple((table.get(i, missing), rg) for i, rg in pairs)


def build_core(model, blocks) -> _Core:
    """Split ``model`` into steps and lay its trainable parameters out flat, block by block.

    The flat order follows the steps (forward order) when the split covers every trainable
    parameter exactly once; otherwise the model has no blocks (full forwards).
    """
    # some: TorchOracle checked; an empty parameter has no coordinate (and its block none to perturb)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.numel()]
    if isinstance(blocks, str):
        if blocks != "none":
            raise ArgumentError(f"`blocks` must be None, 'none' or a list of modules/Steps, got {blocks!r}")
        steps, reason = None, ""
    elif blocks is not None:
        try:
            items = list(blocks)
        except TypeError:
            raise ArgumentError(f"`blocks` must be None, 'none' or a list of modules/Steps, got {blocks!r}") from None
        if not items:
            raise ArgumentError("`blocks` is empty: pass the model's modules in forward order, None (the split "
                                "captured from the forward) or 'none' (no feature reuse)")
        try:
            steps, reason = steps_from_items(model, items), ""
        except TypeError as exc:
            raise ArgumentError(f"`blocks`: {exc}") from None
    else:
        try:
            steps, reason = extract_steps(model)
        except TypeError as exc:
            raise ArgumentError(f"`model.zoracle_steps()`: {exc}") from None
    core = _Core(model, None, reason)
    core.blocks_arg = blocks
    names = {id(p): n for n, p in trainable}
    shared_steps, unread = set(), set()
    if steps is not None:
        owned, order = {}, []
        for si, st in enumerate(steps):
            items = list(st.module.named_parameters()) if st.module is not None else []
            items += [(names.get(id(p), "param"), p) for p in st.params]
            here = set()
            for attr, p in items:
                if not p.requires_grad or not p.numel() or id(p) in here:
                    continue
                here.add(id(p))
                if id(p) in owned:
                    # one parameter feeds several steps (a module called twice, tied weights):
                    # the block of its first use runs every later step per perturbation
                    shared_steps.add(owned[id(p)])
                    continue
                owned[id(p)] = si
                order.append((si, attr, p))
        left = [p for n, p in trainable if id(p) not in owned]
        if left:
            # parameters no step reads (a second head in a ModuleDict, an aux classifier the
            # forward skips): a last step that passes the output through holds them, so the rest
            # keeps its feature reuse. Their losses are the base loss; the split's check runs
            # model(x) with all of them moved at once, and retires the split if the loss changes
            steps = list(steps) + [Step(fn=_arrange((0,)), name=UNREAD, params=tuple(left))]
            for p in left:
                owned[id(p)] = len(steps) - 1
                order.append((len(steps) - 1, names[id(p)], p))
                unread.add(id(p))
        core.steps = steps
        core.chain = Chain(steps)
        core.layout = order
    if core.steps is None:
        core.layout = [(-1, names[id(p)], p) for n, p in trainable]
        core.chain = Chain([Step(module=model, name="model")])
    # flat layout
    off = 0
    params, info, block_steps = [], [], []
    mods = {id(p): (m, a) for m in model.modules() for a, p in m.named_parameters(recurse=False)}
    mods.update(_owners(model))
    cur = None
    for si, attr, p in core.layout:
        n = p.numel()
        sl = slice(off, off + n)
        mod, a = mods[id(p)]
        info.append(ParamInfo(names[id(p)], sl, tuple(p.shape), _param_kind(mod, a), id(p) not in unread))
        params.append(p)
        if si >= 0:
            if cur is None or cur[0] != si:
                cur = [si, off, [], [], [0]]
                block_steps.append(cur)
            cur[2].append(p)
            cur[3].append(attr)
            cur[4].append(cur[4][-1] + n)
        off += n
    core.d = off
    core.params = params
    core.info = info
    # before the unread block (2026-12-05) a model with unread parameters ran full forwards, its
    # flat vector in model.parameters() order: a resume of such a checkpoint must not load into this one
    legacy = [n for n, p in trainable]
    core.unread_moved = tuple(names[id(p)] for p in params if id(p) in unread) \
        if [names[id(p)] for p in params] != legacy else ()
    core.block_steps = [c[0] for c in block_steps]
    core.blocks = [slice(c[1], c[1] + c[4][-1]) for c in block_steps]
    core.block_params = [BlockParams(c[2], c[3], np.asarray(c[4], dtype=np.int64)) for c in block_steps]
    core.block_names = [core.steps[c[0]].name for c in block_steps]
    core.shared = [c[0] in shared_steps for c in block_steps]
    core.kinds = [fast_kind(core.steps[c[0]].module) if core.steps[c[0]].fn is None and c[0] not in shared_steps
                  else "" for c in block_steps]
    if len(set(core.block_steps)) != len(core.block_steps):  # a step's params not contiguous
        core.reason = "a step's parameters are not contiguous in forward order"
        core.blocks, core.block_steps = [], []
    return core


def run_owned(steps, state, start: int, mask=None, fill=None):
    """Run ``steps[start:]`` on tensors this oracle owns: plain ReLUs run in place.

    With ``mask`` (``downstream``), a step the perturbations do not reach is not run: its
    output is ``fill(j)``, the cached base output of step ``j`` for these rows.
    """
    fresh = True  # state[0] was computed by this run (never a cached activation)
    for j in range(start, len(steps)):
        st = steps[j]
        m = st.module
        if mask is not None and not mask[j]:
            pas = getattr(st.fn, "passthrough", None)
            if st.fn is None or pas is not None:
                rest = tuple(state[1:]) if st.fn is None else tuple(state[i] for i in pas)
                state = (fill(j),) + rest
                fresh = False
                continue
        if st.fn is not None:  # may return cached tensors or views of them
            state = st(state)
            fresh = False
            continue
        if st.fn is None and type(m) in CL_POOLS:
            # CPU pooling of many small planes: channels-last, the same values (max pooling an
            # order of magnitude faster, average pooling 1.5x)
            out = pooled_channels_last(m, state[0])
            if out is not None:
                state = (out,) + tuple(state[1:])
                fresh = True
                continue
        if type(m) is nn.Conv2d:
            # a kernel larger than the map (the last stages' 1x1 and 2x2 maps): the taps that only
            # meet zero padding dropped, the same sums
            out = cropped_conv(m, state[0])
            if out is not None:
                state = (out,) + tuple(state[1:])
                fresh = True
                continue
        if fresh and type(m) is nn.ReLU:
            x = state[0]
            ptr = x.untyped_storage().data_ptr()
            if all(s.untyped_storage().data_ptr() != ptr for s in state[1:]):
                state = (torch.relu_(x),) + tuple(state[1:])
                continue
        state = st(state)
        # stock layers that allocate their output (Identity, Flatten, Dropout may return views)
        fresh = type(m).__module__.startswith("torch.nn") and not isinstance(m, _VIEWS)
    return state


_VIEWS = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
          nn.AlphaDropout, nn.FeatureAlphaDropout)


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy ``logsumexp(outputs) - outputs[target]``, shape ``(N,)``.

    Equal to ``nn.CrossEntropyLoss(reduction="none")`` for class-index ``targets`` ``(N,)``, and several
    times faster than its row kernel on CPU for the narrow outputs of batched perturbations
    (through ``TorchOracle`` a stock ``nn.CrossEntropyLoss(reduction="none")`` on 2-15 classes
    runs class-major instead, about as fast: :func:`class_major_loss`).
    """
    for name, t in (("outputs", outputs), ("targets", targets)):
        if not isinstance(t, torch.Tensor):  # a NumPy array or list: AttributeError deep inside otherwise
            raise ArgumentError(f"cross_entropy's `{name}` must be a torch.Tensor, got {type(t).__name__}: "
                                f"convert it first, e.g. torch.as_tensor({name})")
    if outputs.dim() != 2 or targets.numel() != outputs.shape[0]:  # 1 target for N rows was broadcast
        raise ArgumentError(f"cross_entropy takes `outputs` of shape (N, classes) and one class index per row in "
                            f"`targets`; got outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)}")
    if targets.is_floating_point() and bool((targets != targets.trunc()).any()):  # .long() would truncate them
        bad = targets.reshape(-1)[(targets != targets.trunc()).reshape(-1)]
        raise ArgumentError(f"cross_entropy's `targets` must be class indices; got targets that are not whole numbers "
                            f"({bad.numel()} of {targets.numel()}, the first {float(bad[0]):g}: class probabilities?): "
                            "pass integer labels, or nn.CrossEntropyLoss(reduction='none') for soft targets")
    picked = outputs.gather(1, targets.reshape(-1, 1).long()).squeeze(1)
    if outputs.shape[0] == 0 or not outputs.is_floating_point():
        return torch.logsumexp(outputs, dim=1) - picked
    # one shift for the whole batch (a contiguous reduction, much faster than a max per
    # row of a narrow matrix); rows that would underflow get the exact per-row shift
    m = outputs.max()
    s = torch.exp(outputs - m).sum(dim=1)
    tiny = torch.finfo(outputs.dtype).tiny * 2**40
    if not bool(torch.isfinite(m)) or bool((s < tiny).any()):
        return torch.logsumexp(outputs, dim=1) - picked
    return s.log_().add_(m) - picked


# Class-major cross-entropy: torch's CPU log-softmax over the last dimension runs a row at a
# time, and a row narrower than one vector register (fewer than 16 float32 classes) gets almost
# nothing from it: 7,040 rows of 10 classes take about 0.9 ms, most of a demo step's loss. The
# same nn.CrossEntropyLoss on the same logits laid out (1, classes, rows) runs the class
# dimension as an outer loop over full vectors of rows, 4-8x faster. Columns are padded to a
# multiple of _PAD so that every row takes the vector path: a row's loss is then the same bits
# whichever rows share the call (what lets the suffix keep base losses for unchanged rows).
_PAD = 64
_MAX_CLASSES = 15


def class_major(loss_fn) -> bool:
    """Whether ``loss_fn`` is a stock ``nn.CrossEntropyLoss(reduction="none")`` without label
    smoothing: the loss :func:`class_major_loss` may run in the class-major layout (its own
    type only; a subclass may have its own forward)."""
    return (type(loss_fn) is nn.CrossEntropyLoss and loss_fn.reduction == "none"
            and float(loss_fn.label_smoothing) == 0.0)


def class_major_loss(loss_fn, outputs: torch.Tensor, targets) -> torch.Tensor | None:
    """``loss_fn(outputs, targets)`` computed by ``loss_fn`` itself on the logits laid out
    ``(1, classes, rows)`` (rows padded to a multiple of 64), shape ``(rows,)``; None when the
    layout does not apply (not CPU float32/float64 logits ``(rows, classes)`` with 2-15 classes
    and int64 class-index targets ``(rows,)``; the row kernel also takes uint8 targets, the
    class-major one does not): call ``loss_fn`` as it is.

    Equal to the row layout up to rounding in the last bits (torch's two kernels); every row's
    value is independent of the other rows of the call.
    """
    if (not isinstance(targets, torch.Tensor) or outputs.dim() != 2 or outputs.device.type != "cpu"
            or outputs.dtype not in (torch.float32, torch.float64) or not 2 <= outputs.shape[1] <= _MAX_CLASSES
            or targets.dim() != 1 or targets.shape[0] != outputs.shape[0] or targets.dtype != torch.int64
            or outputs.shape[0] == 0):
        return None
    n, c = outputs.shape
    m = -(-n // _PAD) * _PAD
    z = outputs.new_zeros((1, c, m))
    z[0, :, :n] = outputs.T
    t = targets.new_zeros((1, m))
    t[0, :n] = targets
    return loss_fn(z, t)[0, :n]


def repeat_rows(t: torch.Tensor, k: int) -> torch.Tensor:
    return t.unsqueeze(0).expand((k,) + tuple(t.shape)).reshape((k * t.shape[0],) + tuple(t.shape[1:]))
