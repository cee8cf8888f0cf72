"""zoracle's CuPy branches on a machine without a GPU, through the stand-in in ``_fakecupy``
(installed into ``sys.modules`` for one test only): its arrays refuse ``np.asarray`` and NumPy
operands as CuPy does, so a path that converts a CuPy array implicitly fails here as on a GPU.
The real-CuPy halves of the ``xp`` tests still skip where no GPU answers."""

import importlib.util
import os
import sys

import numpy as np
import pytest

import _fakecupy
import zoracle as zo
from zoracle.executors import JoblibExecutor
from zoracle.testing import check_oracle

D = 12


@pytest.fixture
def cp(monkeypatch):
    return _fakecupy.install(monkeypatch)


def _on_device(cp, x):
    return isinstance(x, cp.ndarray)


def test_the_fake_refuses_what_cupy_refuses(cp):
    x = cp.arange(3.0)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray([x[0], x[1]])
    with pytest.raises(TypeError):
        x + np.ones(3)  # a host array in a device operation
    assert _on_device(cp, np.sum(x)) and _on_device(cp, np.isfinite(x)) and _on_device(cp, x.sum())
    assert type(cp.asnumpy(x)) is np.ndarray and cp.asnumpy(x).tolist() == [0.0, 1.0, 2.0]
    assert zo._backend.namespace(x) is cp and zo._backend.namespace(np.ones(2)) is np
    assert not hasattr(x.flags, "writeable")


class _Quadratic:
    """A loss on the fake device that refuses anything else (a host array would mean a conversion)."""

    def __init__(self, cp):
        self.cp, self.target = cp, cp.arange(D, dtype=cp.float32) / D
        self.kinds = set()

    def __call__(self, p):
        self.kinds.add(type(p).__module__)
        return ((p - self.target) ** 2).sum()  # a 0-d device array, as CuPy's reductions give

    def batch(self, rows):
        self.kinds.add(type(rows).__module__)
        return ((rows - self.target[None]) ** 2).sum(axis=1)  # (k,) on the device


SETUPS = {
    "cge-adam": dict(estimator=zo.CGE(), optimizer=zo.adam(0.05)),
    "rge-momentum": dict(estimator=zo.RGE(directions=4), optimizer=zo.sgd(0.05, momentum=0.9, weight_decay=5e-4)),
    "zo-grasp-masks": dict(estimator=zo.CGE(), sparsity=0.5, grasp_directions=6, mask_shuffle_interval=1,
                           optimizer=zo.sgd(0.05, momentum=0.9)),
    "snes": dict(estimator=zo.SNES(), optimizer=zo.sgd(0.05)),
}


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_a_run_stays_on_the_device(cp, tmp_path, setup):
    """The backend follows the data: every query, callback and the result hold device arrays, the
    optimizer's state too; a checkpoint (host arrays) resumes onto the device and continues the run
    exactly; the history holds numbers and plots (where matplotlib, the 'apps' extra, is installed)."""
    kw = dict(SETUPS[setup], steps_per_epoch=2, progress=False, rng=0)
    plots = importlib.util.find_spec("matplotlib") is not None
    seen = []
    callback = lambda event, record, params: seen.append(type(params).__module__)  # noqa: E731
    oracle = _Quadratic(cp)
    p0 = cp.zeros(D, dtype=cp.float32)
    first = zo.train(oracle, p0, epochs=2, checkpoint=tmp_path / "run.npz", callbacks=[callback],
                     plot=tmp_path / "run.png" if plots else None, **kw)
    again = zo.train(oracle, p0, epochs=3, resume=tmp_path / "run.npz", **kw)
    straight = zo.train(_Quadratic(cp), p0, epochs=3, **kw)
    assert oracle.kinds == {"cupy"} and set(seen) == {"cupy"}
    for res in (first, again, straight):
        assert _on_device(cp, res.params) and res.params.dtype == np.float32
        assert all(_on_device(cp, v) for v in res.optimizer_state if hasattr(v, "dtype") and v.size)
    assert np.array_equal(cp.asnumpy(again.params), cp.asnumpy(straight.params))
    arrays, meta = zo.load_checkpoint(tmp_path / "run.npz")
    assert type(arrays["params"]) is np.ndarray  # a checkpoint holds host arrays
    assert all(isinstance(r["loss"], float) for r in again.history.steps)
    assert not plots or (tmp_path / "run.png").stat().st_size > 0
    if "sparsity" in kw:  # the masks and ratios a run keeps are host arrays (docs/design.md)
        assert type(first.coordinates) is np.ndarray and type(first.ratios) is np.ndarray
    if setup == "snes":
        assert type(first.estimator_state) is np.ndarray


@pytest.mark.parametrize("estimator", [zo.CGE(), zo.CGE(scheme="central"), zo.RGE(directions=5), zo.SNES()],
                         ids=["cge", "cge-central", "rge", "snes"])
@pytest.mark.parametrize("batched", [False, True], ids=["call", "batch"])
def test_estimates_on_the_device_equal_the_host_ones(cp, estimator, batched):
    oracle = _Quadratic(cp)
    if not batched:
        oracle = oracle.__call__
    x = np.linspace(-1, 1, D).astype(np.float32)
    est = zo.estimate_gradient(oracle, cp.asarray(x), estimator, rng=3)
    host = zo.estimate_gradient(lambda p: float(((p - np.arange(D, dtype=np.float32) / D) ** 2).sum()), x,
                                estimator, rng=3)
    assert _on_device(cp, est.grad) and est.grad.dtype == np.float32 and isinstance(est.loss, float)
    np.testing.assert_allclose(cp.asnumpy(est.grad), host.grad, rtol=1e-6, atol=1e-6)


class _ListedLosses:
    """A batch oracle written as its plain call over the rows: a list of 0-d device losses."""

    def __init__(self, cp):
        self.cp = cp

    def __call__(self, p):
        return (p ** 2).sum()

    def batch(self, rows):
        return [self(r) for r in rows]

    def coordinate_losses(self, p, coords, step):
        out = []
        for i in coords:
            q = p.copy()
            q[int(i)] += step
            out.append(self(q))
        return out


def test_a_list_of_cupy_losses_is_taken(cp):
    """A batch (or coordinate) oracle returning ``[loss(p) for p in rows]`` of 0-d CuPy losses was
    refused (OracleError "could not convert to an array": np.asarray refuses CuPy arrays), where its
    plain call's 0-d CuPy loss was taken; check_oracle blamed the oracle for raising TypeError."""
    x = cp.asarray(np.linspace(-1, 1, 6))
    want = 2 * np.linspace(-1, 1, 6)
    for estimator in (zo.CGE(scheme="central"), zo.RGE(directions=6)):
        est = zo.estimate_gradient(_ListedLosses(cp), x, estimator, rng=0)
        assert _on_device(cp, est.grad)
        if isinstance(estimator, zo.CGE):
            np.testing.assert_allclose(cp.asnumpy(est.grad), want, atol=1e-9)
    report = check_oracle(_ListedLosses(cp), x)
    assert isinstance(report, dict)


def test_an_optimizer_names_the_conversion_for_the_backend(cp):
    """A gradient of the other backend was refused with the fix np.asarray(grad, ...): for CuPy params
    that keeps it on the host (refused again), and CuPy refuses np.asarray of a CuPy gradient."""
    opt = zo.adam(0.1)
    p = cp.zeros(3)
    with pytest.raises(zo.ArgumentError, match=r"cupy\.asarray\(grad, dtype=params\.dtype\)"):
        opt.update(np.ones(3), opt.init(p), p)
    with pytest.raises(zo.ArgumentError, match=r"cupy\.asnumpy\(grad\)"):
        opt.update(cp.ones(3), opt.init(np.zeros(3)), np.zeros(3))
    with pytest.raises(zo.ArgumentError, match=r"np\.asarray\(grad, dtype=params\.dtype\)"):
        opt.update([1.0, 1.0, 1.0], opt.init(np.zeros(3)), np.zeros(3))  # a host gradient: as it was


def test_keep_ratios_may_be_a_cupy_array(cp, tmp_path):
    """``ratios`` as a CuPy array was refused as not "one keep ratio per scored block" (np.array's
    TypeError), and a resume with it raised that TypeError raw."""
    blocks = [slice(0, 6), slice(6, 12)]
    kw = dict(sparsity=0.5, blocks=blocks, steps_per_epoch=2, progress=False, rng=0)
    oracle = _Quadratic(cp)
    p0 = cp.zeros(D, dtype=cp.float32)
    on_host = zo.train(oracle, p0, ratios=np.array([0.25, 0.75]), epochs=2, **kw)
    first = zo.train(oracle, p0, ratios=cp.asarray([0.25, 0.75]), epochs=1, checkpoint=tmp_path / "r.npz", **kw)
    again = zo.train(oracle, p0, ratios=cp.asarray([0.25, 0.75]), epochs=2, resume=tmp_path / "r.npz", **kw)
    assert type(first.ratios) is np.ndarray and first.ratios.tolist() == [0.25, 0.75]
    assert np.array_equal(cp.asnumpy(again.params), cp.asnumpy(on_host.params))


def test_smoothing_refuses_cupy_points_naming_the_copy(cp):
    """zoracle.smoothing is NumPy only: a CuPy point raised np.asarray's TypeError, naming no argument."""
    from zoracle import smoothing

    clf = lambda z: (z.reshape(len(z), -1).sum(axis=1) > 0).astype(int)  # noqa: E731
    x = cp.ones(2)
    kw = dict(sigma=0.5, num_classes=2, rng=0)
    for call in (lambda: smoothing.certify(clf, x, n0=10, n=100, **kw),
                 lambda: smoothing.predict(clf, x, n=100, **kw),
                 lambda: smoothing.certify_batch(clf, x[None], n0=10, n=100, **kw),
                 lambda: smoothing.sample_counts(clf, x[None], 10, 0.5, num_classes=2, rng=0)):
        with pytest.raises(zo.ArgumentError, match=r"`x` is a CuPy array.*cupy\.asnumpy\(x\)"):
            call()
    assert smoothing.certify(clf, cp.asnumpy(x), n0=10, n=100, **kw).prediction == 1


class _Bound:
    """A data oracle whose batches live on the device and whose params may arrive either way."""

    def __init__(self, data=None, want=None):
        self.data, self.want = data, want

    def bind(self, data):
        return _Bound(data, self.want)

    def unbind(self):
        return None if self.data is None else (_Bound(None, self.want), self.data)

    def __call__(self, p):
        cupy = sys.modules["cupy"]
        if type(p).__module__ != self.want:
            raise TypeError(f"params arrived as {type(p).__module__}, expected {self.want}")
        if not isinstance(self.data, cupy.ndarray):
            raise TypeError(f"the batch arrived as {type(self.data).__module__}, expected cupy")
        return ((cupy.asarray(p) - self.data) ** 2).sum()


def test_threads_share_the_device_params(cp):
    batches = [cp.full(D, float(i), dtype=cp.float32) for i in range(2)]
    p0 = cp.zeros(D, dtype=cp.float32)
    kw = dict(batches=batches, epochs=1, progress=False, rng=0)
    serial = zo.train(_Bound(want="cupy"), p0, **kw)
    with JoblibExecutor(2, backend="threading") as ex:
        threaded = zo.train(_Bound(want="cupy"), p0, executor=ex, **kw)
    assert _on_device(cp, threaded.params)
    assert np.array_equal(cp.asnumpy(threaded.params), cp.asnumpy(serial.params))


def test_process_workers_get_host_params_and_the_batch_as_it_is(cp, tmp_path, monkeypatch):
    """docs/executors.md: CuPy params reach process workers as NumPy (copied to the host), a bound
    batch as it is (CuPy); the gradient comes back on the device, equal to the serial one. The
    workers import the same stand-in as ``cupy`` (a module on their PYTHONPATH)."""
    (tmp_path / "cupy.py").write_text(
        "import _fakecupy\n"
        "_m = _fakecupy.make_module()\n"
        "globals().update({k: v for k, v in vars(_m).items() if not k.startswith('__')})\n"
        "__getattr__ = _m.__getattr__\n")
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), here, root]
                                                     + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    batch = cp.full(D, 0.5, dtype=cp.float32)
    x = cp.zeros(D, dtype=cp.float32)
    serial = zo.estimate_gradient(_Bound(want="cupy").bind(batch), x, zo.CGE())
    with JoblibExecutor(2) as ex:
        est = zo.estimate_gradient(_Bound(want="numpy").bind(batch), x, zo.CGE(), executor=ex)
    assert _on_device(cp, est.grad)
    assert np.array_equal(cp.asnumpy(est.grad), cp.asnumpy(serial.grad))


def test_a_torch_oracle_takes_cupy_params_and_batches(cp, tmp_path):
    """TorchOracle reads CuPy params and batches through DLPack (a CPU tensor here, a CUDA one on a
    GPU): the estimate comes back on the device, equal to the host one; a run with CuPy batches,
    ZO-GraSP masks and a checkpoint keeps its params there."""
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    X, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    loss = torch.nn.CrossEntropyLoss(reduction="none")
    bound = TorchOracle(model, loss, (X, y), dtype=torch.float64)
    x = bound.initial_params()
    est = zo.estimate_gradient(bound, cp.asarray(x), zo.CGE())
    assert _on_device(cp, est.grad)
    assert np.array_equal(cp.asnumpy(est.grad), zo.estimate_gradient(bound, x, zo.CGE()).grad)
    res = zo.train(TorchOracle(model, loss, dtype=torch.float64), cp.asarray(x),
                   batches=[(cp.asarray(X.numpy()), cp.asarray(y.numpy()))], epochs=2, sparsity=0.5,
                   grasp_directions=4, progress=False, rng=0, checkpoint=tmp_path / "t.npz")
    assert _on_device(cp, res.params) and type(res.coordinates) is np.ndarray
