"""The dropout-blocking mode's per-model cache notices a function given to a module after the model was
first run: a stock layer's ``forward`` replaced by one calling functional dropout kept the fast path, and
the oracle's loss changed from call to call. norm_context's own patches (a nested context) do not count."""

from __future__ import annotations

import functools
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from zoracle.adapters._torch_chain import _needs_dropout_mode, norm_context  # noqa: E402
from zoracle.adapters.torch import TorchOracle  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              # (torch's own: nn.Module.compile touches torch.jit.script_method, deprecated in torch 2.13)
              pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]


def test_a_forward_replaced_after_a_first_run_keeps_dropout_blocked():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    oracle = TorchOracle(model, nn.CrossEntropyLoss())
    f = oracle.bind((np.ones((3, 4), np.float32), np.array([0, 1, 0])))
    p = oracle.initial_params()
    plain = f(p)  # the model is run (and its entry cached) before its layer is given a function
    assert not _needs_dropout_mode(model)
    lin = model[0]
    lin.forward = types.MethodType(lambda self, x: F.dropout(F.linear(x, self.weight, self.bias), 0.5), lin)
    assert _needs_dropout_mode(model)
    assert [f(p) for _ in range(4)] == [plain] * 4  # dropout is the identity in the oracle


def test_a_nested_context_reads_a_batchnorm_model_as_stock():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    assert not _needs_dropout_mode(model)
    with torch.no_grad(), norm_context(model):  # its BatchNorm's and Dropout's forwards are patched
        assert "forward" in vars(model[1]) and "forward" in vars(model[2])
        assert not _needs_dropout_mode(model)
        with norm_context(model):
            model(torch.ones(4, 4))
    assert "forward" not in vars(model[1]) and not _needs_dropout_mode(model)


def _mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


@pytest.mark.parametrize("give", [
    lambda m: setattr(m, "act", F.relu),  # an activation kept beside the layers
    lambda m: setattr(m, "act", torch.tanh),
    lambda m: setattr(m[1], "forward", functools.partial(F.leaky_relu, negative_slope=0.2)),
    lambda m: m.compile(),  # torch's compiled call runs the same stock forward
], ids=["F.relu", "torch.tanh", "partial", "compile"])
def test_a_torch_function_without_dropout_keeps_the_fast_path(give):
    """The slow dropout-blocking mode (about 1.6x a small MLP's CGE step) is not turned on by a torch
    function that reaches no dropout."""
    model = _mlp()
    give(model)
    assert not _needs_dropout_mode(model)


@pytest.mark.parametrize("give", [
    lambda m: setattr(m[1], "forward", F.dropout),
    lambda m: setattr(m[1], "forward", functools.partial(F.dropout, p=0.5)),
    lambda m: setattr(m[1], "forward", lambda x: F.dropout(x, 0.5)),
    lambda m: setattr(m[1], "forward", F.scaled_dot_product_attention),
], ids=["F.dropout", "partial", "lambda", "attention"])
def test_a_function_that_may_reach_dropout_turns_the_mode_on(give):
    model = _mlp()
    give(model)
    assert _needs_dropout_mode(model)
