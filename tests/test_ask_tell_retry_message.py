"""A tell(X, losses) sent again with losses that are no tell (a NaN, a null) names what was told and
what came, not a row whose loss is unchanged."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo


def f(x):
    return float(((x - 1) ** 2).sum())


def test_a_retry_with_a_nan_names_no_unchanged_row():
    opt = zo.AskTell(np.zeros(3), epochs=1, steps_per_epoch=3, estimator=zo.CGE(mu=1e-3),
                     optimizer=zo.sgd(0.1), progress=False)
    X = opt.ask()
    losses = [f(x) for x in X]
    opt.tell(X, losses)
    bad = list(losses)
    bad[2] = float("nan")
    with pytest.raises(zo.ZoracleError, match="told already, with other losses") as info:
        opt.tell(X, bad)
    text = str(info.value)
    assert "row 0 was told" not in text, text  # row 0's loss is the one told
    assert "nan" in text and repr(losses[0]) in text, text
    opt.tell(X, losses)  # the retry itself is still taken
    opt.close()
