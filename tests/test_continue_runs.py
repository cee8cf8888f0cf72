"""Going on from a checkpoint otherwise than the run began: what a resume may change (the run stays
the uninterrupted one), and, where it refuses a change, a message that says how to go on instead."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo
from zoracle.executors import ThreadPool


def loss(x):
    return float(np.sum((x - 1.0) ** 2))


SETTINGS = dict(estimator=zo.CGE(), optimizer=zo.sgd(0.05, momentum=0.9), rng=0, progress=False)


def _recipe(path) -> str:
    return f"zo.train(oracle, zo.load_checkpoint({str(path)!r})[0]['params'], ..., checkpoint='new.npz')"


@pytest.mark.parametrize("change", [
    {"optimizer": zo.adam(0.05)},                                       # sgd -> adam
    {"optimizer": zo.sgd(0.01, momentum=0.9)},                           # a lower learning rate
    {"schedule": zo.cosine_schedule(0.05, total_steps=8)},               # a schedule the run had not
])
def test_a_refused_change_shows_both_values_and_the_new_run_that_makes_it(tmp_path, change):
    """The refusal said 'resume with the same settings, or delete the checkpoint to start over':
    nothing of going on from the run's parameters, which is what a user changing the learning rate
    after a plateau (or sgd for adam) wants, and which docs/training.md shows."""
    path = tmp_path / "run.npz"
    zo.train(loss, np.zeros(5), epochs=3, checkpoint=path, **SETTINGS)
    with pytest.raises(zo.CheckpointError) as info:
        zo.train(loss, np.zeros(5), epochs=6, resume=path, **{**SETTINGS, **change})
    text = str(info.value)
    name = next(iter(change))
    assert f"{name}: checkpoint has " in text and "this run has " in text
    assert _recipe(path) in text
    # the way it names works: a new run from the saved parameters, with its own checkpoint
    params = zo.load_checkpoint(path)[0]["params"]
    new = zo.train(loss, params, epochs=3, checkpoint=tmp_path / "new.npz", **{**SETTINGS, **change})
    assert new.steps == 3 and loss(new.params) < loss(params)


def test_another_callable_schedule_is_refused_with_the_new_run_that_makes_it(tmp_path):
    """Two callables read alike in the settings (``<function>``): their values are compared, and
    that refusal names the way on too."""
    path = tmp_path / "run.npz"
    zo.train(loss, np.zeros(5), epochs=3, checkpoint=path, schedule=lambda t: 0.05, **SETTINGS)
    with pytest.raises(zo.CheckpointError) as info:  # lower from the plateau on: other values at steps run
        zo.train(loss, np.zeros(5), epochs=6, resume=path, schedule=lambda t: 0.01, **SETTINGS)
    assert "another `lr` schedule: at step 0 it gave 0.05, this run's gives 0.01" in str(info.value)
    assert _recipe(path) in str(info.value)


def test_more_epochs_of_a_finished_cosine_run_warn_with_a_way_a_resume_takes(tmp_path):
    """A finished 10-step cosine run resumed with epochs=20 runs 10 steps at lr 0; the warning said
    'give the schedule the run's length (total_steps=20...)', which the resume then refuses (the
    schedule is the run's): the fix it names on a resume is a new run from the parameters."""
    path = tmp_path / "run.npz"
    cosine = zo.cosine_schedule(0.05, total_steps=10)
    zo.train(loss, np.zeros(5), epochs=10, schedule=cosine, checkpoint=path, **SETTINGS)
    with pytest.warns(UserWarning, match="the schedule is 0 from step 10 on") as warned:
        longer = zo.train(loss, np.zeros(5), epochs=20, schedule=cosine, checkpoint=path, resume=True, **SETTINGS)
    text = str(warned[0].message)
    assert longer.steps == 20 and "total_steps=20" not in text and _recipe(path) in text
    # the advice given before: refused, as a schedule of another length is another run
    with pytest.raises(zo.CheckpointError, match="total_steps=20"):
        zo.train(loss, np.zeros(5), epochs=20, schedule=zo.cosine_schedule(0.05, total_steps=20), resume=path,
                 **SETTINGS)
    # a fresh run of that length is still told to fit the schedule to it
    with pytest.warns(UserWarning, match=r"give the schedule the run's length \(total_steps=20"):
        zo.train(loss, np.zeros(5), epochs=20, schedule=cosine, **SETTINGS)


def test_what_a_resume_may_change_leaves_the_uninterrupted_run(tmp_path):
    """More epochs, a larger budget, another cadence, progress, executor, evaluation, callbacks and
    checkpoint file (a copy moved to another machine): none is the run's identity, and the run
    they resume is bit for bit the uninterrupted one."""
    whole = zo.train(loss, np.zeros(5), epochs=8, **SETTINGS)
    path = tmp_path / "run.npz"
    first = zo.train(loss, np.zeros(5), epochs=3, checkpoint=path, max_queries=10, **SETTINGS)
    assert first.stopped and first.steps < 3  # stopped by its budget
    moved = tmp_path / "elsewhere" / "moved.npz"
    moved.parent.mkdir()
    moved.write_bytes(path.read_bytes())
    seen = []
    with ThreadPool(2) as executor:
        resumed = zo.train(loss, np.ones(5), epochs=8, checkpoint=moved, resume=True, max_queries=10**6,
                           checkpoint_every=2, executor=executor, eval_fn=loss, callbacks=[lambda *a: seen.append(a[0])],
                           **{**SETTINGS, "progress": False, "rng": None})
    assert resumed.steps == 8 and seen and resumed.nfev == whole.nfev
    assert np.array_equal(resumed.params, whole.params)
    assert [r["loss"] for r in resumed.history.steps] == [r["loss"] for r in whole.history.steps]
