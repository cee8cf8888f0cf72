"""A StopIteration from a user's callable other than a callback (``batches``, ``eval_fn``) is a
clear error naming it, not a bare StopIteration leaving ``train`` (which ends a caller's loop or
generator silently); a setting that has no effect (``eval_every`` without ``eval_fn``) is said."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo


class _Data:
    """An oracle whose batches are offsets."""

    def __call__(self, x):
        return float(np.sum(x ** 2))

    def bind(self, b):
        return lambda x: float(np.sum((x - b) ** 2))


def _train(**kw):
    return zo.train(_Data(), np.ones(3), epochs=3, estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.1), rng=0,
                    progress=False, **kw)


def _runs_out_at(stop):
    def batches(epoch):
        if epoch == stop:
            raise StopIteration  # a next() on a used-up iterator, say
        return [0.5, 1.0]
    return batches


def _generator_runs_out_at(stop):
    def batches(epoch):
        yield 0.5
        if epoch == stop:
            next(iter([]))  # inside a generator: Python turns it into RuntimeError
        yield 1.0
    return batches


@pytest.mark.parametrize("stop", [0, 1])
@pytest.mark.parametrize("make", [_runs_out_at, _generator_runs_out_at])
def test_a_batches_callable_raising_stop_iteration_is_an_error_naming_it(make, stop):
    with pytest.raises(zo.ArgumentError, match=rf"`batches\({stop}\)`.*StopIteration") as info:
        _train(batches=make(stop))
    assert isinstance(info.value.__cause__, (StopIteration, RuntimeError))


def test_train_inside_a_generator_is_not_cut_short_by_a_batches_stop_iteration():
    """Bare, the StopIteration read as the end of a caller's ``map`` or ``for``: the runs after it vanished."""
    def runs():
        for stop in (5, 1, 5):
            yield _train(batches=_runs_out_at(stop))

    with pytest.raises(zo.ArgumentError, match=r"`batches\(1\)`"):
        list(runs())


def test_eval_fn_raising_stop_iteration_is_an_error_naming_it():
    def eval_fn(params):
        raise StopIteration

    with pytest.raises(zo.ArgumentError, match=r"`eval_fn` raised StopIteration at epoch 0.*callback") as info:
        _train(eval_fn=eval_fn)
    assert isinstance(info.value.__cause__, StopIteration)
    # seen through map(), a bare one ended the map early: no error, and no result
    with pytest.raises(zo.ArgumentError):
        list(map(lambda _: _train(eval_fn=eval_fn), range(2)))


def test_a_callbacks_stop_iteration_still_stops_the_run():
    def stop(event, record, params):
        if event == "epoch":
            raise StopIteration

    res = _train(batches=[0.5, 1.0], callbacks=[stop])
    assert res.stopped and len(res.history.epochs) == 1


def test_eval_every_without_eval_fn_is_said():
    with pytest.warns(UserWarning, match=r"`eval_every`=2 has no effect without `eval_fn`"):
        _train(eval_every=2)
    _train(eval_every=2, eval_fn=lambda p: 1.0)  # with eval_fn: nothing said (a warning is an error here)
    _train()  # the default: nothing said
