"""TorchOracle's warnings name a cause only where it is one: the note that a step "runs as one step
because torch.fx could not trace through it" is given only for the step whose forward fx failed in,
not for a sibling kept whole by the same retry; an attribute a noisy forward writes is not called the
state it reads back."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from zoracle.adapters.torch import TorchOracle  # noqa: E402


class _Centred(nn.Module):
    """Traceable, but mixes samples: a batch mean subtracted."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        return h - h.mean(0)


class _Branchy(nn.Module):
    """Untraceable: a Python if on a tensor."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        h = self.lin(x)
        if h.sum() > 0:
            return h
        return -h


def test_sibling_of_the_untraceable_forward_gets_its_own_advice():
    torch.manual_seed(0)
    model = nn.Sequential(_Centred(), nn.ReLU(), _Branchy())
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        oracle = TorchOracle(model, nn.CrossEntropyLoss(reduction="none"), (x, y))
        oracle.coordinate_losses(oracle.initial_params(), np.arange(3), 1e-3)
    text = next(str(w.message) for w in got if "mixes samples" in str(w.message))
    assert "step 0 (_Centred) mixes samples" in text, text
    # step 0 traced: fx failed in step 2's forward, which is not why step 0 mixes samples
    assert "0 runs as one step" not in text, text
    assert "a statistic per sample" in text, text


class _NumpyNoise(nn.Module):
    """Noise from NumPy's generator (not torch's), and an attribute written for bookkeeping, never read."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        self.last_shape = tuple(x.shape)
        return self.lin(x) + torch.from_numpy(np.random.normal(0, 0.1, (x.shape[0], 3))).to(x.dtype)


def test_attribute_written_is_not_named_the_only_cause():
    """The warning said the attribute written was state "read by the next call", when the forward
    never reads it and the noise is NumPy's: it names that possibility too."""
    np.random.seed(0)
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    with pytest.warns(RuntimeWarning, match="model\\(x\\) is not repeatable") as got:
        TorchOracle(_NumpyNoise(), nn.CrossEntropyLoss(reduction="none"), (x, y))
    text = next(str(w.message) for w in got if "not repeatable" in str(w.message))
    assert "'_NumpyNoise.last_shape'" in text, text
    assert "NumPy's" in text, text
