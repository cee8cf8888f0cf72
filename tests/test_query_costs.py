"""What a run costs a user billed per query: every call zoracle makes to the user's callable, counted
by the callable itself (in a file, so that process workers' calls count too), against ``nfev``, the
history's ``total_nfev`` and ``max_queries``. The checks beyond the estimates (the fast-path check,
ZO-GraSP's scoring, a diverged run's probes) are listed in docs/training.md, "What a run queries"."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo
from zoracle.executors import JoblibExecutor

D = 8
BLOCKS = [slice(0, 4), slice(4, 8)]


class Paid:
    """A quadratic billed per loss value: each call appends its number of losses to ``path``."""

    def __init__(self, path, fast=False, power=2):
        self.path, self.power = str(path), power
        if fast:
            self.batch, self.coordinate_losses = self._batch, self._coords

    def _bill(self, n):
        with open(self.path, "a") as f:
            f.write(f"{n}\n")

    def _f(self, P):
        return np.sum(np.abs(np.asarray(P, dtype=np.float64) - 1.0) ** self.power, axis=-1)

    def __call__(self, p):
        self._bill(1)
        return float(self._f(p))

    def _batch(self, P):
        self._bill(len(P))
        return self._f(P)

    def _coords(self, p, coords, step):
        self._bill(len(coords))
        P = np.repeat(np.asarray(p, dtype=np.float64)[None, :], len(coords), axis=0)
        P[np.arange(len(coords)), coords] += step
        return self._f(P)


def billed(path) -> int:
    try:
        with open(path) as f:
            return sum(int(line) for line in f)
    except FileNotFoundError:
        return 0


RUNS = {
    "CGE": dict(estimator=zo.CGE(mu=1e-3)),
    "RGE": dict(estimator=zo.RGE(mu=1e-3, directions=5)),
    "SNES": dict(estimator=zo.SNES(mu=0.1, population=6)),
    "ZO-GraSP": dict(estimator=zo.CGE(mu=1e-3), sparsity=0.5, ratios="zo_grasp", blocks=BLOCKS, grasp_directions=4),
}


@pytest.fixture(scope="module")
def processes():
    ex = JoblibExecutor(2)
    yield ex
    ex.close()


@pytest.mark.filterwarnings("ignore:train. ZO-GraSP")  # (a block ZO-GraSP leaves no coordinates: not the point)
@pytest.mark.parametrize("where", ["serial", "processes"])
@pytest.mark.parametrize("fast", [False, True], ids=["plain", "batch"])
@pytest.mark.parametrize("name", list(RUNS))
def test_nfev_is_what_the_users_callable_was_asked_and_max_queries_stops_within_a_step(
        name, fast, where, tmp_path, request):
    ex = request.getfixturevalue("processes") if where == "processes" else None
    budget = 40
    path = tmp_path / "bill"
    res = zo.train(Paid(path, fast), np.zeros(D), epochs=10**4, max_queries=budget, optimizer=zo.sgd(0.01),
                   rng=0, progress=False, executor=ex, **RUNS[name])
    made = billed(path)
    # every call counted, the fast-path check's included (one query, in the first step's record)
    assert res.nfev == made == res.history.steps[-1]["total_nfev"]
    assert res.stopped and made >= budget
    # the budget stops the run after the step that reaches it: at most one step's queries past it
    last = res.history.steps[-1]["nfev"]
    assert made - last < budget, (made, last)


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast paths"])
def test_a_diverged_runs_probes_stay_within_max_queries(fast, tmp_path):
    """A diverged run's error asks the loss twice at the diverged params and twice at the first ones,
    and each fast path once, counted in no nfev: with the budget spent they passed it by up to 6
    (4 calls past a budget of 21 on the plain loss before this test)."""
    path = tmp_path / "bill"
    kw = dict(epochs=100, estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(1.0), rng=0, progress=False)
    with pytest.raises(zo.ArgumentError, match="training diverged"):
        zo.train(Paid(path, fast, power=4), np.full(4, 2.0), **kw)
    unbounded = billed(path)
    steps = []
    path.unlink()
    with pytest.raises(zo.ArgumentError, match="training diverged"):
        zo.train(Paid(path, fast, power=4), np.full(4, 2.0), max_queries=10**6,
                 callbacks=[lambda event, rec, p: steps.append(rec["total_nfev"]) if event == "step" else None], **kw)
    assert billed(path) == unbounded  # a budget far off: the same probes
    spent = steps[-1]  # the queries of the steps before the one that diverged
    assert unbounded > spent  # the probes ran (this run diverges before its next estimate's queries)
    for budget in range(spent + 1, spent + 4):  # (a budget of `spent` stops the run before it diverges)
        path.unlink()
        with pytest.raises(zo.ArgumentError, match="training diverged"):
            zo.train(Paid(path, fast, power=4), np.full(4, 2.0), max_queries=budget, **kw)
        assert billed(path) <= budget, (budget, billed(path), spent)


@pytest.mark.filterwarnings("ignore:short_budget. one epoch of warm-up")
@pytest.mark.parametrize("budget", [40, 41, 42])
@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast paths"])
def test_the_short_budget_recipe_spends_at_most_its_budget(fast, budget, tmp_path):
    """Its steps fill the budget after ZO-GraSP; the fast-path check's query was not reserved, so a
    budget of whole steps ran one query past it (41 of 40) on an oracle with `coordinate_losses`."""
    path = tmp_path / "bill"
    p0 = np.full(D, 0.5)
    kw = zo.recipes.short_budget(Paid(path, fast), p0, budget, coordinates=2, grasp_directions=4, blocks=BLOCKS)
    res = zo.train(Paid(path, fast), p0, rng=0, progress=False, **kw)
    assert res.nfev == billed(path) <= budget
    per_step = 2 + 1
    assert billed(path) > budget - per_step  # and the whole steps that fit are taken
    checked = Paid(tmp_path / "checked", fast)
    checked.fast_paths_checked = True  # an oracle that checks itself is not asked more: nothing reserved
    kw = zo.recipes.short_budget(checked, p0, 40, coordinates=2, grasp_directions=4, blocks=BLOCKS)
    assert kw["max_queries"] == 40


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast paths"])
def test_probes_of_a_run_whose_params_became_non_finite_stay_within_max_queries(fast, tmp_path):
    """The other way to diverge: the first update overflows float32, after the step's own estimate
    (5 queries, 6 with the fast-path check), which is not yet in the run's count when the error's
    probes ask the loss: they must leave what that step spent out of the budget left."""
    path = tmp_path / "bill"
    kw = dict(epochs=100, estimator=zo.CGE(mu=1e-2), optimizer=zo.sgd(1e38), rng=0, progress=False)
    p0 = np.full(4, 2.0, dtype=np.float32)
    step = 6 if fast else 5
    with pytest.raises(zo.ArgumentError, match="params became non-finite"):
        zo.train(Paid(path, fast, power=4), p0, **kw)
    assert billed(path) > step  # the probes ran
    for budget in range(step, step + 4):
        path.unlink()
        with pytest.raises(zo.ArgumentError, match="params became non-finite"):
            zo.train(Paid(path, fast, power=4), p0, max_queries=budget, **kw)
        assert step <= billed(path) <= budget, (budget, billed(path))


class PaidSplit(Paid):
    """``Paid`` with ``prefix`` / ``suffix`` over ``BLOCKS`` (the loss of the other blocks, and the block's
    own added back): train's check of a split asks the plain call once in each block it reaches."""

    blocks = BLOCKS

    def prefix(self, x, block):
        s = BLOCKS[block]
        x = np.asarray(x, dtype=np.float64)
        return np.array([float(self._f(x)) - float(self._f(x[s]))])

    def suffix(self, feats, x, block, coords, step):
        self._bill(len(coords))
        s = BLOCKS[block]
        P = np.repeat(np.asarray(x, dtype=np.float64)[None, s], len(coords), axis=0)
        P[np.arange(len(coords)), np.asarray(coords) - s.start] += step
        return feats[0] + self._f(P)


@pytest.mark.filterwarnings("ignore:short_budget. one epoch of warm-up")
@pytest.mark.parametrize("budget", [60, 61, 62, 63])
def test_the_short_budget_recipe_reserves_a_split_oracles_check_in_each_block(budget, tmp_path):
    """A ``prefix`` / ``suffix`` oracle's check asks one query in each block (a pair wrong in a later block
    alone passed a check of the first): the recipe reserves one a block, and spends at most its budget
    (61 of 60 when it reserved one query: 6 coordinates reach both blocks, the first step 7 + 2)."""
    path = tmp_path / "bill"
    p0 = np.full(D, 0.5)
    kw = zo.recipes.short_budget(PaidSplit(path), p0, budget, coordinates=6, grasp_directions=4, blocks=BLOCKS)
    res = zo.train(PaidSplit(path), p0, rng=0, progress=False, **kw)
    assert res.nfev == billed(path) <= budget


@pytest.mark.filterwarnings("ignore:short_budget. one epoch of warm-up")
@pytest.mark.parametrize("budget", [50, 57, 64])
def test_the_short_budget_recipe_reserves_the_oracles_own_blocks_not_the_blocks_passed(budget, tmp_path):
    """The check probes one query in each of the oracle's own ``blocks`` (where its prefix / suffix split):
    ``blocks=`` passed for ZO-GraSP's layout (one here) reserved one query for it, and the run spent
    budget + 1 (51 of 50, 58 of 57, 65 of 64)."""
    path = tmp_path / "bill"
    p0 = np.full(D, 0.5)
    kw = zo.recipes.short_budget(PaidSplit(path), p0, budget, coordinates=6, grasp_directions=4, blocks=[slice(0, D)])
    res = zo.train(PaidSplit(path), p0, rng=0, progress=False, **kw)
    assert res.nfev == billed(path) <= budget
