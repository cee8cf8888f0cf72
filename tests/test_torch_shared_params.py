"""TorchOracle's flat vector must stay the model's parameters: a ``Parameter`` assigned over one
after the oracle was built (``layer.weight = nn.Parameter(...)``, ``load_state_dict(...,
assign=True)``, a weight tied to another) left the oracle loading and perturbing a tensor no
forward reads."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import zoracle as zo  # noqa: E402
from zoracle.adapters.torch import TorchOracle  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CE_ROWS = nn.CrossEntropyLoss(reduction="none")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _assign(model):
    model[2].weight = nn.Parameter(model[2].weight.detach() * 2)


def _assign_state_dict(model):
    model.load_state_dict({k: v.detach() * 2 for k, v in model.state_dict().items()}, assign=True)


def _tie(model):
    model[2].weight = model[0].weight


@pytest.mark.parametrize("blocks", [None, "none"])
@pytest.mark.parametrize("change", [_assign, _assign_state_dict, _tie])
def test_a_parameter_assigned_after_the_oracle_was_built_is_refused(change, blocks):
    """Measured before the fix (float64, this MLP, forward CGE at mu=1e-4, against the textbook
    loop loading theta by name): the oracle's plain loss at theta was 0.011 (one Parameter
    assigned), 0.023 (``assign=True``) and 0.0062 (tied) off, the gradient up to 0.050, 0.19 and
    0.069 off, with no warning; the next estimate now refuses, naming the parameters."""
    model = _model()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    oracle = TorchOracle(model, CE_ROWS, (x, y), blocks=blocks)
    theta = oracle.initial_params()
    zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-4))
    change(model)
    gone = "no longer the model's" if change is _tie else "parameters the oracle's flat vector does not hold"
    with pytest.raises(zo.ArgumentError, match=rf"{gone}.*'2\.weight'|'2\.weight'.*{gone}"):
        zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-4))
    with pytest.raises(zo.ArgumentError, match=r"'2\.weight'.*build a new TorchOracle"):
        oracle.batch(theta[None])
    for call in (lambda: oracle.load(theta), lambda: oracle.predict(theta, x)):
        with pytest.raises(zo.ArgumentError, match=r"'2\.weight'.*no longer the model's"):
            call()
    # a new oracle over the changed model is the textbook loop's function again
    fresh = TorchOracle(model, CE_ROWS, (x, y), blocks=blocks)
    p = fresh.initial_params()
    est = zo.estimate_gradient(fresh, p, zo.CGE(mu=1e-6, scheme="central")).grad
    params = [q for q in model.parameters()]
    with torch.enable_grad():
        loss = CE_ROWS(model(x), y).mean()
        grads = torch.autograd.grad(loss, params)
    by_name = dict(zip([n for n, _ in model.named_parameters()], grads))
    ref = np.concatenate([by_name[i.name].reshape(-1).numpy() for i in fresh.param_info])
    np.testing.assert_allclose(est, ref, rtol=1e-6, atol=1e-9)


def test_a_pickled_copy_keeps_its_check_and_refuses_a_parameter_assigned_in_it():
    """The check's key names parameters by id too: a copy (a process worker's) translates them, so
    it neither checks again nor misses a Parameter assigned over one of its own."""
    import pickle

    from zoracle.adapters._torch_exact import ensure_split

    model = _model()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    oracle = TorchOracle(model, CE_ROWS, (x, y))
    theta = oracle.initial_params()
    twin = pickle.loads(pickle.dumps(oracle))
    assert not ensure_split(twin)
    assert twin(theta) == oracle(theta)
    _assign(twin.model)
    with pytest.raises(zo.ArgumentError, match=r"flat vector does not hold \('2\.weight'"):
        twin(theta)
    zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-4))  # the original model is untouched
