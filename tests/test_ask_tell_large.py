"""zoracle.AskTell at large d: ``max_points`` asks an estimate's points in pieces of at most that many
rows (dense forward CGE's ``d + 1`` rows of ``d`` numbers were one ask: 3.2 GB at d = 20,000 in
float64, held three times over), the run still ``zo.train(f, ...)``'s bit for bit; an estimate whose
one ask would be large is warned of, naming its bytes and the fixes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import zoracle as zo
from test_ask_tell import same_run, timeless  # (two runs compared as test_ask_tell.py does)
from zoracle import _ask_tell_run

ROOT = Path(__file__).resolve().parents[1]
X0 = np.linspace(-1.0, 1.0, 12)
BLOCKS = [slice(0, 6), slice(6, 12)]
DATA = np.random.default_rng(0).standard_normal((40, 12))
TARGET = DATA @ np.linspace(-1.0, 1.0, 12)


def f(x):
    return float(((x - 3) ** 2).sum() + np.sin(3 * x).sum())


class LeastSquares:
    """A data oracle: the mean squared error of ``A @ x`` against ``t`` on its batch ``(A, t)``."""

    def __init__(self, batch=(DATA, TARGET)):
        self.batch = batch

    def bind(self, batch):
        return LeastSquares(batch)

    def __call__(self, x) -> float:
        a, t = self.batch
        return float(((a @ x - t) ** 2).mean())


def answered(opt, fn=f, tells=None, sizes=None, by_batch=False):
    """Answer ``opt``'s asks with ``fn`` (bound to ``opt.batch`` where ``by_batch``) until the run ends
    (or ``tells`` tells); the asks' sizes."""
    sizes = [] if sizes is None else sizes
    while not opt.done and (tells is None or len(sizes) < tells):
        X = opt.ask()
        sizes.append(X.shape[0])
        g = fn.bind(opt.batch) if by_batch and opt.batch is not None else fn
        opt.tell([g(x) for x in X])
    return sizes




SETTINGS = {
    "cge": dict(estimator=zo.CGE()),
    "cge-central": dict(estimator=zo.CGE(scheme="central"), schedule=zo.cosine_schedule(0.05, 12)),
    "rge": dict(estimator=zo.RGE(directions=5)),
    "zo-grasp": dict(estimator=zo.CGE(), sparsity=0.5, blocks=BLOCKS, grasp_directions=8),
    "zo-grasp-step-masks": dict(estimator=zo.CGE(scheme="central"), sparsity=0.5, blocks=BLOCKS, grasp_directions=8,
                                mask_shuffle_interval="step"),
    "snes": dict(estimator=zo.SNES()),
}


@pytest.mark.parametrize("k", [1, 4, 13, 1000])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_asks_of_at_most_max_points_rows_are_train_bit_for_bit(name, k):
    common = dict(epochs=3, steps_per_epoch=2, optimizer=zo.adam(0.05), rng=3, progress=False, **SETTINGS[name])
    ref = zo.train(f, X0, **common)
    whole = answered(zo.AskTell(X0, **common))
    opt = zo.AskTell(X0, max_points=k, **common)
    sizes = answered(opt)
    same_run(opt.result, ref)
    assert sum(sizes) == ref.nfev and max(sizes) <= k
    # each estimate's one ask, cut in pieces of k rows (the last of each the rest)
    assert sizes == [min(k, n - lo) for n in whole for lo in range(0, n, k)]


@pytest.mark.parametrize("name", ["cge", "zo-grasp"])
def test_pieces_of_a_step_on_a_minibatch_all_name_its_batch(name):
    settings = dict(SETTINGS[name], blocks=BLOCKS) if "sparsity" in SETTINGS[name] else SETTINGS[name]
    common = dict(batches=zo.Minibatches((DATA, TARGET), batch_size=10, seed=3), epochs=2, optimizer=zo.sgd(0.01),
                  rng=5, progress=False, **settings)
    ref = zo.train(LeastSquares(), X0, **common)
    opt = zo.AskTell(X0, max_points=5, **common)
    sizes = answered(opt, LeastSquares(), by_batch=True)
    same_run(opt.result, ref)
    assert max(sizes) == 5 and sum(sizes) == ref.nfev


def test_tell_by_row_and_with_the_points_take_one_piece():
    opt = zo.AskTell(X0, epochs=2, max_points=5, progress=False, rng=0)
    X = opt.ask()
    assert X.shape == (5, 12) and np.array_equal(X[0], X0)  # the step's base point leads its first piece
    with pytest.raises(zo.OracleError, match=r"expected 5 losses, got shape \(13,\)"):
        opt.tell([0.0] * 13)
    opt.tell({j: f(x) for j, x in enumerate(X)})
    X = opt.ask()
    with pytest.raises(zo.ArgumentError, match=r"row 0 of X is not row 0 of the points the last ask\(\) returned"):
        opt.tell(X + 1.0, [f(x) for x in X])
    opt.tell(X, [f(x) for x in X])
    answered(opt)
    same_run(opt.result, zo.train(f, X0, epochs=2, progress=False, rng=0))


@pytest.mark.parametrize("stop", ["after tell", "between ask and tell"])
def test_a_run_closed_between_pieces_resumes_as_the_uninterrupted_one(tmp_path, stop):
    common = dict(epochs=4, optimizer=zo.adam(0.05), rng=7, progress=False, estimator=zo.CGE(scheme="central"))
    ref = zo.train(f, X0, **common)
    path = tmp_path / "run.npz"
    first = zo.AskTell(X0, checkpoint=path, max_points=10, **common)
    answered(first, tells=5)  # step 0 (25 points: asks of 10, 10, 5), then 2 of step 1's 3
    if stop == "between ask and tell":
        first.ask()
    first.close()
    assert len(first.history.steps) == 1 and zo.load_checkpoint(path)[1]["step"] == 1
    again = zo.AskTell(X0, checkpoint=path, resume=True, max_points=10, **common)
    sizes = answered(again)
    assert sizes == [10, 10, 5] * 3  # step 1 asked from its first piece again, then steps 2 and 3
    same_run(again.result, ref)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pieces_of_cupy_params_are_device_points_and_train_on_the_device(monkeypatch, dtype):
    import _fakecupy  # (the test-only CuPy stand-in: its arrays refuse np.asarray, as CuPy's do)

    cp = _fakecupy.install(monkeypatch)
    target = cp.arange(12, dtype=cp.float64) / 12

    def g(p):
        return ((p - target.astype(p.dtype)) ** 2).sum() + cp.sin(3 * p).sum()

    p0 = cp.zeros(12, dtype=dtype)
    settings = dict(epochs=3, estimator=zo.CGE(scheme="central"), optimizer=zo.adam(0.05), progress=False)
    opt = zo.AskTell(p0, max_points=7, **settings)
    sizes = []
    while not opt.done:
        X = opt.ask()
        assert isinstance(X, cp.ndarray) and X.dtype == dtype
        sizes.append(X.shape[0])
        opt.tell(cp.stack([g(x) for x in X]))
    same = zo.train(g, p0, **settings)
    assert sizes == [7, 7, 7, 4] * 3 and isinstance(opt.result.params, cp.ndarray)
    assert bool((opt.result.params == same.params).all()) and opt.result.nfev == same.nfev
    assert timeless(opt.result.history.steps) == timeless(same.history.steps)


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "10"])
def test_max_points_is_refused_where_it_is_no_positive_integer(bad):
    with pytest.raises(zo.ArgumentError, match=r"`max_points` must be None .* or an integer >= 1 .*, got "):
        zo.AskTell(X0, max_points=bad, progress=False)


def test_an_estimate_whose_one_ask_passes_the_bound_is_warned_of_before_its_points_are_built(monkeypatch):
    monkeypatch.setattr(_ask_tell_run, "ASK_WARN_BYTES", 12 * 8 * 10)  # 10 rows of X0's: CGE asks 13
    with pytest.raises(UserWarning, match=r"asks its 13 points of d = 12 at once, \(13, 12\) float64: 0\.0 GiB "
                                          r"for the ask.*pass max_points= .*max_points=2: .*sparsity= .*zo\.RGE"):
        zo.AskTell(X0, epochs=2, progress=False)
    with pytest.warns(UserWarning, match="asks its 13 points") as caught:  # once a run, at its first estimate
        opt = zo.AskTell(X0, epochs=3, progress=False)
        answered(opt)
    assert len(caught) == 1
    same_run(opt.result, zo.train(f, X0, epochs=3, progress=False))
    answered(zo.AskTell(X0, epochs=2, max_points=10, progress=False))  # pieces asked: no warning (an error here)
    answered(zo.AskTell(X0, epochs=2, estimator=zo.RGE(directions=4), progress=False))  # 5 rows


def test_the_large_ask_warning_of_a_run_in_a_box_names_an_rge_the_box_takes(monkeypatch):
    """It named zo.RGE(directions=q), Gaussian, which bounds= refuses; its Rademacher version runs in the box."""
    monkeypatch.setattr(_ask_tell_run, "ASK_WARN_BYTES", 12 * 8 * 10)
    with pytest.raises(UserWarning, match=r'asks its 13 points.*estimator=zo\.RGE\(directions=q, '
                                          r'distribution="rademacher"\)$'):
        zo.AskTell(X0, epochs=2, bounds=(-2.0, 2.0), progress=False)
    with pytest.raises(UserWarning, match=r"estimator=zo\.RGE\(directions=q\)$"):  # no box: Gaussian's fine
        zo.AskTell(X0, epochs=2, progress=False)
    opt = zo.AskTell(X0, epochs=2, bounds=(-2.0, 2.0), progress=False,
                     estimator=zo.RGE(directions=4, distribution="rademacher"))
    answered(opt)  # the fix it names runs in that box, unwarned (5 rows an ask)
    assert opt.done


MEASURE = textwrap.dedent("""
    import sys, tracemalloc
    import numpy as np
    import zoracle as zo

    d, k = int(sys.argv[1]), (None if sys.argv[2] == "None" else int(sys.argv[2]))
    def step(x0):
        opt = zo.AskTell(x0, epochs=1, progress=False, max_points=k)
        while not opt.done:
            X = opt.ask()
            opt.tell(np.einsum("ij,ij->i", X, X))  # (no temporary of the ask's size)
            del X

    step(np.zeros(8))  # (the modules a run imports, outside the count)
    tracemalloc.start()
    step(np.linspace(-1.0, 1.0, d))
    print(tracemalloc.get_traced_memory()[1])
""")


def peak_bytes(d, k) -> int:
    """The peak of memory traced (tracemalloc: NumPy's arrays, both threads) in a fresh process that
    runs one dense forward CGE step of an AskTell at ``d``, ``max_points`` ``k``."""
    out = subprocess.run([sys.executable, "-c", MEASURE, str(d), str(k)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def test_a_dense_cge_step_in_pieces_holds_pieces_not_the_whole_estimate():
    d = 1500
    whole = (d + 1) * d * 8  # one (d + 1, d) float64 ask: 18 MB
    # the estimate's points once, and the copy ask() hands out (they were held three times over)
    assert peak_bytes(d, None) < 2.5 * whole
    # pieces of 50 rows: a few (50, d) arrays, not the estimate's (generous: 1/10 of one ask)
    assert peak_bytes(d, 50) < whole / 10
