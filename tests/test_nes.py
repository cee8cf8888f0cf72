"""RGE with rank shaping (natural evolution strategies) against a textbook loop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zoracle as zo
from zoracle.executors import JoblibExecutor
from zoracle.testing import QuadraticOracle


def _ranks(v):
    """Centred ranks, written out: the i-th smallest value gets i / (n - 1) - 1/2; ties share their mean."""
    v = list(map(float, v))
    n = len(v)
    out = []
    for a in v:
        below = sum(1 for b in v if b < a)
        equal = sum(1 for b in v if b == a)
        out.append((below + (equal - 1) / 2) / (n - 1) - 0.5)
    return np.array(out)


def _textbook_es(f, x, mu, q, seed, scheme):
    """OpenAI-ES's estimator as a plain loop: the same per-direction Philox stream as zoracle's RGE."""
    root = int(np.random.default_rng(seed).integers(2**63))
    U = [np.random.Generator(np.random.Philox(key=[root, i])).standard_normal(x.size) for i in range(q)]
    if scheme == "central":
        losses = [f(x + mu * u) for u in U] + [f(x - mu * u) for u in U]
        w = _ranks(losses)
        g = sum((w[i] - w[q + i]) / (2 * mu) * U[i] for i in range(q))
    else:
        losses = [f(x)] + [f(x + mu * u) for u in U]
        w = _ranks(losses)
        g = sum((w[1 + i] - w[0]) / mu * U[i] for i in range(q))
    return g / q


class CallOnly:
    def __init__(self, f):
        self.f = f

    def __call__(self, x):
        return self.f(x)


class BatchOnly(CallOnly):
    def batch(self, X):
        return np.array([self.f(x) for x in X])


@pytest.mark.parametrize("scheme", ["central", "forward"])
@pytest.mark.parametrize("wrap", [CallOnly, BatchOnly])
@given(d=st.integers(1, 12), q=st.integers(1, 9), seed=st.integers(0, 2**31), data=st.data())
@settings(max_examples=20)
def test_ranked_rge_equals_textbook_es(scheme, wrap, d, q, seed, data):
    x = np.array(data.draw(st.lists(st.floats(-3, 3), min_size=d, max_size=d)))
    c = np.array(data.draw(st.lists(st.floats(0.1, 2), min_size=d, max_size=d)))

    def f(v):
        return float(np.sum(c * (v - 0.5) ** 2) + np.sin(v).sum())

    est = zo.estimate_gradient(wrap(f), x, zo.RGE(mu=0.1, directions=q, scheme=scheme, shaping="ranks"), rng=seed)
    ref = _textbook_es(f, x, 0.1, q, seed, scheme)
    np.testing.assert_allclose(est.grad, ref, rtol=1e-12, atol=1e-12)
    assert est.loss == f(x)  # the reported loss is the loss, not its rank
    assert est.nfev == (2 * q + 1 if scheme == "central" else q + 1)


@given(seed=st.integers(0, 2**31), scale=st.floats(0.01, 100), shift=st.floats(-50, 50))
@settings(max_examples=20)
def test_ranks_ignore_any_increasing_transform_of_the_loss(seed, scale, shift):
    q = QuadraticOracle(np.diag(np.arange(1.0, 9.0)), np.ones(8))
    x = np.linspace(-1, 1, 8)
    est = zo.RGE(mu=0.05, directions=16, scheme="central", shaping="ranks")
    a = zo.estimate_gradient(q, x, est, rng=seed)
    b = zo.estimate_gradient(lambda v: np.exp(scale * q(v) / 10) + shift, x, est, rng=seed)
    np.testing.assert_array_equal(a.grad, b.grad)
    plain = zo.RGE(mu=0.05, directions=16, scheme="central")
    assert not np.allclose(zo.estimate_gradient(q, x, plain, rng=seed).grad,
                           zo.estimate_gradient(lambda v: 3.0 * q(v), x, plain, rng=seed).grad)


def test_ranked_estimate_points_downhill_on_a_linear_loss():
    a = np.linspace(-1.0, 2.0, 20)
    for scheme in ("central", "forward"):
        est = zo.estimate_gradient(lambda v: float(a @ v), np.zeros(20),
                                   zo.RGE(mu=0.1, directions=400, scheme=scheme, shaping="ranks"), rng=3)
        cos = est.grad @ a / (np.linalg.norm(est.grad) * np.linalg.norm(a))
        assert cos > 0.7, (scheme, cos)


def test_train_with_ranked_rge_and_adam_descends_and_shards_like_serial():
    q = QuadraticOracle(np.diag(np.linspace(1.0, 3.0, 40)), np.ones(40))
    x0 = np.full(40, 2.0)
    est = zo.RGE(mu=0.05, directions=20, scheme="central", shaping="ranks")
    res = zo.train(q, x0, steps_per_epoch=150, estimator=est, optimizer=zo.adam(0.05), rng=0, progress=False)
    assert q(res.params) < 0.05 * q(x0)
    assert all(r["nfev"] == 41 for r in res.history.steps)
    with JoblibExecutor(n_jobs=2, backend="threading") as ex:
        a = zo.estimate_gradient(q, x0, est, rng=5)
        b = zo.estimate_gradient(q, x0, est, rng=5, executor=ex)
    np.testing.assert_allclose(a.grad, b.grad, rtol=0, atol=1e-12)


def test_bad_shaping_and_blackbox_refusal_name_the_argument():
    with pytest.raises(zo.ArgumentError, match="shaping"):
        zo.RGE(shaping="rank")
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import blackbox

    with pytest.raises(zo.ArgumentError, match="shaping='none'"):
        blackbox(lambda x: x.sum(1), zo.RGE(scheme="central", shaping="ranks"))
    assert torch  # imported for the adapter


def test_centered_ranks_properties():
    from zoracle._estimators import centered_ranks

    v = np.array([3.0, 1.0, 2.0, 2.0, 5.0])
    w = centered_ranks(v)
    np.testing.assert_allclose(w, _ranks(v))
    assert w.min() == -0.5 and w.max() == 0.5 and abs(w.sum()) < 1e-15
    assert w[2] == w[3]


def test_nes_utilities_keep_the_order_of_tied_losses():
    """The docstring's stable order for ties: NumPy's default sort is unstable above about 16
    elements, so an unstable sort passed every test (at most 0.037 off a utility). A textbook
    loop with Python's stable ``sorted`` is the reference."""
    from zoracle._estimators import nes_utilities

    losses = np.random.default_rng(3).integers(0, 4, 40).astype(float)
    n = len(losses)
    w = [max(0.0, np.log(n / 2 + 1) - np.log(k)) for k in range(1, n + 1)]
    want = np.empty(n)
    for rank, j in enumerate(sorted(range(n), key=lambda j: losses[j])):
        want[j] = w[rank] / sum(w) - 1.0 / n
    np.testing.assert_allclose(nes_utilities(losses), want, rtol=0, atol=1e-15)
