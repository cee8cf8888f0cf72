"""A checkpoint of a newer zoracle read by an older one: refused, naming both releases and the
upgrade (never the advice to delete it, the user's run)."""

from __future__ import annotations


import numpy as np
import pytest

import zoracle as zo
from conftest import edit_checkpoint_header

KW = dict(estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.05), rng=0, progress=False)


def loss(x):
    return float(np.sum((x - 1.0) ** 2))


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "run.npz"
    zo.train(loss, np.zeros(4), epochs=2, checkpoint=path, **KW)
    return path


def test_a_checkpoint_names_the_release_that_wrote_it(ckpt):
    _, meta = zo.load_checkpoint(ckpt)
    assert (meta["format"], meta["version"], meta["zoracle_version"]) == ("zoracle-checkpoint", 1, zo.__version__)
    zo.train(loss, np.zeros(4), epochs=3, checkpoint=ckpt, resume=True, **KW)  # and resumes


@pytest.mark.parametrize("writer, named", [("9.0.0", "zoracle 9.0.0"), (None, "a newer zoracle")])
def test_a_newer_format_says_so_and_asks_for_an_upgrade(ckpt, writer, named):
    """The reader said "has format version 2, this zoracle reads version 1; delete it to start over":
    not which is newer, and the advice lost the run that a newer zoracle could continue."""

    def newer(h):
        h["version"] = 2
        h.pop("zoracle_version", None)
        if writer is not None:
            h["zoracle_version"] = writer

    edit_checkpoint_header(ckpt, newer)
    want = (f"has format version 2, written by {named}; this is zoracle {zo.__version__}, which reads format "
            "version 1 only: upgrade zoracle")
    for read in (lambda: zo.train(loss, np.zeros(4), epochs=3, checkpoint=ckpt, resume=True, **KW),
                 lambda: zo.load_checkpoint(ckpt), lambda: zo.History.from_checkpoint(ckpt)):
        with pytest.raises(zo.CheckpointError, match="written by") as info:
            read()
        assert want in str(info.value) and "delete" not in str(info.value), str(info.value)


def test_an_older_format_is_still_refused_as_before(ckpt):
    edit_checkpoint_header(ckpt, lambda h: h.update(version=0))
    with pytest.raises(zo.CheckpointError, match="has format version 0, this zoracle reads version 1; delete it"):
        zo.load_checkpoint(ckpt)


@pytest.mark.parametrize("where, field", [("header", "'momentum_schedule'"), ("config", "'config.clip'")])
def test_a_field_this_release_does_not_know_is_refused_on_resume(ckpt, where, field):
    """A newer release that records a new setting (in the header or among the settings) without a
    new format: the resume went on without it, continuing another run than the one saved."""

    def newer(h):
        (h if where == "header" else h["config"])[field.strip("'").split(".")[-1]] = 0.5
        h["zoracle_version"] = "9.0.0"

    edit_checkpoint_header(ckpt, newer)
    with pytest.raises(zo.CheckpointError, match="upgrade zoracle") as info:
        zo.train(loss, np.zeros(4), epochs=3, checkpoint=ckpt, resume=True, **KW)
    text = str(info.value)
    assert f"header field {field}, written by zoracle 9.0.0, that this zoracle does not know" in text, text
    assert "delete" not in text
    zo.load_checkpoint(ckpt)  # the arrays and header still read (a history plot, a look)

    def edited(h):  # the same field in a file of this release: an edit, not a newer zoracle
        h["zoracle_version"] = zo.__version__

    edit_checkpoint_header(ckpt, edited)
    with pytest.raises(zo.CheckpointError, match=f"zoracle {zo.__version__}, which wrote it, never writes: the "
                                                 "header was edited; delete it"):
        zo.train(loss, np.zeros(4), epochs=3, checkpoint=ckpt, resume=True, **KW)
