"""A loss that is a mean of whole numbers over n items (minus the mean return of n episodes of
CartPole's reward of 1 a step, an error count over a batch of n) lies on a grid of 1/n. The coarse-loss
warning read it as "a loss rounded to 1 decimals" (n = 5 or 10: "return the loss unrounded") or as
"computed in a narrower float" (n = 2, 4 or 8: "compute the loss in float64"), fixes that such an
oracle cannot apply. It now names the mean of whole numbers beside those, with its own fix."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import zoracle as zo
import zoracle._estimators as est_module
from zoracle import _grid

D = 6
_rng = np.random.default_rng(0)
W = _rng.standard_normal((20, D))  # 20 "episodes", each a whole number of steps survived
X0 = np.random.default_rng(0).standard_normal(D)  # a point where no mean below is a whole number


def episodes(x) -> np.ndarray:
    return np.floor(100.0 * (1.0 + np.tanh(W @ np.asarray(x, dtype=np.float64))))  # whole numbers, 0 to 200


def mean_return(n):
    def loss(x) -> float:
        return -float(np.mean(episodes(x)[:n]))  # minus the mean over n episodes
    return loss


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())  # (given once per oracle: each test its own)


@pytest.mark.parametrize("n, other", [(5, r"are multiples of 0\.\d+ \(a loss rounded"),
                                      (10, r"are multiples of 0\.1 \(a loss"),
                                      (4, r"carry only \d+ significant bits")])
def test_a_mean_of_whole_numbers_is_named_with_its_fix(n, other):
    with pytest.warns(UserWarning, match=rf"the oracle's losses {other}.*, or are multiples of 1/{n} \(a mean of "
                                         rf"whole numbers over {n} items or episodes\).*moves in steps of 1/{n} "
                                         r"whatever its type: raise mu"):
        zo.estimate_gradient(mean_return(n), X0, zo.CGE(mu=0.01), rng=0)


def test_a_told_mean_is_named_too():
    loss = mean_return(5)
    with pytest.warns(UserWarning, match=r"the losses told are .*, or are multiples of 1/5 \(a mean"):
        with zo.AskTell(X0, epochs=1, steps_per_epoch=1, estimator=zo.CGE(mu=0.01), progress=False) as opt:
            while not opt.done:
                opt.tell([loss(x) for x in opt.ask()])


def test_mean_count_reads_the_smallest_n_and_nothing_from_float64_losses():
    assert _grid.mean_count(-277.8, np.array([0.2, -0.4, 0.0])) == 5
    assert _grid.mean_count(-18.5, np.array([0.5, 1.0])) == 2
    assert _grid.mean_count(-18.0, np.array([0.25, -0.75])) == 4
    assert _grid.mean_count(-1.0 / 3.0, np.array([2.0 / 3.0])) == 3
    assert _grid.mean_count(3.0, np.array([0.0])) is None  # whole numbers: a count, named as such elsewhere
    assert _grid.mean_count(0.123456789, np.array([1e-3 * np.pi])) is None
    assert _grid.mean_count(round(np.pi, 3), np.array([0.001, -0.003])) is None  # 1/1000: past MAX_MEAN_COUNT
    assert _grid.mean_count(1.0, np.array([np.nan])) is None


def test_a_float16_loss_and_a_rounded_one_are_told_as_before():
    """Their grids are 1/n for no n up to 100: the warning names no mean there."""
    A = _rng.standard_normal((40, D))
    Y = _rng.standard_normal(40)

    def half(x) -> float:
        r = A.astype(np.float16) @ np.asarray(x, dtype=np.float16) - Y.astype(np.float16)
        return float(np.mean(r * r, dtype=np.float16))

    def rounded(x) -> float:
        return round(float(np.mean((A @ x - Y) ** 2)), 3)

    for oracle, names in [(half, "carry only 11 significant bits"), (rounded, "are multiples of 0.001")]:
        with pytest.warns(UserWarning, match=names) as got:
            zo.estimate_gradient(oracle, X0, rng=0)
        assert not any("a mean of whole numbers" in str(w.message) for w in got)


def test_a_mean_read_far_from_its_base_loss_is_named_by_its_own_n():
    """A base loss of 0.2 and a perturbed one of 3.4 (means over 5): their difference, 3.2, rounds at
    3.4's float spacing, which a tolerance at 0.2's missed, so the warning named a mean over 25."""
    x0 = np.random.default_rng(0).standard_normal(D)

    def loss(x) -> float:
        up = np.asarray(x) > x0 + 0.005  # the coordinates forward CGE perturbs (by +mu)
        return float(np.mean([1 + 16 * up[0] + 2 * up[1], 3 * up[2], 0, 0, 0]))  # 5 whole numbers

    with pytest.warns(UserWarning, match=r", or are multiples of 1/5 \(a mean of whole numbers over 5 items") as got:
        zo.estimate_gradient(loss, x0, zo.CGE(mu=0.01), rng=0)
    assert "1/25" not in str(got[0].message)
    assert _grid.mean_count(0.2, np.array([3.4 - 0.2, 0.6 - 0.2, 0.0])) == 5


def test_the_policy_search_guide_says_which_means_are_warned_of():
    """docs/training.md, 'Policy search': the guide said CGE warns wherever a mean of k whole returns
    lies on its grid of 1/k, for the k = 3 of its own example too, where no warning comes (the grid
    is read from the losses' decimals or bits: found where 1/k is a short decimal or binary fraction)."""
    import re
    from pathlib import Path

    text = " ".join((Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text(encoding="utf-8").split())
    m = re.search(r"coarse-loss warning names such a grid where `k` is ([\d, ]+) or another product of 2s and 5s "
                  r"\(`1/k` a short decimal or binary fraction\); at another `k`, as the (\d+) here, no warning comes",
                  text)
    assert m, "the guide's sentence on which means the coarse-loss warning names"
    named, silent = [int(k) for k in m.group(1).replace(",", " ").split()], int(m.group(2))
    for n in [*named, 16, 20, silent, 6, 7, 12]:
        est_module._COARSE_WARNED.clear()
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            zo.estimate_gradient(mean_return(n), X0, zo.CGE(mu=0.01), rng=0)
        texts = [str(w.message) for w in got if "resolves a partial derivative" in str(w.message)]
        rest = n
        for p in (2, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:  # a product of 2s and 5s
            assert len(texts) == 1 and f"1/{n} (a mean of whole numbers over {n} items" in texts[0], (n, texts)
        else:
            assert texts == [], (n, texts)
