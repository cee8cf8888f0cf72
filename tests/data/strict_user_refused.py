"""Calls ``mypy --strict`` must refuse (tests/test_packaging.py): each line marked ``refused``
must have an error, and no other line may. Type-checked only, never run."""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

import zoracle as zo


def loss(params: npt.NDArray[np.float64]) -> float:
    return float(np.sum(params ** 2))


p0 = np.zeros(3)
zo.train(loss, p0, maxiter=5)  # refused: SciPy's keyword
zo.train(loss, p0, None)  # refused: a third positional argument
zo.estimate_gradient(loss, p0, None, 1e-3)  # refused: approx_fprime's epsilon
zo.estimate_gradient(loss, p0, epsilon=1e-3)  # refused
zo.train(loss, p0, callbacks=loss)  # refused: one callback, not a list of them
zo.train(loss, p0, checkpoint_every=2.5)  # refused: neither steps, "epoch" nor a time
zo.sgd("0.1")  # refused
zo.train(loss, p0, progress=False, epochs=2, steps_per_epoch=3)
zo.train()  # refused: the function and the point are required (zoracle's refusal only at run time)
zo.train(fun=loss, x0=p0)  # refused: SciPy's names for them
zo.estimate_gradient(f=loss, xk=p0)  # refused: approx_fprime's
zo.train(loss, p0, progress=False)["x"]  # refused: a TrainResult is no dict (its hint only at run time)
