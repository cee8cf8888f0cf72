"""zoracle's estimate as the gradient of another optimizer's loop: SciPy's ``jac``, a torch.optim
step through ``p.grad``, a functional (optax-style) Adam written here. What each consumer takes
of ``estimate_gradient``'s result, its seeds over repeated calls, and the textbook loops it equals
(docs/training.md, "Using zoracle's estimates in your own loop")."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from scipy.optimize import minimize, rosen, rosen_der

import zoracle as zo


def quadratic(x):
    return float(np.sum((x - 0.5) ** 2) + 0.25 * x[0] * x[-1])


class Recording:
    """A loss that keeps every point it is asked at (plain calls only)."""

    def __init__(self, fn):
        self.fn, self.points = fn, []

    def __call__(self, x):
        self.points.append(np.array(x, dtype=np.float64))
        return self.fn(x)


class Float32Loss:
    """A loss computed in float32 (``compute_dtype``): estimated at float64 params rounded to it."""

    compute_dtype = np.float32

    def __call__(self, x):
        return float(np.sum(np.cos(np.asarray(x, dtype=np.float32)) ** 2))


def test_an_estimator_argument_passed_to_the_call_names_the_estimator():
    """`mu=`, `directions=` and `scheme=` belong to the estimator: estimate_gradient said only "see
    help" for `mu` and `seed`, and train sent `directions` to ZO-GraSP's `grasp_directions` and
    `scheme` to the learning rate's `schedule`."""
    x = np.ones(3)
    with pytest.raises(zo.ArgumentError, match=r"`estimate_gradient` has no argument `mu`: .*estimator=zo\.CGE\(mu="):
        zo.estimate_gradient(quadratic, x, mu=1e-4)
    with pytest.raises(zo.ArgumentError, match=r"`directions`: .*estimator=zo\.RGE\(directions=\.\.\.\)"):
        zo.estimate_gradient(quadratic, x, zo.RGE(), directions=8)
    with pytest.raises(zo.ArgumentError, match=r"`seed`: the seed is `rng`"):
        zo.estimate_gradient(quadratic, x, zo.RGE(), seed=0)
    with pytest.raises(zo.ArgumentError, match=r"`q`: .*zo\.RGE\(directions=\.\.\.\)"):
        zo.estimate_gradient(quadratic, x, zo.RGE(), q=8)
    with pytest.raises(zo.ArgumentError, match=r"`n_jobs`: .*executor=zoracle\.executors\.JoblibExecutor"):
        zo.estimate_gradient(quadratic, x, n_jobs=2)
    with pytest.raises(zo.ArgumentError, match=r"`train` has no argument `directions`: .*zo\.RGE\(directions=") as e:
        zo.train(quadratic, x, directions=8, progress=False)
    assert "grasp_directions" not in str(e.value)
    with pytest.raises(zo.ArgumentError, match=r"`train` has no argument `scheme`: .*zo\.CGE\(scheme=\"central\"\)") as e:
        zo.train(quadratic, x, scheme="central", progress=False)
    assert "schedule" not in str(e.value)


ESTIMATES = {
    "CGE": dict(estimator=zo.CGE()),
    "CGE central": dict(estimator=zo.CGE(mu=1e-4, scheme="central")),
    "sparse CGE": dict(estimator=zo.CGE(), coordinates=[0, 3]),
    "RGE": dict(estimator=zo.RGE(directions=3), rng=0),
    "SNES": dict(estimator=zo.SNES(population=6), rng=0),
}


@pytest.mark.parametrize("how", sorted(ESTIMATES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_gradient_is_a_new_flat_writable_array_in_params_dtype(how, dtype):
    """What SciPy's `jac` (float64, 1-D) and torch.from_numpy (writable, else a warning) take: the
    params' dtype, a C-contiguous array of their shape that neither they nor the next call share."""
    x = np.linspace(-1, 1, 5).astype(dtype)
    first = zo.estimate_gradient(quadratic, x, **ESTIMATES[how])
    g = first.grad
    assert (type(g), g.dtype, g.shape, g.flags.c_contiguous, g.flags.writeable) == (np.ndarray, dtype, (5,), True, True)
    assert not np.shares_memory(g, x)
    kept = g.copy()
    again = zo.estimate_gradient(quadratic, x, **ESTIMATES[how])
    g[:] = 7  # the caller's to keep: the next estimate's array is another
    assert not np.shares_memory(again.grad, g) and np.array_equal(again.grad, kept)
    assert isinstance(first.loss, float) and first.nfev > 0


def test_a_loss_computed_in_float32_gives_scipys_float64():
    est = zo.estimate_gradient(Float32Loss(), np.linspace(0, 1, 4))
    assert est.grad.dtype == np.float64 and est.grad.flags.writeable and est.grad.shape == (4,)


def test_cge_is_the_textbook_difference_loop():
    """At dyadic params and mu, (x + mu) - x is mu exactly: the same bits as the loop of a textbook."""
    x, mu = np.array([0.25, -0.5, 1.125, 2.0]), 2.0 ** -10
    eye = np.eye(x.size)
    f0 = quadratic(x)
    forward = np.array([(quadratic(x + mu * e) - f0) / mu for e in eye])
    central = np.array([(quadratic(x + mu * e) - quadratic(x - mu * e)) / (2 * mu) for e in eye])
    est = zo.estimate_gradient(quadratic, x, zo.CGE(mu=mu))
    np.testing.assert_array_equal(est.grad, forward)
    assert (est.loss, est.nfev) == (f0, x.size + 1)
    est = zo.estimate_gradient(quadratic, x, zo.CGE(mu=mu, scheme="central"))
    np.testing.assert_array_equal(est.grad, central)
    assert est.nfev == 2 * x.size + 1


def test_rge_is_the_textbook_average_over_the_directions_it_queried():
    """g = (1/q) sum_i (f(x + mu u_i) - f(x)) / mu * u_i, with the directions read off the queries."""
    x, mu, q = np.linspace(-1, 1, 6), 1e-3, 5
    loss = Recording(quadratic)
    est = zo.estimate_gradient(loss, x, zo.RGE(mu=mu, directions=q), rng=1)
    assert est.nfev == q + 1 == len(loss.points)
    base = [p for p in loss.points if np.array_equal(p, x)]
    moved = [p for p in loss.points if not np.array_equal(p, x)]
    assert len(base) == 1 and len(moved) == q
    f0 = quadratic(x)
    textbook = sum((quadratic(p) - f0) / mu * ((p - x) / mu) for p in moved) / q
    np.testing.assert_allclose(est.grad, textbook, rtol=1e-9, atol=1e-9)


def test_one_generator_gives_fresh_directions_each_call_and_the_seed_the_same_run():
    x, rge = np.linspace(-1, 1, 8), zo.RGE(directions=2)

    def run(rng):
        return [zo.estimate_gradient(quadratic, x, rge, rng=rng).grad for _ in range(3)]

    a = run(np.random.default_rng(7))
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[1], a[2])
    b = run(np.random.default_rng(7))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    same = run(7)  # the same int at every call: the same directions, as the docstring says
    assert np.array_equal(same[0], same[1]) and np.array_equal(same[0], same[2])
    assert not np.array_equal(same[0], run(8)[0])


@pytest.mark.parametrize("method", ["L-BFGS-B", "BFGS", "CG"])
def test_scipy_minimize_takes_the_estimate_as_jac(method):
    """The estimate as SciPy's `jac` (and as `jac=True`'s value with the loss) reaches the minimum
    the exact gradient reaches."""
    x0 = np.array([-1.2, 1.0, 0.3])
    central = zo.CGE(mu=1e-6, scheme="central")
    ref = minimize(rosen, x0, jac=rosen_der, method=method)
    res = minimize(rosen, x0, jac=lambda x: zo.estimate_gradient(rosen, x, central).grad, method=method)
    np.testing.assert_allclose(res.x, ref.x, atol=1e-4)
    spent = []

    def fun_and_grad(x):
        est = zo.estimate_gradient(rosen, x, central)
        spent.append(est.nfev)
        return est.loss, est.grad

    both = minimize(fun_and_grad, x0, jac=True, method=method)
    np.testing.assert_allclose(both.x, ref.x, atol=1e-4)
    assert spent and set(spent) == {2 * x0.size + 1} and both.nfev == len(spent)


def test_a_functional_adam_written_here_steps_as_train_with_zo_adam():
    """An optax-style loop (init, then update(grad, state) -> (updates, state)) written from the
    paper's formulas over the estimates equals zo.train's run with zo.adam."""
    lr, b1, b2, eps, steps = 0.05, 0.9, 0.999, 1e-8, 25
    x = np.array([1.0, -0.5, 2.0])

    def init(params):
        return 0, np.zeros_like(params), np.zeros_like(params)

    def update(g, state):
        t, m, v = state
        t, m, v = t + 1, b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        return -lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps), (t, m, v)

    state, params, nfev = init(x), x.copy(), 0
    for _ in range(steps):
        est = zo.estimate_gradient(quadratic, params, zo.CGE())
        updates, state = update(est.grad, state)
        params, nfev = params + updates, nfev + est.nfev
    res = zo.train(quadratic, x, epochs=steps, optimizer=zo.adam(lr), progress=False)
    np.testing.assert_allclose(params, res.params, rtol=1e-12, atol=1e-12)
    assert nfev == res.nfev == steps * (x.size + 1)
    assert quadratic(params) < quadratic(x)


def test_an_executor_made_once_serves_every_call_of_a_loop():
    from zoracle.executors import JoblibExecutor

    x = np.linspace(-1, 1, 12)
    serial = [zo.estimate_gradient(quadratic, x + i, zo.RGE(directions=4), rng=i) for i in range(3)]
    with JoblibExecutor(2, backend="threading") as ex:
        sharded = [zo.estimate_gradient(quadratic, x + i, zo.RGE(directions=4), rng=i, executor=ex) for i in range(3)]
    for a, b in zip(serial, sharded):
        np.testing.assert_array_equal(a.grad, b.grad)
        assert a.nfev == b.nfev == 5


needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")


@needs_torch
def test_torch_optim_steps_on_grads_set_from_the_estimate():
    """Each parameter's `.grad` from its slice of the flat estimate (``param_info``): of its shape
    and dtype, equal to autograd's up to the central difference; the estimate leaves the module's
    parameters where they were (torch.optim steps from them in place), and Adam lowers the loss."""
    import torch

    from zoracle.adapters.torch import TorchOracle

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()
    x = torch.randn(40, 3, dtype=torch.float64)
    y = (x ** 2).sum(1, keepdim=True)
    oracle = TorchOracle(model, torch.nn.MSELoss(reduction="none")).bind((x, y))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)

    def set_grads(grad):
        g = torch.from_numpy(grad)
        for info in oracle.param_info:
            p = model.get_parameter(info.name)
            p.grad = g[info.slice].view(info.shape).to(p)

    theta = oracle.initial_params()
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
    np.testing.assert_array_equal(oracle.initial_params(), theta)  # no perturbed parameter left behind
    set_grads(est.grad)
    zo_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    for n, p in model.named_parameters():
        assert (zo_grads[n].shape, zo_grads[n].dtype) == (p.shape, p.dtype)
        torch.testing.assert_close(zo_grads[n], p.grad, rtol=1e-5, atol=1e-7)
    first, rng = est.loss, np.random.default_rng(0)
    for _ in range(30):
        est = zo.estimate_gradient(oracle, oracle.initial_params(), zo.RGE(directions=8), rng=rng)
        set_grads(est.grad)
        opt.step()
    assert est.loss < 0.5 * first
