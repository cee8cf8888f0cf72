"""SNES (separable natural evolution strategies) against a textbook loop and EvoTorch's update."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zoracle as zo
from zoracle.executors import JoblibExecutor
from zoracle.testing import QuadraticOracle

from test_nes import BatchOnly, CallOnly  # noqa: E402  (one capability each, shared with the NES tests)


def _samples(seed, n, d):
    """The z_i zoracle draws for ``rng=seed``: one Philox stream per sample, as RGE's directions."""
    root = int(np.random.default_rng(seed).integers(2**63))
    return np.array([np.random.Generator(np.random.Philox(key=[root, i])).standard_normal(d) for i in range(n)])


def _textbook_snes(f, x, sigma, n, seed, eta):
    """One SNES generation written out (Schaul et al. 2011, minimising f): returns (new x, new sigma, losses)."""
    Z = _samples(seed, n, x.size)
    losses = [f(x + sigma * z) for z in Z]
    order = sorted(range(n), key=lambda i: (losses[i], i))  # best (lowest) first
    w = [max(0.0, math.log(n / 2 + 1) - math.log(k + 1)) for k in range(n)]
    util = [0.0] * n
    for k, i in enumerate(order):
        util[i] = w[k] / sum(w) - 1.0 / n
    new_x = x + sum(util[i] * sigma * Z[i] for i in range(n))
    new_sigma = sigma * np.exp(eta / 2 * sum(util[i] * (Z[i] ** 2 - 1) for i in range(n)))
    return new_x, new_sigma, losses


@pytest.mark.parametrize("wrap", [CallOnly, BatchOnly])
@given(d=st.integers(1, 12), n=st.integers(2, 12), seed=st.integers(0, 2**31), data=st.data())
@settings(max_examples=25)
def test_snes_step_equals_textbook_loop(wrap, d, n, seed, data):
    x = np.array(data.draw(st.lists(st.floats(-3, 3), min_size=d, max_size=d)))
    sigma = np.array(data.draw(st.lists(st.floats(0.01, 2.0), min_size=d, max_size=d)))
    A = np.diag(np.arange(1.0, d + 1))

    def f(v):
        return float(v @ A @ v + np.sin(3 * v).sum())

    est = zo.SNES(mu=0.3, population=n)
    g = zo.estimate_gradient(wrap(f), x, est, rng=seed, state=sigma)
    new_x, new_sigma, losses = _textbook_snes(f, x, sigma, n, seed, est.rate(d))
    # zo.sgd(1.0) on the estimate is SNES's centre update
    step, _ = zo.sgd(1.0).update(g.grad, zo.sgd(1.0).init(x), x)
    np.testing.assert_allclose(step, new_x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.state, new_sigma, rtol=1e-12)
    assert g.nfev == n
    assert g.loss == pytest.approx(np.mean(losses), rel=1e-12)


@given(n=st.integers(2, 40), data=st.data())
@settings(max_examples=40)
def test_nes_utilities_sum_to_zero_and_ignore_monotone_transforms(n, data):
    from zoracle._estimators import nes_utilities

    v = np.array(data.draw(st.lists(st.integers(-10**6, 10**6), min_size=n, max_size=n, unique=True)), dtype=float)
    u = nes_utilities(v)
    assert abs(u.sum()) < 1e-12
    assert u[np.argmin(v)] == u.max() and u[np.argmax(v)] == u.min()
    np.testing.assert_array_equal(nes_utilities(np.cbrt(v) * 7 + 1), u)  # a strictly increasing map


evotorch = pytest.importorskip("evotorch", reason="EvoTorch is the `bench` extra")


@pytest.mark.parametrize("d,n", [(5, 8), (40, 23), (300, 100)])
def test_snes_update_matches_evotorch(d, n):
    """EvoTorch's own SNES pieces (NES ranking, ExpSeparableGaussian) on zoracle's samples give the same update."""
    import torch
    from evotorch.distributions import ExpSeparableGaussian
    from evotorch.tools.ranking import nes

    rng = np.random.default_rng(d)
    x, sigma = rng.normal(size=d), rng.uniform(0.05, 0.5, size=d)
    oracle = QuadraticOracle(np.diag(rng.uniform(0.5, 3.0, size=d)), b=rng.normal(size=d))
    est = zo.SNES(mu=0.1, population=n)
    g = zo.estimate_gradient(oracle, x, est, rng=11, state=sigma)

    Z = _samples(11, n, d)
    samples = torch.from_numpy(x + sigma * Z)
    fitness = torch.tensor([oracle(s.numpy()) for s in samples], dtype=torch.float64)
    dist = ExpSeparableGaussian({"mu": torch.from_numpy(x), "sigma": torch.from_numpy(sigma)}, dtype=torch.float64)
    grads = dist._compute_gradients(samples, nes(fitness, higher_is_better=False), "nes")
    # EvoTorch's SNES default stdev learning rate is the paper's, the same as zoracle's
    new = dist.update_parameters(grads, learning_rates={"mu": 1.0, "sigma": 0.2 * (3 + math.log(d)) / math.sqrt(d)})
    np.testing.assert_allclose(x - g.grad, new.mu.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.state, new.sigma.numpy(), rtol=1e-10)


def test_snes_defaults_are_the_papers():
    est = zo.SNES()
    assert est.size(1000) == 4 + int(3 * math.log(1000)) == 24
    assert est.rate(1000) == pytest.approx(0.2 * (3 + math.log(1000)) / math.sqrt(1000))
    np.testing.assert_array_equal(est.init(np.zeros(3)), [0.1, 0.1, 0.1])


def test_snes_estimate_is_the_same_with_executors_and_float32():
    oracle = QuadraticOracle(np.diag(np.arange(1.0, 31.0)), b=np.ones(30))
    x = np.linspace(-1, 1, 30)
    est = zo.SNES(mu=0.2, population=17)
    serial = zo.estimate_gradient(oracle, x, est, rng=5)
    with JoblibExecutor(n_jobs=2, backend="loky") as ex:  # tasks (and sigma) pickled to worker processes
        par = zo.estimate_gradient(oracle, x, est, rng=5, executor=ex)
    np.testing.assert_array_equal(serial.grad, par.grad)
    np.testing.assert_array_equal(serial.state, par.state)
    g32 = zo.estimate_gradient(oracle, x.astype(np.float32), est, rng=5)
    assert g32.grad.dtype == np.float32 and g32.state.dtype == np.float64
    np.testing.assert_allclose(g32.grad, serial.grad, rtol=1e-4, atol=1e-5)


def test_snes_loss_is_the_finite_mean_of_finite_losses_near_the_float_maximum():
    """GradientEstimate.loss is the mean of the population's losses: finite losses of about 0.9e308
    summed to inf, and train recorded every step's and epoch's loss as "inf" (the epoch mean
    already avoided the overflow)."""
    big = np.finfo(np.float64).max / 2

    def f(x):
        return float(big + 1e290 * float(x @ x))

    est = zo.SNES(mu=0.1, population=6)
    losses = []
    g = zo.estimate_gradient(lambda x: losses.append(f(x)) or losses[-1], np.ones(3), est, rng=0)
    assert np.isfinite(g.loss) and g.loss == pytest.approx(sum(v / len(losses) for v in losses), rel=1e-12)
    # (its samples' losses, near 9e307, move by less than a unit of float64's last place there, 2e291: each
    # estimate is rounding, which the every-estimate-0 check says)
    with pytest.warns(UserWarning, match=r"every gradient estimate of epoch 0 \(2 steps\) was 0 to within the "
                                         r"loss's rounding"):
        res = zo.train(f, np.ones(3), steps_per_epoch=2, estimator=est, optimizer=zo.sgd(0.0), rng=0,
                       progress=False)
    assert np.isfinite(res.history.column("loss")).all() and np.isfinite(res.history.column("loss", "epoch")).all()


def _sphere(x):
    return float(((x - 1.0) ** 2).sum())


def test_train_with_snes_converges_and_adapts_sigma():
    res = zo.train(_sphere, np.zeros(20), steps_per_epoch=400, estimator=zo.SNES(mu=0.5, population=20),
                   optimizer=zo.sgd(1.0), rng=0, progress=False)
    assert _sphere(res.params) < 1e-6  # from 20.0
    assert res.nfev == 400 * 20
    assert res.estimator_state.shape == (20,) and res.estimator_state.max() < 0.05  # sigma shrank near the optimum
    mu = res.history.column("mu")
    # the history's mu is the mean sigma each step sampled with: the start width first (it was the
    # width after the step's update), then shrinking
    assert mu[0] == 0.5 and mu[-1] < 0.05 and mu[-1] != res.estimator_state.mean()


def test_train_with_snes_resumes_bit_for_bit(tmp_path):
    kw = dict(steps_per_epoch=30, estimator=zo.SNES(mu=0.4, population=12), optimizer=zo.adam(0.05), rng=7,
              progress=False)
    full = zo.train(_sphere, np.zeros(8), epochs=4, **kw)
    ck = tmp_path / "snes.npz"
    zo.train(_sphere, np.zeros(8), epochs=2, checkpoint=ck, **kw)
    with np.load(ck) as z:
        assert "est/sigma.npy" in z.zip.namelist() or "est/sigma" in z.files
    again = zo.train(_sphere, np.zeros(8), epochs=4, checkpoint=ck, resume=True, **kw)
    np.testing.assert_array_equal(again.params, full.params)
    np.testing.assert_array_equal(again.estimator_state, full.estimator_state)
    # a checkpoint whose sigma was tampered with is refused, naming the array
    arrays, meta = zo.load_checkpoint(ck)
    arrays["est/sigma"] = -arrays["est/sigma"]
    zo.save_checkpoint(ck, arrays, meta)
    with pytest.raises(zo.CheckpointError, match="est/sigma"):
        zo.train(_sphere, np.zeros(8), epochs=5, checkpoint=ck, resume=True, **kw)


@pytest.mark.parametrize("kwargs,match", [
    (dict(population=1), "`population` must be an integer >= 2"),
    (dict(population=2.5), "`population`"),
    (dict(sigma_lr=-1.0), "`sigma_lr` must be a finite number >= 0"),
    (dict(mu=0.0), "`mu` must be a finite number > 0"),
])
def test_snes_rejects_bad_settings(kwargs, match):
    with pytest.raises(zo.ArgumentError, match=match):
        zo.SNES(**kwargs)


def test_snes_bad_use_is_named_before_any_query():
    calls = []

    def f(x):
        calls.append(1)
        return float(x @ x)

    x = np.zeros(4)
    with pytest.raises(zo.ArgumentError, match=r"`state` \(SNES's sigma\) must have shape \(4,\)"):
        zo.estimate_gradient(f, x, zo.SNES(population=4), state=np.ones(3))
    with pytest.raises(zo.ArgumentError, match="must be finite and > 0"):
        zo.estimate_gradient(f, x, zo.SNES(population=4), state=np.array([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(zo.ArgumentError, match="RGE keeps no state"):
        zo.estimate_gradient(f, x, zo.RGE(), state=np.ones(4))
    with pytest.raises(zo.ArgumentError, match="`sparsity` needs zo.CGE"):
        zo.train(f, x, estimator=zo.SNES(), sparsity=0.9, progress=False)
    with pytest.raises(zo.ArgumentError, match="SNES adapts its own sigma"):
        zo.train(f, x, estimator=zo.SNES(), mu=0.1, progress=False)
    with pytest.raises(zo.ArgumentError, match="not a representable step"):
        zo.estimate_gradient(f, np.full(4, 1e20), zo.SNES(mu=1e-8, population=4))
    assert not calls
    # an adapted sigma below the floats' spacing (SNES converged there) is not an error: no move
    x32 = np.ones(4, dtype=np.float32)
    g = zo.estimate_gradient(f, x32, zo.SNES(population=4), state=np.full(4, 1e-12), rng=0)
    assert len(calls) == 4 and np.array_equal(x32 - g.grad, x32)


def test_snes_reports_the_failing_sample():
    def f(x):
        return float("nan") if x[0] > 0.5 else float(x @ x)

    with pytest.raises(zo.OracleError, match=r"at sample \d+ \(\+sigma z\)"):
        zo.estimate_gradient(f, np.zeros(3), zo.SNES(mu=1.0, population=30), rng=0)


@pytest.mark.slow
def test_a_converged_sigma_stays_positive_and_a_diverged_one_is_named():
    """On a loss with an exact minimum (an L1 term) sigma shrinks geometrically to 0.0 (after
    7,006 steps of ``sum|x|``), and the next step refused "`state` (SNES's sigma) must be finite
    and > 0", an argument the user never passed, losing the run. On a loss unbounded below sigma
    grew until params + sigma * z overflowed, and the oracle was blamed for the inf it was given."""
    l1 = lambda x: float(np.abs(x).sum())  # noqa: E731
    tiny = np.finfo(np.float64).tiny
    state, x, floor = np.full(2, 1e-306), np.zeros(2), []
    for i in range(100):  # sigma shrinks by about exp(-0.2) a step: below 1e-308 in about 25
        est = zo.estimate_gradient(l1, x, zo.SNES(mu=0.5, population=10), rng=i, state=state)
        state = est.state
        floor.append(bool(np.all(state == tiny)))
    assert floor[-1] and sum(floor) > 50 and np.all(state > 0)
    seen = []

    def linear(x):
        seen.append(np.isfinite(x).all())
        return float(x.sum())

    with pytest.raises(zo.ArgumentError, match="SNES diverged: its sampling width sigma reached 1e\\+308"):
        zo.estimate_gradient(linear, np.zeros(2), zo.SNES(mu=0.5, population=10), rng=0, state=np.full(2, 1e308))
    assert seen == []  # refused before its queries
    with pytest.raises(zo.ArgumentError, match="SNES diverged"), np.errstate(over="ignore"):  # losses near -1e308
        zo.train(linear, np.zeros(2), epochs=6000, estimator=zo.SNES(mu=0.5, population=10), optimizer=zo.sgd(1.0),
                 rng=0, progress=False)
    assert len(seen) > 40_000 and all(seen)


def test_snes_keeps_no_samples_after_it_returns():
    # SNES reserves up to 256 MiB of its drawn samples for its two sums; once summed they are of
    # no use (every estimate draws a new root), but a module global held them until the next
    # estimate: 153 MiB at d = 1e6 after zo.train returned. The result is unchanged.
    import gc
    import tracemalloc

    d, n = 200_000, 20
    loss = lambda x: float(np.dot(x, x))  # noqa: E731
    x = np.random.default_rng(0).standard_normal(d)
    gc.collect()
    tracemalloc.start()
    est = zo.estimate_gradient(loss, x, zo.SNES(mu=0.1, population=n), rng=4)
    grad, sigma = est.grad.copy(), est.state.copy()
    del est
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert held < 4 * x.nbytes, held / x.nbytes  # the two copies above; 22 d-sized arrays before
    # the same estimate as the textbook SNES step (samples drawn as zoracle documents them)
    from zoracle._estimators import nes_utilities

    root = int(np.random.default_rng(4).integers(2**63))
    Z = np.stack([np.random.Generator(np.random.Philox(key=[root, i])).standard_normal(d) for i in range(n)])
    u = nes_utilities([loss(x + 0.1 * z) for z in Z])
    np.testing.assert_allclose(grad, -0.1 * (u @ Z), rtol=1e-9, atol=1e-12)
    rate = zo.SNES(mu=0.1).rate(d)
    np.testing.assert_allclose(sigma, 0.1 * np.exp(0.5 * rate * (u @ (Z * Z - 1))), rtol=1e-9)
