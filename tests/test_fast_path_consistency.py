"""A fast path (``batch``, ``coordinate_losses``) whose losses disagree with the plain call's.

The estimate takes the base loss from a plain call and the perturbed losses from the fast path, so
a fast path that rounds its losses to a narrower type, computes another reduction or returns them
in another order moves every difference. The reference is the textbook forward-difference loop over
the plain call. A fast path must equal the plain computation, or the disagreement is named: in
``estimate_gradient`` (and so ``train`` and ``zo_grasp``) by the losses' types, which it compares
anyway; in ``check_oracle`` with both values and the likely cause; in a diverged run's error.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import zoracle as zo
import zoracle._estimators as est_module
from zoracle.testing import OracleCheckError, check_oracle

D = 12
_rng = np.random.default_rng(7)
A = _rng.standard_normal((30, D))
B = _rng.standard_normal(30)


def loss64(x) -> float:
    """A least-squares loss of about 100, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.sum((A @ x - B) ** 2) / 30 + 100.0)


def textbook_forward(f, x, mu):
    """Forward differences over plain calls of ``f``, each over the representable step."""
    f0 = float(f(x))
    g = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        y = x.copy()
        y[i] = y[i] + x.dtype.type(mu)
        g[i] = (float(f(y)) - f0) / float(y[i] - x[i])
    return g


def _plain(form):
    """The plain call returning float32 losses as a NumPy scalar or a 0-d torch tensor (not a Python
    float, whose type the coarse-loss check compared the fast path's with)."""
    if form == "numpy":
        return lambda x: np.float32(loss64(x))
    torch = pytest.importorskip("torch")
    return lambda x: torch.tensor(loss64(x), dtype=torch.float32)


def _narrow(form):
    """Rounds an array of losses to a narrower type than float32."""
    if form == "bfloat16":
        torch = pytest.importorskip("torch")
        return lambda v: torch.tensor(np.asarray(v, dtype=np.float32)).to(torch.bfloat16)
    return lambda v: np.asarray(v).astype(form)


def _oracle(plain, narrow, method="batch"):
    class Narrow:
        def __call__(self, x):
            return plain(x)

    if method == "batch":
        Narrow.batch = lambda self, X: narrow([float(plain(r)) for r in np.asarray(X)])
    else:
        def coordinate_losses(self, x, coords, step):
            rows = []
            for i in coords:
                y = np.array(x)
                y[i] = y[i] + x.dtype.type(step)
                rows.append(float(plain(y)))
            return narrow(rows)

        Narrow.coordinate_losses = coordinate_losses
    return Narrow()


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())  # the coarse-loss warning is given once per class


@pytest.mark.parametrize("plain_form", ["numpy", "torch"])
@pytest.mark.parametrize("narrow_form", ["bfloat16", "float16", "int32"])
def test_a_fast_path_narrower_than_a_float32_plain_call_is_warned_about(plain_form, narrow_form):
    """A batch returning bfloat16 (or float16, int) losses beside a plain call returning a NumPy or torch
    float32 scalar: the estimate was off by about 50 (bfloat16, a gradient of at most 5) with no warning,
    where beside a Python float the same batch was warned about."""
    plain = _plain(plain_form)
    x = _rng.standard_normal(D).astype(np.float32)
    want = textbook_forward(plain, x, 5e-3)
    with pytest.warns(UserWarning, match=rf"returns {narrow_form} losses \(from its `batch`, where its plain call "
                                         r"returns float32.*make `batch` compute the losses as the plain call does"):
        got = zo.estimate_gradient(_oracle(plain, _narrow(narrow_form)), x, zo.CGE(mu=5e-3)).grad
    assert np.max(np.abs(got - want)) > 0.5  # the quantization the warning is about


def test_coordinate_losses_narrower_than_the_plain_call_are_warned_about():
    plain = _plain("numpy")
    x = _rng.standard_normal(D).astype(np.float32)
    want = textbook_forward(plain, x, 5e-3)
    with pytest.warns(UserWarning, match=r"returns float16 losses \(from its `coordinate_losses`, where its plain "
                                         r"call returns float32"):
        got = zo.estimate_gradient(_oracle(plain, _narrow("float16"), "coordinate_losses"), x, zo.CGE()).grad
    assert np.max(np.abs(got - want)) > 0.5


# (the bfloat16 losses' differences at mu = 5e-3 lie within their rounding, which train's flat-epoch
# warning says too, since estimates are judged 0 to within the losses' rounding: a second true warning)
@pytest.mark.filterwarnings("ignore:train. every gradient estimate of epoch 0 .2 steps. was 0 to within")
def test_train_and_zo_grasp_warn_of_a_bfloat16_batch_beside_a_float32_plain_call():
    """Both estimate through estimate_gradient: CGE steps in train, two RGEs in zo_grasp."""
    oracle = _oracle(_plain("numpy"), _narrow("bfloat16"))
    x = np.zeros(D, dtype=np.float32)
    with pytest.warns(UserWarning, match=r"returns bfloat16 losses \(from its `batch`, where its plain call returns "
                                         r"float32"):
        zo.train(oracle, x, steps_per_epoch=2, optimizer=zo.sgd(1e-3), progress=False)
    est_module._COARSE_WARNED.clear()
    with pytest.warns(UserWarning, match=r"returns bfloat16 losses \(from its `batch`"):
        zo.zo_grasp(oracle, x, directions=8, rng=0)


class _SlowBatch:
    """A plain call returning np.float32 and a batch returning float16, which takes a while: on two
    process workers, the base point's loss type reaches the driver first."""

    def __call__(self, x):
        return np.float32(loss64(x))

    def batch(self, X):
        time.sleep(0.3)
        return np.array([loss64(r) for r in np.asarray(X)]).astype(np.float16)


@pytest.mark.slow
def test_a_process_worker_reports_a_batch_narrower_than_its_base_point():
    """On process workers only the losses' type name travels, and the driver kept the first a worker
    sent: the base point's float32 where it came first (the batch's float16 came later, and the estimate
    was as quantized as serially, without the warning). The narrowest seen now decides (whatever the
    order: the sleep only makes the one that was missed come first)."""
    from zoracle.executors import JoblibExecutor

    x = _rng.standard_normal(D).astype(np.float32)
    with JoblibExecutor(2, backend="loky") as ex:
        for _ in range(2):
            est_module._COARSE_WARNED.clear()
            with pytest.warns(UserWarning, match=r"returns float16 losses"):
                zo.estimate_gradient(_SlowBatch(), x, zo.CGE(), executor=ex)


def test_check_oracle_names_a_bfloat16_batch_rather_than_failing_to_read_it():
    """check_oracle read a bfloat16 tensor with np.asarray and reported "oracle.batch(X) raised TypeError:
    Got unsupported ScalarType BFloat16", blaming the oracle for its own conversion."""
    oracle = _oracle(_plain("torch"), _narrow("bfloat16"))
    x = _rng.standard_normal(D).astype(np.float32)
    with pytest.raises(OracleCheckError, match=r"`batch` gave [-\d.e+]+, the plain call [-\d.e+]+; `batch` returns "
                                               r"bfloat16 losses, the plain call float32: compute them as the plain"):
        check_oracle(oracle, x, step=5e-3)


class _Disagrees:
    """A float64 plain call and a batch that computes something else."""

    def __init__(self, how):
        self.how = how

    def __call__(self, x):
        return loss64(x)

    def batch(self, X):
        v = np.array([loss64(r) for r in np.asarray(X)])
        if self.how == "factor":  # a mean over 30 samples where the plain call sums them
            return v / 30
        if self.how == "offset":  # a regularizer the plain call adds and the batch leaves out
            return v - 1e-3
        if self.how == "order":
            return v[::-1].copy()
        if self.how == "float32":
            return v.astype(np.float32)
        if self.how == "noise":  # dropout left on in the batched forward
            return v + np.random.default_rng(len(v)).normal(0, 1e-4, v.shape)
        return v[:, None]  # the shape estimate_gradient takes: no disagreement


@pytest.mark.parametrize("how, why", [
    ("factor", r"`batch`'s losses are the plain calls' times 0.0333333 \(another reduction: a mean where the call "
               r"sums"),
    ("offset", r"`batch`'s losses are the plain calls' -0.001 \(a term one of them leaves out"),
    ("order", r"`batch` returns the plain calls' losses in another order: return the loss of query i at position i"),
    ("float32", r"`batch` returns float32 losses, the plain call a Python float"),
    ("noise", r"`batch` must compute the plain call's loss: not another minibatch or reduction, nor with dropout"),
])
def test_check_oracle_names_both_values_and_why_a_batch_disagrees(how, why):
    """The failure said only "deviates from a loop of calls by 0.0169"; now the row, both losses there and
    what the losses show (a factor, an offset, another order, a narrower type), with the fix. The estimate
    such a batch gives is off (the textbook loop over the plain call is the reference), with no warning:
    check_oracle is where a disagreement in value shows before training."""
    # a point of its own, not the next of the module's shared draws: whether float32 losses are coarse
    # there (their spacing over mu against the median partial) depends on the point, and the shared
    # draws on which tests ran before (torch's skip without torch); here twice coarse enough to warn
    x = np.random.default_rng(10).standard_normal(D)
    with pytest.raises(OracleCheckError, match=r"batch: \(8,\) result \(rows that move one coordinate\) deviates from "
                                               r"a loop of calls by [-\d.e+]+ \(most at row \d\): `batch` gave "
                                               r"[-\d.e+]+, the plain call [-\d.e+]+; " + why):
        check_oracle(_Disagrees(how), x, step=5e-3)
    if how == "float32":  # the one estimate_gradient sees: by the losses' types
        with pytest.warns(UserWarning, match=r"returns float32 losses \(from its `batch`, where its plain call returns "
                                             r"a Python float"):
            got = zo.estimate_gradient(_Disagrees(how), x, zo.CGE(mu=5e-3)).grad
    else:
        got = zo.estimate_gradient(_Disagrees(how), x, zo.CGE(mu=5e-3)).grad
    want = textbook_forward(loss64, x, 5e-3)
    assert np.max(np.abs(got - want)) > 1e-4


def test_a_column_of_batch_losses_agrees_with_the_plain_call():
    """(n, 1) is a shape estimate_gradient takes: the same estimate as the textbook loop, and check_oracle
    passes it (already so before; kept beside the disagreeing ones)."""
    x = _rng.standard_normal(D)
    check_oracle(_Disagrees("column"), x, step=5e-3)
    got = zo.estimate_gradient(_Disagrees("column"), x, zo.CGE(mu=5e-3)).grad
    np.testing.assert_allclose(got, textbook_forward(loss64, x, 5e-3), rtol=0, atol=1e-9)


class _Scaled:
    """A plain call and coordinate_losses that averages where the call sums."""

    def __call__(self, x):
        return loss64(x)

    def coordinate_losses(self, x, coords, step):
        out = []
        for i in coords:
            y = np.array(x)
            y[i] = y[i] + step
            out.append(loss64(y) / 30)
        return np.array(out)


def test_check_oracle_names_a_coordinate_losses_factor():
    with pytest.raises(OracleCheckError, match=r"coordinate_losses: deviates .* \(most at coordinate \d+\): "
                                               r"`coordinate_losses` gave [-\d.e+]+, the plain call [-\d.e+]+; "
                                               r"`coordinate_losses`'s losses are the plain calls' times 0.0333333"):
        check_oracle(_Scaled(), _rng.standard_normal(D), step=5e-3)


def test_a_diverged_run_names_a_batch_that_disagrees_with_the_plain_call():
    """A batch returning a mean where the plain call sums moved every CGE difference by most of the loss
    over mu: the run diverged with "lower the learning rate", which does not help. Its error now asks
    the batch at the diverged step's base point (only on the error path: nothing for a healthy run). The
    run's first estimate refuses such a batch now (tests/test_fast_path_first_check.py): this one declares
    its fast paths checked, so the error path is what sees it."""
    class ClaimsChecked(_Disagrees):
        fast_paths_checked = True

    with pytest.raises(zo.ArgumentError, match=r"training diverged.*The oracle's `batch` disagrees with its plain call "
                                               r"at the step's base point: batch\(params\[None\]\) gave [-\d.e+]+ "
                                               r"\(float64\), the plain call [-\d.e+]+; .*make `batch` compute the "
                                               r"plain call's loss"):
        zo.train(ClaimsChecked("factor"), np.zeros(D), steps_per_epoch=200, optimizer=zo.sgd(0.05), progress=False)
