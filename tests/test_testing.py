"""zoracle.testing: check_oracle accepts correct oracles and reports broken capabilities."""

from __future__ import annotations

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
    assert set(report) == {"determinism", "batch", "coordinate_losses", "prefix_suffix"}
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
                                       (_RowOfLosses, r"batch: \(1, 4\) result")])
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
    path and the plain call differ by 1e-8, float32 rounding of the outputs, and the float64
    defaults (rtol 1e-6, atol 1e-8) flagged it."""
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
    with pytest.raises(OracleCheckError):
        check_oracle(oracle, p, n_coords=16, rtol=1e-6, atol=1e-8)
    check_oracle(oracle, p, n_coords=16)  # the float32 defaults
