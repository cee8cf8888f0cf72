"""Exact or refuse, on randomness: whether a forward draws random numbers that change its output
(a seed of its own, other seeds, two samples that differ), and the finite-probe pairs."""

from __future__ import annotations

import copy
import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from zoracle._errors import user_stacklevel, warn

from ._torch_chain import norm_context
from ._torch_hooks import _check_moves, _holding, name_list
from ._torch_layout import to_torch
from ._torch_reference import _close, reference_loss, retire_split, rng_kept
from ._torch_watch import _MODULE_OWN, _modes, _unwatch_changed


#: other seeds a forward that draws random numbers runs with before it counts as random (a draw
#: that cannot change the output: a LayerDrop or DropPath of probability 0, noise times 0)
_RNG_SEEDS = 16


def _not_repeatable(oracle) -> bool:
    """Warn (retiring the split) when the loss in the model's current modes is not a function of
    the parameters and the batch: two forwards whose outputs differ beyond round-off (GPU atomics
    reorder sums: not noise a difference would measure), or a forward that draws random numbers
    and gives another output under another seed (a draw once a call, batch-wise stochastic
    depth, may come out the same twice); then the same of ``loss_fn`` (a Monte Carlo term), on
    two samples. torch's generators are left as they were."""
    core, model, x = oracle._core, oracle.model, oracle._x
    what, held = "", None
    with torch.no_grad(), norm_context(model, loss_fn=oracle.loss_fn) as ctx, rng_kept():
        kept = [vars(m).copy() for m in model.modules()]  # (held: an id freed in between is not reused)
        before, key = _plain_attributes(model), _modes(model)
        version = None if x.is_inference() else x._version
        out = model(x)
        # a forward that writes into its input (x -= mean; in-place modules run out of place here)
        wrote_input = version is not None and x._version != version
        ctx.reset()  # the second forward starts from the buffers the first found, as every query does
        again, drew = _drawing(oracle, lambda: model(x))
        ctx.reset()
        after = _plain_attributes(model)
        del kept
        wrote = [f"{name or type(model).__name__}.{a}" for name, a in sorted(set(before) | set(after))
                 if before.get((name, a), _GONE) != after.get((name, a), _GONE)]
        if not (torch.is_tensor(out) and torch.is_tensor(again)):
            return False
        if out.shape != again.shape or _differ(out, again) or (
                drew and _seeds_change(_two_or_all(model, x, ctx), ctx)):
            what = "model(x)"
        else:
            # a mean loss, or one coupling the samples (either may run on the whole batch only: every
            # query calls it on a whole batch), on all of them
            n = out.shape[0] if core.scalar_loss else 2
            y2 = None if oracle._y is None else oracle._y[:n]

            def loss():
                return to_torch(oracle.loss_fn(out[:n], y2), out.device)

            first = loss()
            second, drew = _drawing(oracle, loss)
            if first.shape != second.shape or _differ(first, second) or (drew and _seeds_change(loss, ctx)):
                what = "loss_fn(model(x), y)"
        held = None if what else _held_state(oracle, out, ctx)
    if held is not None:
        why = (f"model(x) is not repeatable: it keeps state between calls outside its parameters and buffers "
               f"({held}): after one forward at other parameters, model(x) at the same parameters and batch gives "
               "another output, so every query moves that state and finite differences of the loss measure the "
               "drift (repeated plain calls differ), not the gradient; make the state a buffer (register_buffer: "
               "the oracle puts buffers back after its queries), update it only in train mode and query the model "
               "in eval mode, or remove the hook")
    elif not what:
        return False
    elif wrote_input and what == "model(x)":
        why = ("model(x) is not repeatable: its forward writes into its input x in place (an in-place operation on "
               "the batch it is given, such as x -= mean, x.mul_(s) or out += x where out is x; nn.ReLU(inplace=True) "
               "and the other in-place modules the oracle runs out of place), so every forward runs on the batch the "
               "one before wrote, and the oracle's queries, which all read the one bound batch, measure that drift, "
               "not the gradient; write it out of place (x = x - mean)")
    elif what == "model(x)" and wrote and not drew:  # no random draw: the attributes it writes are the state
        # written by every forward: not a setting. Keyed, they changed the model's key at every call, and a
        # query checked again (running this check's forwards, which move that state) or not as a freed id
        # was reused or not: the estimates of one such run differed from another's
        _unwatch_changed(model, key)
        why = (f"model(x) is not repeatable: two evaluations at the same parameters and batch differ, and its "
               f"forward writes the attributes {name_list(wrote)} (state kept between calls outside its parameters "
               "and buffers, if the next call reads them; if not, a random draw outside torch's generators, NumPy's "
               "or Python's random), so finite differences of the loss measure that drift, not the gradient; make "
               "the state a buffer (register_buffer: the oracle puts buffers back after its queries), update it only "
               "in train mode and query the model in eval mode, or do not read it back")
    else:
        why = (f"{what} is not repeatable: two evaluations at the same parameters and batch differ (a random op such "
               "as torch.randn_like: the oracle switches nn.Dropout off, not others; or state the forward changes), "
               "so finite differences of the loss measure that noise, not the gradient; make it deterministic in the "
               "mode you query the model in (draw the noise under `if self.training:` and call model.eval()), or fix "
               "its random numbers per call")
    # once per oracle and cause: a forward that writes what it reads changes the model's key at
    # every call, so each query checks again (and comes to the same verdict)
    told = core.__dict__.setdefault("told_unrepeatable", set())
    if core.blocks:
        retire_split(oracle, why)
    elif why not in told:
        warn(f"TorchOracle: {why}", RuntimeWarning, stacklevel=user_stacklevel())
    told.add(why)
    return True


def _held_state(oracle, out, ctx):
    """What keeps state between forwards outside the model's parameters and buffers (a running
    average a forward hook keeps in its closure, a plain attribute the forward updates and reads),
    in words, or None: ``model(x)`` again after one forward at moved parameters must give ``out``
    (a forward of two samples and one of the bound batch, once per oracle and set of train/eval
    modes; state that
    depends on the batch and parameters only settles on one repeated call, which the check of
    two calls in a row cannot see). Buffers are put back after each forward, as every query does."""
    core, model, x = oracle._core, oracle.model, oracle._x
    kept = [vars(m).copy() for m in model.modules()]  # (held: a value freed in between lends its id to the next)
    before, key = _plain_attributes(model), _modes(model)
    try:
        with _holding(core.params, _check_moves(core.params)):
            _two_or_all(model, x, ctx)()  # (two samples move such state as the whole batch does)
            ctx.reset()
        again = model(x)
        ctx.reset()
    except Exception:  # a forward that fails at moved parameters (a NaN check): no verdict here
        return None
    if not torch.is_tensor(again) or (again.shape == out.shape and not _differ(out, again)):
        return None
    _unwatch_changed(model, key)  # written by every forward: not a setting (the split's key would change at each)
    after = _plain_attributes(model)
    del kept
    named = [f"{name or type(model).__name__}.{a}" for name, a in sorted(set(before) | set(after))
             if before.get((name, a), _GONE) != after.get((name, a), _GONE)]
    hooks = [f"{getattr(fn, '__name__', type(fn).__name__)}() on {name or type(model).__name__!r}"
             for name, m in model.named_modules()
             for fn in [*m._forward_pre_hooks.values(), *m._forward_hooks.values()]]
    parts = ([f"the attributes {name_list(named)}, which its forward writes"] if named else []) + (
        [f"the forward hooks {', '.join(hooks[:3])}" + (f" and {len(hooks) - 3} more" if len(hooks) > 3 else "")]
        if hooks else [])
    return " or ".join(parts) or "a closure, a global or an object its forward updates"


_GONE = object()


def _plain_attributes(model) -> dict:
    """``(module name, attribute) -> a token of its value`` for every module's plain attributes (what
    :func:`_held_state` names when a forward changed one): a tensor by identity and version, a
    number or string by value, anything else by identity."""
    got = {}
    for name, m in model.named_modules():
        for a, v in m.__dict__.items():
            if a in _MODULE_OWN or a == "training":
                continue
            if torch.is_tensor(v):
                got[(name, a)] = (id(v), None if v.is_inference() else v._version)
            elif isinstance(v, (int, float, str, bool, type(None))):
                got[(name, a)] = ("value", v)
            else:
                got[(name, a)] = id(v)
    return got


def _drawing(oracle, fn) -> tuple:
    """``fn()`` and whether it drew from torch's random generators."""
    rng = _rng_states(oracle.device)
    got = fn()
    return got, not _same_rng(_rng_states(oracle.device), rng)


def _two_or_all(model, x, ctx):
    """``model`` on two samples of ``x`` for :func:`_seeds_change`; on all of them where the forward
    runs on the whole batch only (weights captured for it, as a loss may be: the split's own check
    retires the split there, and the two-sample seed check crashed the first query)."""
    rows = [x[:2]]

    def run():
        try:
            return model(rows[0])
        except RuntimeError:
            if rows[0] is x:
                raise
            ctx.reset()
            rows[0] = x
            return model(x)
    return run


def _seeds_change(fn, ctx) -> bool:
    """Whether ``fn()`` (two samples) gives another result under another seed (``_RNG_SEEDS`` tried),
    or with its Bernoulli and uniform draws at the two ends of what they can draw (a rare draw that
    changes the output, a DropPath of probability 0.01, came out the same under all the seeds for
    each of six small pre-norm blocks; a draw that cannot change it, a LayerDrop of probability 0,
    still does not)."""
    torch.manual_seed(0)
    first = fn()
    ctx.reset()
    for seed in range(1, _RNG_SEEDS + 1):
        torch.manual_seed(seed)
        other = fn()
        ctx.reset()
        if other.shape != first.shape or _differ(first, other):
            return True
    ends = []
    for high in (False, True):
        try:
            with _DrawEnds(high):
                ends.append(fn())
        except Exception:  # a forward that cannot run under a dispatch mode: the seeds' verdict stands
            return False
        finally:
            ctx.reset()
    return ends[0].shape != ends[1].shape or _differ(ends[0], ends[1])


class _DrawEnds(TorchDispatchMode):
    """Bernoulli draws all 0 (``high=False``) or all 1 where their probability allows it, uniform ones
    (``torch.rand``, ``uniform_``) at the low or the high end of their range; other ops as they are."""

    def __init__(self, high: bool):
        super().__init__()
        self.high = high

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # the draw itself: its shape, dtype and device (an in-place op's target)
        name = func.overloadpacket.__name__
        if name in ("bernoulli", "bernoulli_") and out.is_floating_point():
            p = args[1] if len(args) > 1 else kwargs.get("p", args[0] if name == "bernoulli" else 0.5)
            p = torch.as_tensor(p, dtype=out.dtype, device=out.device).expand_as(out)
            out.copy_(p > 0 if self.high else p >= 1)
        elif name in ("rand", "rand_like", "uniform_") and out.is_floating_point():
            lo = float(args[1]) if name == "uniform_" and len(args) > 1 else float(kwargs.get("from", 0.0))
            hi = float(args[2]) if name == "uniform_" and len(args) > 2 else float(kwargs.get("to", 1.0))
            out.fill_(hi - (hi - lo) * torch.finfo(out.dtype).eps if self.high else lo)  # (the range excludes hi)
        return out


def _rng_states(device) -> tuple:
    """torch's random generators a forward on ``device`` draws from (the CPU's, and the GPU's)."""
    cpu = torch.random.get_rng_state()
    if device.type == "cuda":
        return cpu, torch.cuda.get_rng_state(device)
    return (cpu,)


def _same_rng(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` and ``b`` differ beyond round-off: by more than a relative 1e-9 (float64) or 2.4e-4
    (narrower floats) of the median magnitude of ``a``'s nonzero finite entries, or a NaN or
    infinity on one side only. NaN where both have NaN and equal infinities are equal."""
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    if not a.is_floating_point():
        return not torch.equal(a, b)
    same = (a == b) | (a.isnan() & b.isnan())
    if bool(same.all()):
        return False
    rel = 1e-9 if a.dtype == torch.float64 else 2000 * torch.finfo(torch.float32).eps
    a64, b64 = a.double(), b.double()
    finite = a64[torch.isfinite(a64)].abs()
    finite = finite[finite > 0]  # ReLU outputs' zeros, a masked -1e9 logit: neither sets the scale
    scale = float(finite.median()) if finite.numel() else 1.0
    gap = (a64 - b64).abs().masked_fill(same, 0.0).nan_to_num(nan=float("inf"))
    return bool((gap > rel * scale).any())


def _check_full_forward(oracle) -> None:
    """Warn when the oracle's full forward differs from ``model(x)``: the oracle runs in-place
    activations out of place (its cached activations must not be overwritten), which changes a
    forward that reads a tensor after an in-place activation overwrote it (``out = conv(relu_(x))
    + x``). Checked once, on two samples, for a model with in-place modules."""
    model = oracle.model
    if not any(getattr(m, "inplace", False) is True for m in model.modules()):
        return
    probe = _two_samples(oracle)
    x, y = probe._x, probe._y
    try:
        want = reference_loss(oracle, x.clone(), y)
        with torch.no_grad(), norm_context(model, loss_fn=oracle.loss_fn):
            out = model(x.clone())
            got = float(probe._scalar(out, y)) if oracle._core.scalar_loss else float(probe._loss(out, 1)[0])
    except Exception:  # a forward that needs more samples (train-mode BatchNorm on one): no verdict
        return
    if not _close(got, want, want, oracle.dtype):
        warn(f"TorchOracle: {type(model).__name__} gives loss {want:.10g}, but {got:.10g} with its in-place "
             "activations run out of place, as the oracle runs them: its forward reads a tensor that an "
             "in-place activation overwrote. The oracle's losses are those of the out-of-place forward; "
             "make that activation out of place (inplace=False) for model(x) to agree",
             RuntimeWarning, stacklevel=user_stacklevel())


def _two_samples(oracle, start: int = 0):
    """A copy of the bound ``oracle`` on (at most) two samples of its batch from ``start``, caches
    empty."""
    probe = copy.copy(oracle)
    n = min(2, oracle._x.shape[0] - start)
    probe._x = oracle._x[start:start + n].clone()
    probe._y = None if oracle._y is None else oracle._y[start:start + n].clone()
    probe._base_rows = probe._ycache = probe._state_cache = None
    probe._aligned_from = None  # its two samples are its own (a write into the caller's batch must not refill them)
    return probe


#: pairs of samples tried for one whose loss is finite (a NaN in a sample, targets ignored)
_PROBE_PAIRS = 8


def _finite_probe(oracle):
    """The first of :func:`_two_samples`'s pairs (from the start of the batch, ``_PROBE_PAIRS`` at
    most) whose ``model(x)`` loss is finite, or None: a check that compares two NaN losses (a NaN
    in the first sample, a mean loss over targets all ignored) can tell nothing."""
    for start in range(0, min(oracle._x.shape[0], 2 * _PROBE_PAIRS), 2):
        probe = _two_samples(oracle, start)
        try:
            if math.isfinite(reference_loss(oracle, probe._x, probe._y)):
                return probe
        except Exception:  # a forward that fails here fails in the check too, which names it
            return probe
    return None
