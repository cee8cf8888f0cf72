"""The run's figure draws its faded step line and grid as opaque colours (PostScript has no
transparency): faded over the background that shows, not over a transparent axes' RGB black."""

import numpy as np
import pytest

import zoracle as zo

matplotlib = pytest.importorskip("matplotlib")


def _colours(rc):
    r = zo.train(lambda x: float(x @ x), np.ones(3), epochs=2, steps_per_epoch=5, progress=False, rng=0)
    with matplotlib.rc_context(rc):
        fig = r.plot()
    ax = fig.axes[0]
    return (matplotlib.colors.to_rgb(ax.lines[0].get_color()),
            matplotlib.colors.to_rgb(ax.xaxis.get_gridlines()[0].get_color()))


def test_a_transparent_axes_background_fades_the_step_line_towards_white_not_black():
    """With ``axes.facecolor: none`` (a figure for a slide) the step line was drawn dark blue,
    (0.05, 0.21, 0.32), and the grid near black: C0 at 45% blended with the transparent colour's RGB."""
    seen = _colours({"axes.facecolor": "none"})
    assert np.allclose(seen, _colours({"axes.facecolor": "white"}))
    assert min(seen[0]) > 0.5 and min(seen[1]) > 0.7  # light, as on white


def test_a_coloured_background_is_what_the_line_fades_into():
    line, _ = _colours({"axes.facecolor": "black"})
    c0 = np.array(matplotlib.colors.to_rgb("C0"))
    assert np.allclose(line, 0.45 * c0)  # (C0 at 45% over black)
    line, _ = _colours({"axes.facecolor": "none", "figure.facecolor": "black"})
    assert np.allclose(line, 0.45 * c0)  # (a transparent axes on a black figure shows the figure's)
