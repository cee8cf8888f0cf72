"""A warning about something that recurs every epoch is said once per run, not once per epoch:
under Python's default filters a message whose text names the epoch is not folded by `warnings`."""

import warnings

import numpy as np

import zoracle as zo


class _Seeded:
    def __call__(self, x):
        return float(np.sum((x - 1.0) ** 2))

    def bind(self, b):
        return lambda x: float(np.sum((x - b) ** 2))


def test_short_epochs_are_warned_about_once_per_run_not_every_epoch():
    """A batches callable that gives fewer batches than steps_per_epoch from epoch 1 on: a
    1000-epoch run says so once, not 999 times."""
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("default")
        result = zo.train(_Seeded(), np.zeros(3), batches=lambda e: [1.0, 2.0] if e == 0 else [1.0], steps_per_epoch=2,
                          epochs=1000, estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.01), progress=False, rng=0)
    short = [w for w in got if "fewer than `steps_per_epoch`" in str(w.message)]
    assert len(short) == 1, len(short)
    assert len(result.history.steps) == 2 + 999  # every short epoch still ran its one step
