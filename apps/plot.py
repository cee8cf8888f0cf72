"""``zoracle plot``: draw a training run from its checkpoint, while it runs or after.

``zo.train(..., checkpoint="run.npz")`` saves the run's history with every checkpoint,
atomically, so the figure of :meth:`zoracle.History.plot` can be drawn from the file at any
time::

    zoracle plot run.npz                      # run.png beside it: loss and eval metrics against the queries
    zoracle plot run.npz run.png              # the same, to the file named (or: -o run.png)
    zoracle plot run.npz run.svg --x step     # against the steps
    zoracle plot run.npz run.pdf --x seconds  # against the seconds its records count
"""

from __future__ import annotations

import argparse
import os

HELP = "draw a training run (loss and eval metrics) from its checkpoint, while it runs or after"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint written by zo.train(checkpoint=...)")
    parser.add_argument("figure", nargs="?", default=None,
                        help="the file to write; the format follows the suffix (.png, .pdf, .svg, ...); default: "
                             "the checkpoint's path with .png for its suffix (run.npz: run.png), written over")
    parser.add_argument("-o", "--output", metavar="FIGURE", default=None,
                        help="the file to write, the same as FIGURE (give one or the other)")
    parser.add_argument("--x", choices=("queries", "step", "seconds"), default="queries",
                        help="horizontal axis: the run's queries, ZO-GraSP's included (default), its steps, or the "
                             "seconds its records count")
    parser.add_argument("--title", default=None, help="a title over the panels (default: the checkpoint's path)")


def check(args) -> None:
    """The arguments that need no reading, refused before any work (exit 2, as for argparse's errors;
    a missing checkpoint and a figure suffix matplotlib cannot write were refused by main: exit 1)."""
    import zoracle as zo

    from zoracle._checkpoint import as_path
    from zoracle._plot import _format

    checkpoint = as_path(args.checkpoint, "CHECKPOINT")
    output = getattr(args, "output", None)  # (a Namespace built by hand, as main's callers do, may lack it)
    if output is not None:  # -o run.png: was "unrecognized arguments: -o"
        if args.figure is not None and (os.path.abspath(as_path(args.figure, "FIGURE"))
                                        != os.path.abspath(as_path(output, "-o"))):
            raise zo.ArgumentError(f"FIGURE {args.figure!r} and -o {output!r} name two files; give the figure "
                                   "once, as FIGURE or with -o")
        args.figure = output
    if args.figure is None:  # `zoracle plot run.npz` (as the docs write it) was a usage error asking for FIGURE
        args.figure = default_figure(args.checkpoint)
    figure = as_path(args.figure, "FIGURE", example="run.png")  # "~" expanded
    if not os.path.isfile(checkpoint):
        raise zo.ArgumentError(f"checkpoint {args.checkpoint!r} does not exist or is not a file; pass the file that "
                               "zo.train(checkpoint=...) writes")
    if os.path.exists(figure) and os.path.samefile(figure, checkpoint):
        raise zo.ArgumentError(f"FIGURE {args.figure!r} is the checkpoint: the figure would replace it; give the "
                               "figure its own path (e.g. run.png)")
    if not os.path.isdir(figure):  # (a folder: check_plot_path names the file to give)
        _format(figure, "FIGURE")


def default_figure(checkpoint: str) -> str:
    """The figure ``zoracle plot CHECKPOINT`` writes: beside the checkpoint, its suffix replaced by .png
    (``run.npz``: ``run.png``; a checkpoint named ``run.png``: ``run.png.png``, never the checkpoint)."""
    stem, suffix = os.path.splitext(checkpoint)
    return checkpoint + ".png" if suffix.lower() == ".png" else stem + ".png"


def main(args) -> int:
    import zoracle as zo

    check(args)
    from zoracle._plot import check_plot_path

    # the checkpoint read first: a refused one leaves no folder the figure's check made
    history = zo.History.from_checkpoint(args.checkpoint)
    if not history.steps:  # refused before the figure's folders are made
        raise zo.ArgumentError(f"the checkpoint {args.checkpoint!r} holds no steps to plot (a run of epochs=0): "
                               "train for at least one step")
    check_plot_path(args.figure, "FIGURE")  # named as the command line names it
    # the default title is the path, drawn as written: its '$' escaped (two of them were TeX to matplotlib)
    title = args.checkpoint.replace("$", r"\$") if args.title is None else args.title
    try:
        history.plot(args.figure, x=args.x, title=title)
    except OSError as exc:  # checked writable above; a disk that fills while the figure is written
        raise zo.ZoracleError(f"FIGURE {args.figure!r} could not be written ({type(exc).__name__}: "
                              f"{exc.strerror or exc}); free space or choose another folder") from None
    last = history.steps[-1]  # plot refused a history without steps
    done = f"{len(history.steps)} steps, {len(history.epochs)} epochs"
    if "total_nfev" in last:  # absent in checkpoints written before steps carried it
        done += f", {last['total_nfev']:,} queries"
    print(f"{args.figure}: {done}")
    return 0
