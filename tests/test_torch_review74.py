"""Review of TorchOracle's switching off of dropout and BatchNorm (``norm_context``): a forward the user
set on a module's instance runs, and stays on the model; a context entered inside another on the same
model leaves the outer one's patches; an ``nn.AlphaDropout(inplace=True)``, whose forward ignores the
flag, returns a new tensor as torch's does; and the plain reference switches a stock dropout off as
the oracle does. Each estimate is the textbook loop's (central differences of plain forwards)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import zoracle as zo  # noqa: E402
from zoracle.adapters._torch_chain import SWITCHED_OFF, norm_context  # noqa: E402
from zoracle.adapters.torch import TorchOracle  # noqa: E402
from test_torch_exact import CE_ROWS, MU, _to_oracle, flat_order_theta, textbook  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), rng.integers(0, 3, shape[0])


def _estimate(model, x, y):
    """The oracle of ``model`` and its central CGE gradient at the model's parameters (no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oracle = TorchOracle(model, CE_ROWS, (x, y), update_stats=False)
        got = zo.estimate_gradient(oracle, oracle.initial_params(), zo.CGE(mu=MU, scheme="central")).grad
    return oracle, got


def _error(oracle, got, ref, x, y) -> float:
    """The largest gap to the textbook loop on ``ref``, relative to the gradient's largest entry."""
    coords = np.arange(sum(p.numel() for p in ref.parameters() if p.requires_grad))
    book = textbook(ref, x, y, CE_ROWS, flat_order_theta(ref), coords, MU)
    return np.abs(got[_to_oracle(oracle, ref, coords)] - book).max() / np.abs(book).max()


def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.3), nn.Flatten(),
                         nn.Linear(48, 3)).double()


@pytest.mark.parametrize("at", ["dropout", "batchnorm"])
def test_a_forward_set_on_a_modules_instance_runs_and_stays_on_the_model(at):
    """``model.drop.forward = lambda h: 0.5 * h`` (or on an eval-mode BatchNorm) before the build: the
    oracle's switching off of dropout and BatchNorm set its own forward on the instance and, at the
    end, deleted the instance's forward: the user's function was gone from the model after the first
    query (model(x) another function from then on), and the estimates were those of the module
    without it, silently (off by 86% of the gradient's largest entry at the dropout, 43% at the
    BatchNorm). Now the user's forward runs in every query, stays on the model, and the split is kept
    (a module with its own forward is not one the channel walk's closed forms know)."""
    model = _conv_net().train() if at == "dropout" else _conv_net().eval()
    i = 3 if at == "dropout" else 1
    m = model[i]
    mine = (lambda h: 0.5 * h) if at == "dropout" else (lambda h: 0.5 * nn.BatchNorm2d.forward(m, h))
    m.forward = mine
    x, y = _data((4, 2, 4, 4))
    ref = copy.deepcopy(model)
    ref[i].forward = (lambda h: 0.5 * h) if at == "dropout" else (lambda h: 0.5 * nn.BatchNorm2d.forward(ref[i], h))
    oracle, got = _estimate(model, x, y)
    assert _error(oracle, got, ref, x, y) < 1e-10
    assert m.__dict__["forward"] is mine
    assert oracle._core.blocks


def test_a_forward_set_on_a_train_mode_batchnorm_runs_per_perturbation():
    """The same on a train-mode BatchNorm: the user's forward, run once per perturbation's rows
    (batch statistics per perturbation), as the textbook's plain forwards run it; its running
    statistics put back."""
    model = _conv_net().train()
    m = model[1]
    mine = lambda h: 0.5 * nn.BatchNorm2d.forward(m, h)  # noqa: E731
    m.forward = mine
    x, y = _data((4, 2, 4, 4))
    ref = copy.deepcopy(model)
    ref[1].forward = lambda h: 0.5 * nn.BatchNorm2d.forward(ref[1], h)
    stats = m.running_mean.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the split may be refused (exact or refuse)
        oracle = TorchOracle(model, CE_ROWS, (x, y), update_stats=False)
        got = zo.estimate_gradient(oracle, oracle.initial_params(), zo.CGE(mu=MU, scheme="central")).grad
    assert m.__dict__["forward"] is mine
    assert torch.equal(m.running_mean, stats)
    assert _error(oracle, got, ref, x, y) < 1e-10


def test_a_context_inside_another_on_the_same_model_leaves_the_outer_ones_patches():
    """``norm_context`` entered inside another on the same model (the oracle's query inside a query
    of another oracle of the model): the inner one's exit deleted the patched forwards of the outer
    one, whose train-mode dropout then dropped at random and whose BatchNorm updated its running
    statistics for the rest of it. Now each exit puts back what its entry found."""
    model = _conv_net().train()
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad(), norm_context(model):
        want = model(x)
        with norm_context(model, groups=2):
            pass
        stats = model[1].running_mean.clone()
        again = [model(x) for _ in range(3)]
        assert torch.equal(model[1].running_mean, stats)
    assert all(torch.equal(a, want) for a in again)
    assert "forward" not in vars(model[1]) and "forward" not in vars(model[3])


def test_an_error_in_a_query_leaves_the_model_as_it_was():
    """A KeyboardInterrupt in the middle of a query puts back the in-place flag (no ``SWITCHED_OFF``
    entry left, as before) and the forward the user set on the dropout (deleted before)."""
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Flatten(),
                          nn.Linear(48, 3)).double().train()
    mine = lambda h: 0.5 * h  # noqa: E731
    model[2].forward = mine
    x, y = _data((4, 2, 4, 4))
    oracle = TorchOracle(model, CE_ROWS, (x, y), update_stats=False)

    def boom(out, y):
        raise KeyboardInterrupt

    oracle.loss_fn = boom
    with pytest.raises(KeyboardInterrupt):
        oracle(oracle.initial_params())
    assert model[1].inplace is True and model[1] not in SWITCHED_OFF
    assert model[2].__dict__["forward"] is mine


class _AliasAfterDropout(nn.Module):
    """``out = self.drop(h); out += h`` then ``h`` read again: torch's train-mode dropout returns a new
    tensor (its mask all ones: ``3 h``); one returning ``h`` itself would give ``4 h``."""

    def __init__(self, drop):
        super().__init__()
        self.conv, self.drop, self.fc = nn.Conv2d(1, 2, 3, padding=1), drop, nn.Linear(32, 3)
        self.reference = False

    def forward(self, x):
        h = self.conv(x)
        out = h.clone() if self.reference else self.drop(h)
        out += h
        return self.fc((out + h).flatten(1))


@pytest.mark.parametrize("drop", [nn.AlphaDropout(0.5, inplace=True), nn.FeatureAlphaDropout(0.5, inplace=True),
                                  nn.Dropout(0.5), nn.AlphaDropout(0.5)],
                         ids=["alpha-inplace", "feature-alpha-inplace", "dropout", "alpha"])
def test_a_dropouts_output_written_into_is_a_new_tensor_as_torchs(drop):
    """``nn.AlphaDropout(inplace=True)``'s forward passes no ``inplace`` on: torch's output is a new
    tensor. The oracle's dropout-off returned ``h`` itself there (the flag read as honoured), so
    ``out += h`` wrote into ``h``, and the losses were those of ``4 h`` (off by 40% of the gradient's
    largest entry) while the warning said the module ran out of place. And the plain reference the
    split is checked against switched a stock dropout off with ``p = 0``, which returns ``h`` itself:
    ``nn.Dropout(0.5)`` there retired the split with a warning that the captured graph differs from
    model(x). Now both give a new tensor where torch's does: no warning, the split kept, the
    textbook's gradient."""
    torch.manual_seed(0)
    model = _AliasAfterDropout(drop).double().train()
    x, y = _data((4, 1, 4, 4))
    ref = copy.deepcopy(model)
    ref.reference = True
    oracle, got = _estimate(model, x, y)
    assert oracle._core.blocks
    assert _error(oracle, got, ref, x, y) < 1e-10
