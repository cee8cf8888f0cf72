"""CGE speed benchmark: reference vs in-place naive vs batched vs feature reuse vs FLOP limit.

Usage::

    python benchmarks/cge_speed.py            # mlp, cnn, resnet18, mobilenet_v3_small, deepzero, fallback
    python benchmarks/cge_speed.py --quick    # about 1-2 minutes on 2 cores
    python benchmarks/cge_speed.py --json     # {"mlp": {...}, "cnn": {...}, ...}
    python benchmarks/cge_speed.py --device cuda --model resnet20

Same as ``zoracle bench``; see :mod:`zoracle.apps.bench` for the columns. The exit code is 1
when the benchmark's own gradient check fails.
"""

import sys

from zoracle.cli import main

if __name__ == "__main__":  # `zoracle bench` itself: a bad flag value is a one-line usage error (exit 2)
    sys.exit(main(["bench", *sys.argv[1:]], prog="cge_speed.py"))
