"""The history's query counts against the result's: ZO-GraSP's queries, spent before the first
step, are in every ``total_nfev`` and in ``result.nfev``, in no record's ``nfev`` (documented)."""

from __future__ import annotations

import numpy as np

import zoracle as zo
from zoracle.testing import QuadraticOracle


def test_history_nfev_sums_to_the_result_less_zo_grasps_queries():
    """The epochs' ``nfev`` summed to 126 where ``result.nfev`` was 144, and the docstrings did
    not say why: ZO-GraSP's 2 * (8 + 1) queries belong to no step."""
    rng = np.random.default_rng(0)
    M = rng.standard_normal((40, 40))
    blocks = [slice(0, 7), slice(7, 20), slice(20, 40)]
    oracle = QuadraticOracle(M @ M.T / 40, rng.standard_normal(40), blocks=blocks)
    x = rng.standard_normal(40)
    grasp = 2 * (8 + 1)
    r = zo.train(oracle, x, epochs=2, steps_per_epoch=3, sparsity=0.5, blocks=blocks, rng=0, grasp_directions=8,
                 progress=False)
    steps, epochs = r.history.steps, r.history.epochs
    assert sum(e["nfev"] for e in epochs) == sum(s["nfev"] for s in steps) == r.nfev - grasp
    assert steps[0]["total_nfev"] - steps[0]["nfev"] == grasp
    assert epochs[-1]["total_nfev"] == steps[-1]["total_nfev"] == r.nfev
    # without ZO-GraSP the sums agree
    u = zo.train(oracle, x, epochs=2, steps_per_epoch=3, sparsity=0.5, blocks=blocks, rng=0, ratios="uniform",
                 progress=False)
    assert sum(e["nfev"] for e in u.history.epochs) == u.nfev == u.history.steps[-1]["total_nfev"]
    # where users read it: the epochs' nfev leave ZO-GraSP's queries out
    doc = " ".join(zo.History.__doc__.split())
    assert "``nfev`` (the sum of its steps')" in doc and "in no record's ``nfev``" in doc, doc
    assert "no ``nfev`` of the history counts" in " ".join(zo.TrainResult.__doc__.split())
