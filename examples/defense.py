"""Certified black-box defense: a denoiser trained with DeepZero in front of an ONNX classifier.

A thin wrapper around ``zoracle defense`` (see docs/defense.md). Examples::

    python examples/defense.py --quick              # 20-90 s on 2 cores (quiet to loaded): Markdown table
    python examples/defense.py --out results/defense  # the run in docs/defense.md: table, plot, JSON

Every flag of ``zoracle defense --help`` works here too.
"""

import sys

from zoracle.cli import main

if __name__ == "__main__":
    sys.exit(main(["defense", *sys.argv[1:]], prog="python examples/defense.py"))
