"""TorchOracle's hook check where ``model(x)`` cannot run without a module's forward hook (an LSTM's hook
picking its last step for the Linear after it): the check then takes each module's hooks out one at a time,
and last the global hooks alone (``register_module_forward_hook``). A global hook that changes a Linear's
output on the whole batch only (the split's two-sample self-check does not see it) must still retire the
split there. Session 77's mutants H17/H19 (that last try left out, or run with the global hooks on) lived:
no test had a module hook the model needs beside a global hook that changes the loss."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

import zoracle as zo

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from zoracle.adapters.torch import TorchOracle  # noqa: E402
from test_torch_exact import CE_ROWS, _by_name, _textbook  # noqa: E402  (the textbook loop, parameters by name)

MU = 1e-6  # the step of test_torch_exact's _textbook


def _scale_on_the_whole_batch(mod, args, out):
    # a global hook the split's self-check does not see (it runs two samples, and four stacked): it changes
    # a Linear's output on the bound batch of 8 only
    if isinstance(mod, nn.Linear) and out.shape[0] > 4:
        return out * 2.0 + 0.3


def _lstm_model():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 6, batch_first=True)
    lstm.register_forward_hook(lambda m, i, o: o[0][:, -1])  # the Linear takes this tensor, not the tuple
    return nn.Sequential(lstm, nn.Linear(6, 3)).double()


def _want(ref, oracle, x, y):
    """Forward differences, one parameter coordinate at a time, of ``ref`` (a copy of the oracle's model,
    hooks and all: the global hook runs in it too), each parameter placed by name."""
    return _textbook(_by_name(ref, oracle, x, y), oracle.initial_params(), step=MU)


def _estimate(model, x, y):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        oracle = TorchOracle(model, CE_ROWS, update_stats=False).bind((x, y))
        est = zo.estimate_gradient(oracle, oracle.initial_params(), zo.CGE(mu=MU)).grad
    return oracle, est, [str(w.message) for w in seen if str(w.message).startswith("TorchOracle")]


def test_a_global_hook_beside_a_hook_the_model_needs_retires_the_split():
    """Without the last try (global hooks off, module hooks on) the split was kept and CGE was the
    gradient without the global hook's x2 + 0.3 on the Linear: off by far more than rounding."""
    model = _lstm_model()
    ref = copy.deepcopy(model)
    x, y = torch.randn(8, 5, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    handle = nn.modules.module.register_module_forward_hook(_scale_on_the_whole_batch)
    try:
        oracle, est, said = _estimate(model, x, y)
        want = _want(ref, oracle, x, y)
    finally:
        handle.remove()
    np.testing.assert_allclose(est, want, rtol=1e-6, atol=1e-8)
    assert not oracle._core.blocks, "the split was kept"
    hooked = [m for m in said if "with its forward hooks but" in m]  # (and vmap's: the LSTM runs full forwards)
    assert len(hooked) == 1 and "global forward hooks '_scale_on_the_whole_batch'" in hooked[0], said


def test_a_hook_the_model_needs_alone_keeps_the_split_and_the_gradient():
    """The same model with no global hook: the fallback finds no difference, the split is kept and
    matches the textbook loop (the last try is not made up where there is no global hook)."""
    model = _lstm_model()
    ref = copy.deepcopy(model)
    x, y = torch.randn(8, 5, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    oracle, est, said = _estimate(model, x, y)
    np.testing.assert_allclose(est, _want(ref, oracle, x, y), rtol=1e-6, atol=1e-8)
    assert oracle._core.blocks and not said, said
