"""Review of the fast-path first check (zoracle._fastcheck): a resumed run and reduced precision.

A train run asks the plain call once more at the first estimate through a fast path. A resumed run
made that check again (one query more than the uninterrupted run, so a ``max_queries`` boundary
stopped it a step earlier, at other params); the checkpoint now keeps the run's verdicts. A batch
that computes the plain call's loss in a reduced precision (a float16 or bfloat16 model whose
loss is summed in float32) rounds otherwise than the plain call, past 64 float32 units: its
refusal names the opt-out.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import zoracle as zo

D = 8
_rng = np.random.default_rng(0)
A = _rng.standard_normal((40, D))
Y = _rng.standard_normal(40)


def loss(x) -> float:
    return float(np.mean((A @ np.asarray(x, dtype=np.float64) - Y) ** 2))


class Healthy:
    def __call__(self, x):
        return loss(x)

    def batch(self, X):
        return np.array([loss(r) for r in X])


class Offset(Healthy):
    def batch(self, X):
        return super().batch(X) + 1e-3


KW = dict(estimator=zo.RGE(mu=5e-3, directions=4), optimizer=zo.sgd(0.01), rng=0, progress=False, steps_per_epoch=5)


def _resumed(oracle, tmp_path, name, **kw):
    path = os.path.join(tmp_path, name)
    zo.train(oracle, np.zeros(D), epochs=2, checkpoint=path, **KW, **kw)
    return zo.train(oracle, np.zeros(D), epochs=4, checkpoint=path, resume=True, **KW, **kw)


def test_a_resumed_run_checks_no_fast_path_again(tmp_path):
    """It asked the plain call again at its first step: nfev 102 against the uninterrupted 101."""
    full = zo.train(Healthy(), np.zeros(D), epochs=4, **KW)
    res = _resumed(Healthy(), tmp_path, "c.npz")
    assert res.params.tobytes() == full.params.tobytes()
    assert res.nfev == full.nfev
    assert [r["total_nfev"] for r in res.history.steps] == [r["total_nfev"] for r in full.history.steps]


def test_a_max_queries_boundary_stops_a_resumed_run_where_the_uninterrupted_one_stops(tmp_path):
    """At max_queries = 97 the uninterrupted run took 20 steps (nfev 101), the resumed one stopped at 19."""
    mq = zo.train(Healthy(), np.zeros(D), epochs=4, **KW).nfev - 4
    full = zo.train(Healthy(), np.zeros(D), epochs=4, max_queries=mq, **KW)
    res = _resumed(Healthy(), tmp_path, "m.npz", max_queries=mq)
    assert len(res.history.steps) == len(full.history.steps)
    assert res.params.tobytes() == full.params.tobytes()
    assert res.nfev == full.nfev


def test_a_fast_path_refused_before_the_checkpoint_stays_refused_without_a_second_warning(tmp_path):
    with pytest.warns(RuntimeWarning, match="its `batch` disagrees") as caught:
        full = zo.train(Offset(), np.zeros(D), epochs=4, **KW)
    assert len(caught) == 1
    path = os.path.join(tmp_path, "r.npz")
    with pytest.warns(RuntimeWarning, match="its `batch` disagrees"):
        zo.train(Offset(), np.zeros(D), epochs=2, checkpoint=path, **KW)
    res = zo.train(Offset(), np.zeros(D), epochs=4, checkpoint=path, resume=True, **KW)  # warnings are errors here
    assert res.params.tobytes() == full.params.tobytes()
    assert res.nfev == full.nfev


def _header(path) -> dict:
    from zoracle._checkpoint import load_checkpoint

    return load_checkpoint(path, expected={})[1]


def test_the_checkpoint_keeps_the_verdicts_only_where_a_fast_path_was_checked(tmp_path):
    """Absent for a run that checked nothing: a reader from before the field reads its checkpoints."""
    path = os.path.join(tmp_path, "p.npz")
    zo.train(Healthy(), np.zeros(D), epochs=1, checkpoint=path, **KW)
    assert _header(path)["fast_paths"] == {"batch": True}
    plain = os.path.join(tmp_path, "q.npz")
    zo.train(lambda x: loss(x), np.zeros(D), epochs=1, checkpoint=plain, **KW)
    assert "fast_paths" not in _header(plain)


class HalfPrecision:
    """A bfloat16 (or float16) linear model whose squared errors are averaged in float32: the plain call
    multiplies and sums a row, the batch runs a matmul over the stack (another summation order, as a
    GPU's batched kernel takes). Both compute the same loss, rounded otherwise."""

    def __init__(self, dtype):
        import torch

        self.torch, self.dtype = torch, dtype
        g = torch.Generator().manual_seed(0)
        self.X = torch.randn(512, 128, generator=g).to(dtype)
        self.w = torch.randn(128, generator=g)
        self.y = (self.X.float() @ self.w).to(dtype) + 0.1

    def __call__(self, w):
        t = self.torch
        with t.no_grad():
            w = t.as_tensor(np.array(w), dtype=self.dtype)
            return float(((self.X * w).sum(1) - self.y).float().pow(2).mean())

    def batch(self, W):
        t = self.torch
        with t.no_grad():
            W = t.as_tensor(np.array(W), dtype=self.dtype)
            return ((W @ self.X.T - self.y).float().pow(2).mean(1)).double().numpy()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_reduced_precision_batch_refused_is_told_how_to_keep_it(dtype):
    """Measured: |batch - plain| 4e-4 to 6e-3 at losses of about 10 (6e-5 to 6e-4 of the loss), where
    the check allows 64 float32 units (8e-5) or 0.1% of the largest difference (2e-5 to 2e-4)."""
    torch = pytest.importorskip("torch")
    oracle = HalfPrecision(getattr(torch, dtype))
    w0 = (oracle.w + 0.3 * torch.randn(128, generator=torch.Generator().manual_seed(1))).numpy()
    kw = dict(estimator=zo.CGE(mu=1e-2), optimizer=zo.sgd(1e-4), rng=0, progress=False, steps_per_epoch=2)
    with pytest.warns(RuntimeWarning, match=r"its `batch` disagrees.*reduced precision.*`fast_paths_checked = True`"):
        zo.train(oracle, w0, **kw)
    oracle.fast_paths_checked = True  # the opt-out it names: no check, no warning, the batch kept
    res = zo.train(oracle, w0, **kw)
    assert res.nfev == 2 * (128 + 1)


def test_a_gap_of_a_tenth_of_the_loss_is_not_called_rounding():
    class Far(Healthy):
        def batch(self, X):
            return super().batch(X) * 1.1

    with pytest.warns(RuntimeWarning, match="its `batch` disagrees") as caught:
        zo.train(Far(), np.zeros(D), epochs=1, **KW)
    assert "reduced precision" not in str(caught[0].message)


def test_runs_on_one_oracle_in_two_threads_each_check_their_own_fast_path():
    """Another run's step between this run's bind and its check handed it that run's verdicts: it made no
    check at its first step (and one at its next), or one at every step whose verdicts another run had
    swapped in (nfev 52 to 54 where the serial run's is 51, four runs on a thread pool)."""
    import threading

    want = [r["nfev"] for r in zo.train(Healthy(), np.zeros(D), epochs=2, **KW).history.steps]

    class Interleaved(Healthy):
        other = None

        def batch(self, X):  # its first call, before the check: another run in another thread trains to its end
            if self.other is None:
                self.other = []
                t = threading.Thread(target=lambda: self.other.append(zo.train(self, np.zeros(D), epochs=2, **KW)))
                t.start()
                t.join()
            return super().batch(X)

    oracle = Interleaved()
    res = zo.train(oracle, np.zeros(D), epochs=2, **KW)
    assert [r["nfev"] for r in oracle.other[0].history.steps] == want
    assert [r["nfev"] for r in res.history.steps] == want  # the check at its first step, not at the second


@pytest.mark.parametrize("bad", [{"rows": True}, {"batch": 1}, ["batch"]])
def test_a_damaged_verdicts_field_is_refused_naming_it(tmp_path, bad):
    from conftest import edit_checkpoint_header

    path = os.path.join(tmp_path, "d.npz")
    zo.train(Healthy(), np.zeros(D), epochs=1, checkpoint=path, **KW)
    edit_checkpoint_header(path, lambda h: h.update(fast_paths=bad))
    with pytest.raises(zo.CheckpointError, match=r"header field 'fast_paths' is .*expected an object mapping some of "
                                                 r"'batch', 'coordinate', 'split' to true or false"):
        zo.train(Healthy(), np.zeros(D), epochs=2, checkpoint=path, resume=True, **KW)


def test_a_dead_oracles_callback_during_registration_does_not_hang(monkeypatch):
    """A garbage collection while the verdict registry held its lock (making a weak reference
    allocates) ran a dead oracle's callback in the same thread, which waited for that lock: a full
    suite run on 3.13 hung there twice. The callback is run inside the lock here, as the collection did."""
    import threading
    import weakref

    from zoracle import _fastcheck

    registry = _fastcheck._Verdicts()

    class Oracle:
        pass

    dead = Oracle()
    registry.of(dead)
    key, old = id(dead), registry.held[id(dead)][0]
    real_ref = weakref.ref

    def ref_with_a_collection(obj, callback=None):
        registry._drop(key, old)  # the dead oracle's callback, run by a collection inside the lock
        return real_ref(obj, callback)

    monkeypatch.setattr(_fastcheck.weakref, "ref", ref_with_a_collection)
    done = []
    worker = threading.Thread(target=lambda: done.append(registry.of(Oracle())), daemon=True)
    worker.start()
    worker.join(20)
    monkeypatch.undo()
    assert not worker.is_alive() and done == [{}]
    assert key not in registry.held or registry.held[key][0] is not old
