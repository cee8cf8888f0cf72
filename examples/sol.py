"""Solver-in-the-loop correction of a coarse PhiFlow wake-flow solver, trained with ZO (ZO-SOL).

Same as ``zoracle sol``: ``python examples/sol.py --quick`` runs the CI size (under a
minute on 2 quiet cores, about 95 s loaded), no flags the default size (about 9 minutes,
535 s measured on 2026-12-04; the fine trajectories are cached under ~/.cache/zoracle).
``--help`` lists the size flags.
"""

import sys

from zoracle import cli

if __name__ == "__main__":
    sys.exit(cli.main(["sol", *sys.argv[1:]], prog="python examples/sol.py"))
