"""Exact or refuse: the reference ``model(x)``, the self-check of a captured split, the
full-forward fallback and the per-perturbation loop for shared parameters.

A gradient must never be silently wrong. At the first bound minibatch the split (captured
graph or declared steps) is compared against the plain model: the loss of the whole chain
against ``model(x)``, then, for every block, the suffix loss of one coordinate against a
plain perturbed forward, alone and batched with a second coordinate (so a step that mixes
perturbations shows). Any
mismatch, or an error, retires the split: every perturbation runs a full forward, and one
warning names the block and the deviation.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from zoracle._errors import ArgumentError, user_stacklevel, warn

from ._torch_chain import _BATCHNORM, _model_lock, _stock_forward, fast_kind, norm_context, nudged, vmap_safe
from ._torch_channels import LAYOUT
from ._torch_graph import _failed_at, step_what, whole_note
from ._torch_hooks import (_CHECK_STEP, _check_moves, _holding, _hook_check, _hook_reparametrized, _hooked,
                           _integer_batch_error, _loss_shape_fix, _model_fails, _sequence_first, name_list)
from ._torch_layout import UNREAD, to_torch
from ._torch_reference import _close, reference_loss, retire_split, rng_kept
from ._torch_repeat import _check_full_forward, _finite_probe, _not_repeatable, _two_samples
from ._torch_watch import _modes, _unwatch_changed, _unwatch_what_a_forward_writes, _what_changed

__all__ = ["first_bind", "reference_loss", "full_coordinate_losses", "shared_suffix"]


def _rows_coupled(oracle, out, v) -> bool:
    """Whether a per-sample ``loss_fn`` gives either half of the batch other losses alone than
    with the rest (two more calls, on half the samples each, at the first bind). Both halves: a
    loss coupled through a batch statistic that one half holds (``rows / out.abs().max()`` with
    the largest output in the first half) gives that half its own losses alone."""
    if not isinstance(out, torch.Tensor) or out.dim() == 0:  # refused at the first query, naming the fix
        return False
    y, B = oracle._y, out.shape[0]
    if B < 2 or (y is not None and (not isinstance(y, torch.Tensor) or y.dim() == 0 or y.shape[0] != B)):
        return False
    h = B // 2
    rows = v.reshape(-1)
    if rows.shape[0] != B:
        return True
    for part in (slice(0, h), slice(h, B)):
        try:
            with torch.no_grad(), norm_context(oracle.model, loss_fn=oracle.loss_fn):
                w = to_torch(oracle.loss_fn(out[part], None if y is None else y[part]))
        except Exception as exc:  # a loss that needs the whole batch (two views: out.view(2, -1, C) on an odd half)
            warn(f"TorchOracle: loss_fn raised on half of the batch ({type(exc).__name__}: "
                 f"{str(exc).strip()[:200]}): it runs one call per perturbation (slower), as a loss coupling "
                 "the samples does; a per-sample loss that works on any rows runs a perturbation group "
                 "in one call", RuntimeWarning, stacklevel=user_stacklevel())
            return True
        w, want = w.reshape(-1).double(), rows[part].double().to(w.device)
        if w.shape != want.shape:
            return True
        scale = float(want.abs().max()) if want.numel() else 0.0
        if not torch.allclose(w, want, rtol=1e-5, atol=1e-6 * max(1.0, scale)):
            return True
    return False


def _storage(t: torch.Tensor):
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # a tensor without storage (sparse, a functorch wrapper)
        return None


class _ParameterReads(TorchFunctionMode):
    """Notes whether any torch function gets one of the given parameters as an argument, or a
    tensor sharing one's storage (``model.state_dict()``'s detached aliases, taken before)."""

    def __init__(self, params, out):
        super().__init__()
        self.ids, self.hit = {id(p) for p in params}, False
        # the output may share a parameter's storage (a forward returning a view of one, alone
        # or in a tuple): a loss reads its own input; an empty tensor has no memory to share (pointer 0)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        self.storages = {_storage(p) for p in params} - {None, 0} - {_storage(o) for o in outs
                                                                      if isinstance(o, torch.Tensor)}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not self.hit:
            stack = list(args) + list((kwargs or {}).values())
            while stack:
                a = stack.pop()
                if isinstance(a, (list, tuple)):
                    stack.extend(a)
                elif isinstance(a, torch.Tensor) and (id(a) in self.ids or _storage(a) in self.storages):
                    self.hit = True
                    break
        return func(*args, **(kwargs or {}))


def _one_tensor(outputs) -> None:
    """The oracle stacks perturbations along the rows of the model's output: it must be one tensor."""
    if not isinstance(outputs, torch.Tensor):  # (not torch.is_tensor: a dispatch on every loss)
        kind = type(outputs).__name__
        raise ArgumentError(
            f"`model` returned a {kind}, not one tensor: TorchOracle stacks perturbations along the rows of "
            "the model's output, so its forward must return one tensor, batch first. Wrap the model in a "
            "module whose forward returns the output the loss uses (or torch.cat of the heads along dim 1, "
            "split again in `loss_fn`)")


def check_batch_first(out, B: int) -> None:
    """The model's output is one tensor keeping the batch of ``B`` samples as its first dimension
    (checked at every bind's plain call: a last minibatch of one meets a forward's ``squeeze()``
    late; a tuple or dict of heads is refused at the first bind, before a query that would fail
    inside the full forwards)."""
    _one_tensor(out)
    if out.ndim == 0 or out.shape[0] != B:
        raise ArgumentError(
            f"`model` returned {tuple(out.shape)} for a batch of {B} samples: its output must keep the batch "
            "as its first dimension (the oracle stacks perturbations along it); a forward ending in "
            "out.squeeze() drops it for a batch of one: squeeze a named dimension instead (squeeze(-1))")


def first_bind(oracle) -> None:
    """Learn the loss convention and self-check the split, once per oracle (all bound copies).
    Under the model's lock, as a query is: another thread's query on the shared model (two runs
    given one oracle) loads its own parameters, or swaps them in by name (vmap), under the check."""
    core = oracle._core  # (rng_kept: a forward drawing noise leaves the user's seeded stream as it was)
    with _model_lock(core.model), rng_kept(), core.undone_unless_finished(_FIRST_BIND_STATE):
        _first_bind(oracle)


#: what the first bind learns: put back as it was when the bind does not finish (Ctrl-C in the model
#: or loss_fn during its checks), so that the next bind checks again rather than trust it half found
_FIRST_BIND_STATE = ("scalar_loss", "group_rows", "rows_unchecked", "batch_kinds", "checked")


def _first_bind(oracle) -> None:
    core = oracle._core
    if core.scalar_loss is None:
        with torch.no_grad(), norm_context(oracle.model, loss_fn=oracle.loss_fn):
            try:
                out = oracle.model(oracle._x)
            except RuntimeError as exc:
                _integer_batch_error(exc, "x", oracle._x, "model(x)")
                raise
            B = oracle._x.shape[0]
            check_batch_first(out, B)
            with _ParameterReads(core.params, out) as reads:
                try:
                    v = to_torch(oracle.loss_fn(out, oracle._y))
                except RuntimeError as exc:
                    _label_error(exc, oracle._y, out.dtype)
                    raise
        if reads.hit:
            raise ArgumentError(
                "`loss_fn` reads the model's trainable parameters (a penalty such as weight decay inside the loss; "
                "or a tensor sharing their memory, such as model.state_dict()'s): "
                "the oracle perturbs parameters inside model(x) only, so the loss would see them unperturbed. Add "
                "the penalty in the model's forward, or use the optimizer's weight_decay")
        if not (v.is_floating_point() or v.is_complex()):  # its mean fails ("could not infer output dtype")
            raise ArgumentError(f"`loss_fn` returned {str(v.dtype).replace('torch.', '')} losses; finite differences "
                                "need float losses: return them as floats (e.g. .float() or a division by a float)")
        scalar = v.dim() == 0 or (v.numel() == 1 and B > 1)
        if not scalar and tuple(v.shape) not in ((B,), (B, 1)):  # (B, 1): a one-output regression's rows
            raise ArgumentError(f"`loss_fn` must return per-sample losses of shape ({B},) or one mean loss "
                                f"(a scalar), got shape {tuple(v.shape)}; {_loss_shape_fix(out, oracle._y, v, B)}")
        core.scalar_loss = bool(scalar)
        core.batch_kinds = {_batch_kind(oracle)}
        if not scalar and B < 2:
            # one sample has no halves to compare: a loss coupling the rows is not found here, and
            # would mix the k perturbations' rows stacked in one call. A call per perturbation group
            # (exact either way) until a later bind of two samples or more checks (check_rows_later)
            core.scalar_loss = core.group_rows = core.rows_unchecked = True
        elif not scalar and _rows_coupled(oracle, out, v):
            # per-sample losses that depend on the other samples (in-batch negatives, a batch
            # mean): run on k * B stacked rows, each perturbation's rows would meet the others'.
            # Each perturbation group gets a call of its own, as a mean loss's does: exact
            core.scalar_loss = core.group_rows = True
    if core.checked:
        return
    core.checked = True
    if _not_repeatable(oracle):
        core.checked_modes.add(_modes(core.model))  # warned once: not again at the next query
        return
    _self_check(oracle)
    if not core.blocks:
        core.checked_modes.add(_modes(core.model))  # repeatable in these modes: no split to check
        _check_full_forward(oracle)
    else:
        _note_whole(oracle)


def _note_whole(oracle) -> None:
    """Warn, once per oracle, where the split passed its check but keeps a submodule whole only
    because fx could not trace through it (:func:`whole_note`): the estimates are exact, but the
    layers inside it lose their own blocks and closed forms (a speed cost, said as one)."""
    core = oracle._core
    notes = [whole_note(core, st.module, st.name) for st in core.chain.steps
             if st.module is not None and any(True for _ in st.module.children())]
    notes = [n[2:] for n in notes if n]
    if notes and not core.__dict__.get("warned_whole"):
        core.warned_whole = True
        warn(f"TorchOracle: a speed cost, not an error (the estimates are exact): {'; '.join(notes)}; a "
             "coordinate of such a step reruns all of it, where its layers' own blocks would rerun from their own "
             "inputs",
             RuntimeWarning, stacklevel=user_stacklevel())


def _label_error(exc: RuntimeError, y, out_dtype) -> None:
    """Raise an ArgumentError naming the fix when ``loss_fn(outputs, y)`` failed on the bound
    ``y``'s dtype (int32 labels, int 0/1 targets for BCE) or on class labels as an (N, 1) column."""
    _integer_batch_error(exc, "y", y, "loss_fn(outputs, y)", out_dtype)
    if isinstance(y, torch.Tensor) and y.dim() == 2 and y.shape[1] == 1 and not y.is_floating_point() \
            and "multi-target" in str(exc):  # labels as a column (df[["label"]].values): torch's bare words
        raise ArgumentError(f"`batch`'s y has shape {tuple(y.shape)} and loss_fn(outputs, y) failed on it "
                            f"({exc}); class-index losses take one label per sample, shape "
                            f"({y.shape[0]},): pass y.ravel() (a torch tensor: y.squeeze(1))") from None


def _batch_kind(oracle) -> tuple:
    """What the first bind's checks of the batch depend on: x's dtype, y's dtype and shape past the batch."""
    y = oracle._y
    return (oracle._x.dtype, None if y is None else (y.dtype, tuple(y.shape[1:])))


def check_batch_kind(oracle) -> None:
    """At a later bind whose batch is of another kind (:func:`_batch_kind`) than every batch bound
    before (int32 labels from another loader, labels as an (N, 1) column, uint8 pixels): the first
    bind's dtype and shape advice, on two of its samples (not its whole batch: no full forward),
    where torch's bare error met the first query. An error the advice does not cover is left to
    the query (a loss that needs the whole batch may fail on two samples)."""
    core = oracle._core
    kinds = core.__dict__.setdefault("batch_kinds", set())
    kind = _batch_kind(oracle)
    if kind in kinds:
        return
    probe = _two_samples(oracle)
    with _model_lock(core.model), rng_kept(), torch.no_grad(), norm_context(oracle.model, loss_fn=oracle.loss_fn):
        try:
            out = oracle.model(probe._x)
        except RuntimeError as exc:
            _integer_batch_error(exc, "x", oracle._x, "model(x)")
            kinds.add(kind)  # (not probed again at every bind of this kind: the query names the error)
            return
        except Exception:  # noqa: BLE001 - the query names it
            kinds.add(kind)
            return
        try:
            v = to_torch(oracle.loss_fn(out, probe._y))
        except RuntimeError as exc:
            _label_error(exc, oracle._y, getattr(out, "dtype", None))
            kinds.add(kind)
            return
        except Exception:  # noqa: BLE001 - the query names it
            kinds.add(kind)
            return
    n = probe._x.shape[0]
    if not core.scalar_loss and isinstance(out, torch.Tensor) and v.numel() != 1 \
            and tuple(v.shape) not in ((n,), (n, 1)):
        raise ArgumentError(f"`loss_fn` must return per-sample losses of shape ({n},) or one mean loss (a scalar), "
                            f"got shape {tuple(v.shape)} on {n} samples of this batch; "
                            f"{_loss_shape_fix(out, probe._y, v, n)}")
    kinds.add(kind)


def check_rows_later(oracle) -> None:
    """The first bind's check for a per-sample loss coupling the rows (:func:`_rows_coupled`), at
    the first later bind of two samples or more where the first bound batch had one sample; a loss
    that does not couple them then runs a perturbation group in one call again."""
    core = oracle._core
    with _model_lock(core.model), rng_kept():
        if not core.__dict__.get("rows_unchecked") or oracle._x.shape[0] < 2:
            return
        with torch.no_grad(), norm_context(oracle.model, loss_fn=oracle.loss_fn):
            out = oracle.model(oracle._x)
            v = to_torch(oracle.loss_fn(out, oracle._y))
        B = oracle._x.shape[0]
        if tuple(v.shape) not in ((B,), (B, 1)):  # no per-sample rows here: the query names it
            return
        core.rows_unchecked = False
        if not _rows_coupled(oracle, out, v):
            core.scalar_loss = core.group_rows = False


def ensure_split(oracle, modes=None) -> bool:
    """Check the split again when the model is in a state it was not checked in (train/eval
    modes, its modules, forward hooks: :func:`module_key`): ``torch.fx`` captures a forward's
    branches on ``self.training`` as they were at the capture, so a model captured in eval
    mode and trained may run the other branch than ``model(x)``; a hook registered after the
    check would not run in the closed forms. ``modes``: the model's key, when the caller has
    it. True when a check ran."""
    with _model_lock(oracle._core.model):  # as first_bind: not while another thread's query runs
        return _ensure_split(oracle, modes)


#: how many of the model's keys (:func:`_modes`) the split is remembered as checked in: a forward hook
#: registered anew (each handle its own key) at every step would otherwise add one a step, for good
MODES_KEPT = 64


def _ensure_split(oracle, modes=None) -> bool:
    core = oracle._core
    if not core.checked or core.checking:
        return False
    now = _modes(core.model) if modes is None else modes
    if now in core.checked_modes:
        return False
    _check_parameters(oracle)
    if _not_repeatable(oracle):  # noise drawn under `if self.training:`, the model trained after eval
        core.checked_modes.add(now)
        return True
    old = next(iter(core.checked_modes)) if core.checked_modes else now
    if len(core.checked_modes) >= MODES_KEPT:  # (a hook registered anew at every step: a key a step)
        core.checked_modes.clear()  # forgotten keys are checked again when they come back: never wrong
        core.checked_modes.add(old)
    # an in-place activation swapped in (or switched on) since, whose input is read again after it:
    # full forwards run it out of place, another function than model(x), which the first bind's
    # check of them did not see
    swapped = [(k[0], k[4]) for k in old] != [(k[0], k[4]) for k in now]
    if not core.blocks:  # no split to check: the parameters were the question
        core.checked_modes.add(now)
        if swapped:
            _check_full_forward(oracle)
        return False
    _self_check(oracle, f"since the split was checked, {_what_changed(old, now)}: ",
                modes_changed=[k[1] for k in old] != [k[1] for k in now])
    if swapped and not core.blocks:  # retired: full forwards from here on
        _check_full_forward(oracle)
    return True


def check_held(core) -> None:
    """The flat vector's tensors must still be the model's parameters: one a ``Parameter`` was
    assigned over (``layer.weight = nn.Parameter(...)``, ``load_state_dict(..., assign=True)``, a
    weight tied to another) is read by no forward, so loading and perturbing it would change
    nothing the model computes."""
    with _model_lock(core.model):  # not while another thread's vmap has tensors swapped in by name
        held = {id(p) for p in core.model.parameters()}
    gone = [info.name for info, p in zip(core.info, core.params) if id(p) not in held]
    if gone:
        raise ArgumentError(
            f"{type(core.model).__name__}'s parameters {name_list(gone)} are no longer the model's (a Parameter "
            "assigned over them, layer.weight = nn.Parameter(...), load_state_dict(..., assign=True) or a weight "
            "tied to another, since the TorchOracle was built): its flat vector would load and perturb tensors the "
            "forward does not read; build a new TorchOracle for the changed model")


def _check_parameters(oracle) -> None:
    """The model's trainable parameters must still be the oracle's: a module swapped in, or a
    ``Parameter`` assigned, brings parameters the flat vector does not hold."""
    core = oracle._core
    mine = {id(p) for p in core.params}
    # an empty parameter has no coordinate
    theirs = [(n, p) for n, p in core.model.named_parameters() if p.requires_grad and p.numel()]
    new = [n for n, p in theirs if id(p) not in mine]
    if new:
        raise ArgumentError(
            f"{type(core.model).__name__} has trainable parameters the oracle's flat vector does not hold "
            f"({name_list(new)}: a module replaced, a Parameter assigned, layer.weight = nn.Parameter(...) or "
            f"load_state_dict(..., assign=True), or a parameter unfrozen with requires_grad_(True), since the "
            f"TorchOracle was built: {len(core.params)} tensors then, {len(theirs)} now); build a new TorchOracle "
            "for the changed model")
    check_held(core)  # a weight tied to another since: nothing new, one tensor of the flat vector gone
    frozen = [info.name for info, p in zip(core.info, core.params) if not p.requires_grad]
    if frozen:  # still in the flat vector: every load would write them, and training would move them
        raise ArgumentError(
            f"{type(core.model).__name__}'s parameters {name_list(frozen)} were frozen (requires_grad_(False)) "
            "since the TorchOracle was built: its flat vector holds them, so estimates would still perturb them and "
            "training would still move them; build a new TorchOracle for the changed model")


def _self_check(oracle, why: str = "", modes_changed: bool = False) -> None:
    """Compare the split with ``model(x)`` on (at most) two samples of the bound batch, in the
    model's current modes; retire it, with a warning naming the reason, if they differ.
    ``modes_changed``: a check again after train/eval modes changed, where a float32 split that
    passes is also compared with a float64 capture of the model as it is now."""
    core = oracle._core
    if not core.blocks:
        return
    _closed_forms_now(core)
    theta = oracle._load(oracle.initial_params()).clone()
    # the split's structure does not depend on the batch size: check on (at most) 2 samples
    probe = _finite_probe(oracle)
    if probe is None:  # no verdict from NaN losses: the split stays, unchecked, and is checked at the next query
        oracle._load(theta)
        return
    _unwatch_what_a_forward_writes(core.model, probe._x)
    before = _modes(core.model)  # what the check's own forwards write is unwatched after it, too
    # these modes count as checked from here on: the check's own prefix and suffix calls must
    # not start it again (a failed check retires the split, and then nothing is checked)
    checked = set(core.checked_modes)  # (as they are again where the check comes to no verdict)
    core.checked_modes.add(_modes(core.model))
    core.checking = True  # the check's own forwards may write buffers the key holds
    try:
        reason = _check_split(probe, theta)
        if reason and oracle.dtype != torch.float64:
            declared = [st.name for st in core.chain.steps
                        if st.fn is not None and getattr(st.fn, "layout_free", False) is True]
            if declared and not _check_split_without_channels_last(probe, theta):
                # the float64 recheck below cannot see this: suffixes run channels-last in float32 only
                reason = (f"a step declared layout_free ({', '.join(declared)}) gives other results on channels-last "
                          "activations: it depends on the memory layout (a .view or as_strided); remove its "
                          "layout_free")
            elif not _recheck_float64(oracle, probe):
                reason = ""
        elif oracle.dtype != torch.float64 and modes_changed:
            # float32's tolerance (about a thousand units of the loss's last place, which
            # BatchNorm over two samples can need) passes a captured branch on self.training
            # that the mode change made stale, whose loss is off by less (a temperature applied
            # in training only: 15% off the gradient). A capture of the model as it is now
            # decides: another graph (its constants aside) retires it. Only the graph: a loss
            # computed in float32 (.float()) fails the float64 copy's own check by round-off
            reason = _recheck_float64(oracle, probe, graph_only=True)
        # on the whole batch (a read a ReLU gates shows on some samples only), with no float64
        # recheck: an unread parameter leaves the loss bit for bit as it is
        if not reason:
            reason = _unread_check(oracle)
            if reason:  # read outside the graph: a parameter swapped in by name (vmap) would not reach that read
                core.vmap_ok = False
    except Exception as exc:  # any error on the fast path: refuse it; not one of model(x)'s own (a
        # simulator inside it that failed): the split is not to blame, and is checked at the next query
        if isinstance(exc, ArgumentError) or _model_fails(oracle, theta):
            core.checked_modes.intersection_update(checked)  # no verdict: not checked in these modes
            raise
        reason = f"the captured split failed ({type(exc).__name__}: {str(exc)[:200]})"
    except BaseException:  # Ctrl-C (or sys.exit) in the model during the check: no verdict, so the next
        core.checked_modes.intersection_update(checked)  # query checks again, not a split never checked
        raise
    finally:
        oracle._load(theta)
        core.checking = False
    if not reason:
        reason = _hook_check(oracle, theta)
    _unwatch_changed(core.model, before, tensors=False)
    if not reason:  # as the check left it (buffers put back by copies): checked too
        core.checked_modes.add(_modes(core.model))
    if reason:
        failed = reason.startswith("the captured split failed")  # an error, not a different loss
        retire_split(oracle, why + ((failed and _hook_reparametrized(core.model)) or reason
                                    + (_sequence_first(core.model) if failed else _hooked(core.model))))


def _closed_forms_now(core) -> None:
    """A block's closed form was chosen for its layer's class at the capture. A layer of another class
    now (``torch.nn.utils.parametrize.register_parametrization`` since the build makes an ``nn.Linear``
    a ``ParametrizedLinear`` over the same ``Parameter``, its weight computed from that original: the
    closed form took the original for the weight, and a symmetric or masked weight passed the check,
    whose coordinates lie on the diagonal) runs its own forward from here on, its parameters perturbed
    in place, as a layer parametrized before the build does. A closed form is not taken up again."""
    stale = [b for b, kind in enumerate(core.kinds)
             if kind and fast_kind(core.chain.steps[core.block_steps[b]].module) != kind]
    for b in stale:
        core.kinds[b] = ""
    if stale:
        core.costs.clear()  # measured with the closed forms


def _check_split_without_channels_last(probe, theta) -> str:
    """The self-check's reason with every suffix in its default layout (see ``LAYOUT``)."""
    LAYOUT.off = True
    try:
        return _check_split(probe, theta)
    finally:
        LAYOUT.off = False


def _recheck_float64(oracle, probe, graph_only: bool = False) -> str:
    """Why the same split fails the self-check on a float64 copy of the model, or '' when it
    passes there (round-off of float32 through ill-conditioned layers can exceed any fixed
    tolerance, and a wrong path can hide inside it). ``graph_only``: only whether the copy
    captures the same operations wired alike (its constants, and its own check's verdict,
    aside); a copy that cannot be made or captured (a model deepcopy refuses) then gives no
    verdict, '' (else it is a failure)."""
    core = oracle._core
    try:
        model, blocks = copy.deepcopy((core.model, core.blocks_arg))
        x = probe._x.double() if probe._x.is_floating_point() else probe._x
        y = probe._y.double() if probe._y is not None and probe._y.is_floating_point() else probe._y
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            twin = type(oracle)(model, oracle.loss_fn, (x, y), dtype=torch.float64, blocks=blocks, update_stats=False)
    except ArgumentError:
        raise
    except Exception as exc:
        return "" if graph_only else f"its float64 copy failed ({type(exc).__name__}: {str(exc)[:200]})"
    if not twin._core.blocks:
        if graph_only:  # no graph to compare: no verdict
            return ""
        return "in float64, " + (twin._core.reason or "the split is refused").split("; every perturbation runs")[0]
    # the copy is captured again, from the model as it is now: its verdict is about this split
    # only when it captured the same steps (a module swapped in since, or a branch on
    # self.training after a mode change, gives another graph: it must not clear this one)
    if _signature(twin._core, not graph_only) != _signature(core, not graph_only):
        return ("a capture of the model as it is now gives another graph than the split's (a module swapped in, or "
                "a forward that branches on self.training after a mode change)")
    return ""


def _args_text(args, constants: bool = True) -> str:
    import torch.fx as fx

    if not constants:  # the wiring only: every constant the same
        return repr(fx.node.map_aggregate(args, lambda a: a.name if isinstance(a, fx.Node) else "_"))
    return repr(fx.node.map_arg(args, lambda a: a.name))


def _signature(core, constants: bool = True) -> tuple:
    """The split's steps as names, module types and graph nodes: equal for the same capture.
    ``constants``: whether the constants the capture baked in count (a temperature read from an
    attribute); without them, equal for the same operations wired alike."""
    out = []
    for st in core.chain.steps:
        nodes = getattr(st.fn, "nodes", None)
        fn = (tuple((n[0], n[1], getattr(n[2], "__name__", str(n[2])), _args_text(n[3:], constants)) for n in nodes)
              if nodes is not None else type(st.fn).__name__)
        out.append((st.name, type(st.module).__name__ if st.module is not None else None, fn))
    return tuple(out)


def _check_split(oracle, theta) -> str:
    core = oracle._core
    x, y = oracle._x, oracle._y
    ref0 = reference_loss(oracle, x, y)
    with torch.no_grad(), norm_context(oracle.model, loss_fn=oracle.loss_fn) as ctx:
        states, writer = _run_watching_writes(core, x)
        if writer:
            return writer
        mixer = _mixing_step(core, states, ctx)
        out = states[-1][0]
        if mixer:
            return mixer
        got0 = float(oracle._loss(out, 1)[0])
    if not _close(got0, ref0, ref0, oracle.dtype):
        return (f"the {_split_kind(core)} of {type(core.model).__name__} gives loss {got0:.10g} but model(x) gives "
                f"{ref0:.10g}")
    for b, blk in enumerate(core.blocks):
        if core.block_names[b] == UNREAD:  # no step runs for it: _unread_check moves them all, and names them
            continue
        # two coordinates batched together (a step mixing perturbations shows as a
        # difference from the first one alone), the first also against model(x)
        i, last = int(blk.start), int(blk.stop - 1)
        feats = oracle.prefix(theta, b)
        pair = oracle.suffix(feats, theta, b, [i, last] if last > i else [i, i], _CHECK_STEP)
        alone = float(oracle.suffix(feats, theta, b, [i], _CHECK_STEP)[0])
        want = _perturbed_reference(oracle, theta, i, _CHECK_STEP)
        # the pair's second too: a step whose forward changes what the next one reads (a buffer
        # it writes, a parameter it renormalizes) shows there
        want2 = _perturbed_reference(oracle, theta, last, _CHECK_STEP) if last > i else want
        scale = max(abs(ref0), abs(want), abs(want2))
        for got, want, i in ((alone, want, i), (float(pair[0]), want, i), (float(pair[1]), want2, last)):
            if not _close(got, want, scale, oracle.dtype):
                name = core.block_names[b]
                mod = core.steps[core.block_steps[b]].module
                what = f"{name} ({type(mod).__name__})" if mod is not None else name
                return (f"block {what}: the loss with parameter {i} moved by {_CHECK_STEP} is {got:.10g} "
                        f"on the {_split_kind(core)} but {want:.10g} on model(x){whole_note(core, mod, name)}")
    return ""


def _unread_check(oracle) -> str:
    """The parameters no step reads, all moved at once (by different amounts: a shift that a
    softmax cancels would hide a read), must leave ``model(x)``'s loss on the whole bound batch
    as it is: a forward reading one outside the split (a layer holding another's weight in a
    plain list) shows. Empty when none is read (or the loss is not finite: no verdict)."""
    core = oracle._core
    if not core.block_names or core.block_names[-1] != UNREAD:
        return ""
    params = core.block_params[-1].params
    x, y = oracle._x, oracle._y
    ref0 = reference_loss(oracle, x, y)
    if not math.isfinite(ref0):
        return ""

    def moved(which) -> float:
        with _holding(which, _check_moves(which)):
            return reference_loss(oracle, x, y)

    got = moved(params)
    if _close(got, ref0, ref0, oracle.dtype):
        return ""
    names = {id(p): n for p, n in zip(core.params, (i.name for i in core.info))}
    read = [names[id(p)] for p in params if not _close(moved([p]), ref0, ref0, oracle.dtype)] or \
        [names[id(p)] for p in params]  # only together: name them all
    return (f"model(x) reads {name_list(read)}, which no step of the {_split_kind(core)} reads: with "
            f"{'it' if len(read) == 1 else 'them'} moved, the loss is {got:.10g} on model(x) but {ref0:.10g} unmoved")


def _mixing_step(core, states, ctx) -> str:
    """The first step whose output for one sample depends on the other samples (``h - h.mean(0)``,
    ``h / h.shape[0]``, ``h.roll(1, 0)``, pairs through ``view``), found by running it on the probe's
    samples together, then on each sample repeated three times (another batch size, no other
    sample; a step meant for batches of more than one, ``squeeze()``, still gets one); empty if
    none. BatchNorm, which the oracle normalizes per perturbation group, and stock layers, which
    act row by row, are not run. The fast paths stack perturbations along the rows: such a step
    would mix them. ``states``: the chain's run on the probe's samples (:func:`_run_watching_writes`).
    ``ctx.reset()`` puts back buffers a step writes (spectral norm) between runs."""
    B = states[0][0].shape[0]
    if B < 2:
        return ""
    for j, st in enumerate(core.chain.steps):
        state, out = states[j], states[j + 1]
        m = st.module
        plain = st.fn is None and m is not None and (isinstance(m, _BATCHNORM) or _stock_forward(m))
        rows = all(isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == B for t in state)
        if not plain and rows:
            try:
                mixed, merged = False, True
                for i in range(B):
                    ctx.reset()
                    three = st(tuple(t[i:i + 1].expand((3,) + tuple(t.shape[1:])).contiguous() for t in state))
                    pairs = [(o, a) for o, a in zip(out, three) if isinstance(o, torch.Tensor) and o.is_floating_point()]
                    mixed = mixed or not all(_same_rows(o, a, i, B) for o, a in pairs)
                    merged = merged and any(_merged_rows(o, a, i, B) for o, a in pairs)
            except Exception:  # a step that cannot run on one sample alone reads the others
                mixed, merged = True, False
            if mixed:
                what = step_what(core.model, st)
                if merged:  # x.view(b * t, c), x.flatten(0, 1): rows still per sample, the batch folded into them
                    rows = next(o.shape[0] for o in out if isinstance(o, torch.Tensor) and o.is_floating_point()) // B
                    return (f"step {st.name or j}{what} folds the batch dimension into the next one (each sample "
                            f"becomes {rows} rows, as x.view(b * t, c), x.reshape(-1, c) or x.flatten(0, 1) do): it "
                            "mixes no samples, but the fast paths keep one row per sample and are not checked "
                            "on a fold; keep the batch dimension apart (nn.Linear and nn.LayerNorm act on the last "
                            f"dimension of (b, t, c) as it is){whole_note(core, m, st.name)}")
                return (f"step {st.name or j}{what} mixes samples: its output for one sample depends on the others "
                        "(a batch statistic, the batch size, or rows paired or shifted along the batch), and the "
                        "fast paths stack perturbations along the batch" + (
                            whole_note(core, m, st.name) or "; a statistic per sample (over the dimensions "
                            "after the batch) keeps feature reuse, and so does an nn.BatchNorm layer in place of a "
                            "hand-written batch statistic (the oracle takes its statistics per perturbation)"))
    return ""


def _merged_rows(o, a, i: int, B: int) -> bool:
    """Whether ``o`` folds the batch into its first dimension (``B * r`` rows, sample ``i``'s
    being rows ``i * r`` to ``(i + 1) * r``, as ``view(b * t, c)`` lays them out) and ``a`` (the
    step on sample ``i`` repeated three times) holds those rows first."""
    if not isinstance(a, torch.Tensor) or a.dim() != o.dim() or o.dim() == 0 or o.shape[0] % B:
        return False
    r = o.shape[0] // B
    if r < 2 or a.shape[0] != 3 * r or a.shape[1:] != o.shape[1:]:
        return False
    got, want = a[:r], o[i * r:(i + 1) * r]
    f64 = o.dtype == torch.float64
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    return bool(torch.allclose(got, want, rtol=1e-9 if f64 else 1e-5, atol=(1e-12 if f64 else 1e-6) * scale))


def _same_rows(o, a, i: int, B: int) -> bool:
    """Whether ``a`` (a step's output on sample ``i`` repeated three times) holds, along the batch
    dimension, what ``o`` (its output on the ``B`` samples together) holds for sample ``i``. The
    batch dimension is the one whose size is ``B`` in ``o`` and 3 in ``a`` (a step may move it:
    attention's ``permute(2, 0, 3, 1, 4)``); an output with none, or with more than one, reduces
    over the batch or pairs its samples."""
    if not isinstance(a, torch.Tensor) or a.dim() != o.dim():
        return False
    dims = [d for d in range(o.dim()) if o.shape[d] != a.shape[d]]
    if len(dims) != 1 or o.shape[dims[0]] != B or a.shape[dims[0]] != 3:
        return False
    got, want = a.select(dims[0], 0), o.select(dims[0], i)
    f64 = o.dtype == torch.float64
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    return bool(torch.allclose(got, want, rtol=1e-9 if f64 else 1e-5, atol=(1e-12 if f64 else 1e-6) * scale))


def _split_kind(core) -> str:
    """How the split was made, for messages: declared (``blocks=`` or ``zoracle_steps``) or captured."""
    declared = core.blocks_arg is not None or hasattr(core.model, "zoracle_steps")
    return "declared split" if declared else "captured graph"


def _version(t):
    try:
        return t._version
    except RuntimeError:  # an inference tensor keeps no version counter
        return None


def _run_watching_writes(core, x) -> tuple:
    """``(states, reason)`` of one chain run on ``x`` (the state entering every step, and the last):
    ``reason`` names the first step that wrote in
    place into a tensor it did not produce (the input, an earlier step's cached output, a
    trainable parameter), which the fast paths would then read overwritten, or is empty. An
    in-place function torch has no out-of-place twin for (``F.hardtanh_``), or a module's own
    ``forward`` clamping its input in place, does that."""
    seen = {}

    def watch(t, what):
        if torch.is_tensor(t) and id(t) not in seen:
            v = _version(t)
            if v is not None:
                seen[id(t)] = (t, v, what)

    for p in core.params:
        watch(p, "a trainable parameter")
    watch(x, "the input batch")
    state = (x,)
    states = [state]
    for j, st in enumerate(core.chain.steps):
        state = st(state)
        states.append(state)
        for t, v, what in seen.values():
            if t._version != v:
                name = st.name or f"step {j}"
                mod = step_what(core.model, st)
                tail = ("; the fast paths would perturb the values it leaves there, not the parameters' (leave "
                        "the parameters as they are in forward: nn.Embedding with max_norm=None, any renormalizing "
                        "done out of place on what it returns)"
                        if what.endswith("parameter") else
                        ", which the fast paths read from their cache: they would see it overwritten (write into a "
                        "new tensor, x = x.clamp(...) rather than x.clamp_(...), to keep feature reuse)")
                return states, (f"step {name}{mod} writes in place into {what}{tail}"
                                f"{whole_note(core, st.module, st.name)}")
        for t in state:
            watch(t, f"the output of step {st.name or j}")
    return states, ""


def _perturbed_reference(oracle, theta, i: int, step: float) -> float:
    p, j = _locate(oracle._core, i)
    with nudged(p, j, step):
        return reference_loss(oracle, oracle._x, oracle._y)


def _locate(core, i: int):
    starts = [inf.slice.start for inf in core.info]
    t = int(np.searchsorted(starts, i, side="right") - 1)
    return core.params[t], int(i - starts[t])


def shared_suffix(oracle, feats, block: int, local, h, ctx) -> torch.Tensor:
    """A block whose parameter feeds several steps: perturb in place, run the rest, restore."""
    core = oracle._core
    bp = core.block_params[block]
    si = core.block_steps[block]
    ctx.groups = 1
    vals = []
    for r, li in enumerate(np.asarray(local).tolist()):
        t = int(np.searchsorted(bp.offsets[1:], li, side="right"))
        with nudged(bp.params[t], li - int(bp.offsets[t]), h[r]):
            ctx.reset()
            out = core.chain.run(feats.state, si)[0]
            vals.append(oracle._loss(out, 1)[0])
    return torch.stack(vals)


def full_coordinate_losses(oracle, params, c: np.ndarray, step) -> np.ndarray:
    """Losses at ``params + step * e_i`` by full forwards, never copying the whole vector.

    Coordinates are grouped by parameter tensor. A tensor small enough for several copies
    in the memory budget is overridden per perturbation through ``torch.func.functional_call``
    and the forwards are vectorized with ``vmap``; a large one is perturbed in place, one
    forward per coordinate (the textbook loop), and restored exactly.
    """
    core = oracle._core
    model = oracle.model
    out = np.empty(len(c))
    starts = np.array([i.slice.start for i in core.info])
    owner = np.searchsorted(starts, c, side="right") - 1
    names = parameter_names(model)
    B = oracle._x.shape[0]
    budget = oracle._budget or (1024 * 2**20 if oracle.device.type == "cuda" else 16 * 2**20)
    per = 3 * max(oracle._probe()) * B  # a first probe runs a forward: before the parameters are loaded
    oracle._load(params)
    vmapped = np.zeros(len(c), dtype=bool)

    def loop(rows, p, locs):  # one forward per coordinate, perturbed in place and restored exactly
        for r, j in zip(rows.tolist(), locs.tolist()):
            with nudged(p, j, step):
                ctx.reset()
                versions = [q._version for q in core.params]
                out[r] = float(oracle._loss(model(oracle._x), 1)[0])
                wrote = any(q._version != v for q, v in zip(core.params, versions))
            if wrote:  # the forward wrote into the parameters (nn.Embedding's max_norm renormalizes
                oracle._load(params)  # the rows it looks up): the next one starts from ``params`` again
            vmapped[r] = False

    with torch.no_grad(), norm_context(model) as ctx:
        for t in np.unique(owner).tolist():
            sel = np.flatnonzero(owner == t)
            p = core.params[t]
            loc = c[sel] - int(starts[t])
            chunk = max(1, budget // max(1, per + p.numel() * p.element_size()))
            lo, failed = 0, None
            if core.vmap_ok and chunk >= 4 and len(sel) > 1 and vmap_safe(model):
                batched = False
                try:
                    for lo in range(0, len(sel), chunk):
                        try:
                            # each chunk starts from the buffers the query found: a train-mode forward that
                            # writes and reads them (spectral norm's vectors, a running scale) ran before
                            # (the previous chunk, ``_reaches``'s in-place forward)
                            ctx.reset()
                            vals = _vmapped_tensor(oracle, names[id(p)], p, loc[lo:lo + chunk], step, batched)
                        except RuntimeError:
                            if batched:
                                raise
                            # an in-place add of a perturbed tensor into one the perturbation does not
                            # reach (torchvision's ``out += identity`` after a perturbed downsample):
                            # with the input batched too, every activation is a batched tensor
                            batched = True
                            ctx.reset()
                            vals = _vmapped_tensor(oracle, names[id(p)], p, loc[lo:lo + chunk], step, True)
                        if t not in core.vmap_reached:
                            if not _reaches(oracle, ctx, [names[id(p)]], [p], batched):
                                _vmap_off(oracle, f"parameter {names[id(p)][0]!r}", names[id(p)][0])
                                break  # this tensor, from this chunk on, one forward at a time
                            core.vmap_reached.add(t)
                        out[sel[lo:lo + chunk]] = vals
                        vmapped[sel[lo:lo + chunk]] = True
                    else:
                        continue
                except Exception as exc:  # an op vmap cannot batch, or the forward's own error: the loop tells
                    failed = exc
            loop(sel[lo:], p, loc[lo:])
            if failed is not None:  # the loop ran where vmap failed (an error of the forward's own raised there)
                core.vmap_ok = False
                warn(vmap_failed_text(failed, "full forwards run one at a time", model), RuntimeWarning,
                     stacklevel=user_stacklevel())
        if not core.vmap_ok and vmapped.any():
            # vmap turned off during this call: the losses it gave before are computed again as every
            # later call computes them, one forward each, so that this call equals the next bit for bit
            # (vmap's batched kernels and single forwards round differently on some CPUs: oneDNN on AVX2)
            for t in np.unique(owner[vmapped]).tolist():
                rows = np.flatnonzero(vmapped & (owner == t))
                loop(rows, core.params[t], c[rows] - int(starts[t]))
    return out


def _reaches(oracle, ctx, names: list, params: list, batched_input: bool = False) -> bool:
    """Whether the vectorized full forward (``params`` put in by ``names``, torch.func) gives the
    loss of the same move made in place: every element of each tensor moved at once, by
    ``_CHECK_STEP`` times a fixed normal draw, on two samples of the batch. A forward that reads
    a copy of one (``self.w = self.fc.weight.detach()``, a list or an object holding it) sees
    the move only in place; the move is large, so the difference stands out in float32 too.
    The parameters are put back exactly."""
    from torch.func import functional_call, vmap

    probe = _finite_probe(oracle) or oracle
    x, moved = probe._x, _check_moves(params)

    def run(ws, xs):
        return functional_call(oracle.model, {n: w for ns, w in zip(names, ws) for n in ns}, (xs,), strict=False,
                               tie_weights=False)

    xs, dim = (x.unsqueeze(0), 0) if batched_input else (x, None)
    # both losses from one seed: a loss_fn drawing its own noise (a Monte Carlo term, already
    # warned about as not repeatable) gave two draws, read as a copy; torch's generators kept
    with rng_kept():
        torch.manual_seed(0)
        ctx.reset()
        got = float(probe._loss(vmap(run, in_dims=(0, dim), randomness="error")([w.unsqueeze(0) for w in moved], xs)[0],
                                1)[0])
        with _holding(params, moved):
            torch.manual_seed(0)
            ctx.reset()
            want = float(probe._loss(oracle.model(x), 1)[0])
    return _close(got, want, max(abs(got), abs(want)), oracle.dtype)


def vmap_failed_text(exc, then: str, model: nn.Module | None = None) -> str:
    """The warning that vectorized full forwards failed with ``exc`` and what runs instead: the
    forward of ``model``'s module it was raised in (and the line), the cost, and the fix for the
    causes torch names. A forward that draws random numbers is said so, without torch's advice to
    pass vmap a randomness flag: the oracle calls vmap, and one forward a query draws as model(x) does."""
    if "randomness" in str(exc) and "vmap" in str(exc):
        return ("TorchOracle: torch.func.vmap failed (the forward draws random numbers, which vmap does not batch "
                f"as model(x) draws them: nothing to set for it); {then}, with the losses model(x) gives")
    where = _failed_at(model, exc) if model is not None else None
    at = ""
    if where:
        qual, line, src = where
        at = (f" in the forward of {qual!r} ({type(model.get_submodule(qual)).__name__})" if qual
              else f" in {type(model).__name__}.forward")
        at += f" at {line}" + (f" ({src})" if src else "") if line else ""
    text = str(exc)
    if "escaped" in text:
        fix = ("a tensor one forward keeps on the module (self.prev = h) and the next reads escapes vmap: keep no "
               "such state, or make it a buffer updated only in train mode and query the model in eval mode")
    elif "broadcast shape" in text or "in-place" in text:
        fix = ("an in-place write of a value computed from the parameters into a tensor without the perturbations' "
               "dimension cannot be batched: for a buffer (a running statistic), query the model in eval mode with "
               "the update under `if self.training:`; for a tensor made in forward, assign the result (h = h + ... "
               "rather than h += ...)")
    elif ".item()" in text or "data-dependent" in text or "control flow" in text:
        fix = ("a tensor's value read in Python (.item(), float(t), an if on a tensor) cannot be batched: compute it "
               "with tensor ops (torch.where, clamp) instead")
    else:
        fix = "an op vmap cannot batch: write that line with plain tensor ops"
    return (f"TorchOracle: torch.func.vmap failed{at} ({type(exc).__name__}: {text[:300]}); {then} (one forward per "
            f"perturbation, where one vectorized call ran them all); {fix}, to vectorize them again")


def _vmap_off(oracle, what: str, name: str | None = None) -> None:
    """Turn vectorized full forwards off, saying why: the forward reads ``what`` (a parameter,
    named ``name`` in the model where known) through a copy they do not reach, and the fix."""
    oracle._core.vmap_ok = False
    warn(f"TorchOracle: the forward reads {what} through a copy that vectorized full forwards do not reach "
         "(they put each perturbed parameter in by its name, torch.func.functional_call; a plain attribute, "
         "list or object holding it, or a detached view, keeps the old values there): full forwards run one "
         "at a time, perturbed in place; read it in the forward as a module attribute "
         f"({'self.' + name if name else 'self.<its name>'}), not through such a copy, to vectorize them again",
         RuntimeWarning, stacklevel=user_stacklevel())


def parameter_names(model: nn.Module) -> dict:
    """``id(parameter) -> every name it has in a distinct module``, for ``functional_call``.

    A weight tied between two modules has two names, and both must be given the perturbed
    value; a module listed twice (one Linear twice in a Sequential) is one module, named
    once. ``functional_call(..., tie_weights=True)`` would find the tied names itself, but in
    torch 2.13 it leaves batched tensors in a module listed twice, so the names are given
    explicitly, with ``tie_weights=False``."""
    names = {}
    for prefix, mod in model.named_modules():
        # remove_duplicate=False: one Parameter listed twice in a module (nn.ParameterList([w, w])) has both names
        for n, p in mod.named_parameters(recurse=False, remove_duplicate=False):
            names.setdefault(id(p), []).append(f"{prefix}.{n}" if prefix else n)
    return names


def _vmapped_tensor(oracle, names: list, p, loc, step, batched_input: bool = False) -> np.ndarray:
    """Losses with ``p``'s elements ``loc`` moved by ``step``, one vmapped forward for all;
    ``batched_input``: the input is batched too (a view, no copy), so every activation is."""
    from torch.func import functional_call, vmap

    k = len(loc)
    model, x = oracle.model, oracle._x
    W = p.detach().reshape(1, -1).repeat(k, 1)
    ar = torch.arange(k, device=W.device)
    ii = torch.as_tensor(np.asarray(loc), device=W.device)
    W[ar, ii] = W[ar, ii] + step

    def run(w, xs):
        v = w.view(p.shape)
        return functional_call(model, {name: v for name in names}, (xs,), strict=False, tie_weights=False)

    xs, dim = (x.expand((k,) + tuple(x.shape)), 0) if batched_input else (x, None)
    outs = vmap(run, in_dims=(0, dim), randomness="error")(W, xs)  # (k, B, ...)
    vals = oracle._loss(outs.reshape((k * x.shape[0],) + tuple(outs.shape[2:])), k)
    return vals.double().cpu().numpy()
