r"""Randomized smoothing: predict and certify a smoothed classifier (Cohen et al., 2019).

Framework-free (NumPy and SciPy). The base classifier is any callable that maps a batch of
inputs ``(k, *shape)`` to integer labels ``(k,)`` or class scores ``(k, C)`` (argmax is
taken), e.g. :class:`zoracle.adapters.onnx.OnnxClassifier` or a denoiser followed by one.
The smoothed classifier is

.. math::
    g(x) = \arg\max_c \; P_{\delta \sim N(0, \sigma^2 I)}\big[f(x + \delta) = c\big].

:func:`certify` returns the top class and a radius ``R = sigma * Phi^-1(pA_lower)`` within
which ``g`` provably does not change (in L2), where ``pA_lower`` is the one-sided
Clopper-Pearson lower confidence bound on the top-class probability; it abstains when
``pA_lower < 1/2``. Noise samples are drawn and classified in large batches
(``batch_size`` inputs per call), across test points too (:func:`certify_batch`), so a
certificate with ``n`` samples costs about ``n / batch_size`` classifier calls.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import stats

from ._backend import is_cupy, real_numpy, same_values
from ._errors import ArgumentError, OracleError, Shown, ZoracleError, finite_real
from ._estimators import as_generator

__all__ = [
    "ABSTAIN",
    "Certificate",
    "CertificateBatch",
    "certified_accuracy",
    "certify",
    "certify_batch",
    "lower_confidence_bound",
    "predict",
    "radius",
    "sample_counts",
]

ABSTAIN = -1
"""The label :func:`predict` and :func:`certify` return when they abstain (-1)."""


# ---------------------------------------------------------------------------------------
# argument checks

def _noise_overflows(sigma: float, dtype) -> bool:
    """Whether noise of level ``sigma`` overflows ``dtype``: draws of 40 sigma and more occur."""
    return sigma * 40 > float(np.finfo(dtype).max)


def _check_int(name: str, value, minimum: int) -> int:
    top = np.iinfo(np.int64).max  # beyond, NumPy's sampling and counting raise OverflowError / TypeError deep inside
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum or value > top:
        raise ArgumentError(f"`{name}` must be an integer >= {minimum} and at most {top}, got {value!r}")
    return int(value)


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < 1:
        raise ArgumentError(f"`alpha` must be a probability in (0, 1) (e.g. 0.001), got {alpha!r}")
    return float(alpha)


def _check_sigma(sigma) -> float:
    if not finite_real(sigma) or sigma <= 0:
        raise ArgumentError(f"`sigma` must be a finite noise level > 0 (e.g. 0.25), got {sigma!r}")
    return float(sigma)


# ---------------------------------------------------------------------------------------
# the statistics
def lower_confidence_bound(n_a: Any, n: Any, alpha: float) -> Any:
    r"""One-sided Clopper-Pearson lower bound on a binomial proportion.

    .. math:: \underline{p_A} = \mathrm{Beta}^{-1}(\alpha;\, n_A,\, n - n_A + 1)

    which is exceeded by the true proportion with probability at least ``1 - alpha``; it is
    0 when ``n_a == 0``.

    Parameters
    ----------
    n_a : int or int array
        Successes (noise samples classified as the top class), ``0 <= n_a <= n``.
    n : int or int array
        Trials.
    alpha : float
        Failure probability in (0, 1).

    Returns
    -------
    float or float array

    Examples
    --------
    >>> from zoracle.smoothing import lower_confidence_bound
    >>> round(float(lower_confidence_bound(100, 100, 0.001)), 4)  # = 0.001 ** (1 / 100)
    0.9333
    """
    alpha = _check_alpha(alpha)
    n_a_arr = np.asarray(n_a)
    n_arr = np.asarray(n)
    if n_a_arr.dtype.kind not in "iu" or n_arr.dtype.kind not in "iu":
        raise ArgumentError(f"`n_a` and `n` must be integer counts, got {n_a!r} and {n!r}")
    try:
        np.broadcast_shapes(n_a_arr.shape, n_arr.shape)
    except ValueError:
        raise ArgumentError(f"`n_a` and `n` must have the same shape (or one be a scalar), got shapes "
                            f"{n_a_arr.shape} and {n_arr.shape}") from None
    if np.any(n_arr < 1) or np.any(n_a_arr < 0) or np.any(n_a_arr > n_arr):
        raise ArgumentError(f"counts must satisfy 0 <= n_a <= n and n >= 1, got n_a={n_a!r}, n={n!r}")
    a = n_a_arr.astype(np.float64)
    b = (n_arr - n_a_arr + 1).astype(np.float64)
    with np.errstate(invalid="ignore"):
        bound = stats.beta.ppf(alpha, np.where(a > 0, a, 1.0), b)
    bound = np.where(a > 0, bound, 0.0)
    return float(bound) if bound.ndim == 0 else bound


def radius(n_a: Any, n: Any, alpha: float, sigma: float) -> Any:
    r"""Certified L2 radius ``sigma * Phi^-1(pA_lower)`` from top-class counts.

    ``pA_lower`` is :func:`lower_confidence_bound` of ``n_a`` top-class counts out of ``n``
    samples at failure probability ``alpha``; ``sigma`` is the noise level. The value is negative (``-inf`` when
    ``n_a == 0``) exactly when ``pA_lower < 1/2``: :func:`certify` abstains there. More
    agreeing samples never shrink the radius (it is nondecreasing in ``n_a``).

    Examples
    --------
    >>> from zoracle.smoothing import radius
    >>> round(float(radius(1000, 1000, 0.001, 0.25)), 4)
    0.6158
    """
    sigma = _check_sigma(sigma)
    p = lower_confidence_bound(n_a, n, alpha)
    with np.errstate(divide="ignore"):
        r = sigma * stats.norm.ppf(p)
    return float(r) if np.ndim(r) == 0 else r


def certified_accuracy(radii: Any, correct: Any, r_grid: Any = (0.0, 0.25, 0.5, 0.75)) -> np.ndarray:
    """Share of points predicted correctly with a certified radius ``>= r``, for each ``r``.

    Parameters
    ----------
    radii : float array (m,)
        Certified radii; NaN (or any negative value) for abstentions.
    correct : bool array (m,)
        Whether the smoothed prediction equals the label (False for abstentions).
    r_grid : sequence of float
        Radii at which to report.

    Returns
    -------
    float array (len(r_grid),)

    Examples
    --------
    >>> import numpy as np
    >>> from zoracle.smoothing import certified_accuracy
    >>> certified_accuracy([0.3, np.nan, 0.8, 0.1], [True, False, True, False], [0, 0.5]).tolist()
    [0.5, 0.25]
    """
    # (torch tensors, bfloat16 ones too, whose NumPy conversion raised TypeError: read exactly)
    radii = np.asarray(real_numpy(radii, np.float64), dtype=np.float64).reshape(-1)
    given = getattr(correct, "dtype", None)  # (named as passed: a torch dtype, bfloat16's read as float64)
    correct = real_numpy(correct, np.float64).reshape(-1)
    if correct.dtype != bool:
        shown = given if given is not None else correct.dtype
        raise ArgumentError(f"`correct` must be a boolean array, got dtype {shown}; use preds == labels")
    if radii.shape != correct.shape:
        raise ArgumentError(f"`radii` and `correct` must have the same length, got {radii.shape} and {correct.shape}")
    if radii.size == 0:
        raise ArgumentError("`radii` is empty; certify at least one point")
    grid = np.asarray(real_numpy(r_grid, np.float64), dtype=np.float64).reshape(-1)
    ok = correct & ~np.isnan(radii)
    with np.errstate(invalid="ignore"):
        return np.array([np.mean(ok & (radii >= r)) for r in grid])


# ---------------------------------------------------------------------------------------
# sampling
def _labels(out, k: int, num_classes: int | None, sample_of=None) -> np.ndarray:
    """The classifier's output for ``k`` noisy inputs as ``k`` int64 labels, or :class:`OracleError`.

    Accepted: ``(k,)`` integer labels, a ``(k, 1)`` integer label column, or ``(k, C)``
    floating-point scores (argmax) with ``C == num_classes``, no NaN or +inf and one score above -inf a row.
    ``sample_of(j)`` names row ``j`` of the batch in errors.
    """
    what = f"a batch of {k} noisy inputs"
    arr = real_numpy(out, np.float32)  # (bfloat16 and float8 scores, as autocast or JAX give them: exact in float32)
    shown = Shown(f"array of shape {arr.shape}, dtype {arr.dtype}")
    want = f"the classifier must return {k} integer labels (shape ({k},)) or a ({k}, C) float score array"
    if arr.dtype.kind not in "iuf":
        raise OracleError(what, shown, detail=want)
    if arr.ndim == 2 and arr.shape == (k, 1) and arr.dtype.kind in "iu":
        arr = arr.reshape(k)
    if arr.ndim == 2:
        if arr.shape[0] != k or arr.dtype.kind != "f":
            raise OracleError(what, shown, detail=want + " (labels of the wrong length or layout, e.g. an argmax "
                                                          "over the batch axis instead of the class axis)")
        if num_classes is not None and arr.shape[1] != num_classes:
            raise OracleError(what, shown, detail=f"scores must have one column per class ({num_classes})")
        # -inf is a log-probability of 0 (log_softmax of a confident model); NaN, +inf (an
        # overflow: ties vote for the first), or no score above -inf has no highest class
        ok = ~(np.isnan(arr) | np.isposinf(arr)).any(axis=1) & (arr.max(axis=1) > -np.inf)
        if not ok.all():
            j = int(np.flatnonzero(~ok)[0])
            name = sample_of(j) if sample_of is not None else f"row {j} of {what}"
            raise OracleError(name, _row(arr[j]), detail=f"scores must not be NaN or +inf and must have one above "
                                                            f"-inf ({int((~ok).sum())} of {k} rows in this batch do not)")
        arr = arr.argmax(axis=1)
    elif arr.shape != (k,) or arr.dtype.kind not in "iu":
        raise OracleError(what, shown, detail=want)
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or (num_classes is not None and arr.max() >= num_classes)):
        bad = np.flatnonzero((arr < 0) | (arr >= num_classes if num_classes is not None else False))
        j = int(bad[0])
        raise OracleError(sample_of(j) if sample_of is not None else f"row {j} of {what}", int(arr[j]),
                          detail=f"labels must lie in [0, {num_classes}) ({bad.size} of {k} rows in this batch do not)")
    return arr


def _row(scores) -> str:
    r = np.array2string(np.asarray(scores), precision=4, threshold=8)
    return Shown(r if len(r) < 120 else r[:117] + "...")


def _host(x) -> np.ndarray:
    """``x`` as a NumPy array; a CuPy array refused naming the copy to make (np.asarray's raw TypeError
    named neither the argument nor the fix)."""
    if is_cupy(x):
        raise ArgumentError("`x` is a CuPy array; zoracle.smoothing draws its noise with NumPy on the host: pass "
                            "cupy.asnumpy(x), and move each noisy batch to the GPU inside the classifier "
                            "(cupy.asarray(batch))")
    return np.asarray(x)


def _points(x) -> np.ndarray:
    """``x`` as a float32 or float64 array of points along axis 0 (integers become float32)."""
    x = _host(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ArgumentError(f"`x` must hold at least one point along axis 0, got shape {x.shape}")
    if x.size == 0:  # points with no features (certify(np.zeros(0)) certified one)
        raise ArgumentError(f"`x` must hold points with at least one feature, got shape {x.shape}")
    if x.ndim == 1 and x.shape[0] > 1:  # one flat point, or many scalar points? (one 64-pixel point ran as 64)
        raise ArgumentError(f"`x` of shape {x.shape} is ambiguous: points go along axis 0, so it would be "
                            f"{x.shape[0]} scalar points; pass x[None] for one point (or use certify / predict), "
                            "or x[:, None] for scalar points")
    if x.dtype.kind in "iub":
        return x.astype(np.float32)
    if x.dtype.kind == "f" and not x.dtype.isnative:  # big-endian (FITS, netCDF loaders): the same numbers
        x = x.astype(x.dtype.newbyteorder("="))
    if x.dtype not in (np.float32, np.float64):  # float16, complex: no Gaussian noise in that dtype
        raise ArgumentError(f"`x` must be real with dtype float32 or float64 (or integers), got {x.dtype}; "
                            "use x.astype(np.float32)")
    return x


def _check_points_fit(classifier, x: np.ndarray) -> None:
    """Points of the shape a classifier that declares its input as
    :class:`~zoracle.adapters.onnx.OnnxClassifier` does (``input_name``, and ``input_shape``
    with the batch axis first) takes; the classifier's own
    error named the shape of the noise batch, which the caller never built."""
    shape = getattr(classifier, "input_shape", None)
    if not isinstance(shape, tuple) or not shape or getattr(classifier, "input_name", None) is None:
        return  # (only an input declared as OnnxClassifier does: another `input_shape` may lack the batch axis)
    want = shape[1:]
    if len(want) != x.ndim - 1 or any(isinstance(w, numbers.Integral) and w != g for w, g in zip(want, x.shape[1:])):
        shown = "(" + ", ".join("?" if not isinstance(w, numbers.Integral) else str(w) for w in want) + \
            ("," if len(want) == 1 else "") + ")"
        raise ArgumentError(f"the classifier takes points of shape {shown} (its input without the batch axis), got "
                            f"points of shape {tuple(x.shape[1:])}: certify and predict take one point (x[0] of a "
                            "batch), certify_batch and sample_counts a batch of points")


def _check_budget(classifier, need: int) -> None:
    """Refuse a run the classifier's query budget cannot finish (``remaining``, as
    :class:`~zoracle.adapters.onnx.OnnxClassifier` has), before its first query: a
    certificate that runs out midway spends its queries and returns nothing."""
    left = getattr(classifier, "remaining", None)
    if isinstance(left, numbers.Integral) and not isinstance(left, bool) and need > left:
        raise ArgumentError(f"this needs {need:,} classifier queries, but the classifier's budget has {int(left):,} "
                            "left (classifier.remaining): raise its budget, or lower n / n0 or the number of points")


def _check_n_can_certify(n: int, alpha: float, n_name: str = "`n`", alpha_name: str = "`alpha`") -> None:
    """Refuse an ``n`` with which even ``n_A = n`` gives ``pA_lower = alpha ** (1/n) < 1/2``: every point
    would abstain, after its ``n0 + n`` queries."""
    if lower_confidence_bound(n, n, alpha) >= 0.5:
        return
    least = max(1, int(np.floor(np.log2(1 / alpha))) - 1)
    while lower_confidence_bound(least, least, alpha) < 0.5:  # nondecreasing in n: the first is the smallest
        least += 1
    raise ArgumentError(f"{n_name}={n} cannot certify at {alpha_name}={alpha:g}: even if all {n} samples agree, "
                        f"pA_lower = {lower_confidence_bound(n, n, alpha):.4f} < 1/2, so every point would abstain; "
                        f"pass {n_name.strip('`')} >= {least} at this alpha (or a larger alpha)")


def sample_counts(classifier: Callable, x, num: int, sigma: float, *, num_classes: int,
                  batch_size: int = 10_000, rng=None) -> np.ndarray:
    """Class counts of ``classifier(x_i + delta)`` over ``num`` Gaussian draws per point.

    Parameters
    ----------
    classifier : callable
        ``(k, *shape) -> (k,) labels or (k, C) scores``.
    x : array (m, *shape)
        Points; noise is drawn in ``x``'s float dtype.
    num : int
        Noise samples per point.
    sigma : float
        Noise standard deviation.
    num_classes : int
        Number of classes C.
    batch_size : int
        Noisy inputs per classifier call; samples of several points share a call.
    rng : Generator, int or None

    Returns
    -------
    int64 array (m, num_classes)
    """
    _check_classifier(classifier)
    sigma = _check_sigma(sigma)
    num = _check_int("num", num, 1)
    num_classes = _infer_classes(classifier, x, num_classes, required=True)  # a declared num_classes it contradicts: refused
    batch_size = _check_int("batch_size", batch_size, 1)
    gen = as_generator(rng)
    x = _points(x)
    if not np.isfinite(x).all():
        raise ArgumentError("`x` must be finite, got a NaN or inf entry")
    if _noise_overflows(sigma, x.dtype):
        raise ArgumentError(f"`sigma`={sigma!r} is beyond {x.dtype}'s range (max {float(np.finfo(x.dtype).max):.3g}): "
                            "its noisy inputs would be inf; use a smaller sigma, or float64 points")
    _check_points_fit(classifier, x)
    m = x.shape[0]
    _check_budget(classifier, m * num)
    counts = np.zeros((m, num_classes), dtype=np.int64)
    total = m * num
    # walk the flattened (point, sample) grid in chunks of batch_size noisy inputs
    for lo in range(0, total, batch_size):
        hi = min(total, lo + batch_size)
        owner = np.arange(lo, hi) // num
        noisy = x[owner] + gen.standard_normal((hi - lo,) + x.shape[1:], dtype=x.dtype) * x.dtype.type(sigma)
        try:
            out = classifier(noisy)
        except ZoracleError:  # the classifier's own report (an ONNX query budget spent): as it is
            raise
        except Exception as exc:  # which points' noise it failed on, the cause kept
            raise OracleError(f"a batch of {hi - lo} noisy inputs (points {int(owner[0])}-{int(owner[-1])})",
                              cause=exc) from exc
        labels = _labels(out, hi - lo, num_classes,
                         lambda j, lo=lo: f"noise sample {(lo + j) % num} of point {(lo + j) // num}")
        np.add.at(counts, (owner, labels), 1)
    return counts


# ---------------------------------------------------------------------------------------
# predict / certify
@dataclass(frozen=True)
class Certificate:
    """Result of :func:`certify` for one point.

    Attributes
    ----------
    prediction : int
        The smoothed classifier's class, or ``ABSTAIN`` (-1).
    radius : float
        Certified L2 radius; NaN when abstaining.
    p_lower : float
        Lower confidence bound on the top-class probability.
    n_a : int
        Of the ``n`` estimation samples, how many the base classifier put in the top class.
    n : int
        Estimation samples.
    """

    prediction: int
    radius: float
    p_lower: float
    n_a: int
    n: int

    def __eq__(self, other):
        """Field by field, a NaN radius (an abstention) equal to a NaN: the generated ``==`` made an
        abstaining certificate unequal to its copy, and ``cb[i] != cb[i]``."""
        if not isinstance(other, Certificate):
            return NotImplemented
        return all(a == b or (a != a and b != b) for a, b in zip(self._fields(), other._fields()))

    def __hash__(self):  # (equal certificates hash alike: a NaN's own hash is its identity's)
        return hash(tuple(None if v != v else v for v in self._fields()))

    def _fields(self) -> tuple:
        return (self.prediction, self.radius, self.p_lower, self.n_a, self.n)

    @property
    def abstained(self) -> bool:
        """Whether the prediction is ``ABSTAIN``."""
        return self.prediction == ABSTAIN


@dataclass(frozen=True)
class CertificateBatch:
    """Result of :func:`certify_batch`: one entry per point, as arrays.

    ``predictions`` (int, ``ABSTAIN`` = -1), ``radii`` (NaN when abstaining), ``p_lower``,
    ``n_a``; ``n`` estimation samples per point; ``queries`` classifier evaluations in all
    (``m * (n0 + n)``).
    """

    predictions: np.ndarray
    radii: np.ndarray
    p_lower: np.ndarray
    n_a: np.ndarray
    n: int
    queries: int

    def __eq__(self, other):
        """Field by field, arrays by value, NaN radii equal (the generated ``==`` raised NumPy's
        ValueError on the arrays of a copied or reloaded batch)."""
        if not isinstance(other, CertificateBatch):
            return NotImplemented
        return all(same_values(getattr(self, f), getattr(other, f))
                   for f in ("predictions", "radii", "p_lower", "n_a", "n", "queries"))

    @property
    def abstain_rate(self) -> float:
        """The share of points whose prediction is ``ABSTAIN``."""
        return float(np.mean(self.predictions == ABSTAIN))

    def correct(self, labels) -> np.ndarray:
        """Boolean array: prediction equals label (False where abstaining), one of ``labels`` per point."""
        labels = real_numpy(labels, np.float64).reshape(-1)  # (a torch tensor's, bfloat16 too)
        if labels.shape != self.predictions.shape:  # one label would broadcast to every point
            raise ArgumentError(f"`labels` must hold one label per point ({self.predictions.size}), got {labels.size}")
        return self.predictions == labels

    def certified_accuracy(self, labels: Any, r_grid: Any = (0.0, 0.25, 0.5, 0.75)) -> np.ndarray:
        """:func:`certified_accuracy` of these certificates against ``labels`` (one per point) at
        the radii of ``r_grid``."""
        return certified_accuracy(self.radii, self.correct(labels), r_grid)

    def __len__(self) -> int:
        return int(self.predictions.shape[0])

    def __getitem__(self, i):
        """Point ``i``'s :class:`Certificate`; a slice or an index array, the batch of those points
        (its ``queries`` theirs: ``n0 + n`` each)."""
        if isinstance(i, numbers.Integral) and not isinstance(i, (bool, np.bool_)):
            return Certificate(int(self.predictions[i]), float(self.radii[i]), float(self.p_lower[i]),
                               int(self.n_a[i]), self.n)
        why = ""
        try:
            idx = None if isinstance(i, (bool, np.bool_)) else np.arange(len(self))[i]
        except (IndexError, TypeError, ValueError) as exc:  # out of range, a mask of another length: NumPy says
            idx, why = None, f" ({exc})"
        if idx is not None and idx.ndim == 0:  # a 0-d integer array: one point
            return self[int(idx)]
        if idx is None or idx.ndim != 1:
            raise ArgumentError(f"a CertificateBatch of {len(self)} points is indexed by an int, a slice, or a 1-D "
                                f"index or boolean array, got {i!r}{why}")
        per_point = self.queries // max(1, len(self))
        return CertificateBatch(self.predictions[idx], self.radii[idx], self.p_lower[idx], self.n_a[idx], self.n,
                                per_point * idx.size)


def _check_classifier(classifier) -> None:
    if not callable(classifier):
        raise ArgumentError(f"`classifier` must be callable: a batch of inputs (k, ...) -> (k,) labels or (k, C) "
                            f"scores, got {type(classifier).__name__} {classifier!r}")


def _infer_classes(classifier, x, num_classes, required=False):
    _check_classifier(classifier)
    n = getattr(classifier, "num_classes", None)
    if num_classes is not None:
        num_classes = _check_int("num_classes", num_classes, 2)
        if isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 2 and n != num_classes:
            raise ArgumentError(f"`num_classes`={num_classes}, but the classifier has {int(n)} classes "
                                f"(classifier.num_classes): pass num_classes={int(n)}"
                                + ("" if required else ", or leave it out"))  # (sample_counts requires it)
        return num_classes
    if isinstance(n, numbers.Integral) and n >= 2:
        return int(n)
    raise ArgumentError("`num_classes` is required (the classifier has no integer `num_classes` attribute)")


def certify_batch(classifier: Callable, x, *, sigma: float, n0: int = 100, n: int = 100_000,
                  alpha: float = 0.001, num_classes: int | None = None, batch_size: int = 10_000,
                  rng=None) -> CertificateBatch:
    """CERTIFY (Cohen et al., 2019) for each point of ``x``, noise batched across points.

    For each point: ``n0`` noisy samples choose the top class ``c``; ``n`` fresh samples
    count ``n_A`` = how many the base classifier puts in ``c``;
    ``pA_lower = Beta^-1(alpha; n_A, n - n_A + 1)``; abstain if ``pA_lower < 1/2``, else
    return ``c`` with radius ``sigma * Phi^-1(pA_lower)``. With probability at least
    ``1 - alpha`` each returned certificate is correct.

    Parameters
    ----------
    classifier : callable
        ``(k, *shape) -> (k,) labels or (k, C) scores``.
    x : array (m, *shape)
        Points to certify (one leading point axis).
    sigma, n0, n, alpha
        Noise level, selection samples, estimation samples, failure probability.
    num_classes : int, optional
        Defaults to ``classifier.num_classes`` when present.
    batch_size : int
        Noisy inputs per classifier call.
    rng : Generator, int or None

    Returns
    -------
    CertificateBatch
    """
    sigma = _check_sigma(sigma)
    n0 = _check_int("n0", n0, 1)
    n = _check_int("n", n, 1)
    alpha = _check_alpha(alpha)
    x = _points(x)
    num_classes = _infer_classes(classifier, x, num_classes)
    _check_points_fit(classifier, x)
    _check_budget(classifier, x.shape[0] * (n0 + n))  # both phases: the first alone could pass
    _check_n_can_certify(n, alpha)
    gen = as_generator(rng)
    c0 = sample_counts(classifier, x, n0, sigma, num_classes=num_classes, batch_size=batch_size, rng=gen)
    top = c0.argmax(axis=1)
    c1 = sample_counts(classifier, x, n, sigma, num_classes=num_classes, batch_size=batch_size, rng=gen)
    n_a = c1[np.arange(x.shape[0]), top]
    p_lower = np.asarray(lower_confidence_bound(n_a, np.full_like(n_a, n), alpha), dtype=np.float64).reshape(-1)
    certified = p_lower >= 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        radii = np.where(certified, sigma * stats.norm.ppf(p_lower), np.nan)
    preds = np.where(certified, top, ABSTAIN).astype(np.int64)
    return CertificateBatch(preds, radii, p_lower, n_a, n, x.shape[0] * (n0 + n))


def certify(classifier: Callable, x, *, sigma: float, n0: int = 100, n: int = 100_000,
            alpha: float = 0.001, num_classes: int | None = None, batch_size: int = 10_000,
            rng=None) -> Certificate:
    """CERTIFY one point ``x`` (no leading point axis); see :func:`certify_batch`.

    ``classifier``, ``sigma``, ``n0``, ``n``, ``alpha``, ``num_classes``, ``batch_size`` and
    ``rng`` are as there; returns the point's :class:`Certificate`.

    Examples
    --------
    >>> import numpy as np
    >>> from zoracle.smoothing import certify
    >>> sign = lambda z: (z.reshape(len(z), -1).sum(axis=1) > 0).astype(int)
    >>> c = certify(sign, np.array([1.0]), sigma=0.5, n0=100, n=2000, num_classes=2, rng=0)
    >>> c.prediction, c.radius > 0.5
    (1, True)
    """
    x = _host(x)
    return certify_batch(classifier, x[None], sigma=sigma, n0=n0, n=n, alpha=alpha, num_classes=num_classes,
                         batch_size=batch_size, rng=rng)[0]


def predict(classifier: Callable, x, *, sigma: float, n: int = 100_000, alpha: float = 0.001,
            num_classes: int | None = None, batch_size: int = 10_000, rng=None) -> int:
    """PREDICT (Cohen et al., 2019): the smoothed class of one point ``x``, or ``ABSTAIN``.

    Draws ``n`` noisy samples; with top two counts ``n_A >= n_B`` it returns the top class
    when a two-sided binomial test of ``n_A`` out of ``n_A + n_B`` against 1/2 has p-value
    ``<= alpha``, else abstains. The probability of returning a class other than ``g(x)``
    is at most ``alpha``. ``classifier``, ``sigma``, ``num_classes``, ``batch_size`` (noisy
    inputs per classifier call) and ``rng`` are as in :func:`certify_batch`.

    Examples
    --------
    >>> import numpy as np
    >>> from zoracle.smoothing import predict
    >>> sign = lambda z: (z.reshape(len(z), -1).sum(axis=1) > 0).astype(int)
    >>> predict(sign, np.array([2.0]), sigma=0.5, n=500, num_classes=2, rng=0)
    1
    """
    sigma = _check_sigma(sigma)
    n = _check_int("n", n, 1)
    alpha = _check_alpha(alpha)
    if stats.binomtest(n, n, 0.5).pvalue > alpha:  # even n of n samples agreeing: every call would abstain
        least = next(k for k in range(1, 2000) if stats.binomtest(k, k, 0.5).pvalue <= alpha)
        raise ArgumentError(f"`n`={n} cannot predict at `alpha`={alpha:g}: even if all {n} samples agree, the "
                            f"two-sided test's p-value is {stats.binomtest(n, n, 0.5).pvalue:.3g} > alpha, so it "
                            f"would abstain; pass n >= {least} at this alpha (or a larger alpha)")
    x = _host(x)
    num_classes = _infer_classes(classifier, x, num_classes)
    counts = sample_counts(classifier, x[None], n, sigma, num_classes=num_classes, batch_size=batch_size,
                           rng=as_generator(rng))[0]
    order = np.argsort(counts, kind="stable")[::-1]
    n_a, n_b = int(counts[order[0]]), int(counts[order[1]])
    if stats.binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
        return ABSTAIN
    return int(order[0])
