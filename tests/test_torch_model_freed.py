"""A model a TorchOracle was built on is freed with the oracle: zoracle's per-model caches
(weak keys) hold no reference to it, however its modules are laid out."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from zoracle.adapters.torch import TorchOracle  # noqa: E402


class _Scaled(nn.Sequential):
    """A Sequential with a buffer of its own (an input scale kept at the root)."""

    def __init__(self):
        super().__init__(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 3))
        self.register_buffer("scale", torch.ones(4))


@pytest.mark.parametrize("make", [lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)),
                                  _Scaled], ids=["sequential", "root-buffer"])
def test_model_freed_after_oracle(make):
    torch.manual_seed(0)
    model = make()
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    oracle = TorchOracle(model, nn.CrossEntropyLoss(), (x, y))
    theta = oracle.initial_params()
    assert np.isfinite(oracle(theta))
    assert np.isfinite(oracle.batch(np.stack([theta, theta + 1e-3]))).all()
    assert np.isfinite(oracle.coordinate_losses(theta, np.arange(5), 1e-3)).all()  # the fast paths
    ref = weakref.ref(model)
    del oracle, model
    gc.collect()
    assert ref() is None, [type(r).__name__ for r in gc.get_referrers(ref())]
