"""The ``zoracle`` command line.

Each subcommand lives in its own module under :mod:`zoracle.apps` and is imported only when
it runs, so ``zoracle --help`` needs nothing beyond the core. A command module defines
``HELP`` (one line), ``add_arguments(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ._errors import ZoracleError

#: subcommand -> (module under zoracle.apps, extra that provides its dependencies, one-line help)
COMMANDS = {
    "demo": ("demo", "apps", "train a small CNN on scikit-learn digits with DeepZero vs first-order vs RGE"),
    "bench": ("bench", "apps", "run the CGE speed benchmark (reference vs naive vs batched vs feature reuse vs FLOP limit)"),
    "defense": ("defense", "apps", "train a denoiser in front of a black-box ONNX classifier; certify it"),
    "sol": ("sol", "phiflow,apps", "solver-in-the-loop correction of a coarse PhiFlow wake-flow solver (ZO-SOL)"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump, exit code 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zoracle", description="Train and tune models through black boxes (DeepZero).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('zoracle').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (_, _, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_command=name)
    return parser


def _load(name: str):
    module, extra, _ = COMMANDS[name]
    try:
        return importlib.import_module(f"zoracle.apps.{module}")
    except ImportError as exc:
        raise SystemExit(
            f"zoracle {name}: missing dependency ({exc}); install it with: pip install 'zoracle[{extra}]'"
        ) from None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # the subcommand's own arguments come from its module, loaded only for that command
    if argv and argv[0] in COMMANDS:
        mod = _load(argv[0])
        sub = _Parser(prog=f"zoracle {argv[0]}", description=COMMANDS[argv[0]][2])
        mod.add_arguments(sub)
        args = sub.parse_args(argv[1:])
        try:
            return int(mod.main(args) or 0)
        except ZoracleError as exc:
            print(f"zoracle {argv[0]}: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"zoracle {argv[0]}: interrupted", file=sys.stderr)
            return 130
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
