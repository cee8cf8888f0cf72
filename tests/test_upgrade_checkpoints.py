"""Checkpoints written by an older zoracle, resumed by this one (a user upgrading mid-project).

The files in tests/data were written at the commit their name starts with, by
tests/data/make_old_checkpoints.py (which says how); the runs here are that script's, so a
resume from its 2 epochs to 4 must be the uninterrupted 4-epoch run of this release, bit for
bit, history included (the algorithms those runs use have not changed since: their
uninterrupted runs then and now give the same bytes), on the CPU kind that wrote the files (an
AMD EPYC). On another (an Intel Xeon) the files' first 2 epochs of the RGE run differ from this
machine's own in the last bits (1.4e-15 in the params: NumPy's SIMD kernels round differently),
so the resumed run is compared to within 1e-12 where its bytes are not the same.
"""

from __future__ import annotations

import importlib.util
import pathlib
import shutil

import numpy as np
import pytest

import zoracle as zo
from conftest import edit_checkpoint_header

DATA = pathlib.Path(__file__).parent / "data"
_spec = importlib.util.spec_from_file_location("make_old_checkpoints", DATA / "make_old_checkpoints.py")
old = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(old)


def _copy(tmp_path, name):
    path = tmp_path / "run.npz"
    shutil.copy(DATA / name, path)
    return path


def _records(recs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


def _resume_and_compare(tmp_path, name, run):
    path = _copy(tmp_path, name)
    resumed = zo.train(old.loss, old.PARAMS, epochs=4, checkpoint=path, resume=True, progress=False, **old.RUNS[run])
    whole = zo.train(old.loss, old.PARAMS, epochs=4, progress=False, **old.RUNS[run])
    assert_same_run(resumed, whole)
    return path, whole


def assert_same_run(resumed, whole):
    """``resumed`` (from an old file) is the run ``whole``: bit for bit on the CPU kind that wrote the
    file, to within 1e-12 on another, whose round-off differs in the file's first epochs."""
    assert resumed.nfev == whole.nfev
    if resumed.params.tobytes() == whole.params.tobytes():  # the CPU kind that wrote the file: bit for bit
        assert _records(resumed.history.steps) == _records(whole.history.steps)
        assert _records(resumed.history.epochs) == _records(whole.history.epochs)
        return
    np.testing.assert_allclose(resumed.params, whole.params, rtol=1e-12, atol=1e-12)
    for got, want in [(resumed.history.steps, whole.history.steps), (resumed.history.epochs, whole.history.epochs)]:
        assert len(got) == len(want)
        for g, w in zip(_records(got), _records(want)):
            assert g == pytest.approx(w, rel=1e-12, abs=1e-12)


def test_an_rge_checkpoint_from_before_shaping_resumes_bit_for_bit(tmp_path):
    """RGE's repr gained shaping='none' (faf2020); a checkpoint written before recorded
    "RGE(mu=0.005, directions=2, distribution='gaussian', scheme='forward')" and its resume was
    refused as written with other settings, "resume with the same settings": no settings could."""
    _, meta = zo.load_checkpoint(DATA / "f48a224_rge.npz")
    assert "shaping" not in meta["config"]["estimator"] and "zoracle_version" not in meta
    _resume_and_compare(tmp_path, "f48a224_rge.npz", "rge")


def test_an_rge_text_without_shaping_from_a_release_that_records_it_is_still_compared(tmp_path):
    """Only files from before zoracle recorded its release read as shaping='none': one that
    names a release (they all write shaping) and lacks it was edited, and is refused."""
    path = _copy(tmp_path, "f48a224_rge.npz")
    edit_checkpoint_header(path, lambda h: h.update(zoracle_version=zo.__version__))
    with pytest.raises(zo.CheckpointError, match="different settings"):
        zo.train(old.loss, old.PARAMS, epochs=4, checkpoint=path, resume=True, progress=False, **old.RUNS["rge"])
    with pytest.raises(zo.CheckpointError, match="different settings"):  # another shaping is another run
        zo.train(old.loss, old.PARAMS, epochs=4, checkpoint=_copy(tmp_path, "f48a224_rge.npz"), resume=True,
                 progress=False, **dict(old.RUNS["rge"], estimator=zo.RGE(mu=5e-3, directions=2, shaping="ranks")))


def test_step_records_from_before_total_nfev_get_it_back(tmp_path):
    """Step records gained total_nfev (a395371). A resumed older run mixed records without it
    and with it (not the uninterrupted run's history), and History.from_checkpoint's records had
    none: the docs' steps[0]["total_nfev"] - steps[0]["nfev"] (ZO-GraSP's queries) was a KeyError.
    Each is the header's nfev less the later steps' nfev, as the newer records check it."""
    steps = zo.History.from_checkpoint(DATA / "f48a224_grasp.npz").steps
    assert [r["total_nfev"] for r in steps] == [14, 18, 22, 26]
    assert steps[0]["total_nfev"] - steps[0]["nfev"] == 2 * (4 + 1)  # ZO-GraSP's queries: 2 (grasp_directions + 1)
    path, whole = _resume_and_compare(tmp_path, "f48a224_grasp.npz", "grasp")
    assert _records(zo.History.from_checkpoint(path).steps) == _records(whole.history.steps)
    _, meta = zo.load_checkpoint(path)  # and the file the resume wrote holds them
    assert all("total_nfev" in r for r in meta["history"]["steps"])



def test_a_default_changed_by_the_upgrade_is_named_with_both_releases_and_the_way_on(tmp_path):
    """short_budget's default lr at this size fell from 0.1 to 0.03 (5823cd1): the same call made
    other settings, refused as "a run with different settings ... resume with the same settings",
    as if the user had changed them. The refusal names both releases and says to pass the
    checkpoint's value; doing so continues that run bit for bit."""
    path = _copy(tmp_path, "e3ee374_recipe.npz")
    run = dict(checkpoint=path, resume=True, rng=0, progress=False)
    with pytest.raises(zo.CheckpointError, match="different settings") as info:
        zo.train(old.recipe_loss, old.RECIPE_PARAMS, **dict(old.recipe(), epochs=4), **run)
    text = str(info.value)
    assert "init=0.1," in text and "init=0.03," in text, text
    assert (f"it was written by zoracle 0.1.0 (before checkpoints recorded their release) and this is zoracle "
            f"{zo.__version__}: where a default changed between them (such as zo.recipes.short_budget's lr), pass the "
            "checkpoint's value explicitly to continue that run; resume with the same settings") in text, text
    resumed = zo.train(old.recipe_loss, old.RECIPE_PARAMS, **dict(old.recipe(lr=0.1), epochs=4), **run)
    whole = zo.train(old.recipe_loss, old.RECIPE_PARAMS, **dict(old.recipe(lr=0.1), epochs=4), rng=0, progress=False)
    assert resumed.params.tobytes() == whole.params.tobytes() and resumed.nfev == whole.nfev
    assert _records(resumed.history.steps) == _records(whole.history.steps)

    # another release named as such; this release's own checkpoint: the settings alone, as before
    for writer, named in (("0.1.0", "it was written by zoracle 0.1.0 and this is"), (zo.__version__, None)):
        path = _copy(tmp_path, "f48a224_rge.npz")
        edit_checkpoint_header(path, lambda h: h.update(zoracle_version=writer))
        with pytest.raises(zo.CheckpointError, match="different settings") as info:
            zo.train(old.loss, old.PARAMS, epochs=4, checkpoint=path, resume=True, progress=False,
                     **dict(old.RUNS["rge"], optimizer=zo.sgd(0.01)))
        assert (named in str(info.value)) if named else "written by zoracle" not in str(info.value), str(info.value)


def test_an_rge_checkpoint_from_before_fingerprints_is_refused_naming_both_releases(tmp_path):
    """Before the header held 'fingerprints' (f48a224) some 0.1.0 versions drew RGE's directions
    otherwise (before 9d81c58), and nothing in the file tells which: read as shaping='none', the
    earliest went on as a run neither version makes. Refused, naming both releases and the way on
    (it said "different settings ... resume with the same settings", which no call could)."""
    path = _copy(tmp_path, "f48a224_rge.npz")
    edit_checkpoint_header(path, lambda h: h.pop("fingerprints"))
    with pytest.raises(zo.CheckpointError) as info:
        zo.train(old.loss, old.PARAMS, epochs=4, checkpoint=path, resume=True, progress=False, **old.RUNS["rge"])
    text = str(info.value)
    assert "written by zoracle 0.1.0 before commit f48a224 of 2026-11-30" in text and f"this is zoracle {zo.__version__}" in text, text
    assert "finish it with the zoracle that wrote it, or to go on from its parameters" in text, text
