"""Optimizers as pure ``init`` / ``update`` pairs with NamedTuple state.

``opt = zo.sgd(0.1, momentum=0.9)``; ``state = opt.init(params)``; then per step
``params, state = opt.update(grad, state, params)``. ``update`` never modifies its
inputs; the state is a NamedTuple of a step counter and arrays, so a checkpoint can store
it field by field without pickle. ``lr`` is a float or a schedule ``step -> lr``;
``update(..., lr=value)`` overrides it for one step (``zoracle.train`` does this when
given its own ``schedule``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple

import numpy as np

from ._backend import is_cupy, namespace, same_values, to_numpy
from ._errors import ArgumentError, check_flag, config_hint, finite_real, masked_entries, short_repr
from ._schedules import FloatOrSchedule, as_schedule, check_value, describe_schedule, schedule_value

__all__ = ["Optimizer", "SGDState", "AdamState", "SignState", "sgd", "adam", "sign_sgd"]


class Optimizer(NamedTuple):
    """An optimizer: ``init(params) -> state``, ``update(grad, state, params, lr=None) -> (params, state)``.

    ``state`` is a NamedTuple with an int field ``count``: 0 from ``init``, one more after each
    ``update`` (:func:`zoracle.train` reads it for the learning rate and checkpoints it; its other
    fields are saved as numeric arrays). ``train`` refuses a state without it before the first
    query, and a first ``update`` that does not add one to it; a later one is warned about once
    (the run goes on, the optimizer's own schedule lagging the steps).

    Attributes
    ----------
    init, update : callable
        The pure pair.
    lr : float or schedule
        The learning rate the optimizer was built with.
    name : str
        Short name, e.g. ``"sgd"``.
    config : str
        Every hyperparameter as text (checkpoints compare it to catch mismatched settings).
    weight_decay : float
        The weight decay it applies (0 for none).
    """

    init: Callable
    update: Callable
    lr: Any
    name: str
    config: str
    weight_decay: float = 0.0

    def __repr__(self) -> str:
        # the settings, as the call that built it: the tuple's repr showed ``init`` and ``update``
        # as <function sgd.<locals>.init at 0x7f...>, an address that changes from run to run
        if isinstance(self.config, str) and self.config:
            return self.config
        # an own optimizer's config that is no text (None, a dict): repr must return a str
        return f"Optimizer(name={self.name!r}, lr={self.lr!r}, config={self.config!r})"

    def __eq__(self, other):
        # by value, as the estimators: two ``adam(1e-3)`` (or one and its pickled copy) hold closures
        # of their own, so the tuple's == made equal settings unequal, and a sweep keyed by optimizers
        # could not be looked up with the call that made one. Equal where made by the same call and
        # unchanged since (else, as before, where their functions are the same objects).
        if not isinstance(other, Optimizer):
            return NotImplemented
        if type(self) is not type(other) or tuple(self)[2:] != tuple(other)[2:]:
            return False
        if self.init is other.init and self.update is other.update:
            return True
        made, made_other = getattr(self.update, "_made_by", None), getattr(other.update, "_made_by", None)
        return (made is not None and made_other is not None and made[0] is made_other[0]
                and getattr(self.init, "__code__", None) is getattr(other.init, "__code__", False)
                and made[1].keys() == made_other[1].keys()
                and all(_same_argument(made[1][k], made_other[1][k]) for k in made[1]))

    def __ne__(self, other):
        same = self.__eq__(other)
        return same if same is NotImplemented else not same

    def __hash__(self):  # (equal optimizers share name and config; a config that is no text is left out)
        return hash((type(self).__name__, self.name, self.config if isinstance(self.config, str) else None))

    def __reduce__(self):
        # sgd, adam, sign_sgd and scaled return closures, which pickle cannot save (pickle.dump, joblib.dump,
        # a spawn worker's arguments): such an optimizer travels as the call that made it, where
        # that call gives the same fields (not after ``_replace``); any other one as its fields
        made = getattr(self.update, "_made_by", None)
        if made is not None:
            again = _remade(*made)
            if getattr(again.init, "__code__", None) is getattr(self.init, "__code__", False) \
                    and tuple(again)[2:] == tuple(self)[2:]:
                return (_remade, made if type(self) is Optimizer else (*made, type(self)))  # (a subclass stays one)
        return (_optimizer_from, (type(self), tuple(self)))

    # copy and deepcopy go by __reduce_ex__ too: without these they rebuilt sgd/adam's closures, and
    # the copy was no longer == the optimizer (a NamedTuple's copy shares its functions, as before)
    def __copy__(self):
        return _optimizer_from(type(self), tuple(self))

    def __deepcopy__(self, memo):
        import copy

        return _optimizer_from(type(self), copy.deepcopy(tuple(self), memo))


def _same_argument(a, b) -> bool:
    """Whether two arguments of the calls that made two optimizers are the same (scaled's optimizer
    and scale array among them)."""
    if a is b:
        return True
    if isinstance(a, Optimizer) or isinstance(b, Optimizer):
        return a == b
    try:
        return same_values(a, b)
    except Exception:  # (an argument that cannot be compared is no proof of equal settings)
        return False


def _remade(factory, kwargs, cls=None):
    opt = factory(**kwargs)
    return opt if cls is None else cls(*opt)


def _optimizer_from(cls, fields):
    return cls(*fields)


def _remakeable(opt: Optimizer, factory, **kwargs) -> Optimizer:
    """``opt``, marked as made by ``factory(**kwargs)`` (how :meth:`Optimizer.__reduce__` pickles it)."""
    opt.update._made_by = (factory, kwargs)  # (update: scaled shares its optimizer's init)
    return opt


class SGDState(NamedTuple):
    """:func:`sgd`'s state: the step ``count`` and the ``momentum`` (velocity) buffer, empty
    without momentum."""

    count: int
    momentum: Any  # velocity buffer (an empty array when momentum == 0: no d-sized zeros to hold and checkpoint)


class AdamState(NamedTuple):
    """:func:`adam`'s state: the step ``count`` and the first and second moments ``mu`` and ``nu``."""

    count: int
    mu: Any  # first moment
    nu: Any  # second moment


class SignState(NamedTuple):
    """:func:`sign_sgd`'s state: the step ``count`` alone."""

    count: int


def _number(name, value, lo=0.0, hi=math.inf, hi_open=False):
    if not finite_real(value):
        hint = config_hint(name, value, "number", lambda v: lo <= v <= hi and not (hi_open and v == hi))
        raise ArgumentError(f"`{name}` must be a finite number, got {short_repr(value)}{hint}")
    if value < lo or value > hi or (hi_open and value == hi):
        bound = f"in [{lo}, {hi})" if hi_open else f">= {lo}"
        raise ArgumentError(f"`{name}` must be {bound}, got {value!r}")
    return float(value)


def _check_params(params, where: str) -> None:
    kind = getattr(getattr(params, "dtype", None), "kind", None)
    # a masked entry never moved (sgd, adam), or lost its mask (sign_sgd); one with nothing masked (netCDF4's
    # arrays without fill values) is updated as its plain array, as before: no refusal
    if isinstance(params, np.ma.MaskedArray) and np.ma.is_masked(params):
        raise ArgumentError(f"`params` passed to {where} is a numpy.MaskedArray{masked_entries(params)}; the "
                            "optimizers update plain arrays: pass np.ma.getdata(params) (every value, masked or "
                            "not) or params.filled(value)")
    # integers and booleans would round every step away; complex has no order for sign or Adam
    if kind is None or kind in "biuc" or getattr(params, "ndim", None) != 1:
        got = f"{params.dtype} array of shape {params.shape}" if kind is not None else type(params).__name__
        if kind is None:  # (a list has no astype)
            fix = "use np.asarray(params, dtype=np.float64)"
        elif kind == "c":
            fix = ("complex numbers have no order for a sign or Adam's steps: update the real and imaginary parts "
                   "as real parameters, np.concatenate([params.real, params.imag])")
        elif kind == "f":  # (np.matrix stays 2-D through its own ravel())
            fix = "use np.asarray(params).ravel()" if isinstance(params, np.matrix) else "use params.ravel()"
        else:
            fix = "an integer array would round every step away: use params.astype(np.float64)"
        raise ArgumentError(f"`params` passed to {where} must be a 1-D floating-point array, got {got}; {fix}")
    if params.dtype.itemsize < 4:  # float16: Adam's eps (1e-8) rounds to 0, so an unmeasured coordinate is 0 / 0
        raise ArgumentError(f"`params` passed to {where} have dtype {params.dtype}; the optimizers update float32 or "
                            "float64 arrays (as train does): use params.astype(np.float32)")


def _check_update(name: str, grad, state, params, state_type, signs: bool = False, empty_ok=()) -> None:
    """What ``update(grad, state, params)`` needs, checked (a user may call it outside train):
    float params, a gradient of their shape (a (d, 1) one broadcast them to (d, d)), and the
    state this optimizer's ``init`` built for them (another size broadcast silently). ``signs``:
    the optimizer uses the gradient's signs only, and an infinite entry has one (NaN has none).
    ``empty_ok``: state fields that may be empty arrays (a buffer this optimizer does not use)."""
    _check_params(params, f"{name}.update()")
    if not isinstance(state, state_type):
        raise ArgumentError(f"`state` passed to {name}.update() must be the {state_type.__name__} that {name}'s "
                            f"init(params) returns, got {type(state).__name__}")
    shape = getattr(grad, "shape", None)
    if shape is None:
        shape = np.shape(grad)  # a Python number or list
    if tuple(shape) not in ((), tuple(params.shape)):  # a scalar broadcasts; a (d, 1) gradient would too, wrongly
        raise ArgumentError(f"`grad` passed to {name}.update() has shape {tuple(shape)}, `params` "
                            f"{tuple(params.shape)}: they must match")
    xp = namespace(params)
    scalar = isinstance(grad, numbers.Real) and not isinstance(grad, bool)
    if not scalar and not (namespace(grad) is xp and isinstance(grad, (xp.ndarray, np.generic))):
        # a torch tensor or a list failed inside the arithmetic (a TypeError about concatenation), or not at all
        # (np.asarray keeps a NumPy gradient on the host beside CuPy params, and CuPy refuses it for a CuPy one)
        fix = ("cupy.asarray(grad, dtype=params.dtype)" if xp is not np else "cupy.asnumpy(grad)" if is_cupy(grad)
               else "np.asarray(grad, dtype=params.dtype) (a torch tensor: grad.detach().cpu().numpy())")
        raise ArgumentError(f"`grad` passed to {name}.update() must be an array like `params` "
                            f"({type(params).__module__.split('.')[0]}.{type(params).__name__}), got "
                            f"{type(grad).__module__.split('.')[0]}.{type(grad).__name__}; convert it: {fix}")
    if getattr(getattr(grad, "dtype", None), "kind", "f") not in "iuf":
        raise ArgumentError(f"`grad` passed to {name}.update() must hold real numbers, got dtype {grad.dtype}")
    # one pass over the gradient (isnan's result negated was a second one, and a second temporary)
    if bool(xp.any(xp.isnan(grad))) if signs else not bool(xp.all(xp.isfinite(grad))):
        # one NaN made its parameter (and Adam's moments) NaN for good
        ok = xp.logical_not(xp.isnan(grad)) if signs else xp.isfinite(grad)
        bad = int(np.flatnonzero(~np.ravel(to_numpy(ok)))[0])
        what = "free of NaN (it has no sign)" if signs else "finite"
        raise ArgumentError(f"`grad` passed to {name}.update() must be {what}, got {np.ravel(to_numpy(grad))[bad]} at "
                            f"index {bad}: the step would make that parameter NaN or infinite (and poison the "
                            "optimizer's state); fix the gradient before the update")
    for field, value in state._asdict().items():
        if field != "count" and getattr(value, "shape", params.shape) != params.shape and not (
                field in empty_ok and getattr(value, "shape", None) == (0,)):
            raise ArgumentError(f"`state` passed to {name}.update() was built for params of shape {value.shape} "
                                f"(its {field!r}), these have {params.shape}: call {name}'s init(params) for them")


def _lr_at(schedule, state_count, lr):
    if lr is None:
        return schedule_value(schedule, int(state_count), "lr")
    return check_value(lr, "`lr` passed to update()")


def _times(params, step, d, own: bool):
    """``step * d`` (``step`` in params' dtype), written into ``d`` where it is a temporary of the
    caller's (``own``) of params' dtype: the same products, one d-sized array fewer."""
    with np.errstate(over="ignore"):  # a step past the dtype's range is inf: the divergence check names the lr
        s = params.dtype.type(step)  # (numpy's "overflow encountered in cast" came first, naming this line)
    xp = namespace(params)
    if own and isinstance(d, xp.ndarray) and d.dtype == params.dtype:
        return xp.multiply(d, s, out=d)
    return s * d


def _sign_in_place(g):
    """``sign(g)`` written into ``g``, a d-sized temporary of the caller's. NumPy's ``np.sign(g,
    out=g)`` runs without its vectorized loop (9x slower than into another buffer: 5.4 against
    0.6 ms at d=1e6, NumPy 2.4), so a NumPy array goes through a small scratch buffer, a chunk at
    a time: the same values, and no second d-sized array."""
    if not (isinstance(g, np.ndarray) and g.ndim == 1):
        return namespace(g).sign(g, out=g)
    buf = np.empty(max(1, min(g.size, 1 << 16)), dtype=g.dtype)
    for i in range(0, g.size, buf.size):
        part = g[i:i + buf.size]
        part[...] = np.sign(part, out=buf[:part.size])
    return g


def _minus(params, t):
    """``params - t`` written into ``t``, a d-sized temporary of the caller's (:func:`_times`'s):
    the same operation and dtype as ``params - t``, one d-sized array fewer at the update's peak."""
    xp = namespace(params)
    if isinstance(t, xp.ndarray) and t.shape == params.shape and t.dtype == xp.result_type(params, t):
        return xp.subtract(params, t, out=t)
    return params - t  # a scalar gradient, or a dtype that params - t would change


def sgd(lr: FloatOrSchedule = 0.1, *, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0) -> Optimizer:
    r"""Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay.

    With ``g = grad + weight_decay * params`` and velocity ``v``:
    ``v <- momentum * v + g``; step ``d = g + momentum * v`` (``nesterov=True``) or ``d = v``;
    ``params <- params - lr * d`` (PyTorch's convention, no dampening).

    Examples
    --------
    >>> import numpy as np
    >>> opt = sgd(0.5, momentum=0.9)
    >>> p, s = opt.update(np.array([1.0]), opt.init(np.array([0.0])), np.array([0.0]))
    >>> p.tolist(), s.count
    ([-0.5], 1)
    """
    schedule = as_schedule(lr, "lr")
    momentum = _number("momentum", momentum, 0.0, 1.0, hi_open=True)
    weight_decay = _number("weight_decay", weight_decay)
    nesterov = check_flag("nesterov", nesterov)
    if nesterov and momentum == 0:
        raise ArgumentError("`nesterov=True` needs `momentum` > 0 (e.g. momentum=0.9)")

    def init(params):
        _check_params(params, "sgd's init()")
        xp = namespace(params)
        return SGDState(0, xp.zeros_like(params) if momentum else xp.zeros(0, dtype=params.dtype))

    def update(grad, state, params, lr=None):
        # without momentum the velocity is unused: an empty one (or the zeros init made before); with
        # momentum an empty one is a velocity of zeros (a state sgd without momentum made: a warm-up)
        _check_update("sgd", grad, state, params, SGDState, empty_ok=("momentum",))
        step = _lr_at(schedule, state.count, lr)
        g = grad + weight_decay * params if weight_decay else grad
        own = bool(weight_decay)  # whether d is this update's own temporary (not grad, not the velocity)
        if momentum:
            prev = state.momentum if state.momentum.shape != (0,) else namespace(params).zeros_like(params)
            v = momentum * prev + g
            d, own = (g + momentum * v, True) if nesterov else (v, False)
        else:  # (a state resumed from an older checkpoint holds d zeros: they are dropped)
            v, d = state.momentum if state.momentum.shape == (0,) else namespace(params).zeros(0, dtype=params.dtype), g
        del g  # (weight decay's g, once v or d holds what is needed of it)
        new = _minus(params, _times(params, step, d, own)).astype(params.dtype, copy=False)
        return new, SGDState(state.count + 1, v.astype(params.dtype, copy=False))

    config = f"sgd(lr={describe_schedule(lr)}, momentum={momentum}, nesterov={bool(nesterov)}, weight_decay={weight_decay})"
    return _remakeable(Optimizer(init, update, lr, "sgd", config, weight_decay), sgd, lr=lr, momentum=momentum,
                       nesterov=nesterov, weight_decay=weight_decay)


def adam(lr: FloatOrSchedule = 1e-3, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0) -> Optimizer:
    r"""Adam with bias correction; ``weight_decay`` is decoupled (AdamW).

    ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``,
    ``params <- params - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * params)``.

    Examples
    --------
    >>> import numpy as np
    >>> opt = adam(0.1)
    >>> p, s = opt.update(np.array([3.0]), opt.init(np.zeros(1)), np.zeros(1))
    >>> np.round(p, 6).tolist()  # the first Adam step has size lr
    [-0.1]
    """
    schedule = as_schedule(lr, "lr")
    b1 = _number("b1", b1, 0.0, 1.0, hi_open=True)
    b2 = _number("b2", b2, 0.0, 1.0, hi_open=True)
    eps = _number("eps", eps)
    if eps == 0:  # sparse estimates leave exact zeros: 0 / (0 + 0) is NaN
        raise ArgumentError("`eps` must be > 0 (a coordinate whose gradient is exactly 0, as sparse CGE leaves "
                            "every unestimated one, would step by 0/0 = NaN); use e.g. eps=1e-8")
    weight_decay = _number("weight_decay", weight_decay)

    def init(params):
        _check_params(params, "adam's init()")
        xp = namespace(params)
        return AdamState(0, xp.zeros_like(params), xp.zeros_like(params))

    def update(grad, state, params, lr=None):
        _check_update("adam", grad, state, params, AdamState)
        xp = namespace(params)
        step = _lr_at(schedule, state.count, lr)
        t = state.count + 1
        m = b1 * state.mu + (1 - b1) * grad
        v = b2 * state.nu + (1 - b2) * grad * grad
        # the same operations and dtypes as mhat / (sqrt(vhat) + eps), without named intermediates:
        # NumPy reuses temporaries in place (4 d-sized arrays at the peak, the new m, v and params
        # and one temporary; named mhat, vhat and sqrt(vhat) held 7)
        with np.errstate(over="ignore"):  # (an overflow here is found below, and that step taken again)
            den = xp.sqrt(v / (1 - b2**t)) + eps
        if den.size and not math.isfinite(float(xp.max(den))):
            den = _wide_den(den, v, grad, state.nu, b2, t, eps)
        d = (m / (1 - b1**t)) / den
        del den
        if weight_decay:
            d = d + weight_decay * params
        d = step * d
        new = (params - d).astype(params.dtype, copy=False)
        return new, AdamState(t, m.astype(params.dtype, copy=False), v.astype(params.dtype, copy=False))

    config = f"adam(lr={describe_schedule(lr)}, b1={b1}, b2={b2}, eps={eps}, weight_decay={weight_decay})"
    return _remakeable(Optimizer(init, update, lr, "adam", config, weight_decay), adam, lr=lr, b1=b1, b2=b2, eps=eps,
                       weight_decay=weight_decay)


def _wide_den(den, v, grad, nu, b2: float, t: int, eps: float):
    """Adam's ``sqrt(v_hat) + eps`` where the one in params' dtype was not finite: ``v / (1 - b2**t)``
    overflowed (float32 at gradients above about 1.8e19, whose step was then 0), or ``v`` did (its
    ``g * g``). Those entries are computed again in float64 as ``sqrt(v) / sqrt(1 - b2**t)``, which
    does not overflow where ``v`` does not; every other entry keeps its value, bit for bit. Where
    ``v`` itself overflowed, this step reads it from the state and gradient in float64, but the
    state keeps ``v`` in params' dtype: inf (float32 beyond about 5.8e20), and that coordinate's
    later steps are 0; a ``v`` beyond float64 stays infinite here too: a step of 0."""
    xp = namespace(den)
    bad = xp.logical_not(xp.isfinite(den))
    wide = v[bad].astype(np.float64)
    over = xp.logical_not(xp.isfinite(wide))  # ``v`` itself overflowed: from the state and gradient in float64
    if bool(xp.any(over)):
        g = xp.asarray(grad, dtype=np.float64)
        g = g[bad] if g.ndim else g
        with np.errstate(over="ignore"):  # (float64 params: numpy has warned of v's overflow already)
            wide = xp.where(over, b2 * nu[bad].astype(np.float64) + (1 - b2) * g * g, wide)
    den = den.copy()
    den[bad] = (xp.sqrt(wide) / math.sqrt(1 - b2**t) + eps).astype(den.dtype)
    return den


def scaled(optimizer: Optimizer, scale, label: str) -> Optimizer:
    """``optimizer`` with each coordinate's step multiplied by ``scale`` (an array of length d).

    ``params + (new - params) * scale``, where ``new`` is ``optimizer``'s own update: the inner
    state advances as before, only the move is rescaled. ``label`` names the scale in
    ``config``, so a checkpoint made with one scale does not resume with another.
    """
    inner = optimizer
    on = {}  # the scale on each backend and dtype it has met, converted once (a CuPy run copies it to the GPU once)

    def update(grad, state, params, lr=None):
        new, state = inner.update(grad, state, params, lr=lr)
        xp = namespace(params)
        key = (xp.__name__, params.dtype.str)
        if key not in on:
            on[key] = xp.asarray(scale).astype(params.dtype, copy=False)
        return params + (new - params) * on[key], state

    return _remakeable(inner._replace(update=update, config=f"{inner.config} * {label}"), scaled,
                       optimizer=optimizer, scale=scale, label=label)


def sign_sgd(lr: FloatOrSchedule = 0.01, *, weight_decay: float = 0.0) -> Optimizer:
    """Sign-SGD: ``params <- params - lr * sign(grad + weight_decay * params)``.

    Robust to the scale of a noisy ZO estimate (only signs are used). The weight decay is
    inside the sign, so with sparse CGE (exact zeros where the mask skips) every skipped
    weight moves by the full ``lr`` toward zero each step; :func:`zoracle.train` warns about
    that combination. Use ``weight_decay=0`` there, or :func:`adam`'s decoupled decay.
    An infinite gradient entry steps by its sign; a NaN entry (no sign) raises
    :class:`~zoracle.ArgumentError` (:func:`sgd` and :func:`adam` refuse both).

    Examples
    --------
    >>> import numpy as np
    >>> opt = sign_sgd(0.1)
    >>> opt.update(np.array([5.0, -0.01, 0.0]), opt.init(np.zeros(3)), np.zeros(3))[0].tolist()
    [-0.1, 0.1, 0.0]
    >>> opt.update(np.array([np.inf, -np.inf, 1.0]), opt.init(np.zeros(3)), np.zeros(3))[0].tolist()
    [-0.1, 0.1, -0.1]
    """
    schedule = as_schedule(lr, "lr")
    weight_decay = _number("weight_decay", weight_decay)

    def init(params):
        _check_params(params, "sign_sgd's init()")
        return SignState(0)

    def update(grad, state, params, lr=None):
        _check_update("sign_sgd", grad, state, params, SignState, signs=True)
        xp = namespace(params)
        step = _lr_at(schedule, state.count, lr)
        g = grad + weight_decay * params if weight_decay else grad
        signs = _sign_in_place(g) if weight_decay else xp.sign(g)  # (weight decay's g is this update's own)
        del g
        new = _minus(params, _times(params, step, signs, True)).astype(params.dtype, copy=False)
        return new, SignState(state.count + 1)

    config = f"sign_sgd(lr={describe_schedule(lr)}, weight_decay={weight_decay})"
    return _remakeable(Optimizer(init, update, lr, "sign_sgd", config, weight_decay), sign_sgd, lr=lr,
                       weight_decay=weight_decay)
