"""Hardware in the loop whose reading drifts with time: train's messages name the drift, not noise.

A sensor warming up reads ``f(x) + c * t`` (t: readings so far). Two readings in a row differ by ``c``,
as a noise would make them; what tells a drift is that readings far apart in time differ far more.
The advice for noise (average readings) does not help a drift; the messages say what does.
"""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo

D = 20
A = np.linspace(0.5, 2.0, D)


def f(x):
    return float(0.5 * np.sum(A * (x - 1) ** 2))


class Warming:
    """Each reading ``c`` above the last."""

    def __init__(self, c):
        self.c, self.t = c, 0

    def __call__(self, x):
        self.t += 1
        return f(x) + self.c * self.t


class WarmingBatch(Warming):
    """The same device with a ``batch`` fast path (its rows read one after another)."""

    def batch(self, X):
        return np.array([self(x) for x in X])


class Noisy:
    """Zero-mean noise at every reading: no trend."""

    def __init__(self, sigma, seed=0):
        self.sigma, self.rng = sigma, np.random.default_rng(seed)

    def __call__(self, x):
        return f(x) + self.sigma * float(self.rng.standard_normal())


def _diverge(oracle):
    with pytest.raises(zo.ArgumentError, match="training diverged") as err:
        zo.train(oracle, np.zeros(D), epochs=1, steps_per_epoch=200, optimizer=zo.sgd(1.5), rng=0, progress=False)
    return str(err.value)


def test_a_diverged_run_names_a_drifting_reading_not_noise():
    text = _diverge(Warming(0.01))
    # the loss at the first params, read at the first step and twice now
    assert "The loss drifts with time: at the run's first params it read 12.51 at the first step" in text
    assert "not deterministic" not in text and "average repeated readings" not in text  # noise's advice
    assert "averaging readings does not remove it: read a fixed reference point beside each query" in text
    assert "(docs/training.md, 'Drift, spikes and hangs')" in text


def test_a_diverged_run_with_noise_is_still_told_of_noise():
    text = _diverge(Noisy(0.05))
    assert "The loss is not deterministic" in text and "drifts" not in text


def test_a_deterministic_diverged_run_says_neither():
    text = _diverge(f)
    assert "drifts" not in text and "not deterministic" not in text


def test_the_fast_path_check_names_a_trend_in_its_readings():
    with pytest.warns(RuntimeWarning, match="plain call is not deterministic") as seen:
        zo.train(WarmingBatch(1e-3), np.zeros(D), epochs=1, steps_per_epoch=3, optimizer=zo.sgd(0.2), rng=0,
                 progress=False)
    (w,) = seen
    text = str(w.message)
    assert "the three move one way, the earlier gap the larger" in text
    assert "If the reading drifts with time (a sensor warming up, a gain drifting), averaging readings does not " \
           "remove it" in text


class NoisyBatch(Noisy):
    def batch(self, X):
        return np.array([self(x) for x in X])


def test_the_fast_path_check_finds_no_trend_in_noise():
    with pytest.warns(RuntimeWarning, match="plain call is not deterministic") as seen:
        zo.train(NoisyBatch(1e-3), np.zeros(D), epochs=1, steps_per_epoch=3, optimizer=zo.sgd(0.2), rng=0,
                 progress=False)
    (w,) = seen
    assert "move one way" not in str(w.message)


def test_a_reference_reading_cancels_the_drift():
    """The docs' cure: a reference point read right before every query, subtracted."""
    device = Warming(0.01)

    def referenced(x):
        r = device(np.zeros(D))
        return device(x) - r

    with pytest.warns(UserWarning, match="the run ended far above where it started"):
        drifting = zo.train(Warming(0.01), np.zeros(D), epochs=1, steps_per_epoch=100, optimizer=zo.sgd(0.2),
                            rng=0, progress=False)
    cured = zo.train(referenced, np.zeros(D), epochs=1, steps_per_epoch=100, optimizer=zo.sgd(0.2), rng=0,
                     progress=False)
    steady = zo.train(f, np.zeros(D), epochs=1, steps_per_epoch=100, optimizer=zo.sgd(0.2), rng=0, progress=False)
    assert f(drifting.params) > 100 * f(np.zeros(D))  # far off: only the warning at the run's end says so
    np.testing.assert_allclose(cured.params, steady.params, rtol=0, atol=1e-6)


def test_the_section_the_messages_name_is_in_the_training_guide():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text(encoding="utf-8")
    assert "\n### Drift, spikes and hangs\n" in text


class Gain:
    """A gain that rises ``r`` a reading: its error grows with the loss, and the run diverges at a
    learning rate that suits the steady device."""

    def __init__(self, r):
        self.r, self.t = r, 0

    def __call__(self, x):
        self.t += 1
        return f(x) * (1 + self.r * self.t)


def test_a_drifting_gain_diverges_a_run_and_its_error_says_so():
    with pytest.raises(zo.ArgumentError, match="training diverged") as err:
        zo.train(Gain(1e-4), np.zeros(D), epochs=1, steps_per_epoch=100, optimizer=zo.sgd(0.2), rng=0,
                 progress=False)
    assert "The loss drifts with time" in str(err.value) and "not deterministic" not in str(err.value)
    device, ref = Gain(1e-4), np.zeros(D)
    cured = zo.train(lambda x: device(x) / device(ref) * f(ref), np.zeros(D), epochs=1, steps_per_epoch=100,
                     optimizer=zo.sgd(0.2), rng=0, progress=False)
    assert f(cured.params) < 1e-3 * f(ref)


def test_the_guides_numbers_for_a_drifting_gain_are_what_the_runs_end_at():
    """docs/training.md, 'Drift, spikes and hangs': the run a drifting gain diverges, and where the
    ratio and the difference to a reference reading (read right before each query, as the guide
    says) end; a review found the difference's number measured with the reference read after the
    query (16.5, where the guide's order ends at 2.1)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text(encoding="utf-8")
    text = " ".join(text.split())
    within = int(re.search(r"a gain rising 1e-4 a reading diverged within (\d+) steps at `lr = 0\.2`", text).group(1))
    ratio, difference = re.search(r"ended at ([\d.e-]+), and the difference at ([\d.]+)\.", text).groups()

    def shown(value, like):  # the value at the digits the guide shows
        digits = len(like.split("e")[0].replace(".", "").lstrip("0"))
        return float(f"{value:.{digits}g}")

    with pytest.raises(zo.ArgumentError, match=r"training diverged at step (\d+)") as err:
        zo.train(Gain(1e-4), np.zeros(D), epochs=1, steps_per_epoch=100, optimizer=zo.sgd(0.2), rng=0,
                 progress=False)
    assert int(re.search(r"diverged at step (\d+)", str(err.value)).group(1)) < within
    ref = np.zeros(D)
    ends = {}
    for name in ("ratio", "difference"):
        device = Gain(1e-4)

        def referenced(x, name=name, device=device):
            r = device(ref)  # the reference first, then the query
            return device(x) / r * f(ref) if name == "ratio" else device(x) - r

        run = zo.train(referenced, np.zeros(D), epochs=1, steps_per_epoch=100, optimizer=zo.sgd(0.2), rng=0,
                       progress=False)
        ends[name] = f(run.params)
    assert (shown(ends["ratio"], ratio), shown(ends["difference"], difference)) == (float(ratio), float(difference))


def test_the_diverged_run_and_the_fast_path_check_give_one_fix_for_a_drift():
    """Both messages that find a drift say its fix in the same words (one text in the code; the two
    copies had drifted apart in how they named the guide's section)."""
    diverged = _diverge(Warming(0.01))
    with pytest.warns(RuntimeWarning, match="the three move one way") as seen:
        zo.train(WarmingBatch(1e-3), np.zeros(D), epochs=1, steps_per_epoch=3, optimizer=zo.sgd(0.2), rng=0,
                 progress=False)
    fix = diverged[diverged.index("averaging readings does not remove it"):]
    assert fix.endswith("(docs/training.md, 'Drift, spikes and hangs')")
    assert fix in str(seen[0].message)
