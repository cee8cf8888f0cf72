"""zoracle.testing: check_oracle accepts correct oracles and reports broken capabilities."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings

import zoracle as zo
from zoracle.testing import OracleCheckError, QuadraticOracle, check_oracle
from zoracle.testing.strategies import params_arrays, quadratic_oracles, quadratic_problems


@given(problem=quadratic_problems())
@settings(max_examples=20)
def test_quadratic_oracle_passes_and_has_known_gradient(problem):
    q, x = problem
    report = check_oracle(q, x)
    assert set(report) == {"determinism", "batch", "coordinate_losses", "prefix_suffix", "state"}
    assert all(v < 1e-6 for v in report.values())


@given(q=quadratic_oracles(psd=True))
@settings(max_examples=10)
def test_psd_strategy_gives_psd_hessians(q):
    assert np.linalg.eigvalsh(q.hessian()).min() > -1e-10


@given(x=params_arrays(dtype=np.float32))
@settings(max_examples=10)
def test_params_strategy(x):
    assert x.ndim == 1 and x.dtype == np.float32 and np.isfinite(x).all()
    zo.estimate_gradient(lambda p: float((p.astype(np.float64) ** 2).sum()), x)


def _broken(kind):
    q = QuadraticOracle(np.diag(np.arange(1.0, 11.0)), np.ones(10), blocks=[slice(0, 4), slice(4, 10)])
    if kind == "batch":
        q.batch = lambda X: QuadraticOracle.batch(q, X) + 1.0
    elif kind == "coordinate":
        q.coordinate_losses = lambda x, c, s: QuadraticOracle.coordinate_losses(q, x, c, -s)
    elif kind == "suffix":
        q.suffix = lambda f, x, b, c, s: QuadraticOracle.suffix(q, f, x, b, c, s) * 1.01
    elif kind == "blocks":
        q.blocks = [slice(0, 4), slice(5, 10)]
    elif kind == "random":
        rng = np.random.default_rng(0)
        q.__class__ = type("Noisy", (QuadraticOracle,), {"__call__": lambda self, x: QuadraticOracle.__call__(self, x) + rng.random()})
    return q


@pytest.mark.parametrize(
    "kind,fragment",
    [("batch", "batch:"), ("coordinate", "coordinate_losses:"), ("suffix", "prefix+suffix: block"),
     ("blocks", "blocks: block 1"), ("random", "determinism")],
)
def test_broken_capabilities_are_reported(kind, fragment):
    with pytest.raises(OracleCheckError) as info:
        check_oracle(_broken(kind), np.linspace(-1, 1, 10))
    assert fragment in str(info.value)
    assert isinstance(info.value, zo.ZoracleError)


def test_plain_function_passes():
    assert check_oracle(lambda x: float(np.sin(x).sum()), np.ones(4)) == {"determinism": 0.0}


def _quad(d=12, seed=0, blocks=None):
    r = np.random.default_rng(seed)
    M = r.standard_normal((d, d))
    return QuadraticOracle(M @ M.T / d + np.eye(d), r.standard_normal(d), blocks=blocks), r.standard_normal(d)


class _AbsStep(QuadraticOracle):
    """Perturbs by |step|: central CGE through it returns a gradient of 0."""

    def coordinate_losses(self, x, coords, step):
        return super().coordinate_losses(x, coords, abs(step))


class _SortsItsCoordinates(QuadraticOracle):
    """Answers in sorted order: a caller's unsorted coordinates get each other's losses."""

    def coordinate_losses(self, x, coords, step):
        return super().coordinate_losses(x, np.sort(np.asarray(coords)), step)


class _RowOfLosses(QuadraticOracle):
    """``batch`` as shape (1, k): estimate_gradient refuses it."""

    def batch(self, P):
        return super().batch(P)[None]


@pytest.mark.parametrize("cls,match", [(_AbsStep, r"params - step\*e_i"), (_SortsItsCoordinates, "coordinate_losses"),
                                       (_RowOfLosses, r"batch: \(1, 8\) result \(rows that move one coordinate\)")])
def test_check_oracle_catches_what_used_to_pass(cls, match):
    """These passed (only +step, sorted coordinates, any shape that reshapes to k) and then gave
    a zero gradient, permuted partials, or an estimate_gradient error."""
    q, x = _quad()
    oracle = cls(q.A, q.b)
    with pytest.raises(OracleCheckError, match=match):
        check_oracle(oracle, x)
    if cls is _AbsStep:  # what the check now prevents
        assert np.abs(zo.estimate_gradient(oracle, x, zo.CGE(scheme="central")).grad).max() < 1e-9


def test_check_oracle_reports_malformed_blocks_and_refuses_bad_counts():
    q, x = _quad(blocks=[slice(0, 6), slice(6, 12)])
    q.blocks = [slice(0, None)]
    with pytest.raises(OracleCheckError, match=r"block 0 is slice\(0, None, None\)"):
        check_oracle(q, x)
    with pytest.raises(zo.ArgumentError, match="`n_coords` must be an integer >= 1"):
        check_oracle(_quad()[0], x, n_coords=0)


def test_check_oracle_float32_defaults_allow_float32_rounding():
    """A correct float32 TorchOracle near a fit (outputs about 50, losses about 1e-4): its fast
    path and the plain call differ by 1e-8, float32 rounding of the outputs. The float64 value
    tolerances (rtol 1e-6, atol 1e-8) flagged it; relative to the loss changes the check's steps
    make, the two agree, so it passes under those tolerances too."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from zoracle.adapters.torch import TorchOracle

    torch.set_num_threads(1)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    X = torch.randn(32, 4) * 3
    with torch.no_grad():
        Y = model(X) + 0.01 * torch.randn(32, 2) + 50.0
    model[-1].bias.data += 50.0
    oracle = TorchOracle(model, lambda o, t: ((o - t) ** 2).mean(1)).bind((X, Y))
    p = oracle.initial_params()
    report = check_oracle(oracle, p, n_coords=16)  # the float32 defaults
    assert 0 < report["coordinate_losses"] < 1e-6  # rounding, not zero: the check is not vacuous
    check_oracle(oracle, p, n_coords=16, rtol=1e-6, atol=1e-8)


class _Offset:
    """A float64 least-squares loss plus 1e6 (a large loss, small changes), with a batch."""

    def __init__(self, fault=None):
        self.fault = fault

    def __call__(self, x):
        return 1e6 + float(np.sum((x - 1.0) ** 2))

    def batch(self, P):
        return 1e6 + np.sum((P - 1.0) ** 2, axis=1) + (5e-3 if self.fault == "offset" else 0.0)


class _OffsetCoords(_Offset):
    def coordinate_losses(self, x, coords, step):
        scale = 0.5 if self.fault == "half step" else 1.0
        out = []
        for i in coords:
            y = x.copy()
            y[i] += scale * step
            out.append(self(y))
        return np.array(out)


@pytest.mark.parametrize("fault,match", [("half step", "coordinate_losses: deviates"), ("offset", "batch: ")])
def test_check_oracle_judges_the_loss_changes_under_a_large_loss(fault, match):
    """Under a loss of 1e6, a tolerance relative to the loss (1e-6 of it: 1) passed a fast path
    applying half the step, and a batch 5e-3 off, whose CGE gradients are 2x and 50% off."""
    x = np.zeros(5)
    cls = _OffsetCoords if fault == "half step" else _Offset
    assert max(check_oracle(cls(), x).values()) < 1e-6  # the correct one passes
    broken = cls(fault)
    with pytest.raises(OracleCheckError, match=match) as info:
        check_oracle(broken, x)
    assert "loss change" in str(info.value)
    fast = zo.estimate_gradient(broken, x, zo.CGE()).grad
    plain = zo.estimate_gradient(lambda p: broken(p), x, zo.CGE()).grad
    assert np.abs(fast - plain).max() > 0.4  # what the check now prevents


def test_check_oracle_reports_a_failing_oracle_and_refuses_a_vacuous_step():
    """An oracle that raised or returned an array surfaced as its own TypeError / exception, and
    step=0 passed a coordinate_losses that ignores the step."""
    x = np.ones(3)
    with pytest.raises(OracleCheckError, match=r"oracle\(params\) raised OracleError: .*expected a scalar, got shape"):
        check_oracle(lambda p: p, x)
    with pytest.raises(OracleCheckError, match=r"oracle\(params\) raised ZeroDivisionError") as info:
        check_oracle(lambda p: 1 / 0, x)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    with pytest.raises(OracleCheckError, match="expected a finite loss"):
        check_oracle(lambda p: float("nan"), x)

    class Fails:
        def __call__(self, p):
            return float(p @ p)

        def coordinate_losses(self, p, coords, step):
            raise RuntimeError("device lost")

    with pytest.raises(OracleCheckError, match=r"oracle.coordinate_losses\(params, .*\) raised RuntimeError: device lost"):
        check_oracle(Fails(), x)
    with pytest.raises(zo.ArgumentError, match="`oracle` must be callable"):
        check_oracle(3, x)
    for bad in (0.0, float("nan"), True, "0.1"):
        with pytest.raises(zo.ArgumentError, match="`step` must be a finite nonzero number"):
            check_oracle(lambda p: float(p @ p), x, step=bad)
    with pytest.raises(zo.ArgumentError, match="`rtol` must be a finite number >= 0"):
        check_oracle(lambda p: float(p @ p), x, rtol=-1)


def test_check_oracle_takes_a_numpy_scalar_step():
    """step=np.float64(mu) (a mu from np.logspace or a float32 config) failed every
    coordinate_losses and suffix check with "oracle.coordinate_losses(...) raised TypeError: can't
    multiply sequence by non-int of type 'numpy.bool'", blaming a correct oracle."""
    q = QuadraticOracle(np.diag(np.arange(1.0, 7.0)), np.ones(6), blocks=[slice(0, 2), slice(2, 6)])
    x = np.linspace(-1, 1, 6)
    want = check_oracle(q, x, step=1e-2)  # the reference: the same check with a Python float
    for step in (np.float64(1e-2), np.float32(1e-2)):
        got = check_oracle(q, x, step=step)
        assert set(got) == set(want) == {"determinism", "batch", "coordinate_losses", "prefix_suffix", "state"}
        assert all(v < 1e-9 for v in got.values()), got


def test_check_oracle_refuses_an_int_beyond_float_by_name():
    """step, rtol or atol of 10**400 (a Python int, numbers.Real) reached np.isfinite, which raised
    a bare TypeError ("ufunc 'isfinite' not supported ...") naming no argument."""
    x = np.ones(3)
    for kw, name in (({"step": 10**400}, "step"), ({"rtol": 10**400}, "rtol"), ({"atol": -10**400}, "atol")):
        with pytest.raises(zo.ArgumentError, match=f"`{name}` must be a finite"):
            check_oracle(lambda p: float(p @ p), x, **kw)
    assert check_oracle(lambda p: float(p @ p), x, step=1, rtol=0, atol=1)["determinism"] == 0  # ints still fine


def _sq(x):
    return float(np.sum((x - 1.0) ** 2))


class _ClipsInBatch:  # wrong: batch() projects its rows onto [-1, 1], __call__ does not
    def __call__(self, x):
        return _sq(x)

    def batch(self, X):
        np.clip(X, -1, 1, out=X)
        return np.sum((X - 1.0) ** 2, axis=1)


class _ScratchBatch:  # right: it works in its input, which estimate_gradient gives it as a private copy
    def __call__(self, x):
        return _sq(x)

    def batch(self, X):
        X -= 1.0
        return np.sum(X ** 2, axis=1)


class _WritesParams:  # writes into the params it is given: estimate_gradient refuses it
    def __call__(self, x):
        np.clip(x, -1, 1, out=x)
        return _sq(x)


def test_check_oracle_gives_the_oracle_what_estimate_gradient_gives_it():
    """The reference losses were computed from arrays the oracle had written into: an oracle whose
    batch() clipped its rows passed (its gradients 8.0 off), one using its rows as scratch failed,
    and one writing into params passed and changed the caller's array."""
    x = np.linspace(-3, 3, 10)
    with pytest.raises(OracleCheckError, match="batch: .* deviates from a loop of calls"):
        check_oracle(_ClipsInBatch(), x.copy(), step=1e-3)
    check_oracle(_ScratchBatch(), x.copy(), step=1e-3)
    with pytest.raises(OracleCheckError, match="read-only"):
        check_oracle(_WritesParams(), x, step=1e-3)
    assert np.array_equal(x, np.linspace(-3, 3, 10))


class _Float32:
    """Computes in float32 from float64 params; batch() sums in another order, as a matmul would."""

    def __init__(self, compute_dtype):
        self.compute_dtype = compute_dtype
        self.w = np.random.default_rng(1).standard_normal(400).astype(np.float32)

    def __call__(self, x):
        return float(np.sum((np.asarray(x, dtype=np.float32) * self.w) ** 2, dtype=np.float32))

    def batch(self, X):
        return np.sum(((np.asarray(X, dtype=np.float32) * self.w) ** 2)[:, ::-1], axis=1, dtype=np.float32)


@pytest.mark.parametrize("spelling", ["float32", np.dtype("float32"), np.float32])
def test_check_oracle_reads_compute_dtype_however_it_is_spelled(spelling):
    """``compute_dtype = np.float32`` (the spelling estimate_gradient's own message suggests) was
    read as str(np.float32) and got float64 tolerances."""
    check_oracle(_Float32(spelling), np.random.default_rng(0).standard_normal(400) * 100, step=1e-3)


@pytest.mark.parametrize("scale", [0.1, 3.3, 1e-3, 1e39])
def test_params_arrays_take_any_scale(scale):
    """Only scales float32 holds exactly worked (hypothesis refused 0.1; 1e39 overflowed)."""
    @settings(max_examples=20, deadline=None)
    @given(params_arrays(scale=scale))
    def run(p):
        assert p.dtype == np.float64 and np.all(np.abs(p) <= scale)

    run()


class _ModeLeak(QuadraticOracle):
    """Its fast path switches a mode and leaves it (a torch fast path calling model.eval() and
    never restoring train()): every later plain call changes."""

    training = True

    def __call__(self, p):
        return super().__call__(p) * (1.0 if self.training else 1.01)

    def coordinate_losses(self, p, coords, step):
        self.training = False
        return np.array([self(p + step * np.eye(len(p))[i]) for i in coords])


class _StaleBase(QuadraticOracle):
    """Its fast path caches the unperturbed loss once, keyed on nothing: right at the first point."""

    _base = None

    def coordinate_losses(self, p, coords, step):
        if self._base is None:
            self._base = self(p)
        g, c = self.A @ p + self.b, np.asarray(coords)
        return self._base + step * g[c] + 0.5 * step ** 2 * self.A[c, c]


class _FirstRowsTail(QuadraticOracle):
    """``batch`` takes every row's last entries from row 0: rows that move one coordinate of the
    first ones agree; rows that move every coordinate (RGE's) do not."""

    def batch(self, P):
        P = np.array(P)
        P[:, -3:] = P[0, -3:]
        return super().batch(P)


@pytest.mark.parametrize("cls, match", [(_ModeLeak, "state: oracle\\(params\\) after the capability calls"),
                                        (_StaleBase, "coordinate_losses at a second point"),
                                        (_FirstRowsTail, "batch")])
def test_check_oracle_catches_state_left_behind_stale_caches_and_wrong_dense_rows(cls, match):
    # each passed: the check ran at one point, sent only one-coordinate batch rows of the first
    # (sorted) coordinates, and never called the oracle again after its fast paths; estimate_gradient
    # was then wrong (off by 0.93 and 12.8 where the gradient is 3.4 and 4.2; RGE's last entries)
    q, x = _quad(d=12, seed=1)
    with pytest.raises(OracleCheckError, match=match):
        check_oracle(cls(q.A, q.b, blocks=[]), x, step=5e-3)
    check_oracle(QuadraticOracle(q.A, q.b, blocks=[]), x, step=5e-3)  # the correct oracle passes


class _PositiveOnly:
    """``sum(p log p)``, defined for p > 0 only, with batch and coordinate fast paths."""

    def __call__(self, p):
        if (p <= 0).any():
            raise ValueError("params must be > 0")
        return float(np.sum(p * np.log(p)))

    def batch(self, P):
        if (P <= 0).any():
            raise ValueError("params must be > 0")
        return np.sum(P * np.log(P), axis=1)

    def coordinate_losses(self, p, coords, step):
        return np.array([self(p + step * np.eye(len(p))[i]) for i in coords])


class _CappedBatch(QuadraticOracle):
    """Takes at most 4 rows a batch call, as it declares."""

    max_queries_per_call = 4

    def batch(self, P):
        if len(P) > 4:
            raise MemoryError(f"{len(P)} rows > 4")
        return super().batch(P)


def test_check_oracle_stays_near_params_and_within_the_batch_cap():
    # the second point and the dense rows moved every entry by step * N(0, 1): an oracle defined for
    # p > 0 failed at p = 3 * step; and one batch call of 8 rows broke an oracle's declared cap of 4,
    # which estimate_gradient keeps to
    for d in (10, 200):
        check_oracle(_PositiveOnly(), np.full(d, 0.03))
    q, x = _quad(d=12)
    check_oracle(_CappedBatch(q.A, q.b, blocks=[]), x)


def test_one_coordinate_batch_rows_keep_their_own_tolerance():
    # judged together with the dense rows, whose loss changes are larger, a batch 1% off on
    # one-coordinate rows passed at large d
    d = 20000
    g = np.random.default_rng(1).standard_normal(d) / np.sqrt(d)

    class OffByOnePercent:
        def __call__(self, x):
            return float(g @ x + 0.5 * x @ x)

        def batch(self, X):
            base = self(np.zeros(d))
            out = []
            for x in X:
                true = self(x)
                out.append(base + 1.01 * (true - base) if np.count_nonzero(x) == 1 else true)
            return np.array(out)

    with pytest.raises(OracleCheckError, match=r"batch: \(8,\) result \(rows that move one coordinate\)"):
        check_oracle(OffByOnePercent(), np.zeros(d))


def test_check_oracle_looks_at_the_ends_and_at_one_row_batches():
    """check_oracle sampled 8 coordinates and sent batches of 4 rows: a coordinate_losses wrong at
    the last coordinate passed in 188 of 200 seeds (CGE off by 0.32 there), a suffix wrong at each
    block's last coordinate in 145 of 200, and a batch that squeezes one row to a scalar, or is
    wrong past its 4th row, passed always (CGE off by 12)."""
    d = 100
    A = np.random.default_rng(0).standard_normal((d, d)) / 10

    class Base:
        def __call__(self, x):
            return float(0.5 * x @ A @ x + x.sum())

    class LastWrong(Base):
        def coordinate_losses(self, x, coords, step):
            out = []
            for i in coords:
                y = np.array(x, dtype=float)
                y[i] += -step if i == d - 1 else step
                out.append(self(y))
            return np.array(out)

    class Squeezed(Base):
        def batch(self, X):
            return np.squeeze(np.array([self(x) for x in X]))

    class WrongPastFour(Base):
        def batch(self, X):
            return np.array([self(x) + (1.0 if r >= 4 else 0.0) for r, x in enumerate(X)])

    for oracle, match in ((LastWrong(), "coordinate_losses"), (Squeezed(), "one row alone"),
                          (WrongPastFour(), "rows that move every coordinate")):
        for seed in range(5):
            with pytest.raises(OracleCheckError, match=match):
                check_oracle(oracle, np.zeros(d), rng=seed)


class _LocalSuffix:
    """A split oracle whose suffix turns its coordinates into block-local indices in place."""

    blocks = [slice(0, 3), slice(3, 6)]

    def __init__(self):
        rng = np.random.default_rng(0)
        self.A, self.b = rng.standard_normal((20, 6)), rng.standard_normal(20)

    def __call__(self, x):
        return float(np.mean((self.A @ x - self.b) ** 2))

    def prefix(self, x, block):
        keep = np.ones(6, bool)
        keep[self.blocks[block]] = False
        return self.A[:, keep] @ x[keep] - self.b

    def suffix(self, feats, x, block, coords, step):
        s = self.blocks[block]
        coords -= s.start
        out = []
        for i in coords:
            xb = x[s].copy()
            xb[i] += step
            out.append(np.mean((feats + self.A[:, s] @ xb) ** 2))
        return np.array(out)


def test_coordinates_an_oracle_is_given_are_read_only():
    """The planner handed suffix / coordinate_losses a writable view of its own coordinates:
    `coords -= start` inside the oracle scattered block 1's partials into entries 0-2 and left
    3-5 at 0, silently; check_oracle, which passed copies, passed it."""
    x = np.random.default_rng(1).standard_normal(6)
    with pytest.raises(zo.OracleError, match="modify an array it was given .* coordinates"):
        zo.estimate_gradient(_LocalSuffix(), x, zo.CGE(1e-6))
    with pytest.raises(OracleCheckError, match="read-only"):
        check_oracle(_LocalSuffix(), x)


class _Curved:
    """Nine weights of curvature 1e4 and one bias of curvature 1, whose coordinate_losses leave
    the bias unperturbed (a fast path that forgets a block), or (``cap``) take at most 4
    coordinates a call, or return a tensor that requires grad."""

    def __init__(self, forget_bias=False, cap=None, torch_out=False):
        self.h = np.r_[np.full(9, 1e4), 1.0]
        self.forget, self.torch_out = forget_bias, torch_out
        if cap:
            self.max_queries_per_call = cap

    def __call__(self, x):
        return float(0.5 * self.h @ (x - 1) ** 2)

    def coordinate_losses(self, x, coords, step):
        assert len(coords) <= getattr(self, "max_queries_per_call", len(coords)), f"got {len(coords)} coordinates"
        out = []
        for i in coords:
            y = x.copy()
            if not (self.forget and i == 9):
                y[i] += step
            out.append(self(y))
        if self.torch_out:
            import torch

            return torch.tensor(out, dtype=torch.float64, requires_grad=True) * 1.0
        return np.array(out)


def test_check_oracle_judges_each_query_by_its_own_change_in_float64():
    """Each query was allowed 0.1% of the largest loss change of its group: a fast path leaving a
    bias unperturbed beside weights of 1e4 curvature passed (its partial 0 against -2)."""
    x = np.zeros(10)
    check_oracle(_Curved(), x)
    with pytest.raises(OracleCheckError, match="coordinate_losses"):
        check_oracle(_Curved(forget_bias=True), x)
    assert zo.estimate_gradient(_Curved(forget_bias=True), x, zo.CGE(1e-6)).grad[9] == 0.0  # (what it would give)


def test_check_oracle_calls_as_the_planner_does():
    """It sent coordinate_losses all its coordinates at once, past max_queries_per_call, and
    converted a returned tensor that requires grad without detaching it, failing correct
    oracles that estimate_gradient runs."""
    torch = pytest.importorskip("torch")  # noqa: F841
    x = np.zeros(10)
    for oracle in (_Curved(cap=4), _Curved(torch_out=True)):
        zo.estimate_gradient(oracle, x, zo.CGE(1e-6))
        check_oracle(oracle, x, n_coords=8)


class _SqueezesOne(QuadraticOracle):
    """Right for several coordinates; a one-coordinate call's result squeezed to a scalar (the
    planner sends one wherever a chunk or a mask's block leaves one)."""

    def coordinate_losses(self, params, coords, step):
        return np.squeeze(super().coordinate_losses(params, coords, step))

    def suffix(self, features, params, block, coords, step):
        return np.squeeze(super().suffix(features, params, block, coords, step))


def test_check_oracle_sends_one_coordinate_alone_to_coordinate_losses_and_suffix():
    """check_oracle passed such an oracle (it sent one coordinate alone only when d or a block
    was 1), and sparse CGE on coordinates=[3] then failed; a split oracle failed at its first
    masked step."""
    rng = np.random.default_rng(0)
    M = rng.standard_normal((12, 12))
    oracle = _SqueezesOne(M @ M.T, blocks=[slice(0, 5), slice(5, 12)])
    with pytest.raises(zo.OracleError, match=r"expected 1 losses, got shape \(\)"):
        zo.estimate_gradient(oracle, np.ones(12), zo.CGE(mu=1e-3), coordinates=[3])
    with pytest.raises(OracleCheckError) as info:
        check_oracle(oracle, np.ones(12))
    text = str(info.value)
    assert "coordinate_losses: a call of 1 coordinate(s) returned shape ()" in text
    assert re.search(r"prefix\+suffix: block 0, step -0\.01, coordinates \[[\d, ]+\]: a call of 1 coordinate\(s\) "
                     r"returned shape \(\)", text), text
    check_oracle(QuadraticOracle(M @ M.T, blocks=[slice(0, 5), slice(5, 12)]), np.ones(12))  # the same, unsqueezed


class _SortsASmallBlock(QuadraticOracle):
    """Right, except that its last block's suffix answers in sorted coordinate order."""

    def suffix(self, features, params, block, coords, step):
        if block == len(self.blocks) - 1:
            blk = self.blocks[block]
            mask = np.zeros(blk.stop - blk.start, bool)
            mask[np.asarray(coords) - blk.start] = True
            coords = np.arange(blk.start, blk.stop)[mask]
        return super().suffix(features, params, block, coords, step)


def test_check_oracle_always_sends_some_coordinates_unsorted():
    """A random order of a two-coordinate block is sorted half the time: a suffix answering in
    sorted order passed for 10 of 40 seeds (the default rng=0 among them), and CGE on
    coordinates [9, 8] then swapped the two partials."""
    rng = np.random.default_rng(0)
    A, b, x = rng.standard_normal((10, 10)), rng.standard_normal(10), rng.uniform(-1, 1, 10)
    for seed in range(12):
        with pytest.raises(OracleCheckError, match="prefix\\+suffix"):
            check_oracle(_SortsASmallBlock(A, b, blocks=[slice(0, 8), slice(8, 10)]), x, rng=seed)


class _LeastSquares32:
    """docs/concepts.md's least-squares CoordinateOracle on float32 params, its loss scaled by
    ``scale``; ``fault``: "sign" applies -step in coordinate_losses, "zeros" returns zeros."""

    def __init__(self, scale, fault=None):
        rng = np.random.default_rng(0)
        self.A, self.b = rng.standard_normal((20, 8)), rng.standard_normal(20)
        self.scale, self.fault = scale, fault

    def __call__(self, x):
        return float(self.scale * np.mean((self.A @ x.astype(np.float64) - self.b) ** 2))

    def coordinate_losses(self, x, coords, step):
        if self.fault == "zeros":
            return np.zeros(len(coords))
        s = -step if self.fault == "sign" else step
        out = []
        for i in coords:
            y = x.copy()
            y[i] = y[i] + np.float32(s)
            out.append(self(y))
        return np.array(out)


@pytest.mark.parametrize("fault", ["sign", "zeros"])
def test_check_oracle_in_float32_is_not_blind_under_a_small_loss(fault):
    """float32's default atol of 1e-7 is wider than a loss of 3.6e-5 changes: a coordinate_losses
    with the wrong sign (central CGE then 2.00 off) or all zeros passed. Changes standing above
    100 units of the loss's own float32 rounding must now be followed to within 1.5 times their
    size; the correct oracle still passes."""
    x = np.random.default_rng(1).standard_normal(8).astype(np.float32)
    check_oracle(_LeastSquares32(1e-6), x)
    check_oracle(_LeastSquares32(1e-9), x)
    with pytest.raises(OracleCheckError, match=r"coordinate_losses.*\(most at coordinate \d+\)"):
        check_oracle(_LeastSquares32(1e-6, fault), x)


def test_check_oracle_stays_inside_a_bounded_domain_and_checks_unbind():
    """Batch rows moved one coordinate by up to 8 steps: a Bernoulli likelihood with p at 0.97
    (correct, and central CGE at that step is right) raised NaN in the check. And a bound data
    oracle's unbind() was never called: one returning its batch less a sample passed, and
    process workers, which rebuild it as parent.bind(batch), trained on another loss."""
    class Bernoulli:
        def __call__(self, p):
            return float(-np.sum(np.log(p[:4]) + np.log1p(-p[4:]))) if np.all((p > 0) & (p < 1)) else float("nan")

        def batch(self, P):
            return np.array([self(p) for p in P])

    check_oracle(Bernoulli(), np.array([0.5, 0.6, 0.97, 0.96, 0.3, 0.2, 0.95, 0.1]), step=1e-2)

    class Parent:
        def bind(self, batch):
            return Bound(self, batch)

    class Bound:
        def __init__(self, parent, batch, drop=False):
            self.parent, (self.X, self.y), self.drop = parent, batch, drop

        def __call__(self, w):
            return float(np.mean((self.X @ w - self.y) ** 2))

        def unbind(self):
            return self.parent, ((self.X[:-1], self.y[:-1]) if self.drop else (self.X, self.y))

    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((8, 4)), rng.standard_normal(8))
    w = rng.standard_normal(4)
    assert check_oracle(Bound(Parent(), batch), w)["unbind"] == 0.0
    with pytest.raises(OracleCheckError, match=r"unbind: parent\.bind\(batch\) of oracle\.unbind\(\) deviates"):
        check_oracle(Bound(Parent(), batch, drop=True), w)


class _Scaled32:
    """``scale * sum(x^2)`` in float32, with a coordinate_losses ``off`` from the plain calls."""

    def __init__(self, scale, off=0.0):
        self.scale, self.off = scale, off

    def __call__(self, x):
        return float(np.float32(self.scale) * np.sum(x.astype(np.float32) ** 2, dtype=np.float32))

    def coordinate_losses(self, x, coords, step):
        out = []
        for i in coords:
            y = x.copy()
            y[i] = y[i] + step
            out.append(self(y) + self.off)
        return np.array(out)


def test_check_oracle_float32_bounds_are_the_ones_docs_concepts_names():
    """docs/concepts.md: in float32 the bound is 1e-5 of the loss (10 under a loss of 1e6, not
    its rounding 0.06), and a small float32 loss keeps atol 1e-7 (not 64 units of its rounding)."""
    x = np.ones(20, np.float32)
    big = _Scaled32(5e4)(x)
    assert big == 1e6
    check_oracle(_Scaled32(5e4, off=4.0), x)  # 64 float32 units of 1e6 (0.0625 each): within 10
    with pytest.raises(OracleCheckError):
        check_oracle(_Scaled32(5e4, off=20.0), x)
    small = _Scaled32(1e-5)(x)
    unit = float(np.spacing(np.float32(small)))
    check_oracle(_Scaled32(1e-5, off=1000 * unit), x)  # 1.5e-8: 1000 units of its rounding, within 1e-7
    with pytest.raises(OracleCheckError):
        check_oracle(_Scaled32(1e-5, off=2e-7), x)


def test_check_oracle_always_checks_the_first_coordinate():
    """The docstring: the sampled coordinates "and the first and last". A fast path wrong at
    coordinate 0 only (an offset that starts one entry late) must be caught whatever the sample."""

    class FirstWrong:
        def __call__(self, x):
            return float(x @ x)

        def coordinate_losses(self, x, coords, step):
            out = []
            for i in coords:
                y = np.array(x, dtype=np.float64)
                if i != 0:  # coordinate 0 left unperturbed
                    y[i] += step
                out.append(float(y @ y))
            return np.array(out)

    for seed in range(4):
        with pytest.raises(OracleCheckError, match=r"coordinate_losses: .*most at coordinate 0\)"):
            check_oracle(FirstWrong(), np.linspace(-1.0, 1.0, 60), n_coords=4, rng=seed)


def test_check_oracle_finds_a_nondeterminism_far_below_the_loss():
    """Determinism is checked exactly: a loss that moves by 1e-9 of itself between two calls at
    the same params (an unseeded reduction order) is nondeterministic all the same."""
    state = {"n": 0}

    def jitter(x):
        state["n"] += 1
        return float(x @ x) * (1.0 + 1e-9 * state["n"])

    with pytest.raises(OracleCheckError, match="determinism: two calls at the same params differ by"):
        check_oracle(jitter, np.ones(5))


def test_check_oracle_float32_batch_tolerance_is_1e_5_of_the_loss():
    """The docstring's float32 tolerance: rtol 1e-5 (and 0.1% of the largest loss change). A
    batch 1e-4 of the loss off (ten times float32's tolerance, 100 times float32 rounding) fails."""

    class Off:
        def __call__(self, x):
            return float(np.sum(np.asarray(x, dtype=np.float64) ** 2))

        def batch(self, X):
            return np.sum(np.asarray(X, dtype=np.float64) ** 2, axis=1) * (1 + 1e-4)

    x = np.linspace(0.5, 1.0, 8).astype(np.float32)  # loss 5.4; a step's change about 0.02, 0.1% of it 2e-5
    with pytest.raises(OracleCheckError, match="batch: .*deviates from a loop of calls"):
        check_oracle(Off(), x)
    Off.batch = lambda self, X: np.sum(np.asarray(X, dtype=np.float64) ** 2, axis=1) * (1 + 1e-7)
    check_oracle(Off(), x)  # float32 rounding of the loss: passes


def test_check_oracle_always_checks_each_blocks_first_coordinate():
    """The docstring: coordinates sampled in every block "and the block's first and last (where
    slice bugs sit)". A suffix wrong at the first coordinate of block 1 only must be caught
    whatever the sample."""
    d = 60
    q = QuadraticOracle(np.diag(np.linspace(1.0, 2.0, d)), np.ones(d), blocks=[slice(0, 30), slice(30, 60)])

    def suffix(f, x, b, c, s):
        out = np.asarray(QuadraticOracle.suffix(q, f, x, b, c, s), dtype=np.float64).copy()
        out[np.asarray(c) == 30] = float(q(x))  # the block's first coordinate left unperturbed
        return out

    q.suffix = suffix
    for seed in range(4):
        with pytest.raises(OracleCheckError, match=r"prefix\+suffix: block 1, .*most at coordinate 30\)"):
            check_oracle(q, np.linspace(-1.0, 1.0, d), n_coords=2, rng=seed)


def test_check_oracle_checks_unbind_away_from_a_zero_initialized_model():
    """Logistic regression from zero weights has the loss log 2 on every sample: at params an
    unbind that returns its batch less a sample agrees with the oracle. The check's second
    point (one coordinate moved by a step) tells them apart."""

    class Parent:
        def bind(self, batch):
            return Bound(self, batch)

    class Bound:
        def __init__(self, parent, batch, drop=False):
            self.parent, (self.X, self.y), self.drop = parent, batch, drop

        def __call__(self, w):
            return float(np.mean(np.logaddexp(0.0, -self.y * (self.X @ w))))

        def unbind(self):
            return self.parent, ((self.X[:-1], self.y[:-1]) if self.drop else (self.X, self.y))

    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((8, 4)), rng.choice([-1.0, 1.0], 8))
    w = np.zeros(4)
    assert Bound(Parent(), batch)(w) == Bound(Parent(), (batch[0][:-1], batch[1][:-1]))(w) == pytest.approx(np.log(2))
    assert check_oracle(Bound(Parent(), batch), w)["unbind"] == 0.0
    with pytest.raises(OracleCheckError, match=r"unbind: parent\.bind\(batch\) of oracle\.unbind\(\) deviates"):
        check_oracle(Bound(Parent(), batch, drop=True), w)


@pytest.mark.parametrize("kwargs, match", [
    (dict(A=np.eye(4), b=[1.0, 2.0]), r"`b` must have shape \(4,\) to match `A` \(4, 4\), got \(2,\)"),
    (dict(A=np.eye(4), b=np.ones((2, 2))), r"`b` must have shape \(4,\)"),
    (dict(A=np.ones((2, 3))), r"`A` must be a square \(d, d\) matrix, got shape \(2, 3\)"),
    (dict(A=np.ones(4)), r"`A` must be a square \(d, d\) matrix, got shape \(4,\)"),
    (dict(A=None), r"`A` must be a square"),
    (dict(A="abc"), r"`A` must be a real \(d, d\) matrix"),
    (dict(A=np.eye(2), c=None), r"`c` must be a real number, got None"),
    (dict(A=np.eye(2), c=np.ones(2)), r"`c` must be a real number"),
])
def test_quadratic_oracle_refuses_misshaped_inputs_at_construction(kwargs, match):
    with pytest.raises(zo.ArgumentError, match=match):
        QuadraticOracle(**kwargs)


def test_quadratic_oracle_still_takes_lists_and_numpy_scalars():
    q = QuadraticOracle([[2.0, 0.0], [0.0, 4.0]], [1, 1], c=np.float32(0.5))
    x = np.array([1.0, -1.0])
    assert q(x) == 0.5 * (2 + 4) + 0 + 0.5
    np.testing.assert_allclose(q.grad(x), [3.0, -3.0])


def test_check_oracle_determinism_failure_does_not_claim_a_tolerance():
    """Determinism is compared bit for bit, whatever ``rtol`` and ``atol``: the error must not say
    a difference within ``atol + rtol * |loss|`` was allowed (it listed rtol=1, atol=1 under a
    failure of 1e-15), nor suggest loosening them, and must say how to check a noisy oracle."""
    flips = iter([0.0, 1.0] * 10)

    def last_bit(x):  # a reduction in another order each call: a last-bit difference
        return float(x @ x) * (1.0 + 2.3e-16 * next(flips))

    with pytest.raises(OracleCheckError) as info:
        check_oracle(last_bit, np.ones(5), rtol=1.0, atol=1.0)
    msg = str(info.value)
    assert "determinism: two calls at the same params differ by" in msg
    assert "rtol and atol do not apply" in msg and "seed" in msg
    assert "allowed: atol + rtol" not in msg and "pass rtol=1e-5" not in msg

    class LastBitBatch:  # the same with a batch: the state check must not blame a fast path for it
        def __call__(self, x):
            return last_bit(x)

        def batch(self, X):
            return np.array([last_bit(x) for x in X])

    flips = iter([0.0, 1.0] * 100)
    with pytest.raises(OracleCheckError) as info:
        check_oracle(LastBitBatch(), np.ones(5))
    msg = str(info.value)
    assert "determinism:" in msg and "left state behind" not in msg and "allowed: atol + rtol" not in msg
