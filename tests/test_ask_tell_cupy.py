"""zoracle.AskTell on CuPy params, through the test-only stand-in in ``_fakecupy`` (its arrays refuse
``np.asarray`` as CuPy's do): the backend follows the data, so ``ask()`` hands out device points in
params' dtype, ``tell()`` takes device losses, ``.params`` stays on the device, and a checkpointed,
resumed ask/tell run is ``zo.train`` on the same params bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import _fakecupy
import zoracle as zo

D = 6


@pytest.fixture
def cp(monkeypatch):
    return _fakecupy.install(monkeypatch)


def _loss(cp):
    target = cp.arange(D, dtype=cp.float64) / D

    def f(p):  # a 0-d device array, as CuPy's reductions give; a host array would fail the fake
        return ((p - target.astype(p.dtype)) ** 2).sum() + cp.sin(3 * p).sum()
    return f


def _timeless(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_points_and_params_stay_on_the_device_in_params_dtype(cp, dtype):
    f = _loss(cp)
    p0 = cp.zeros(D, dtype=dtype)
    opt = zo.AskTell(p0, epochs=3, optimizer=zo.sgd(0.05), progress=False)
    assert isinstance(opt.params, cp.ndarray) and opt.params.dtype == dtype
    while not opt.done:
        X = opt.ask()
        assert isinstance(X, cp.ndarray) and X.shape == (D + 1, D) and X.dtype == dtype
        opt.tell([f(x) for x in X])
        assert isinstance(opt.params, cp.ndarray) and opt.params.dtype == dtype
    res = opt.result
    assert isinstance(res.params, cp.ndarray) and res.params.dtype == dtype
    assert isinstance(p0, cp.ndarray) and not p0.any()  # not modified
    same = zo.train(f, p0, epochs=3, optimizer=zo.sgd(0.05), progress=False)
    assert bool((res.params == same.params).all())


def test_tell_takes_device_losses_in_each_form(cp):
    """An array of the device (also ``(n, 1)``), a list of its 0-d scalars, ``{row: scalar}``; a NaN
    among device losses is refused naming its row, and the points stay asked."""
    f = _loss(cp)
    p0 = cp.zeros(D)
    forms = [lambda X: cp.stack([f(x) for x in X]), lambda X: cp.stack([f(x) for x in X])[:, None],
             lambda X: [f(x) for x in X], lambda X: {j: f(x) for j, x in enumerate(X)}]
    opt = zo.AskTell(p0, epochs=len(forms), optimizer=zo.adam(0.05), progress=False)
    X = opt.ask()
    bad = cp.stack([f(x) for x in X])
    bad[2] = cp.nan
    with pytest.raises(zo.OracleError, match=r"tell\(\) got nan at query 2 of the last ask\(\)"):
        opt.tell(bad)
    with pytest.raises(zo.OracleError, match=f"expected {D + 1} losses"):
        opt.tell(bad[:3])
    for form in forms:
        opt.tell(form(X))
        if not opt.done:
            X = opt.ask()
    same = zo.train(f, p0, epochs=len(forms), optimizer=zo.adam(0.05), progress=False)
    assert opt.done and bool((opt.result.params == same.params).all())


SETUPS = {
    "cge-adam": dict(estimator=zo.CGE(), optimizer=zo.adam(0.05)),
    "rge-momentum": dict(estimator=zo.RGE(directions=3), optimizer=zo.sgd(0.05, momentum=0.9)),
    "zo-grasp": dict(estimator=zo.CGE(), sparsity=0.5, grasp_directions=4, mask_shuffle_interval=1,
                     optimizer=zo.sgd(0.05, momentum=0.9)),
}


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_a_checkpointed_resumed_run_is_train_on_the_device(cp, tmp_path, setup):
    """Stopped between an ask and its tell, resumed with ``resume=True`` (the same points asked again,
    on the device): the result is ``zo.train(f, cupy_params, ...)``'s bit for bit."""
    f = _loss(cp)
    p0 = cp.zeros(D, dtype=cp.float32)
    settings = dict(SETUPS[setup], epochs=4, steps_per_epoch=2, rng=0, progress=False)
    ck = tmp_path / "run.npz"
    opt = zo.AskTell(p0, checkpoint=ck, **settings)
    for _ in range(3):
        X = opt.ask()
        opt.tell(cp.stack([f(x) for x in X]))
    stopped = opt.ask()
    opt.close()
    assert isinstance(opt.params, cp.ndarray)
    opt = zo.AskTell(p0, checkpoint=ck, resume=True, **settings)
    X = opt.ask()
    assert isinstance(X, cp.ndarray) and X.dtype == cp.float32 and bool((X == stopped).all())
    while True:
        opt.tell([f(x) for x in X])
        if opt.done:
            break
        X = opt.ask()
        assert isinstance(X, cp.ndarray) and X.dtype == cp.float32
    res = opt.result
    same = zo.train(f, p0, **settings)
    assert isinstance(res.params, cp.ndarray) and res.params.dtype == cp.float32
    assert bool((res.params == same.params).all()) and res.nfev == same.nfev
    assert _timeless(res.history.steps) == _timeless(same.history.steps)
    np.testing.assert_array_equal(cp.asnumpy(res.params), cp.asnumpy(same.params))
