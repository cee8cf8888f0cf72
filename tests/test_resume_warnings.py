"""A one-off warning a run gave before it was interrupted is not given again after its resume.

Each resumed process gave the run's one-off warnings again (the run-end warning, an epoch of
estimates all 0, blocks whose estimates stay 0, params that do not move, a coarse loss, a callback's
return value): a run on a preemptible machine resumed 20 times said each 20 times. The checkpoint
keeps the warnings given, in a member of its own (zoracle 0.2.0 refuses a header field it does not
know and reads past a member it does not). A warning about something new after the resume is given.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import zoracle as zo
import zoracle._estimators as est_module


def segments(path, make, budgets, **kw):
    """``zo.train(**make(), checkpoint=path)`` stopped at each of ``budgets`` (queries; None: the run's end)
    and resumed after each stop: the messages of the warnings each process gave, as a list per process."""
    said = []
    for i, budget in enumerate(budgets):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            zo.train(**make(), checkpoint=path, resume=True if i else None, max_queries=budget, rng=0,
                     progress=False, **kw)
        said.append([str(w.message) for w in got])
    return said


def having(said, text):
    """How many warnings of each process hold ``text``."""
    return [sum(text in m for m in ms) for ms in said]


def quad(x):
    return float(np.sum(x ** 2))


def test_the_run_end_warning_is_given_once_and_first_where_the_run_first_ends_far_above(tmp_path):
    # sgd(1.1) on x**2 multiplies x by -1.2 a step: the loss grows 1.44 times a step, finite. 3 queries a
    # step: 5 steps (too few to compare: no warning), 15 (far above: the warning), then the run's 30
    def make():
        return dict(oracle=quad, params=np.ones(2), epochs=30, optimizer=zo.sgd(1.1))

    said = segments(tmp_path / "run.npz", make, [15, 45, 60, None])
    assert having(said, "the run ended far above where it started") == [0, 1, 0, 0], said


def test_an_epoch_of_estimates_all_zero_is_said_once_over_the_resumes(tmp_path):
    def make():
        return dict(oracle=lambda x: 1.0, params=np.ones(2), epochs=10, optimizer=zo.sgd(0.1))

    said = segments(tmp_path / "run.npz", make, [9, 18, None])  # 3 queries a step, a step an epoch
    assert having(said, "was 0 to within the loss's rounding, so the estimates moved no parameter") == [1, 0, 0], said


class _Dying:
    """Blocks: the first the loss ignores (dead from the start); the second, max(0, x)**2 from x = 1,
    dies at the first step (sgd(0.75) throws x to -0.5, where no query of +mu reaches 0); the third trains."""

    blocks = [slice(0, 2), slice(2, 3), slice(3, 4)]

    def __call__(self, p):
        return float(max(0.0, p[2]) ** 2 + (p[3] - 5.0) ** 2)


def test_a_dead_block_named_before_the_resume_is_not_named_again_but_a_block_dead_since_is(tmp_path):
    def make():
        return dict(oracle=_Dying(), params=np.array([0.0, 0.0, 1.0, 0.0]), epochs=8, optimizer=zo.sgd(0.75))

    said = segments(tmp_path / "run.npz", make, [15, None])  # 5 queries a step: 3 steps, then 5 more
    dead = [[m for m in ms if "were 0 to within the loss's rounding at each of the first" in m] for ms in said]
    assert [len(d) for d in dead] == [1, 1], said
    assert "params[0:2] were" in dead[0][0] and "params[2:3]" not in dead[0][0]
    assert "params[2:3] were" in dead[1][0] and "params[0:2]" not in dead[1][0]  # the new one only


def test_params_that_never_move_are_said_once_over_the_resumes(tmp_path):
    # lr 1e-20 times a gradient of about 1 rounds away at params of 0.5 (float64 spacing 1.1e-16)
    def make():
        return dict(oracle=lambda x: float(np.sum((x - 1) ** 2)), params=np.full(3, 0.5), epochs=12,
                    optimizer=zo.sgd(1e-20))

    said = segments(tmp_path / "run.npz", make, [20, 40, None])  # 4 queries a step: 5, 10, 12 steps
    assert having(said, "the params did not change over") == [1, 0, 0], said


def test_a_coarse_loss_is_said_once_over_resumes_in_new_processes(tmp_path, monkeypatch):
    """The coarse-loss warning is given once per oracle in a process; a resume in a new process (its
    record of oracles warned of empty, as the monkeypatch makes it) gave it again."""
    def make():
        monkeypatch.setattr(est_module, "_COARSE_WARNED", set())  # a new process
        return dict(oracle=lambda x: np.float32(np.sum((x - 1) ** 2)), params=np.zeros(3), epochs=12,
                    optimizer=zo.sgd(0.1), estimator=zo.CGE(mu=1e-6))

    said = segments(tmp_path / "run.npz", make, [20, 40, None])
    assert having(said, "the oracle returns float32 losses") == [1, 0, 0], said


def test_a_callbacks_return_value_is_said_once_and_another_callbacks_after_the_resume(tmp_path):
    def always(event, record, params):
        return 0

    def later(event, record, params):
        return "go on" if record.get("step", 0) >= 4 else None

    def make():
        return dict(oracle=quad, params=np.ones(2), epochs=10, optimizer=zo.sgd(0.1), callbacks=[always, later])

    said = segments(tmp_path / "run.npz", make, [9, 18, None])  # 3 queries a step: 3, 6, 10 steps
    assert having(said, "callback 'always' returned 0") == [1, 0, 0], said
    assert having(said, "callback 'later' returned 'go on'") == [0, 1, 0], said


#: the header fields zoracle 0.2.0 (commit 101de84) knows; it refuses a checkpoint with another as edited
HEADER_0_2_0 = {"format", "version", "zoracle_version", "config", "root", "step", "epoch", "pos", "nfev", "opt_count",
                "history", "fingerprints", "modes", "fast_paths"}


def _flat(x):
    return 1.0


def _flat_run(path, **kw):
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        zo.train(_flat, np.ones(2), epochs=10, optimizer=zo.sgd(0.1), rng=0, progress=False, checkpoint=path, **kw)
    return [str(w.message) for w in got if "was 0 to within the loss's rounding" in str(w.message)]


def test_the_record_is_a_member_a_0_2_0_reader_passes_and_a_0_2_0_checkpoint_resumes_as_before(tmp_path):
    path = tmp_path / "run.npz"
    assert len(_flat_run(path, max_queries=9)) == 1
    arrays, meta = zo.load_checkpoint(path)
    assert set(meta) <= HEADER_0_2_0  # (no new header field: 0.2.0 would refuse the file as edited)
    assert arrays["warned"].dtype == np.uint8 and json.loads(arrays["warned"].tobytes()) == ["flat"]
    # the file as zoracle 0.2.0 writes it (no record): resumed as before, the warning given again (no
    # record says it was)
    with np.load(path) as z:
        old = {k: z[k] for k in z.files if k != "warned"}
    with open(path, "wb") as f:
        np.savez(f, **old)
    assert len(_flat_run(path, resume=True)) == 1
    assert zo.train(_flat, np.ones(2), epochs=10, optimizer=zo.sgd(0.1), rng=0, progress=False, checkpoint=path,
                    resume=True).steps == 10


@pytest.mark.parametrize("text", [b"{}", b'["flat", 3]', b"\xff"])
def test_a_damaged_record_is_refused_naming_it(tmp_path, text):
    path = tmp_path / "run.npz"
    _flat_run(path, max_queries=9)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["warned"] = np.frombuffer(text, dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(zo.CheckpointError, match="array 'warned' is not a JSON list of texts"):
        _flat_run(path, resume=True)
