"""Oracles written the way JAX users write them: a ``jax.jit`` loss returning a 0-d float32
``jax.Array``, a ``jax.vmap`` batch, JAX's x64 switch set in the driver's script.

The tests that need JAX skip without it (the shared test environment has none); each fix has
a second test with a JAX-free stand-in (a fake ``jax`` module, a 0-d array, an object that
looks like a JAX array) that fails without the fix.
"""

from __future__ import annotations

import os
import sys
import types
import warnings

import numpy as np
import pytest

import zoracle as zo
from zoracle import _estimators as est_module
from zoracle._backend import jax_x64_runtime_env
from zoracle.executors import JoblibExecutor
from zoracle.testing import check_oracle

D = 6
_RNG = np.random.default_rng(0)
A = _RNG.standard_normal((D, D))
A = A @ A.T / D + np.eye(D)
B = np.linspace(-1.0, 1.0, D)


def numpy_twin(p) -> np.float32:
    """The JAX loss below in NumPy, in float32 as JAX computes it (x64 off)."""
    p = np.asarray(p, dtype=np.float32)
    return np.float32(0.5) * p @ (A.astype(np.float32) @ p) + B.astype(np.float32) @ p


def _jax():
    return pytest.importorskip("jax")


def jax_losses():
    """``(loss, batch)``: a jitted loss (params converted with jnp.asarray) and its vmap'd batch."""
    jax = _jax()
    jnp = jax.numpy

    def loss(p):
        p = jnp.asarray(p)
        return 0.5 * p @ (jnp.asarray(A) @ p) + jnp.asarray(B) @ p

    return jax.jit(loss), jax.jit(jax.vmap(loss))


class Batched:
    """A BatchOracle whose rows go through one vmap'd call."""

    def __init__(self, loss, batch):
        self.loss, self.rows = loss, batch

    def __call__(self, p):
        return self.loss(p)

    def batch(self, P):
        return self.rows(P)


def textbook_fd(f, x, mu, central=False):
    """The loop every numerical-analysis text writes, divided by the step taken
    ``(x_i + mu) - x_i`` (as CGE does: the representable step)."""
    g = np.empty(len(x))
    f0 = float(f(x))
    for i in range(len(x)):
        up = x.copy()
        up[i] += mu
        step = float(up[i]) - float(x[i])
        if central:
            down = x.copy()
            down[i] -= mu
            g[i] = (float(f(up)) - float(f(down))) / (float(up[i]) - float(down[i]))
        else:
            g[i] = (float(f(up)) - f0) / step
    return g


# ------------------------------------------------------------------ what works unchanged (JAX)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_a_jitted_loss_estimates_as_the_textbook_loop_and_its_numpy_twin(dtype, scheme):
    loss, batch = jax_losses()
    x = np.linspace(-1.0, 1.0, D).astype(dtype)
    assert loss(x).shape == () and str(loss(x).dtype) == "float32"  # x64 off: a 0-d float32 Array
    mu = 5e-3
    want = textbook_fd(loss, x, mu, central=scheme == "central")
    for oracle in (loss, Batched(loss, batch)):
        est = zo.estimate_gradient(oracle, x, zo.CGE(mu=mu, scheme=scheme))
        assert type(est.loss) is float and est.grad.dtype == dtype
        np.testing.assert_allclose(est.grad, want, rtol=0, atol=4 * np.spacing(np.float32(est.loss)) / mu)
    twin = zo.estimate_gradient(numpy_twin, x, zo.CGE(mu=mu, scheme=scheme))
    # the same float32 loss, summed in another order: apart by a few roundings of the loss over mu
    np.testing.assert_allclose(twin.grad, want, rtol=0, atol=8 * np.spacing(np.float32(twin.loss)) / mu)


def test_a_vmap_batch_is_a_batch_oracle_that_check_oracle_accepts():
    loss, batch = jax_losses()
    oracle = Batched(loss, batch)
    x = np.linspace(-1.0, 1.0, D)
    assert zo.capabilities(oracle).batch
    report = check_oracle(oracle, x)
    assert report["batch"] < 1e-5
    rge = zo.estimate_gradient(oracle, x, zo.RGE(directions=8), rng=0)
    ref = zo.estimate_gradient(numpy_twin, x, zo.RGE(directions=8), rng=0)
    np.testing.assert_allclose(rge.grad, ref.grad, atol=1e-2)
    assert rge.nfev == ref.nfev == 9


def test_train_takes_a_jitted_loss_and_refuses_jax_params_saying_how():
    jax = _jax()
    loss, _ = jax_losses()
    x = np.linspace(-1.0, 1.0, D).astype(np.float32)
    result = zo.train(loss, x, epochs=1, steps_per_epoch=5, progress=False)
    assert result.params.dtype == np.float32 and float(loss(result.params)) < float(loss(x))
    with pytest.raises(zo.ArgumentError, match=r"np\.from_dlpack\(params\)"):
        zo.train(loss, jax.numpy.asarray(x), epochs=1, steps_per_epoch=1, progress=False)
    # np.asarray of a JAX array is read-only: taken, never written
    frozen = np.asarray(jax.numpy.asarray(x))
    assert not frozen.flags.writeable
    zo.train(loss, frozen, epochs=1, steps_per_epoch=1, progress=False)


def test_the_process_executor_starts_no_fork_after_jax_started_its_threads():
    """zoracle's worker processes are fresh interpreters (``python -c``), never ``os.fork()`` of a
    driver whose JAX threads run: JAX's RuntimeWarning about fork would be an error here."""
    loss, batch = jax_losses()
    x = np.linspace(-1.0, 1.0, D).astype(np.float32)
    loss(x).block_until_ready()  # JAX's thread pool is up
    serial = zo.estimate_gradient(Batched(loss, batch), x, zo.CGE())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with JoblibExecutor(2, timeout=120) as ex:
            par = zo.estimate_gradient(Batched(loss, batch), x, zo.CGE(), executor=ex)
    np.testing.assert_array_equal(par.grad, serial.grad)


# ------------------------------------------------------------------ fix: JAX's x64 switch reaches process workers
def test_x64_set_in_the_driver_reaches_the_process_workers():
    """``jax.config.update("jax_enable_x64", True)`` in a script: the workers computed in float32
    (an estimate 0.1-4% off the serial one at mu = 5e-3)."""
    jax = _jax()
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        jnp = jax.numpy

        @jax.jit
        def loss(p):
            p = jnp.asarray(p)
            return 0.5 * p @ (jnp.asarray(A) @ p) + jnp.asarray(B) @ p + 1000.0

        x = np.linspace(-1.0, 1.0, D)
        assert str(loss(x).dtype) == "float64"
        serial = zo.estimate_gradient(loss, x, zo.CGE())
        with JoblibExecutor(2, timeout=120) as ex:
            par = zo.estimate_gradient(loss, x, zo.CGE(), executor=ex)
        np.testing.assert_array_equal(par.grad, serial.grad)
    finally:
        jax.config.update("jax_enable_x64", before)


def _env_x64(x):
    """A loss that shows what JAX_ENABLE_X64 the process running it has (the stand-in's JAX)."""
    return float(x @ x) + {"1": 100.0, "0": 10.0}.get(os.environ.get("JAX_ENABLE_X64"), 0.0)


@pytest.mark.parametrize("x64, inherited, shift", [(True, None, 100.0), (False, "1", 10.0)])
def test_a_stand_in_jax_x64_switch_reaches_the_process_workers(monkeypatch, x64, inherited, shift):
    fake = types.ModuleType("jax")
    fake.config = types.SimpleNamespace(jax_enable_x64=x64)
    monkeypatch.setitem(sys.modules, "jax", fake)
    if inherited is None:
        monkeypatch.delenv("JAX_ENABLE_X64", raising=False)
    else:  # the driver turned it off since: its value now wins
        monkeypatch.setenv("JAX_ENABLE_X64", inherited)
    x = np.arange(3.0)
    with JoblibExecutor(1, timeout=60) as ex:
        est = zo.estimate_gradient(_env_x64, x, zo.CGE(), executor=ex)
    assert est.loss == 5.0 + shift


def test_no_jax_in_the_driver_leaves_the_workers_environment_alone(monkeypatch):
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    monkeypatch.setenv("JAX_ENABLE_X64", "1")
    with JoblibExecutor(1, timeout=60) as ex:
        assert zo.estimate_gradient(_env_x64, np.arange(3.0), zo.CGE(), executor=ex).loss == 105.0
    monkeypatch.delenv("JAX_ENABLE_X64")
    kw = {}
    jax_x64_runtime_env(kw)
    assert kw == {}


def test_a_local_ray_session_gets_the_x64_switch_in_its_runtime_env(monkeypatch):
    fake = types.ModuleType("jax")
    fake.config = types.SimpleNamespace(jax_enable_x64=True)
    monkeypatch.setitem(sys.modules, "jax", fake)
    kw = {"runtime_env": {"env_vars": {"OTHER": "x"}, "working_dir": "."}}
    jax_x64_runtime_env(kw)
    assert kw["runtime_env"] == {"env_vars": {"JAX_ENABLE_X64": "1", "OTHER": "x"}, "working_dir": "."}
    kw = {"runtime_env": {"env_vars": {"JAX_ENABLE_X64": "0"}}}  # the caller's own value is kept
    jax_x64_runtime_env(kw)
    assert kw["runtime_env"]["env_vars"] == {"JAX_ENABLE_X64": "0"}


# ------------------------------------------------------------------ fix: 0-d arrays as hyperparameters
def test_a_jax_scalar_hyperparameter_is_refused_saying_how_to_pass_it():
    jax = _jax()
    jnp = jax.numpy
    with pytest.raises(zo.ArgumentError, match=r"0-d jaxlib\.ArrayImpl, not a Python number: pass mu=float\(mu\)"):
        zo.CGE(mu=jnp.float32(1e-3))
    with pytest.raises(zo.ArgumentError, match=r"pass lr=float\(lr\)"):
        zo.sgd(lr=jnp.asarray(0.1))
    with pytest.raises(zo.ArgumentError, match=r"pass directions=int\(directions\) \(8\)"):
        zo.RGE(directions=jnp.int32(8))
    # a schedule's values may be JAX scalars (optax schedules return them): taken as they are
    zo.train(lambda p: float(p @ p), np.ones(3), epochs=1, steps_per_epoch=2, progress=False,
             optimizer=zo.sgd(lr=lambda t: jnp.float32(0.1) * 0.9 ** t))


class _ZeroD:
    """A 0-d array of another library, as the core sees one: a shape, one item, not a number."""

    shape = ()

    def __init__(self, v):
        self.v = v

    def item(self):
        return self.v

    def __repr__(self):
        return f"Array({self.v})"


@pytest.mark.parametrize("value", [_ZeroD(1e-3), np.asarray(1e-3)])
def test_a_zero_d_array_for_mu_lr_or_sparsity_names_the_conversion(value):
    with pytest.raises(zo.ArgumentError, match=r"not a Python number: pass mu=float\(mu\) \(0\.001\)"):
        zo.CGE(mu=value)
    with pytest.raises(zo.ArgumentError, match=r"not a Python number: pass lr=float\(lr\) \(0\.001\)"):
        zo.sgd(lr=value)
    with pytest.raises(zo.ArgumentError, match=r"pass sparsity=float\(sparsity\)"):
        zo.smart_ratio([slice(0, 2), slice(2, 4)], sparsity=value)


def test_a_zero_d_array_refused_by_value_says_so_and_a_numpy_scalar_gets_no_hint():
    with pytest.raises(zo.ArgumentError, match=r"as a number, -1\.0, it would be refused too"):
        zo.CGE(mu=_ZeroD(-1.0))
    with pytest.raises(zo.ArgumentError, match=r"pass epochs=int\(epochs\) \(2\)"):
        zo.train(lambda p: float(p @ p), np.ones(2), epochs=_ZeroD(2), progress=False)
    with pytest.raises(zo.ArgumentError) as info:
        zo.CGE(mu=np.float32(-1.0))  # a NumPy scalar is a number: refused by its value alone
    assert "0-d" not in str(info.value)


# ------------------------------------------------------------------ fix: float32 JAX losses name JAX's x64 mode
def test_float32_jax_losses_at_float64_params_warn_naming_x64(monkeypatch):
    _jax()
    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())
    loss, _ = jax_losses()
    x = np.linspace(-1.0, 1.0, D)
    with pytest.warns(UserWarning, match=r"returns float32 losses.*jax_enable_x64"):
        zo.estimate_gradient(loss, x, zo.CGE(mu=1e-6))
    # the NumPy twin's float32 losses get the same advice, without JAX's
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        zo.estimate_gradient(numpy_twin, x, zo.CGE(mu=1e-6))
    texts = [str(w.message) for w in seen]
    assert any("returns float32 losses" in t for t in texts) and not any("jax" in t for t in texts)


class _JaxLikeScalar:
    """What a jitted loss returns, without JAX: a 0-d float32 array of a ``jaxlib`` type."""

    __module__ = "jaxlib._jax"
    shape = ()
    dtype = np.dtype(np.float32)

    def __init__(self, v):
        self.v = np.float32(v)

    def item(self):
        return float(self.v)


def test_a_jax_like_float32_loss_at_float64_params_warns_naming_x64(monkeypatch):
    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())

    def loss(p):
        return _JaxLikeScalar(numpy_twin(p))

    with pytest.warns(UserWarning, match=r"jax\.config\.update\(\"jax_enable_x64\", True\)"):
        zo.estimate_gradient(loss, np.linspace(-1.0, 1.0, D), zo.CGE(mu=1e-6))
