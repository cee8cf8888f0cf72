"""TorchOracle's checks at a bind (the loss convention's probe, the batch kind's, the rows')
leave torch's random generators as the user seeded them, even where the model's forward
draws random numbers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from zoracle.adapters.torch import TorchOracle, cross_entropy  # noqa: E402


class Draws(nn.Module):
    """A forward that draws from torch's generator; ``scale`` 0: a draw that cannot change the output."""

    def __init__(self, scale=0.0):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.scale = scale

    def forward(self, x):
        return self.fc(x + self.scale * torch.randn_like(x))


class FunctionalDropout(nn.Module):
    """Dropout in train mode through the function (no nn.Dropout module): the oracle's checks run it with
    dropout off, but torch draws its mask first."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return nn.functional.dropout(self.fc(x), p=0.5, training=True)


X = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
Y = np.array([0, 1, 1, 0])


def _stream_after(make, seed=1):
    """torch.rand(5) after seeding ``seed`` and running ``make()``."""
    torch.manual_seed(seed)
    make()
    return torch.rand(5)


def _clean():
    torch.manual_seed(1)
    return torch.rand(5)


# (the traced draw reads as a step mixing samples: warned, not asked about here)
@pytest.mark.filterwarnings("ignore:TorchOracle. step:RuntimeWarning")
@pytest.mark.parametrize("model", [Draws, FunctionalDropout])
@pytest.mark.parametrize("loss", [cross_entropy, nn.CrossEntropyLoss()])  # per-sample and mean losses
def test_the_first_bind_leaves_a_seeded_stream_as_it_was(model, loss):
    torch.manual_seed(0)
    oracle, other = TorchOracle(model(), loss), model()
    assert torch.equal(_stream_after(lambda: oracle.bind((X, Y))), _clean())
    assert torch.equal(_stream_after(lambda: TorchOracle(other, loss, (X, Y))), _clean())  # bound as built


@pytest.mark.filterwarnings("ignore:TorchOracle. step:RuntimeWarning")
def test_a_noisy_forward_warns_and_leaves_the_stream_as_it_was():
    torch.manual_seed(0)
    oracle = TorchOracle(Draws(scale=0.1), cross_entropy)
    with pytest.warns(RuntimeWarning, match="not repeatable"):
        got = _stream_after(lambda: oracle.bind((X, Y)))
    assert torch.equal(got, _clean())


@pytest.mark.filterwarnings("ignore:TorchOracle. step:RuntimeWarning")
def test_later_binds_checking_a_new_batch_kind_or_the_rows_leave_the_stream_as_it_was():
    torch.manual_seed(0)
    oracle = TorchOracle(Draws(), cross_entropy)
    oracle.bind((X[:1], Y[:1]))  # one sample: the rows are checked at the first later bind of two
    assert oracle._core.rows_unchecked
    assert torch.equal(_stream_after(lambda: oracle.bind((X, Y))), _clean())
    assert not oracle._core.rows_unchecked
    # labels of another dtype: the batch kind's probe runs the model on two samples
    assert torch.equal(_stream_after(lambda: oracle.bind((X, Y.astype(np.int32)))), _clean())
