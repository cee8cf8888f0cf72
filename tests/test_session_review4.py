"""Fourth session review (h320): the params-did-not-change watch without a params copy, and the
version bump to 0.2.0.

The watch compares each update with the step's start point, which train holds. An own optimizer
that writes into the params it is given and returns a copy (``p -= ...; return p.astype(p.dtype)``)
left the two equal at every step, in different memory: the run was told its params did not change
while they moved. A checkpoint written by an earlier release (0.1.0) with a header field it never
writes was told to upgrade zoracle, as if a newer release had written it.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import pytest

import zoracle as zo
from conftest import edit_checkpoint_header


class _Count(NamedTuple):
    count: int


def _far(w):  # float32 params of 100 and a small gradient: updates of lr 1e-6 round away
    return float(1e-3 * np.sum((w.astype(np.float64) - 103.0) ** 2))


def _run(update, lr):
    opt = zo.Optimizer(lambda p: _Count(0), update, lr, "own", f"own(lr={lr})")
    return zo.train(_far, np.full(4, 100.0, np.float32), epochs=6, estimator=zo.CGE(mu=1e-1),
                    optimizer=opt, rng=0, progress=False)


def _writes_then_copies(g, s, p, lr=None):
    p -= (lr * g).astype(p.dtype)  # into the params it was given
    return p.astype(p.dtype), _Count(s.count + 1)  # (astype copies)


def test_an_optimizer_that_writes_its_input_and_returns_a_copy_is_not_taken_for_one_that_stayed():
    r = _run(_writes_then_copies, lr=0.1)  # quiet: the filterwarnings setting makes a warning an error
    assert not np.array_equal(r.params, np.full(4, 100.0, np.float32))


def test_such_an_optimizer_whose_updates_round_away_is_still_told():
    with pytest.warns(UserWarning, match=r"the params did not change over epochs? .*lr was 1e-06"):
        _run(_writes_then_copies, lr=1e-6)


def _loss(x):
    return float(np.sum((np.asarray(x) - 1.0) ** 2))


KW = dict(estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.05), rng=0, progress=False, steps_per_epoch=2)


@pytest.mark.parametrize("writer", ["0.1.0", "0.1"])
def test_an_earlier_release_s_checkpoint_with_a_field_it_never_writes_is_called_edited(tmp_path, writer):
    """0.1.0 wrote no such field: an upgrade (the advice given) reads it no better."""
    path = os.path.join(tmp_path, "c.npz")
    zo.train(_loss, np.zeros(4), epochs=1, checkpoint=path, **KW)

    def older(h):
        h["zoracle_version"] = writer
        h["momentum_schedule"] = 0.5

    edit_checkpoint_header(path, older)
    with pytest.raises(zo.CheckpointError) as info:
        zo.train(_loss, np.zeros(4), epochs=2, checkpoint=path, resume=True, **KW)
    text = str(info.value)
    assert f"'momentum_schedule' that zoracle {writer}, which wrote it, never writes: the header was edited" in text
    assert "upgrade" not in text


@pytest.mark.parametrize("writer", ["9.0.0", "0.10.0", "0.2.0.dev1", None])
def test_a_later_or_unnamed_release_s_field_still_asks_for_an_upgrade(tmp_path, writer):
    path = os.path.join(tmp_path, "c.npz")
    zo.train(_loss, np.zeros(4), epochs=1, checkpoint=path, **KW)

    def newer(h):
        if writer is None:
            del h["zoracle_version"]
        else:
            h["zoracle_version"] = writer
        h["momentum_schedule"] = 0.5

    edit_checkpoint_header(path, newer)
    with pytest.raises(zo.CheckpointError, match="upgrade zoracle"):
        zo.train(_loss, np.zeros(4), epochs=2, checkpoint=path, resume=True, **KW)
