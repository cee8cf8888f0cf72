"""What docs/training.md says of the DeepZero reference code (OPTML-Group/DeepZero), checked
against models of it written here from its description: its ZO-GraSP loss function leaves each
query's weights in the model (the weight walk), and its learning rate (a hand-written linear
warm-up, then torch's CosineAnnealingLR over the remaining steps) is ``zo.cosine_schedule``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import zoracle as zo
from test_pruning import _quadratic

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch (the reference's own library)")

_TRAINING = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def _training_text() -> str:
    return " ".join(_TRAINING.read_text().split())


def _walking_reference_zo_grasp(f, theta, blocks, q, mu, seed, walk=True):
    """The reference's ZO-GraSP with its weight walk: per block a Gaussian direction scaled to
    unit norm (+1e-8) then by mu, ``(f(p + pert) - base) / mu * pert / q`` summed, two independent
    RGEs, the second at ``p + mu * g0``; its first RGE's point is the model's own weights, which
    every query leaves at the point it asked, so the i-th query lies at
    ``theta + pert_1 + ... + pert_i`` (the base loss stays f(theta)); the second RGE's point is a
    new array (no walk), and the scores multiply the weights its last query left in the model.
    ``walk=False``: every query at its RGE's point plus its direction, the scores at ``theta``."""
    gen = np.random.default_rng(seed)

    def rge(point, walks):
        held = point.copy()  # what the model holds
        base, out = f(held), np.zeros_like(point)
        for _ in range(q):
            pert = np.zeros_like(point)
            for b in blocks:
                r = gen.standard_normal(b.stop - b.start)
                pert[b] = r / (np.linalg.norm(r) + 1e-8) * mu
            asked = (held if walks else point) + pert
            out += pert * ((f(asked) - base) / mu) / q
            held = asked
        return out, held

    g0, held = rge(theta, walk)
    g1, held = rge((held if walk else theta) + g0 * mu, False)
    return -(held if walk else theta) * (g1 - g0) / mu


def test_reference_zo_grasp_with_its_weight_walk_in_the_docs():
    """The six quadratics of tests/test_pruning.py, blocks of 5 and 25, q = 16d, sparsity 0.8:
    the walking reference's mean correlation with the exact scores and its mean keep ratios."""
    blocks = [slice(0, 5), slice(5, 30)]
    corr, kept = [], []
    for seed in range(6):
        o, th, ex = _quadratic(seed)
        s = _walking_reference_zo_grasp(o, th, blocks, 16 * th.size, 5e-3, seed)
        corr.append(np.corrcoef(s, ex)[0, 1])
        kept.append(zo.layer_ratios(s, blocks, 0.8))
    assert round(float(np.mean(corr)), 2) == -0.01
    assert np.round(np.mean(kept, 0), 2).tolist() == [0.37, 0.17]
    assert ("with that walk the same quadratics' scores correlate -0.01 on average with the exact ones and keep 37% "
            "and 17%") in _training_text()


def test_the_walk_model_without_its_walk_is_test_pruning_reference_formula():
    """The model above, its walk turned off, is tests/test_pruning.py's reference formula to round-off."""
    from test_pruning import _reference_code_zo_grasp

    blocks = [slice(0, 5), slice(5, 30)]
    o, th, _ = _quadratic(0)
    formula = _reference_code_zo_grasp(o, th, blocks, 40, 5e-3, 0)
    np.testing.assert_allclose(_walking_reference_zo_grasp(o, th, blocks, 40, 5e-3, 0, walk=False), formula,
                               rtol=1e-9, atol=1e-12)
    assert not np.allclose(_walking_reference_zo_grasp(o, th, blocks, 40, 5e-3, 0), formula)


@needs_torch
def test_a_state_dict_taken_before_a_load_restores_nothing():
    """The premise of the walk: ``sd = net.state_dict()`` shares the parameters' storage, so
    ``net.load_state_dict(other); net.load_state_dict(sd)`` leaves ``other``'s values in ``net``."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    before = net.weight.detach().clone()
    with torch.no_grad():
        backup = net.state_dict()
        net.load_state_dict({"weight": net.weight + 1.0}, strict=False)
        net.load_state_dict(backup)
    torch.testing.assert_close(net.weight.detach(), before + 1.0, rtol=0, atol=0)
    assert "shares the parameters' storage" in _training_text()


@needs_torch
@pytest.mark.parametrize("epochs,steps,warm", [(50, 7, 3), (5, 3, 1), (4, 1, 3)])
def test_cosine_schedule_is_the_reference_learning_rate_at_every_step(epochs, steps, warm):
    """The reference sets lr = base * t / (warm * steps) at its t-th step (1-based) of the
    warm-up epochs, and then steps CosineAnnealingLR(T_max = (epochs - warm) * steps), built
    before the warm-up, once after each optimizer step: ``cosine_schedule(base, total_steps=
    epochs * steps, warmup_steps=warm * steps)`` at every step."""
    base = 0.1
    w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=base, momentum=0.9, weight_decay=5e-4)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=(epochs - warm) * steps)
    got = []
    for epoch in range(1, epochs + 1):
        for i in range(1, steps + 1):
            if epoch <= warm:
                for group in opt.param_groups:
                    group["lr"] = base * ((epoch - 1) * steps + i) / (warm * steps)
            got.append(opt.param_groups[0]["lr"])
            w.grad = torch.ones_like(w)
            opt.step()
            if epoch > warm:
                cosine.step()
    mine = zo.cosine_schedule(base, total_steps=epochs * steps, warmup_steps=warm * steps)
    np.testing.assert_allclose([mine(t) for t in range(epochs * steps)], got, rtol=1e-12, atol=1e-17)
    assert ("`zo.cosine_schedule(0.1, total_steps=50 * S, warmup_steps=3 * S)` is the DeepZero reference's "
            "learning rate") in _training_text()
