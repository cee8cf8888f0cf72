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
