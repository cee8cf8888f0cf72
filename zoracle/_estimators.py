"""Zeroth-order gradient estimators: RGE and CGE (dense or sparse), and ``estimate_gradient``."""

from __future__ import annotations

import contextvars
import functools
import os
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from ._backend import namespace, real_numpy, same_values, to_numpy
from ._errors import (ArgumentError, config_hint, estimator_hint, executor_hint, finite_real, masked_entries, short_repr,
                      user_stacklevel, warn)
from ._fastcheck import check_fast_paths, usable_caps
from ._foreign_args import GRADIENT_HINTS, refuse_foreign, seal_signature
from ._grid import coarse_grid, loss_spread, may_be_gridded
from ._malloc import reuse_freed_memory
from ._oracle import Oracle, coarse_losses, compute_dtype_of, loss_type, precision_bits
from ._rounding import diff_rounding, rge_rounding, snes_rounding
from ._plan import BaseTask, direction_block, plan_cge, plan_rge, release_rows, reserve_rows, seal

if TYPE_CHECKING:
    from .executors import Executor

__all__ = ["RGE", "CGE", "SNES", "GradientEstimate", "estimate_gradient", "as_generator", "validate_params"]

SCHEMES = ("forward", "central")
DISTRIBUTIONS = ("gaussian", "sphere", "rademacher")
SHAPINGS = ("none", "ranks")
DEFAULT_BUDGET = 64 * 2**20
_MAX_COUNT = np.iinfo(np.intp).max  # a count NumPy can size an array by (10**30 directions: ValueError deep inside)


def _check_choice(name: str, value, valid) -> None:
    if not isinstance(value, str) or value not in valid:  # an array's `in` is ambiguous, not False
        raise ArgumentError(f"`{name}` must be one of {', '.join(map(repr, valid))}; got {value!r}")


def _check_mu(mu) -> None:
    if not finite_real(mu) or mu <= 0:
        raise ArgumentError(f"`mu` must be a finite number > 0 (e.g. 5e-3), got {short_repr(mu)}"
                            f"{config_hint('mu', mu, 'number', lambda v: v > 0)}")


def _plain_numbers(est, **kinds) -> None:
    """The estimator's numbers as Python ``float`` / ``int`` (None kept): a NumPy scalar would
    change its ``repr``, which checkpoints record, and refuse a resume with the same value."""
    for name, kind in kinds.items():
        v = getattr(est, name)
        if v is not None and type(v) is not kind:
            object.__setattr__(est, name, kind(v))


@dataclass(frozen=True)
class CGE:
    r"""Coordinate-wise gradient estimator.

    .. math::
        \hat g_i = \frac{l(\theta + \mu e_i) - l(\theta)}{\mu} \quad\text{(forward)},\qquad
        \hat g_i = \frac{l(\theta + \mu e_i) - l(\theta - \mu e_i)}{2\mu} \quad\text{(central)}

    Bias is O(mu) for forward differences (at most ``mu * max|H_ii| / 2`` per coordinate)
    and O(mu^2) for central ones (exact on quadratics), ``scheme="forward"`` (the default) or
    ``"central"``. Queries: ``n + 1`` (forward) or
    ``2n + 1`` (central; the ``+1`` is the loss at ``theta``, reported as
    ``GradientEstimate.loss``), with ``n = d`` or the number of sparse coordinates.
    The divisor is the representable step ``(theta_i + mu) - theta_i``, as in
    ``scipy.optimize.approx_fprime``.

    Examples
    --------
    >>> import numpy as np, zoracle as zo
    >>> est = zo.estimate_gradient(lambda x: float(x @ x), np.array([1.0, -2.0]), zo.CGE(scheme="central"))
    >>> np.round(est.grad, 6).tolist(), est.nfev
    ([2.0, -4.0], 5)
    """

    mu: float = 5e-3
    scheme: str = "forward"

    def __post_init__(self):
        _check_mu(self.mu)
        _check_choice("scheme", self.scheme, SCHEMES)
        _plain_numbers(self, mu=float)

    @property
    def steps(self) -> tuple:
        """The signed steps each direction is queried at: ``(mu,)`` forward, ``(mu, -mu)`` central."""
        return (self.mu,) if self.scheme == "forward" else (self.mu, -self.mu)


@dataclass(frozen=True)
class RGE:
    r"""Randomized gradient estimator over ``directions`` (q) random directions.

    .. math::
        \hat g = \frac{\phi}{q}\sum_{i=1}^q \frac{l(\theta + \mu u_i) - l(\theta)}{\mu} u_i

    with ``u_i ~ N(0, I)`` and ``phi = 1`` (``distribution="gaussian"``), ``u_i`` uniform on
    the unit sphere and ``phi = d`` (``"sphere"``), or ``u_i`` with entries +-1 each with
    probability 1/2 and ``phi = 1`` (``"rademacher"``: SPSA's simultaneous perturbation, q
    directions; ``E u u^T = I`` as for gaussian). The central scheme uses
    ``[l(theta + mu u) - l(theta - mu u)] / (2 mu)``. Unbiased for the gradient of the
    Gaussian-smoothed loss ``E l(theta + mu u)`` (gaussian), biased for ``l`` itself; all three
    are unbiased on a linear loss (``phi E u u^T = I``). A Rademacher query moves every
    coordinate by exactly ``mu``, never more, which is what a box needs: ``train(bounds=...)``
    takes it as it takes the sphere (Gaussian steps have no bound).
    Queries: ``q + 1`` (forward) or ``2q + 1`` (central, counting the base value).

    The division is by ``mu``, not by the step the parameters' floats take: in float32, far
    from 0, ``(theta + mu u) - theta`` rounds each entry of ``mu u`` (CGE divides by its
    one step as taken). On a linear loss at float32 parameters near 1000 with ``mu`` 5e-3
    and d = 2000 that moves the estimate by 0.3% (gaussian) and 14% (sphere, whose entries are
    about ``mu / sqrt(d)``), both below RGE's own variance there; float64 parameters, or a
    larger ``mu`` where the parameters are large, remove it.

    ``shaping="ranks"`` is the fitness shaping of natural evolution strategies: every loss
    value is replaced by its centred rank among the values the estimate compares (the 2q
    perturbed losses for ``"central"``, the q perturbed losses and the base for
    ``"forward"``), ranks spread evenly over ``[-1/2, 1/2]``, ties averaged. With
    ``scheme="central"`` and ``mu`` as the search width sigma this is OpenAI-ES's antithetic
    estimator. The result no longer scales with the loss (it is unchanged by any strictly
    increasing transform of the loss), so pair it with a scale-free optimizer such as
    :func:`zoracle.adam`. In ``benchmarks/peers.py`` it is the zoracle method that keeps up
    with SNES at short budgets and large d (docs: "Against evolution strategies").

    Examples
    --------
    >>> import numpy as np, zoracle as zo
    >>> est = zo.estimate_gradient(lambda x: float(x @ x), np.ones(3), zo.RGE(directions=8), rng=0)
    >>> est.grad.shape, est.nfev
    ((3,), 9)
    """

    mu: float = 5e-3
    directions: int = 1
    distribution: str = "gaussian"
    scheme: str = "forward"
    shaping: str = "none"

    def __post_init__(self):
        _check_mu(self.mu)
        q = self.directions
        if isinstance(q, bool) or not isinstance(q, numbers.Integral) or q < 1 or q > _MAX_COUNT:
            raise ArgumentError(f"`directions` must be an integer >= 1 (e.g. 192) and at most {_MAX_COUNT}, got {q!r}"
                                f"{config_hint('directions', q, 'int', lambda v: 1 <= v <= _MAX_COUNT)}")
        _check_choice("distribution", self.distribution, DISTRIBUTIONS)
        _check_choice("scheme", self.scheme, SCHEMES)
        _check_choice("shaping", self.shaping, SHAPINGS)
        _plain_numbers(self, mu=float, directions=int)

    @property
    def steps(self) -> tuple:
        """The signed steps each direction is queried at: ``(mu,)`` forward, ``(mu, -mu)`` central."""
        return (self.mu,) if self.scheme == "forward" else (self.mu, -self.mu)


@dataclass(frozen=True)
class SNES:
    r"""Separable natural evolution strategies (SNES; Schaul, Glasmachers and Schmidhuber, 2011).

    The search distribution is ``N(theta, diag(sigma^2))`` with a width ``sigma_j`` per
    parameter that adapts. A step samples ``z_i ~ N(0, I)`` for ``i = 1..population``,
    queries ``l(theta + sigma * z_i)``, sorts the losses (lowest first) and gives the k-th
    the NES utility ``u = max(0, log(n/2 + 1) - log k) / sum - 1/n``. Then

    .. math::
        \hat g = -\sum_i u_i\, \sigma \odot z_i, \qquad
        \sigma \leftarrow \sigma \odot \exp\Big(\frac{\eta_\sigma}{2} \sum_i u_i (z_i^2 - 1)\Big)

    ``zo.sgd(1.0)`` on ``ghat`` is SNES's mean update ``theta + sum_i u_i sigma z_i`` (the
    centre learning rate 1 of the paper and EvoTorch); any zoracle optimizer can take its
    place. ``sigma`` is the estimator's state: :func:`zoracle.train` carries it from step to
    step and saves it in checkpoints; :func:`estimate_gradient` takes it as ``state`` and
    returns the updated one as ``GradientEstimate.state``. Like rank-shaped RGE the result is
    unchanged by any strictly increasing transform of the loss.

    Queries: ``population`` a step (no base point; ``GradientEstimate.loss`` is the mean of
    the population's losses, the loss of the search distribution). Directions are seeded one
    by one as RGE's, so executors and batching give the same estimate (``budget_bytes``, which
    sets how many directions are summed at once, moves its last bit, as RGE's).

    Parameters
    ----------
    mu : float
        Initial search width ``sigma`` of every parameter (EvoTorch's ``stdev_init``).
    population : int, optional
        Samples a step; default ``4 + floor(3 ln d)``, the paper's.
    sigma_lr : float, optional
        ``eta_sigma``; default ``0.2 (3 + ln d) / sqrt(d)``, the paper's.

    Examples
    --------
    >>> import numpy as np, zoracle as zo
    >>> res = zo.train(lambda x: float(((x - 1) ** 2).sum()), np.zeros(10), steps_per_epoch=300,
    ...                estimator=zo.SNES(mu=0.5, population=20), optimizer=zo.sgd(1.0), rng=0, progress=False)
    >>> bool(np.abs(res.params - 1).max() < 0.05), res.nfev, bool(res.estimator_state.max() < 0.5)
    (True, 6000, True)
    """

    mu: float = 0.1
    population: int | None = None
    sigma_lr: float | None = None

    def __post_init__(self):
        _check_mu(self.mu)
        n = self.population
        if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2 or n > _MAX_COUNT):
            raise ArgumentError(f"`population` must be an integer >= 2 (e.g. 100) and at most {_MAX_COUNT}, or None for "
                                f"4 + 3 ln d, got {n!r}")
        r = self.sigma_lr
        if r is not None and (not finite_real(r) or r < 0):
            raise ArgumentError(f"`sigma_lr` must be a finite number >= 0 or None for 0.2 (3 + ln d) / sqrt(d), got {r!r}")
        _plain_numbers(self, mu=float, population=int, sigma_lr=float)

    scheme = "forward"  # what check_step tests: params + sigma must be a representable step

    def size(self, d: int) -> int:
        """Samples a step at dimension ``d``."""
        return int(self.population) if self.population is not None else 4 + int(np.floor(3 * np.log(d)))

    def rate(self, d: int) -> float:
        """``eta_sigma`` at dimension ``d``."""
        return float(self.sigma_lr) if self.sigma_lr is not None else 0.2 * (3 + np.log(d)) / np.sqrt(d)

    def init(self, params) -> np.ndarray:
        """The initial state: ``sigma = mu`` for every parameter of ``params`` (float64)."""
        return np.full(int(params.shape[0]), float(self.mu))


def nes_utilities(losses) -> np.ndarray:
    """NES utilities of ``losses`` (lowest loss best): ``max(0, log(n/2 + 1) - log k) / sum - 1/n``
    for the k-th lowest; they sum to 0. Ties keep their order (stable sort)."""
    losses = np.asarray(losses, dtype=np.float64)
    n = losses.size
    w = np.maximum(0.0, np.log(n / 2 + 1) - np.log(np.arange(1, n + 1)))
    u = np.empty(n)
    u[np.argsort(losses, kind="stable")] = w / w.sum() - 1.0 / n
    return u


def float64_values(value, arr: np.ndarray, name: str, fix: str) -> np.ndarray:
    """``arr`` (``value`` as NumPy) as float64; text (NumPy parses "0.1"), dates and objects that
    are no numbers raise an ArgumentError naming ``name`` rather than NumPy's own message."""
    if arr.dtype.kind not in "USMm":
        try:
            return np.asarray(arr, dtype=np.float64)
        except (TypeError, ValueError):
            pass
    raise ArgumentError(f"`{name}` must hold real numbers, got {type(value).__name__} {short_repr(value)} (dtype "
                        f"{arr.dtype}); {fix}")


def _check_sigma(state, d: int) -> np.ndarray:
    if isinstance(state, np.ma.MaskedArray) and np.ma.is_masked(state):  # np.asarray keeps what the mask hides
        raise ArgumentError(f"`state` (SNES's sigma) is a numpy.MaskedArray{masked_entries(state)}: the data "
                            "hidden behind the mask would be used as widths; fill the masked entries first "
                            "(state.filled(w), w > 0) or start from SNES(...).init(params)")
    s = real_numpy(state, np.float64)
    if np.iscomplexobj(s):  # (NumPy's cast drops the imaginary part, with a ComplexWarning only)
        raise ArgumentError(f"`state` (SNES's sigma) must hold real widths > 0, got dtype {s.dtype}; start from "
                            "SNES(...).init(params)")
    if s.dtype.kind == "b":  # (True read as a width of 1.0)
        raise ArgumentError(f"`state` (SNES's sigma) must hold real widths > 0, got dtype {s.dtype}; start from "
                            "SNES(...).init(params)")
    s = float64_values(state, s, "state", "start from SNES(...).init(params)")  # (a bfloat16 tensor's too: exact)
    if s.shape != (d,):
        raise ArgumentError(f"`state` (SNES's sigma) must have shape ({d},), got {s.shape}; start from SNES(...).init(params)")
    if not (np.isfinite(s).all() and (s > 0).all()):
        bad = int(np.flatnonzero(~(np.isfinite(s) & (s > 0)))[0])
        raise ArgumentError(f"`state` (SNES's sigma) must be finite and > 0, got {s[bad]} at index {bad}")
    return s


@dataclass(frozen=True)
class GradientEstimate:
    """Result of :func:`estimate_gradient`.

    Attributes
    ----------
    grad : array
        The estimate, same backend, shape and dtype as the parameters.
    loss : float
        The loss at the unperturbed parameters (CGE, RGE); for SNES, the mean loss of its
        population (it never queries the unperturbed parameters).
    nfev : int
        Every loss value the oracle produced for this estimate (queries that plain-call CGE
        runs again, after finding the oracle wrote into its array, are not counted).
    state : array or None
        The estimator's state after this estimate: SNES's adapted ``sigma``; None for CGE and RGE.
    """

    grad: Any
    loss: float
    nfev: int
    state: Any = None

    # (not a field: no argument, not compared) the largest |grad| entry the losses' rounding alone can make
    # (their differences within ROUNDING_ULPS units of the base loss's last place, at its precision, over
    # the step): train's checks for estimates that stay 0 read an entry at or below it as 0, the same on any
    # CPU (a rounding that leaves a cancelled bias's differences exactly 0 on one leaves a few units on
    # another); 0.0 where not judged, inf where the whole estimate is rounding (RGE, ranked or not, and SNES:
    # their entries mix every direction's difference, so the estimate is judged whole)
    _rounding = 0.0

    def __eq__(self, other):
        """Field by field, arrays by value (the generated ``==`` raised NumPy's ValueError on the
        arrays of a copied or reloaded estimate)."""
        if not isinstance(other, GradientEstimate):
            return NotImplemented
        return all(same_values(getattr(self, f), getattr(other, f)) for f in ("grad", "loss", "nfev", "state"))


def as_generator(rng) -> np.random.Generator:
    """``rng`` (Generator, int, SeedSequence or None) as a NumPy Generator."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool) and rng < 0:
        raise ArgumentError(f"`rng` must be a non-negative int seed, a numpy Generator or None, got {rng}")
    if rng is None or isinstance(rng, (numbers.Integral, np.random.SeedSequence)) and not isinstance(rng, bool):
        return np.random.default_rng(rng)
    raise ArgumentError(f"`rng` must be a numpy Generator, an int seed or None, got {type(rng).__name__}"
                        f"{config_hint('rng', rng, 'int', lambda v: v >= 0)}")


def _ndim(params) -> int:
    """``params.ndim``, or that of ``np.asarray(params)`` (a number's 0, a nested list's 2: the fix
    shown for them needs ``.ravel()``, as scipy's minimize takes ``x0=3.0``); 1 when unknown."""
    ndim = getattr(params, "ndim", None)
    if ndim is None and isinstance(params, (numbers.Number, list, tuple)):
        try:
            ndim = np.ndim(params)
        except Exception:  # a ragged list: np.asarray's own error is the one to see
            ndim = 1
    return 1 if ndim is None else ndim


def validate_params(params, name: str = "params"):
    """Check ``params`` is a finite 1-D float32/float64 NumPy or CuPy array."""
    xp = namespace(params)
    if _is_foreign_array(params):
        kind = f"{type(params).__module__.split('.')[0]}.{type(params).__name__}"
        raise ArgumentError(
            f"`{name}` is a {kind}; zoracle works on NumPy (or CuPy) arrays and returns the same kind. "
            f"Pass np.asarray({name}.detach().cpu()) (torch) or np.from_dlpack({name}), and convert the "
            "result back yourself (e.g. torch.from_numpy(result))"
        )
    flat = "" if _ndim(params) == 1 else ".ravel()"  # (a DataFrame has ndim, no dtype)
    if not hasattr(params, "dtype") or not hasattr(params, "ndim"):
        raise ArgumentError(
            f"`{name}` must be a 1-D float32 or float64 array, got {type(params).__name__}; "
            f"use np.asarray({name}, dtype=np.float64){flat}"
        )
    if isinstance(params, np.ma.MaskedArray) and np.ma.is_masked(params):
        # np.asarray (the fix given below) keeps the data behind the mask, as if it were a value
        raise ArgumentError(
            f"`{name}` is a numpy.MaskedArray{masked_entries(params)}, not a plain NumPy array; "
            f"np.asarray({name}) would pass on the data hidden behind the mask as values: fill the masked "
            f"entries first, e.g. np.asarray({name}.filled(0.0), dtype=np.float64){flat}"
        )
    if isinstance(params, (np.matrix, np.ma.MaskedArray)):
        # a masked entry ignores the writes of its perturbation (its partial came out 0); a matrix
        # stays 2-D through ravel()
        raise ArgumentError(
            f"`{name}` is a numpy.{type(params).__name__}, not a plain NumPy array; "
            f"use np.asarray({name}, dtype=np.float64){flat}"
        )
    if xp is np and not isinstance(params, (np.ndarray, np.generic)):  # a Series indexes params[coords] by label
        # (before the shape check: an h5py dataset has no ravel(); a NumPy scalar has, and is 0-D)
        raise ArgumentError(
            f"`{name}` is a {type(params).__module__.split('.')[0]}.{type(params).__name__}, not a NumPy array; "
            f"use np.asarray({name}, dtype=np.float64){flat}"
        )
    if params.ndim != 1:
        raise ArgumentError(
            f"`{name}` must be 1-D (one flat parameter vector), got shape {tuple(params.shape)}; use {name}.ravel()"
        )
    if params.dtype.kind == "c":  # astype(np.float64) drops the imaginary part (NumPy's ComplexWarning only)
        raise ArgumentError(
            f"`{name}` is complex ({params.dtype}); zoracle estimates real parameters: optimize the real and "
            f"imaginary parts as real ones, np.concatenate([{name}.real, {name}.imag]), and rebuild the complex "
            "values inside the oracle (x[:d] + 1j * x[d:])"
        )
    if params.dtype not in (xp.float32, xp.float64):
        native = params.dtype.newbyteorder("=") if params.dtype.kind == "f" and not params.dtype.isnative else None
        if native in (np.float32, np.float64):  # '>f8' (np.load of a big-endian file, FITS): float64 byte-swapped
            raise ArgumentError(f"`{name}` is {native} in big-endian byte order ({params.dtype}); zoracle takes "
                                f"native-order arrays: use {name}.astype(np.{native})")
        raise ArgumentError(
            f"`{name}` must have dtype float32 or float64, got {params.dtype}; use {name}.astype(np.float64)"
        )
    if params.shape[0] == 0:
        raise ArgumentError(f"`{name}` is empty; there is nothing to estimate")
    if not bool(xp.isfinite(params).all()):
        bad = to_numpy(xp.flatnonzero(~xp.isfinite(params)))
        n = f" ({bad.size} entries are not finite)" if bad.size > 1 else ""
        raise ArgumentError(f"`{name}` must be finite, got {params[int(bad[0])]} at index {int(bad[0])}{n}; "
                            f"start from finite values, e.g. np.where(np.isfinite({name}), {name}, 0.0)")
    return params


class StepError(ArgumentError):
    """``mu`` is not a representable step at the params (:func:`check_step`)."""


def check_step(params, mu: float, scheme: str, estimator: str, index=None) -> None:
    """Raise :class:`ArgumentError` when ``mu`` is not a representable step at ``params``.

    The step is ``(x + mu) - x`` in the parameters' dtype; where it rounds to zero (``mu``
    below the spacing of the floats near ``x``) or overflows, the finite difference is 0,
    NaN or inf. ``params`` (NumPy or CuPy) holds the coordinates that will be perturbed;
    only the verdict leaves the device. ``index`` (optional): the positions in the full
    parameter vector of ``params``' entries (sparse CGE's coordinates), which the message names.
    """
    xp = namespace(params)
    t = np.dtype(params.dtype).type
    with np.errstate(over="ignore", invalid="ignore"):
        m = t(mu)
        bad = ~(((params + m) - params) > 0) | ~xp.isfinite(params + m)
        if scheme == "central":
            bad |= ~((params - (params - m)) > 0) | ~xp.isfinite(params - m)
    if not bool(bad.any()):
        return
    x, bad = to_numpy(params), to_numpy(bad)
    i = int(np.flatnonzero(bad)[0])
    at = i if index is None else int(index[i])  # the position in the caller's params
    scale = float(np.max(np.abs(x)))
    if not np.isfinite(float(m)) or not np.isfinite(float(x[i]) + float(m)) or float(m) > np.finfo(x.dtype).max / 4:
        fix = "use a smaller mu (e.g. 5e-3)"
        why = f"overflows {x.dtype}"
    else:
        need = float(np.spacing(t(max(scale, float(np.finfo(x.dtype).tiny))))) * 1024
        fix = f"use mu >= {need:.3g} (about 1000 float spacings at this scale), or rescale the parameters"
        why = f"rounds to a zero step in {x.dtype}"
    raise StepError(
        f"{estimator}(mu={mu!r}) is not a representable step: params + mu {why} at index {at} "
        f"(params[{at}] = {float(x[i]):.6g}; parameter scale max|params| = {scale:.3g}); {fix}"
    )


def centered_ranks(values) -> np.ndarray:
    """Ranks of ``values`` spread evenly over ``[-1/2, 1/2]`` (ties share their mean rank)."""
    from scipy.stats import rankdata

    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return np.zeros(values.shape)
    return (rankdata(values, method="average") - 1.0) / (values.size - 1) - 0.5


def _is_foreign_array(params) -> bool:
    """A tensor or array of another library (torch, JAX, DLPack / array-API objects)."""
    if isinstance(params, (np.ndarray, np.generic)) or namespace(params) is not np:
        return False
    return any(hasattr(params, a) for a in ("__dlpack__", "__array_namespace__", "detach"))


def _validate_coordinates(coordinates, d: int) -> np.ndarray:
    if isinstance(coordinates, np.ma.MaskedArray) and np.ma.is_masked(coordinates):  # np.asarray drops the mask
        raise ArgumentError(f"`coordinates` is a numpy.MaskedArray{masked_entries(coordinates)}: its mask would be "
                            "ignored (the masked entries estimated too); pass what to estimate only, "
                            "coordinates.compressed() (indices) or coordinates.filled(False) (a boolean mask)")
    c = to_numpy(coordinates)
    if c.dtype == bool:
        if c.shape != (d,):
            raise ArgumentError(f"a boolean `coordinates` mask must have shape ({d},), got {c.shape}")
        if not c.any():
            raise ArgumentError(
                f"the boolean `coordinates` mask of length {d} is all False: there is no coordinate to "
                "estimate; set at least one entry True, or pass None for dense CGE"
            )
        return np.flatnonzero(c)
    c = np.asarray(c)
    if c.ndim != 1 or (c.size and c.dtype.kind not in "iu"):
        raise ArgumentError(
            f"`coordinates` must be a 1-D integer index array (or a boolean mask of length {d}), "
            f"got dtype {c.dtype} and shape {c.shape}"
        )
    if c.size == 0:
        raise ArgumentError("`coordinates` is empty; pass None for dense CGE or at least one index")
    bad = (c >= d) if c.dtype.kind == "u" else (c < 0) | (c >= d)  # before the cast: the value as given
    if bad.any():
        raise ArgumentError(
            f"`coordinates` must lie in [0, {d}), got {int(c[bad][0])}; indices are positions in the flat params"
        )
    c = c.astype(np.int64)
    uniq, counts = np.unique(c, return_counts=True)
    if (counts > 1).any() and c.shape == (d,) and d > 2 and uniq.size <= 2 and set(uniq.tolist()) <= {0, 1}:
        raise ArgumentError(f"`coordinates` is an integer array of 0s and 1s of length {d}: a mask? A mask must be "
                            "boolean (coordinates.astype(bool)); indices are positions (np.flatnonzero(mask))")
    if (counts > 1).any():
        raise ArgumentError(
            f"`coordinates` must not repeat indices, got {int(uniq[counts > 1][0])} more than once; use np.unique"
        )
    return c


def check_estimator(estimator):
    """``estimator`` (None: ``CGE()``) as ``estimate_gradient`` and ``train`` take it: CGE, RGE or SNES, else
    refused naming what was most likely meant."""
    if estimator is None:
        return CGE()
    if not isinstance(estimator, (CGE, RGE, SNES)):
        raise ArgumentError(f"`estimator` must be zo.CGE(...), zo.RGE(...) or zo.SNES(...), got "
                            f"{type(estimator).__name__}{estimator_hint(estimator)}")
    return estimator


def _executor_workers(executor) -> int:
    if executor is not None and (isinstance(executor, type) or not callable(getattr(executor, "run", None))):
        raise ArgumentError(f"`executor` must be None (serial) or an executor from zoracle.executors "
                            f"(e.g. JoblibExecutor(2)), got {type(executor).__name__}{executor_hint(executor)}")
    return int(getattr(executor, "n_workers", 1))


def _probe_run(executor, oracle: Oracle, params, tasks) -> list:
    """:func:`_run` for the fast-path check's plain calls: the executor's ``last_run`` stays the estimate's."""
    holder = getattr(executor, "_impl", executor)  # (JoblibExecutor reads its implementation's)
    last = getattr(holder, "last_run", None)
    try:
        return _run(executor, oracle, params, tasks)
    finally:
        if last is not None:
            try:
                holder.last_run = last
            except AttributeError:  # an executor of one's own that reports it read-only: as it ran
                pass


def _run(executor, oracle: Oracle, params, tasks) -> list:
    if executor is None:
        results = [t.run(oracle, params) for t in tasks]
    else:
        results = executor.run(oracle, params, tasks)
        results = _check_results(executor, tasks, results)
    oracle.nfev = sum(r.size for r in results)
    return results


def _check_results(executor, tasks, results) -> list:
    """An executor's ``run`` must return one result per task, in task order, each of the task's shape
    ``(len(task.steps), task.size)``: an executor of one's own that dropped one, or returned them in
    the order they completed, gave an RGE estimate silently wrong (or NumPy's bare ValueError in CGE).
    Only a count or a shape gives the mistake away: results of equal shapes reordered pass unseen."""
    name = type(executor).__name__
    try:
        n = len(results)
    except TypeError:
        raise ArgumentError(f"executor {name}: run(oracle, params, tasks) must return a list with one result per "
                            f"task, got {type(results).__name__}") from None
    if n != len(tasks):
        raise ArgumentError(f"executor {name}: run(oracle, params, tasks) returned {n} results for {len(tasks)} "
                            "tasks; it must return [task.run(oracle, params) for task in tasks]: one result per "
                            "task, in task order")
    # nested lists (a worker's reply sent as JSON) are the numbers task.run returned: read as its array
    results = [_as_result(r) for r in results]
    for i, (t, r) in enumerate(zip(tasks, results)):
        want = (len(t.steps), t.size)
        if getattr(r, "shape", None) != want:
            got = f"shape {r.shape}" if hasattr(r, "shape") else f"{type(r).__name__} {short_repr(r, 79)} (no array)"
            raise ArgumentError(f"executor {name}: run(oracle, params, tasks) returned, for task {i}, a result of "
                                f"{got} where the task's shape is {want}; it must "
                                "return one result per task, in task order (not in the order they complete)")
    return results


def _as_result(r):
    """A task's result sent back as nested lists, as the float64 array ``task.run`` returned; else as given."""
    if isinstance(r, (list, tuple)):
        try:
            return np.asarray(r, dtype=np.float64)
        except (TypeError, ValueError):  # ragged, or not numbers: named by the shape check
            return r
    return r


def _narrower_dtype(oracle, params):
    """The oracle's ``compute_dtype`` (the float it evaluates params in) when narrower than params'."""
    cd = compute_dtype_of(oracle)
    if cd is None:
        return None
    narrow = cd.kind == "f" and cd.itemsize < params.dtype.itemsize
    if narrow and cd != np.float32:
        raise ArgumentError(f"the oracle's `compute_dtype` is {cd}, which zoracle does not estimate in (its params "
                            "are float32 or float64); evaluate in float32 and set compute_dtype = np.float32")
    return cd if narrow else None


def as_seen(oracle, params):
    """``params`` as ``oracle`` evaluates them: rounded to its narrower ``compute_dtype`` (a float32
    model given float64 params), where a step of mu must be representable; else ``params``."""
    narrow = _narrower_dtype(oracle, params)
    return params if narrow is None else params.astype(narrow)


def estimate_gradient(oracle: Any, params: Any, estimator: Any = None, *extra: NoReturn,
                      coordinates: Any = None, rng: Any = None, executor: Executor | None = None,
                      budget_bytes: int = DEFAULT_BUDGET, state: Any = None, **unknown: NoReturn) -> GradientEstimate:
    """Estimate the gradient of ``oracle`` at ``params`` from loss values only.

    SciPy's ``approx_fprime(xk, f, epsilon, *args)`` takes the point first: here the oracle comes
    first, the step is the estimator's (``zo.CGE(mu=epsilon)``) and extra arguments go into the oracle;
    ``*extra`` and ``**unknown`` only gather arguments it does not take, which are refused naming
    their counterpart.

    Parameters
    ----------
    oracle : callable
        ``params -> float``; capabilities (BatchOracle, CoordinateOracle, SplitOracle) are used
        when present: split > coordinate > batch > one call per query for CGE (one
        ``coordinate_losses`` call in a serial run when the oracle sets
        ``fused_coordinate_losses = True``, as ``TorchOracle`` does), batch > calls
        for RGE.
    params : array
        Flat 1-D float32/float64 NumPy or CuPy array; never modified. Tensors of other
        libraries (torch, JAX) are rejected with the conversion to use. The oracle never
        gets an array through which it could corrupt another query: a read-only view per
        query and per prefix / suffix / ``coordinate_losses`` call (one that writes into it gets
        a copy; see :class:`zoracle.Oracle`; successive
        plain-call CGE queries may get the same array object, edited in place between them:
        do not cache by identity). A ``mu``
        that is not a representable step at ``params`` (``(x + mu) - x`` zero or not
        finite in params' dtype) raises :class:`ArgumentError` before any query. An oracle
        that evaluates in a narrower float (``compute_dtype``: ``TorchOracle`` on a float32
        model given float64 params) is estimated at params rounded to it, with the steps it
        takes; the gradient comes back in params' dtype.
    estimator : CGE, RGE or SNES
        Default ``CGE()``.
    coordinates : int array or bool mask, optional
        Sparse CGE: estimate only these coordinates, exact zeros elsewhere. CGE only.
    rng : Generator, int or None
        Seeds RGE's and SNES's directions (each direction its own child seed, so a sharded run
        draws the same directions as a serial one). In a loop of your own, make one
        ``np.random.default_rng(seed)`` before it and pass it to every call: each call draws
        fresh directions, and the loop is reproducible from the seed. The same int at every
        call draws the same directions every time; None draws unseeded ones.
    executor : optional
        Runs the planned tasks (see :mod:`zoracle.executors`); serial when None.
    budget_bytes : int
        Memory for one dense chunk of perturbed parameters (BatchOracle path). A sparse CGE
        never allocates a dense ``(k, d)`` matrix beyond this budget (where fewer than two rows
        of ``d`` parameters fit it, CGE makes plain calls instead of batch calls).
    state : array, optional
        SNES only: the search widths ``sigma`` (default ``estimator.init(params)``); the
        updated ones come back as ``GradientEstimate.state``.

    Returns
    -------
    GradientEstimate
        ``grad`` (params' backend and dtype: float64 for SciPy's ``x``, a float32 model's
        dtype for its flat parameters; a new 1-D C-contiguous writable array, the caller's to
        keep, as ``scipy.optimize.minimize``'s ``jac`` and ``torch.from_numpy`` take it),
        ``loss`` at params (``jac=True``'s value), ``nfev`` (this call's queries, the base
        point's included). docs/training.md, "Using zoracle's estimates in your own loop",
        sets torch parameters' ``.grad`` from it.
    """
    refuse_foreign(estimate_gradient, oracle, params, extra, unknown, GRADIENT_HINTS)  # approx_fprime's ways
    estimator = check_estimator(estimator)
    if state is not None and not isinstance(estimator, SNES):
        raise ArgumentError(f"`state` is SNES's sigma; {type(estimator).__name__} keeps no state: drop `state`")
    wrapped = Oracle(oracle)
    wrapped.caps = usable_caps(wrapped.fn, wrapped.caps)  # fast paths refused at an earlier estimate: not used
    params = validate_params(params)
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, numbers.Integral) or budget_bytes < 1:
        raise ArgumentError(f"`budget_bytes` must be a positive integer, got {budget_bytes!r}")
    narrow = _narrower_dtype(oracle, params)
    if narrow is not None:
        # the oracle computes in a narrower float than params (a float32 model given float64
        # params): it sees params rounded, and a step of mu in params' dtype is not the step it
        # takes (below its spacing, none at all). Estimate at the params it sees, with the steps
        # it takes; the gradient comes back in params' dtype.
        est = estimate_gradient(oracle, params.astype(narrow), estimator, coordinates=coordinates, rng=rng,
                                executor=executor, budget_bytes=budget_bytes, state=state)
        return _rounded(GradientEstimate(est.grad.astype(params.dtype), est.loss, est.nfev, est.state),
                        est._rounding)
    xp = namespace(params)
    d = params.shape[0]
    params = params.copy()  # nothing the oracle does can reach the caller's array
    n_workers = _executor_workers(executor)
    reuse_freed_memory()  # repeated estimates re-allocate the same temporaries (glibc: keep them)
    if isinstance(estimator, CGE):
        coords = np.arange(d) if coordinates is None else _validate_coordinates(coordinates, d)
        if rng is not None:
            as_generator(rng)  # validate only; CGE is deterministic
        check_step(params[xp.asarray(coords)], estimator.mu, estimator.scheme, "CGE", index=coords)
        def plan():
            return plan_cge(wrapped, coords, estimator.steps, d, params.dtype.itemsize, budget_bytes, n_workers,
                            lambda: seal(params))

        tasks = [BaseTask()] + plan()
        results = _run(executor, wrapped, params, tasks)
        tasks, results = check_fast_paths(wrapped, params, tasks, results,
                                          lambda ts: _probe_run(executor, wrapped, params, ts), plan)
        f0 = float(results[0][0, 0])
        # one task's losses and coordinates as they are (a dense estimate's single task: each
        # concatenation copied 2x the float32 params' size), then the operations in place
        vals = _joined([r for r in results[1:]], axis=1)
        order = _joined([t.coords for t in tasks[1:]])
        del results, tasks
        # representable steps, computed in the caller's dtype
        x = to_numpy(params[xp.asarray(order)])
        h = (x + x.dtype.type(estimator.mu)) - x
        den = h.astype(np.float64)
        del h
        if estimator.scheme != "forward":
            den += (x - (x - x.dtype.type(estimator.mu))).astype(np.float64)
        del x
        # (O(1) to tell; once the oracle's loss values were warned of, they are not read again: no copy, no spread)
        gridded = may_be_gridded(f0) and not _values_warned(wrapped)
        # central: how far the losses differenced lie from the base loss (two near 1e69 are 0 apart), read
        # before g is written over vals[0]
        far = loss_spread(vals, f0) if gridded and estimator.scheme != "forward" else 0.0
        # the rounding of the losses differenced (read before vals[0] is written over), over the widest step:
        # no difference beyond it reads as rounding
        rounding = diff_rounding(wrapped, f0, vals) / (float(den.max()) if den.size else 1.0)
        # the losses' own array (the tasks' results, nothing else holds them) where it may be written
        # (a cluster's results may be read-only views of its object store): in place
        g = vals[0] if vals.flags.writeable else vals[0].copy()
        g -= f0 if estimator.scheme == "forward" else vals[1]
        del vals
        # the differences themselves, where the base loss may lie on a grid: read by _warn_coarse
        diffs = g.copy() if gridded else None
        g /= den
        del den
        grad = xp.zeros(d, dtype=params.dtype)
        grad[xp.asarray(order)] = xp.asarray(g, dtype=params.dtype)
        _warn_coarse(wrapped, f0, estimator.mu, params.dtype, g, diffs, lambda: to_numpy(params[xp.asarray(order)]),
                     far)
        return _rounded(GradientEstimate(grad, f0, wrapped.nfev), rounding)

    if coordinates is not None:
        raise ArgumentError("`coordinates` (sparse estimation) is only supported by CGE; use zo.CGE() or drop it")
    if isinstance(estimator, SNES):
        return _snes(wrapped, params, estimator, rng, executor, budget_bytes, state)
    gen = as_generator(rng)
    check_step(params, estimator.mu, estimator.scheme, "RGE")
    root = int(gen.integers(2**63))
    q = estimator.directions
    def plan():
        return plan_rge(wrapped, root, q, estimator.steps, estimator.distribution, d, params.dtype.itemsize,
                        budget_bytes, n_workers)

    tasks = [BaseTask()] + plan()
    results = _run(executor, wrapped, params, tasks)
    tasks, results = check_fast_paths(wrapped, params, tasks, results, lambda ts: _probe_run(executor, wrapped, params, ts),
                                      plan)
    f0 = float(results[0][0, 0])
    vals = np.concatenate([r for r in results[1:]], axis=1)
    # every difference the estimate is built from within the losses' rounding: the whole estimate is
    # rounding (each entry mixes every direction's difference, so none is judged alone otherwise). Read
    # from the losses themselves, before any ranks: ranks order losses a few units of their last place
    # apart as far apart as any, a noise step on a flat loss, which is judged as plain RGE's is
    rounding = rge_rounding(wrapped, f0, vals, estimator.scheme)
    base = f0
    if estimator.shaping == "ranks":  # NES fitness shaping: centred ranks replace the loss values
        if estimator.scheme == "forward":
            w = centered_ranks(np.concatenate([[f0], vals[0]]))
            base, vals = w[0], w[1:][None]
        else:
            vals = centered_ranks(vals.reshape(-1)).reshape(vals.shape)
    coef = vals[0] - base if estimator.scheme == "forward" else vals[0] - vals[1]
    diffs = coef.copy() if estimator.shaping != "ranks" and may_be_gridded(f0) and not _values_warned(wrapped) \
        else None
    far = loss_spread(vals, f0) if diffs is not None and estimator.scheme != "forward" else 0.0
    coef /= estimator.mu if estimator.scheme == "forward" else 2 * estimator.mu
    phi = d if estimator.distribution == "sphere" else 1.0
    (acc,) = _row_sums(root, d, estimator.distribution, budget_bytes, (coef, None))
    release_rows(root)  # summed: the cached rows (up to 64 MiB) were held until the next estimate else
    acc *= phi / q  # in place: a scaled copy beside the sum took 2x float32 params more
    if estimator.shaping != "ranks":  # ranks use the losses' order only
        # a Rademacher query moves every coordinate by exactly mu: at short params a polynomial's losses lie
        # on a grid of their own, as at CGE's queries (Gaussian and sphere steps are no short numbers)
        points = (lambda: to_numpy(params)) if estimator.distribution == "rademacher" else None
        _warn_coarse(wrapped, f0, estimator.mu, params.dtype, acc, diffs, points, far)
    grad = xp.asarray(acc, dtype=params.dtype)
    return _rounded(GradientEstimate(grad, f0, wrapped.nfev), rounding)








def _rounded(est: GradientEstimate, rounding: float) -> GradientEstimate:
    """``est`` with its ``_rounding`` (see :class:`GradientEstimate`) set."""
    object.__setattr__(est, "_rounding", float(rounding))
    return est


seal_signature(estimate_gradient)  # (its signature for help(); SciPy's fun=, x0= reach its refusal)


def _joined(parts: list, axis: int = 0):
    """``np.concatenate(parts, axis)``, or the one part itself (no copy)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)


def _warn_coarse(wrapped: Oracle, loss: float, mu: float, dtype, grad, diffs=None, points=None, far=0.0) -> None:
    """Warn when the base point's loss came back in a precision too coarse for differences over
    ``mu`` (an integer, or float32 with float64 params) against the estimate ``grad`` (NumPy, or a
    function returning it, called only when the verdict needs it):
    the estimate is quantized, silently else. On a process or cluster executor only the loss's type
    travels from the worker (a :class:`~zoracle._executors_core.LossKind`). A loss whose type passes
    (a Python float, a float32 one at float32 params) is judged by its values: the differences
    ``diffs`` (None where the base loss lies on no grid) and the base loss, on a grid coarser than
    float32's (a float16 model's ``float(loss)``, ``round(loss, 4)``, a count; see
    :func:`~zoracle._grid.coarse_grid`; ``points``: the perturbed coordinates (CGE's, or every one for
    Rademacher RGE), as a function; ``far``: the
    farthest a central scheme's perturbed loss lies from the base one)."""
    value = wrapped.base_value
    typed = value is not None and not isinstance(value, float) and precision_bits(loss_type(value)) < 53
    if not typed and diffs is None:
        return
    owner = _coarse_owner(wrapped)
    given = RUN_WARNED.get()  # the running train's record (given before a resume too), or None
    # (its keys name the oracle: another one estimated during the run, in a callback or eval_fn, is warned of
    # in its own right, and does not stand for the run's oracle)
    name = _owner_name(owner) if given is not None else ""
    seen = []

    def typical():  # O(d), once: only where the verdict needs it (not for float32 losses at float32 params)
        if not seen:
            g = grad() if callable(grad) else grad
            seen.append(float(np.median(np.abs(g))) if len(g) else 0.0)
        return seen[0]

    if typed:
        kind = f"{type(value).__module__}.{type(value).__qualname__} {getattr(value, 'dtype', '')}".rstrip()
        key = (owner, type(value), str(getattr(value, "dtype", "")))
        if key in _COARSE_WARNED or (given is not None and f"coarse {kind} of {name}" in given):
            return  # (warned of by its type: not again by its values)
        why = coarse_losses(value, loss, mu, dtype, typical, getattr(wrapped, "base_source", None))
        if why:
            _COARSE_WARNED.add(key)
            if given is not None:
                given.add(f"coarse {kind} of {name}")
            warn(f"estimate_gradient: {why}", UserWarning, stacklevel=user_stacklevel())
            return
        # (a type that passes, float32 losses at float32 params: judged by their values)
    if diffs is None or (owner, "values") in _COARSE_WARNED or (
            given is not None and f"coarse values of {name}" in given):
        return
    why = coarse_grid(loss, diffs, mu, typical, points, far)
    if why:
        _COARSE_WARNED.add((owner, "values"))
        if given is not None:
            given.add(f"coarse values of {name}")
        warn(f"estimate_gradient: {why}", UserWarning, stacklevel=user_stacklevel())


_COARSE_WARNED: set = set()
#: the warnings the running ``train`` gave (its ``run.warned``, which its checkpoint keeps, so a resumed run,
#: in a new process, gives none of them again), or None outside a run: the coarse-loss warning's keys are
#: ``"coarse values of <oracle>"`` and ``"coarse <loss type> <dtype> of <oracle>"`` (:func:`_owner_name`)
RUN_WARNED: contextvars.ContextVar = contextvars.ContextVar("zoracle_run_warned", default=None)


def _coarse_owner(wrapped: Oracle):
    """What :func:`_warn_coarse` warns once per: the oracle's class (a plain function: its code, as
    every function's class is `function`; a functools.partial: the function it wraps, as every
    partial's class is `partial`), with the loss type: every step of a run would repeat it."""
    fn = wrapped.fn
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__code__", None) or type(fn)


def _values_warned(wrapped: Oracle) -> bool:
    """Whether the oracle's loss values were warned of as lying on a grid: :func:`_warn_coarse` reads
    no differences of them again, so an estimate need not copy them nor measure their spread
    (:func:`~zoracle._grid.loss_spread`, 5-10 us of a 10-coordinate central estimate's 100)."""
    given = RUN_WARNED.get()
    return (bool(_COARSE_WARNED) and (_coarse_owner(wrapped), "values") in _COARSE_WARNED) or (
        given is not None and f"coarse values of {_owner_name(_coarse_owner(wrapped))}" in given)


def _owner_name(owner) -> str:
    """:func:`_coarse_owner`'s ``owner`` as text that a resumed run, in another process, writes alike: a
    function's file name, line and name (``run.py:12 make.<locals>.<lambda>``), a class's module and name."""
    code = getattr(owner, "co_filename", None)
    if code is not None:
        return f"{os.path.basename(code)}:{owner.co_firstlineno} {getattr(owner, 'co_qualname', owner.co_name)}"
    return f"{getattr(owner, '__module__', '')}.{getattr(owner, '__qualname__', repr(owner))}"


def _row_sums(root: int, d: int, distribution: str, budget_bytes: int, *terms) -> list:
    """``sum_i w_i f(u_i)`` over the directions ``u_i`` of ``root`` for each ``(w, f)`` in
    ``terms`` (``f`` None: ``u_i`` itself), drawing the rows a block within the budget at a time.
    The last term's ``f`` may overwrite the block it gets (a fresh array, not the cached rows; the
    terms before it read the block first): a block-sized result beside it took twice the budget."""
    n = len(terms[0][0])
    chunk = max(1, budget_bytes // (8 * d))
    sums = [np.zeros(d) for _ in terms]
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        U = direction_block(root, lo, hi, d, distribution)
        for t, (acc, (w, f)) in enumerate(zip(sums, terms)):
            if hi - lo == 1 and t == len(terms) - 1:
                # one row (every block where d >= budget_bytes / 8): its weighted row formed in the
                # row itself, the same bits as the (1,) @ (1, d) product, which took 2x float32 params more
                V = U if f is None else f(U)
                V[0] *= w[lo]
                acc += V[0]
                del V
            else:
                acc += w[lo:hi] @ (U if f is None else f(U))
        del U  # freed before the next block is drawn: two blocks held at once took twice the budget
    return sums


def _squared_less_one(Z: np.ndarray) -> np.ndarray:
    """``Z * Z - 1.0`` in place (the same bits): SNES's width sum over a block :func:`_row_sums` drew."""
    np.multiply(Z, Z, out=Z)
    Z -= 1.0
    return Z


def _snes(wrapped: Oracle, params, estimator: SNES, rng, executor, budget_bytes: int, state) -> GradientEstimate:
    xp = namespace(params)
    d = params.shape[0]
    gen = as_generator(rng)
    if state is None:
        sigma = estimator.init(params)
        check_step(params, estimator.mu, estimator.scheme, "SNES")
    else:  # an adapted sigma may fall below the floats' spacing where SNES has converged: no check
        sigma = _check_sigma(state, d)
        _check_width(params, sigma)
    root = int(gen.integers(2**63))
    n = estimator.size(d)
    reserve_rows(root, n * d * 8)  # both sums below read every sample again: keep them drawn
    tasks = plan_rge(wrapped, root, n, (1.0,), "gaussian", d, params.dtype.itemsize, budget_bytes,
                     _executor_workers(executor), scale=sigma)
    results = _run(executor, wrapped, params, tasks)
    losses = np.concatenate([r[0] for r in results])
    # every sample's loss within the losses' rounding of every other's: the utilities rank rounding alone
    # (their stable sort orders exact ties by sample), a noise step, judged as a flat RGE step is. No base
    # point: the differences SNES ranks are between its samples, their spread; at the last place of the
    # largest (all lie within a few units of it, or the step is not rounding)
    rounding = snes_rounding(wrapped, losses)
    u = nes_utilities(losses)
    move, spread = _row_sums(root, d, "gaussian", budget_bytes, (u, None), (u, _squared_less_one))
    release_rows(root)  # its reservation (up to 256 MiB) was held until the next estimate else
    grad = xp.asarray(-sigma * move, dtype=params.dtype)
    # a converged width shrinks geometrically: kept at the smallest normal float, not 0 (the
    # next step refused a sigma of 0, ending the run); one whose samples would overflow is
    # refused at the next step, against the parameters it samples around
    new_sigma = np.maximum(sigma * np.exp(0.5 * estimator.rate(d) * spread), np.finfo(np.float64).tiny)
    return _rounded(GradientEstimate(grad, finite_mean(losses), wrapped.nfev, new_sigma), rounding)




def finite_mean(values) -> float:
    """The mean of finite ``values``, finite too (``np.mean`` of losses near the float maximum
    overflows: their sum does, not their mean)."""
    with np.errstate(over="ignore"):
        m = float(np.mean(values))
    if not np.isfinite(m) and np.all(np.isfinite(values)):
        m = float(np.sum(np.asarray(values, dtype=np.float64) / len(values)))
    return m


def _check_width(params, sigma: np.ndarray) -> None:
    """Refuse SNES widths whose samples ``params + sigma z`` would overflow ``params``' dtype
    (``|z|`` up to 10): the run has diverged, and the oracle would get inf."""
    xp = namespace(params)
    if not float(xp.max(xp.abs(params))) + 10.0 * float(sigma.max()) < float(np.finfo(params.dtype).max):
        i = int(np.argmax(sigma))
        raise ArgumentError(f"SNES diverged: its sampling width sigma reached {sigma[i]:.3g} (at index {i}), where "
                            f"samples params + sigma * z overflow {params.dtype}; the loss is unbounded below along "
                            "it, or the learning rate is too high: lower it, or bound the parameters in the loss")
