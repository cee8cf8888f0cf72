"""Write the old-release checkpoints tests/test_upgrade_checkpoints.py resumes.

Run with an older zoracle first on the path, from a checkout of the commit a file's name
starts with: f48a224 (zoracle 0.1.0 of 2026-11-30: before RGE took ``shaping`` (faf2020) and
before step records carried ``total_nfev`` (a395371)) wrote ``rge`` and ``grasp``; e3ee374
(2026-12-03: before recipes.short_budget's default lr fell from 0.1 to 0.03 at this size,
5823cd1) wrote ``recipe``:

    git worktree add /tmp/zoracle-f48a224 f48a224
    cd /tmp/zoracle-f48a224
    PYTHONPATH=$PWD python /path/to/tests/data/make_old_checkpoints.py /path/to/tests/data rge grasp

(and e3ee374's ``recipe`` the same way, with ``recipe`` for ``rge grasp``.)

Each run is the first 2 epochs of the 4 (the recipe's: of its 29) the test trains; the
settings (and the losses) are the test's, and must stay the same in both files. Only APIs
those releases had are used.
"""

import os
import subprocess
import sys

import numpy as np
import zoracle as zo

D = 6
TARGET = np.linspace(-1.0, 1.0, D)


def loss(x):
    return float(np.sum((x - TARGET) ** 2) + 0.1 * np.sum(x ** 4))


RUNS = {  # name -> train's keyword arguments (besides the oracle, params and epochs)
    "rge": dict(estimator=zo.RGE(mu=5e-3, directions=2), optimizer=zo.sgd(0.05, momentum=0.9), steps_per_epoch=2,
                rng=1),
    "grasp": dict(estimator=zo.CGE(), optimizer=zo.sgd(0.05), sparsity=0.5, blocks=[slice(0, 3), slice(3, 6)],
                  grasp_directions=4, steps_per_epoch=2, rng=4),
}
PARAMS = np.linspace(0.2, 0.7, D)
RECIPE_PARAMS = np.full(120, 0.3)


def recipe_loss(x):
    return float(np.sum((x - 1.0) ** 2))


def recipe(**kw):
    """The recipe run's train arguments, as short_budget makes them (``kw``: its own arguments)."""
    return zo.recipes.short_budget(recipe_loss, RECIPE_PARAMS, 1500, **kw)


def main(out, names):
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(zo.__file__)).stdout.strip()
    for name in names:
        path = os.path.join(out, f"{commit}_{name}.npz")
        if os.path.exists(path):
            os.remove(path)
        if name == "recipe":
            zo.train(recipe_loss, RECIPE_PARAMS, **dict(recipe(), epochs=2), checkpoint=path, rng=0, progress=False)
        else:
            zo.train(loss, PARAMS, epochs=2, checkpoint=path, progress=False, **RUNS[name])
        print(path, os.path.getsize(path), "bytes, zoracle", zo.__version__)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
