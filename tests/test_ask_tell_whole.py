"""zo.AskTell's features as one: ``max_points`` pieces with ``batches``, ZO-GraSP's scoring asks,
``tell(X, losses)`` and its retries, a lone loss, warnings handed to the caller's line, a resume and
a close() between pieces, each against ``zo.train(f or oracle.bind(batch), ...)`` bit for bit, or a
clear refusal (h433)."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

import zoracle as zo

RNG = np.random.default_rng(0)
ITEMS = RNG.standard_normal((60, 6))
TARGET = ITEMS @ np.array([1.0, -2.0, 0.5, 3.0, 0.0, -1.0])


def f(x: np.ndarray) -> float:
    return float(((x - 3) ** 2).sum() + np.sin(x).sum())


def rate(x: np.ndarray, batch) -> float:
    items, target = batch
    return float(((items @ x - target) ** 2).mean())


class Rater:
    def bind(self, batch):
        return lambda x: rate(x, batch)


def data() -> zo.Minibatches:
    return zo.Minibatches((ITEMS, TARGET), batch_size=20, seed=0)


PLAIN = dict(epochs=4, optimizer=zo.sgd(0.05), progress=False)
DATA = dict(epochs=3, optimizer=zo.sgd(0.05), progress=False)
GRASP = dict(DATA, sparsity=0.5, grasp_directions=4, rng=0)


@pytest.mark.parametrize("settings", [DATA, GRASP], ids=["cge", "zo_grasp"])
def test_pieces_with_batches_are_train_with_a_data_oracle_and_one_batch_a_step(settings):
    """max_points with batches (and ZO-GraSP's scoring asks): every piece of an estimate names its
    batch before and after its ask, the pieces of one estimate the same batch."""
    opt = zo.AskTell(np.zeros(6), batches=data(), max_points=3, **settings)
    sizes, batches = [], []
    while not opt.done:
        before = opt.batch
        X = opt.ask()
        assert opt.batch is before
        sizes.append(len(X))
        batches.append(opt.batch)
        opt.tell([rate(x, opt.batch) for x in X])
    same = zo.train(Rater(), np.zeros(6), batches=data(), **settings)
    assert np.array_equal(opt.result.params, same.params) and opt.result.nfev == same.nfev
    assert max(sizes) == 3 and sum(sizes) == same.nfev
    pieces = 3 if settings is DATA else 2  # (the first estimate: 7 points, 3 + 3 + 1; ZO-GraSP's: 5, 3 + 2)
    assert all(b is batches[0] for b in batches[:pieces]) and batches[pieces] is not batches[0]


def test_pieces_told_with_their_points_and_retried_are_train():
    """tell(X, losses) on each piece, each sent twice (the second at once and from a racing thread):
    the retries change nothing."""
    opt = zo.AskTell(np.zeros(4), max_points=2, **PLAIN)
    while not opt.done:
        X = opt.ask()
        losses = [f(x) for x in X]
        both = [threading.Thread(target=opt.tell, args=(X, losses)) for _ in range(2)]
        for t in both:
            t.start()
        for t in both:
            t.join()
        opt.tell(X, losses)  # (once more, after both returned)
    assert np.array_equal(opt.result.params, zo.train(f, np.zeros(4), **PLAIN).params)


def test_one_point_pieces_take_a_lone_loss_and_nevergrads_form():
    opt = zo.AskTell(np.zeros(4), max_points=1, **PLAIN)
    k = 0
    while not opt.done:
        (x,) = opt.ask()
        [lambda: opt.tell(f(x)), lambda: opt.tell(x, f(x)), lambda: opt.tell(np.float64(f(x)))][k % 3]()
        k += 1
    assert k == 20 and np.array_equal(opt.result.params, zo.train(f, np.zeros(4), **PLAIN).params)


def test_a_retry_after_the_run_ended_is_taken_and_other_losses_say_the_run_ended():
    """The last piece's tell sent again after the run's end is taken as told; other losses for it are
    refused saying the run has ended (it said "ask() for the next points": there are none)."""
    opt = zo.AskTell(np.zeros(4), max_points=2, **PLAIN)
    while not opt.done:
        X = opt.ask()
        losses = [f(x) for x in X]
        opt.tell(X, losses)
    opt.tell(X, losses)
    with pytest.raises(zo.ZoracleError, match=r"row 0 was told .*the run has ended: read \.result") as info:
        opt.tell(X, [v + 1 for v in losses])
    assert "ask() for the next points" not in str(info.value)


def test_a_warning_of_the_run_comes_at_the_tell_of_the_piece_that_ends_its_step():
    def flat(x):
        return 1.0

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        zo.train(flat, np.zeros(4), **PLAIN)
    assert len(seen) == 1
    with warnings.catch_warnings(record=True) as told:
        warnings.simplefilter("always")
        opt = zo.AskTell(np.zeros(4), max_points=2, **PLAIN)
        during = []
        while not opt.done:
            X = opt.ask()
            n = len(told)
            opt.tell([flat(x) for x in X])
            during.append(len(told) - n)
    assert [(w.category, str(w.message).split(":")[0]) for w in told] == [
        (w.category, str(w.message).split(":")[0]) for w in seen]  # (the fix worded for losses told)
    assert told[0].filename == __file__ and during == [0, 0, 1] + [0] * 9  # (the step's last piece, 5 = 2 + 2 + 1)


def test_a_resume_between_pieces_with_batches_is_the_uninterrupted_run(tmp_path):
    path = str(tmp_path / "run.npz")
    opt = zo.AskTell(np.zeros(6), batches=data(), max_points=3, checkpoint=path, **DATA)
    for _ in range(4):  # one step of 3 asks and the first piece of the next
        X = opt.ask()
        opt.tell([rate(x, opt.batch) for x in X])
    opt.ask()  # (the second piece held, never told)
    opt.close()
    opt = zo.AskTell(np.zeros(6), batches=data(), max_points=3, checkpoint=path, resume=True, **DATA)
    while not opt.done:
        X = opt.ask()
        opt.tell([rate(x, opt.batch) for x in X])
    same = zo.train(Rater(), np.zeros(6), batches=data(), **DATA)
    assert np.array_equal(opt.result.params, same.params) and opt.result.steps == same.steps


def test_close_from_another_thread_between_pieces_refuses_the_pieces_tell_and_resumes(tmp_path):
    path = str(tmp_path / "run.npz")
    opt = zo.AskTell(np.zeros(4), max_points=2, checkpoint=path, **PLAIN)
    for _ in range(4):
        X = opt.ask()
        opt.tell([f(x) for x in X])
    X = opt.ask()
    closer = threading.Thread(target=opt.close)
    closer.start()
    closer.join()
    for tell in (lambda: opt.tell([f(x) for x in X]), lambda: opt.tell(X, [f(x) for x in X])):
        with pytest.raises(zo.ZoracleError, match="tell\\(\\) on a closed AskTell"):
            tell()
    opt = zo.AskTell(np.zeros(4), max_points=2, checkpoint=path, resume=True, **PLAIN)
    while not opt.done:
        X = opt.ask()
        opt.tell([f(x) for x in X])
    assert np.array_equal(opt.result.params, zo.train(f, np.zeros(4), **PLAIN).params)


def test_ask_tell_reads_as_three_modules_with_its_public_api_where_it_was():
    """zoracle/_ask_tell.py (698 lines) split by topic: the run's thread and its asks, the told points'
    checks and retry record; AskTell stays zoracle.AskTell, of zoracle._ask_tell."""
    import importlib
    from pathlib import Path

    run, told = (importlib.import_module(f"zoracle._ask_tell_{m}") for m in ("run", "told"))
    moved = {run: ("_Channel", "_AskExecutor", "_Recorder", "_drive", "ASK_WARN_BYTES"),
             told: ("_TellRecord", "_told_points", "_by_row")}
    assert [n for m, names in moved.items() for n in names if not hasattr(m, n)] == []
    assert zo.AskTell.__module__ == "zoracle._ask_tell"
    assert len(Path(zo.AskTell.tell.__code__.co_filename).read_text(encoding="utf-8").splitlines()) < 500
