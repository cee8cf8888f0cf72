"""Solver-in-the-loop correction of a coarse PhiFlow wake-flow solver, trained with ZO (ZO-SOL).

Same as ``zoracle sol``; run ``python examples/sol.py --quick`` for the CI size (about a
minute) or without flags for the default size (about 15 minutes; fine trajectories are
cached under ~/.cache/zoracle). ``--help`` lists the size flags.
"""

import argparse
import sys

from zoracle.apps import sol

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=sol.HELP)
    sol.add_arguments(parser)
    sys.exit(sol.main(parser.parse_args()))
