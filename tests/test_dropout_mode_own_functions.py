"""TorchOracle's dropout-blocking mode is skipped only for modules whose code a type vouches for: a
model or block given a function of its own (a replaced ``forward`` or step) keeps it."""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import zoracle as zo  # noqa: E402
from zoracle.adapters._torch_chain import _needs_dropout_mode  # noqa: E402
from zoracle.adapters.torch import TorchOracle  # noqa: E402
from zoracle.adapters.torch_models import ResNet20  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _with_dropout(model, where):
    """``model`` (a copy) with functional dropout added: in its forward, or in a block's join."""
    model = copy.deepcopy(model)
    if where == "forward":
        plain = model.forward
        model.forward = types.MethodType(lambda self, x: F.dropout(plain(x), 0.5, training=True), model)
    else:
        blk = model.layers[0]
        join = blk.join
        blk.join = lambda state: (F.dropout(join(state)[0], 0.5, training=True),) + tuple(state[2:])
    return model


@pytest.mark.parametrize("where", ["forward", "join"])
@pytest.mark.slow
def test_a_resnet20_with_a_function_of_its_own_keeps_dropout_blocked(where):
    torch.manual_seed(0)
    model = ResNet20(width=2)
    mine = _with_dropout(model, where)
    assert not _needs_dropout_mode(model) and _needs_dropout_mode(mine)
    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((4, 3, 8, 8)).astype(np.float32), rng.integers(0, 10, 4))
    coords = np.arange(20)

    def estimate(m):
        oracle = TorchOracle(m, nn.CrossEntropyLoss(reduction="none"))
        f = oracle.bind(batch)
        p = oracle.initial_params()
        return f(p), zo.estimate_gradient(f, p, zo.CGE(mu=5e-3), coordinates=coords).grad

    (loss, grad), (want_loss, want_grad) = estimate(mine), estimate(model)
    # dropout is the identity in the oracle: the loss and estimate of the model without it (to float32
    # rounding over mu: a replaced join runs the plain path where the model's own has the fast one;
    # with the dropout on, the estimate is off by some 50)
    assert loss == want_loss and np.allclose(grad, want_grad, rtol=0, atol=1e-3)


def test_a_stock_layer_with_a_replaced_forward_keeps_dropout_blocked():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert not _needs_dropout_mode(model)
    mine = copy.deepcopy(model)
    lin = mine[0]
    lin.forward = types.MethodType(lambda self, x: F.dropout(F.linear(x, self.weight, self.bias), 0.5), lin)
    assert _needs_dropout_mode(mine)
