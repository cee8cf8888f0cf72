"""Numbers and behaviours the docs state that no docs block prints: measured here, so that the
page can name the test that backs them."""

from __future__ import annotations

import copy
import logging
import warnings

import numpy as np
import pytest

import zoracle as zo


def _spectral_share(kind: str, seed: int) -> float:
    """How far CGE (central, at the kept power-iteration vectors) is from autograd's gradient on a
    two-layer MLP whose first layer is spectral-normed, as a fraction of the gradient's norm."""
    import torch
    from torch import nn

    from zoracle.adapters.torch import TorchOracle

    torch.manual_seed(seed)
    lin = nn.Linear(6, 6)
    first = (torch.nn.utils.spectral_norm(lin) if kind == "deprecated"
             else torch.nn.utils.parametrizations.spectral_norm(lin))
    model = nn.Sequential(first, nn.Tanh(), nn.Linear(6, 3)).double().train()
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    ref = copy.deepcopy(model)
    ce = nn.CrossEntropyLoss(reduction="none")
    oracle = TorchOracle(model, ce)
    with warnings.catch_warnings():  # (the deprecated hook's, and "puts them back", said once)
        warnings.simplefilter("ignore")
        bound = oracle.bind((x, y))
        est = zo.estimate_gradient(bound, oracle.initial_params(), zo.CGE(mu=1e-6, scheme="central"))
        for kept, mine in zip(model.buffers(), ref.buffers()):  # autograd from the same kept vectors
            mine.data.copy_(kept)
        ce(ref(x), y).mean().backward()
    params = dict(ref.named_parameters())
    grad = np.concatenate([params[n].grad.reshape(-1).numpy() for n in oracle.parameter_names])
    return float(np.linalg.norm(est.grad - grad) / np.linalg.norm(grad))


def test_spectral_norms_power_iteration_share_of_the_estimate():
    """docs/pytorch.md: CGE and autograd differ by the power iteration's share, several percent on
    a fresh deprecated ``spectral_norm`` (its vector starts random) and under 1% on the
    parametrization's (iterated at registration), over seeds 0-3."""
    pytest.importorskip("torch")
    old = [_spectral_share("deprecated", s) for s in range(4)]
    new = [_spectral_share("parametrization", s) for s in range(4)]
    assert min(old) > 0.03 and max(old) < 0.2, old  # docs: 3.5-14%
    assert max(new) < 0.01, new  # docs: under 1%


def test_an_exhausted_call_logs_each_try_but_its_last(caplog):
    """docs/executors.md ("Cost"): each failed try that is asked again is logged at INFO; the last
    one is in the RetriesExhausted error, not in a record."""

    def down(x):
        raise ConnectionError("down")

    with caplog.at_level(logging.INFO, logger="zoracle"), pytest.raises(zo.OracleError, match="failed all 3 tries"):
        zo.estimate_gradient(zo.retrying(down, tries=3, backoff=0), np.ones(2))
    tries = [r for r in caplog.records if "asking again" in r.getMessage()]
    assert [r.getMessage().split("try ")[1][:6] for r in tries] == ["1 of 3", "2 of 3"]
