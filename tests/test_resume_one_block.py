"""A checkpoint of zo.recipes.short_budget(..., blocks=...) written before commit f228acd (2026-12-04): the
recipe planned with the blocks but did not pass them to train, so that run scored its weights as one
block. Resumed with today's keyword arguments (which carry the blocks) it is refused as "blocks differ",
and the refusal said nothing of the way on: blocks=None (del kw['blocks']) continues it."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo
from conftest import edit_checkpoint_header

P = np.full(120, 0.3)
BLOCKS = [slice(0, 60), slice(60, 120)]
#: the header fields a checkpoint of 2026-12-04 carried
OLD_FIELDS = {"config", "epoch", "fingerprints", "format", "history", "nfev", "opt_count", "pos", "root", "step",
              "version"}


def loss(x):
    return float(np.sum((x - 1.0) ** 2))


def _kw():
    kw = zo.recipes.short_budget(loss, P, 1500, blocks=BLOCKS)
    assert kw["blocks"] == BLOCKS
    return kw


def _old_run(path, old_header=True):
    """The first 2 epochs of the recipe's run as that release ran it: without the blocks."""
    kw = _kw()
    del kw["blocks"], kw["epochs"]
    zo.train(loss, P, epochs=2, checkpoint=path, progress=False, rng=3, **kw)
    if old_header:
        edit_checkpoint_header(path, lambda h: [h.pop(k) for k in set(h) - OLD_FIELDS])


def test_an_old_recipe_checkpoint_refused_for_its_blocks_names_blocks_none(tmp_path):
    path = tmp_path / "run.npz"
    _old_run(path)
    with pytest.raises(zo.CheckpointError) as info:
        zo.train(loss, P, checkpoint=path, resume=True, progress=False, rng=3, **_kw())
    text = str(info.value)
    assert ("(blocks: checkpoint has [[0, 120]], this run has [[0, 60], [60, 120]]); its run scored all 120 "
            "weights as one block, as train does without `blocks`: to continue it, pass blocks=None "
            "(zo.recipes.short_budget(..., blocks=...) before commit f228acd of 2026-12-04 planned with the "
            "blocks but did not pass them on to train: del kw['blocks'] from its keyword arguments); it was written by zoracle 0.1.0"
            in text), text
    kw = _kw()
    del kw["blocks"]  # the way the message names: the run continues
    res = zo.train(loss, P, checkpoint=path, resume=True, progress=False, rng=3, **kw)
    assert res.steps == kw["epochs"] and res.history.steps[0]["step"] == 0


def test_a_recent_one_block_checkpoint_names_blocks_none_without_the_recipes_history(tmp_path):
    path = tmp_path / "run.npz"
    _old_run(path, old_header=False)  # this release's run without blocks, resumed with them
    with pytest.raises(zo.CheckpointError, match=r"as one block, as train does without `blocks`: to continue it, "
                                                 r"pass blocks=None; resume with the same settings") as info:
        zo.train(loss, P, checkpoint=path, resume=True, progress=False, rng=3, **_kw())
    assert "short_budget(..., blocks=...)" not in str(info.value)


def test_other_blocks_are_refused_as_before(tmp_path):
    path = tmp_path / "run.npz"
    kw = _kw()
    del kw["epochs"]
    other = dict(kw, blocks=[slice(0, 40), slice(40, 120)])
    zo.train(loss, P, epochs=2, checkpoint=path, progress=False, rng=3, **other)
    with pytest.raises(zo.CheckpointError, match=r"this run has \[\[0, 60\], \[60, 120\]\]\); resume with the same"):
        zo.train(loss, P, epochs=4, checkpoint=path, resume=True, progress=False, rng=3, **kw)
