"""Figures of a training run's :class:`~zoracle.History` (matplotlib, imported only when asked for).

``History.plot`` / ``TrainResult.plot`` draw them; ``train(plot=path)`` writes one at the end
of the run and checks, before the first query, that it can.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from ._checkpoint import _tmp_path, as_path, check_writable, replace_file
from ._errors import ArgumentError
from ._train_records import EPOCH_FIELDS

#: Fields of the history's records that are not ``eval_fn`` metrics.
RECORD_FIELDS = frozenset(EPOCH_FIELDS)
X_AXES = ("queries", "step", "seconds")
PANELS_PER_ROW = 4


def _figure_class(name: str):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ArgumentError(f"`{name}` needs matplotlib; install it with: pip install matplotlib "
                            "(it is in zoracle's 'apps' extra)") from None
    return Figure


_HISTORY_FIGURE = []


def _history_figure():
    """``matplotlib.figure.Figure`` that a notebook shows as an image when it ends a cell: a Figure made
    without pyplot has no display of its own there until pyplot or ``%matplotlib inline`` registers one
    (a fresh kernel showed the text ``<Figure size 420x340 with 1 Axes>``); where one is registered,
    IPython uses that one (found by type), so the figure is still shown once."""
    base = _figure_class("plot")  # (each time: matplotlib gone since, the error naming the fix)
    if not _HISTORY_FIGURE:
        import io

        class HistoryFigure(base):
            def _repr_png_(self):
                buf = io.BytesIO()
                self.savefig(buf, format="png", bbox_inches="tight")
                return buf.getvalue()

            def show(self, warn=True):  # matplotlib's AttributeError said to make it with pyplot.figure()
                if self.canvas.manager is not None:  # (one the program gave to pyplot: its window)
                    return super().show(warn)
                raise AttributeError("the figure of a run is no pyplot figure (zoracle keeps no pyplot state: "
                                     "plt.show() does not show it either); write it to a file with "
                                     "fig.savefig('run.png') or result.plot('run.png'), or end a notebook cell "
                                     "with it to see it there")

        HistoryFigure.__module__, HistoryFigure.__qualname__ = __name__, "HistoryFigure"
        _HISTORY_FIGURE.append(HistoryFigure)
    return _HISTORY_FIGURE[0]


def __getattr__(name):  # (a pickled figure names its class: found without a plot drawn first)
    if name == "HistoryFigure":
        return _history_figure()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _format(path: str, name: str) -> str:
    """The file format of ``path`` (its suffix; PNG without one), refused when matplotlib cannot write it."""
    fmt = os.path.splitext(path)[1][1:].lower() or "png"
    supported = _figure_class(name)().canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ArgumentError(f"`{name}` {path!r}: matplotlib cannot write '.{fmt}' files; use a path ending in one of "
                            + ", ".join(f".{k}" for k in sorted(supported)))
    if fmt == "pgf":  # written through a TeX installation, found only when the figure is saved
        import matplotlib

        tex = matplotlib.rcParams["pgf.texsystem"]
        if shutil.which(tex) is None:
            raise ArgumentError(f"`{name}` {path!r}: matplotlib writes '.pgf' through {tex}, which is not installed; "
                                "use .pdf or .svg, or install TeX")
    return fmt


def save_figure(fig, path: str, dpi: int) -> None:
    """``fig`` written to exactly ``path``, in the format of its suffix (PNG without one:
    ``savefig`` alone would write ``path.png`` there)."""
    fig.savefig(path, format=os.path.splitext(path)[1][1:].lower() or "png", dpi=dpi)


def check_plot_path(path, name: str = "plot") -> tuple[str, str]:
    """Fail now, before any query, when a figure cannot be written to ``path``; returns the path and its format."""
    path = as_path(path, name, example="run.png")  # "~/runs/a.png": the home folder, as for checkpoints
    if os.path.isdir(path):  # refused with a figure's name to use (a directory has no suffix to judge)
        check_writable(path, name, example="run.png")
    fmt = _format(path, name)
    return check_writable(path, name, example="run.png"), fmt


def step_queries(steps: list | tuple, epochs: list | tuple) -> np.ndarray:
    """The run's queries after each step record (ZO-GraSP's included).

    Records written before steps carried ``total_nfev`` (older checkpoints) are filled in from
    the steps' ``nfev``, anchored at the first step or epoch record that has a total (from 0
    when none has).
    """
    nfev = np.array([r["nfev"] for r in steps], dtype=np.float64)
    total = np.array([r.get("total_nfev", np.nan) for r in steps], dtype=np.float64)
    known = np.isfinite(total)
    if known.all():
        return total
    cum = np.cumsum(nfev)
    offset = 0.0
    if known.any():
        i = int(np.flatnonzero(known)[0])
        offset = total[i] - cum[i]
    elif epochs and "total_nfev" in epochs[0]:
        ends = [i for i, r in enumerate(steps) if r["epoch"] == epochs[0]["epoch"]]
        if ends:
            offset = float(epochs[0]["total_nfev"]) - cum[ends[-1]]
    return np.where(known, total, cum + offset)


def record_seconds(steps: list | tuple, epochs: list | tuple) -> tuple[np.ndarray, np.ndarray]:
    """The run's recorded time after each step record and after each epoch record, in seconds.

    The records' ``seconds`` summed: each step's own (its estimate and update), and at each
    epoch's end the time its record counts beyond its steps' (its evaluation). Saves, callbacks
    and ZO-GraSP's scoring are in no record, so the last value is less than the wall time.
    """
    secs = np.array([r.get("seconds", np.nan) for r in steps], dtype=np.float64)
    step_epochs = np.array([r["epoch"] for r in steps])
    after = np.zeros(len(steps))  # each epoch's evaluation, after its last step
    last = {}  # epoch -> the index of its last step record
    for r in epochs:
        mine = np.flatnonzero(step_epochs == r["epoch"])
        if mine.size:  # (an epoch record's seconds are never less than its steps': 0 guards round-off)
            last[r["epoch"]] = int(mine[-1])
            after[mine[-1]] = max(float(r.get("seconds", np.nan)) - secs[mine].sum(), 0.0)
    ends = np.cumsum(secs + after)
    epoch_x = np.array([ends[last[r["epoch"]]] if r["epoch"] in last else np.nan for r in epochs], dtype=np.float64)
    return ends - after, epoch_x


def _axis_values(history, x: str) -> tuple[np.ndarray, np.ndarray, str]:
    """The horizontal positions of the step and epoch records for ``x``, and the axis label."""
    steps, epochs = history.steps, history.epochs
    if x == "queries":
        return (step_queries(steps, epochs),
                np.array([r.get("total_nfev", np.nan) for r in epochs], dtype=np.float64), "queries")
    if x == "seconds":
        return (*record_seconds(steps, epochs), "seconds")
    step_epochs, epoch_ids = history.column("epoch"), history.column("epoch", "epoch")
    return (history.column("step") + 1,
            np.searchsorted(step_epochs, epoch_ids, side="right").astype(np.float64), "steps")


def _epoch_mids(sx: np.ndarray, history) -> list:
    """Each epoch's place at the middle of its steps' places ``sx`` (NaN for an epoch without steps)."""
    step_epochs = history.column("epoch")
    return [sx[step_epochs == e].mean() if e in step_epochs else np.nan for e in history.column("epoch", "epoch")]


def _faded(ax, color, alpha: float) -> tuple:
    """``color`` at ``alpha`` over the axes' background, as an opaque colour: PostScript (.eps, .ps) has no
    transparency (matplotlib logged a warning for each such figure and drew the colour at full strength)."""
    from matplotlib.colors import to_rgb, to_rgba

    # the background seen: the axes' colour over the figure's over white paper (a transparent axes,
    # ``axes.facecolor: none``, has RGB black: the line was blended with black, dark blue)
    back = np.ones(3)
    for face in (ax.figure.get_facecolor(), ax.get_facecolor()):
        rgba = np.array(to_rgba(face))
        back = rgba[3] * rgba[:3] + (1 - rgba[3]) * back
    return tuple(float(v) for v in alpha * np.array(to_rgb(color)) + (1 - alpha) * back)


def _panels(metrics: list, Figure):
    """A figure with a panel for the loss and one for each metric, four to a row."""
    panels = 1 + len(metrics)
    cols = min(panels, PANELS_PER_ROW)
    rows = -(-panels // cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in grid[panels:]:  # the last row's unused places
        fig.delaxes(ax)
    return fig, grid[:panels]


def _metric_line(ax, history, name: str, ex, color=None, label=None) -> None:
    y = history.column(name, "epoch")
    # epochs evaluated (the others, between `eval_every`, are joined over); a NaN or inf an
    # evaluation returned stays in as a gap in the line, not joined over as if not evaluated
    keep = history.recorded(name, "epoch")
    shown = np.where(np.isfinite(y), y, np.nan)[keep]
    ax.plot(ex[keep], shown, marker=".", color=color, label=label)
    if not np.isfinite(shown).all():
        ax.plot(ex[keep][~np.isfinite(shown)], np.full((~np.isfinite(shown)).sum(), np.nanmin(shown)
                if np.isfinite(shown).any() else 0.0), "x", color="C3", label="NaN or inf")
        ax.legend(frameon=False)


def _finish(fig, axes, path, fmt, x: str, label: str, losses: list, metrics: list, title) -> None:
    """Axes labels, scales and grids, the title, and the figure written to ``path`` (when given)."""
    import matplotlib
    from matplotlib.ticker import EngFormatter

    finite = np.concatenate([v[np.isfinite(v)] for v in losses])
    if finite.size and finite.min() > 0 and finite.max() > 10 * finite.min():
        axes[0].set_yscale("log")
    axes[0].set(xlabel=label, ylabel="loss")
    for ax, name in zip(axes[1:], metrics):
        ax.set_xlabel(label)
        ax.set_ylabel(str(name), parse_math=False)  # a metric's name as written: '$' is no TeX there
    for ax in axes:
        ax.grid(color=_faded(ax, matplotlib.rcParams["grid.color"], 0.3))
        if x != "step":  # 150k, not 150000; 2ms, not 0.0020
            ax.xaxis.set_major_formatter(EngFormatter(unit="s" if x == "seconds" else "", sep=""))
    if title:  # a path's undecodable bytes shown as U+FFFD (matplotlib refused the surrogate escape)
        text = str(title)
        try:
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode("utf-8")
        fig.suptitle(text)  # (mathtext as the caller writes it: r"$\mu$ = 1e-3"; `zoracle plot` escapes a path's '$')
    if path is not None:
        target = os.path.realpath(path)  # through a symlink to its target, as checkpoints are written
        tmp = _tmp_path(target)
        try:
            fig.savefig(tmp, format=fmt, dpi=110)
            replace_file(tmp, target)  # a reader never sees half a file
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _check_x(x) -> None:
    if x not in X_AXES:
        raise ArgumentError(f"`x` must be one of {', '.join(map(repr, X_AXES))}, got {x!r}")


def plot_history(history, path=None, *, x: str = "queries", title: str | None = None):
    """See :meth:`zoracle.History.plot`."""
    _check_x(x)
    fmt = None
    if path is not None:
        path, fmt = check_plot_path(path, "path")
    Figure = _history_figure()
    steps, epochs = history.steps, history.epochs
    if not steps:
        raise ArgumentError("the history has no steps to plot: train for at least one step")
    step_loss = history.column("loss")
    sx, ex, label = _axis_values(history, x)
    # by name: a checkpoint stores each record's fields sorted, so the run's own order is lost there and
    # `zoracle plot run.npz` drew the panels in another order than result.plot() of the same run
    metrics = sorted({k for r in epochs for k in r if k not in RECORD_FIELDS})
    fig, axes = _panels(metrics, Figure)
    ax = axes[0]
    ax.plot(sx, step_loss, lw=0.8, color=_faded(ax, "C0", 0.45), label="step",
            marker="." if len(sx) == 1 else None)  # one step: a line of one point draws nothing
    if len(epochs) and len(steps) > len(epochs):  # each epoch's mean loss at the middle of its steps
        ax.plot(_epoch_mids(sx, history), history.column("loss", "epoch"), marker=".", color="C1", label="epoch mean")
        ax.legend(frameon=False)
    for ax, name in zip(axes[1:], metrics):
        _metric_line(ax, history, name, ex)
    _finish(fig, axes, path, fmt, x, label, [step_loss], metrics, title)
    return fig


def _runs(runs) -> list:
    """``runs`` as (label, History) pairs: a dict's keys are the labels, a sequence's entries are numbered."""
    from ._history import History

    if isinstance(runs, dict):
        pairs = [(str(k), v) for k, v in runs.items()]
    elif isinstance(runs, (list, tuple)):
        pairs = [(f"run {i}", v) for i, v in enumerate(runs)]
    else:
        raise ArgumentError(f"`runs` must be a dict {{label: history}} or a list of histories (History or "
                            f"TrainResult), got {type(runs).__name__}")
    if not pairs:
        raise ArgumentError("`runs` is empty: pass the histories to draw, such as {'cge': a.history, 'rge': b.history}")
    out = []
    for name, h in pairs:
        h = getattr(h, "history", h)  # a TrainResult draws its history
        if not isinstance(h, History):
            raise ArgumentError(f"`runs` entry {name!r} must be a History or a TrainResult, got {type(h).__name__}; "
                                "zo.History.from_checkpoint(path) reads one from a checkpoint")
        if not h.steps:
            raise ArgumentError(f"`runs` entry {name!r} has no steps to plot: train for at least one step")
        out.append((name, h))
    return out


def plot_runs(runs, path=None, *, x: str = "queries", title: str | None = None):
    """See :meth:`zoracle.History.plot_runs`."""
    _check_x(x)
    pairs = _runs(runs)
    fmt = None
    if path is not None:
        path, fmt = check_plot_path(path, "path")
    Figure = _history_figure()
    metrics = sorted({k for _, h in pairs for r in h.epochs for k in r if k not in RECORD_FIELDS})
    fig, axes = _panels(metrics, Figure)
    losses, handles = [], []  # handles: each run's line in the legend
    for i, (name, h) in enumerate(pairs):
        color = f"C{i % 10}"
        sx, ex, label = _axis_values(h, x)
        step_loss = h.column("loss")
        losses.append(step_loss)
        ax = axes[0]
        if len(h.epochs) and len(h.steps) > len(h.epochs):  # the steps faded, the epochs' means in the run's colour
            ax.plot(sx, step_loss, lw=0.8, color=_faded(ax, color, 0.3))
            handles += ax.plot(_epoch_mids(sx, h), h.column("loss", "epoch"), marker=".", color=color, label=name)
        else:
            handles += ax.plot(sx, step_loss, lw=1.0, color=color, label=name, marker="." if len(sx) == 1 else None)
        for ax, metric in zip(axes[1:], metrics):
            if any(metric in r for r in h.epochs):  # (a run without this metric: no line)
                _metric_line(ax, h, metric, ex, color=color, label=name)
    _runs_legend(fig, axes[0], handles, [str(name) for name, _ in pairs])
    _finish(fig, axes, path, fmt, x, label, losses, metrics, title)
    return fig


#: runs a legend inside the loss panel holds; more go beside the panels, whose figure grows for them
LEGEND_INSIDE = 8
#: characters of a run's label the legend shows (a longer one keeps its end, where paths differ)
LABEL_CHARS = 40


def _runs_legend(fig, ax, handles, labels) -> None:
    """The runs' legend: in the loss panel for a few runs; for more, beside the panels (the figure
    wider by the legend's width), in columns of 20, labels cut to their last :data:`LABEL_CHARS`
    characters: 27 runs named by long checkpoint paths inside the panel left the panels no room, and
    the constrained layout failed with matplotlib's warning. Every run is in it, named as given (one
    named ``_sweep/seed_3.npz`` was left out as matplotlib leaves out a label starting with ``_``, and
    more than 8 such failed the plot)."""
    n, labels = len(labels), _short_labels(labels)
    if n <= LEGEND_INSIDE:
        ax.legend(handles, labels, frameon=False)
        return
    cols = -(-n // 20)
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + cols * 0.09 * max(len(t) for t in labels), max(height, 0.22 * min(n, 20)))
    fig.legend(handles, labels, loc="outside right upper", frameon=False, fontsize="small", ncols=cols)


def _short_labels(labels):
    """``labels`` cut to :data:`LABEL_CHARS` characters, each told apart still: their ends where those
    differ, else from where they begin to differ (paths of one sweep end alike:
    ``seed_3/checkpoints/final.npz``, which cut to its end named all 27 runs the same), else whole."""
    ends = [t if len(t) <= LABEL_CHARS else "…" + t[-(LABEL_CHARS - 1):] for t in labels]
    if len(set(ends)) == len(set(labels)):
        return ends
    shared = len(os.path.commonprefix(labels))
    cut = []
    for t in labels:
        at = max(0, min(shared - 10, len(t) - LABEL_CHARS + 1))  # (10 before where they differ: `seed_3`)
        piece = t[at:at + LABEL_CHARS - 2] if len(t) > LABEL_CHARS else t
        cut.append(piece if piece == t else ("…" if at else "") + piece + ("…" if at + len(piece) < len(t) else ""))
    return cut if len(set(cut)) == len(set(labels)) else labels
