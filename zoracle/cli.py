"""The ``zoracle`` command line.

Each subcommand lives in its own module under :mod:`zoracle.apps` and is imported only when
it runs, so ``zoracle --help`` needs nothing beyond the core. A command module defines
``HELP`` (one line), ``add_arguments(parser)`` and ``main(args) -> int``, and optionally
``check(args)``, which refuses bad flag values before any work with :class:`~zoracle.ArgumentError`:
a usage error, exit code 2 as for argparse's own (a run that fails later exits 1).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import os
import re
import sys
import tempfile

from ._errors import ZoracleError, escaping, to_stderr

#: how a user installs an extra: zoracle is not on PyPI, so always from the clone
INSTALL = 'pip install -e ".[{extra}]"  (from the zoracle clone)'

#: subcommand -> (module under zoracle.apps, extra that provides its dependencies, one-line help)
COMMANDS = {
    "demo": ("demo", "apps", "train a small CNN on scikit-learn digits with DeepZero vs first-order vs RGE"),
    "bench": ("bench", "apps", "run the CGE speed benchmark (reference vs naive vs batched vs feature reuse vs FLOP limit)"),
    "defense": ("defense", "apps", "train a denoiser in front of a black-box ONNX classifier; certify it"),
    "sol": ("sol", "phiflow,apps", "solver-in-the-loop correction of a coarse PhiFlow wake-flow solver (ZO-SOL)"),
    "plot": ("plot", "apps", "draw a training run (loss and eval metrics) from its checkpoint, while it runs or after"),
}


#: subcommand -> the top-level modules it cannot start without (checked before anything runs)
REQUIRES = {
    "demo": ("torch", "sklearn"),
    "bench": ("torch",),
    "defense": ("torch", "sklearn", "onnx", "onnxruntime"),
    "sol": ("phi", "torch"),
    "plot": ("matplotlib",),
}

#: argument -> kind of output path the commands write (checked before the first query)
OUTPUTS = {"plot": "file", "out": "dir", "cache": "dir"}

#: argument -> the environment variable that is its default (checked as the argument is)
ENV_DEFAULTS = {"cache": "ZORACLE_CACHE"}

#: argument -> its default path when neither the flag nor its environment variable is set
#: (``adapters.phiflow.default_cache_dir``'s), checked as the argument is
PATH_DEFAULTS = {"cache": os.path.join("~", ".cache", "zoracle")}

#: (subcommand, argument) -> the module its output needs (checked before the first query), and
#: the flag that turns that output off
OUTPUT_REQUIRES = {("defense", "out"): ("matplotlib", None), ("sol", "out"): ("matplotlib", "no_plot")}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump, exit code 2
        self._print_message(f"{self.prog}: error: {_plain(message)}\n", sys.stderr)
        # with no chain: raised while argparse's own error or a command's check is handled, main() called in a
        # notebook cell showed IPython's AttributeError ('tuple' object has no attribute 'tb_frame') from
        # its display of the SystemExit's chain, not "SystemExit: 2"
        raise SystemExit(2) from None


def _plain(message: str) -> str:
    """argparse's "invalid float value: '0,5'" in the words of the commands' own number types, with
    the fix where the value is a decimal comma (a German or Turkish locale's way to write 0.5)."""
    found = re.fullmatch(r"(argument [^:]+: )invalid (int|float) value: (.*)", message, re.S)
    if found is None:
        return message
    head, kind, shown = found.groups()
    text = f"{head}expected {'an integer' if kind == 'int' else 'a number'}, got {shown}"
    if kind == "int":
        return text
    try:
        value = ast.literal_eval(shown)
        fixed = value.strip().replace(",", ".")
        float(fixed)
    except (ValueError, SyntaxError, AttributeError):
        return text
    if "," in value:
        text += f" (write a decimal point, whatever the locale: {fixed})"
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zoracle", description="Train and tune models through black boxes (DeepZero).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('zoracle').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (_, _, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_command=name)
    return parser


def _missing(name: str, what: str, prog: str | None = None) -> SystemExit:
    extra = COMMANDS[name][1]
    plural = "s" if "," in extra else ""
    return SystemExit(f"{prog or 'zoracle ' + name}: needs the '{extra}' extra{plural} ({what}); install it with: "
                      + INSTALL.format(extra=extra))


def _load(name: str, prog: str | None = None, help_only: bool = False):
    """The subcommand's module; ``help_only``: for ``--help``, which needs none of its extras."""
    for top in () if help_only else REQUIRES.get(name, ()):
        if importlib.util.find_spec(top) is None:
            raise _missing(name, f"No module named {top!r}", prog)
    try:
        return importlib.import_module(f"zoracle.apps.{COMMANDS[name][0]}")
    except ImportError as exc:
        raise _missing(name, str(exc), prog) from None


def _makedirs(where: str, made: list) -> None:
    """``os.makedirs(where)``, noting in ``made`` the folders it created (outermost first)."""
    new, up = [], where
    while up and not os.path.exists(up):
        new.append(up)
        up = os.path.dirname(up)
    os.makedirs(where, exist_ok=True)
    made.extend(reversed(new))


def _remove_empty(made: list) -> None:
    """Remove the folders a command's output checks created, innermost first, where still empty
    (a command refused after its checks left them behind)."""
    for folder in reversed(made):
        try:
            os.rmdir(folder)
        except OSError:
            pass


def _writable(path: str, kind: str, made: list | None = None) -> str | None:
    """None when ``path`` can be written as a ``kind`` ("file" or "dir"), else why not; the
    folders made for it are noted in ``made``."""
    made = [] if made is None else made
    if not path:  # "" (an unset $OUT): a run would write nowhere, or fail after its work
        return f"it is empty; give a {'folder' if kind == 'dir' else 'file'} name"
    # as the saves resolve it (checkpoints, figures): through symlinks, and ".." after the folders
    # it would make ("a/b/../../c" is ./c; abspath's is the same only where no symlink precedes "..")
    target = os.path.realpath(os.path.expanduser(path))
    try:
        if kind == "dir":
            if os.path.exists(target) and not os.path.isdir(target):
                return "it exists and is not a directory"
            _makedirs(target, made)
            where = target
        else:
            if os.path.isdir(target):
                return "it is a directory; give a file name"
            if os.path.exists(target) and not os.path.isfile(target):
                return "it exists and is not a regular file (a device, pipe or socket)"
            where = os.path.dirname(target)
            if os.path.exists(where) and not os.path.isdir(where):
                return f"{where} exists and is not a directory"
            _makedirs(where, made)  # as train(plot=), result.plot and `zoracle plot` do
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _as_checked(args, attr: str, kind: str) -> None:
    """Set ``args.<attr>`` to the path that was checked where the system would not find its folder as
    written: "a/b/../../c/x.png" through folders that do not exist (or "f/../c", ``f`` a file) was
    checked, and its folder made, at ./c; the command's own save, after the run, opened it as written."""
    value = getattr(args, attr)
    folder = value if kind == "dir" else (os.path.dirname(value) or os.curdir)
    if not os.path.isdir(folder):
        setattr(args, attr, os.path.realpath(value))


def threads(text: str) -> int:
    """argparse type of ``--threads``: 1 to 8 per core (thousands of threads stall torch's and
    onnxruntime's pools for minutes)."""
    most = 8 * (os.cpu_count() or 1)
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= n <= most:
        raise argparse.ArgumentTypeError(f"must be in [1, {most}] (8 per core), got {n}")
    return n


def _usage_error(line: str) -> SystemExit:
    """``line`` on stderr, and the exit of a usage error: code 2, as argparse's own."""
    to_stderr(line)
    return SystemExit(2)


def check_outputs(name: str, args, prog: str | None = None) -> list:
    """Every output path of a command is writable, checked before any work (one-line error);
    returns the folders made for them (removed again if the command is refused)."""
    made: list = []
    for attr, kind in OUTPUTS.items():
        value = getattr(args, attr, None)
        flag = "--" + attr.replace("_", "-")
        fix = ""
        if value is None and hasattr(args, attr) and os.environ.get(ENV_DEFAULTS.get(attr, "")):
            # the flag's default: named as the user set it (not as the API's keyword, after the imports)
            value, fix = os.environ[ENV_DEFAULTS[attr]], f"; set it to a writable folder or pass {flag} DIR"
            flag = "$" + ENV_DEFAULTS[attr]
        elif value is None and hasattr(args, attr) and attr in PATH_DEFAULTS:
            # neither set: the home's default, named with both ways to change it (not `cache_dir`, later)
            value = os.path.expanduser(PATH_DEFAULTS[attr])
            fix = f"; pass {flag} DIR or set ${ENV_DEFAULTS[attr]}" if attr in ENV_DEFAULTS else f"; pass {flag} DIR"
            flag = f"{flag} (default)"
        if value is None:
            continue
        why = _writable(str(value), kind, made)
        if why is not None:
            _remove_empty(made)
            raise _usage_error(f"{prog or 'zoracle ' + name}: error: {flag} {value or repr(value)}: cannot write there "
                               f"({why}){fix}")
        if not fix:
            _as_checked(args, attr, kind)
    for (cmd, attr), (module, off) in OUTPUT_REQUIRES.items():
        if cmd == name and getattr(args, attr, None) is not None and not (off and getattr(args, off, False)) \
                and importlib.util.find_spec(module) is None:
            _remove_empty(made)
            raise _missing(name, f"--{attr} writes a figure, which needs {module}", prog)
    if getattr(args, "plot", None) is not None:
        if importlib.util.find_spec("matplotlib") is None:
            _remove_empty(made)
            raise _missing(name, "--plot needs matplotlib", prog)
        from ._plot import _format

        try:  # a format matplotlib cannot write fails now, not after the run
            _format(str(args.plot), "--plot")
        except ZoracleError as exc:
            _remove_empty(made)
            raise _usage_error(f"{prog or 'zoracle ' + name}: error: {exc}") from None
    return made


@contextlib.contextmanager
def _torch_rng_kept():
    """torch's random streams as the calling program left them: a command seeds torch for its own
    runs (``--seed``), which reseeded the caller's generator when ``main`` runs inside a program."""
    torch = sys.modules.get("torch")  # (not imported yet: the caller has no stream of its own)
    if torch is None:
        yield
        return
    cuda = getattr(torch, "cuda", None)  # GPUs' generators too where CUDA is up (not started for this)
    devices = list(range(cuda.device_count())) if cuda is not None and cuda.is_initialized() else []
    with torch.random.fork_rng(devices):
        yield


def main(argv=None, prog: str | None = None) -> int:
    """Run ``zoracle COMMAND ...``; ``prog`` names the program in usage and error lines (the
    examples that wrap a command pass their own name)."""
    with escaping(sys.stdout, sys.stderr):  # a path under PYTHONIOENCODING=ascii or on a latin-1 terminal
        return _main(argv, prog)  # crashed `zoracle plot` after its figure was written


def _main(argv, prog: str | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # the subcommand's own arguments come from its module, loaded only for that command
    if argv and argv[0] in COMMANDS:
        name = prog or f"zoracle {argv[0]}"
        try:  # Ctrl-C while the command loads and checks its flags (matplotlib's import for --plot: a second)
            mod = _load(argv[0], prog, help_only=bool({"-h", "--help"} & set(argv[1:])))
            sub = _Parser(prog=name, description=COMMANDS[argv[0]][2])
            mod.add_arguments(sub)
            args = sub.parse_args(argv[1:])
            for attr in OUTPUTS:  # a shell leaves "~" in a quoted or "--out=~/x" path: it means the home folder
                if isinstance(getattr(args, attr, None), str):
                    setattr(args, attr, os.path.expanduser(getattr(args, attr)))
            made = check_outputs(argv[0], args, name)  # (first: a command's check may load its libraries, seconds)
            if hasattr(mod, "check"):  # a flag's value out of range: a usage error, exit 2 as argparse's type errors
                try:
                    mod.check(args)
                except ZoracleError as exc:
                    _remove_empty(made)
                    sub.error(str(exc))
                except KeyboardInterrupt:
                    _remove_empty(made)
                    raise
        except KeyboardInterrupt:
            to_stderr(f"{name}: interrupted")
            return 130
        rc = 1
        try:
            with _torch_rng_kept():
                rc = int(mod.main(args) or 0)
            return rc
        except ModuleNotFoundError as exc:  # a dependency imported late (e.g. matplotlib for --plot)
            to_stderr(str(_missing(argv[0], str(exc), prog)))
            return 1
        except ZoracleError as exc:
            text = str(exc)
            if getattr(exc, "timeout", None) is not None and getattr(args, "timeout", None) is not None:
                # a shard timeout set on the command line: name the flag, not the API's argument
                text = text.replace("a larger `timeout`", "a larger --shard-timeout").replace(
                    "a `timeout` above", "a --shard-timeout above")
            to_stderr(f"{name}: error: {text}")
            return 1
        except KeyboardInterrupt:
            to_stderr(f"{name}: interrupted")
            return 130
        finally:
            if rc != 0:  # refused (or failed): the folders made for its outputs go where still empty
                _remove_empty(made)
    args = parser.parse_args(argv)
    if args.command is None:  # no command is a usage error (exit 2, as argparse's own), the help on stderr
        parser.print_help(sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
