"""An error at an epoch's end after its record (an epoch callback raising, Ctrl-C in it): the
epoch's steps are saved first, as a raising step callback's step is, and a resume ends as the
whole run does, the epoch recorded once."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo


def _quad(x):
    return float(np.sum((x - 1.0) ** 2))


def _run(path, callbacks=(), **kw):
    return zo.train(_quad, np.zeros(3), epochs=3, steps_per_epoch=4, estimator=zo.SNES(population=3),
                    optimizer=zo.adam(0.05), checkpoint=path, checkpoint_every=100, callbacks=list(callbacks),
                    progress=False, rng=0, **kw)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_epoch_callback_that_raises_keeps_the_epoch_and_a_resume_ends_as_the_whole_run(tmp_path, error):
    """checkpoint_every=100 was not due at epoch 0's end: a raising epoch callback lost its 4 steps
    (no checkpoint written), where a raising step callback's step is saved."""
    def callback(kind, record, params):
        if kind == "epoch" and record["epoch"] == 0:
            raise error("stop")

    path = tmp_path / "run.npz"
    with pytest.raises(error):
        _run(path, [callback])
    header = zo.load_checkpoint(path)[1]
    assert (header["step"], header["epoch"], header["pos"]) == (4, 1, 0)
    resumed = _run(path, resume=True)
    whole = _run(tmp_path / "whole.npz")
    assert resumed.params.tobytes() == whole.params.tobytes()
    assert resumed.estimator_state.tobytes() == whole.estimator_state.tobytes()
    assert resumed.history.column("loss").tolist() == whole.history.column("loss").tolist()
    assert [e["epoch"] for e in resumed.history.epochs] == [0, 1, 2]
    assert [e["loss"] for e in resumed.history.epochs] == [e["loss"] for e in whole.history.epochs]
