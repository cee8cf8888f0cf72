"""Runs that do not learn, and what train tells the user about why: blocks whose estimates stay
exactly 0 (dead ReLUs, an unused layer), params that stay where they start (updates below their
float spacing), and a diverged run whose loss is noise (a minibatch drawn at every call).
The healthy runs beside each stay quiet: pyproject turns zoracle's warnings into errors."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo

torch = pytest.importorskip("torch")
from zoracle.adapters.torch import TorchOracle  # noqa: E402


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    return x, (x @ rng.standard_normal((8, 4))).argmax(1)


class _WithUnused(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))
        self.unused = torch.nn.Linear(8, 4)  # a head left over from another loss: forward never calls it

    def forward(self, x):
        return self.net(x)


def _torch_run(model, **kw):
    x, y = _data()
    oracle = TorchOracle(model, torch.nn.CrossEntropyLoss(reduction="none"))
    args = dict(batches=zo.Minibatches((x, y), batch_size=16, seed=0), epochs=2, estimator=zo.CGE(mu=5e-3),
                optimizer=zo.sgd(0.1), rng=0, progress=False)
    return zo.train(oracle, oracle.initial_params(), **{**args, **kw})


def _mlp(dead=False):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))
    if dead:  # every hidden ReLU dead for every input: the loss depends on the last bias only
        with torch.no_grad():
            m[0].bias.fill_(-100.0)
    return m


def test_dead_relus_are_named_and_the_healthy_model_is_quiet():
    # before: the loss crept down (the last bias alone learned) and nothing said why
    with pytest.warns(UserWarning, match=r"the gradient estimates of 0\.weight, 0\.bias, 2\.weight were 0 to within "
                                         r"the loss's rounding at "
                                         r"each of the first 4 steps.*ReLUs that are dead") as rec:
        r = _torch_run(_mlp(dead=True))
    assert len(rec) == 1 and "2.bias" not in str(rec[0].message)
    assert r.history.steps[0]["loss"] > r.history.steps[-1]["loss"]  # it ran: only 2.bias moved
    _torch_run(_mlp())  # quiet


def test_a_layer_the_forward_pass_does_not_use_is_named():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"the gradient estimates of unused\.weight, unused\.bias were 0 to within the "
                                         r"loss's rounding.*"
                                         r"a layer the forward pass does not use"):
        _torch_run(_WithUnused())


class _Blocks:
    """A plain oracle with a layout (`blocks`) whose loss ignores its second block."""

    blocks = [slice(0, 3), slice(3, 5)]

    def __call__(self, p):
        return float(np.sum((p[:3] - 1.0) ** 2))


def test_an_oracles_blocks_name_the_dead_block_and_short_or_rge_runs_stay_quiet():
    with pytest.warns(UserWarning, match=r"the gradient estimates of params\[3:5\] were 0 to within the loss's "
                                         r"rounding at each of the "
                                         r"first 3 steps"):
        zo.train(_Blocks(), np.zeros(5), epochs=3, optimizer=zo.sgd(0.1), rng=0, progress=False)
    # fewer steps than the check watches: no verdict
    zo.train(_Blocks(), np.zeros(5), epochs=2, optimizer=zo.sgd(0.1), rng=0, progress=False)
    # RGE's estimates move every coordinate (a direction is dense): nothing to read
    zo.train(_Blocks(), np.zeros(5), epochs=3, estimator=zo.RGE(), optimizer=zo.sgd(0.01), rng=0, progress=False)


def test_an_oracle_attribute_named_blocks_that_is_no_layout_does_not_fail_a_dense_run():
    class Sim:
        blocks = 3  # a simulator's own count of something

        def __call__(self, p):
            return float(np.sum(p ** 2))

    r = zo.train(Sim(), np.ones(4), epochs=3, optimizer=zo.sgd(0.1), rng=0, progress=False)
    assert np.all(np.abs(r.params) < 1)


def test_params_that_never_move_name_a_learning_rate_below_their_float_spacing():
    # float32 params of about 0.3 have a spacing of about 3e-8: lr 1e-14 times a gradient of about 1
    # rounds away in every entry, and the run returned its initial params, loss for loss
    with pytest.warns(UserWarning, match=r"the params did not change over epoch 0, though the gradient estimates "
                                         r"were nonzero \(beyond the loss's rounding\) and lr > 0 \(lr was 1e-14\).*"
                                         r"raise the learning rate"):
        r = _torch_run(_mlp(), optimizer=zo.sgd(1e-14))
    assert np.array_equal(r.params, TorchOracle(_mlp(), torch.nn.CrossEntropyLoss()).initial_params())
    _torch_run(_mlp(), optimizer=zo.sgd(1e-6))  # small but moving: quiet
    # a first step at lr 0 (a warm-up from 0) is not the learning rate's fault: quiet
    zo.train(lambda p: float(np.sum((p - 1) ** 2)), np.zeros(3), epochs=3, rng=0, progress=False,
             optimizer=zo.sgd(lambda step: 0.0 if step == 0 else 0.1))


def test_a_diverged_run_whose_loss_is_noise_says_so():
    # the user forgot `batches`: the loss draws its own minibatch at every call, each CGE difference
    # carries the minibatches' difference over mu, and the run blew up with "lower the learning rate"
    x, y = _data()
    draws = np.random.default_rng(1)

    def loss(p):
        idx = draws.integers(0, len(x), 8)
        return float(np.mean((x[idx] @ p - y[idx]) ** 2))

    with pytest.raises(zo.ArgumentError, match=r"training diverged.*lower the learning rate \(lr was 0\.01\)\. The "
                                               r"loss is not deterministic: two calls at the same params gave "
                                               r".*pass the data as `batches`"):
        zo.train(loss, np.zeros(8), epochs=50, estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.01), rng=0,
                 progress=False)

    def fixed(p):  # the same data every call: a learning rate too large, and only that is said
        return float(np.mean((x @ p - y) ** 2))

    # (its last epoch's loss, 1.8e25, moves over mu by a few units of float64's last place: the estimate is
    # rounding, which the every-estimate-0 check says, as it did on a CPU rounding those differences to 0)
    with pytest.raises(zo.ArgumentError, match=r"training diverged") as err, \
            pytest.warns(UserWarning, match=r"epoch 9 \(1 step\) was 0 to within the loss's rounding"):
        zo.train(fixed, np.zeros(8), epochs=200, estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(10.0), rng=0,
                 progress=False)
    assert "not deterministic" not in str(err.value)
