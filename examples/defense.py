"""Certified black-box defense: a denoiser trained with DeepZero in front of an ONNX classifier.

A thin wrapper around ``zoracle defense`` (see the README section "Certified black-box defense"). Examples::

    python examples/defense.py --quick              # about 20 s: Markdown table on stdout
    python examples/defense.py --out results/defense  # the README run: table, plot, JSON

Every flag of ``zoracle defense --help`` works here too.
"""

import sys

from zoracle.cli import main

if __name__ == "__main__":
    sys.exit(main(["defense", *sys.argv[1:]]))
