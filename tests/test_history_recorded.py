"""``History.recorded``: a NaN in ``History.column`` is either a record without the field (an epoch
``eval_every`` skipped) or the value a record holds (an evaluation that returned NaN); the mask
``recorded`` tells them apart, in a run's history and in one read back from its checkpoint."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import zoracle as zo


def _run(tmp_path):
    """6 epochs evaluated every 2nd; the 2nd evaluation (epoch 3) returns NaN, the others 0.5."""
    told = []

    def evaluate(params):
        told.append(len(told))
        return {"acc": float("nan") if len(told) == 2 else 0.5}

    result = zo.train(lambda x: float(np.sum(x ** 2)), np.ones(3), epochs=6, optimizer=zo.sgd(0.1), progress=False,
                      eval_fn=evaluate, eval_every=2, checkpoint=str(tmp_path / "run.npz"))
    return result.history, told


def test_recorded_tells_a_gap_from_a_nan_the_run_recorded(tmp_path):
    history, told = _run(tmp_path)
    for h in (history, zo.History.from_checkpoint(tmp_path / "run.npz")):  # (the checkpoint keeps which epochs have it)
        acc, evaluated = h.column("acc", "epoch"), h.recorded("acc", "epoch")
        # the same masks from the records themselves, not from the method under test
        want = np.array(["acc" in r for r in h.epochs])
        assert evaluated.dtype == bool and evaluated.tolist() == want.tolist() and evaluated.sum() == len(told) == 3
        assert np.isnan(acc).sum() == 4  # the column alone: three gaps and a recorded NaN, alike
        np.testing.assert_array_equal(acc[evaluated], [0.5, np.nan, 0.5])  # the evaluated epochs, the NaN kept
        assert int(np.flatnonzero(evaluated & np.isnan(acc))[0]) == [r["epoch"] for r in h.epochs if "acc" in r][1]
        assert h.recorded("loss").all() and h.recorded("loss").shape == h.column("loss").shape


def test_recorded_of_a_name_no_record_has_is_all_false_without_a_warning():
    h = zo.History(steps=({"step": 0, "loss": 1.0}, {"step": 1, "loss": np.nan}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert h.recorded("acc").tolist() == [False, False]
    assert h.recorded("loss").tolist() == [True, True]
    assert zo.History().recorded("loss", "epoch").shape == (0,)
    with pytest.raises(zo.ArgumentError, match="`level` must be 'step' or 'epoch', got 'epochs'"):
        h.recorded("loss", "epochs")
