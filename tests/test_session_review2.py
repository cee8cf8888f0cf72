"""A review of the time-based ``checkpoint_every`` and the fast paths' loss-type checks (h315).

- ``np.timedelta64(10)``, a time with no unit, was read as 10 seconds (NumPy converts a unitless one
  to any unit), where ``"10m"`` is refused as ambiguous; an attosecond one raised a bare OverflowError.
- Process workers report the losses' type by name, and the driver keeps the narrowest: a torch
  loss's name came as ``"torch.bfloat16"``, which the precision table did not know (read as float64),
  so a bfloat16 batch beside a torch float32 plain call went unwarned on process workers.
- check_oracle blamed a narrower loss type for any deviation: a float32 batch averaging where the
  plain call sums (off by 97%) was told only to return float64, which leaves it as wrong.
- An integer batch beside a plain call returning ``float(count)`` lost the count advice ("a count
  moves in whole units whatever its type"): told to return a float64 array, which silences the
  warning and leaves the estimate as quantized.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import zoracle as zo
import zoracle._estimators as est_module
from zoracle.testing import OracleCheckError, check_oracle

from test_checkpoint_time import unitless_timedelta64  # noqa: E402  (NumPy 2.5 deprecates making one)

D = 12
_rng = np.random.default_rng(11)
A = _rng.standard_normal((30, D))
B = _rng.standard_normal(30)


def loss64(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.sum((A @ x - B) ** 2) / 30 + 100.0)


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())  # the coarse-loss warning is given once per class


# checkpoint_every as a time -------------------------------------------------------------------

def test_a_unitless_timedelta64_is_refused_not_read_as_seconds(tmp_path):
    # (the value as its repr shows it: np.timedelta64(10) from NumPy 2, numpy.timedelta64(10) before)
    with pytest.raises(zo.ArgumentError, match=r"`checkpoint_every` is (np|numpy)\.timedelta64\(10\), "
                                               r"a time with no unit \(seconds, minutes\?\); "
                                               r"pass np.timedelta64\(10, \"s\"\) for seconds"):
        zo.train(lambda x: float(x @ x), np.ones(3), checkpoint=tmp_path / "run.npz",
                 checkpoint_every=unitless_timedelta64(10), progress=False)
    assert not (tmp_path / "run.npz").exists()


def test_an_attosecond_timedelta64_is_a_time_not_a_bare_overflow():
    from zoracle._cadence import save_cadence

    assert save_cadence(np.timedelta64(10, "as"), "run.npz").seconds == pytest.approx(1e-17)
    with pytest.raises(zo.ArgumentError, match=r"the time between saves must be > 0"):
        save_cadence(np.timedelta64(-3, "as"), "run.npz")


# a narrower fast path on process workers --------------------------------------------------------

class _SlowTorchBatch:
    """A plain call returning a torch float32 scalar and a bfloat16 batch that takes a while: on two
    process workers, the base point's "torch.float32" reaches the driver first."""

    def __call__(self, x):
        import torch

        return torch.tensor(loss64(x), dtype=torch.float32)

    def batch(self, X):
        import torch

        time.sleep(0.3)
        return torch.tensor([loss64(r) for r in np.asarray(X)], dtype=torch.float32).to(torch.bfloat16)


@pytest.mark.slow
def test_a_process_worker_reports_a_torch_bfloat16_batch():
    """Serially the bfloat16 batch is warned about (its estimate is off by about 50, against a gradient
    of at most 5); on process workers it went unwarned, the driver reading "torch.bfloat16" as wide."""
    pytest.importorskip("torch")
    from zoracle.executors import JoblibExecutor

    x = _rng.standard_normal(D).astype(np.float32)
    with JoblibExecutor(2, backend="loky") as ex:
        with pytest.warns(UserWarning, match=r"returns bfloat16 losses"):
            zo.estimate_gradient(_SlowTorchBatch(), x, zo.CGE(), executor=ex)


# check_oracle's cause -------------------------------------------------------------------------------

class _MeanInFloat32:
    """A float64 plain call that sums, and a batch that averages and returns float32."""

    def __call__(self, x):
        return loss64(x)

    def batch(self, X):
        return (np.array([loss64(r) for r in np.asarray(X)]) / 30).astype(np.float32)


def test_check_oracle_blames_the_factor_not_the_narrower_type_that_cannot_explain_it():
    with pytest.raises(OracleCheckError) as info:
        check_oracle(_MeanInFloat32(), _rng.standard_normal(D), step=5e-3)
    text = str(info.value)
    assert "`batch`'s losses are the plain calls' times 0.0333333" in text
    assert "`batch` returns float32 losses" not in text


class _Float32Batch:
    """A float64 plain call and a batch rounding the same losses to float32: the type is the cause."""

    def __call__(self, x):
        return loss64(x)

    def batch(self, X):
        return np.array([loss64(r) for r in np.asarray(X)]).astype(np.float32)


def test_check_oracle_still_blames_a_narrower_type_that_explains_the_gap():
    with pytest.raises(OracleCheckError, match=r"`batch` returns float32 losses, the plain call a Python float"):
        check_oracle(_Float32Batch(), _rng.standard_normal(D), step=5e-3)


# an integer batch beside float(count) --------------------------------------------------------------

class _Count:
    """Misclassified samples: the plain call returns float(count), the batch the counts as int64."""

    def __call__(self, x):
        return float(np.sum(A @ np.asarray(x) > B))

    def batch(self, X):
        return np.array([np.sum(A @ r > B) for r in np.asarray(X)])


def test_an_integer_batch_beside_a_float_count_keeps_the_count_advice():
    with pytest.warns(UserWarning, match=r"returns int64 losses \(from its `batch`.*where the plain call's loss is a "
                                         r"count too \(errors, events\), it moves in whole units whatever its type, "
                                         r"so float\(count\) changes nothing"):
        zo.estimate_gradient(_Count(), _rng.standard_normal(D), zo.CGE(mu=5e-3))
