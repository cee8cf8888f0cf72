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
closed forms, oracle semantics of BatchNorm / dropout / in-place ops), ``_torch_channels``
(channel deltas, channels-last layout), ``_torch_layout`` (flat layout, blocks),
``_torch_exact`` (self-check, full-forward fallback) with ``_torch_reference`` (reference
``model(x)``), ``_torch_repeat`` (random forwards), ``_torch_watch`` (plain attributes a
forward reads and writes) and ``_torch_hooks`` (hooks, messages), ``_torch_guards`` and
``_torch_tensors`` (TorchOracle's guards around a query, its tensors), ``_torch_batches`` and
``_torch_walk`` (TorchOracle's batch machinery and chain walk, as mixins), ``_torch_blackbox``
(``blackbox``).
"""

from __future__ import annotations

import copy
import numbers
from typing import Any

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("zoracle.adapters.torch needs torch: pip install torch==2.13.0 && pip install -e '.[torch]' "
                      "(for the CPU wheel, add --index-url https://download.pytorch.org/whl/cpu to the first)") from exc
from torch import nn

from zoracle._errors import ArgumentError, check_flag, user_stacklevel, warn

from ._torch_batches import _Batches
from ._torch_blackbox import blackbox
from ._torch_chain import (
    Step,
    chain_is_forward,
    fork,
    _model_lock as model_lock,
    norm_context,
)
from ._torch_exact import (_self_check, check_batch_first, check_batch_kind, check_held, check_rows_later, ensure_split,
                           first_bind, full_coordinate_losses, reference_loss)
from ._torch_guards import (_RUNNING_STATS, _autocast_off, _copy, _model_state, _one_query_at_a_time, _refuse_aliased,
                            _refuse_parametrize_cache, _retired, _tf32_note, _version, check_dtype)
from ._torch_hooks import name_list, _integer_batch_error
from ._torch_layout import ParamInfo, _as_torch_dtype, _param_views, build_core, cross_entropy, follow_names, to_torch
from ._torch_tensors import (_Features, _batch_tensor, _compact, _indices, _odd_layout, _params_tensor,
                             _persistent_buffers, _private, _same)
from ._torch_walk import _Walk
from ._torch_watch import _modes

__all__ = ["TorchOracle", "ParamInfo", "Step", "fork", "blackbox", "cross_entropy", "to_torch"]


class TorchOracle(_Batches, _Walk):
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
    modules and their subclasses are leaves, a container's subclass with its own ``forward`` is
    traced through). Each step that first uses a parameter is one
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
            raise ArgumentError("`model` must be a torch.nn.Module, got " + (
                f"the class {model.__name__}, not an instance: build it first, {model.__name__}(...)"
                if isinstance(model, type) and issubclass(model, nn.Module) else type(model).__name__))
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
            swapped = isinstance(loss_fn, nn.Module) and any(p.requires_grad for p in loss_fn.parameters())
            raise ArgumentError(f"`model` ({type(model).__name__}) has no trainable parameters (requires_grad=True): "
                                "nothing to estimate" + (f"; `loss_fn` ({type(loss_fn).__name__}) has them: the two "
                                                         "swapped? TorchOracle(model, loss_fn)" if swapped else ""))
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
        self._core.built_dtype = self.dtype  # a model converted in place after this is refused (check_dtype)
        if self.dtype == torch.float32:
            note = _tf32_note(self.device)
            if note:
                warn(note, RuntimeWarning, stacklevel=user_stacklevel())
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
        check_dtype(self._core)  # (the batch is converted to the model's dtype)
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

    def bind(self, batch: Any) -> "TorchOracle":
        """A copy that evaluates on ``batch = (x, y)`` (NumPy or torch), sharing the model."""
        new = copy.copy(self)
        new._set_batch(batch)
        new._parent = getattr(self, "_parent", None) or self
        new._raw_batch = batch
        return new

    def unbind(self) -> tuple[TorchOracle, Any] | None:
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
        """Restore buffers saved by :meth:`state_arrays` from ``arrays`` (names and shapes must match)."""
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
        """The wrapped model."""
        return self._core.model

    @property
    def device(self) -> torch.device:
        """The device the model's parameters are on."""
        return self._core.params[0].device

    @property
    def compute_dtype(self) -> np.dtype:
        """The NumPy float the model evaluates params in (params of a wider float are rounded to
        it; ``zo.estimate_gradient`` then estimates at the rounded params, with the steps the
        model takes)."""
        return np.dtype("float64" if self.dtype == torch.float64 else "float32")

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of the model's parameters."""
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
        """A name for each of ``blocks``: its first step's in the model (or the last block's
        ``"(parameters the forward does not read)"``)."""
        return list(self._core.block_names)

    @property
    def parameter_names(self) -> list:
        """The trainable parameters' names in flat-vector order (as ``param_info`` lists them)."""
        follow_names(self._core)  # a parametrization registered since moved a weight to another name
        return [i.name for i in self._core.info]

    @property
    def _unread_moved(self) -> tuple:
        """Parameters no step reads that the flat vector puts after the others where the model's
        own order (and this oracle's before 2026-12-05) has them elsewhere: a resume refuses a
        checkpoint that did not record its layout then."""
        return self._core.unread_moved

    @property
    def param_info(self) -> list:
        """``ParamInfo(name, slice, shape, kind)`` for every trainable parameter, in flat order, named
        as the model holds it now (``model.get_parameter(name)``: a parametrization registered since
        the build holds a layer's weight as ``parametrizations.weight.original``)."""
        follow_names(self._core)
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
        check_dtype(self._core)
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in self._core.params])
        return flat.cpu().numpy().copy()

    def load(self, params: Any) -> None:
        """Write the flat vector ``params`` into the module's parameters."""
        check_held(self._core)  # not into a tensor a Parameter was assigned over since
        check_dtype(self._core)
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

    def batch_key(self) -> Any:
        """What a process or cluster executor compares before every run to see whether the bound
        batch changed in place since it sent it (then it sends the batch again): the bound
        tensors' version counters. None when nothing is bound."""
        return None if self._x is None else self._batch_key()

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
            warn(f"TorchOracle: {name_list([n or type(self.model).__name__ for n in moved])} write "
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
        c_t, plan = self._coordinate_plan(c)
        call = self.max_queries_per_call
        theta = self._load(params)
        states = self._chain_is_model(params, now, self._states(params, now))
        if states is None:
            return full_coordinate_losses(self, params, c, step)
        with torch.no_grad():
            base = theta[c_t]
            h = (base + step) - base  # as suffix computes them, coordinate by coordinate

        def work(ctx):
            for b, sel, local, at in plan:
                feats = self._features(params, b, states, now, ctx)
                hb = h[at]
                for lo in range(0, len(sel), call):
                    out[sel[lo:lo + call]] = self._block_losses(feats, b, local[lo:lo + call], hb[lo:lo + call], ctx)
            return out

        # a norm_context that patches, switches and saves nothing (stock layers, no dropout, BatchNorm
        # or in-place activation to handle) is the same for every prefix and suffix: entered once for
        # all of them; any other, each prefix and suffix enters its own, as split calls do
        # (``inert_context``: what the last one was, so that a model needing its own is not tried again)
        if plan and getattr(core, "inert_context", True):  # (a core unpickled from an older version has none)
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

    @_one_query_at_a_time
    def suffix(self, features, params, block: int, coords, step) -> np.ndarray:
        """Losses at ``params`` for perturbing each coordinate in ``coords`` (all inside ``block``) by
        ``step``, from the ``features`` that ``prefix(params, block)`` returned."""
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

    # ---------------------------------------------------------------- evaluation
    def predict(self, params: Any, x: Any, *, batch_size: int = 1024, train: bool = False) -> np.ndarray:
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
        check_dtype(self._core)
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
